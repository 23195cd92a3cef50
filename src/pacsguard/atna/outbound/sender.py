"""Sending the spool to the external repository over RFC 5425 TLS (octet counting), on a thread of
its own, and deciding what has arrived.

Syslog has no acknowledgement, so delivery is decided from the connection: a message counts as
delivered once every byte of it has been acknowledged by the peer's TCP (counted in bytes: Linux's
``tcpi_bytes_acked``, RFC 4898 tcpEStatsAppHCThruOctetsAcked) and the connection has stayed open
for ``confirm_after`` seconds since (a repository that stops or crashes closes the connection well
within that). Each burst written is confirmed on its own, so a repository slower than the feed,
the send queue never empty, still has what it took confirmed.

A repository that acknowledges no byte for ``stall_timeout`` seconds while some wait (its TCP
window stays shut: its store stalls, it hangs) is taken for a dead one: the connection is closed
and a new one sent what is not confirmed. One that drains slowly, however slowly, is not: a write
waits as long as the peer's TCP keeps acknowledging bytes, since a reconnection resends what it
took but did not confirm, and a repository keeping no delivery numbers (rsyslog) stores that twice.

Anything not yet delivered is sent again after a reconnection; each message carries its origin,
its spool's instance and its sequence in its structured data
(``[pacsguard@32473 origin=... instance=... seq=...]``), so the receiving repository drops a resent
copy of what it already stored (the same bytes under the same numbers from the same client
certificate): nothing is lost while it is down, nothing is stored twice after it returns.

A connection that fails is logged, and recorded once as an ``atna.outbound.failed`` Event (again
when the reason changes): a repository whose certificate does not verify (another CA, another
name) may be a man in the middle, and the messages wait in the spool meanwhile. A connection
counts as working only once it has stayed open ``confirm_after`` seconds: in TLS 1.3 (RFC 8446
4.4.4) the client's handshake is complete before the server has checked the client's certificate,
so a repository refusing pacsguard's certificate answers with an alert (RFC 8446 6.2) or simply
closes the connection *after* the handshake, and the first read or write after it fails. Such an
end is a failed connection like any other, named by the alert when there is one.

After a failed connection the next attempt waits ``retry`` seconds, doubled with each further
failed attempt up to ``retry_max``, and jittered down to half of that (a repository down for a
day costs each gateway a few hundred connections and TLS handshakes, not 17,000, and gateways
whose repository comes back do not all reconnect in the same second). The wait falls back to
``retry`` once a connection has worked. A failing streak is recorded once per reason, with the
count of failed attempts so far, however long it lasts.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import re
import socket
import ssl
import struct
import termios
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from pacsguard.atna.outbound.spool import Spool
from pacsguard.runtime.peer import look, tls_alert

log = logging.getLogger("pacsguard.atna.outbound")

#: The structured-data ID of the delivery parameters: pacsguard@ with the RFC 5612 documentation
#: enterprise number (32473), as RFC 5424 7.2.2 allows for private SD-IDs.
SD_ID = "pacsguard@32473"
#: PRI 85: facility 10 (security/authorization), severity 5 (notice), as ITI-20 senders commonly use.
PRI = 85


def frame(origin: str, seq: int, message: bytes, hostname: str, instance: str | None = None) -> bytes:
    """One octet-counted RFC 5424 frame (RFC 5425 4.3) carrying ``message``; its SD-PARAMs (RFC 5424
    6.3.3) name the origin, the spool's instance and the sequence."""
    stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    params = f'origin="{_sd_escape(origin)}"' + (f' instance="{_sd_escape(instance)}"' if instance else "")
    head = (f'<{PRI}>1 {stamp} {hostname} pacsguard {os.getpid()} IHE+RFC-3881 '
            f'[{SD_ID} {params} seq="{seq}"] ').encode()
    body = head + message
    return b"%d %s" % (len(body), body)


def _sd_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


