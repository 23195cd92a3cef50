"""White-box check of one ordering rule of the relay's cut-through (docs/gateway.md): while a data
PDU from the upstream is being passed on to the client as it arrives, an answer the gateway itself
gives the client (here the refusal of a C-MOVE to a destination the policy does not allow, PS3.4
C.4.2.1.4: 0xA801) must wait until that PDU is complete, never land inside it.

The relay runs on a real event loop with in-memory transports: the one case that needs an upstream
streaming a data set to the client while the client's own request is refused cannot be produced on
demand by a real PACS.
"""

from __future__ import annotations

import asyncio

from dicom_corpus import el_implicit
from pacsguard.config.schema import Route
from pacsguard.dicom import dimse
from pacsguard.dicom import pdu as P
from pacsguard.gateway.check import Chain
from pacsguard.gateway.relay import AssociationRelay, Side
from pacsguard.records.dicom import RefusalLog

MOVE = "1.2.840.10008.5.1.4.1.2.2.2"  # Study Root Query/Retrieve Information Model - MOVE
IMPLICIT_LE = "1.2.840.10008.1.2"


class MemoryTransport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def write(self, data) -> None:
        self.out += data

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default=None):
        return {"peername": ("127.0.0.1", 40000)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Runtime:
    """The relay's view of its route (RouteView); its only check is the route's services check, so
    the policy under test is the route's C-MOVE destination list (empty: no destination allowed)."""

    def __init__(self) -> None:
        from pacsguard.gateway.checks.services import ServicesCheck

        self.route = Route.model_validate({
            "name": "unit", "listen": {"host": "127.0.0.1", "port": 11112, "ae_title": "PACSGUARD"},
            "upstream": {"host": "127.0.0.1", "port": 11113, "ae_title": "PACS"}})
        self.checks = Chain([ServicesCheck(self.route)])
        self.upstream_ssl = None
        self.durability = None  # answers are not held for their records here
        self.refusals = RefusalLog(self.route.limits.refusals_recorded_per_minute, lambda event: None)
        self.events: list = []

    def register(self, relay) -> None: ...

    def unregister(self, relay) -> None: ...

    def publish(self, event) -> None:
        self.events.append(event)

    def quarantine(self, target, *, duration, reason, component) -> None: ...


def test_gateway_answer_waits_for_the_pdu_in_flight_to_its_receiver():
    async def scenario() -> None:
        rt = Runtime()
        relay = AssociationRelay(rt)  # type: ignore[arg-type]
        client = Side(relay, True)
        client.connection_made(MemoryTransport())  # type: ignore[arg-type]
        upstream = Side(relay, False)

        async def connect(raw_rq: bytes) -> None:  # the upstream leg, in memory
            upstream.connection_made(MemoryTransport())  # type: ignore[arg-type]
            relay.upstream = upstream
            relay.state = "awaiting-ac"
            upstream.transport.write(raw_rq)

        relay._connect = connect  # type: ignore[method-assign]
        rq = P.AssociateRQ(called_ae_title="PACSGUARD", calling_ae_title="WS1",
                           presentation_contexts=[P.PresentationContextRQ(1, MOVE, [IMPLICIT_LE])],
                           user_information=P.UserInformation.build(max_length=16384, implementation_class_uid="1.2.3"))
        relay.data_received(True, P.encode_associate_rq(rq))
        await asyncio.sleep(0)
        ac = P.AssociateAC("PACS", "WS1", [P.PresentationContextAC(1, P.PC_ACCEPTANCE, IMPLICIT_LE)],
                           P.UserInformation.build(max_length=16384, implementation_class_uid="1.2.4"))
        relay.data_received(False, P.encode_associate_ac(ac))
        assert relay.state == "established"
        client.transport.out.clear()

        # The upstream is in the middle of passing a data PDU to the client: 1,000 bytes to come.
        relay.through[False] = 1000
        command = dimse.encode_command_set(dimse.CommandSet(
            dimse.C_MOVE_RQ, message_id=5, affected_sop_class_uid=MOVE, priority=0,
            move_destination="EVIL", command_data_set_type=0x0001))
        identifier = (el_implicit(0x00080052, b"STUDY", pad=b" ")
                      + el_implicit(0x0020000D, b"1.2.826.0.1.3680043.9.7.9", pad=b" "))
        relay.data_received(True, b"".join(P.encode_dimse_message(1, command, identifier, 16384)))
        assert bytes(client.transport.out) == b"", "the refusal was written inside the PDU in flight"
        assert not upstream.transport.out.endswith(command), "a refused C-MOVE reached the PACS"

        rest = bytes(range(256)) * 3 + bytes(232)
        relay.data_received(False, rest)
        out = bytes(client.transport.out)
        assert out[:1000] == rest, "the rest of the PDU in flight was not passed on first"
        answer = out[1000:]
        assert answer and answer[0] == P.PDU_P_DATA_TF
        (_, _, start, end), *_ = P.pdv_spans(answer)
        rsp = dimse.decode_command_set(answer[start:end])
        assert rsp.command_field == dimse.C_MOVE_RSP and rsp.status == dimse.STATUS_MOVE_DESTINATION_UNKNOWN
        assert rsp.message_id_being_responded_to == 5
        assert relay.deferred[False] == []
        relay.close()

    asyncio.run(scenario())
