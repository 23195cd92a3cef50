"""An in-memory harness for the relay, in the spirit of mitmproxy's playbooks: a relay on a route
(built from a Route config, with the route's real checks), fake client and upstream transports
that record what is written to them, no sockets. A test feeds PDUs from either side and asserts
the exact PDUs each side received and the Events recorded.

    async with Playbook(route_config(...)) as pb:
        await pb.client(associate_rq())
        assert pb.to_upstream() == [...]
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Awaitable, Callable

from pacsguard.config.schema import Route
from pacsguard.dicom import dimse
from pacsguard.dicom import pdu as P
from pacsguard.events import Event
from pacsguard.gateway import quarantine as q
from pacsguard.gateway.checks import Shared, build_chain
from pacsguard.gateway.relay import AssociationRelay, Side
from pacsguard.ids import Alert, Flow
from pacsguard.records.dicom import RefusalLog

IMPLICIT_LE = "1.2.840.10008.1.2"
VERIFICATION = "1.2.840.10008.1.1"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
MAX_PDU = 16384


def route_config(**overrides: Any) -> Route:
    """A route listening as PACSGUARD in front of PACS; keyword arguments set its keys."""
    return Route.model_validate({"name": "unit",
                                 "listen": {"host": "127.0.0.1", "port": 11112, "ae_title": "PACSGUARD"},
                                 "upstream": {"host": "127.0.0.1", "port": 11113, "ae_title": "PACS"}, **overrides})


def associate_rq(calling: str = "WS1", called: str = "PACSGUARD", *abstract_syntaxes: str) -> bytes:
    contexts = [P.PresentationContextRQ(2 * i + 1, uid, [IMPLICIT_LE])
                for i, uid in enumerate(abstract_syntaxes or (VERIFICATION,))]
    return P.encode_associate_rq(P.AssociateRQ(
        called_ae_title=called, calling_ae_title=calling, presentation_contexts=contexts,
        user_information=P.UserInformation.build(max_length=MAX_PDU, implementation_class_uid="1.2.3")))


def associate_ac(*results: int, calling: str = "WS1") -> bytes:
    """The upstream's A-ASSOCIATE-AC; one result per proposed context (default: one accepted)."""
    contexts = [P.PresentationContextAC(2 * i + 1, r, IMPLICIT_LE) for i, r in enumerate(results or (P.PC_ACCEPTANCE,))]
    info = P.UserInformation.build(max_length=MAX_PDU, implementation_class_uid="1.2.4")
    return P.encode_associate_ac(P.AssociateAC("PACS", calling, contexts, info))


def request(command: dimse.CommandSet, dataset: bytes | None = None, context_id: int = 1) -> bytes:
    return b"".join(P.encode_dimse_message(context_id, dimse.encode_command_set(command), dataset, MAX_PDU))


def echo_rq(message_id: int = 1, context_id: int = 1) -> bytes:
    return request(dimse.CommandSet(dimse.C_ECHO_RQ, message_id=message_id, affected_sop_class_uid=VERIFICATION,
                                    command_data_set_type=0x0101), context_id=context_id)


def response(rq: bytes, status: int = dimse.STATUS_SUCCESS, context_id: int = 1) -> bytes:
    """The upstream's final response to a request built above."""
    first = split(rq)[0]  # the command's PDU
    (_, _, start, end), *_ = P.pdv_spans(first)
    command = dimse.decode_command_set(first[start:end])
    return b"".join(P.encode_dimse_message(context_id, dimse.response_for(command, status), None, MAX_PDU))


def split(data: bytes) -> list[bytes]:
    """Whole PDUs of a byte stream (PS3.8 9.3.1: type, reserved, 4-byte length)."""
    out, pos = [], 0
    while pos + 6 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos + 2)
        out.append(data[pos:pos + 6 + length])
        pos += 6 + length
    assert pos == len(data), "a partial PDU was written"
    return out