class OutboundSender:
    def __init__(self, spool: Spool, origin: str, host: str, port: int, context: ssl.SSLContext, *,
                 server_name: str | None = None, retry: float = 5.0, retry_max: float = 300.0,
                 confirm_after: float = 1.0, stall_timeout: float = 60.0,
                 on_delivered: Callable[[int, int, bool], None] = lambda first, last, reconnected: None,
                 on_failed: Callable[[Failure], None] = lambda failure: None) -> None:
        self.spool = spool
        self.origin = origin
        self.address = (host, port)
        self.context = context
        self.server_name = server_name or host
        self.retry = retry
        self.retry_max = max(retry_max, retry)
        self.confirm_after = confirm_after
        self.stall_timeout = stall_timeout
        self.on_delivered = on_delivered
        self.on_failed = on_failed
        #: The reason of the latest failed connection, until one works (a new reason is a WARNING again).
        self.failing: str | None = None
        #: Failed connection attempts since a connection last worked (0 while one works).
        self.attempts = 0
        # The reasons recorded as Events in the current failing streak: a repository alternating
        # between two failures (one of two backends down) is not one Event per attempt.
        self._recorded: set[str] = set()
        # A stall recorded since something was last delivered (see _failed).
        self._stall_recorded = False
        self.hostname = socket.gethostname() or "-"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pacsguard-atna-outbound", daemon=True)
        self.connections = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        with self.spool.added:
            self.spool.added.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            link: _Link | None = None
            try:
                with socket.create_connection(self.address, timeout=10) as raw, \
                        self.context.wrap_socket(raw, server_hostname=self.server_name) as conn:
                    self.connections += 1
                    # Short waits from now on: a write blocked on a full window comes back every
                    # tick to see whether the repository still takes bytes (``stall_timeout``).
                    conn.settimeout(_TICK)
                    link = _Link(conn, time.monotonic())
                    self._send(link)
            except (OSError, ssl.SSLError) as exc:
                self._ended(link, exc)
            end = time.monotonic() + self.delay()
            while not self._stop.wait(max(0.0, min(_TICK, end - time.monotonic()))) and time.monotonic() < end:
                self._held_back()  # the spool fills most while the repository is down

    def delay(self) -> float:
        """Seconds before the next connection attempt: ``retry`` doubled for each failed attempt
        beyond the first, at most ``retry_max``, then a random part of it between half and all
        (equal jitter); after a connection that worked (no failed attempt since), ``retry`` so
        jittered."""
        doublings = min(max(self.attempts - 1, 0), 32)  # 2**32 * retry is far above any retry_max
        ceiling = min(self.retry_max, self.retry * 2**doublings)
        return random.uniform(ceiling / 2, ceiling)

    def _ended(self, link: _Link | None, exc: BaseException) -> None:
        """A connection that ended: the repository closing one that worked is not a failure (it
        restarts, or drops idle clients); an error, or a close before it worked, is."""
        if isinstance(exc, Closed):
            if link is not None and link.working:
                log.info("outbound to %s:%s: the repository closed the connection; reconnecting", *self.address)
                return
            # Its TCP acknowledged whole messages first: a repository that closes after each message
            # (or one that read them while refusing the certificate); either way they are sent again.
            exc = Closed(EARLY_CLOSE if link is None or not link.took else (
                f"the repository closed the connection within {self.confirm_after:g} s (confirm_after) of taking "
                "audit messages, so they do not count as delivered and are sent again (does it close the "
                "connection after each message, or refuse pacsguard's client certificate?)"))
        self._failed(exc)

    def _working(self, link: _Link, now: float) -> None:
        """The connection has stayed open ``confirm_after`` seconds (the caller just saw it open):
        the repository accepted pacsguard's certificate, so a failure from now on is news again."""
        if link.working or now - link.opened < self.confirm_after:
            return
        link.working = True
        attempts, self.attempts = self.attempts, 0  # the backoff starts again from ``retry``
        self._recorded.clear()
        if self.failing is not None:
            log.info("outbound to %s:%s: connected again after %s (%d failed attempts)", *self.address,
                     self.failing, attempts)
            self.failing = None

    def _failed(self, exc: BaseException) -> None:
        """Log a failed connection; the first of a streak, or a reason not yet recorded in it,
        becomes an Event too (with the count of failed attempts so far)."""
        self.attempts += 1
        failure = failure_of(exc, self.attempts)
        where = "%s:%s" % self.address
        if isinstance(exc, Stalled):
            # Each stalled connection worked (it stayed open), which ends a failing streak: a hung
            # repository is one Event until something is delivered again, not one per stall.
            if self._stall_recorded:
                log.info("outbound to %s: %s (again; audit messages wait in the spool: %d)", where, failure.reason,
                         self.spool.pending())
                self.failing = failure.reason
                return
            self._stall_recorded = True
        # WARNING when it starts or its reason changes (a certificate that stops verifying may be a
        # man in the middle); the same failure again at a later attempt is INFO.
        if failure.reason != self.failing:
            log.warning("outbound to %s: %s (audit messages wait in the spool: %d)", where, failure.reason,
                        self.spool.pending())
        else:
            log.info("outbound to %s: %s (failed attempts since it last worked: %d; audit messages wait in the "
                     "spool: %d)", where, failure.reason, self.attempts, self.spool.pending())
        self.failing = failure.reason
        if failure.reason in self._recorded:
            return
        self._recorded.add(failure.reason)
        try:
            self.on_failed(failure)
        except Exception:  # noqa: BLE001 - recording the failure must not stop the retries
            log.exception("outbound to %s: recording the failure failed", where)

    def _send(self, link: _Link) -> None:
        """Write the spool to the connection and confirm what arrived, until stopped; raises why the
        connection ended (:class:`Closed`, a TLS alert, a socket error)."""
        conn = link.conn
        delivered = written = self.spool.delivered()
        reconnected = self.connections > 1
        # (seq, when): every byte up to seq had been acknowledged by the peer's TCP at `when`; one
        # entry per burst, so a burst written while an earlier one waits out ``confirm_after`` is
        # confirmed ``confirm_after`` after its own acknowledgement, not after the earlier's
        # confirmation (else a repository stopping in between gets it twice).
        acked: deque[tuple[int, float]] = deque()  # in the order written: seqs and times ascend
        # (seq, mark): the burst ending at seq is in the peer's hands once ``tcpi_bytes_acked``
        # reaches mark (the connection's bytes up to and including it).
        sent: deque[tuple[int, int]] = deque()
        progress = _Progress(conn, time.monotonic())
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                self._held_back()
                taken = progress.check(now, self.stall_timeout)
                while sent and sent[0][1] <= taken:
                    acked.append((sent.popleft()[0], now))
                    link.took = True
                due = _confirmable(acked, now, self.confirm_after)
                if due is not None:
                    _check_open(conn)  # the repository went away: what is not delivered is sent again
                    self._working(link, now)
                    self.spool.mark_delivered(due)
                    self.on_delivered(delivered + 1, due, reconnected)
                    self._stall_recorded = False
                    delivered, reconnected = due, False
                    while acked and acked[0][0] <= due:
                        acked.popleft()
                rows = _burst(self.spool.after(written))
                if rows:
                    self._write(conn, b"".join(frame(self.origin, seq, msg, self.hostname, self.spool.instance)
                                               for seq, msg in rows), progress)
                    written = rows[-1][0]
                    sent.append((written, _queued(conn)))
                    continue
                _check_open(conn)
                self._working(link, now)
                with self.spool.added:
                    self.spool.added.wait(0.1)
        except Closed:
            # The close may be seen before the acknowledgement that came ahead of it was: read it
            # once more, so a repository that took messages is not called one that took none.
            if sent and _bytes_acked(conn) >= sent[0][1]:
                link.took = True
            raise

    def _write(self, conn: ssl.SSLSocket, data: bytes, progress: _Progress) -> None:
        """Send ``data`` a TLS record's worth at a time; while the repository's window is shut, wait
        as long as it acknowledged a byte within ``stall_timeout`` (else :class:`Stalled`)."""
        view = memoryview(data)
        for start in range(0, len(view), _RECORD):
            chunk = view[start:start + _RECORD]
            while True:
                try:
                    _write(conn, chunk)
                    break
                except TimeoutError:
                    # OpenSSL holds the record half sent: the same bytes must be offered again
                    # (SSL_write, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER).
                    if self._stop.is_set():
                        return  # what is not confirmed is sent at the next start
                    progress.check(time.monotonic(), self.stall_timeout)

    def _held_back(self) -> None:
        """Record it when the spool starts holding messages back at its bound, and when it takes
        them again, with how many it held back (an ``atna.outbound.failed`` Event each)."""
        bound = f"max_spool_bytes ({self.spool.max_bytes} bytes)"
        if not self.spool.held_recorded:
            if self.spool.held == 0:
                return
            self.spool.held_recorded = True
            reason = (f"the spool is at its bound, {bound}: new audit messages are held back, neither spooled nor "
                      "sent (pacsguard's own event store keeps their events)")
        else:
            held = self.spool.release_held()
            if held == 0:  # still at the bound
                return
            self.spool.held_recorded = False
            reason = (f"{held} audit messages were held back, neither spooled nor sent, while the spool was at its "
                      f"bound, {bound} (pacsguard's own event store keeps their events); it takes new ones again")
        log.warning("outbound to %s:%s: %s", *self.address, reason)
        try:
            self.on_failed(Failure(reason, False, self.attempts))
        except Exception:  # noqa: BLE001 - recording must not stop the feed
            log.exception("outbound to %s:%s: recording the spool's bound failed", *self.address)


