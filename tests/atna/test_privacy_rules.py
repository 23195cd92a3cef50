"""The `audit` adapter: privacy rules in the IDS language over received audit messages (watched
patients, a user looking up their own family, after-hours bulk access), through the unchanged engine."""

from __future__ import annotations

import socket
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest
from atna_corpus import record
from receiver import free_port, running

from pacsguard.atna.ingest import Sender, frame_event
from pacsguard.atna.message.build import to_xml
from pacsguard.atna.message.record import AuditRecord, ParticipantObject
from pacsguard.events.model import Event
from pacsguard.ids.audit.adapter import AuditAdapter, PrivacyLists
from pacsguard.ids.engine import Engine
from pacsguard.ids.rules import load_rules
from pacsguard.ids.settings import IdsSettings

RULES = """
- id: audit-watched-patient
  title: Access to a watched patient
  severity: warning
  protocol: audit
  on: access
  match:
    watched: true
  action: alert
  reference: issue 18 (privacy monitoring)
- id: audit-own-family
  title: A user accessed a patient with their own surname
  severity: warning
  protocol: audit
  on: access
  match:
    same_surname: true
  action: alert
  reference: issue 18 (privacy monitoring)
- id: audit-after-hours-bulk
  title: Many patients accessed at night
  severity: warning
  protocol: audit
  on: access
  match:
    hour: {lt: 6}
  threshold: {count: 3, within: 1h, by: [user]}
  action: alert
  reference: issue 18 (privacy monitoring)
"""
SENDER = Sender("10.20.0.9", 40000, "tls", "octet-counting")


def event(r: AuditRecord) -> Event:
    return frame_event(SENDER, b"<85>1 - h a - IHE+RFC-3881 - " + to_xml(r))


def test_privacy_rules_fire_on_audit_messages(tmp_path: Path) -> None:
    (tmp_path / "privacy.yaml").write_text(RULES)
    (tmp_path / "watch.txt").write_text("# VIPs\nPID-0042^^^STMARY&1.2.840.99999.1&ISO\n")
    (tmp_path / "staff.csv").write_text("user,surname,address\njsmith,Doe,1 Main St\nkim,Park,\n")
    lists = PrivacyLists.load(tmp_path / "watch.txt", tmp_path / "staff.csv")
    engine = Engine(load_rules([tmp_path], builtin=False), IdsSettings(), clock=lambda: 0.0)
    audit = AuditAdapter(engine, lists)

    alerts = audit.observe(event(record("110110")), 1.0)  # jsmith reads PID-0042, DOE^JANE: watched, own family
    assert sorted(a.rule_id for a in alerts) == ["audit-own-family", "audit-watched-patient"]
    assert alerts[0].event.patient_ids[0] == "PID-0042"

    night = datetime(2026, 12, 3, 2, 0, tzinfo=timezone.utc)
    other = [replace(record("110110"), time=night, objects=(ParticipantObject(
        f"P{i}", record("110110").objects[0].id_type, type_code="1", role="1", name="ROE^RICHARD"),))
        for i in range(3)]
    fired = [a.rule_id for r in other for a in audit.observe(event(r), 2.0)]
    assert fired == ["audit-after-hours-bulk"]
    assert audit.observe(Event(kind="dicom.dimse.c-store", component="gateway"), 3.0) == []
    assert audit.observe(event(replace(record("110110"), time=night)), 4.0) != []


