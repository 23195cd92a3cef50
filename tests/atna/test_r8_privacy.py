"""Outside round 8, area B: privacy monitoring, explained accesses and the daily report, probed as a
privacy officer and with a hospital's data as it really looks: one patient ID under two hospitals'
authorities, logins written in two cases, a user name built to bend the report's page, a site
whose working hours span midnight in UTC, a staff directory saved by a German spreadsheet, a
Japanese patient name, a burst of accesses on a busy day, baseline settings that could never fire."""

from __future__ import annotations

import json
import socket
import subprocess
import tracemalloc
import unicodedata
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from atna_corpus import record
from receiver import running
from typer.testing import CliRunner

from pacsguard.atna.ingest import Sender, frame_event
from pacsguard.atna.message.build import to_xml
from pacsguard.atna.message.record import AuditRecord, Code, Participant, ParticipantObject
from pacsguard.cli import main
from pacsguard.events.model import Event, Party
from pacsguard.ids.audit.adapter import AuditAdapter, PrivacyLists
from pacsguard.ids.engine import Engine
from pacsguard.ids.rules import load_rules
from pacsguard.ids.settings import IdsSettings
from store_helpers import new_store

SENDER = Sender("127.0.82.9", 40000, "tcp", "octet-counting")
#: This helper's loopback addresses (outside round 8, area B).
HOST = "127.0.82.1"
OWN_FAMILY = """
- id: audit-own-family
  title: A user accessed a patient with their own surname
  severity: warning
  protocol: audit
  on: access
  match: {same_surname: true}
  action: alert
  reference: hospital privacy policy
"""


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 12, day, hour, minute, tzinfo=timezone.utc)


def message(event_id: str, when: datetime, user: str, *, patient: str | None = None, action: str | None = None,
            name: str | None = None, others: tuple[Participant, ...] = (),
            objects: tuple[ParticipantObject, ...] = ()) -> Event:
    """A PS3.15 A.5.3 message (the corpus's) by ``user``, for ``patient`` (a CX), through the ingest."""
    base: AuditRecord = record(event_id)
    first = base.objects[0]
    patient_object = replace(first, object_id=patient or first.object_id, name=name or first.name)
    r = replace(base, time=when, action=action or base.action, objects=(patient_object, *objects),
                participants=(Participant(user, requestor=True, access_point="10.20.0.7", access_point_type="2"),
                              *others))
    return frame_event(SENDER, b"<85>1 - vna1 audit - IHE+RFC-3881 - " + to_xml(r))


def named(user: str) -> Participant:
    return Participant(user, requestor=False)


# --- explanations --------------------------------------------------------------------------------


def test_a_repeat_rests_on_an_earlier_access_to_the_same_patient_not_another_hospitals(tmp_path: Path) -> None:
    """PID-7 at St Mary's and PID-7 at another hospital are two patients (HL7 v2.5 2.A.33 HD): a
    repeat access (Fabbri and LeFevre's repeat template) is explained by the user's earlier
    explained access to *that* patient, not by the latest explained access that merely shares the
    bare ID, and an access to a third hospital's PID-7 that nothing explains stays unexplained."""
    from pacsguard.atna.explain import ExplainSettings, explain_patient

    mary, other, third = "PID-7^^^STMARY&1.2.3&ISO", "PID-7^^^OTHER&9.9.9&ISO", "PID-7^^^THIRD&7.7.7&ISO"
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    store.append([
        message("110109", at(3, 8), "orderdesk", patient=mary, action="C", others=(named("lee"),)),  # 0
        message("110110", at(3, 8, 30), "lee", patient=mary, action="R"),  # 1: order-names-user (#0)
        message("110109", at(3, 12), "orderdesk", patient=other, action="C", others=(named("lee"),)),  # 2
        message("110110", at(3, 12, 30), "lee", patient=other, action="R"),  # 3: order-names-user (#2)
        message("110110", at(3, 14), "lee", patient=mary, action="R"),  # 4: repeats #1, not #3
        message("110110", at(3, 15), "lee", patient=third, action="R"),  # 5: nothing explains it
    ])
    settings = ExplainSettings(evidence_window=3600.0, repeat_window=7 * 86400.0)
    verdicts = explain_patient(store, "PID-7", at(3, 0), at(4, 0), settings)
    store.close()
    assert [(v.seq, v.template, v.evidence) for v in verdicts] == [
        (1, "order-names-user", 0), (3, "order-names-user", 2), (4, "repeat-access", 1), (5, None, None)]


