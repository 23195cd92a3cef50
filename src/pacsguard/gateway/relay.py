"""One relayed association: a transparent DICOM Upper Layer proxy (PS3.8 9) that checks every
PDU against the route's policy before it is forwarded.

The relay forwards PDUs, not bytes: a PDU is passed on only once it has arrived whole and the one
decoder (pacsguard.dicom) has accepted it, so a malformed PDU never reaches the PACS. The one
exception is the bulk of a data set already admitted (see `_stream_dataset`): a P-DATA-TF carrying
one data PDV on that message's context, whose header has been checked, is passed on as its bytes
arrive, straight from the receive buffer. PDUs carrying command fragments are held until the
command set is complete and judged.

States (after PS3.8 9.2, as a proxy sees them):
  awaiting-rq -> connecting (upstream TCP/TLS) -> awaiting-ac -> established -> releasing -> closed

Nothing acknowledged without its record (route `record_before_response`, the default): what goes
to the client after this association published an Event waits in its `Outbox` until that Event is
durable (pacsguard.gateway.outbox), so a C-STORE-RSP, an A-ASSOCIATE-AC or a C-FIND's final
response never reaches the client before the record of the exchange is in the store.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections import deque
from dataclasses import replace
from typing import Any, Protocol

from pacsguard.config.schema import Route
from pacsguard.dicom import dimse
from pacsguard.dicom import pdu as P
from pacsguard.dicom.association import AssociationDecoder
from pacsguard.dicom.dataset import deflate_dataset, inflate_dataset
from pacsguard.dicom.errors import TRUNCATED_PDU, DecodeError
from pacsguard.dicom.events import (
    VIOLATION_MESSAGE_ID_IN_USE,
    VIOLATION_UNSOLICITED_RESPONSE,
    Aborted,
    AssociationAccepted,
    AssociationRejected,
    AssociationRequested,
    DimseCommand,
    DimseDatasetEnd,
    DimseDatasetStart,
    ProtocolEvent,
    ProtocolViolation,
    ReleaseCompleted,
    ReleaseRequested,
)
from pacsguard.dicom.stream import PDUReader, RawPDU, data_fragment_run
from pacsguard.dicom.uids import DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN
from pacsguard.events import Event, Outcome, Party, Severity
from pacsguard.gateway.check import decide, expected_by
from pacsguard.gateway.first_bytes import FirstBytes
from pacsguard.gateway.outbox import Outbox
from pacsguard.gateway.quarantine import SPARED
from pacsguard.gateway.retrieve_ae import KEYWORD, MAX_HELD, HeldResponse, hold_response
from pacsguard.gateway.route import RouteView
from pacsguard.gateway.timer import AssociationTimer, PduClock, idle_left, pdu_left
from pacsguard.gateway.verdict import RJ_CONGESTION, RJ_REFUSED, Action, Verdict, refuse
from pacsguard.gateway.violations import (
    DATA_BEFORE_AC,
    TOLERATED,
    tolerated_apart,
    violation_event,
    warning_event,
)
from pacsguard.records.dicom import AssociationRecord, Pending, RefusalFilter

log = logging.getLogger("pacsguard.gateway")

# Receive buffer per leg: starts small (probes and floods cost little) and grows while reads fill
# it, up to what uvloop itself reads at once.
READ_BUFFER_MIN = 16 * 1024
READ_BUFFER_MAX = 256 * 1024


class Endpoint(Protocol):
    """What a `Side` hands its connection to: a relayed association (`AssociationRelay`), or a
    store-and-forward route's Storage SCP (pacsguard.gateway.store_forward.acceptor)."""

    route: Route
    client: Side | None
    upstream: Side | None

    def client_connected(self, side: Side) -> None: ...

    def data_received(self, from_client: bool, data: memoryview | bytes) -> None: ...

    def connection_lost(self, from_client: bool, exc: Exception | None) -> None: ...

    def set_paused(self, reading_client: bool, paused: bool) -> None: ...

    def abort(self, reason: str, *, kind: str = ...) -> None: ...

    def publish(self, event: Event) -> None: ...