@pytest.mark.parametrize("readers", [0, 1])
def test_the_repository_runs_the_privacy_rules_on_what_it_receives(tmp_path: Path, readers: int) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "privacy.yaml").write_text(RULES)
    (tmp_path / "watch.txt").write_text("PID-0042\n")
    engine = Engine(load_rules([tmp_path / "rules"], builtin=False), IdsSettings())
    port = free_port()
    section = {"tcp": {"port": port}, "privacy": {"watch_list": str(tmp_path / "watch.txt")}, "readers": readers}
    with running(section, setup=lambda service: service.use_privacy_rules(engine)) as rx:
        body = b"<85>1 - h a - IHE+RFC-3881 - " + to_xml(record("110110"))
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"%d %s" % (len(body), body))
        got = rx.wait(lambda evs: any(e.kind.startswith("ids.alert.") for e in evs), "a privacy alert")
    assert [e.kind for e in got] == ["atna.audit.patient-record", "ids.alert.audit-watched-patient"]
    assert got[1].patient_ids[0] == "PID-0042"


@pytest.mark.parametrize(("name", "content", "problem"), [
    ("watch_list", b"PID-1\n\xff\xfeVIP\n", "line 2: not UTF-8 text (byte 0xFF at offset 6); save it as UTF-8"),
    ("staff_directory", b"user,surname,address\njdoe,M\xfcller,x\n",
     "line 2: not UTF-8 text (byte 0xFC at offset 27); save it as UTF-8"),
    ("staff_directory", b"login,surname\njdoe,Doe\n",
     "line 1: a header row naming the column user (and any of surname, address, department) is needed; it names "
     "['login', 'surname']: missing user; unknown 'login'"),
    ("staff_directory", b"user,surname,address\njdoe,D" + b"o" * 200_000 + b"\n",
     "line 2: field larger than field limit (131072)"),
])
def test_a_list_file_that_cannot_be_read_is_a_configuration_error_naming_it(tmp_path: Path, name: str,
                                                                             content: bytes, problem: str) -> None:
    """An export in Latin-1 (as spreadsheets on Windows write), a header with other names, a runaway
    field: each is the configuration's key, the file and the line, never an internal error at start."""
    from pacsguard.atna.config import Privacy
    from pacsguard.config.loader import ConfigError

    path = tmp_path / "list"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        Privacy(**{name: path}).lists(lambda p: p)
    assert err.value.source == str(path)
    assert [(p.key, p.message) for p in err.value.problems] == [(f"atna.privacy.{name}", problem)]


def test_a_staff_directory_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    from pacsguard.atna.config import Privacy

    path = tmp_path / "staff.csv"
    path.write_bytes("\ufeffuser,surname,address,department\nJDoe,Müller,Hauptstr. 1,Radiology\n".encode())
    lists = Privacy(staff_directory=path).lists(lambda p: p)
    assert lists.staff["jdoe"].surname == "MÜLLER" and lists.departments() == {"jdoe": "RADIOLOGY"}


def test_the_staff_directory_is_looked_up_by_user_id_not_display_name(tmp_path: Path) -> None:
    """The directory lists logins; a sender that gives the UserName too (PS3.15 A.5.2.1: UserID is
    the identity, UserName a display name) is still matched by its UserID, and the observation's
    ``user`` (what thresholds and the baseline count by) is the UserID, its display name beside it."""
    from pacsguard.atna.message.record import Participant
    from pacsguard.ids.engine import Alert

    (tmp_path / "privacy.yaml").write_text(RULES + """
- id: audit-every-access
  title: any access, to see the observation
  severity: info
  protocol: audit
  on: access
  match: {event: patient-record}
  action: alert
  reference: tests
""")
    (tmp_path / "staff.csv").write_text("user,surname,address\njsmith,Doe,1 Main St\n")
    engine = Engine(load_rules([tmp_path], builtin=False), IdsSettings(), clock=lambda: 0.0)
    audit = AuditAdapter(engine, PrivacyLists.load(None, tmp_path / "staff.csv"))
    base = record("110110")  # jsmith reads DOE^JANE
    for name in (None, "John Smith"):
        r = replace(base, participants=(Participant("jsmith", user_name=name, requestor=True), *base.participants[1:]))
        alerts: list[Alert] = audit.observe(event(r), 1.0)
        assert sorted(a.rule_id for a in alerts) == ["audit-every-access", "audit-own-family"], name
        seen = next(a for a in alerts if a.rule_id == "audit-every-access").event.details["observation"]
        assert (seen["user"], seen.get("user_name")) == ("jsmith", name), name
        assert seen["flow_id"] == "audit:jsmith"  # thresholds by user count the login
    # Another user whose display name is the directory's login is not jsmith.
    r = replace(base, participants=(Participant("jdoe2", user_name="jsmith", requestor=True),))
    assert [a.rule_id for a in audit.observe(event(r), 2.0)] == ["audit-every-access"]


