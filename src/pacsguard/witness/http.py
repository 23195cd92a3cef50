"""The HTTP(S) API of a pacsguard witness (witness/server.py), as a client speaks it.

    GET  /v1/logs/{log}/checkpoints   every checkpoint the witness holds for the log (JSON);
         with ?from=SIZE a page of them from that tree size on, and "next": SIZE while more remain
    POST /v1/logs/{log}/checkpoints   {"checkpoint": statement, "consistency": {"from": m, "proof": [hex]}}
         with "Authorization: Bearer TOKEN" (RFC 6750 2.1), answered with the witness's
         countersignature, or 409 {"held": m} when a consistency proof from m is needed.

`log` is the fingerprint of the log's signing key. JSON bodies (RFC 8259), at most 1 MiB.
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pacsguard.witness.deadline import Deadline, Expired, connect, handshake, reader
from pacsguard.witness.errors import WitnessError, WitnessRefused
from pacsguard.witness.jsontext import loads

API = "/v1/logs"
MAX_BODY = 1 << 20
#: The request is written this much at a time, each piece given what is left of the deadline: an
#: SSL socket's sendall gives every record the whole timeout (one TLS record at most, RFC 8446 5.1).
_SEND_STEP = 16384

#: What is raised when the deadline passes before the answer began, given what had not happened.
Late = Callable[[str], Exception]


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class WitnessClient:
    """One witness service: its base URL, the bearer token of this log (None to read only) and the
    TLS context for https:// (None: the system's trust store)."""

    url: str
    token: str | None = None
    context: ssl.SSLContext | None = None
    timeout: float = 10.0

    def checkpoints_url(self, log: str) -> str:
        return f"{self.url.rstrip('/')}{API}/{log}/checkpoints"

    def request(self, method: str, log: str, body: dict[str, Any] | None = None, query: str = "") -> Reply:
        """One request; a Reply for any status the API defines, WitnessError when the witness is away."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token is not None:
            if not self.token or not all(32 <= ord(ch) <= 126 for ch in self.token):
                # RFC 6750 2.1: a bearer token is visible ASCII; anything else cannot go in the header
                # (http.client raises on it), and this witness could never take it.
                raise WitnessError(f"witness {self.url}: the token holds characters a bearer token cannot "
                                   "(RFC 6750 2.1: printable ASCII only, no line breaks); check the "
                                   "token this log was given")
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.checkpoints_url(log) + query, data=data, method=method, headers=headers)
        deadline = Deadline(self.timeout)
        try:
            with self._opener(deadline).open(req, timeout=self.timeout) as resp:
                return Reply(resp.status, _json(self._body(resp), self.url))
        except urllib.error.HTTPError as exc:
            with exc:
                return Reply(exc.code, _json(self._body(exc), self.url, strict=False))
        except WitnessError:
            raise  # an answer that is not what the API defines: said as such, not as unreachable
        except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, WitnessError):
                raise reason from None  # too slow to connect (_connection), which urllib wraps as URLError
            raise WitnessError(f"witness {self.url}: unreachable ({reason})") from None

    def _opener(self, deadline: Deadline) -> urllib.request.OpenerDirector:
        """urllib's opener (proxies from the environment, as urlopen), its connections bounded by
        ``deadline`` (_connection): the status line, the headers and the body alike."""
        def expired(count: int) -> Exception:
            return WitnessError(f"witness {self.url}: too slow: no whole answer within {self.timeout:g} s "
                                f"({count} bytes of it came)")

        def late(what: str) -> Exception:
            return WitnessError(f"witness {self.url}: too slow: {what} within {self.timeout:g} s")

        return urllib.request.build_opener(_HttpHandler(deadline, expired, late),
                                           _HttpsHandler(deadline, expired, late, self.context))

    def _body(self, resp: Any) -> bytes:
        """The answer's body, at most MAX_BODY + 1 bytes; its reads are bounded by the request's
        deadline (_connection), as the status line and headers before it are."""
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_BODY:
            chunk = resp.read1(MAX_BODY + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)

    def held(self, log: str) -> list[dict[str, Any]]:
        """Every checkpoint statement the witness holds for ``log`` (empty if it knows no such log),
        read page by page (`?from=SIZE`), so no answer outgrows MAX_BODY however many it holds."""
        out: list[dict[str, Any]] = []
        start = 0
        while True:
            reply = self.request("GET", log, query=f"?from={start}")
            if reply.status == 404:
                return out
            if reply.status != 200:
                raise WitnessRefused(f"witness {self.url}: GET answered {reply.status} ({_error(reply)})")
            items = reply.body.get("checkpoints")
            if not isinstance(items, list):
                raise WitnessError(f"witness {self.url}: the answer holds no list of checkpoints")
            out += items
            following = reply.body.get("next")
            if following is None:  # the last page (or a witness that answers all at once)
                return out
            if type(following) is not int or following <= start or not items:  # a bool is no size
                raise WitnessError(f"witness {self.url}: its answer names next page {following!r} after "
                                   f"page {start}: not a larger tree size")
            start = following


def _connection(base: type[http.client.HTTPConnection], deadline: Deadline, expired: Expired,
                late: Late) -> type[http.client.HTTPConnection]:
    """``base`` bounded by ``deadline`` from the request's start to the end of its answer: the TCP
    connect (to the witness or to a proxy), the proxy's answer to CONNECT, the TLS handshake, the
    request's write and the witness's answer (RFC 9112 2.1), each given only what is left of it.
    A socket timeout bounds one wait only, and a witness that never accepted, or that trickled
    its handshake or its answer a byte at a time, held a delivery or `audit verify --witness`
    far past its timeout. ``late(what)`` is raised when the deadline passes before the answer
    began, ``expired(bytes)`` when it passes while the answer comes."""

    class Answer(http.client.HTTPResponse):
        def __init__(self, sock: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(sock, *args, **kwargs)
            self.fp.close()  # the plain makefile() the base class opened: read through the deadline instead
            self.fp = reader(sock, deadline, expired, None)

    class Connection(base):  # type: ignore[valid-type,misc]  # one class per request: its deadline
        response_class = Answer

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # http.client's own hook for opening the socket: every address tried by the deadline
            self._create_connection = lambda address, timeout=None, source=None: connect(
                address, deadline, lambda: late("not connected"), source)

        def connect(self) -> None:
            if deadline.left() <= 0:
                raise late("not connected")
            if not isinstance(self, http.client.HTTPSConnection):
                super().connect()
                return
            # TCP, and CONNECT through a proxy; the handshake is done here rather than by the base
            # class, whose wrap_socket gives it the socket's timeout, not what is left of the deadline
            http.client.HTTPConnection.connect(self)
            name = self._tunnel_host or self.host
            raw: Any = self.sock  # type: ignore[has-type]  # set by the base class connect()
            tls = self._context.wrap_socket(raw, server_hostname=name, do_handshake_on_connect=False)
            self.sock = tls
            handshake(tls, deadline, lambda: late("no TLS handshake"))

        def send(self, data: Any) -> None:
            if not isinstance(data, bytes | bytearray | memoryview):
                super().send(data)
                return
            if self.sock is None:
                self.connect()
            sock: Any = self.sock
            view = memoryview(data)
            for at in range(0, len(view), _SEND_STEP):
                left = deadline.left()
                if left <= 0:
                    raise late("the request not taken")
                sock.settimeout(left)
                try:
                    sock.sendall(view[at:at + _SEND_STEP])
                except TimeoutError:
                    raise late("the request not taken") from None

    return Connection


class _HttpHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: Deadline, expired: Expired, late: Late) -> None:
        super().__init__()
        self.connection = _connection(http.client.HTTPConnection, deadline, expired, late)

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self.connection, req)


class _HttpsHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: Deadline, expired: Expired, late: Late, context: ssl.SSLContext | None) -> None:
        super().__init__(context=context)
        self.context = context
        self.connection = _connection(http.client.HTTPSConnection, deadline, expired, late)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self.connection, req, context=self.context)


def _json(data: bytes, url: str, strict: bool = True) -> dict[str, Any]:
    if len(data) > MAX_BODY:
        raise WitnessError(f"witness {url}: answer larger than {MAX_BODY} bytes")
    try:
        value = loads(data) if data else {}
    except ValueError:
        if not strict:
            return {"error": data[:200].decode("utf-8", "replace")}
        raise WitnessError(f"witness {url}: the answer is not JSON") from None
    return value if isinstance(value, dict) else {"value": value}


def _error(reply: Reply) -> str:
    return str(reply.body.get("error", "no reason given"))
