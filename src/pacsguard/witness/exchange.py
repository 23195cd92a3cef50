"""One HTTP/1.1 request and its answer (RFC 9112), as the witness client needs them, every step
bounded by one deadline: looking up the host name (lookup.py), connecting, a proxy's CONNECT
(RFC 9110 9.3.6), the TLS handshake (RFC 8446 4), writing the request and reading the answer.

The client once drove urllib and http.client, bounding their steps by overriding private hooks
of http.client (its connection factory, its tunnel host, its TLS context) that a Python release
may rename or drop; and urllib did what a witness client must not: it followed a redirect of a
POST to wherever it pointed, as a GET carrying the log's bearer token, and let a peer that
answered no HTTP at all (an SSH banner at the URL's port) end `audit verify` as an internal
error. Here each step is done with the socket and ssl modules' public calls; one request per
connection (`Connection: close`), a 3xx answer returned as it is."""

from __future__ import annotations

import io
import re
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pacsguard.witness.deadline import Deadline, DeadlineReader, Expired, connect, handshake, reader
from pacsguard.witness.lookup import Lookups
from pacsguard.witness.route import Route, authority

#: What is raised when the deadline passes before the answer began, given what had not happened.
Late = Callable[[str], Exception]
#: The request is written this much at a time, each piece given what is left of the deadline: an
#: SSL socket's sendall gives every record the whole timeout (one TLS record at most, RFC 8446 5.1).
_SEND_STEP = 16384
#: The longest status line or header field line read, and the most header lines (as http.client).
_LINE = 65536
_FIELDS = 100
_STATUS = re.compile(rb"HTTP/1\.[0-9] ([0-9]{3})(?:[ \t]([^\r\n]*))?\r?\n")


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    #: Header fields by lower-case name (_fields).
    fields: dict[str, str]
    body: bytes


class AnswerError(Exception):
    """The peer's answer is not HTTP/1.x as RFC 9112 has it (or a proxy refused the tunnel)."""


@dataclass(frozen=True, slots=True)
class Steps:
    """What a request is bounded by: its deadline, and what is raised when it passes before the
    answer began (``late(what had not happened)``) or while the answer came (``expired(bytes)``)."""

    deadline: Deadline
    late: Late
    expired: Expired
    lookups: Lookups


def exchange(route: Route, request: bytes, context: ssl.SSLContext | None, steps: Steps,
             limit: int) -> Answer:
    """Sends ``request`` (the whole message) along ``route``; the answer, of whose body at most
    ``limit`` + 1 bytes are read. OSError (ssl.SSLError) when the connection
    fails, AnswerError when what comes back is not an HTTP answer."""
    sock = _open(route, context, steps)
    try:
        _send(sock, request, steps)
        with reader(sock, steps.deadline, steps.expired, None) as answer:
            status, _, fields = _head(answer)
            return Answer(status, fields, _body(answer, status, fields, limit))
    finally:
        sock.close()


def request_bytes(route: Route, method: str, headers: dict[str, str], body: bytes | None) -> bytes:
    """The request message (RFC 9112 3, 5, 6.2): one exchange, then the connection is closed."""
    fields = {"Host": route.authority, "User-Agent": "pacsguard", **headers}
    if body is not None:
        fields["Content-Length"] = str(len(body))
    if route.proxy is not None and not route.tunnel and route.proxy.authorization:
        fields["Proxy-Authorization"] = route.proxy.authorization
    fields["Connection"] = "close"
    head = f"{method} {route.target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return (head + "\r\n").encode("ascii") + (body or b"")


def _open(route: Route, context: ssl.SSLContext | None, steps: Steps) -> socket.socket:
    """The connection to the witness, ready for the request: TCP to the witness or the proxy,
    the proxy's tunnel, the TLS handshake."""
    host, port = route.hop
    if steps.deadline.left() <= 0:
        raise steps.late("not connected")
    addresses = steps.lookups.addresses(host, port, steps.deadline, lambda: steps.late(f"resolving {host} not done"))
    sock = connect(addresses, steps.deadline, lambda: steps.late("not connected"))
    try:
        if route.tunnel:
            _tunnel(sock, route, steps)
        if not route.tls:
            return sock
        ctx = context if context is not None else _default_context()
        tls = ctx.wrap_socket(sock, server_hostname=route.host, do_handshake_on_connect=False)
        sock = tls  # closed below if the handshake fails
        return handshake(tls, steps.deadline, lambda: steps.late("no TLS handshake"))
    except BaseException:
        sock.close()
        raise


def _tunnel(sock: socket.socket, route: Route, steps: Steps) -> None:
    """CONNECT through the proxy (RFC 9110 9.3.6): a 2xx answer opens the tunnel. The answer is
    read unbuffered, so that no byte of the witness's after it is taken from the TLS session."""
    proxy = route.proxy
    assert proxy is not None  # a tunnel is a route through a proxy
    target = authority(route.host, route.port)
    head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
    if proxy.authorization:
        head += f"Proxy-Authorization: {proxy.authorization}\r\n"
    _send(sock, (head + "\r\n").encode("ascii"), steps)

    def late(count: int) -> Exception:
        return steps.late(f"no answer from the proxy {proxy.name} to CONNECT")

    raw = DeadlineReader(sock.makefile("rb", buffering=0), sock, steps.deadline, late, None)
    with raw:
        status, reason, _ = _head(raw)
    if not 200 <= status < 300:
        raise AnswerError(f"the proxy {proxy.name} answered CONNECT {target} with {status} {reason}".rstrip())


