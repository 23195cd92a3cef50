"""The RESTful endpoint's HTTPS (RFC 9110 4.2.2) with its TLS run by each connection
(`tls_session.TlsSession`): the plaintext is handed to the endpoint as an asyncio stream, and a
handshake that fails or never ends is recorded with the sender instead of vanishing inside the
event loop's TLS."""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from pacsguard.atna.ingest import peer_address
from pacsguard.atna.tls_session import TlsFailure, TlsSession

if TYPE_CHECKING:
    from pacsguard.atna.http import Place

#: How a failed handshake is told: the peer (host, port), the problem and what went wrong.
Failed = Callable[[tuple[str, int | None], str, str], None]

#: The start of an HTTP/1.x request line (RFC 9112 3: a method token, then one space): a TLS record
#: begins with its content type (20-24, RFC 8446 5.1), never with a letter.
_PLAIN_HTTP = re.compile(rb"[A-Z]{3,16} ")
_PLAIN_HTTP_HEAD = 17  # octets kept to match it
#: What a client speaking plain HTTP to the HTTPS port is answered, in clear (as nginx's "400 The
#: plain HTTP request was sent to HTTPS port"): the status and what to do, nothing else.
_PLAIN_HTTP_BODY = b"This port takes HTTPS only: use https://, not http://.\n"
PLAIN_HTTP_ANSWER = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: "
                     + str(len(_PLAIN_HTTP_BODY)).encode() + b"\r\nConnection: close\r\n\r\n" + _PLAIN_HTTP_BODY)
#: Seconds the rest of a plain HTTP request is read and dropped after the 400: closing on unread
#: octets would reset the connection, and the client could lose the answer (RFC 9112 9.6).
PLAIN_HTTP_LINGER = 2.0


class Owner(Protocol):
    """The endpoint a connection belongs to: it gives the connection one of its max_connections
    places from the start, its handshake included (or None: closed at once), may close it to make
    room for another (``drop``), records a failed handshake, and serves the plaintext in the place
    the connection holds (released when the handshake fails)."""

    def serve(self, reader: asyncio.StreamReader, writer: Any, place: Place) -> Coroutine[Any, Any, None]: ...
    def handshake_failed(self, peer: tuple[str, int | None], problem: str, why: str) -> None: ...
    def admit(self, peer: tuple[str, int | None], drop: Callable[[], object]) -> Place | None: ...
    def release(self, place: Place) -> None: ...


class TlsWriter:
    """The part of asyncio.StreamWriter the endpoint uses, writing through the TLS session."""

    def __init__(self, connection: TlsConnection) -> None:
        self._connection = connection

    def write(self, data: bytes) -> None:
        self._connection.send(data)

    async def drain(self) -> None:
        await self._connection.writable()

    def can_write_eof(self) -> bool:
        return False  # TLS has no half-close (a close_notify ends both directions)

    def write_eof(self) -> None:
        raise RuntimeError("TLS cannot half-close")

    def close(self) -> None:
        self._connection.close()

    def abort(self) -> None:
        """Close at once, what is still to be sent dropped: a client that reads nothing."""
        self._connection.abort()

    async def wait_closed(self) -> None:
        await self._connection.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._connection.extra(name, default)


