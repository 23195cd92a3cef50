"""Round 11, helper L: a C-MOVE the gateway's ledger of open C-MOVEs forgot (records.moves: past
its capacity, MAX_OPEN_MOVES, the oldest is forgotten and credited no more) says so in its event,
`details.delivered.evicted: true`, instead of naming fewer deliveries as if they were all; the log
says it once per burst of evictions, without a patient.

Through the ledger's API with a small capacity and the association record's C-MOVE path
(records.dicom), as the relay feeds it: 10,000 real C-MOVEs do not fit in CI.
"""

from __future__ import annotations

import logging

import pytest

from pacsguard.dicom.dimse import C_MOVE_RQ, RESPONSE_BIT, CommandSet
from pacsguard.dicom.events import DimseCommand
from pacsguard.events import Event, Party
from pacsguard.records.dicom import AssociationRecord
from pacsguard.records.moves import MoveLedger

STUDY = "1.2.826.0.1.3680043.10.121.1"
PATIENT = "R11L^EVICTED"


def c_move(record: AssociationRecord, message_id: int) -> None:
    record.command(DimseCommand(True, 1, None, None, CommandSet(C_MOVE_RQ, message_id=message_id,
                                                                move_destination="WS1")))


def final_response(record: AssociationRecord, message_id: int) -> None:
    record.command(DimseCommand(False, 1, None, None, CommandSet(
        C_MOVE_RQ | RESPONSE_BIT, message_id_being_responded_to=message_id, status=0,
        completed_suboperations=2, failed_suboperations=0, warning_suboperations=0, remaining_suboperations=0)))


def credit(ledger: MoveLedger, message_id: int, instance: str) -> None:
    """A sub-operation's C-STORE the destination acknowledged, on the return route."""
    moves, _ = ledger.sub_operation(destination="WS1", caller_ae="ARCHIVE", originator_ae="MOVER",
                                    originator_message_id=message_id)
    for move in moves:
        move.credit(f"{STUDY}.{instance}", PATIENT, STUDY, "ret", "MOVER")


def test_an_evicted_c_move_says_so_and_the_log_says_it_once_per_burst(caplog: pytest.LogCaptureFixture) -> None:
    ledger = MoveLedger(capacity=2)
    published: list[Event] = []
    record = AssociationRecord(published.append, component="gateway", client=Party(ae_title="MOVER"),
                               server=Party(ae_title="ARCHIVE"), route="main", called_ae="PACSGUARD", moves=ledger)
    with caplog.at_level(logging.INFO, logger="pacsguard.records"):
        c_move(record, 1)
        credit(ledger, 1, "1")  # delivered before the ledger forgot it
        for message_id in (2, 3, 4):  # a burst: C-MOVEs 1 and 2 are forgotten
            c_move(record, message_id)
        credit(ledger, 1, "2")  # delivered after: counted nowhere
        assert len(ledger) == 2
        for message_id in (1, 2, 3, 4):
            final_response(record, message_id)
    moves = {e.details["message_id"]: e for e in published if e.kind == "dicom.dimse.c-move"}
    first = moves[1].details.get("delivered")
    assert first == {"instances": 1, "routes": ["ret"], "move_originators": ["MOVER"], "evicted": True}, first
    assert moves[1].patient_ids == (PATIENT,)  # what it named before it was forgotten stays
    # forgotten before any delivery: it still says it cannot tell
    assert moves[2].details.get("delivered") == {"instances": 0, "routes": [], "evicted": True}
    assert "delivered" not in moves[3].details and "delivered" not in moves[4].details  # kept, nothing came
    said = [r.getMessage() for r in caplog.records]
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1, said
    assert any("forgot" in m for m in said) and any("room again" in m for m in said), said
    assert not any(PATIENT in m or STUDY in m for m in said), said

    # A second burst is said again.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pacsguard.records"):
        for message_id in (5, 6, 7):
            c_move(record, message_id)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "forgotten" in warned[0], warned