def client_data_sets(pb: Playbook, max_pdu: int) -> list[bytes]:
    """The data sets the gateway wrote to the client after its A-ASSOCIATE-AC, each whole; every
    P-DATA-TF it sent carries at most ``max_pdu`` bytes (PS3.8 D.1)."""
    received: list[bytes] = []
    current = bytearray()
    for raw in split(bytes(pb.client_wire.out))[1:]:
        for pdv in P.parse_p_data_tf(raw).pdvs:
            assert len(raw) - 6 <= max_pdu
            if not pdv.is_command:
                current += pdv.value
                if pdv.is_last:
                    received.append(bytes(current))
                    current.clear()
    return received


@dataclass(frozen=True)
class Seen:
    """One PDU as a test compares it: its name and key fields."""

    name: str
    fields: tuple[Any, ...] = ()


def seen(raw: bytes) -> Seen:
    parsed = P.parse_pdu(raw)
    if isinstance(parsed, P.AssociateRJ):
        return Seen("A-ASSOCIATE-RJ", (parsed.result, parsed.source, parsed.reason))
    if isinstance(parsed, P.AssociateAC):
        return Seen("A-ASSOCIATE-AC", tuple((pc.context_id, pc.result) for pc in parsed.presentation_contexts))
    if isinstance(parsed, P.AssociateRQ):
        return Seen("A-ASSOCIATE-RQ", (parsed.calling_ae_title, parsed.called_ae_title))
    if isinstance(parsed, P.Abort):
        return Seen("A-ABORT", (parsed.source,))
    if isinstance(parsed, P.PDataTF):
        commands = [dimse.decode_command_set(bytes(v.value)) for v in parsed.pdvs if v.is_command]
        data = sum(len(v.value) for v in parsed.pdvs if not v.is_command)
        return Seen("P-DATA-TF", tuple((dimse.command_name(c.command_field), c.status) for c in commands)
                    + ((("data", data),) if data else ()))
    return Seen(P.PDU_TYPE_NAMES[raw[0]])


class Wire:
    """A transport that records what the relay writes to it."""

    def __init__(self, host: str, port: int) -> None:
        self.out = bytearray()
        self.read = 0
        self.closed = False
        self.peer = (host, port)

    def write(self, data: bytes | memoryview) -> None:
        self.out += data

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.peer}.get(name, default)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def received(self) -> list[Seen]:
        """The PDUs written since the last call."""
        new, self.read = bytes(self.out[self.read:]), len(self.out)
        return [seen(raw) for raw in split(new)]


@dataclass
class FakeEngine:
    """Stands in for the IDS engine behind its DICOM adapter: one rule that fires with `action` on every decoder
    event of type `on` (a class name, e.g. "AssociationRequested"); records what it observed."""

    on: str
    action: str = "alert"
    rule_id: str = "test-rule"
    observed: list[str] = field(default_factory=list)
    dicom_ports: list[int] = field(default_factory=list)  # the route ports the check handed over

    def _fire(self, flow: Flow, what: str) -> list[Alert]:
        self.observed.append(what)
        if what != self.on:
            return []
        event = Event(kind=f"ids.alert.{self.rule_id}", component="ids", message="test rule fired",
                      details={"rule": self.rule_id, "action": self.action})
        return [Alert(self.rule_id, "test rule", event.severity, self.action,  # type: ignore[arg-type]
                      timedelta(minutes=5) if self.action == "quarantine" else None,
                      "test rule fired", "", flow, event)]

    def observe(self, flow: Flow, ev: object) -> list[Alert]:
        return self._fire(flow, type(ev).__name__)

    def decode_error(self, flow: Flow, from_client: bool, err: Exception) -> list[Alert]:
        return self._fire(flow, "decode-error")

    def association_result(self, flow: Flow, *, rejected: bool, reason: str, by: str) -> list[Alert]:
        return self._fire(flow, f"rejected:{reason}")

    def flow_closed(self, flow: Flow) -> list[Alert]:
        return self._fire(flow, "flow-closed")

    def add_dicom_ports(self, ports: list[int]) -> None:
        self.dicom_ports.extend(ports)

    def expected(self, flow: Flow, called_ae: str | None) -> None:
        return None  # this fake announces no association


