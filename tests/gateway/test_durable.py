"""Nothing acknowledged without its record, in memory: the relay on a real EventBus whose sink the
test holds shut or makes fail. An answer to the client waits until the Events before it are in
the sink (route `record_before_response`); `on_record_failure` decides what happens while the sink
fails (refuse: transient A-ASSOCIATE-RJ, out-of-resources status, abort after `record_timeout`;
relay: answers pass)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from playbook import CT_STORAGE, Playbook, Seen, associate_ac, associate_rq, request, response, route_config

from pacsguard.config.schema import Route
from pacsguard.dicom import dimse
from pacsguard.dicom import pdu as P
from pacsguard.events import Event, EventBus
from pacsguard.events.durable import Durability
from pacsguard.gateway.checks import Shared, build_chain

STORE_ACK = Seen("P-DATA-TF", (("C-STORE-RSP", dimse.STATUS_SUCCESS),))
LOCAL_LIMIT = (P.RJ_RESULT_TRANSIENT, P.RJ_SOURCE_SERVICE_PROVIDER_PRESENTATION,
               P.RJ_REASON_PRESENTATION_LOCAL_LIMIT_EXCEEDED)


class Gate:
    """An EventSink the test controls: `shut()` makes emit() wait, `fail()` makes it raise."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.open = threading.Event()
        self.open.set()
        self.failing = False

    def shut(self) -> None:
        self.open.clear()

    def fail(self, failing: bool = True) -> None:
        self.failing = failing

    def emit(self, events: Sequence[Event]) -> None:
        self.open.wait(10)
        if self.failing:
            raise OSError(28, "No space left on device")
        self.events.extend(events)

    def close(self) -> None:
        self.open.set()


class DurablePlaybook(Playbook):
    """A Playbook whose Events go through a real bus into a Gate, with the gateway's Durability."""

    def __init__(self, route: Route, gate: Gate) -> None:
        super().__init__(route)
        self.bus = EventBus(gate, max_delay=0.5)  # slow by itself: only hurry() makes answers quick
        self.durability: Durability | None = Durability(self.bus)  # type: ignore[assignment]
        self.checks = build_chain(route, Shared(self.quarantined, None, self.durability))

    def publish(self, event: Event) -> int | None:  # type: ignore[override]
        self.events.append(event)
        return self.bus.publish_ticket(event)


def store_rq(message_id: int = 7) -> bytes:
    command = dimse.CommandSet(dimse.C_STORE_RQ, message_id=message_id, affected_sop_class_uid=CT_STORAGE,
                               affected_sop_instance_uid=f"1.2.3.{message_id}", priority=0,
                               command_data_set_type=0x0000)
    # 64 bytes: Image Type (0008,0008) and the CT SOP Class UID (0008,0016), which a C-STORE's data set
    # must carry (PS3.3 C.12.1) to pass a relayed route
    return request(command, b"\x08\x00\x08\x00\x16\x00\x00\x00ORIGINAL\\PRIMARY\\AXIAL"
                            b"\x08\x00\x16\x00\x1a\x00\x00\x001.2.840.10008.5.1.4.1.1.2\0")