def test_an_organization_sent_decomposed_is_the_users_department(tmp_path: Path) -> None:
    """A procedure record naming the department "Radiologie Süd" (an organization participant
    object) with the ü decomposed (u + U+0308, as some systems send it) explains the access of a
    user whose directory entry has it precomposed: departments compare in Unicode NFC, like the
    staff directory's names (UAX #15)."""
    from pacsguard.atna.explain import ExplainSettings, explain_patient

    department = unicodedata.normalize("NFD", "Radiologie Süd")
    assert department != "Radiologie Süd"
    org = ParticipantObject(department, Code("12", "RFC-3881", "URI"), type_code="3", role="4", name=department)
    (tmp_path / "staff.csv").write_text("user,department\nmeyer,Radiologie Süd\n", encoding="utf-8")
    lists = PrivacyLists.load(None, tmp_path / "staff.csv")
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    store.append([message("110111", at(3, 8), "modality-op", action="C", objects=(org,)),
                  message("110110", at(3, 9), "meyer", action="R")])
    verdicts = explain_patient(store, "PID-0042", at(3, 0), at(4, 0),
                               ExplainSettings(departments=lists.departments()))
    store.close()
    assert [(v.seq, v.template, v.evidence) for v in verdicts] == [(1, "department-study", 0)]


# --- the daily report ----------------------------------------------------------------------------


def daily(target: str, *args: str) -> tuple[int, str]:
    out = CliRunner().invoke(main.app, ["audit", "report", *args, "--store", target])
    return out.exit_code, out.output


def test_the_daily_report_counts_a_login_once_whatever_its_case(tmp_path: Path) -> None:
    """JSMITH from the EMR and jsmith from the viewer are one user, as the privacy rules, the
    baseline and the explanations count users (docs/audit.md): the top users list him once, with
    all his events, not as two users each with a part of them."""
    target = str(tmp_path / "store.db")
    store, _ = new_store(target, tmp_path)
    store.append([message("110110", at(3, 9), "JSMITH"), message("110110", at(3, 10), "jsmith"),
                  message("110110", at(3, 11), " jsmith"), message("110110", at(3, 12), "kim"),
                  message("110110", at(3, 13), "kim")])
    store.close()
    code, out = daily(target, "--day", "2026-12-03", "--format", "json")
    assert code == 0, out
    assert json.loads(out)["top_users"] == [["jsmith", 3], ["kim", 2]]


def script_data(page: str) -> str:
    """What the daily page's data script element holds, from its start tag to the page's last
    ``</script>`` (where the page means it to end)."""
    start = page.index('<script type="application/json" id="pacsguard-daily">')
    return page[page.index(">", start) + 1:page.rindex("</script>")]