class Side(asyncio.BufferedProtocol):
    """One TCP (or TLS) leg of a relayed association; hands everything to the relay (or, on a
    store-and-forward route, to its Storage SCP: an `Endpoint` either way).

    Reads land in the leg's own buffer, so the data set fast path forwards them without a copy.
    The buffer is reused only when the other leg holds none of it: uvloop keeps a view of what it
    could not send at once, instead of copying it.
    """

    def __init__(self, relay: Endpoint, is_client: bool, peer: tuple[str, int] | None = None) -> None:
        self.relay = relay
        self.is_client = is_client
        # The client's address as accept() returned it (pacsguard.gateway.server.Acceptor): after a
        # reset the kernel no longer knows it, and uvloop asks only on get_extra_info("peername").
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self._view = memoryview(bytearray(READ_BUFFER_MIN))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Without TCP_NODELAY every small C-STORE waits for a delayed ACK (~40 ms).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.is_client:
            self.relay.client_connected(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        other = self.relay.upstream if self.is_client else self.relay.client
        if other is not None and other.transport is not None and other.transport.get_write_buffer_size():
            self._view = memoryview(bytearray(len(self._view)))
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        view = self._view
        if nbytes == len(view) < READ_BUFFER_MAX:
            self._view = memoryview(bytearray(2 * nbytes))  # the old one may be kept by a write below
        self.deliver(view[:nbytes])

    def deliver(self, data: memoryview | bytes) -> None:
        try:
            self.relay.data_received(self.is_client, data)
        except Exception as exc:  # noqa: BLE001 - one broken association must never take the gateway down
            log.exception("route %s: internal error on an association", self.relay.route.name)
            self.relay.abort(f"internal error: {type(exc).__name__}: {exc}", kind="internal-error")

    def eof_received(self) -> bool:
        return False  # half-closed DICOM makes no sense: close the leg

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.connection_lost(self.is_client, exc)

    def pause_writing(self) -> None:
        self.relay.set_paused(not self.is_client, True)

    def resume_writing(self) -> None:
        self.relay.set_paused(not self.is_client, False)


class AssociationRelay:
    """The state of one association between a client (requestor) and the route's upstream."""

    def __init__(self, runtime: RouteView) -> None:
        self.rt = runtime
        self.route = runtime.route
        limits = self.route.limits
        self.client: Side | None = None
        self.upstream: Side | None = None
        self.state = "awaiting-rq"
        #: a peer sent A-ABORT (passed on to the other leg): what arrives after it is ignored
        self.peer_aborted = False
        self.rp_held = False  # the A-RELEASE-RP waits for answers held before it (_finish_release)
        # Bookkeeping deviations the peers themselves ignore pass with a warning (gateway/violations.py).
        self.decoder = AssociationDecoder(max_pdu_length=limits.max_pdu_length,
                                          tolerate=TOLERATED)
        self.readers = {True: PDUReader(limits.max_pdu_length), False: PDUReader(limits.max_pdu_length)}
        self.host = ""
        self.port = 0
        self.calling_ae: str | None = None
        # Contexts of the client's A-ASSOCIATE-RQ the policy refuses: not proposed to the upstream.
        self.withheld: dict[int, str] = {}
        self.cert: dict[str, Any] | None = None
        self.upstream_host: str | None = None  # the upstream leg's peer address, once connected
        self.record: AssociationRecord | None = None
        # Per direction (True = from the client): command PDVs held until the command set is judged,
        # and whether the data set of a refused request is being swallowed.
        self.held: dict[bool, list[P.PDV]] = {True: [], False: []}
        self.dropping: dict[bool, Pending | None] = {True: None, False: None}
        # Per direction: a C-FIND response data set held whole to rewrite its Retrieve AE Title.
        self.collecting: dict[bool, HeldResponse | None] = {True: None, False: None}
        # Cut-through (see _stream_dataset), per direction: bytes of a checked data PDU still to come,
        # and the gateway's own frames for the receiving leg that wait until that PDU is complete.
        self.through: dict[bool, int] = {True: 0, False: 0}
        self.deferred: dict[bool, list[bytes]] = {True: [], False: []}
        self.early: list[bytes] = []
        self.first = FirstBytes()  # the client's first bytes: another protocol's, read as a PDU header?
        self.warned: set[tuple[bool, str]] = set()  # (direction, code) of the warnings recorded
        self.started = time.monotonic()
        self.last_activity = self.started
        self.bytes_in = {True: 0, False: 0}
        self.closed = False
        self.timer = AssociationTimer(self._expired)
        self.pdu_clocks = {True: PduClock(), False: PduClock()}  # per direction: the PDU still arriving
        self._connect_task: asyncio.Task[None] | None = None
        self._dialing = False  # _connect() has begun opening the upstream leg
        # Everything for the client goes through it: held until the records before it are durable.
        self.outbox = Outbox(self.route, runtime.durability, self._write_client,
                             lambda why: self.abort(why, kind="record-failure"))
        self.refusals = RefusalFilter(runtime.refusals, self._publish_now)

    # --- connection lifecycle -----------------------------------------------------------------

    def client_connected(self, side: Side) -> None:
        self.client = side
        transport = side.transport
        assert transport is not None  # called from the leg's connection_made
        peer = side.peer or transport.get_extra_info("peername") or ("?", 0)
        self.host, self.port = str(peer[0]), int(peer[1])
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            from pacsguard.tls import describe_peer

            self.cert = describe_peer(ssl_object)
        self.rt.register(self)
        self.timer.arm(self.route.limits.artim_timeout, "ARTIM timer expired: no A-ASSOCIATE-RQ")

    def _expired(self, why: str) -> None:
        if self.closed:
            return
        if self.state == "established":
            limits = self.route.limits
            slow, overdue = pdu_left(self.pdu_clocks, limits.artim_timeout, limits.min_pdu_rate)
            if slow <= 0.5:
                self.abort(overdue, kind="timeout")  # a PDU trickling in: idleness never comes
                return
            left, idle = self._silence_left()
            if left > 0.5:
                # Looked at again within idle_timeout at most: the request awaited may be answered
                # meanwhile, and idleness is then measured from that answer.
                self.timer.arm(min(left, slow, limits.idle_timeout), why)
                return
            why = idle
        elif self.state in ("connecting", "awaiting-ac"):
            # The client still waits for its A-ASSOCIATE-AC: it gets an answer, not an abort.
            up = self.route.upstream
            self._upstream_failed(f"it did not answer the A-ASSOCIATE-RQ within "
                                  f"{up.connect_timeout + self.route.limits.artim_timeout:.0f} s")
            return
        self.abort(why, kind="timeout")

    def _silence_left(self) -> tuple[float, str]:
        """Seconds of silence left, and the reason to give once none are: `limits.response_timeout`
        while a request of the client waits for the PACS's final response and the PACS waits for
        nothing from the client (a C-MOVE or C-GET served from nearline storage may send no pending
        response for minutes: they are optional, PS3.4 C.4.2.1.5, C.4.3.1.4; dcmtk's DIMSE timeout
        and pynetdicom's dimse_timeout are such a separate limit), else `limits.idle_timeout`."""
        limits = self.route.limits
        awaited = None
        for pending in (self.record.pending.values() if self.record is not None else ()):
            if not pending.from_requestor:
                break  # a request of the PACS waits for the client: the client's silence is idleness
            awaited = awaited or pending  # the oldest, for the reason
        else:
            if awaited is not None:
                silent = time.monotonic() - self.last_activity
                name = dimse.command_name(awaited.command.command_field).removesuffix("-RQ")
                return limits.response_timeout - silent, (
                    f"no final response to {name} (Message ID {awaited.command.message_id}) and no traffic for "
                    f"{silent:.0f} s (limit: limits.response_timeout {limits.response_timeout:g} s)")
        return idle_left(self.last_activity, limits.idle_timeout)

    def connection_lost(self, from_client: bool, exc: Exception | None) -> None:
        if self.closed:
            return
        if not from_client and self.state in ("connecting", "awaiting-ac") and isinstance(exc, ssl.SSLError):
            # A TLS alert on the upstream leg before its A-ASSOCIATE-AC: in TLS 1.3 the server judges the
            # gateway's client certificate after the client's handshake has completed, so its refusal
            # is read here, not in create_connection() (RFC 8446 4.4.2.4, 6.2). Unreachable, as any
            # TLS failure of the upstream is: the client gets the transient A-ASSOCIATE-RJ.
            self._upstream_failed(_describe_upstream_tls_refusal(exc))
            return
        cut = self.readers[from_client].pending_bytes
        refused = self.first.cut_short() if cut and from_client and self.state == "awaiting-rq" else None
        if refused is not None:  # no PDU header at all, yet too short for the PDU reader to refuse
            self.decode_error(True, refused)
            return
        if cut and self.state != "closed":
            # The TCP connection ended inside a PDU (PS3.8 9.3.1): say so, it is not a plain hang-up.
            self.protocol_error(from_client, TRUNCATED_PDU, f"connection closed {cut} bytes into a PDU")
            return
        if not from_client and self.state in ("connecting", "awaiting-ac"):
            # The PACS ended the leg without answering the A-ASSOCIATE-RQ: no association was ever
            # established, so the client gets the transient A-ASSOCIATE-RJ of an unreachable upstream
            # (it may retry), not an A-ABORT.
            self._upstream_failed(_describe_upstream_hang_up(exc, tls=self.route.upstream.tls is not None))
            return
        if self.state == "releasing" and self.rp_held and not from_client:
            # A PACS may close its connection as soon as it has sent its A-RELEASE-RP (pynetdicom
            # does; PS3.8 9.2 leaves it to the requestor, Sta13) while the client's copy still waits
            # for its records: it goes out first (_finish_release), bounded by record_timeout.
            return
        if self.state == "releasing":
            # PS3.8 9.2.3, Sta7: a transport closed before the A-RELEASE-RP is an A-P-ABORT (AA-4), not
            # a release: the association ends aborted and requests still in flight are cut off, as
            # in "established" (their records, and a C-MOVE's entry in the move ledger, close with it).
            who = "client" if from_client else "upstream"
            self.abort(f"{who} closed the connection during release, before the A-RELEASE-RP"
                       + (f" ({exc})" if exc else ""), kind="connection-lost", notify=False, by=who)
            return
        if self.state in ("awaiting-rq", "closed"):
            if not from_client and self.state == "closed" and self.outbox.holding:
                # Released, and the client's last answers still wait for their records (as above):
                # they go out first, _close_soon() closes after them.
                return
            self.close()
            return
        who = "client" if from_client else "upstream"
        self.abort(f"{who} closed the connection without A-RELEASE" + (f" ({exc})" if exc else ""),
                   kind="connection-lost", notify=False, by=who)

    def set_paused(self, reading_client: bool, paused: bool) -> None:
        """Backpressure: stop reading from one leg while the other leg's send buffer is full."""
        side = self.client if reading_client else self.upstream
        if side is None or side.transport is None or self.closed:
            return
        self.pdu_clocks[reading_client].pause(paused, time.monotonic())
        if paused:
            side.transport.pause_reading()
        else:
            side.transport.resume_reading()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.timer.cancel()
        self.outbox.drop()
        # A connect not yet begun is cancelled; one under way is left to finish (connect_timeout bounds
        # it): cancelled, the PACS may have accepted it and would see it closed with no PDU at all.
        # _connect() sends it an A-ABORT instead.
        if self._connect_task is not None and not self._connect_task.done() and not self._dialing:
            self._connect_task.cancel()
        for side in (self.client, self.upstream):
            if side is not None and side.transport is not None:
                side.transport.close()
        self.rt.unregister(self)
        decide(self.rt.checks, "on_closed", self)

    # --- judging: every verdict comes from decide() (pacsguard.gateway.check) -------------------

    def quarantine(self, verdict: Verdict) -> None:
        """Quarantine this association's source (a check asked for it): its (calling AE title, host)
        pair, or its host if `gateway.quarantine_scope` says so, never an administrative host; this
        cuts it off. A source spared is recorded as such (the verdict still acts on this association)."""
        target, spared = self.rt.quarantine_policy.target(self.host, self.calling_ae)
        if target is None:
            self.publish(Event(kind=SPARED, component="gateway", severity=Severity.NOTICE,
                               actor=self._client_party(), target=self._upstream_party(),
                               message=f"not quarantined: {spared} ({verdict.reason})",
                               details={"route": self.route.name, "reason": verdict.reason, "why": spared}))
            return
        self.rt.quarantine(target, duration=verdict.quarantine_for, reason=verdict.reason,
                           component=verdict.component)

    def _stopped(self, events: list[ProtocolEvent]) -> bool:
        """Judge decoder events no request hook covers; an acting verdict ends the association."""
        for ev in events:
            if self._aborted_for(decide(self.rt.checks, "on_event", self, ev)):
                return True
        return False

    def _aborted_for(self, verdict: Verdict) -> bool:
        if verdict.action < Action.ABORT:
            return False
        self.abort(verdict.reason, kind=verdict.component)
        return True

    def abort(self, reason: str, *, kind: str = "policy", notify: bool = True, source: int = 2,
              by: str = "gateway") -> None:
        """A-ABORT both legs (PS3.8 9.3.8, source 2 = service-provider) and record why; ``by`` the
        side whose lost connection ended the association (`client`, `upstream`), as the
        store-and-forward acceptor records it, else the gateway itself."""
        if self.closed:
            return
        if notify:
            frame = P.encode_abort(source, 0)
            # Frames held for their record are dropped: the client learns of nothing they would have
            # acknowledged, and its stream may stop inside a PDU, so closing is its abort then.
            for side, midway in ((self.client, self.through[False] or self.outbox.holding),
                                 (self.upstream, self.through[True])):
                # A leg in the middle of a cut-through PDU would read the A-ABORT as part of that PDU's
                # data; closing the connection is its abort then.
                if side is not None and side.transport is not None and not side.transport.is_closing() and not midway:
                    side.transport.write(frame)
        self._record().ended("aborted", severity=Severity.WARNING, outcome=Outcome.SERIOUS_FAILURE,
                             message=f"aborted by the gateway: {reason}" if by == "gateway" else reason,
                             by=by, reason=reason, cause=kind,
                             **self._totals())
        self.close()

    # --- bytes in -----------------------------------------------------------------------------

    def data_received(self, from_client: bool, data: memoryview | bytes) -> None:
        """Bytes from one leg (`_received`); then when the PDU left incomplete began (`PduClock`)."""
        self._received(from_client, data)
        if not self.closed:
            self._watch_pdu(from_client)

    def _watch_pdu(self, from_client: bool) -> None:
        """Note the PDU this leg left incomplete; the timer fires by the time it must be whole."""
        reader, through = self.readers[from_client], self.through[from_client]
        pdu: tuple[str, int] | None
        size: int | None
        if through:
            pdu, size = ("through", reader.stream_offset), through
        elif reader.pending_bytes:
            missing = reader.missing_bytes
            pdu, size = ("reader", reader.stream_offset), (reader.pending_bytes + missing if missing else None)
        else:
            pdu, size = None, None
        if self.pdu_clocks[from_client].update(pdu, size, time.monotonic()) and self.state == "established":
            limits = self.route.limits
            left, why = pdu_left(self.pdu_clocks, limits.artim_timeout, limits.min_pdu_rate, describe=False)
            self.timer.arm_by(max(left, 0.0), why)

    def _received(self, from_client: bool, data: memoryview | bytes) -> None:
        """Bytes from one leg. *data* may be a view of the leg's receive buffer, valid only during
        this call: whatever is kept or handed to the normal path is copied."""
        if self.closed:
            return
        self.last_activity = time.monotonic()
        self.bytes_in[from_client] += len(data)
        if self.peer_aborted:
            # A peer aborted and the other leg got its A-ABORT: a PDU that crossed it on the wire
            # (an A-RELEASE-RP behind the client's A-ABORT) is ignored, as PS3.8 9.2.3's state
            # Sta13 does (action AA-6), not recorded as a second, gateway-made abort.
            return
        if from_client and not self.first.done and self.state == "awaiting-rq":
            guess = self.first.feed(data)
            if guess is not None:
                self._not_dicom(guess)
                return
        if self.state == "connecting":
            # No upstream leg yet: keep what the client sends (bounded) until the RQ is passed on.
            self.early.append(bytes(data))
            if sum(map(len, self.early)) > self.route.limits.max_pdu_length:
                self.protocol_error(from_client, DATA_BEFORE_AC, "data sent before the association was accepted")
            return
        done = 0
        if self.state == "established" and (self.through[from_client] or (
                not self.held[from_client] and self.dropping[from_client] is None
                and self.collecting[from_client] is None
                and (self.record is None or not self.record.tapping(from_client)))):
            done = self._stream_dataset(from_client, data)
            if done and (done == len(data) or self.closed):
                return
        self._relay(from_client, bytes(data[done:]))

    def _stream_dataset(self, from_client: bool, data: memoryview | bytes) -> int:
        """Fast path for the bulk of a large data set; returns how many bytes of *data* it handled.

        While the decoder streams a data set in this direction (identifiers already peeked), each
        PDU header is checked in place: a P-DATA-TF holding exactly one data PDV, not the last, on
        the data set's context, with a PDU-length within the reader's maximum and the receiver's
        negotiated one. A run of such PDUs is counted in the decoder and the reader and forwarded in
        one write, uncopied. The last PDU of the run may be incomplete: its header was checked, so
        its data is passed on as it arrives ("cut-through", `self.through`) and the next read
        continues after it. A PDU left over in the reader from the normal path is completed there
        first. Everything else (a last fragment, a command, another PDU, a header that fails a
        check or is split between reads) is left to the normal path, which sees it whole.
        """
        decoder = self.decoder
        end = len(data)
        rest = self.through[from_client]
        context_id = decoder.streaming_context(from_client)
        start = pos = 0
        if rest:
            if rest >= end:
                self.through[from_client] = rest - end
                self._forward(from_client, data)
                return end
            self.through[from_client] = 0
            pos = rest
            if self.deferred[from_client] or context_id is None:
                self._forward(from_client, data[:rest])
                start = rest
                if context_id is None:
                    return rest
        else:
            if context_id is None:
                return 0
            reader = self.readers[from_client]
            if reader.pending_bytes:
                pos = reader.missing_bytes
                if not 0 < pos < end:
                    return 0
                self._relay(from_client, bytes(data[:pos]))
                if (self.closed or self.held[from_client] or self.dropping[from_client] is not None
                        or self.collecting[from_client] is not None):
                    return pos
                context_id = decoder.streaming_context(from_client)
                if context_id is None:
                    return pos
                start = pos
        scan = pos
        limit = self.readers[from_client].max_pdu_length
        negotiated = decoder.acceptor_max_pdu_length if from_client else decoder.requestor_max_pdu_length
        if 0 < negotiated < limit:
            limit = negotiated
        pos, count = data_fragment_run(data, pos, context_id, limit, whole=False)
        if count:
            decoder.count_data_fragments(from_client, count, pos - scan)
            self.readers[from_client].skip(count, pos - scan)
            if pos > end:
                self.through[from_client] = pos - end
                pos = end
        if pos > start:
            self._forward(from_client, data if start == 0 and pos == end else data[start:pos])
        return pos

    def _forward(self, from_client: bool, data: bytes | memoryview) -> None:
        """Write to the other leg; after a completed cut-through PDU, the frames that waited for it."""
        if not from_client:
            self.outbox.send(data)
            waiting = self.deferred[False]
            if waiting and not self.through[False]:
                self.outbox.send(b"".join(waiting), answers=False)
                waiting.clear()
            return
        target = self.upstream
        if target is None or target.transport is None:
            return
        target.transport.write(data)
        waiting = self.deferred[True]
        if waiting and not self.through[True]:
            target.transport.write(b"".join(waiting))
            waiting.clear()

    def _write_client(self, data: bytes | memoryview) -> None:
        if self.client is not None and self.client.transport is not None:
            self.client.transport.write(data)

    def _close_soon(self) -> None:
        """Close once the last answer is out (PS3.8: the requestor closes after an A-RELEASE-RP or
        an A-ASSOCIATE-RJ; a brief wait lets it reach the client first)."""
        self.outbox.when_sent(lambda: asyncio.get_running_loop().call_later(0.05, self.close))

    def _relay(self, from_client: bool, data: bytes | memoryview) -> None:
        """The normal path: split into PDUs, decode and judge each, forward what passes in one write."""
        try:
            pdus = self.readers[from_client].feed(data)
        except DecodeError as exc:
            # The whole PDUs before the bad header are judged first: the first fault found ends the
            # association, and one found while handling another is that fault, never a traceback.
            for raw_pdu in exc.partial:
                if self.closed:
                    return
                try:
                    self._on_pdu(from_client, raw_pdu)
                except DecodeError as earlier:
                    self.decode_error(from_client, earlier)
                    return
            if not self.closed:
                self.decode_error(from_client, exc)
            return
        try:
            if len(pdus) == 1:
                out = self._on_pdu(from_client, pdus[0])
            else:
                out = [frame for p in pdus for frame in self._on_pdu(from_client, p)]
        except DecodeError as exc:
            self.decode_error(from_client, exc)
            return
        if out and not self.closed:
            self._forward(from_client, out[0] if len(out) == 1 else b"".join(out))

    def _not_dicom(self, guess: str) -> None:
        """The client's first bytes look like another protocol (pacsguard.gateway.first_bytes): the
        IDS hears of them as the passive sensor's non-DICOM bytes, and the connection ends."""
        head = bytes(self.first.head)
        decide(self.rt.checks, "on_not_dicom", self, head)  # aborted below in any case
        if self.closed:  # a quarantine verdict has cut it off already
            return
        self.protocol_error(True, "unexpected-pdu", f"the first bytes ({head[:8].hex(' ')}) are no "
                                                    f"A-ASSOCIATE-RQ: they look like {guess}")

    def decode_error(self, from_client: bool, exc: DecodeError) -> None:
        decide(self.rt.checks, "on_decode_error", self, from_client, exc)  # aborted below in any case
        self.protocol_error(from_client, exc.code, str(exc))

    def protocol_error(self, from_client: bool, code: str, message: str) -> None:
        upstream = self.route.upstream
        who = f"{self.host}:{self.port}" if from_client else f"upstream {upstream.host}:{upstream.port}"
        self.publish(violation_event(self.route.name, code, message, sender="client" if from_client else "upstream",
                                     state=self.state, **self._parties(from_client)))
        log.warning("route %s: protocol violation from %s: %s", self.route.name, who, message)
        self.abort(f"protocol violation ({code}) from {'client' if from_client else 'upstream'}", kind="protocol")

    def _decode(self, from_client: bool, raw_pdu: RawPDU) -> list[ProtocolEvent]:
        """The decoder's events for one PDU; the deviations it tolerated are recorded and left out."""
        kept, tolerated = tolerated_apart(self.decoder.on_pdu(from_client, raw_pdu))
        for ev in tolerated:
            self.protocol_warning(from_client, ev.code, ev.message)
        return kept

    def protocol_warning(self, from_client: bool, code: str, message: str) -> None:
        """Record a tolerated deviation, once per code and direction: the bytes pass unchanged."""
        if (from_client, code) in self.warned:
            return
        self.warned.add((from_client, code))
        self.publish(warning_event(self.route.name, code, message, sender="client" if from_client else "upstream",
                                   state=self.state, handled="passed on", **self._parties(from_client)))

    def _parties(self, from_client: bool) -> dict[str, Party]:
        """The sender of what arrived from one leg as the actor, the other leg as the target."""
        client, upstream = self._client_party(), self._upstream_party()
        return {"actor": client, "target": upstream} if from_client else {"actor": upstream, "target": client}

    def _on_pdu(self, from_client: bool, raw_pdu: RawPDU) -> list[bytes]:
        """Decode one PDU, apply the policy, and return the frames to forward to the other leg."""
        kind = raw_pdu.pdu_type
        if kind == P.PDU_P_DATA_TF and self.state in ("established", "releasing"):
            return self._on_p_data(from_client, raw_pdu)
        if self.state == "awaiting-rq":
            if not from_client or kind != P.PDU_ASSOCIATE_RQ:
                # The IDS sees what the decoder makes of it (a state violation, a malformed PDU),
                # as the passive sensor does with the same bytes (PS3.8 9.2, Sta2: AA-1); the
                # violation is recorded and the connection aborted below in any case.
                for ev in self._decode(from_client, raw_pdu):
                    decide(self.rt.checks, "on_event", self, ev)
                if self.closed:  # a quarantine verdict has cut it off already
                    return []
                self.protocol_error(from_client, "unexpected-pdu", f"{raw_pdu.name} before A-ASSOCIATE-RQ")
                return []
            self._on_associate_rq(raw_pdu)
            return []
        if self.state == "awaiting-ac" and not from_client:
            return self._on_associate_answer(raw_pdu)
        events = self._decode(from_client, raw_pdu)
        if self._stopped(events):
            return []
        for ev in events:
            if isinstance(ev, ProtocolViolation):
                self.protocol_error(from_client, ev.code, ev.message)
                return []
            if isinstance(ev, ReleaseRequested):
                self.state = "releasing"
                self.timer.arm(self.route.limits.artim_timeout, "ARTIM timer expired during release")
            elif isinstance(ev, ReleaseCompleted):
                self._finish_release(raw_pdu.raw, from_client)
                return []
            elif isinstance(ev, Aborted):
                if from_client:
                    self._forward(True, raw_pdu.raw)
                else:
                    # The PACS's A-ABORT (PS3.8 9.3.8) acknowledges nothing: it waits for no record, so
                    # the client learns its source and reason, unless answers are held before it
                    # (dropped with them when the association closes: closing is the abort then).
                    self.outbox.send(raw_pdu.raw, answers=False)
                self._record_peer_abort(from_client, ev)
                return []
        return [raw_pdu.raw]

    # --- association negotiation --------------------------------------------------------------

    def _on_associate_rq(self, raw_pdu: RawPDU) -> None:
        events = self._decode(True, raw_pdu)
        rq = next((e.rq for e in events if isinstance(e, AssociationRequested)), None)
        if rq is None:
            violation = next((e for e in events if isinstance(e, ProtocolViolation)), None)
            self.protocol_error(True, violation.code if violation else "unexpected-pdu",
                                violation.message if violation else "A-ASSOCIATE-RQ not accepted")
            return
        self.calling_ae = rq.calling_ae_title
        self.record = self._new_record(rq.called_ae_title)
        self.record.requested(rq, tls=self.cert is not None, certificate=self.cert,
                              expected_by=expected_by(self.rt.checks, self, rq))
        verdict = decide(self.rt.checks, "on_associate", self, rq, events)
        if self.closed:  # a quarantine verdict has cut this association off already
            return
        if verdict.refused:
            self.reject(verdict)
            return
        self.refusals.flush()  # let through: its A-ASSOCIATE-RQ is recorded now, not at the answer
        self.state = "connecting"
        self.timer.arm(self.route.upstream.connect_timeout + self.route.limits.artim_timeout, "upstream did not answer")
        # The upstream may send what the client accepts, and no more than the gateway reads (PS3.8 D.1).
        max_length = P.capped_max_length(rq.max_length, self.route.limits.max_pdu_length)
        self.withheld = self._refused_contexts(rq)
        forwarded = _canonical_rq(P.rewrite_associate_rq(raw_pdu.raw, called_ae=self.route.upstream.ae_title,
                                                         max_length=max_length, withheld=frozenset(self.withheld)),
                                  rq)
        self._connect_task = asyncio.get_running_loop().create_task(self._connect(forwarded))

    def reject(self, verdict: Verdict, *, by: str = "gateway") -> None:
        """Answer the A-ASSOCIATE-RQ with an A-ASSOCIATE-RJ (PS3.8 9.3.4) and record why."""
        result, source, reason = verdict.rj or RJ_REFUSED
        self.outbox.send(P.encode_associate_rj(result, source, reason), answers=False)
        transient = result == P.RJ_RESULT_TRANSIENT
        self._record().association("rejected", severity=Severity.WARNING,
                                   outcome=Outcome.MINOR_FAILURE if transient else Outcome.SERIOUS_FAILURE,
                                   message=f"rejected by {by}: {verdict.reason}", by=by, rule=verdict.rule,
                                   reason=verdict.reason, result=result, source=source, reason_code=reason)
        self.state = "closed"
        if by == "gateway":
            decide(self.rt.checks, "on_rejected", self, verdict)
        self._close_soon()

    async def _connect(self, raw_rq: bytes) -> None:
        """Open the upstream leg and send it *raw_rq*, the A-ASSOCIATE-RQ as the gateway forwards it."""
        self._dialing = True
        up = self.route.upstream
        loop = asyncio.get_running_loop()
        try:
            transport, side = await asyncio.wait_for(
                loop.create_connection(lambda: Side(self, False), up.host, up.port, ssl=self.rt.upstream_ssl,
                                       server_hostname=(up.tls.server_name or up.host) if up.tls else None),
                up.connect_timeout)
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
            if not self.closed:
                self._upstream_failed(_describe_connect_error(exc, up.connect_timeout))
            return
        if self.closed or self.state != "connecting":
            # Closed meanwhile, or already answered: a TLS alert can end the leg before this resumes.
            # Never a bare connection to the PACS: an acceptor awaiting the A-ASSOCIATE-RQ gets an
            # A-ABORT (PS3.8 Table 9-10, Sta2 + Evt16: AA-2), since some end on a connection closed
            # with no PDU at all (CTN's simple_storage exits: a client that left killed the PACS).
            transport.write(P.encode_abort(P.ABORT_SOURCE_SERVICE_PROVIDER, P.ABORT_REASON_NOT_SPECIFIED))
            transport.close()
            return
        self.upstream = side
        peer = transport.get_extra_info("peername")
        self.upstream_host = str(peer[0]) if peer else None
        self.state = "awaiting-ac"
        transport.write(raw_rq)
        if self.early:
            # Judged now, in awaiting-ac: an A-ABORT passes, anything else is a protocol error
            # (PS3.8 9.2 state table, P-DATA-TF in Sta3: AA-8), so it never reaches the PACS.
            early, self.early = b"".join(self.early), []
            self.bytes_in[True] -= len(early)  # counted when they arrived; data_received counts them again
            loop.call_soon(self.data_received, True, early)

    def _upstream_failed(self, why: str) -> None:
        """The upstream cannot be reached or does not answer the A-ASSOCIATE-RQ: the client gets a
        transient A-ASSOCIATE-RJ (PS3.8 9.3.4: "temporary congestion"), so it may retry later."""
        up = self.route.upstream
        self.publish(Event(kind="gateway.upstream.unreachable", component="gateway", severity=Severity.ERROR,
                           outcome=Outcome.MAJOR_FAILURE, actor=self._client_party(), target=self._upstream_party(),
                           message=f"upstream {up.ae_title}@{up.host}:{up.port} unreachable: {why}",
                           details={"route": self.route.name, "error": why}))
        leg = self.upstream.transport if self.upstream is not None else None
        if leg is not None and not leg.is_closing():
            leg.write(P.encode_abort(P.ABORT_SOURCE_SERVICE_PROVIDER, P.ABORT_REASON_NOT_SPECIFIED))
        self.reject(refuse(f"upstream unreachable: {why}", "upstream", rj=RJ_CONGESTION))

    def _on_associate_answer(self, raw_pdu: RawPDU) -> list[bytes]:
        kind = raw_pdu.pdu_type
        if kind == P.PDU_ASSOCIATE_AC:
            ac = P.parse_associate_ac(raw_pdu.raw)
            ac, refused = self._filter_contexts(ac)
            # The client may send what the upstream accepts, and no more than the gateway reads (PS3.8 D.1):
            # its PDUs are passed on unchanged.
            info = P.with_max_length(ac.user_information,
                                     P.capped_max_length(ac.max_length, self.route.limits.max_pdu_length))
            # The AE title fields are the client's own, echoed (PS3.8 9.3.3: the acceptor's echo "shall not be
            # tested", so the upstream's bytes there are never re-encoded).
            raw = P.encode_associate_ac(replace(ac, called_ae_title=self.route.listen.ae_title,
                                                calling_ae_title=self.calling_ae or ac.calling_ae_title,
                                                user_information=info))
            events = self._decode(False, RawPDU(P.PDU_ASSOCIATE_AC, raw))
            if self._stopped(events):
                return []
            violation = next((e for e in events if isinstance(e, ProtocolViolation)), None)
            if violation is not None or not any(isinstance(e, AssociationAccepted) for e in events):
                self.protocol_error(False, violation.code if violation else "unexpected-pdu",
                                    violation.message if violation else "A-ASSOCIATE-AC not accepted")
                return []
            self.state = "established"
            self.timer.arm(self.route.limits.idle_timeout, "idle")
            # A User Identity positive response (PS3.7 D.3.3.7.2) is recorded as given, never its value.
            confirmed = ac.user_information is not None and isinstance(ac.user_information.user_identity,
                                                                       P.UserIdentityAC)
            self._record().accepted(self.decoder, refused, identity_confirmed=confirmed)
            return [raw]
        if kind == P.PDU_ASSOCIATE_RJ:
            events = self._decode(False, raw_pdu)
            rj = next((e.rj for e in events if isinstance(e, AssociationRejected)), None)
            self._record().upstream_rejected(rj)
            self.state = "closed"
            self.outbox.send(raw_pdu.raw, answers=False)
            self._close_soon()
            return []
        if kind == P.PDU_ABORT:
            events = self._decode(False, raw_pdu)
            if self.client is not None and self.client.transport is not None:
                self.client.transport.write(raw_pdu.raw)
            ab = next((e for e in events if isinstance(e, Aborted)), None)
            self._record_peer_abort(False, ab)
            return []
        self.protocol_error(False, "unexpected-pdu", f"{raw_pdu.name} while awaiting A-ASSOCIATE-AC")
        return []

    def _refused_contexts(self, rq: P.AssociateRQ) -> dict[int, str]:
        """The client's proposed contexts the policy does not allow (ID -> abstract syntax), to be
        withheld from the upstream: a PACS that accepted one would use it, as for a C-GET's
        sub-operations of a refused SOP class (PS3.4 C.4.3), which the gateway could only abort.
        None withheld when every context is refused: the upstream then answers for them all."""
        refused = {pc.context_id: pc.abstract_syntax for pc in rq.presentation_contexts
                   if decide(self.rt.checks, "on_context", self, pc.abstract_syntax).refused}
        return refused if len(refused) < len(rq.presentation_contexts) else {}

    def _filter_contexts(self, ac: P.AssociateAC) -> tuple[P.AssociateAC, list[str]]:
        """Mark contexts the policy does not allow as user-rejected (PS3.8 Table 9-18, result 1),
        the withheld ones too, in the order of their IDs. The refused abstract syntaxes returned
        include those the upstream rejected as well: the policy's refusal is recorded whatever the
        PACS answered (with every context refused, none is withheld and the PACS answers for all)."""
        rq = self.decoder.rq
        refused: list[str] = list(self.withheld.values())
        contexts = [P.PresentationContextAC(cid, P.PC_USER_REJECTION, None) for cid in self.withheld]
        rewritten = False
        for pc in ac.presentation_contexts:
            if pc.context_id in self.withheld:
                continue  # not proposed to it: an upstream that answers for it anyway is not heard
            proposed = rq.context(pc.context_id) if rq is not None else None
            abstract = proposed.abstract_syntax if proposed is not None else None
            if abstract and decide(self.rt.checks, "on_context", self, abstract).refused:
                refused.append(abstract)
                if pc.result == 0:
                    pc, rewritten = replace(pc, result=P.PC_USER_REJECTION), True
            contexts.append(pc)
        contexts.sort(key=lambda pc: pc.context_id)
        return (replace(ac, presentation_contexts=contexts) if rewritten or self.withheld else ac), refused

    # --- P-DATA -------------------------------------------------------------------------------

    def _on_p_data(self, from_client: bool, raw_pdu: RawPDU) -> list[bytes]:
        # Responses whose data sets may be rewritten are recorded once the PDVs are sorted, so that a
        # final response in the same PDU closes its request after the rewrite was counted.
        responses: list[DimseCommand] = []
        try:
            return self._sort_p_data(from_client, raw_pdu, responses)
        finally:
            for ev in responses:
                self._record().command(ev)

    def _sort_p_data(self, from_client: bool, raw_pdu: RawPDU, responses: list[DimseCommand]) -> list[bytes]:
        raw = raw_pdu.raw
        events = self._decode(from_client, raw_pdu)
        # Per completed command: the refused request, a response to hold for rewriting, or None.
        decisions: deque[Pending | HeldResponse | None] = deque()
        rewriting = not from_client and self.route.rewrites_retrieve_ae_title
        for ev in events:
            reused = self._record().reused_message_id(ev.from_requestor, ev.command) \
                if isinstance(ev, DimseCommand) else None
            if reused is not None:
                self.protocol_error(from_client, VIOLATION_MESSAGE_ID_IN_USE, reused)
                return []
            if isinstance(ev, DimseCommand) and from_client and ev.command.is_response:
                unsolicited = self._unsolicited(ev)
                if unsolicited is not None:
                    # The IDS hears of it as of any state violation (dicom-protocol-state-violation);
                    # recorded and aborted below in any case, never forwarded.
                    decide(self.rt.checks, "on_data_event", self, unsolicited)
                    if not self.closed:  # a quarantine verdict has cut it off already
                        self.protocol_error(True, unsolicited.code, unsolicited.message)
                    return []
            if isinstance(ev, DimseCommand) and from_client and ev.command.is_request \
                    and ev.command.command_field != dimse.C_CANCEL_RQ:
                refused = self._on_request(ev)
                if self.closed:
                    return []
                decisions.append(refused)
                continue
            if isinstance(ev, DimseDatasetStart):
                # Recorded before it is judged: a data set the checks abort on is still named with
                # its patient and study in the C-STORE's record.
                self._record().dataset_start(ev)
            if self._aborted_for(decide(self.rt.checks, "on_data_event", self, ev)):
                return []
            if isinstance(ev, ProtocolViolation):
                self.protocol_error(from_client, ev.code, ev.message)
                return []
            if isinstance(ev, DimseCommand):
                # A response, or a request of the upstream (C-GET's C-STORE sub-operations).
                if rewriting and ev.command.is_response:
                    responses.append(ev)
                    decisions.append(hold_response(self.route, ev.command, ev.context_id, ev.transfer_syntax))
                    continue
                self._record().command(ev)
                decisions.append(None)
            elif isinstance(ev, DimseDatasetEnd):
                self._record().dataset_end(ev)
        # A storage commitment request's data set: its record copies it (records.dicom, p_data).
        self._record().p_data(from_client, raw, events)
        # Fast path: one PDV, nothing held or swallowed in this direction, and either a data fragment
        # or a whole command set that passes as it came (what _sort_pdvs would re-encode byte for byte:
        # reserved PDU byte and control header bits zero, PS3.8 9.3.5, E.2).
        if (not self.held[from_client] and self.dropping[from_client] is None
                and self.collecting[from_client] is None and len(raw) > 11
                and int.from_bytes(raw[6:10], "big") == len(raw) - 10
                and (not raw[11] & 0x01 and not decisions
                     or raw[11] == 0x03 and not raw[1] and len(decisions) == 1 and decisions[0] is None)):
            return [raw]
        return self._sort_pdvs(from_client, raw, decisions)

    def _sort_pdvs(self, from_client: bool, raw: bytes, decisions: deque[Pending | HeldResponse | None]) -> list[bytes]:
        """PDV by PDV: hold command fragments until judged, swallow a refused request's data set,
        collect a response data set to rewrite. Returns the frames to forward; the gateway's own
        refusals go straight back to the sender."""
        keep: list[P.PDV] = []
        frames: list[bytes] = []
        back: list[bytes] = []
        view = memoryview(raw)
        held = self.held[from_client]
        for context_id, mch, start, end in P.pdv_spans(raw):
            pdv = P.PDV(context_id, bool(mch & 0x01), bool(mch & 0x02), view[start:end])
            if pdv.is_command:
                held.append(pdv)
                if not pdv.is_last:
                    continue
                refused = decisions.popleft() if decisions else None
                if isinstance(refused, HeldResponse):
                    keep.extend(held)
                    self.collecting[from_client] = refused
                elif refused is None:
                    keep.extend(held)
                elif refused.command.has_dataset:
                    self.dropping[from_client] = refused
                else:
                    back.extend(self._refusal(refused, context_id))
                held.clear()
            elif (dropping := self.dropping[from_client]) is not None:
                if pdv.is_last:
                    back.extend(self._refusal(dropping, context_id))
                    self.dropping[from_client] = None
            elif (collecting := self.collecting[from_client]) is not None:
                collecting.data += pdv.value
                if pdv.is_last or len(collecting.data) > MAX_HELD:
                    frames.extend(self._pack(from_client, keep))
                    keep = []
                    frames.extend(self._release_held(from_client, collecting, pdv.is_last))
            else:
                keep.append(pdv)
        if back:
            sender = self.client if from_client else self.upstream
            if self.through[not from_client]:
                # The sender is receiving a cut-through PDU: answer after it, not inside it.
                self.deferred[not from_client].extend(back)
            elif from_client:
                self.outbox.send(b"".join(back), answers=False)
            elif sender is not None and sender.transport is not None:
                sender.transport.write(b"".join(back))
        frames.extend(self._pack(from_client, keep))
        return frames

    def _receiver_max(self, from_client: bool) -> int:
        """The Maximum Length the leg receiving this direction's PDUs advertised (0 = unlimited)."""
        return self.decoder.acceptor_max_pdu_length if from_client else self.decoder.requestor_max_pdu_length

    def _pack(self, from_client: bool, pdvs: list[P.PDV]) -> list[bytes]:
        """P-DATA-TF PDUs carrying *pdvs* in order, each within the receiver's Maximum Length
        (PS3.8 D.1): held command fragments came in several PDUs and may not fit in one."""
        limit = self._receiver_max(from_client) or 0xFFFFFFFF
        frames: list[bytes] = []
        group: list[P.PDV] = []
        size = 0
        for pdv in pdvs:
            if group and size + 6 + len(pdv.value) > limit:
                frames.append(P.encode_p_data_tf(group))
                group, size = [], 0
            group.append(pdv)
            size += 6 + len(pdv.value)
        if group:
            frames.append(P.encode_p_data_tf(group))
        return frames

    def _release_held(self, from_client: bool, held: HeldResponse, complete: bool) -> list[bytes]:
        """The frames of a held response data set: rewritten when it is complete and names a
        Retrieve AE, else as received; fragmented for the receiver's Maximum Length (PS3.8 D.1)."""
        self.collecting[from_client] = None
        receiver_max = self._receiver_max(from_client)
        data, unexamined = _rewritten(held) if complete else (None, f"larger than the {MAX_HELD:,} bytes held")
        if data is not None:
            self._record().rewrote(not from_client, held.message_id, KEYWORD)
        else:
            if unexamined is not None:
                self._record().not_rewritten(not from_client, held.message_id, KEYWORD, unexamined)
            data = bytes(held.data)
        if complete:
            return P.encode_dimse_message(held.context_id, None, data, receiver_max)
        # Too large to hold: what was collected passes as it came, the rest follows on the normal path.
        step = (receiver_max or len(data) + 6) - 6
        return [P.encode_p_data_tf([P.PDV(held.context_id, False, False, data[i:i + step])])
                for i in range(0, len(data), step)]

    def _refusal(self, pending: Pending, context_id: int) -> list[bytes]:
        """The DIMSE response the gateway gives instead of the PACS (PS3.7 9.3, status per Annex C)."""
        status = pending.refused_status or dimse.STATUS_NOT_AUTHORIZED
        command = dimse.response_for(pending.command, status, error_comment=(pending.refused or "")[:64] or None)
        decoder = self.decoder
        max_len = decoder.requestor_max_pdu_length if pending.from_requestor else decoder.acceptor_max_pdu_length
        self._record().answered(pending, dimse.decode_command_set(command))
        return P.encode_dimse_message(context_id, command, None, max_len)

    def _unsolicited(self, ev: DimseCommand) -> ProtocolViolation | None:
        """A response of the client that answers no request the PACS has outstanding to it, or None.

        A response answers an outstanding request of the other side (PS3.7 9.1, 9.3): its Message ID
        Being Responded To is the Message ID of that request, its Command Field the request's with
        bit 15 set. The PACS's requests on this association (a C-GET's C-STORE sub-operations, a
        storage commitment N-EVENT-REPORT) are tracked in its record until their final response;
        anything else the client presents as an answer (a C-FIND-RSP carrying a data set, a
        C-STORE-RSP for a C-STORE never sent) would reach the PACS as one it never asked for."""
        cmd = ev.command
        answered = cmd.message_id_being_responded_to
        name = dimse.command_name(cmd.command_field)
        pending = self._record().pending.get((False, answered)) if answered is not None else None
        if pending is None:
            why = "the PACS has no request outstanding under that Message ID"
        elif pending.command.command_field | dimse.RESPONSE_BIT != cmd.command_field:
            why = (f"the PACS's request under that Message ID is a "
                   f"{dimse.command_name(pending.command.command_field)}")
        else:
            return None
        return ProtocolViolation(True, VIOLATION_UNSOLICITED_RESPONSE,
                                 f"{name} answers Message ID {answered}, but {why} (PS3.7 9.1, 9.3): not forwarded")

    def _on_request(self, ev: DimseCommand) -> Pending | None:
        """A request from the client, judged before it is forwarded; returns it if refused."""
        record = self._record()
        pending = record.request(ev)
        verdict = decide(self.rt.checks, "on_request", self, pending, ev)
        if self._aborted_for(verdict):
            return None
        record.track(pending)
        if verdict.allowed:
            # Its final response is due within limits.response_timeout (_silence_left), which may be
            # shorter than the idle limit the timer is armed for.
            self.timer.arm_by(self.route.limits.response_timeout, "idle")
            return None
        if not dimse.has_response(ev.command):
            # PS3.7 9.3: only a known request with a Message ID has a response message to refuse it
            # with; anything else the PACS must never see, so the association ends here.
            self.abort(f"{verdict.reason}; {dimse.command_name(ev.command.command_field)} has no response "
                       "message to refuse it with", kind=verdict.component)
            return None
        pending.refuse(verdict.reason, verdict.rule, verdict.status)
        return pending

    # --- release and abort --------------------------------------------------------------------

    def _finish_release(self, raw_rp: bytes, from_client: bool) -> None:
        self._forward(from_client, raw_rp)
        if from_client or not self.outbox.holding:
            self._released()
            return
        # The PACS's A-RELEASE-RP waits behind answers held for their records: the association is
        # released once the client has it (PS3.8 9.2.3: until then it is still releasing). A client
        # that hangs up first, or records that miss record_timeout, end it aborted, once.
        self.rp_held = True
        self.timer.cancel()  # the outbox's record_timeout bounds the wait, not the ARTIM timer
        self.outbox.when_sent(self._released)

    def _released(self) -> None:
        if self.closed:
            return
        self._record().ended("released", message="released", **self._totals())
        self.state = "closed"
        self._close_soon()

    def _record_peer_abort(self, from_client: bool, ev: Aborted | None) -> None:
        self._record().peer_aborted(from_client, ev, **self._totals())
        self.state = "closed"
        self.peer_aborted = True
        asyncio.get_running_loop().call_later(0.05, self.close)

    # --- helpers ------------------------------------------------------------------------------

    def abstract_syntax(self, context_id: int) -> str | None:
        return self.decoder.abstract_syntax(context_id)

    def publish(self, event: Event) -> None:
        self.refusals.publish(event)  # a refusal past limits.refusals_recorded_per_minute is only counted

    def _publish_now(self, event: Event) -> None:
        ticket = self.rt.publish(event)
        if ticket is not None:
            self.outbox.ticket = ticket

    def _client_party(self) -> Party:
        # The certificate's subject, else the username the A-ASSOCIATE-RQ claimed (the record has it).
        user = self.cert.get("subject") if self.cert else self.record.client.user if self.record is not None else None
        return Party(ae_title=self.calling_ae, host=self.host or None, port=self.port or None, user=user)

    def _upstream_party(self) -> Party:
        up = self.route.upstream
        return Party(ae_title=up.ae_title, host=up.host, port=up.port)

    def _record(self) -> AssociationRecord:
        """The association's record; before an A-ASSOCIATE-RQ, one that names the route's AE title."""
        if self.record is None:
            self.record = self._new_record(self.route.listen.ae_title)
        return self.record

    def _new_record(self, called_ae: str) -> AssociationRecord:
        # The route's stored instances, for storage commitment, and the gateway's open C-MOVEs, for
        # their sub-operations on a return route (an in-memory test route may have neither).
        return AssociationRecord(self.publish, component="gateway", client=self._client_party(),
                                 server=self._upstream_party(), route=self.route.name, called_ae=called_ae,
                                 stored=getattr(self.rt, "stored", None), moves=getattr(self.rt, "moves", None))

    def _totals(self) -> dict[str, Any]:
        return {"bytes_from_client": self.bytes_in[True], "bytes_from_upstream": self.bytes_in[False],
                "duration_ms": round((time.monotonic() - self.started) * 1000, 3),
                "pdus_from_client": self.decoder.requestor.pdus, "pdus_from_upstream": self.decoder.acceptor.pdus}


def _rewritten(held: HeldResponse) -> tuple[bytes | None, str | None]:
    """*held*'s data set naming the gateway as Retrieve AE, or None (it names none, or its structure
    cannot be followed); and why it could not be examined at all, if so.

    A deflated one (Deflated Explicit VR Little Endian, PS3.5 A.5) is inflated, rewritten as the
    Explicit VR Little Endian it encodes, and deflated again: the peers negotiated that syntax, so
    the client gets it. The inflated data set is held to the bound of any identifier the gateway
    decodes (MAX_HELD); a larger one, or a damaged deflate stream, passes as it came, like a
    response too large to hold, and the C-FIND's record says so."""
    if held.transfer_syntax != DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        return held.rewritten(), None
    try:
        inflated = inflate_dataset(held.data, MAX_HELD)
    except DecodeError as exc:
        return None, exc.detail
    data = replace(held, data=bytearray(inflated), transfer_syntax=EXPLICIT_VR_LITTLE_ENDIAN).rewritten()
    return (None if data is None else deflate_dataset(data)), None


_VERSION_1 = b"\x00\x01"


def _canonical_rq(raw: bytes, rq: P.AssociateRQ) -> bytes:
    """The forwarded A-ASSOCIATE-RQ with the fields the decoder tolerates written as the standard
    writes them: the protocol version the gateway speaks (PS3.8 9.3.2: only bit 0 is tested, so
    other bits were accepted) and the calling AE title padded with spaces, not NULs (PS3.5 6.2)."""
    if raw[6:8] != _VERSION_1:
        raw = raw[:6] + _VERSION_1 + raw[8:]
    if raw[P.CALLING_AE_OFFSET:P.CALLING_AE_OFFSET + P.AE_TITLE_LENGTH] != P.encode_ae_title(rq.calling_ae_title):
        raw = P.with_calling_ae(raw, rq.calling_ae_title)
    return raw


def _describe_connect_error(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate rejected: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)


_CLIENT_CERTIFICATE_HINT = "see upstream.tls.cert_file and key_file, and the CA the PACS trusts"


def _describe_upstream_tls_refusal(exc: ssl.SSLError) -> str:
    """The TLS alert an upstream sent after the handshake, in the words of a connect failure."""
    reason = (exc.reason or str(exc)).replace("_", " ").lower()
    hint = (f" (the PACS did not accept the gateway's client certificate: {_CLIENT_CERTIFICATE_HINT})"
            if "certificate" in reason or " ca" in reason else "")
    return f"TLS refused by the upstream after the handshake: {reason}{hint}"


def _describe_upstream_hang_up(exc: Exception | None, *, tls: bool) -> str:
    """An upstream that reset or closed its leg before its A-ASSOCIATE-AC. Over TLS 1.3 that is
    how a PACS refusing the gateway's client certificate may look: it sends its alert and closes
    with the A-ASSOCIATE-RQ unread, and the reset that close sends can overtake the alert (RFC 8446
    4.4.2.4; RFC 793 3.5, a close with data unread)."""
    how = "reset" if isinstance(exc, ConnectionResetError) else "closed"
    why = f"the upstream {how} the connection before answering the A-ASSOCIATE-RQ"
    if not tls:
        return why + (f" ({exc})" if exc is not None and how == "closed" else "")
    return (f"{why}, after the TLS handshake (a PACS that does not accept the gateway's client certificate "
            f"refuses it so in TLS 1.3, and its alert may be lost to the reset: {_CLIENT_CERTIFICATE_HINT})")
