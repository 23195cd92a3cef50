"""Explanation-based auditing over a store built through the receiver's ingest (audit messages
parsed from their syslog frames) and the gateway's DIMSE Events: the templates, the share of
explained accesses, the unexplained listed first, and the IDS rule on an unexplained access."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from atna_corpus import record
from typer.testing import CliRunner

from pacsguard.atna.config import AtnaConfig
from pacsguard.atna.explain import ExplainSettings, explain_patient, summary
from pacsguard.atna.ingest import Sender, frame_event
from pacsguard.atna.message.build import to_xml
from pacsguard.atna.message.record import AuditRecord, Participant
from pacsguard.atna.report import load_report, patient_report, prove, to_html
from pacsguard.atna.service import AtnaService
from pacsguard.cli import main
from pacsguard.events.model import Event, Party
from pacsguard.ids.audit.adapter import rule_files
from pacsguard.ids.engine import Engine
from pacsguard.ids.rules import load_rules
from pacsguard.ids.settings import IdsSettings
from pacsguard.store import EventQuery
from pacsguard.store.keys import load_public_key, public_path
from store_helpers import new_store

SENDER = Sender("10.20.0.9", 40000, "tls", "octet-counting")
STAFF = "user,surname,address,department\njsmith,Smith,,Radiology\nkim,Kim,,Radiology\nlee,Lee,,Cardiology\n" \
        "mallory,Mallory,,Billing\nann,Ann,,Emergency\n"
CONFIG = "atna:\n  privacy:\n    staff_directory: staff.csv\n    explain: {evidence_window: 1d, repeat_window: 7d}\n"


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 12, day, hour, minute, tzinfo=timezone.utc)


def person(user: str, requestor: bool = True, host: str = "10.20.0.7") -> Participant:
    return Participant(user, user_name=user, requestor=requestor, access_point=host, access_point_type="2")


def message(event_id: str, when: datetime, *participants: Participant, action: str | None = None) -> Event:
    base = record(event_id)
    r: AuditRecord = replace(base, time=when, participants=participants, action=action or base.action)
    return frame_event(SENDER, b"<85>1 - vna1 audit - IHE+RFC-3881 - " + to_xml(r))


def dimse(name: str, when: datetime, actor: Party, **details: object) -> Event:
    return Event(kind=f"dicom.dimse.{name}", component="gateway", time=when, actor=actor,
                 target=Party("PACS", "10.20.0.2", 104), patient_ids=("PID-0042",), message=f"{name} status 0x0000",
                 details={"route": "pacs", "flow": "c1", "called_ae": "PACS", "message_id": 1, "duration_ms": 4.0,
                          "sop_class": "1.2.840.10008.5.1.4.1.2.2.2", "status": "0x0000", **details})


def viewer() -> tuple[Participant, Participant]:
    """tech at a viewing station whose AE title (RADWS3) is on the same host."""
    return (person("tech", host="10.20.0.33"),
            Participant("VIEWER@10.20.0.33", alternative_user_id="AETITLES=RADWS3", access_point="10.20.0.33",
                        access_point_type="2"))


def events() -> list[Event]:
    return [
        message("110109", at(1, 8), person("orderdesk"), person("lee", False), action="C"),  # names lee
        message("110110", at(1, 9), person("lee"), action="R"),  # order-names-user
        message("110109", at(3, 8), person("orderdesk"), person("ann", False), action="C"),
        message("110111", at(3, 8, 30), person("kim"), action="C"),  # kim (Radiology) performed the study
        dimse("c-move", at(3, 9), Party("RIS", "10.20.0.5", user="kim"), move_destination="RADWS3"),
        message("110110", at(3, 9, 30), person("jsmith"), action="R"),  # department-study (kim's procedure)
        message("110110", at(3, 9, 45), person("ann"), action="R"),  # order-names-user
        message("110110", at(3, 10), person("lee"), action="R"),  # the Dec 1 order is out of the 1d window: repeat
        message("110110", at(3, 10, 15), person("mallory"), action="R"),  # no reason: unexplained
        dimse("c-find", at(3, 10, 30), Party("ROGUE", "10.66.0.13"), level="PATIENT"),  # unexplained
        message("110103", at(3, 10, 45), *viewer(), action="R"),  # move-to-workstation
    ]


def test_explanations_in_the_daily_and_the_patient_report(tmp_path: Path) -> None:
    target = str(tmp_path / "store.db")
    store, key = new_store(target, tmp_path)
    store.append(events())
    store.checkpoint()
    (tmp_path / "staff.csv").write_text(STAFF)
    (tmp_path / "pacsguard.yaml").write_text(CONFIG)
    runner = CliRunner()
    common = ["--store", target, "--config", str(tmp_path / "pacsguard.yaml")]
    out = runner.invoke(main.app, ["audit", "report", "--day", "2026-12-03", "--format", "json", *common])
    assert out.exit_code == 0, out.output
    ex = json.loads(out.output)["explanations"]
    assert (ex["accesses"], ex["explained"], ex["share"]) == (7, 5, 0.7143)
    assert ex["by_template"] == {"department-study": 2, "order-names-user": 1, "repeat-access": 1,
                                 "move-to-workstation": 1}
    listed = [(v["user"], v["template"], v["evidence"]) for v in ex["list"]]
    assert listed == [("mallory", None, None), ("rogue", None, None),
                      ("kim", "department-study", 3), ("jsmith", "department-study", 3),
                      ("ann", "order-names-user", 2), ("lee", "repeat-access", 1),
                      ("tech", "move-to-workstation", 4)]
    page = runner.invoke(main.app, ["audit", "report", "--day", "2026-12-03", *common]).output
    assert "5 of 7 explained (71.4%)" in page
    assert page.index("mallory") < page.index("department-study")

    out = runner.invoke(main.app, ["audit", "patient", "PID-0042", "--format", "json", "--no-checkpoint",
                                   "--key", str(key), *common])
    report = json.loads(out.output)
    assert report["explanations"]["accesses"] == 8 and report["explanations"]["explained"] == 6
    assert prove(report, load_public_key(public_path(key))) == []  # the verdicts ride beside the proven events
    table = runner.invoke(main.app, ["audit", "patient", "PID-0042", "--no-checkpoint", *common]).output
    assert "6 of 8 accesses explained (75.0%), unexplained first" in table
    lines = [line for line in table.splitlines() if "UNEXPLAINED" in line or "department-study" in line]
    assert "UNEXPLAINED" in lines[0] and "UNEXPLAINED" in lines[1] and "department-study" in lines[2]
    assert load_report(to_html(report))["explanations"]["share"] == 0.75
    rows = runner.invoke(main.app, ["audit", "patient", "PID-0042", "--no-checkpoint", "--format", "csv",
                                    *common]).output.splitlines()
    assert rows[0].endswith(",proven,explanation") and rows[1].endswith(",UNEXPLAINED")
    assert rows[3].endswith(",order-names-user (#0)") and rows[-1].endswith(",yes,")  # an order: no access

    # Without the staff directory, jsmith's colleague's procedure no longer explains his access;
    # with the default 90-day window the Dec 1 order explains lee's access directly.
    bare = summary(explain_patient(store, "PID-0042", at(3, 0), at(4, 0), ExplainSettings()))
    assert bare["explained"] == 4 and [v["user"] for v in bare["list"][:3]] == ["jsmith", "mallory", "rogue"]
    assert patient_report(store, "PID-0042")["events"][0]["user"] == "orderdesk"
    store.close()


def test_the_unexplained_access_rule_judges_what_arrives(tmp_path: Path) -> None:
    target = str(tmp_path / "store.db")
    store, _ = new_store(target, tmp_path)
    store.append(events()[:5])
    (tmp_path / "staff.csv").write_text(STAFF)
    config = AtnaConfig.model_validate({"enabled": True, "privacy": {"staff_directory": str(tmp_path / "staff.csv")}})
    service = AtnaService(config, lambda event: None, store)
    service.use_privacy_rules(Engine(load_rules(rule_files(unexplained=True), builtin=False), IdsSettings()))
    assert service.privacy is not None
    fired = {user: [a.rule_id for a in service.privacy.observe(message("110110", at(3, 9, 30), person(user),
                                                                        action="R"), 1.0)]
             for user in ("jsmith", "mallory", "ann")}
    assert fired == {"jsmith": [], "mallory": ["audit-unexplained-access"], "ann": []}
    alert = service.privacy.observe(message("110110", at(3, 9, 31), person("kim", host="10.9.9.9"), action="R"), 2.0)
    assert alert == []  # kim performed the procedure
    store.close()


def access(user: str, patient: str, when: datetime) -> Event:
    base = record("110110")
    r = replace(base, time=when, participants=(person(user),), action="R",
                objects=(replace(base.objects[0], object_id=patient, name="ROE^RICHARD"),))
    return frame_event(SENDER, b"<85>1 - vna1 audit - IHE+RFC-3881 - " + to_xml(r))


def test_distinct_patients_per_hour_far_above_the_users_own_baseline(tmp_path: Path) -> None:
    config = AtnaConfig.model_validate({"enabled": True, "privacy": {"baseline": {"max_users": 2}}})
    service = AtnaService(config, lambda event: None)
    service.use_privacy_rules(Engine(load_rules(rule_files(unexplained=True), builtin=False), IdsSettings()))
    adapter = service.privacy
    assert adapter is not None

    def hour(user: str, day: int, h: int, patients: int, first: int = 0) -> list[str]:
        """``patients`` distinct patients (and each a second time) in one clock hour: the alerts' messages."""
        fired = []
        for i in range(patients * 2):
            ev = access(user, f"P{first + i % patients}", at(day, h, i * 50 // (patients * 2)))
            fired += [a.message for a in adapter.observe(ev, 0.0) if a.rule_id == "audit-patients-above-baseline"]
        return fired

    assert hour("jsmith", 1, 8, 60) == []  # no history yet: a busy first hour is not an alarm
    for h in range(9, 17):  # a working day of three patients an hour; the night adds no zero hours
        assert hour("jsmith", 1, h, 3, first=100 + h * 3) == []
    assert adapter.hours.users.get("jsmith", 0.0).history[-1] == 3  # type: ignore[union-attr]
    assert hour("jsmith", 2, 8, 9) == []  # nine: above 5 x 3 is needed
    fired = hour("jsmith", 2, 9, 40)
    assert len(fired) == 1  # once per user and hour, at the 16th distinct patient
    assert "hour_patients=16" in fired[0] and "baseline_patients=3.0" in fired[0]
    assert len(hour("jsmith", 2, 10, 40, first=500)) == 1  # the next hour may fire again
    assert hour("kim", 2, 10, 40) == []  # kim has no history of her own

    hour("lee", 2, 11, 1)  # two users still learning (max_users 2 of each kind) and a third:
    hour("ray", 2, 11, 1)  # kim, the least recently active of them, is evicted
    assert "kim" not in adapter.hours.learning and adapter.hours.learning.evicted == 1
    for n in range(500):  # made-up users (any sender can name them) push out only users still learning
        hour(f"fake{n}", 2, 11, 1)
    assert "jsmith" in adapter.hours.users and adapter.hours.users.evicted == 0
    assert len(hour("jsmith", 2, 12, 40)) == 1  # her baseline is still hers


def test_serve_loads_the_adapters_rules_as_configured(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from pacsguard.atna.service import make_service
    from pacsguard.config.loader import load_config

    def rules(privacy: str) -> list[str]:
        (tmp_path / "pacsguard.yaml").write_text(f"atna:\n  enabled: true\n  privacy: {privacy}\n")
        loaded = load_config(tmp_path / "pacsguard.yaml")
        bus = SimpleNamespace(publish=lambda event: None, subscribe=None)
        service = make_service(SimpleNamespace(loaded=loaded, section=loaded.section("atna"), bus=bus,
                                               store=None, resolve=loaded.resolve))
        assert service is not None and service.privacy is not None
        return sorted(r.id for r in service.privacy.engine.active_rules if r.protocol == "audit")

    assert rules("{}") == ["audit-patients-above-baseline"]
    assert rules("{explain: {on_arrival: true}}") == ["audit-patients-above-baseline", "audit-unexplained-access"]
    assert rules("{rule_set: false}") == []


def test_users_are_told_apart_by_their_user_id_not_their_display_name(tmp_path: Path) -> None:
    """A.5's UserID is the user's identity (PS3.15 A.5.2.1, RFC 3881 5.2.1), UserName a display name
    two users may share: an order naming jsmith explains jsmith's access whether or not either
    message gives his name, and not the access of jsmith2, also shown as John Smith; the department
    is looked up by login. A message stored while the actor's user was the UserName is judged by its
    UserID too."""
    from pacsguard.atna.explain import Item, explain_items

    def named(user: str, name: str | None) -> Participant:
        return Participant(user, user_name=name, requestor=True, access_point="10.20.0.7", access_point_type="2")

    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    store.append([
        message("110109", at(3, 8), named("orderdesk", None), named("jsmith", None), action="C"),  # RIS: login only
        message("110110", at(3, 9), named("jsmith", "John Smith"), action="R"),  # viewer: login and name
        message("110110", at(3, 10), named("jsmith2", "John Smith"), action="R"),  # another John Smith
        message("110110", at(3, 11), named("ann", "Ann Lee"), action="R"),  # jsmith's colleague in Radiology
    ])
    settings = ExplainSettings(departments={"ann": "RADIOLOGY", "jsmith": "RADIOLOGY"})  # the staff directory's
    got = [(v.item.user, v.template) for v in explain_patient(store, "PID-0042", None, None, settings)]
    assert got == [("jsmith", "order-names-user"), ("jsmith2", None), ("ann", "department-study")]
    stored = [s.event for s in store.search(EventQuery(kind="atna.audit.*", limit=None))]
    assert [e.actor.user for e in stored] == ["orderdesk", "jsmith", "jsmith2", "ann"]
    assert stored[2].details["participants"][0]["user_name"] == "John Smith"  # kept for reports
    store.close()

    # As stored before: the actor's user was the display name; the stored UserID still decides.
    before = [replace(e, actor=replace(e.actor, user=e.details["participants"][0].get("user_name") or e.actor.user))
              for e in stored]
    items = [Item.of(seq, e) for seq, e in enumerate(before)]
    assert [(v.item.user, v.template) for v in explain_items(items, "PID-0042", settings)] == got
