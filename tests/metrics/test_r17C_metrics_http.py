"""Round 17, area C: the monitoring listener against clients that only hold connections.

Sixteen connections that send nothing (a slowloris client, reconnecting every `timeout` seconds)
held all of the listener's slots: every scrape and every /healthz was then reset unanswered, and a
load balancer checking /healthz takes the gateway out of service. Now the oldest connection still
waiting for its request head is closed for a newcomer when every slot is taken; a scraper sends its
request at once and is answered. Checked on asyncio's loop and on uvloop, which `serve` runs.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from pacsguard.events import EventBus
from pacsguard.metrics.config import MetricsConfig
from pacsguard.metrics.server import MAX_CLIENTS
from pacsguard.metrics.service import MetricsService
from pacsguard.store import EventStore
from pacsguard.store.keys import generate_key

HOST = "127.0.73.1"  # this helper's loopback address (round 17, area C)

Runner = Callable[[Coroutine[Any, Any, None]], None]


@pytest.fixture
def spine(tmp_path: Path) -> Iterator[tuple[EventBus, EventStore]]:
    store = EventStore.open(str(tmp_path / "s.db"), key_path=generate_key(tmp_path / "k.key"), create=True)
    bus = EventBus(store, max_delay=0.01)
    yield bus, store
    bus.close()
    store.close()


async def _ask(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def _idle(port: int, count: int) -> list[socket.socket]:
    return [socket.create_connection((HOST, port), timeout=5) for _ in range(count)]


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_idle_connections_in_every_slot_do_not_keep_scrapes_out(spine: tuple[EventBus, EventStore],
                                                                run: Runner) -> None:
    bus, store = spine
    answers: list[bytes] = []
    idle: list[socket.socket] = []

    async def main() -> None:
        # A long timeout: the idle connections would hold their slots for all of it.
        service = MetricsService(MetricsConfig(enabled=True, host=HOST, port=0, timeout=30), bus, store)
        await service.start()
        assert service.address is not None
        port = service.address[1]
        try:
            idle.extend(await asyncio.to_thread(_idle, port, MAX_CLIENTS + 4))
            await asyncio.sleep(0.2)  # all accepted: the newest MAX_CLIENTS hold the slots
            for path in ("/healthz", "/metrics", "/healthz"):
                answers.append(await _ask(port, path))
            assert service.server.evicted >= 4 + 1  # the first request took an idle one's slot too
        finally:
            await service.stop()

    try:
        run(main())
        assert [a.split(b"\r\n", 1)[0] for a in answers] == [b"HTTP/1.1 200 OK"] * 3
        assert b"pacsguard_store_events_written_total" in answers[1]
        for sock in idle[:4]:  # the oldest idle ones made room
            sock.settimeout(1)
            assert _closed(sock)
    finally:
        for sock in idle:
            sock.close()