@pytest.mark.parametrize("header", ["user,surname,address", "user, surname, address", "User,Surname,Address",
                                    " USER ,surname , Address,Department"])
def test_staff_directory_column_names_are_read_whatever_their_case_and_spaces(tmp_path: Path, header: str) -> None:
    path = tmp_path / "staff.csv"
    path.write_text(f"{header}\njsmith,Doe,1 Main St" + (",Radiology" if "Department" in header else "") + "\n")
    lists = PrivacyLists.load(None, path)
    assert lists.staff["jsmith"].surname == "DOE" and lists.staff["jsmith"].address == "1 MAIN ST"


@pytest.mark.parametrize(("content", "problem"), [
    ("login,surname\njsmith,Doe\n", "line 1: a header row naming the column user (and any of surname, address, "
                                    "department) is needed; it names ['login', 'surname']: missing user; unknown "
                                    "'login'"),
    ("user,surname,adress\njsmith,Doe,x\n", "line 1: a header row naming the column user (and any of surname, "
                                            "address, department) is needed; it names ['user', 'surname', 'adress']: "
                                            "unknown 'adress'"),
    ("user,surname,address,User\n", "line 1: a header row naming the column user (and any of surname, address, "
                                    "department) is needed; it names ['user', 'surname', 'address', 'User']: user "
                                    "named twice"),
    ("user,surname,address\njsmith,Doe,1 Main St\n\nkim,Park,\nJSmith,Roe,2 High St\n",
     "line 5: user 'JSmith' is already on line 2 ('jsmith'); a user may have one entry"),
    ('user,surname,address\n"kim","Park","1\nHigh St"\njsmith,Doe,x\n jsmith ,Roe,y\n',
     "line 5: user 'jsmith' is already on line 4 ('jsmith'); a user may have one entry"),
    ("user,surname,address\njsmith,Doe,1 Main St, Springfield\n",
     "line 2: 4 values, but the header names 3 columns (quote a value that holds a comma)"),
    ("user,surname,,address\njsmith,Doe,1 Main St, Springfield\n",
     "line 2: 4 values, but the header names 3 columns (quote a value that holds a comma)"),
])
def test_a_staff_directory_that_would_load_wrong_is_refused_naming_the_line(tmp_path: Path, content: str,
                                                                              problem: str) -> None:
    """A column missing or misspelt, a user listed twice (logins are told apart without case: the
    second entry would silently replace the first), an unquoted comma: each a configuration error
    naming the line (and for a repeated user both lines), not a directory that compares with
    nothing."""
    from pacsguard.atna.config import Privacy
    from pacsguard.config.loader import ConfigError

    path = tmp_path / "staff.csv"
    path.write_text(content)
    with pytest.raises(ConfigError) as err:
        Privacy(staff_directory=path).lists(lambda p: p)
    assert [(p.key, p.message) for p in err.value.problems] == [("atna.privacy.staff_directory", problem)]


def test_a_staff_row_may_leave_trailing_values_out_or_empty(tmp_path: Path) -> None:
    path = tmp_path / "staff.csv"
    path.write_text("user,surname,address,department,\njsmith,Doe\nkim,Park,,Radiology,,\n")
    lists = PrivacyLists.load(None, path)
    assert lists.staff["jsmith"].address == "" and lists.departments() == {"kim": "RADIOLOGY"}