def _send(sock: socket.socket, data: bytes, steps: Steps) -> None:
    view = memoryview(data)
    for at in range(0, len(view), _SEND_STEP):
        left = steps.deadline.left()
        if left <= 0:
            raise steps.late("the request not taken")
        sock.settimeout(left)
        try:
            sock.sendall(view[at:at + _SEND_STEP])
        except TimeoutError:
            raise steps.late("the request not taken") from None


def _head(answer: Any) -> tuple[int, str, dict[str, str]]:
    """The status and header fields of an answer (RFC 9112 4, 5); interim 1xx answers (RFC 9110
    15.2) are passed over."""
    while True:
        line = answer.readline(_LINE + 1)
        if not line:
            raise AnswerError("it closed the connection without an answer")
        match = _STATUS.fullmatch(line)
        if match is None:
            raise AnswerError(f"it answered no HTTP/1.1 status line: {_shown(line)}")
        status = int(match.group(1))
        fields = _fields(answer)
        if not 100 <= status < 200:
            return status, (match.group(2) or b"").decode("latin-1"), fields


def _fields(answer: Any) -> dict[str, str]:
    """Header fields by lower-case name; a repeated field's values joined by commas (RFC 9110
    5.3), a folded line (RFC 9112 5.2) joined by a space."""
    fields: dict[str, str] = {}
    last = ""
    for _ in range(_FIELDS + 1):
        line = answer.readline(_LINE + 1)
        if line in (b"\r\n", b"\n"):
            return fields
        if not line.endswith(b"\n"):
            raise AnswerError("its header is cut off or has a line longer than 64 KiB")
        text = line.decode("latin-1").rstrip("\r\n")
        if text[:1] in (" ", "\t") and last:
            fields[last] += " " + text.strip()
            continue
        name, colon, value = text.partition(":")
        if not colon or not name or name != name.strip():
            raise AnswerError(f"its header holds a line that is no field: {_shown(line)}")
        last = name.lower()
        fields[last] = f"{fields[last]}, {value.strip()}" if last in fields else value.strip()
    raise AnswerError(f"its header has more than {_FIELDS} lines")


def _body(answer: io.BufferedReader, status: int, fields: dict[str, str], limit: int) -> bytes:
    """The body (RFC 9112 6.3): chunked, as long as Content-Length says, or up to the end of
    the connection; at most ``limit`` + 1 bytes of it."""
    if status in (204, 304):
        return b""
    coding = fields.get("transfer-encoding")
    if coding is not None:
        if coding.replace(" ", "").lower() != "chunked":
            raise AnswerError(f"its answer is sent in a coding this client does not read: {coding[:40]!r}")
        return _chunked(answer, limit)
    length = fields.get("content-length")
    if length is None:
        return answer.read(limit + 1)
    values = {v.strip() for v in length.split(",")}
    if len(values) != 1 or not next(iter(values)).isdigit():
        raise AnswerError(f"its answer's Content-Length is no length: {length[:40]!r}")
    size = int(values.pop())
    return _exactly(answer, min(size, limit + 1), size)


def _chunked(answer: io.BufferedReader, limit: int) -> bytes:
    """A chunked body (RFC 9112 7.1), its trailer fields read and dropped."""
    chunks: list[bytes] = []
    total = 0
    while total <= limit:
        line = answer.readline(_LINE + 1)
        size_text = line.split(b";")[0].strip()
        if not line.endswith(b"\n") or not re.fullmatch(rb"[0-9A-Fa-f]{1,16}", size_text):
            raise AnswerError(f"its chunked answer holds no chunk size: {_shown(line)}")
        size = int(size_text, 16)
        if size == 0:
            _fields(answer)
            break
        chunks.append(_exactly(answer, min(size, limit + 1 - total), size))
        total += size
        if total <= limit and answer.readline(3) not in (b"\r\n", b"\n"):
            raise AnswerError("its chunked answer has a chunk longer than its size")
    return b"".join(chunks)


def _exactly(answer: io.BufferedReader, count: int, announced: int) -> bytes:
    data = answer.read(count)
    if len(data) < count:
        raise AnswerError(f"its answer ended after {len(data)} of the {announced} bytes it announced")
    return data


def _default_context() -> ssl.SSLContext:
    """The system's trust store, as http.client has it when given no context: HTTP/1.1 named in
    ALPN (RFC 7301), post-handshake client authentication allowed (RFC 8446 4.6.2)."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    if context.post_handshake_auth is not None:
        context.post_handshake_auth = True
    return context


def _shown(line: bytes) -> str:
    return repr(line[:40].decode("latin-1"))
