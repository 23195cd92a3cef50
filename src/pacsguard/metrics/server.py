"""A tiny, bounded HTTP/1.1 server (RFC 9112) for the two monitoring endpoints: GET or HEAD of a
known path, one request per connection (Connection: close), no request body.

Bounded so a monitoring port cannot be used to tie the gateway up: the request head is at most
MAX_HEAD bytes and must arrive within the timeout, at most MAX_CLIENTS connections are held at
once, and each answer is written within the timeout. When every slot is taken, the oldest
connection still waiting for its request head is closed for the newcomer: idle or trickling
connections (a slowloris client, a port scan) cannot keep Prometheus or a load balancer's health
check out, since a real scraper sends its request at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus

log = logging.getLogger("pacsguard.metrics")

MAX_HEAD = 8192
MAX_CLIENTS = 16


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    content_type: str
    body: bytes


#: An endpoint: called per request, answers a Response.
Handler = Callable[[], Awaitable[Response]]


def _plain(status: HTTPStatus) -> Response:
    return Response(status, "text/plain; charset=utf-8", f"{status.phrase}\n".encode())


def encode(response: Response, *, head_only: bool = False) -> bytes:
    """The status line, headers and (unless HEAD) body of a response (RFC 9112 4, 6)."""
    phrase = HTTPStatus(response.status).phrase
    head = (f"HTTP/1.1 {response.status} {phrase}\r\nContent-Type: {response.content_type}\r\n"
            f"Content-Length: {len(response.body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n")
    return head.encode("ascii") + (b"" if head_only else response.body)


def parse_request_line(head: bytes) -> tuple[str, str] | None:
    """Method and path (query string dropped) of a request head, or None when it is not HTTP/1.x.
    The request target may be in origin-form (`/metrics`) or absolute-form
    (`http://host:9464/metrics`), which RFC 9112 3.2.2 says a server MUST accept."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    target = parts[1]
    scheme, sep, rest = target.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        target = "/" + rest.partition("/")[2]
    return parts[0], target.split("?", 1)[0]


class MonitoringServer:
    """Serves ``routes`` (path -> handler) on host:port until close()."""

    def __init__(self, routes: Mapping[str, Handler], timeout: float) -> None:
        self.routes = dict(routes)
        self.timeout = timeout
        # Held connections, oldest first; `_waiting` those whose request head has not arrived yet.
        self._held: dict[asyncio.StreamWriter, None] = {}
        self._waiting: dict[asyncio.StreamWriter, None] = {}
        self.evicted = 0  # connections closed, still waiting for their request, to make room
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; returns the address bound (port 0 picks a free one)."""
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD)
        address = self._server.sockets[0].getsockname()
        return str(address[0]), int(address[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        admitted = self._admit(writer)
        try:
            if admitted:
                await asyncio.wait_for(self._answer(reader, writer), self.timeout)
        except (TimeoutError, ConnectionError):
            pass  # a slow or vanished client: nothing to tell it
        finally:
            self._held.pop(writer, None)
            self._waiting.pop(writer, None)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _admit(self, writer: asyncio.StreamWriter) -> bool:
        """Take a slot for a new connection, closing the oldest one still waiting for its request
        when all are taken; False when every slot is busy answering (the newcomer is closed)."""
        if len(self._held) >= MAX_CLIENTS:
            victim = next(iter(self._waiting), None)
            if victim is None:
                return False
            del self._waiting[victim]
            del self._held[victim]
            self.evicted += 1
            victim.transport.abort()  # its readuntil() ends at once; its task closes it
        self._held[writer] = None
        self._waiting[writer] = None
        return True

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            writer.write(encode(_plain(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)))
            return
        except asyncio.IncompleteReadError:
            return
        self._waiting.pop(writer, None)  # a whole request: no longer the first to go
        request = parse_request_line(head)
        head_only = request is not None and request[0] == "HEAD"
        response = await self._respond(request)
        writer.write(encode(response, head_only=head_only))
        await writer.drain()

    async def _respond(self, request: tuple[str, str] | None) -> Response:
        if request is None:
            return _plain(HTTPStatus.BAD_REQUEST)
        method, path = request
        handler = self.routes.get(path)
        if handler is None:
            return _plain(HTTPStatus.NOT_FOUND)
        if method not in ("GET", "HEAD"):
            return _plain(HTTPStatus.METHOD_NOT_ALLOWED)
        try:
            return await handler()
        except Exception:  # noqa: BLE001 - a failing probe answers 500 and is logged, the server goes on
            log.exception("monitoring endpoint %s failed", path)
            return _plain(HTTPStatus.INTERNAL_SERVER_ERROR)
