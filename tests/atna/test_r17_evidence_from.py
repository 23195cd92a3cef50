"""Outside round 17: an access "explained" by the accessor's own audit message. Any sender can
write an Order Record naming itself; `atna.privacy.explain.evidence_from` names the senders whose
records count as evidence (the RIS, the EMR), and pacsguard's own C-MOVE records always count."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest
from atna_corpus import record
from pydantic import ValidationError

from pacsguard.atna.config import AtnaConfig
from pacsguard.atna.explain import explain_patient, settings_of
from pacsguard.atna.ingest import Sender, frame_event
from pacsguard.atna.message.build import to_xml
from pacsguard.atna.message.record import AuditRecord, Participant
from pacsguard.events.model import Event, Party
from store_helpers import new_store

RIS = Sender("10.20.0.5", 40000, "tls", "octet-counting")
MALLORYS_PC = Sender("10.66.0.13", 40001, "tls", "octet-counting")


def at(hour: int) -> datetime:
    return datetime(2026, 12, 3, hour, tzinfo=timezone.utc)


def message(sender: Sender, event_id: str, when: datetime, *users: str, action: str) -> Event:
    people = tuple(Participant(u, user_name=u, requestor=n == 0, access_point=sender.host, access_point_type="2")
                   for n, u in enumerate(users))
    r: AuditRecord = replace(record(event_id), time=when, participants=people, action=action)
    return frame_event(sender, b"<85>1 - host audit - IHE+RFC-3881 - " + to_xml(r))


def verdicts(tmp_path: Path, events: list[Event], explain: dict[str, object]) -> dict[str, str | None]:
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    store.append(events)
    settings = settings_of(AtnaConfig.model_validate({"privacy": {"explain": explain}}).privacy)
    return {v.item.user: v.template for v in explain_patient(store, "PID-0042", None, None, settings)}


def test_an_order_the_accessor_wrote_explains_nothing_once_evidence_senders_are_named(tmp_path: Path) -> None:
    events = [
        message(MALLORYS_PC, "110110", at(9), "mallory", action="R"),  # reads a VIP's record
        message(MALLORYS_PC, "110109", at(10), "mallory", "mallory", action="C"),  # then "orders" for herself
        message(RIS, "110109", at(8), "orderdesk", "lee", action="C"),  # a real order from the RIS
        message(RIS, "110110", at(11), "lee", action="R"),
    ]
    anyone = verdicts(tmp_path / "a", events, {})
    assert anyone == {"mallory": "order-names-user", "lee": "order-names-user"}  # the documented default
    named = verdicts(tmp_path / "b", events, {"evidence_from": ["10.20.0.0/24"]})
    assert named == {"mallory": None, "lee": "order-names-user"}


def test_pacsguards_own_c_move_counts_whatever_evidence_from_says(tmp_path: Path) -> None:
    move = Event(kind="dicom.dimse.c-move", component="gateway", time=at(9), actor=Party("RIS", "10.20.0.5"),
                 target=Party("PACS", "10.20.0.2", 104), patient_ids=("PID-0042",), message="c-move status 0x0000",
                 details={"route": "pacs", "flow": "c1", "called_ae": "PACS", "message_id": 1, "duration_ms": 4.0,
                          "sop_class": "1.2.840.10008.5.1.4.1.2.2.2", "status": "0x0000", "move_destination": "RADWS3"})
    viewer = (Participant("tech", user_name="tech", requestor=True, access_point="10.30.0.33", access_point_type="2"),
              Participant("VIEWER@10.30.0.33", alternative_user_id="AETITLES=RADWS3", access_point="10.30.0.33",
                          access_point_type="2"))
    r = replace(record("110103"), time=at(10), participants=viewer, action="R")
    read = frame_event(Sender("10.30.0.33", 40002, "tls", "octet-counting"),
                       b"<85>1 - ws audit - IHE+RFC-3881 - " + to_xml(r))
    assert verdicts(tmp_path, [move, read], {"evidence_from": ["10.20.0.5"]})["tech"] == "move-to-workstation"


def test_evidence_from_takes_addresses_and_networks_and_names_a_bad_one() -> None:
    config = AtnaConfig.model_validate({"privacy": {"explain": {"evidence_from": ["10.20.0.5", "fd00::/8"]}}})
    assert config.privacy is not None
    assert [str(n) for n in config.privacy.explain.evidence_from] == ["10.20.0.5/32", "fd00::/8"]
    with pytest.raises(ValidationError, match="host bits set"):
        AtnaConfig.model_validate({"privacy": {"explain": {"evidence_from": ["10.20.0.5/16"]}}})
