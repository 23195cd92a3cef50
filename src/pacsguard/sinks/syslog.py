"""Events to a SIEM as RFC 5424 syslog messages, over TCP (RFC 6587) or TLS (RFC 5425).

Each message is octet-counted (RFC 6587 3.4.1, the framing RFC 5425 4.3 mandates for TLS):
``MSG-LEN SP SYSLOG-MSG``, so a message may hold any byte, newlines included.

The message (RFC 5424 6):

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [pacsguard@32473 kind=".." outcome=".."
    actor=".." patient=".."] BOM{canonical JSON of the Event}

PRI = facility * 8 + severity (6.2.1; `Severity` already uses RFC 5424 numbers), TIMESTAMP in UTC
with microseconds (6.2.3), MSGID = the event kind (6.2.7), one SD-ELEMENT (6.3) whose values are
escaped per 6.3.3, and MSG = UTF-8 BOM + `Event.to_json()` (6.4), so a SIEM gets the whole event
and can check it byte for byte against the store.

With `message_format` the MSG is instead a SIEM's own record (pacsguard.sinks.formats): `ecs` JSON
keeps the BOM (it is Unicode text); `cef` and `leef` records go without one (MSG-ANY, 6.4), since
their parsers expect the record to start at "CEF:" / "LEEF:". The header and SD element stay.

No message is longer than `max_message_size` octets (default MAX_MESSAGE): an event that would be
is sent shortened (`shorten`), with `truncated="OCTETS"` in its SD element (RFC 5424 6.1: a
receiver MAY truncate or discard what it cannot take; the collectors here do worse, see MAX_MESSAGE).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import ssl
import threading
import time
from collections import deque
from datetime import timezone
from itertools import islice
from typing import Any, Literal, Sequence

from pacsguard.events.model import Event, Party
from pacsguard.runtime.peer import probe
from pacsguard.sinks.formats import FormatName, formatter
from pacsguard.sinks.formats.common import VALUE_DELIMITER, without_controls
from pacsguard.tls.contexts import client_context, explain_tls_error

# 32473 is the Private Enterprise Number RFC 5612 reserves for documentation and examples; an
# operator with an own PEN keeps the SD-ID stable anyway, since SIEM parsers key on it.
SD_ID = "pacsguard@32473"
BOM = b"\xef\xbb\xbf"
FACILITY_AUTHPRIV = 10
NILVALUE = "-"

# The longest message the sink sends, in octets. RFC 5425 4.3.1 asks a receiver to take 2048 and
# SHOULD take 8192; Debian's rsyslog takes 8096 by default (maxMessageSize "8k") and, over TCP,
# reads the rest of a longer octet-counted frame as a message of its own, so text inside an event
# (an attacker's, say) would reach the SIEM as a forged syslog message with any host and program
# name; syslog-ng closes the connection on a frame above its log-msg-size(), losing the messages
# sent behind it. A smaller limit than 8096 is never needed; a larger one only for a collector
# configured for it.
MAX_MESSAGE = 8096
# RFC 5424 6.1: every receiver takes 480 octets; a header and SD element need about that much.
MIN_MESSAGE = 480
# The most octets the queue holds while the collector is away. Its 100,000 frames of up to
# max_message_size octets each would be 810 MB at the default size: events an attacker makes
# just short of that size (a long user identity in each A-ASSOCIATE-RQ, PS3.7 D.3.3.7, sent whole)
# during a SIEM outage would take that much of the gateway's memory. Normal events (about 1 KiB)
# reach the count first.
MAX_QUEUE_BYTES = 128 * 1024 * 1024
# What a shortened event keeps (see shorten()).
_KEEP_IDS = 8
_KEEP_TEXT = 256


# --------------------------------------------------------------------------------------------
# RFC 5424 formatting
# --------------------------------------------------------------------------------------------

def _header_field(value: object, limit: int) -> str:
    """HOSTNAME, APP-NAME, PROCID, MSGID are PRINTUSASCII (%d33-126) with a length limit
    (RFC 5424 6.2.4-6.2.7); anything else becomes '_', and an empty value the NILVALUE."""
    if value is None:
        return NILVALUE
    text = "".join(ch if 33 <= ord(ch) <= 126 else "_" for ch in str(value))[:limit]
    return text or NILVALUE


def escape_param_value(value: str) -> str:
    """RFC 5424 6.3.3: inside PARAM-VALUE, '"', '\\' and ']' MUST be escaped with a backslash."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _structured_data(event: Event, truncated: int | None = None) -> str:
    params = [("kind", event.kind), ("outcome", event.outcome), ("actor", event.actor.label())]
    if truncated is not None:  # the whole message's length: the event in the store is the full one
        params.append(("truncated", str(truncated)))
    # RFC 5424 6.3.3 lets an SD-PARAM repeat: one `patient` per patient id, none when no
    # patient data was touched.
    params += [("patient", pid) for pid in event.patient_ids]
    if len(event.patient_ids) > 1:
        # rsyslog's mmpstrucdata and syslog-ng keep only the last value of a repeated name, so
        # all of them once more in one value, joined by DICOM's value delimiter, which no
        # Patient ID (LO) contains (PS3.5 6.2), as CEF's cs1 and LEEF's patientIds have them.
        params.append(("patients", VALUE_DELIMITER.join(event.patient_ids)))
    # Control characters as CEF and LEEF write them (U+FFFD): RFC 5424 allows them in a PARAM-VALUE,
    # but a collector in C ends a value at a NUL and rsyslog rewrites them (#000) on receipt.
    body = " ".join(f'{name}="{escape_param_value(without_controls(str(value)))}"' for name, value in params)
    return f"[{SD_ID} {body}]"


