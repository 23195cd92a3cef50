"""Outside round 9 (area A2): which silence limit applies when, in memory with the exact PDUs.

`limits.response_timeout` replaces `limits.idle_timeout` only while a request of the client waits
for the PACS's final response and the PACS waits for nothing from the client (docs/gateway.md,
"Long retrieves"); once the final response has come, idleness is measured from it again, and a
client that leaves the PACS's own request unanswered (a C-GET's C-STORE-RQ, PS3.4 C.4.3.3) is idle.
The real-peer tests are in test_r9b_records.py.
"""

from __future__ import annotations

import asyncio
import time

from playbook import CT_STORAGE, STUDY_FIND, Playbook, associate_ac, associate_rq, request, route_config
from test_r9_relay_async import STUDY_GET, find_rq, find_rsp, identifier

from pacsguard.dicom import dimse
from pacsguard.events import Event

LIMITS = {"idle_timeout": 1, "response_timeout": 5}


def aborted(pb: Playbook) -> list[Event]:
    return [e for e in pb.events if e.kind == "dicom.association.aborted"]


async def until_closed(pb: Playbook, limit: float) -> float | None:
    """Seconds until the relay closed (None: still open after ``limit`` s)."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        assert pb.relay is not None
        if pb.relay.closed:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    return None


def test_idleness_counts_again_from_the_final_response() -> None:
    """A C-FIND answered after 1.6 s (past idle_timeout 1 s, within response_timeout 5 s) passes;
    the silence after its final response is then idleness: cut off about 1 s later, not once
    response_timeout has passed."""
    pb = Playbook(route_config(policy={"services": ["C-FIND"]}, limits=LIMITS))
    closed: list[float | None] = []

    async def run() -> None:
        pb.connect()
        await pb.client(associate_rq("WS1", "PACSGUARD", STUDY_FIND))
        await pb.upstream(associate_ac())
        await pb.client(find_rq(1))
        await asyncio.sleep(1.6)
        assert pb.relay is not None and not pb.relay.closed, [e.message for e in pb.events]
        await pb.upstream(find_rsp(1, dimse.STATUS_SUCCESS))
        closed.append(await until_closed(pb, 3.0))

    asyncio.run(run())
    assert closed[0] is not None and 0.7 < closed[0] < 1.8, closed
    (event,) = aborted(pb)
    assert event.details["cause"] == "timeout" and "idle for" in event.details["reason"]
    (find,) = [e for e in pb.events if e.kind == "dicom.dimse.c-find"]
    assert find.details["status"] == "0x0000"


def test_a_client_silent_on_the_pacss_sub_operation_is_idle() -> None:
    """A C-GET waits for its final response, but the PACS's C-STORE-RQ (its sub-operation) waits for
    the client: the client's silence is idleness (idle_timeout 1 s), not a wait for the PACS."""
    store = request(dimse.CommandSet(dimse.C_STORE_RQ, message_id=1, affected_sop_class_uid=CT_STORAGE,
                                     affected_sop_instance_uid="1.2.3.4.5", priority=0,
                                     move_originator_message_id=2, command_data_set_type=0x0101), None, 5)
    get = request(dimse.CommandSet(dimse.C_GET_RQ, message_id=2, affected_sop_class_uid=STUDY_GET, priority=0,
                                   command_data_set_type=0), identifier(b"PAT1"), 3)
    pb = Playbook(route_config(policy={"services": ["C-GET", "C-STORE"]}, limits=LIMITS))
    closed: list[float | None] = []

    async def run() -> None:
        pb.connect()
        await pb.client(associate_rq("WS1", "PACSGUARD", STUDY_FIND, STUDY_GET, CT_STORAGE))
        await pb.upstream(associate_ac(0, 0, 0))
        await pb.client(get)
        await pb.upstream(store)
        closed.append(await until_closed(pb, 3.0))

    asyncio.run(run())
    assert closed[0] is not None and closed[0] < 1.8, closed
    (event,) = aborted(pb)
    assert "idle for" in event.details["reason"]