class Playbook:
    """A route (the relay's RouteView) with one association at a time on in-memory transports."""

    def __init__(self, route: Route, *, engine: FakeEngine | None = None, host: str = "127.0.0.1",
                 quarantine_policy: q.QuarantinePolicy = q.QuarantinePolicy()) -> None:
        self.route = route
        self.quarantined = q.QuarantineList()
        self.quarantine_policy = quarantine_policy
        self.checks = build_chain(route, Shared(self.quarantined, engine))  # type: ignore[arg-type]
        self.upstream_ssl = None
        self.durability = None  # answers are never held here (tests/gateway/test_durable.py holds them)
        self.events: list[Event] = []
        self.relays: set[AssociationRelay] = set()
        self.refusals = RefusalLog(route.limits.refusals_recorded_per_minute, self.publish)
        self.host = host
        self.relay: AssociationRelay | None = None
        self.client_wire = self.upstream_wire = Wire(host, 0)

    # --- the RouteView ---------------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        self.events.append(event)

    def register(self, relay: AssociationRelay) -> None:
        self.relays.add(relay)

    def unregister(self, relay: AssociationRelay) -> None:
        self.relays.discard(relay)

    def quarantine(self, target: str, *, duration: timedelta | None, reason: str, component: str) -> None:
        event = q.change_event("add", target, duration=duration, reason=reason, component=component)
        self.publish(event)
        self.quarantined.apply(event)
        for relay in list(self.relays):  # as Gateway.enforce: cut off the quarantined device
            if self.quarantined.match(relay.host, relay.calling_ae) is not None:
                relay.abort(f"{target} is quarantined", kind="quarantine")

    # --- driving ---------------------------------------------------------------------------------

    def connect(self, port: int = 40000) -> AssociationRelay:
        """A new client connection (the previous association, if any, is left as it is)."""
        relay = AssociationRelay(self)  # type: ignore[arg-type]
        self.relay = relay
        self.client_wire = Wire(self.host, port)
        self.upstream_wire = Wire(self.route.upstream.host, self.route.upstream.port)
        client = Side(relay, True)
        client.connection_made(self.client_wire)  # type: ignore[arg-type]
        upstream_wire = self.upstream_wire

        async def connect_upstream(raw_rq: bytes) -> None:
            side = Side(relay, False)
            side.connection_made(upstream_wire)  # type: ignore[arg-type]
            relay.upstream = side
            relay.state = "awaiting-ac"
            upstream_wire.write(P.with_called_ae(raw_rq, self.route.upstream.ae_title))

        relay._connect = connect_upstream  # type: ignore[method-assign]
        return relay

    async def client(self, *pdus: bytes) -> None:
        assert self.relay is not None
        for pdu in pdus:
            self.relay.data_received(True, pdu)
            await asyncio.sleep(0)  # the upstream connection is a task

    async def upstream(self, *pdus: bytes) -> None:
        assert self.relay is not None
        for pdu in pdus:
            self.relay.data_received(False, pdu)
            await asyncio.sleep(0)

    async def associate(self, *abstract_syntaxes: str, calling: str = "WS1") -> None:
        """RQ from the client, AC (all contexts accepted) from the upstream; both legs drained."""
        await self.client(associate_rq(calling, "PACSGUARD", *abstract_syntaxes))
        await self.upstream(associate_ac(*[P.PC_ACCEPTANCE] * max(1, len(abstract_syntaxes)), calling=calling))
        self.to_client(), self.to_upstream()

    def to_client(self) -> list[Seen]:
        return self.client_wire.received()

    def to_upstream(self) -> list[Seen]:
        return self.upstream_wire.received()

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]

    def rules(self, kind: str) -> list[Any]:
        return [e.details.get("rule") for e in self.events if e.kind == kind]

    def close(self) -> None:
        for relay in list(self.relays):
            relay.close()


def play(route: Route, scenario: Callable[[Playbook], Awaitable[None]], **kw: Any) -> Playbook:
    """Run *scenario* on one connection of a Playbook over *route*; the Playbook, for its assertions."""
    pb = Playbook(route, **kw)

    async def run() -> None:
        pb.connect()
        try:
            await scenario(pb)
        finally:
            pb.close()

    asyncio.run(run())
    return pb
