"""Round 5 fixes of the `audit` rule adapter (issue 18): thresholds `by: [user]` count a login
whatever its case, a future-dated message does not silence the per-user baseline, an A.5 address
detail is compared decoded from base64, surnames compare in Unicode NFC."""

from __future__ import annotations

import base64
import unicodedata
from datetime import datetime, timezone
from pathlib import Path

from pacsguard.atna.ingest import Sender, frame_event
from pacsguard.atna.message.build import to_xml
from pacsguard.atna.message.record import AuditRecord, Code, Participant, ParticipantObject
from pacsguard.events.model import Event
from pacsguard.ids.audit.adapter import AuditAdapter, PrivacyLists, rule_files
from pacsguard.ids.audit.baseline import BaselineSettings
from pacsguard.ids.engine import Engine
from pacsguard.ids.rules import load_rules
from pacsguard.ids.settings import IdsSettings

SENDER = Sender("10.20.0.9", 40000, "tcp", "octet-counting")
RULES = """
- id: night-bulk
  title: Many patients accessed at night
  severity: warning
  protocol: audit
  on: access
  match: {hour: {lt: 6}}
  threshold: {count: 4, within: 1h, by: [user]}
  action: alert
  reference: test
- id: own-family
  title: Same surname
  severity: warning
  protocol: audit
  on: access
  match: {same_surname: true}
  action: alert
  reference: test
- id: own-address
  title: Same address
  severity: warning
  protocol: audit
  on: access
  match: {same_address: true}
  action: alert
  reference: test
"""
RECEIVED = datetime(2026, 12, 3, 12, tzinfo=timezone.utc)


def access(user: str, when: datetime, pid: str, name: str = "ROE^ANN", address: str | None = None,
           received: datetime = RECEIVED) -> Event:
    details = (("address", base64.b64encode(address.encode()).decode()),) if address else ()
    obj = ParticipantObject(pid, Code("2", "RFC-3881", "Patient Number"), type_code="1", role="1", name=name,
                            details=details)
    r = AuditRecord("dicom", Code("110110", "DCM", "Patient Record"), "R", when, "0",
                    participants=(Participant(user, requestor=True, access_point="10.20.0.7", access_point_type="2"),),
                    source_id="EMR1", objects=(obj,))
    return frame_event(SENDER, b"<85>1 - emr1 audit - IHE+RFC-3881 - " + to_xml(r), now=received)


def adapter(tmp_path: Path, staff: str = "user,surname,address\n", baseline: BaselineSettings | None = None,
            own: bool = False) -> AuditAdapter:
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "r.yaml").write_text(RULES)
    (tmp_path / "staff.csv").write_text(staff, encoding="utf-8")
    dirs = [tmp_path / "rules", *([p.parent for p in rule_files(baseline=True)] if own else [])]
    engine = Engine(load_rules(dirs, builtin=False), IdsSettings(), clock=lambda: 0.0)
    return AuditAdapter(engine, PrivacyLists.load(None, tmp_path / "staff.csv"), baseline=baseline)


def fired(ad: AuditAdapter, events: list[Event]) -> list[str]:
    return [a.rule_id for n, ev in enumerate(events) for a in ad.observe(ev, float(n))]


def test_a_threshold_by_user_counts_a_login_whatever_its_case(tmp_path: Path) -> None:
    night = [access("JSMITH" if i % 2 else "jsmith", datetime(2026, 12, 3, 2, i, tzinfo=timezone.utc), f"P{i}")
             for i in range(6)]
    assert "night-bulk" in fired(adapter(tmp_path), night)


def test_a_future_dated_message_does_not_silence_the_users_baseline(tmp_path: Path) -> None:
    def run(future: bool) -> list[str]:
        ad = adapter(tmp_path, baseline=BaselineSettings(factor=2, min_patients=3, min_hours=2), own=True)
        # Each received as it is dated (the forged one at 1:00), as a sender's live traffic is.
        def live(when: datetime, pid: str) -> Event:
            return access("bulk", when, pid, received=when)

        events = [access("bulk", datetime(2036, 12, 3, 1, tzinfo=timezone.utc), "X0",
                         received=datetime(2026, 12, 3, 1, tzinfo=timezone.utc))] if future else []
        events += [live(datetime(2026, 12, 3, h, 10, tzinfo=timezone.utc), f"H{h}") for h in (1, 2, 3)]
        events += [live(datetime(2026, 12, 3, 4, 10 + i, tzinfo=timezone.utc), f"B{i}") for i in range(6)]
        return fired(ad, events)

    assert "audit-patients-above-baseline" in run(False)
    assert "audit-patients-above-baseline" in run(True)


def test_an_a5_address_detail_is_compared_decoded_from_base64(tmp_path: Path) -> None:
    ad = adapter(tmp_path, "user,surname,address\njdoe,Doe,1 Main St\n")
    ev = access("jdoe", RECEIVED, "PID-7", address="1 Main St")
    assert ev.details["objects"][0]["details"][0]["value"] == base64.b64encode(b"1 Main St").decode()
    assert "own-address" in fired(ad, [ev])
    assert "own-address" not in fired(ad, [access("jdoe", RECEIVED, "PID-8", address="2 Main St")])


def test_surnames_compare_in_unicode_nfc(tmp_path: Path) -> None:
    nfc, nfd = unicodedata.normalize("NFC", "Müller"), unicodedata.normalize("NFD", "Müller")
    for directory, sent in ((nfc, nfd), (nfd, nfc), (nfc, nfc)):
        ad = adapter(tmp_path, f"user,surname\nhmuller,{directory}\n")
        assert "own-family" in fired(ad, [access("hmuller", RECEIVED, "PID-9", f"{sent}^ANNA")]), (directory, sent)


def test_the_user_field_is_the_login_in_lower_case(tmp_path: Path) -> None:
    ev = access("JSmith", RECEIVED, "PID-1")
    assert ev.actor.user == "JSmith"  # stored as sent
    rule = ("- id: jsmith\n  title: jsmith\n  severity: notice\n  protocol: audit\n  on: access\n"
            "  match: {user: jsmith}\n  action: alert\n  reference: test\n")
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.yaml").write_text(rule)
    engine = Engine(load_rules([tmp_path / "rules"], builtin=False), IdsSettings(), clock=lambda: 0.0)
    assert [a.rule_id for a in AuditAdapter(engine).observe(ev, 0.0)] == ["jsmith"]
