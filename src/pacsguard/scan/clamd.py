"""ClamAV as an optional second engine, through clamd's socket with the INSTREAM command
(clamd(8): a "z"-prefixed command, then chunks each preceded by a 4-byte big-endian length, a
zero length to end; the answer is "stream: OK", "stream: NAME FOUND" or "... ERROR"). clamd
scans at most StreamMaxLength bytes of a stream (clamd.conf(5)): past it, it answers "INSTREAM
size limit exceeded. ERROR" and closes the connection, so a file it did not judge is reported as
such, never as clean nor as a clamd that cannot be reached. Past MaxFileSize clamd answers OK
without scanning (unless AlertExceedsMax): clamd does not tell its settings, so the scanner is
told MaxFileSize (scan.clamd_max_file_size) and an OK for a larger file is not taken as clean."""

from __future__ import annotations

import select
import socket
import struct
import time
from dataclasses import dataclass, field

from pacsguard.scan.model import Finding, Level

CHUNK = 1 << 20
REF = "clamd(8) INSTREAM"
LIMITS_REF = "clamd.conf(5) StreamMaxLength, MaxFileSize, MaxScanSize"
#: The names clamd gives, with AlertExceedsMax, to a file it stopped scanning at a limit.
LIMIT_SIGNATURE = "Heuristics.Limits.Exceeded"
#: The longest answer read from clamd: its answers are one line ("stream: NAME FOUND", an error),
#: a few hundred bytes at most; a peer that is no clamd (a wrong port) may send without end.
MAX_REPLY = 4096
#: How a TCP address is written (clamd.conf(5) TCPAddr and TCPSocket; RFC 3986 3.2.2 brackets
#: an IPv6 address).
TCP_FORM = "tcp://HOST:PORT (tcp://127.0.0.1:3310, tcp://[::1]:3310)"


class ClamdAddressError(ValueError):
    """A clamd address that names no socket: a TCP address without a port, or a port that is no
    number from 1 to 65535, or an empty address."""


def parse_address(address: str) -> tuple[str, int] | str:
    """``(host, port)`` for ``tcp://HOST:PORT`` (an IPv6 host in brackets, RFC 3986 3.2.2), the
    socket's path for any other address; ClamdAddressError, naming what is wrong, for an address
    that names no socket, so that a mistyped setting is said once, not met on every file."""
    if not address:
        raise ClamdAddressError("the clamd address is empty: give a socket path or " + TCP_FORM)
    if not address.startswith("tcp://"):
        return address
    rest = address[6:].rstrip("/")
    if rest.startswith("["):
        host, close, tail = rest[1:].partition("]")
        port = tail[1:] if close and tail.startswith(":") else ""
    else:
        host, colon, port = rest.rpartition(":")
        if not colon or ":" in host:
            host, port = rest, ""
    if not host or not port:
        raise ClamdAddressError(f"clamd address {address!r} has no port: write it {TCP_FORM}")
    if not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClamdAddressError(f"clamd address {address!r}: the port {port!r} is no number from 1 to 65535; "
                                f"write it {TCP_FORM}")
    return host, int(port)


class ClamdError(Exception):
    """clamd could not be reached or answered with an error."""


class ClamdNotScanned(ClamdError):
    """clamd was reached and refused to judge the data: over one of its size limits."""


#: The rule of a file clamd was not asked about: it had failed GIVE_UP_AFTER times in a row.
NOT_CHECKED = "clamav.not-checked"
#: Consecutive failures (no connection, a timeout, an answer that is no verdict) after which one
#: `pacsguard scan` stops asking clamd: a clamd that accepts connections and never answers costs
#: up to two timeouts (send, answer) per file, two minutes with the 60-second default.
GIVE_UP_AFTER = 3


@dataclass(slots=True)
class _Failures:
    """Consecutive failures of one clamd in one scan, the last one's text, and the files not
    checked since it was given up (mutable state of a frozen Clamd, as a counter is)."""

    consecutive: int = 0
    last: str = ""
    not_checked: int = 0