#: The socket's timeout once connected: how often a blocked write looks at the repository's progress.
_TICK = 0.25
#: Bytes per write: at most one TLS record (RFC 8446 5.1, 2^14), so a timed-out write is one record.
_RECORD = 16_384


#: Bytes of messages written at a time (at least one message): what a slow repository took is
#: confirmed between two such writes, not after the whole of a long backlog.
_BURST = 65_536


def _burst(rows: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """The first of ``rows`` up to ``_BURST`` bytes of messages, at least one."""
    size = 0
    for i, (_, message) in enumerate(rows):
        size += len(message)
        if size > _BURST and i:
            return rows[:i]
    return rows


class Stalled(ConnectionError):
    """The repository acknowledged no byte for ``stall_timeout`` seconds while some waited."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the repository accepted no byte for {seconds:g} s (stall_timeout) while audit messages "
                         "waited: taken for dead, reconnecting")


class _Progress:
    """Whether the repository's TCP still takes bytes: ``tcpi_bytes_acked`` moving, or nothing
    unacknowledged."""

    def __init__(self, conn: ssl.SSLSocket, now: float) -> None:
        self.conn = conn
        self.taken = _bytes_acked(conn)
        self.moved = now

    def check(self, now: float, stall_timeout: float) -> int:
        """The bytes acknowledged so far; raises :class:`Stalled` when none were for ``stall_timeout``
        seconds while some wait."""
        taken = _bytes_acked(self.conn)
        if taken != self.taken or _unsent(self.conn) == 0:
            self.taken, self.moved = taken, now
        elif now - self.moved >= stall_timeout:
            raise Stalled(stall_timeout)
        return taken


@dataclass(slots=True)
class _Link:
    """One connection to the repository: when its handshake completed, and whether it has worked
    (stayed open ``confirm_after`` seconds since)."""

    conn: ssl.SSLSocket
    opened: float
    working: bool = False
    #: Whether the repository's TCP acknowledged a whole burst of messages on it.
    took: bool = False


class Closed(ConnectionError):
    """The repository ended the connection (EOF or close_notify) without an error."""

    def __init__(self, reason: str = "the repository closed the connection") -> None:
        super().__init__(reason)


#: Why a connection closed before it worked: what a repository refusing pacsguard's client
#: certificate without an alert does (rsyslog's gtls driver with a PermittedPeer not naming it).
EARLY_CLOSE = ("the repository closed the connection right after the TLS handshake (does it accept "
               "pacsguard's client certificate?)")


def _check_open(conn: ssl.SSLSocket) -> None:
    """Return if the repository still holds the connection open, else raise why it ended: the TLS
    alert it sent (an ``ssl.SSLError`` naming it), :class:`Closed`, or the socket's error. A
    repository never sends data; TLS records that carry none (TLS 1.3 session tickets) are read and
    dropped, as is data (``pacsguard.runtime.peer.look``)."""
    seen = look(conn)
    if seen.state == "eof":
        raise Closed()
    if seen.state == "reset":
        raise seen.error if seen.error is not None else Closed()  # None: the descriptor was closed


def _write(conn: ssl.SSLSocket, data: bytes | memoryview) -> None:
    """Send ``data``; when the repository has ended the connection, raise how it did: the alert it
    sent, or :class:`Closed` (OpenSSL reports a write after a TLS 1.3 alert or a close as a bare EOF
    or a broken pipe, while the alert or the EOF waits unread in the receive buffer; one reason for
    one cause, so the same refusal is not recorded again under another name)."""
    try:
        conn.sendall(data)
    except TimeoutError:
        raise
    except OSError as exc:
        try:
            _check_open(conn)
        except Closed as end:
            raise end from exc
        except ssl.SSLError as end:
            if tls_alert(end):
                raise end from exc
        except OSError:
            pass
        raise


def _confirmable(acked: deque[tuple[int, float]], now: float, confirm_after: float) -> int | None:
    """The highest seq whose acknowledgement is at least ``confirm_after`` old, None for none
    (``acked`` ascends in time: the old enough ones come first)."""
    due = None
    for seq, when in acked:
        if now - when < confirm_after:
            break
        due = seq
    return due


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a connection to the repository failed: ``reason`` without what changes from one attempt
    to the next; ``certificate`` when the repository's certificate did not verify; ``attempts``,
    the failed connection attempts since a connection last worked, this one included."""

    reason: str
    certificate: bool
    attempts: int = 1


_SSL_SOURCE = re.compile(r"\s*\(_ssl\.c:\d+\)$")
#: The alerts a server sends about the client's certificate (RFC 8446 6.2): the repository refuses
#: pacsguard's (another CA, expired, a name it does not permit).
_CERTIFICATE_ALERTS = frozenset({"bad certificate", "unsupported certificate", "certificate revoked",
                                 "certificate expired", "certificate unknown", "unknown ca", "access denied",
                                 "certificate required"})


def failure_of(exc: BaseException, attempts: int = 1) -> Failure:
    """Why ``exc`` ended a connection, in words that stay the same from one attempt to the next:
    a TLS alert by its RFC 8446 6.2 name, whether it came in the handshake or after it."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Failure(f"TLS certificate verify failed: {exc.verify_message}", True, attempts)
    name = tls_alert(exc)
    if name:
        hint = " (it refuses pacsguard's client certificate)" if name in _CERTIFICATE_ALERTS else ""
        return Failure(f"TLS alert from the repository: {name}{hint}", False, attempts)
    if isinstance(exc, ssl.SSLError):
        return Failure(f"TLS: {_SSL_SOURCE.sub('', exc.reason or str(exc))}", False, attempts)
    if isinstance(exc, OSError) and exc.strerror:
        return Failure(exc.strerror, False, attempts)
    return Failure(str(exc) or type(exc).__name__, False, attempts)


def _bytes_acked(conn: ssl.SSLSocket) -> int:
    """Bytes of the connection the peer's TCP has acknowledged (Linux ``struct tcp_info``
    ``tcpi_bytes_acked``, at offset 120 since Linux 4.1)."""
    info = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    acked: int = struct.unpack_from("Q", info, 120)[0]
    return acked


def _queued(conn: ssl.SSLSocket) -> int:
    """Bytes given to the connection so far, counted as ``tcpi_bytes_acked`` counts them: the
    acknowledged ones and the send queue, read until no acknowledgement came in between."""
    while True:
        before = _bytes_acked(conn)
        unsent = _unsent(conn)
        if _bytes_acked(conn) == before:
            return before + unsent


def _unsent(conn: ssl.SSLSocket) -> int:
    """Bytes in the socket's send queue not yet acknowledged by the peer (Linux SIOCOUTQ)."""
    buf = fcntl.ioctl(conn.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    unsent: int = struct.unpack("i", buf)[0]
    return unsent