def test_a_user_name_cannot_bend_the_daily_pages_data(tmp_path: Path) -> None:
    """A sender that names its user ``<!--<script>`` puts an HTML tokenizer that reads the page's
    data script element into its "double escaped" state (WHATWG HTML 13.2.5.27), where the page's
    own ``</script>`` no longer ends the element: the data would not parse as JSON in a browser or a
    tool reading the page. The data holds no ``<`` at all (as the patient report's), so nothing in
    it is markup; the names are shown escaped in the tables and still exact in the data."""
    hostile = "<!--<script>"
    target = str(tmp_path / "store.db")
    store, _ = new_store(target, tmp_path)
    store.append([message("110110", at(3, 2), hostile), message("110110", at(3, 3), "a&b>c")])
    store.close()
    code, page = daily(target, "--day", "2026-12-03")
    assert code == 0, page
    data = script_data(page)
    assert "<" not in data and ">" not in data
    report = json.loads(data)
    assert [u for u, _ in report["top_users"]] == [hostile.lower(), "a&b>c"]
    assert hostile not in page.replace(data, "")  # shown as &lt;!--&lt;script&gt; only
    assert "&lt;!--&lt;script&gt;" in page


def test_working_hours_may_span_midnight(tmp_path: Path) -> None:
    """A Los Angeles hospital's day shift, 7 to 19 local, is 15 to 3 UTC (PST); a Tokyo one is 22 to
    10 UTC: ``--hours 15-3`` spans midnight, and only access between 3:00 and 15:00 UTC is after
    hours. START equal to END holds no hour or every one and is refused, naming the option."""
    target = str(tmp_path / "store.db")
    store, _ = new_store(target, tmp_path)
    store.append([message("110110", at(3, 1), "night"), message("110110", at(3, 9), "am"),
                  message("110110", at(3, 16), "pm"), message("110110", at(3, 23, 59), "late")])
    store.close()
    code, out = daily(target, "--day", "2026-12-03", "--hours", "15-3", "--format", "json", "--time-zone", "UTC")
    assert code == 0, out
    report = json.loads(out)
    assert report["working_hours"] == [15, 3] and report["time_zone"] == "UTC"
    assert [r["time"][11:16] for r in report["after_hours_access"]] == ["09:00"]
    code, out = daily(target, "--day", "2026-12-03", "--hours", "0-24", "--format", "json", "--time-zone", "UTC")
    assert code == 0 and json.loads(out)["counts"]["after_hours_access"] == 0
    for bad in ("7-7", "24-3", "3-25", "seven-19"):
        code, out = daily(target, "--day", "2026-12-03", "--hours", bad)
        assert code == 2 and out.startswith(f"error: --hours {bad!r}: "), (bad, out)
        assert "--day" not in out


@pytest.mark.parametrize("day", ["2026-02-30", "tomorrow", "03.12.2026", ""])
def test_a_day_that_is_not_a_date_is_refused_naming_it(tmp_path: Path, day: str) -> None:
    """Exit 2 naming --day and what was given, not the --hours beside it, which was fine."""
    code, out = daily(str(tmp_path / "none.db"), "--day", day)
    assert code == 2 and out.startswith(f"error: --day {day!r}: not a date, YYYY-MM-DD expected"), out
    assert "--hours" not in out


def test_a_busy_days_explanations_hold_only_the_accesses_listed(tmp_path: Path) -> None:
    """A day of many accesses (each event here carries 32 KB, as a message with many objects may):
    the daily report judges and counts every one but lists 1,000 at most, so it holds those only,
    not every judged access with its event until the end (a day of 100,000 accesses took 400 MB)."""
    from pacsguard.atna.daily import summarise
    from pacsguard.atna.explain import Accesses, ExplainSettings, summary
    from pacsguard.store import EventQuery

    day, count, listed = date(2026, 12, 3), 1500, 10
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    store.append([Event(kind="atna.audit.patient-record", component="atna", time=at(3, 0) + timedelta(seconds=50 * i),
                        actor=Party("VIEWER", "10.20.0.7", user=f"user{i % 40}"), patient_ids=(f"P{i}",),
                        message="x" * 32_768, details={"event_id": {"code": "110110"}, "action": "R"})
                  for i in range(count)])
    seen = Accesses()
    since, until = at(3, 0), at(4, 0)
    peaks: list[int] = []

    def explain() -> dict[str, Any]:
        """The judging alone: the day's events were read (and let go) before it."""
        tracemalloc.reset_peak()
        try:
            return summary(seen.explain(store, since, until, ExplainSettings()), listed)
        finally:
            peaks.append(tracemalloc.get_traced_memory()[1])

    tracemalloc.start()
    try:
        report = summarise((seen.see(s) for s in store.search(EventQuery(since=since, until=until, limit=None))),
                           day, explain=explain)
    finally:
        tracemalloc.stop()
        store.close()
    peak = peaks[0]
    ex = report["explanations"]
    assert (ex["accesses"], ex["explained"], len(ex["list"])) == (count, 0, listed)
    assert [v["seq"] for v in ex["list"]] == list(range(listed))  # unexplained, oldest first
    assert peak < 30_000_000, f"{peak} bytes at the peak: the judged accesses were all held"


