"""The metrics service in one process: /metrics parsed by prometheus_client's own parser, the spine
gauges computed at scrape time, /healthz turning 503 when the store cannot be written, and the
listener's bounds (unknown path, wrong method, oversized request head)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pacsguard.events import Event, EventBus
from pacsguard.metrics.config import MetricsConfig
from pacsguard.metrics.server import MAX_HEAD
from pacsguard.metrics.service import MetricsService
from pacsguard.store import EventStore
from pacsguard.store.keys import generate_key


class Breakable:
    """The store as the bus's sink, until told to fail like a database that went away."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.broken = False

    def emit(self, batch: Sequence[Event]) -> None:
        if self.broken:
            raise OSError("database is down")
        self.store.emit(batch)

    def close(self) -> None:
        pass


@pytest.fixture
def spine(tmp_path: Path) -> Iterator[tuple[EventBus, EventStore, Breakable]]:
    key = tmp_path / "k.key"
    generate_key(key)
    store = EventStore.open(str(tmp_path / "s.db"), key_path=key, create=True)
    sink = Breakable(store)
    bus = EventBus(sink, max_delay=0.01)
    yield bus, store, sink
    sink.broken = False
    bus.close()
    store.close()


@asynccontextmanager
async def _serving(bus: EventBus, store: EventStore) -> AsyncIterator[int]:
    """A started metrics service on a free loopback port; yields the port."""
    service = MetricsService(MetricsConfig(enabled=True, port=0), bus, store)
    await service.start()
    assert service.address is not None
    try:
        yield service.address[1]
    finally:
        await service.stop()


async def _get(port: int, request: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def _families(text: bytes) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    out: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for family in text_string_to_metric_families(text.decode()):
        samples = out.setdefault(family.name, {})
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_a_scrape_shows_the_events_written_and_the_spine_and_healthz_follows_the_store(spine) -> None:
    bus, store, sink = spine

    async def main() -> None:
        async with _serving(bus, store) as port:
            route = {"route": "ct", "flow": "f", "called_ae": "PACS"}
            for kind in ("requested", "accepted"):
                bus.publish(Event(kind=f"dicom.association.{kind}", component="test", details=route))
            assert bus.flush(10)
            store.checkpoint()
            await asyncio.sleep(0.3)  # the subscriber's thread counts what the writer delivered
            status, body = await _get(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status == 200
            metrics = _families(body)
            assert metrics["pacsguard_associations"][
                ("pacsguard_associations_total", (("event", "accepted"), ("route", "ct")))] == 1
            assert metrics["pacsguard_store_events_written"][("pacsguard_store_events_written_total", ())] == 2
            assert metrics["pacsguard_store_commit_seconds"][("pacsguard_store_commit_seconds_count", ())] >= 1
            assert metrics["pacsguard_store_backlog_events"][("pacsguard_store_backlog_events", ())] == 0
            assert 0 <= metrics["pacsguard_checkpoint_age_seconds"][("pacsguard_checkpoint_age_seconds", ())] < 60

            status, body = await _get(port, b"GET /healthz HTTP/1.1\r\n\r\n")
            assert (status, json.loads(body)["status"]) == (200, "ok")

            sink.broken = True
            bus.publish(Event(kind="dicom.association.requested", component="test", details=route))
            for _ in range(100):  # the writer's next attempt fails
                if not bus.writing:
                    break
                await asyncio.sleep(0.05)
            status, body = await _get(port, b"GET /healthz?verbose HTTP/1.0\r\n\r\n")
            assert (status, json.loads(body)["bus"]) == (503, "failing")
            status, body = await _get(port, b"GET /metrics HTTP/1.1\r\n\r\n")
            metrics = _families(body)
            assert metrics["pacsguard_store_backlog_events"][("pacsguard_store_backlog_events", ())] == 1
            assert metrics["pacsguard_store_commit_failures"][("pacsguard_store_commit_failures_total", ())] >= 1
            assert metrics["pacsguard_sink_delivery_lag_seconds"][("pacsguard_sink_delivery_lag_seconds", ())] > 0

    asyncio.run(main())


def test_the_listener_answers_only_its_paths_and_methods_within_its_bounds(spine) -> None:
    bus, store, _ = spine

    async def main() -> None:
        async with _serving(bus, store) as port:
            assert (await _get(port, b"GET /admin HTTP/1.1\r\n\r\n"))[0] == 404
            assert (await _get(port, b"POST /metrics HTTP/1.1\r\n\r\n"))[0] == 405
            assert (await _get(port, b"garbage\r\n\r\n"))[0] == 400
            assert (await _get(port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * MAX_HEAD + b"\r\n\r\n"))[0] == 431
            status, body = await _get(port, b"HEAD /healthz HTTP/1.1\r\n\r\n")
            assert (status, body) == (200, b"")

    asyncio.run(main())
