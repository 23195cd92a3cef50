"""The syslog listeners of the repository, on asyncio: TLS (RFC 5425: octet counting; a sender
using non-transparent framing is read and flagged wrong-framing), plain TCP (RFC 6587, both framings,
detected per connection) and UDP (RFC 5426: one message per datagram).

Each frame becomes one Event handed to ``publish`` (the bus: a deque append, never blocking). A
connection's problems (malformed or oversize frames, truncation, silence) are Events too, and
never end the listener; only the offending connection may be closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby
from typing import TYPE_CHECKING, Any

from pacsguard.atna.ingest import Sender, frame_event, frame_events, peer_address, problem_event
from pacsguard.atna.repeats import MOST_TRACKED, RECORD_INTERVAL, RECORDED_EACH, Repeats
from pacsguard.atna.syslog.framing import FrameProblem, Framing, Splitter
from pacsguard.atna.tls_session import TlsFailure, TlsSession
from pacsguard.events.model import Event

if TYPE_CHECKING:
    from pacsguard.atna.config import TlsListener

log = logging.getLogger("pacsguard.atna")

Publish = Callable[[Event], None]


@dataclass(frozen=True, slots=True)
class Limits:
    max_message: int
    idle_timeout: float
    max_connections: int = 1000  # open at once on one listener in one process (rsyslog's MaxSessions: 200)
    frame_timeout: float = 60.0  # from a frame's first octet to its last (and for the TLS handshake)


#: A listener full of connections records the refused ones at most this often (seconds), counted.
REFUSALS_RECORDED_EVERY = 10.0

#: Seconds a connection must have been quiet to be closed for a new one when the listener is full.
EVICT_QUIET = 1.0

#: Seconds a non-transparent frame whose LF ended a read waits for what follows (`Splitter.held`).
HOLD = 0.2



#: Seconds between looks for the connections' problems counted in an interval now over.
REPEATS_LOOK = 5.0


class Refusals:
    """The connections a full listener closed: one of them recorded at most every
    REFUSALS_RECORDED_EVERY seconds, the others counted per sender host and recorded, once that
    interval is over, as one summary per host carrying their number (`summaries`, details
    ``repeats``), so that `atna sources` counts every one, also of a flood that stopped."""

    def __init__(self) -> None:
        self._counted: Counter[str] = Counter()  # refused since the last one recorded, per host
        self._recorded = -REFUSALS_RECORDED_EVERY

    def due(self, host: str) -> bool:
        """Count a refusal of a connection from ``host``: True when it is one to record (the first
        of an interval), else it is counted into the interval's summary."""
        now = time.monotonic()
        if now - self._recorded < REFUSALS_RECORDED_EVERY:
            if host not in self._counted and len(self._counted) >= MOST_TRACKED:
                host = "*"  # so many hosts at once: they share one count, so the counting stays bounded
            self._counted[host] += 1
            return False
        self._recorded = now
        return True

    def left(self) -> float | None:
        """Seconds until the interval's summaries are due, None when nothing is counted."""
        if not self._counted:
            return None
        return max(0.0, self._recorded + REFUSALS_RECORDED_EVERY - time.monotonic())

    def summaries(self, *, final: bool = False) -> list[tuple[str, int]]:
        """(host, refusals counted) once the interval is over (or at once, ``final``: the listener
        closes), forgotten."""
        left = self.left()
        if left is None or (left > 0 and not final):
            return []
        out = list(self._counted.items())
        self._counted.clear()
        return out