def format_rfc5424(event: Event, *, hostname: str, app_name: str = "pacsguard",
                   facility: int = FACILITY_AUTHPRIV, procid: str | int | None = None,
                   message_format: FormatName = "json", truncated: int | None = None) -> bytes:
    """One RFC 5424 message for `event` (without transport framing); MSG in `message_format`.
    `truncated`: the length of the whole message when `event` is a shortened copy (`shorten`)."""
    if not 0 <= facility <= 23:
        raise ValueError(f"syslog facility must be 0..23 (RFC 5424 6.2.1), not {facility}")
    pri = facility * 8 + int(event.severity)
    # TIME-SECFRAC allows up to 6 digits (6.2.3): microseconds, the resolution of Event.time.
    timestamp = event.time.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    header = " ".join([
        f"<{pri}>1", timestamp,
        _header_field(hostname, 255), _header_field(app_name, 48),
        _header_field(procid, 128), _header_field(event.kind, 32),
    ])
    # errors="replace": an unpaired surrogate must not kill the sender thread; RFC 5424 requires
    # valid UTF-8 in SD values and in a BOM-marked MSG.
    bom = BOM if message_format in ("json", "ecs") else b""
    return b"".join([
        header.encode("ascii"), b" ",
        _structured_data(event, truncated).encode("utf-8", "replace"), b" ",
        bom, formatter(message_format)(event).encode("utf-8", "replace"),
    ])


def _short_text(value: str | None, limit: int = _KEEP_TEXT) -> str | None:
    return value if value is None or len(value) <= limit else value[:limit - 1] + "\u2026"


def _short_party(party: Party) -> Party:
    # An A-ASSOCIATE-RQ's user identity alone may be 65535 octets (PS3.7 D.3.3.7).
    ae_title, host, user = _short_text(party.ae_title), _short_text(party.host), _short_text(party.user)
    if ae_title is party.ae_title and host is party.host and user is party.user:
        return party  # the same object: formats tell an empty side by identity (NOBODY)
    return dataclasses.replace(party, ae_title=ae_title, host=host, user=user)