# --- the staff directory and the privacy rules --------------------------------------------------


@pytest.mark.parametrize("content", [
    # German or French Excel, "CSV (Trennzeichen-getrennt)": semicolons (the comma is the decimal mark).
    "\ufeffUser;Surname;Address;Department\r\nmmueller;Müller;Hauptstr. 1, 2. OG;Radiologie\r\n"
    'kim;"van der Berg";"Am Markt 3; Hinterhaus";\r\n',
    # Excel "Text (tab delimited)".
    "user\tsurname\taddress\tdepartment\nmmueller\tMüller\tHauptstr. 1, 2. OG\tRadiologie\n"
    "kim\tvan der Berg\tAm Markt 3; Hinterhaus\t\n",
])
def test_a_staff_directory_saved_with_semicolons_or_tabs_is_read(tmp_path: Path, content: str) -> None:
    """The header row tells the separator: a comma-less header separated by semicolons or tabs is
    read with it; an address may then hold commas unquoted."""
    path = tmp_path / "staff.csv"
    path.write_text(content, encoding="utf-8")
    lists = PrivacyLists.load(None, path)
    assert dict(lists.staff) == {
        "mmueller": type(lists.staff["mmueller"])("MÜLLER", "HAUPTSTR. 1, 2. OG", "RADIOLOGIE"),
        "kim": type(lists.staff["kim"])("VAN DER BERG", "AM MARKT 3; HINTERHAUS", "")}


