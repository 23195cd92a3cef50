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
from collections.abc import Callable
from dataclasses import dataclass

from pacsguard.atna.ingest import Sender, frame_event, problem_event
from pacsguard.atna.syslog.framing import FrameProblem, Framing, Splitter
from pacsguard.events.model import Event

log = logging.getLogger("pacsguard.atna")

Publish = Callable[[Event], None]

READ_SIZE = 256 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    max_message: int
    idle_timeout: float


class StreamListener:
    """One TCP or TLS listener."""

    def __init__(self, publish: Publish, limits: Limits, context: ssl.SSLContext | None = None) -> None:
        self.publish = publish
        self.limits = limits
        self.context = context
        self.transport = "tls" if context is not None else "tcp"
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._serve, host, port, ssl=self.context,
                                                  ssl_handshake_timeout=30 if self.context else None)
        address = self._server.sockets[0].getsockname()
        return str(address[0]), int(address[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        peer = writer.get_extra_info("peername") or ("?", None)
        sender = Sender(str(peer[0]), int(peer[1]) if peer[1] is not None else None, self.transport,
                        certificate=_subject(writer.get_extra_info("ssl_object")))
        splitter = Splitter(self.limits.max_message)
        received = 0
        try:
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(READ_SIZE), self.limits.idle_timeout)
                except TimeoutError:
                    if received == 0:
                        self.publish(problem_event(sender, FrameProblem(
                            "silent", f"connected and sent nothing for {self.limits.idle_timeout:g} s")))
                    break
                if not data:
                    if received == 0:
                        self.publish(problem_event(sender, FrameProblem("silent", "connected and sent nothing")))
                    break
                received += len(data)
                frames, problems = splitter.feed(data)
                self._publish(sender, splitter.framing, frames, problems)
            for problem in splitter.finish():
                self.publish(problem_event(sender, problem))
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            log.info("syslog connection from %s ended: %s", sender.host, exc)
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _publish(self, sender: Sender, framing: Framing | None, frames: list[bytes],
                 problems: list[FrameProblem]) -> None:
        for problem in problems:
            self.publish(problem_event(sender, problem))
        if not frames:
            return
        # The framing of these frames (detection may have been reset by a later problem).
        used = framing or Framing.OCTET_COUNTING
        stamped = Sender(sender.host, sender.port, sender.transport, used.value, sender.certificate)
        # RFC 5425 4.3: over TLS only octet counting is allowed; read it anyway, but say so.
        flags = ("wrong-framing",) if self.transport == "tls" and used is Framing.NON_TRANSPARENT else ()
        for frame in frames:
            self.publish(frame_event(stamped, frame, flags=flags))


class DatagramListener(asyncio.DatagramProtocol):
    """RFC 5426: each datagram is one syslog message."""

    def __init__(self, publish: Publish) -> None:
        self.publish = publish
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        self._transport = transport
        address = transport.get_extra_info("sockname")
        return str(address[0]), int(address[1])

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        sender = Sender(str(addr[0]), int(addr[1]), "udp")
        frame = data.rstrip(b"\n")
        if not frame:
            self.publish(problem_event(sender, FrameProblem("malformed-frame", "empty datagram")))
            return
        try:
            self.publish(frame_event(sender, frame))
        except Exception:  # noqa: BLE001 - one datagram must never end the listener
            log.exception("datagram from %s", sender.host)


def _subject(ssl_object: ssl.SSLObject | None) -> str | None:
    """The RFC 4514 subject of the client's certificate, or None (plain TCP, or no certificate sent)."""
    if ssl_object is None:
        return None
    from pacsguard.tls.contexts import describe_peer

    subject: str | None = describe_peer(ssl_object)["subject"]
    return subject