class StreamListener:
    """One TCP or TLS listener; each connection is a `_Connection` protocol."""

    def __init__(self, publish: Publish, limits: Limits, context: ssl.SSLContext | None = None) -> None:
        self.publish = publish
        self.limits = limits
        self.context = context
        self.transport = "tls" if context is not None else "tcp"
        self._server: asyncio.Server | None = None
        self.connections: set[_Connection] = set()
        self.refusals = Refusals()
        self._summary: asyncio.TimerHandle | None = None  # when the counted refusals are recorded
        self.repeats = Repeats()  # the connections' problems beyond the first few (`problem`)
        self._repeats_timer: asyncio.TimerHandle | None = None
        self.held = False  # the senders are held back (`hold`)

    async def start(self, host: str, port: int) -> tuple[str, int]:
        return await self.serve(host=host, port=port)

    async def serve(self, **where: Any) -> tuple[str, int]:
        """Listen where ``where`` says: ``host`` and ``port``, or ``sock`` (a listening socket). TLS
        is started by each connection itself (`_Connection`), so that a connection still in its
        handshake counts against max_connections and a failed handshake is recorded."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), **where)
        address = self._server.sockets[0].getsockname()
        return str(address[0]), int(address[1])

    def hold(self) -> None:
        """Read no more from any connection, new ones included, until `release`: TCP holds the
        senders back (the store is behind, docs/audit.md "When the store falls behind"). Their
        timers stop meanwhile: a sender held is neither idle nor too slow."""
        self.held = True
        for conn in self.connections:
            conn.hold()

    def release(self) -> None:
        """Read the connections again; each frame cut short by the hold has frame_timeout again."""
        self.held = False
        for conn in self.connections:
            conn.release()

    def full(self, sender: Sender) -> bool:
        """Whether a new connection finds the listener at `Limits.max_connections` (a flood of
        connections, or senders that never hang up). Then a connection quiet for EVICT_QUIET
        seconds or more makes room: of the sender holding the most connections, the one quiet
        longest (a flood from one host pays for itself; one that sends, even slowly, is never
        chosen). When none is that quiet, the new one is closed at once. Either is recorded, one
        Event at most every REFUSALS_RECORDED_EVERY seconds, the others counted into a summary
        per host at the interval's end (`Refusals`)."""
        limit = self.limits.max_connections
        if len(self.connections) < limit:
            return False
        now = time.monotonic()
        held = Counter(c.sender.host for c in self.connections)
        # While the senders are held back each is quiet because of it, and what its connection
        # holds unread would be lost with it: none is closed for a newcomer then.
        quiet = [] if self.held else [c for c in self.connections if now - c.last_heard >= EVICT_QUIET]
        victim = min(quiet, key=lambda c: (-held[c.sender.host], c.last_heard), default=None)
        closed = victim.sender if victim is not None else sender
        if self.refusals.due(closed.host):
            if victim is not None:
                detail = (f"{limit} connections already open on this {self.transport} listener "
                          f"(atna.max_connections): this one, quiet for {now - victim.last_heard:.0f} s, of a sender "
                          f"holding {held[victim.sender.host]}, was closed to make room")
            else:
                detail = (f"{limit} connections already open on this {self.transport} listener "
                          f"(atna.max_connections), none quiet for {EVICT_QUIET:g} s: closed at once")
            self.publish(problem_event(closed, FrameProblem("too-many-connections", detail)))
        else:
            self._summarise_later()
        if victim is not None:
            victim.evict()
            return False
        return True

    def problem(self, sender: Sender, problem: FrameProblem) -> None:
        """Record a problem of one of the connections: the first RECORDED_EACH of a kind from a host
        in each RECORD_INTERVAL one by one, the others counted into one record at its end
        (`Repeats`, as the RESTful endpoint does): a host failing 300 TLS handshakes a second wrote
        a record each, some 26 GB a day into the sealed store."""
        now = time.monotonic()
        if self.repeats.note(sender, problem.problem, problem.detail, "", "", now):
            self.publish(problem_event(sender, problem))
        elif self._repeats_timer is None:
            self._repeats_timer = asyncio.get_running_loop().call_later(REPEATS_LOOK, self._record_repeats)

    def _record_repeats(self, *, final: bool = False) -> None:
        """Record the counts of the intervals over (all of them, ``final``)."""
        self._repeats_timer = None
        for slot in self.repeats.due(float("inf") if final else time.monotonic()):
            who = "senders beyond the hosts counted apart" if slot.sender.host == "*" else "this sender"
            self.publish(problem_event(slot.sender, FrameProblem(slot.problem, (
                f"{slot.counted} more of {who} in the {RECORD_INTERVAL:g} s after the first {RECORDED_EACH}, "
                f"counted in this record; the last: {slot.error}")), repeats=slot.counted))
        if not final and self.repeats.counting():
            self._repeats_timer = asyncio.get_running_loop().call_later(REPEATS_LOOK, self._record_repeats)

    def _summarise_later(self) -> None:
        """Record the interval's counted refusals when it ends (one timer at a time)."""
        left = self.refusals.left()
        if self._summary is None and left is not None:
            self._summary = asyncio.get_running_loop().call_later(left, self._summarise)

    def _summarise(self, *, final: bool = False) -> None:
        self._summary = None
        for host, count in self.refusals.summaries(final=final):
            who = "senders beyond the hosts counted apart" if host == "*" else "this sender"
            self.publish(problem_event(Sender(host, None, self.transport), FrameProblem(
                "too-many-connections", f"{count} more connections of {who} closed on this full {self.transport} "
                                        f"listener (atna.max_connections) in the {REFUSALS_RECORDED_EVERY:g} s "
                                        "after the one recorded, counted in this record"), repeats=count))
        if not final:
            self._summarise_later()  # counted meanwhile

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for conn in list(self.connections):
            conn.close()
        if self._summary is not None:
            self._summary.cancel()
        self._summarise(final=True)  # what was counted, not yet recorded, is not lost with the listener
        for _ in range(100):  # the closed connections' connection_lost (up to 1 s), which may count a problem
            if not self.connections:
                break
            await asyncio.sleep(0.01)
        if self._repeats_timer is not None:
            self._repeats_timer.cancel()
        self._record_repeats(final=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)