class TlsConnection(asyncio.Protocol):
    """One HTTPS connection: its TLS handshake within ``timeout`` seconds, then its plaintext fed to a
    StreamReader that ``serve`` reads, as asyncio.start_server would."""

    def __init__(self, context: ssl.SSLContext, owner: Owner, timeout: float, limit: int) -> None:
        self.session = TlsSession(context)
        self.owner, self.timeout, self.limit = owner, timeout, limit
        self._place: Place | None = None  # the owner's place, held until the handshake is over
        self._dropped = False  # closed by the owner to make room: not recorded again
        self.transport: asyncio.Transport | None = None
        self.reader: asyncio.StreamReader | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._received = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._task: asyncio.Task[None] | None = None
        self._start = b""  # the first octets received, to tell plain HTTP
        self._lingering = False  # answered plain HTTP: what still comes is dropped

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._place = self.owner.admit(self._peer(), self._drop)
        if self._place is None:
            transport.close()  # the owner recorded it, counted
            return
        self._deadline = asyncio.get_running_loop().call_later(self.timeout, self._too_slow)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # the rest of a plain HTTP request, answered already
        if len(self._start) < _PLAIN_HTTP_HEAD:
            self._start += data[:_PLAIN_HTTP_HEAD - len(self._start)]
        self._received += len(data)
        try:
            plain = self.session.feed(data)
        except TlsFailure as exc:
            if self.reader is None and _PLAIN_HTTP.match(self._start):
                self._plain_http(str(exc))
                return
            self._write(self.session.outgoing())
            self._fail(str(exc))
            return
        self._write(self.session.outgoing())
        if self.session.established and self.reader is None:
            self._started()
        if self.reader is not None:
            if plain:
                self.reader.feed_data(plain)
            if self.session.closed:  # close_notify: answered, and the end of the requests
                self._write(self.session.goodbye())
                self.reader.feed_eof()

    def eof_received(self) -> bool | None:
        if self.reader is not None:
            self.reader.feed_eof()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._uncount()
        if self._deadline is not None:
            self._deadline.cancel()
        if self.reader is not None:
            self.reader.feed_eof()
        elif self._deadline is not None and not self._dropped:  # gone before its handshake was done
            self._fail("connected and sent nothing" if not self._received else "TLS handshake not complete when "
                       "the client closed", record_only=True)
        self._can_write.set()
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    async def writable(self) -> None:
        await self._can_write.wait()

    def send(self, data: bytes) -> None:
        try:
            self._write(self.session.send(data))
        except TlsFailure:
            self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def extra(self, name: str, default: Any = None) -> Any:
        tls = self.session.ssl_object
        if name == "ssl_object":
            return tls
        if name == "peercert":
            return tls.getpeercert() if tls is not None else default
        return self.transport.get_extra_info(name, default) if self.transport is not None else default

    def _started(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        place, self._place = self._place, None
        assert place is not None
        self.reader = asyncio.StreamReader(limit=self.limit)
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self.owner.serve(self.reader, TlsWriter(self), place))
        # Served from now on: its head's time counts from here.
        place.opened, place.drop = loop.time(), self._drop_served

    def _drop_served(self) -> None:
        """Closed by the owner to make room while served (before its first request showed the token):
        its task cancelled, and the connection closed here, as a task cancelled before it began
        would never close it."""
        if self._task is not None:
            self._task.cancel()
        self.close()

    def _drop(self) -> None:
        """Closed by the owner, still in its handshake, to make room (the owner recorded it)."""
        self._dropped = True
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._place = None
        self.close()

    def _uncount(self) -> None:
        if self._place is not None:
            self.owner.release(self._place)
            self._place = None

    def _peer(self) -> tuple[str, int | None]:
        return peer_address(self.transport.get_extra_info("peername") if self.transport is not None else None)

    def _too_slow(self) -> None:
        self._deadline = None
        self._fail("connected and sent nothing" if not self._received else
                   f"TLS handshake not complete {self.timeout:g} s after the connection opened")

    def _fail(self, why: str, *, record_only: bool = False) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._uncount()
        self.owner.handshake_failed(self._peer(), "silent" if why.startswith("connected and sent nothing")
                                    else "tls-handshake-failed", why)
        if not record_only:
            self.close()

    def _plain_http(self, why: str) -> None:
        """Plain HTTP to the HTTPS port: a TLS alert means nothing to an HTTP client, which would
        read an empty reply; it is told in HTTP to use https, and nothing more is said in clear.
        Recorded as the failed handshake it is; the connection keeps its place until it closes, so
        that lingering ones stay within max_connections."""
        self.session.outgoing()  # the alert, dropped
        self._write(PLAIN_HTTP_ANSWER)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None  # and connection_lost records nothing more
        method = self._start.split(b" ", 1)[0].decode("ascii")
        self.owner.handshake_failed(self._peer(), "tls-handshake-failed", f"{why}: plain HTTP sent to the HTTPS "
                                    f"port (a {method} request), answered 400 telling the client to use https")
        self._lingering = True
        if self.transport is not None and self.transport.can_write_eof():
            self.transport.write_eof()
        asyncio.get_running_loop().call_later(PLAIN_HTTP_LINGER, self.close)

    def _write(self, data: bytes) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
