"""Round 10, helper B2: the gateway's ledger of open C-MOVEs (records.moves) in memory: which
C-MOVE a sub-operation's C-STORE is linked to (PS3.7 9.1.1.1, PS3.4 C.4.2.2), each object once,
and a bound no client can push."""

from __future__ import annotations

from pacsguard.records.moves import MoveLedger


def test_a_sub_operation_is_linked_by_originator_then_message_id_then_destination() -> None:
    ledger = MoveLedger()
    a = ledger.open(requestor_ae="WSA", message_id=7, destination="WS1", scp_ae="PACS", route="main")
    b = ledger.open(requestor_ae="WSB", message_id=7, destination="WS1", scp_ae="PACS", route="main")
    other = ledger.open(requestor_ae="WSA", message_id=7, destination="WS2", scp_ae="PACS", route="main")
    found = dict(destination="WS1", caller_ae="PACS")
    assert ledger.sub_operation(**found, originator_ae="WSA", originator_message_id=7) == ([a], "move_originator")
    # pynetdicom names itself: the Message ID still links, to both C-MOVEs of that number
    assert ledger.sub_operation(**found, originator_ae="PACS", originator_message_id=7) == ([a, b], "message_id")
    assert ledger.sub_operation(**found, originator_ae="WSA", originator_message_id=8) == ([], "")
    # no Move Originator Message ID: every C-MOVE to WS1 this caller serves, none another caller's
    assert ledger.sub_operation(**found, originator_ae=None, originator_message_id=None) == ([a, b], "destination")
    assert ledger.sub_operation(destination="WS1", caller_ae="STRANGER", originator_ae=None,
                                originator_message_id=None) == ([], "")
    ledger.close(a)
    ledger.close(a)  # twice: nothing more
    assert ledger.sub_operation(**found, originator_ae="WSA", originator_message_id=7) == ([b], "message_id")
    assert len(ledger) == 2 and other.destination == "WS2"


def test_each_object_counts_once_and_mismatches_are_counted() -> None:
    move = MoveLedger().open(requestor_ae="WSA", message_id=1, destination="WS1", scp_ae="PACS", route="main")
    for _ in range(2):  # the same instance twice (two legs of one sub-operation in a capture)
        move.credit("1.2.3", "P1", "1.2", "ret", "PACS")
    move.credit("1.2.4", "P2", "1.2", "ret", "WSA")
    assert move.details() == {"instances": 2, "routes": ["ret"], "move_originators": ["PACS", "WSA"],
                              "originator_mismatch": 1}
    assert list(move.patients) == ["P1", "P2"] and list(move.studies) == ["1.2"]


def test_the_ledger_is_bounded() -> None:
    ledger = MoveLedger(capacity=3)
    moves = [ledger.open(requestor_ae="WS", message_id=n, destination="WS1", scp_ae="PACS", route="main")
             for n in range(5)]
    assert len(ledger) == 3
    # the oldest were forgotten: their sub-operations link to nothing, the newest still do
    assert ledger.sub_operation(destination="WS1", caller_ae="PACS", originator_ae="WS",
                                originator_message_id=0) == ([], "")
    assert ledger.sub_operation(destination="WS1", caller_ae="PACS", originator_ae="WS",
                                originator_message_id=4) == ([moves[4]], "move_originator")