def shorten(event: Event) -> Event:
    """A copy of `event` small enough for one syslog message: the same id, kind, time, severity and
    outcome (so the SIEM can find the whole event in the store), texts cut to 256 characters, at
    most 8 patient IDs and study UIDs, and only the details that are numbers, booleans or short
    texts."""
    details: dict[str, Any] = {key: value for key, value in event.details.items()
                               if isinstance(value, (bool, int, float)) or
                               (isinstance(value, str) and len(value) <= _KEEP_TEXT)}
    return dataclasses.replace(event, actor=_short_party(event.actor), target=_short_party(event.target),
                               patient_ids=tuple(_short_text(p) or "" for p in event.patient_ids[:_KEEP_IDS]),
                               study_uids=tuple(_short_text(u) or "" for u in event.study_uids[:_KEEP_IDS]),
                               component=_short_text(event.component) or "", details=details,
                               message=_short_text(event.message) or "")


def cut_message(message: bytes, limit: int) -> bytes:
    """`message` cut to at most `limit` octets, never inside a UTF-8 sequence (RFC 5424 6.4 wants
    a BOM-marked MSG to stay valid UTF-8)."""
    if len(message) <= limit:
        return message
    return message[:limit].decode("utf-8", "ignore").encode("utf-8")


def frame_octet_counted(message: bytes) -> bytes:
    """RFC 6587 3.4.1 / RFC 5425 4.3: MSG-LEN SP SYSLOG-MSG, MSG-LEN in octets."""
    return b"%d %b" % (len(message), message)


# --------------------------------------------------------------------------------------------
# The sender
# --------------------------------------------------------------------------------------------

