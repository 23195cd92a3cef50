"""Round 11, helper B: the gateway's C-MOVE ledger (records.moves) holds at most one bounded
number of identifiers over all its open C-MOVEs, whatever their number and size, and says what
it left out (docs/gateway.md, "C-MOVE through the gateway").

Fed through the ledger's own API: a real C-MOVE of more than 200,000 instances does not fit in
CI; the real-peer tests of the normal path (test_r10B2_move_return_route.py,
test_r10L_move_store_forward_return.py) go through the same credits.
"""

from __future__ import annotations

import logging

import pytest

from pacsguard.records import moves as ledger_module
from pacsguard.records.moves import MoveLedger, OpenMove

BOUND = 200_000  # identifiers held across the ledger (docs/gateway.md)
PER_MOVE = 10_000  # SOP instances one C-MOVE tells apart
STUDY = "1.2.826.0.1.3680043.10.112.21"


def held(moves: list[OpenMove]) -> int:
    """Identifiers the entries hold: what the ledger's memory grows with."""
    return sum(len(m.sop_instances) + len(m.patients) + len(m.studies) + len(m.routes) + len(m.originators)
               for m in moves)


def flood(ledger: MoveLedger, count: int) -> list[OpenMove]:
    """*count* C-MOVEs, each credited with PER_MOVE distinct instances of its own patient."""
    opened = []
    for n in range(count):
        move = ledger.open(requestor_ae="MOVER", message_id=n + 1, destination="WS1", scp_ae="ARCHIVE",
                           route="main")
        for i in range(PER_MOVE):
            move.credit(f"{STUDY}.{n}.{i}", f"P{n}", STUDY, "ret", "MOVER")
        opened.append(move)
    return opened


def test_the_identifiers_held_over_all_open_c_moves_stay_within_one_bound(caplog: pytest.LogCaptureFixture) -> None:
    """21 open C-MOVEs of 10,000 instances each: 210,000 SOP Instance UIDs offered. Before, each
    entry held its 10,000 (the open entries, 10,000 of them, by their instances: 10^8); now the
    ledger holds at most BOUND in all. Every instance still counts; the C-MOVEs that met the bound
    say so, count what was left unchecked and still name their patient; the log says it once,
    without a patient."""
    ledger = MoveLedger()
    with caplog.at_level(logging.INFO, logger="pacsguard.records"):
        opened = flood(ledger, 21)
    assert held(opened) <= BOUND, held(opened)  # before: 210,084
    assert ledger.held.count == held(opened)
    assert all(m.instances == PER_MOVE for m in opened)
    first, last = opened[0].details(), opened[-1].details()
    assert first == {"instances": PER_MOVE, "routes": ["ret"], "move_originators": ["MOVER"]}, first
    # past nine tenths of the bound no SOP Instance UID is held: repeats are no longer told apart,
    # but the patient and study are still named
    assert last == {"instances": PER_MOVE, "routes": ["ret"], "move_originators": ["MOVER"],
                    "instances_unchecked": PER_MOVE, "ledger_full": True}, last
    assert list(opened[-1].patients) == ["P20"] and list(opened[-1].studies) == [STUDY]
    full = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(full) == 1 and "ledger is full" in full[0].getMessage(), [r.getMessage() for r in caplog.records]
    assert not any("P1" in r.getMessage() or STUDY in r.getMessage() for r in caplog.records)

    # Closing gives the room back: the C-MOVEs after them are listed in full again.
    with caplog.at_level(logging.INFO, logger="pacsguard.records"):
        for move in opened:
            ledger.close(move)
    assert ledger.held.count == 0 and held(opened) == 4 * len(opened)  # what the events name stays
    assert any("room again" in r.getMessage() for r in caplog.records)
    (again,) = flood(ledger, 1)
    assert again.details() == {"instances": PER_MOVE, "routes": ["ret"], "move_originators": ["MOVER"]}
    assert ledger_module.MAX_HELD == BOUND


def test_at_the_bound_patients_and_studies_are_counted_not_listed() -> None:
    """A ledger whose whole room is taken: a further C-MOVE's patient and study are counted in
    `patients_omitted` and `studies_omitted`, never raised."""
    ledger = MoveLedger(held=100)
    big = ledger.open(requestor_ae="MOVER", message_id=1, destination="WS1", scp_ae="ARCHIVE", route="main")
    for i in range(200):
        big.credit(f"{STUDY}.{i}", f"P{i}", f"{STUDY}.{i}", "ret", "MOVER")
    assert ledger.held.count == 100
    late = ledger.open(requestor_ae="MOVER", message_id=2, destination="WS1", scp_ae="ARCHIVE", route="main")
    late.credit(f"{STUDY}.x", "PX", STUDY, "ret", "MOVER")
    assert late.details() == {"instances": 1, "routes": [], "patients_omitted": 1, "studies_omitted": 1,
                              "instances_unchecked": 1, "ledger_full": True}
    assert ledger.held.count == 100


def test_a_credit_after_the_c_move_ended_changes_nothing() -> None:
    """A sub-operation credited once its Success is sent (a store-and-forward route) may come after
    the C-MOVE's own final response from a careless SCP: the entry's event is out, its room given
    back; the late credit takes none."""
    from pacsguard.records.moves import CreditWhenSent

    ledger = MoveLedger()
    move = ledger.open(requestor_ae="MOVER", message_id=3, destination="WS1", scp_ae="ARCHIVE", route="main")
    route = CreditWhenSent(ledger)
    linked, how = route.sub_operation(destination="WS1", caller_ae="ARCHIVE", originator_ae="MOVER",
                                      originator_message_id=3)
    assert how == "move_originator" and linked[0].route == "main" and linked[0].message_id == 3
    linked[0].credit(f"{STUDY}.1", "P1", STUDY, "ret", "MOVER")
    sent = route.take()
    assert move.instances == 0 and ledger.held.count == 0  # not before its Success is sent
    ledger.close(move)
    sent()
    assert move.instances == 0 and ledger.held.count == 0