def test_a_semicolon_directory_row_with_a_value_too_many_names_the_semicolon(tmp_path: Path) -> None:
    from pacsguard.atna.config import Privacy
    from pacsguard.config.loader import ConfigError

    path = tmp_path / "staff.csv"
    path.write_text("user;surname;address\nmmueller;Müller;Hauptstr. 1; 2. OG\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        Privacy(staff_directory=path).lists(lambda p: p)
    assert [(p.key, p.message) for p in err.value.problems] == [
        ("atna.privacy.staff_directory",
         "line 2: 4 values, but the header names 3 columns (quote a value that holds a semicolon)")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def test_a_japanese_patient_name_is_compared_by_each_groups_family_name(tmp_path: Path) -> None:
    """A DICOM PN may hold three component groups, alphabetic=ideographic=phonetic (PS3.5 6.2.1.2):
    YAMADA^TAROU=山田^太郎=やまだ^たろう names the family Yamada, 山田 and やまだ. A user of that
    family, whichever form the staff directory (saved by a Japanese spreadsheet, with semicolons)
    gives, is the patient's namesake; sent by util-linux logger over TCP (RFC 6587 octet counting)
    to the repository, which raises the privacy rule's alert."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "privacy.yaml").write_text(OWN_FAMILY)
    staff = tmp_path / "staff.csv"
    staff.write_text("user;surname\nyamada1;Yamada\nyamada2;山田\nsato;佐藤\n", encoding="utf-8")
    engine = Engine(load_rules([tmp_path / "rules"], builtin=False), IdsSettings())
    port = free_port()
    section = {"tcp": {"host": HOST, "port": port}, "privacy": {"staff_directory": str(staff)}}
    name = "YAMADA^TAROU=山田^太郎=やまだ^たろう"
    with running(section, setup=lambda service: service.use_privacy_rules(engine)) as rx:
        for user in ("yamada1", "yamada2", "sato"):
            base = record("110110")
            r = replace(base, objects=(replace(base.objects[0], name=name),),
                        participants=(Participant(user, requestor=True, access_point="10.20.0.7"),))
            body = to_xml(r).decode("utf-8")
            assert "\n" not in body
            sent = subprocess.run(["logger", "-n", HOST, "-P", str(port), "-T", "--octet-count", "--rfc5424",
                                   "--msgid", "IHE+RFC-3881", "-t", "vna1", "-S", "65536", body],
                                  capture_output=True, text=True, timeout=15, check=False)
            assert sent.returncode == 0, sent.stderr
        got = rx.wait(lambda evs: sum(e.kind.startswith("atna.audit.") for e in evs) == 3
                      and sum(e.kind.startswith("ids.alert.") for e in evs) >= 2, "three messages, two alerts")
    alerts = [e for e in got if e.kind == "ids.alert.audit-own-family"]
    assert sorted(e.details["observation"]["user"] for e in alerts) == ["yamada1", "yamada2"]


def test_an_ideographic_only_name_still_matches_without_a_repository(tmp_path: Path) -> None:
    """The same comparison in the adapter alone, for a PN whose alphabetic group is empty
    (=山田^太郎: a name registered in kanji only)."""
    (tmp_path / "privacy.yaml").write_text(OWN_FAMILY)
    (tmp_path / "staff.csv").write_text("user,surname\nyamada2,山田\n", encoding="utf-8")
    audit = AuditAdapter(Engine(load_rules([tmp_path], builtin=False), IdsSettings(), clock=lambda: 0.0),
                         PrivacyLists.load(None, tmp_path / "staff.csv"))
    fired = audit.observe(message("110110", at(3, 9), "yamada2", name="=山田^太郎"), 1.0)
    assert [a.rule_id for a in fired] == ["audit-own-family"]
    assert audit.observe(message("110110", at(3, 9), "yamada2", name="YAMADA^TAROU"), 2.0) == []


@pytest.mark.parametrize(("baseline", "problem"), [
    ({"min_hours": 200}, "min_hours 200 is more than history_hours 168: no user would ever have that many hours "
                         "of history, and the rule would never fire"),
    ({"min_patients": 300}, "min_patients 300 is more than max_patients_per_hour 256: no hour would count that "
                            "many, and the rule would never fire"),
])
def test_baseline_settings_under_which_the_rule_could_never_fire_are_refused(tmp_path: Path, baseline: dict[str, int],
                                                                              problem: str) -> None:
    """A user keeps at most history_hours hours and an hour counts at most max_patients_per_hour
    patients: settings beyond those would load a rule that is silent forever, without a word."""
    from pacsguard.config.loader import ConfigError, load_config

    path = tmp_path / "pacsguard.yaml"
    path.write_text(json.dumps({"atna": {"privacy": {"baseline": baseline}}}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert [(p.key, p.message) for p in err.value.problems] == [("atna.privacy.baseline", problem)]


@pytest.mark.parametrize("key", ["watch_list", "staff_directory"])
@pytest.mark.parametrize("what", ["missing", "folder"])
def test_a_list_file_that_is_not_there_is_a_configuration_error_naming_the_key(tmp_path: Path, key: str,
                                                                               what: str) -> None:
    """A list path that names nothing, or a folder: the error names the setting and the file, as for
    a file that is there but wrong, not only the system's words for the path."""
    from pacsguard.atna.config import Privacy
    from pacsguard.config.loader import ConfigError

    path = tmp_path / "lists"
    if what == "folder":
        path.mkdir()
    with pytest.raises(ConfigError) as err:
        Privacy(**{key: path}).lists(lambda p: p)
    assert err.value.source == str(path)
    reason = "No such file or directory" if what == "missing" else "Is a directory"
    assert [(p.key, p.message) for p in err.value.problems] == [(f"atna.privacy.{key}", f"cannot be read ({reason})")]


def test_directional_controls_in_a_name_are_shown_not_obeyed_in_the_daily_page(tmp_path: Path) -> None:
    """A user named U+202E "nimda" shows as "admin" wherever the override is obeyed (UAX #9): the
    page shows the control as <U+202E>, so the officer reads the name that was stored (and that
    `audit search` finds); the page's data keeps the name exact."""
    spoof = "\u202enimda\u202c"
    target = str(tmp_path / "store.db")
    store, _ = new_store(target, tmp_path)
    store.append([message("110110", at(3, 2), spoof), message("110110", at(3, 3), "kim\u2067x\u2069")])
    store.close()
    code, page = daily(target, "--day", "2026-12-03")
    assert code == 0, page
    shown = page.replace(script_data(page), "")
    assert not any(c in shown for c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
    assert "&lt;U+202E&gt;nimda&lt;U+202C&gt;" in shown and "kim&lt;U+2067&gt;x&lt;U+2069&gt;" in shown
    assert [u for u, _ in json.loads(script_data(page))["top_users"]] == [spoof, "kim\u2067x\u2069"]


def test_a_sender_giving_berlin_time_without_its_zone_is_still_counted_by_the_baseline(tmp_path: Path) -> None:
    """An EMR in Berlin that writes EventDateTime as local time without a zone (PS3.15 A.5.1 asks for
    one; it is read as UTC) dates every access an hour (CET; two in CEST) after it arrives. Such
    accesses count in the hour they were received: dropped as "in the future", the user's baseline
    would never be learnt and the rule never fire for the whole site; dated as sent, one access
    dated years ahead would silence the user until then."""
    from zoneinfo import ZoneInfo

    from pacsguard.ids.audit.adapter import rule_files
    from pacsguard.ids.audit.baseline import BaselineSettings

    berlin = ZoneInfo("Europe/Berlin")
    base = record("110110")

    def sent(arrived: datetime, pid: str) -> Event:
        r = replace(base, objects=(replace(base.objects[0], object_id=pid),),
                    participants=(Participant("jsmith", requestor=True, access_point="10.20.0.7"),))
        local = arrived.astimezone(berlin).replace(tzinfo=None).isoformat()
        xml = to_xml(r).replace(b'EventDateTime="2026-12-03T09:30:15Z"', f'EventDateTime="{local}"'.encode())
        assert local.encode() in xml
        return frame_event(SENDER, b"<85>1 - emr1 audit - IHE+RFC-3881 - " + xml, now=arrived)

    engine = Engine(load_rules([p.parent for p in rule_files(baseline=True)], builtin=False), IdsSettings(),
                    clock=lambda: 0.0)
    audit = AuditAdapter(engine, baseline=BaselineSettings(factor=5, min_patients=10, min_hours=8))
    fired: list[tuple[int, str]] = []
    for hour in range(8, 17):  # eight usual hours of two patients, then one of twelve
        for i in range(2 if hour < 16 else 12):
            arrived = at(3, hour, 2 + 4 * i)
            event = sent(arrived, f"P{hour}-{i}")
            assert event.time == arrived + timedelta(hours=1)  # CET, read as UTC
            fired += [(hour, a.rule_id) for a in audit.observe(event, arrived.timestamp())]
    assert fired == [(16, "audit-patients-above-baseline")]
    # One access dated ten years ahead is counted now, and does not silence the next hour's burst.
    audit.observe(sent(at(3, 17, 1), "X"), 0.0)
    ahead = sent(at(3, 17, 2), "FAR")
    forged = replace(ahead, time=ahead.time.replace(year=2036))
    audit.observe(forged, 0.0)
    burst = [a.rule_id for i in range(12) for a in audit.observe(sent(at(3, 18, 2 + i), f"B{i}"), 0.0)]
    assert burst == ["audit-patients-above-baseline"]


@pytest.mark.parametrize("key", ["watch_list", "staff_directory"])
def test_a_list_path_naming_a_huge_file_is_refused_naming_the_key(tmp_path: Path, key: str) -> None:
    """A path that names a database dump or a disk image by mistake (here 64 MiB and a byte of
    zeros, a sparse file) is refused by its size with the setting's name: read whole, a watch list
    of one 64 MiB "patient ID" loaded without a word, and a device such as /dev/zero never ends."""
    from pacsguard.atna.config import Privacy
    from pacsguard.config.loader import ConfigError

    path = tmp_path / "dump.bin"
    with path.open("wb") as f:
        f.truncate(64 * 1024 * 1024 + 1)
    with pytest.raises(ConfigError) as err:
        Privacy(**{key: path}).lists(lambda p: p)
    assert [(p.key, p.message) for p in err.value.problems] == [
        (f"atna.privacy.{key}", "larger than 64 MiB: not a list of patients or staff (is it the right file?)")]


def test_watch_list_ids_are_read_from_the_forms_a_privacy_office_writes(tmp_path: Path) -> None:
    """A VIP list as offices keep it: CX forms with and without an authority, padded with spaces
    before the "^" or the comment, indented, a "tab delimited" export with the name in a second
    column, Windows line ends, a byte order mark. Each line watches its patient ID; read as the
    whole line, "PID-0042 " or "PID-0043<tab>Mayor" would match no message, without a word."""
    (tmp_path / "vip.txt").write_bytes(
        "\ufeff# VIPs, Dec 2026\r\nPID-0042 ^^^STMARY&1.2.840.99999.1&ISO\r\nPID-0043\tMAYOR^JOHN\t# the mayor\r\n"
        "\t PID-0044  # indented\r\nPID-0045^^^\r\n\r\n".encode())
    lists = PrivacyLists.load(tmp_path / "vip.txt")
    assert lists.watched == frozenset({"PID-0042", "PID-0043", "PID-0044", "PID-0045"})


@pytest.mark.parametrize(("directory", "sent"), [
    ("Müller", "MUELLER^HANS"),  # a PACS limited to ASCII (PS3.5 default repertoire) spells the umlaut out
    ("Müller", "MULLER^HANS"),  # ... or drops it
    ("MUELLER", "Müller^Hans"),
    ("O’Brien", "O'BRIEN^SEAN"),  # the HR system's typographic apostrophe (U+2019)
    ("Müller\u2011Lüdenscheidt", "MUELLER-LUEDENSCHEIDT^ANNA"),  # a non-breaking hyphen (U+2011)
    ("van der Berg", "VAN DER BERG^JAN"),
    ("Nguyễn", "NGUYEN^AN"),
])
def test_a_surname_matches_as_an_ascii_pacs_writes_it(tmp_path: Path, directory: str, sent: str) -> None:
    """The staff directory has the name as HR typed it; the PACS's audit message as its character
    set lets it write it. Either way the user is the patient's namesake (rule same_surname)."""
    (tmp_path / "privacy.yaml").write_text(OWN_FAMILY)
    (tmp_path / "staff.csv").write_text(f"user,surname\nstaff1,{directory}\n", encoding="utf-8")
    audit = AuditAdapter(Engine(load_rules([tmp_path], builtin=False), IdsSettings(), clock=lambda: 0.0),
                         PrivacyLists.load(None, tmp_path / "staff.csv"))
    assert [a.rule_id for a in audit.observe(message("110110", at(3, 9), "staff1", name=sent), 1.0)] == [
        "audit-own-family"]
    assert audit.observe(message("110110", at(3, 9), "staff1", name="SCHMIDT^HANS"), 2.0) == []