class SyslogSink:
    """Sends Events to a syslog collector (rsyslog, syslog-ng, a SIEM) without ever blocking the
    caller.

    `emit()` formats and enqueues; a background thread owns the socket. The queue is bounded, to
    `queue_size` messages and `queue_bytes` octets: when it is full the oldest message is dropped
    and counted in `dropped` (for an audit trail the store is the record; syslog is the copy, and
    the newest events matter most to a SOC).

    Delivery is at least once. A message leaves the queue only after `sendall()` of it succeeded;
    when the collector is down the thread reconnects with exponential backoff and resends what is
    queued. Because RFC 6587/5425 have no acknowledgement, bytes handed to the kernel just before
    a collector dies can still vanish; so before each send the connection is probed (a collector
    never talks back, so readable means closed), and after a broken connection up to `replay`
    messages last sent on it are sent again (see `_to_replay`). Duplicates carry the same event
    id for the SIEM to fold.
    """

    def __init__(self, host: str, port: int, *, transport: Literal["tcp", "tls"] = "tcp",
                 ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None,
                 queue_size: int = 100_000, queue_bytes: int = MAX_QUEUE_BYTES, hostname: str | None = None,
                 app_name: str = "pacsguard", facility: int = FACILITY_AUTHPRIV,
                 connect_timeout: float = 5.0, send_timeout: float = 10.0,
                 backoff_initial: float = 0.2, backoff_max: float = 30.0,
                 batch_size: int = 256, replay: int = 1000,
                 message_format: FormatName = "json", max_message_size: int = MAX_MESSAGE,
                 logger: logging.Logger | None = None) -> None:
        if transport not in ("tcp", "tls"):
            raise ValueError(f"transport must be 'tcp' or 'tls', not {transport!r}")
        if transport == "tcp" and ssl_context is not None:
            raise ValueError("ssl_context given but transport is 'tcp'")
        if queue_size < 1 or batch_size < 1 or replay < 0:
            raise ValueError("queue_size and batch_size must be >= 1, replay >= 0")
        if not 0 <= facility <= 23:
            raise ValueError(f"syslog facility must be 0..23 (RFC 5424 6.2.1), not {facility}")
        if max_message_size < MIN_MESSAGE:
            raise ValueError(f"max_message_size must be at least {MIN_MESSAGE} octets (RFC 5424 6.1), "
                             f"not {max_message_size}")
        if queue_bytes < max_message_size + 16:  # a frame: the message and its length prefix
            raise ValueError(f"queue_bytes must hold one whole message ({max_message_size} octets), "
                             f"not {queue_bytes}")
        formatter(message_format)  # an unknown format fails here, not in the sender thread
        self.message_format = message_format
        self.host, self.port, self.transport = host, port, transport
        # RFC 5425 5.2: the collector is authenticated by certificate; default trust store if no
        # context was given.
        self._ssl_context = (ssl_context or client_context()) if transport == "tls" else None
        self._server_hostname = server_hostname or host
        self._hostname = hostname or socket.gethostname()
        self._app_name = app_name
        self._facility = facility
        self._procid = str(os.getpid())
        self._queue_size = queue_size
        self.queue_bytes = queue_bytes
        self._connect_timeout = connect_timeout
        self._send_timeout = send_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._batch_size = batch_size
        self._replay = replay
        self._max_message = max_message_size
        self._log = logger or logging.getLogger(__name__)

        self._cond = threading.Condition()
        self._pending: deque[bytes] = deque()
        self._pending_bytes = 0  # octets in _pending
        self._head_seq = 0  # sequence number of _pending[0]; lets the sender pop exactly what it sent
        self._closed = False
        self._deadline: float | None = None
        self._sock: socket.socket | None = None
        self.dropped = 0
        self.sent = 0
        self.connects = 0
        self.truncated = 0  # events sent shortened because their message was too long
        self._thread = threading.Thread(target=self._run, name=f"syslog-{host}:{port}", daemon=True)
        self._thread.start()

    # ---- caller side -------------------------------------------------------------------------

    def format(self, event: Event) -> bytes:
        """The event's message; shortened (`shorten`) when longer than `max_message_size` octets."""
        whole = self._format(event, None)
        if len(whole) <= self._max_message:
            return whole
        self.truncated += 1
        if self.truncated == 1:  # once: the count is in `truncated`, the whole events in the store
            self._log.warning("syslog %s:%d: event %s is %d octets, more than the %d a message may have; "
                              "sent shortened (truncated=\"%d\" in its structured data)", self.host, self.port,
                              event.id, len(whole), self._max_message, len(whole))
        smaller = shorten(event)
        short = self._format(smaller, len(whole))
        if len(short) > self._max_message:  # many short details or IDs: keep the record's frame only
            short = self._format(dataclasses.replace(smaller, details={}, patient_ids=smaller.patient_ids[:1],
                                                     study_uids=smaller.study_uids[:1]), len(whole))
        return cut_message(short, self._max_message)

    def _format(self, event: Event, truncated: int | None) -> bytes:
        return format_rfc5424(event, hostname=self._hostname, app_name=self._app_name,
                              facility=self._facility, procid=self._procid,
                              message_format=self.message_format, truncated=truncated)

    def emit(self, events: Sequence[Event]) -> None:
        self.send_messages([self.format(e) for e in events])

    def send_messages(self, messages: Sequence[bytes]) -> None:
        """Queue RFC 5424 messages formatted elsewhere (a witness's checkpoint: another SD-ELEMENT);
        one longer than `max_message_size` is cut there (a collector would split or drop it)."""
        frames = [frame_octet_counted(cut_message(m, self._max_message)) for m in messages]
        with self._cond:
            if self._closed:
                raise RuntimeError(f"SyslogSink({self.host}:{self.port}) is closed")
            for frame in frames:
                while self._pending and (len(self._pending) >= self._queue_size or
                                         self._pending_bytes + len(frame) > self.queue_bytes):
                    self._pending_bytes -= len(self._pending.popleft())
                    self._head_seq += 1
                    self.dropped += 1
                self._pending.append(frame)
                self._pending_bytes += len(frame)
            self._cond.notify()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        """Octets waiting in the queue (at most `queue_bytes`)."""
        with self._cond:
            return self._pending_bytes

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting events and send what is queued, for at most `timeout` seconds."""
        with self._cond:
            first = not self._closed
            if first:
                self._closed = True
                self._deadline = time.monotonic() + max(0.0, timeout)
                self._cond.notify_all()
        if not first:  # a second close() only waits for the first one's flush
            self._thread.join(timeout)
            return
        self._thread.join(timeout + 1.0)
        if self._thread.is_alive():
            # Stuck in a blocking send to a collector that stopped reading: cut the socket.
            sock = self._sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._thread.join(2.0)
        left = self.pending
        if left:
            self._log.warning("syslog %s:%d: %d event(s) not delivered at close", self.host,
                              self.port, left)

    def __enter__(self) -> "SyslogSink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- sender thread -----------------------------------------------------------------------

    def _remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    def _run(self) -> None:
        while True:
            try:
                self._send_loop()
                return
            except Exception:  # noqa: BLE001 - a bug here must not silently stop all forwarding
                self._log.exception("syslog %s:%d: sender failed; restarting it", self.host,
                                    self.port)
                self._drop_socket()
                self._sleep(self._backoff_max)
                with self._cond:
                    remaining = self._remaining()
                    if remaining is not None and remaining <= 0:
                        return

    def _send_loop(self) -> None:
        backoff = self._backoff_initial
        # (monotonic send time, frame) of what went out on the current connection, for replay.
        sent_here: deque[tuple[float, bytes]] = deque(maxlen=self._replay)
        resend: list[bytes] = []
        outage_logged = False
        attempts = 0
        reported_drops = 0
        while True:
            with self._cond:
                while not self._pending and not resend and not self._closed:
                    self._cond.wait()
                remaining = self._remaining()
                if (remaining is not None and remaining <= 0) or \
                        (self._closed and not self._pending and not resend):
                    break
                start_seq = self._head_seq
                batch = list(islice(self._pending, self._batch_size))
                dropped = self.dropped
            if dropped > reported_drops:
                self._log.warning("syslog %s:%d: queue full, %d oldest event(s) dropped so far",
                                  self.host, self.port, dropped)
                reported_drops = dropped

            sock = self._sock
            gone = self._peer_gone(sock) if sock is not None else None
            if gone is not None:
                self._log.info("syslog %s:%d: collector %s the connection; reconnecting",
                               self.host, self.port, "closed" if gone == "eof" else "reset")
                # A TLS close_notify can precede the reset of unread data: never "clean".
                clean = gone == "eof" and not isinstance(sock, ssl.SSLSocket)
                resend = self._to_replay(sent_here, clean=clean) + resend
                sent_here.clear()
                self._drop_socket()
                # Back off here too: a collector that accepts and at once hangs up must not
                # be hammered.
                self._sleep(backoff)
                backoff = min(backoff * 2, self._backoff_max)
                continue
            if sock is None:
                try:
                    sock = self._connect()
                except (OSError, ssl.SSLError) as exc:
                    attempts += 1
                    if not outage_logged:
                        self._log.warning("syslog %s:%d unreachable (%s); queueing and retrying",
                                          self.host, self.port, explain_tls_error(exc)
                                          if isinstance(exc, ssl.SSLError) else exc)
                        outage_logged = True
                    self._sleep(backoff)
                    backoff = min(backoff * 2, self._backoff_max)
                    continue
                if outage_logged:
                    self._log.info("syslog %s:%d reconnected after %d attempt(s)",
                                   self.host, self.port, attempts)
                outage_logged, attempts = False, 0

            try:
                if resend:
                    sock.sendall(b"".join(resend))
                    now = time.monotonic()
                    sent_here.extend((now, frame) for frame in resend)
                    resend = []
                if batch:
                    sock.sendall(b"".join(batch))
            except (OSError, ssl.SSLError) as exc:
                self._log.warning("syslog %s:%d: send failed (%s); reconnecting",
                                  self.host, self.port, exc)
                resend = self._to_replay(sent_here, clean=False) + resend
                sent_here.clear()
                self._drop_socket()
                self._sleep(backoff)
                backoff = min(backoff * 2, self._backoff_max)
                continue
            backoff = self._backoff_initial  # only a successful send proves the collector healthy
            now = time.monotonic()
            sent_here.extend((now, frame) for frame in batch)
            with self._cond:
                # Pop what was sent and is still queued: emit() may have dropped some of it
                # from the head meanwhile, which moved _head_seq past start_seq.
                done = max(0, start_seq + len(batch) - self._head_seq)
                for _ in range(done):
                    self._pending_bytes -= len(self._pending.popleft())
                self._head_seq += done
                self.sent += len(batch)
        self._goodbye()

    def _sleep(self, seconds: float) -> None:
        """Back off for `seconds`. New events do not cut it short (that would turn backoff into
        one connect attempt per emit()); close() does, for one last try, and its deadline caps it."""
        with self._cond:
            was_closed = self._closed
            end = time.monotonic() + seconds
            remaining = self._remaining()
            if remaining is not None:
                end = min(end, time.monotonic() + max(0.0, remaining))
            while self._closed == was_closed:
                left = end - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)

    def _connect(self) -> socket.socket:
        remaining = self._remaining()
        timeout = self._connect_timeout if remaining is None else \
            max(0.05, min(self._connect_timeout, remaining))
        raw = socket.create_connection((self.host, self.port), timeout=timeout)
        try:
            # Messages are small and a SIEM wants them now, not after Nagle's delay.
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock: socket.socket = raw
            if self._ssl_context is not None:
                sock = self._ssl_context.wrap_socket(raw, server_hostname=self._server_hostname)
            sock.settimeout(self._send_timeout if remaining is None else
                            max(0.05, min(self._send_timeout, remaining)))
        except BaseException:
            raw.close()
            raise
        self._sock = sock
        self.connects += 1
        return sock

    # After an orderly close (FIN) only frames that crossed the FIN on the wire can be lost;
    # this bounds "crossed" generously, far above any LAN or WAN round trip.
    _FIN_RACE_SECONDS = 2.0

    def _to_replay(self, sent: deque[tuple[float, bytes]], *, clean: bool) -> list[bytes]:
        """Frames of a dead connection to send again. A collector that closes with unread data
        resets the connection instead of closing it, so a clean TCP EOF means it read all that
        arrived before it closed, and only the last instant is in doubt. After a reset or a send
        error anything in its receive buffer may be gone: replay the whole window. (RFC 9293
        3.6.1: closing with received data pending SHOULD send RST, which Linux does.)"""
        if clean:
            since = time.monotonic() - self._FIN_RACE_SECONDS
            return [frame for sent_at, frame in sent if sent_at >= since]
        return [frame for _, frame in sent]

    @staticmethod
    def _peer_gone(sock: socket.socket) -> Literal["eof", "reset"] | None:
        """Probe before sending. A collector never sends application data, so what arrived is its
        end (EOF, "eof"), a reset ("reset"), or TLS 1.3 post-handshake records such as session
        tickets, which the probe consumes (None: still alive, as after any data)."""
        state = probe(sock)
        if state == "eof" or state == "reset":
            return state
        return None

    def _drop_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _goodbye(self) -> None:
        """Close the connection; on plain TCP half-close first and wait (within the deadline) for
        the collector's EOF, which tells us it has read everything."""
        sock = self._sock
        if sock is None:
            return
        if not isinstance(sock, ssl.SSLSocket):
            remaining = self._remaining()
            try:
                sock.shutdown(socket.SHUT_WR)
                sock.settimeout(max(0.05, min(2.0, remaining if remaining is not None else 2.0)))
                while sock.recv(4096):
                    pass
            except OSError:
                pass
        self._drop_socket()