async def until(condition: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met within the timeout")


def run(route: Route, scenario: Callable[[DurablePlaybook, Gate], Any]) -> DurablePlaybook:
    gate = Gate()
    pb = DurablePlaybook(route, gate)

    async def main() -> None:
        pb.connect()
        try:
            await scenario(pb, gate)
        finally:
            pb.close()
            gate.fail(False)
            gate.close()

    try:
        asyncio.run(main())
    finally:
        pb.bus.close(5)
    return pb


async def associate(pb: DurablePlaybook) -> None:
    await pb.client(associate_rq("WS1", "PACSGUARD", CT_STORAGE))
    await pb.upstream(associate_ac(P.PC_ACCEPTANCE))
    got = await until(pb.to_client)
    assert [s.name for s in got] == ["A-ASSOCIATE-AC"]
    pb.to_upstream()


def test_a_store_ack_waits_until_its_record_is_in_the_store() -> None:
    async def scenario(pb: DurablePlaybook, gate: Gate) -> None:
        await associate(pb)
        # The AC itself waited for the records of the request and the acceptance.
        assert [e.kind for e in gate.events][:2] == ["dicom.association.requested", "dicom.association.accepted"]
        gate.shut()
        rq = store_rq()
        await pb.client(rq)
        assert [s.name for s in pb.to_upstream()] == ["P-DATA-TF", "P-DATA-TF"]
        await pb.upstream(response(rq))
        await asyncio.sleep(0.3)
        assert pb.to_client() == [], "the C-STORE-RSP reached the client before its record was durable"
        assert not any(e.kind == "dicom.dimse.c-store" for e in gate.events)
        gate.open.set()
        assert await until(pb.to_client) == [STORE_ACK]
        stored = [e for e in gate.events if e.kind == "dicom.dimse.c-store"]
        assert len(stored) == 1 and stored[0].details["status"] == "0x0000"

    run(route_config(), scenario)


def test_respond_before_record_answers_at_once() -> None:
    async def scenario(pb: DurablePlaybook, gate: Gate) -> None:
        await associate(pb)
        gate.shut()
        rq = store_rq()
        await pb.client(rq)
        await pb.upstream(response(rq))
        assert pb.to_client() == [STORE_ACK]
        assert not any(e.kind == "dicom.dimse.c-store" for e in gate.events)

    run(route_config(record_before_response=False), scenario)


def test_refuse_mode_rejects_new_associations_while_the_store_fails() -> None:
    async def scenario(pb: DurablePlaybook, gate: Gate) -> None:
        gate.fail()
        pb.bus.publish(Event(kind="pacsguard.service.started", component="serve"))
        pb.bus.hurry()
        await until(lambda: pb.bus.failing)
        await pb.client(associate_rq("WS1", "PACSGUARD", CT_STORAGE))
        got = await until(pb.to_client)
        assert got == [Seen("A-ASSOCIATE-RJ", LOCAL_LIMIT)]
        assert pb.to_upstream() == [], "the PACS saw an association the gateway could not record"
        rejected = [e for e in pb.events if e.kind == "dicom.association.rejected"]
        assert rejected[0].details["rule"] == "on_record_failure"
        assert "No space left on device" in rejected[0].details["reason"]

    run(route_config(), scenario)


def test_refuse_mode_answers_new_requests_out_of_resources_and_aborts_held_answers() -> None:
    async def scenario(pb: DurablePlaybook, gate: Gate) -> None:
        await associate(pb)
        held = store_rq(7)
        await pb.client(held)
        pb.to_upstream()
        gate.fail()
        await pb.upstream(response(held))
        await until(lambda: pb.bus.failing)
        # A new request while nothing can be recorded: the gateway answers, the PACS never sees it.
        await pb.client(store_rq(8))
        assert pb.to_upstream() == []
        # The refusal waits behind the held success; when that cannot be recorded within
        # record_timeout the association is aborted: the client never sees an unrecorded success.
        await until(lambda: pb.relay is not None and pb.relay.closed, timeout=3)
        got = pb.to_client()
        assert STORE_ACK not in got
        aborted = [e for e in pb.events if e.kind == "dicom.association.aborted"]
        assert aborted and aborted[0].details["cause"] == "record-failure"
        refused = [e for e in pb.events if e.kind == "dicom.dimse.c-store" and e.details.get("decision") == "refused"]
        assert refused[0].details["status"] == f"0x{dimse.STATUS_OUT_OF_RESOURCES:04X}"

    run(route_config(record_timeout=0.5), scenario)


def test_relay_mode_lets_answers_pass_while_the_store_fails() -> None:
    async def scenario(pb: DurablePlaybook, gate: Gate) -> None:
        await associate(pb)
        gate.fail()
        pb.bus.publish(Event(kind="pacsguard.service.started", component="serve"))
        pb.bus.hurry()
        await until(lambda: pb.bus.failing)
        rq = store_rq()
        await pb.client(rq)
        assert [s.name for s in pb.to_upstream()] == ["P-DATA-TF", "P-DATA-TF"]
        await pb.upstream(response(rq))
        assert await until(pb.to_client) == [STORE_ACK]
        # Recorded once the store takes events again.
        gate.fail(False)
        await until(lambda: any(e.kind == "dicom.dimse.c-store" for e in gate.events))

    run(route_config(on_record_failure="relay"), scenario)