class _Connection(asyncio.Protocol):
    """One sender's connection: every chunk asyncio delivers goes through the splitter at once, so
    what arrived before a reset or a TLS end without close_notify is never lost."""

    def __init__(self, listener: StreamListener) -> None:
        self.listener = listener
        self.publish = listener.publish
        self.splitter = Splitter(listener.limits.max_message)
        self.received = 0
        #: Octets of the syslog stream itself (over TLS its plaintext, not the handshake): none, a
        #: silent sender, as one that connects over TCP and sends nothing.
        self.said = 0
        self.sender = Sender("?", None, listener.transport)
        self.transport: asyncio.BaseTransport | None = None
        self._idle: asyncio.TimerHandle | None = None
        self.refused = False  # closed at once: the listener was full
        #: When its frame (or its TLS handshake, or for want of either the connection) began; None
        #: while no frame is incomplete. A frame has frame_timeout seconds from there.
        self.opened = time.monotonic()
        self.frame_began: float | None = self.opened
        self.last_heard = self.opened  # its last octet: the quietest connection is the one closed for a new one
        self._hold: asyncio.TimerHandle | None = None
        self._tls = TlsSession(listener.context) if listener.context is not None else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport: no isinstance check here.
        self.transport = transport
        self.sender = Sender(*peer_address(transport.get_extra_info("peername")), self.listener.transport)
        if self.listener.full(self.sender):
            self.refused = True
            transport.close()
            return
        self.listener.connections.add(self)
        if self.listener.held:
            self.hold()
        else:
            self._arm()

    def hold(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()  # type: ignore[attr-defined]
        self._arm()  # the listener is held: its timer stops

    def release(self) -> None:
        now = time.monotonic()
        self.last_heard = now
        if self.frame_began is not None:
            self.frame_began = now
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()  # type: ignore[attr-defined]
        self._arm()

    def evict(self) -> None:
        """Closed by its listener to make room (`StreamListener.full`, which recorded it)."""
        self.listener.connections.discard(self)
        self.received = max(self.received, 1)  # not reported again as silent or truncated
        self.said = max(self.said, 1)
        self.splitter = Splitter(self.listener.limits.max_message)
        self.refused = True
        self.close()

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        self.received += len(data)
        self.last_heard = time.monotonic()
        if self._tls is not None:
            data = self._through_tls(data)
            if not data:
                if not self.refused:
                    self._arm()  # the handshake done: from its deadline to the idle timeout
                return
        self.said += len(data)
        frames: list[bytes] = []
        try:
            frames, problems = self.splitter.feed(data)
            self._publish(frames, problems)
        except Exception:  # noqa: BLE001 - one sender's bytes must never end the listener
            log.exception("syslog data from %s", self.sender.host)
        self._frame_state(bool(frames))

    def _frame_state(self, delivered: bool, *, hold: bool = True) -> None:
        """After a read (or a flush): when the incomplete frame began, the held frame's timer (not
        armed again by a flush that found no frame: only what is read next can change that), and
        the connection's timer."""
        if not self.splitter.pending:
            self.frame_began = None
        elif delivered or self.frame_began is None:
            self.frame_began = time.monotonic()  # a new frame began
        if self._hold is not None:
            self._hold.cancel()
            self._hold = None
        if self.splitter.held and hold:
            self._hold = asyncio.get_running_loop().call_later(HOLD, self._flush_held)
        self._arm()

    def _flush_held(self) -> None:
        """Nothing followed the held frame's LF: it is complete."""
        self._hold = None
        frames = self.splitter.flush()
        self._publish(frames, [])
        self._frame_state(bool(frames), hold=bool(frames))

    def _through_tls(self, data: bytes) -> bytes:
        """RFC 5425 4.2: the handshake (its failure recorded with OpenSSL's reason, the alert sent),
        then the records' plaintext."""
        assert self._tls is not None and self.transport is not None
        established = self._tls.established
        try:
            plain = self._tls.feed(data)
        except TlsFailure as exc:
            self._write(self._tls.outgoing())
            self.refused = True  # recorded here, not again when the connection is lost
            self.listener.connections.discard(self)
            self.listener.problem(self.sender, FrameProblem("tls-handshake-failed" if not established
                                                                 else "malformed-frame", str(exc)))
            self.close()
            return b""
        self._write(self._tls.outgoing())
        if self._tls.established and not established:
            self.sender = Sender(self.sender.host, self.sender.port, self.sender.transport,
                                 certificate=_subject(self._tls.ssl_object))
        if self._tls.closed:  # close_notify: answered; what came before it is kept (below, connection_lost)
            self._write(self._tls.goodbye())
            self.close()
        return plain

    def _write(self, data: bytes) -> None:
        if data and self.transport is not None:
            self.transport.write(data)  # type: ignore[attr-defined]

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
        if self._hold is not None:
            self._hold.cancel()
        if self.refused:
            return  # recorded (counted) when it was refused or evicted
        self.listener.connections.discard(self)
        self._publish(self.splitter.flush(final=True), [])  # a frame held at its LF, or without one: it ended
        handshaking = self._tls is not None and not self._tls.established
        if handshaking and self.received > 0:  # a ClientHello, or part of one, then gone
            self.listener.problem(self.sender, FrameProblem(
                "tls-handshake-failed", "TLS handshake not complete: the client closed the connection in it "
                                        "(RFC 5425 4.2), without an alert saying why"))
        elif self.said == 0:
            self.listener.problem(self.sender, FrameProblem("silent", self._silence))
        for problem in self.splitter.finish():
            self.listener.problem(self.sender, problem)
        if exc is not None:
            log.info("syslog connection from %s ended: %s", self.sender.host, exc)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _arm(self) -> None:
        """The connection's one timer: idle_timeout after its last octet, or frame_timeout after the
        first octet of a frame still incomplete (or after the start of a TLS handshake not yet
        done), whichever comes first: a sender trickling one octet at a time cannot hold its place."""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self.listener.held:
            return  # `release` arms it again
        loop = asyncio.get_running_loop()
        limits = self.listener.limits
        delay = limits.idle_timeout
        handshaking = self._tls is not None and not self._tls.established
        if (self.splitter.pending or handshaking) and self.frame_began is not None:
            delay = min(delay, self.frame_began + limits.frame_timeout - time.monotonic())
        self._idle = loop.call_later(max(delay, 0.0), self._timed_out)

    @property
    def _silence(self) -> str:
        """What a sender that said nothing did: connected (and, over TLS, shook hands)."""
        after = " after its TLS handshake" if self._tls is not None and self._tls.established else ""
        return f"connected and sent nothing{after}"

    def _timed_out(self) -> None:
        limits = self.listener.limits
        if self._tls is not None and not self._tls.established and self.received > 0:
            self.received = self.said = -1  # reported here, not again when the connection is lost
            self.listener.problem(self.sender, FrameProblem(
                "tls-handshake-failed", f"TLS handshake not complete {limits.frame_timeout:g} s after it began"))
        elif self.said == 0:
            self.received = self.said = -1  # reported here, not again when the connection is lost
            self.listener.problem(self.sender, FrameProblem(
                "silent", f"{self._silence} for {time.monotonic() - self.opened:.0f} s"))
        elif self.splitter.pending:
            pending = self.splitter.pending
            self.splitter = Splitter(limits.max_message)  # reported here, not again as truncated
            self.listener.problem(self.sender, FrameProblem(
                "too-slow", f"a frame not complete {limits.frame_timeout:g} s after its first octet "
                            f"({pending} octets so far): connection closed"))
        self.close()

    def _publish(self, frames: list[bytes], problems: list[FrameProblem]) -> None:
        for problem in problems:
            self.listener.problem(self.sender, problem)
        if not frames:
            return
        kinds = self.splitter.kinds
        if len(kinds) != len(frames):  # not the splitter's last frames: as it frames now
            kinds = [self.splitter.framing or Framing.OCTET_COUNTING] * len(frames)
        # Each frame stamped with its own framing (one read may hold both, RFC 6587 3.4).
        for used, run in groupby(zip(frames, kinds, strict=True), key=lambda pair: pair[1]):
            stamped = Sender(self.sender.host, self.sender.port, self.sender.transport, used.value,
                             self.sender.certificate)
            # RFC 5425 4.3: over TLS only octet counting is allowed; read it anyway, but say so.
            wrong = self.listener.transport == "tls" and used is Framing.NON_TRANSPARENT
            for event in frame_events(stamped, [frame for frame, _ in run], flags=("wrong-framing",) if wrong else ()):
                self.publish(event)


class DatagramListener(asyncio.DatagramProtocol):
    """RFC 5426: each datagram is one syslog message.

    UDP cannot be held back: while the store is behind (`hold`, atna/backpressure.py) each datagram
    is dropped, as the kernel drops what a full socket buffer cannot take, and counted per sender:
    one `backlog-full` record at most every REFUSALS_RECORDED_EVERY seconds, the rest in a summary
    per host carrying their number. Read, each would wait in memory for the store: a flood of
    datagrams grew the process by a gigabyte and held up the gateway's own records."""

    def __init__(self, publish: Publish) -> None:
        self.publish = publish
        self._transport: asyncio.DatagramTransport | None = None
        self.held = False
        self.dropped = Refusals()
        self._summary: asyncio.TimerHandle | None = None

    def hold(self) -> None:
        self.held = True

    def release(self) -> None:
        self.held = False

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        self._transport = transport
        address = transport.get_extra_info("sockname")
        return str(address[0]), int(address[1])

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        if self._summary is not None:
            self._summary.cancel()
        self._summarise(final=True)  # what was counted, not yet recorded, is not lost with the listener

    def _drop(self, sender: Sender) -> None:
        if self.dropped.due(sender.host):
            self.publish(problem_event(sender, FrameProblem("backlog-full", (
                "datagram dropped: the store is behind (atna.max_backlog events wait), and UDP senders cannot "
                "be held back (RFC 5426); later ones are counted until it catches up"))))
        elif self._summary is None and (left := self.dropped.left()) is not None:
            self._summary = asyncio.get_running_loop().call_later(left, self._summarise)

    def _summarise(self, *, final: bool = False) -> None:
        self._summary = None
        for host, count in self.dropped.summaries(final=final):
            who = "senders beyond the hosts counted apart" if host == "*" else "this sender"
            self.publish(problem_event(Sender(host, None, "udp"), FrameProblem(
                "backlog-full", f"{count} more datagrams of {who} dropped while the store was behind "
                                f"(atna.max_backlog) in the {REFUSALS_RECORDED_EVERY:g} s after the one recorded, "
                                "counted in this record"), repeats=count))
        if not final and (left := self.dropped.left()) is not None:
            self._summary = asyncio.get_running_loop().call_later(left, self._summarise)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        sender = Sender(str(addr[0]), int(addr[1]), "udp")
        if self.held:
            self._drop(sender)
            return
        # RFC 5426 3.1: one message per datagram, no trailer; senders still add one (LF, or NUL as
        # Python's SysLogHandler does), which is not part of the message.
        frame = data.rstrip(b"\n\0")
        if not frame:
            self.publish(problem_event(sender, FrameProblem("malformed-frame", "empty datagram")))
            return
        try:
            self.publish(frame_event(sender, frame))
        except Exception:  # noqa: BLE001 - one datagram must never end the listener
            log.exception("datagram from %s", sender.host)


def tls_context(tls: TlsListener) -> ssl.SSLContext:
    """The server context of an RFC 5425 listener (its file paths resolved)."""
    from pacsguard.tls.contexts import server_context

    context = server_context(tls.cert_file, tls.key_file, ca_file=tls.ca_file,
                             require_client_cert=tls.require_client_cert)
    # No TLS 1.3 session tickets: a syslog sender never reads, and a ticket left unread in its
    # socket turns its close into a TCP reset that discards the tail of its stream here.
    context.num_tickets = 0
    return context


def _subject(ssl_object: ssl.SSLObject | None) -> str | None:
    """The RFC 4514 subject of the client's certificate, or None (plain TCP, or no certificate sent)."""
    if ssl_object is None:
        return None
    from pacsguard.tls.contexts import describe_peer

    subject: str | None = describe_peer(ssl_object)["subject"]
    return subject