@dataclass(frozen=True, slots=True)
class Clamd:
    """A clamd address: a Unix socket path, or ``tcp://host:port``. ``give_up_after``: after that
    many consecutive failures clamd is no longer asked (0: always asked, as a gateway route does,
    whose clamd may come back; `pacsguard scan` gives up after GIVE_UP_AFTER for the rest of the
    scan); each file then carries clamav.not-checked, never passing as judged clean by ClamAV."""

    address: str
    #: Seconds to connect, to send each chunk, and for clamd's whole answer.
    timeout: float = 60.0
    max_file_size: int = 25 * 1024**2  # clamd.conf MaxFileSize, as Debian's clamav-daemon writes it
    give_up_after: int = 0
    failures: _Failures = field(default_factory=_Failures, compare=False, repr=False)

    def __post_init__(self) -> None:
        parse_address(self.address)  # a mistyped address is a configuration error, said at once

    def _connect(self) -> socket.socket:
        where = parse_address(self.address)
        if isinstance(where, tuple):
            return socket.create_connection(where, timeout=self.timeout)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(where)
        except OSError:
            sock.close()
            raise
        return sock

    def ping(self) -> bool:
        try:
            with self._connect() as sock:
                sock.sendall(b"zPING\0")
                return sock.recv(64).rstrip(b"\0\n") == b"PONG"
        except OSError:
            return False

    def instream(self, data: bytes) -> str | None:
        """The signature clamd found in ``data``, or None when clean; ClamdNotScanned when clamd
        refused it for its size, ClamdError when it could not say."""
        try:
            sock = self._connect()
        except OSError as exc:
            raise ClamdError(f"clamd at {self.address}: {exc}") from exc
        with sock:
            sent, failed = _send(sock, data)
            reply, read_failed = _reply(sock, self.timeout)
        if read_failed is None and len(reply) >= MAX_REPLY and not reply.endswith(b"\0"):
            raise ClamdError(f"clamd at {self.address}: an answer of more than {MAX_REPLY:,} bytes without its end, "
                             f"which clamd never sends (is it clamd?): {_shown(reply[:80])}...")
        text = reply.rstrip(b"\0\n").decode("utf-8", "replace")
        if "size limit exceeded" in text:
            # The same answer on either transport: a Unix socket's sender sees EPIPE first, TCP's
            # may not, and the refusal is read before the broken pipe is reported.
            # clamd does not say its limit; it refused a chunk among those sent, so it is below them.
            within = f"; it refused the stream within its first {sent:,} bytes" if sent < len(data) else ""
            raise ClamdNotScanned(f"clamd at {self.address} did not scan this file: its {len(data):,} bytes are "
                                  f"over clamd's StreamMaxLength (set in clamd.conf{within}): {text}")
        if not text and (failed or read_failed):
            raise ClamdError(f"clamd at {self.address}: {failed or read_failed}")
        if read_failed is not None and not reply.endswith(b"\0"):
            # An answer cut short ("stream: OK" and no NUL, then silence) is no verdict.
            raise ClamdError(f"clamd at {self.address}: its answer was cut short ({read_failed}): {text[:80]!r}")
        if text.endswith("FOUND"):
            name = text.removeprefix("stream:").strip().removesuffix("FOUND").strip()
            if name.startswith(LIMIT_SIGNATURE):
                raise ClamdNotScanned(f"clamd at {self.address} did not scan all of this file ({len(data):,} "
                                      f"bytes): {name} (past MaxFileSize, MaxScanSize or MaxRecursion in "
                                      "clamd.conf, reported as AlertExceedsMax asks)")
            return name
        if text.endswith("OK"):
            return None
        raise ClamdError(f"clamd at {self.address}: {text or 'no answer'}")

    @property
    def given_up(self) -> bool:
        """Whether this scan stopped asking clamd (give_up_after consecutive failures)."""
        return 0 < self.give_up_after <= self.failures.consecutive

    def findings(self, data: bytes) -> list[Finding]:
        failures = self.failures
        if self.given_up:
            failures.not_checked += 1
            return [Finding(NOT_CHECKED, Level.LOW, f"not checked by ClamAV: clamd at {self.address} failed "
                            f"{failures.consecutive} times in a row (last: {failures.last}), so this scan no longer "
                            f"asks it; file {failures.not_checked:,} scanned without it", None, REF)]
        try:
            name = self.instream(data)
        except ClamdNotScanned as exc:
            failures.consecutive = 0  # an answer: clamd works, this file is over its limits
            # Not judged is not clean: medium, so the default fail_on holds such a file for review.
            return [Finding("clamav.not-scanned", Level.MEDIUM, str(exc), None, LIMITS_REF)]
        except ClamdError as exc:
            failures.consecutive += 1
            failures.last = str(exc)[:200]
            more = (f"; after {failures.consecutive} failures in a row clamd is no longer asked in this scan (the "
                    f"files after this one carry {NOT_CHECKED})") if self.given_up else ""
            return [Finding("clamav.error", Level.LOW, f"{exc}{more}", None, REF)]
        failures.consecutive = 0
        if name is None and len(data) > self.max_file_size:
            return [Finding("clamav.not-scanned", Level.MEDIUM,
                            f"clamd at {self.address} answered OK for this file of {len(data):,} bytes, but it "
                            f"passes files over its MaxFileSize unscanned ({self.max_file_size:,} bytes as "
                            "scan.clamd_max_file_size says): raise both, with AlertExceedsMax", None, LIMITS_REF)]
        if name is None:
            return []
        return [Finding("clamav.found", Level.HIGH, f"ClamAV signature {name}", None, REF)]


def _send(sock: socket.socket, data: bytes) -> tuple[int, OSError | None]:
    """Send ``data`` as INSTREAM chunks: the bytes of the chunks sent, or begun, and the error that
    stopped it (clamd closing its end once it refused the stream), or None. clamd answers before
    the end only to refuse: once an answer waits, the rest is not sent."""
    sent = 0
    waiting = select.poll()  # poll, not select: a gateway process may hold more than 1024 descriptors
    waiting.register(sock, select.POLLIN)
    try:
        sock.sendall(b"zINSTREAM\0")
        view = memoryview(data)
        for at in range(0, len(view), CHUNK):
            if waiting.poll(0):  # an answer, or the connection closed
                return sent, None
            chunk = view[at:at + CHUNK]
            sent += len(chunk)
            sock.sendall(struct.pack(">I", len(chunk)) + chunk)
        sock.sendall(struct.pack(">I", 0))
    except OSError as exc:
        return sent, exc
    return sent, None


def _reply(sock: socket.socket, timeout: float) -> tuple[bytes, OSError | None]:
    """clamd's answer, up to its NUL or the connection's end, and the error that cut it short. At
    most MAX_REPLY bytes, within ``timeout`` seconds in all: a peer that is no clamd, sending
    without end or a byte at a time, costs neither unbounded memory nor time per file."""
    reply = b""
    deadline = time.monotonic() + timeout
    try:
        while not reply.endswith(b"\0") and len(reply) < MAX_REPLY:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no whole answer within {timeout:g} s")
            sock.settimeout(left)
            part = sock.recv(MAX_REPLY - len(reply))
            if not part:
                break
            reply += part
    except OSError as exc:
        return reply, exc
    return reply, None


def _shown(raw: bytes) -> str:
    """Bytes of a peer's answer as text for a message."""
    return raw.decode("ascii", "backslashreplace")
