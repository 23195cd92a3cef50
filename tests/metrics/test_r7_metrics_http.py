"""Round 7: the monitoring listener takes a request target in absolute-form.

RFC 9112 3.2.2: a server MUST accept `GET http://host:9464/metrics HTTP/1.1` (what a request
through a forward proxy carries); the listener answered 404."""

from __future__ import annotations

import asyncio
from pathlib import Path

from test_metrics_endpoint import _families, _get, _serving

from pacsguard.events import EventBus
from pacsguard.metrics.server import parse_request_line
from pacsguard.store import EventStore
from pacsguard.store.keys import generate_key


def test_the_absolute_form_names_the_same_paths() -> None:
    assert parse_request_line(b"GET http://127.0.0.1:9464/metrics HTTP/1.1\r\n\r\n") == ("GET", "/metrics")
    assert parse_request_line(b"HEAD HTTP://gw/healthz?x=1 HTTP/1.1\r\n\r\n") == ("HEAD", "/healthz")
    assert parse_request_line(b"GET http://gw HTTP/1.1\r\n\r\n") == ("GET", "/")
    assert parse_request_line(b"GET /metrics HTTP/1.1\r\n\r\n") == ("GET", "/metrics")


def test_a_scrape_in_absolute_form_is_answered(tmp_path: Path) -> None:
    store = EventStore.open(str(tmp_path / "s.db"), key_path=generate_key(tmp_path / "k.key"), create=True)
    bus = EventBus(store, max_delay=0.01)
    try:
        async def scrape() -> tuple[int, bytes]:
            async with _serving(bus, store) as port:
                return await _get(port, f"GET http://127.0.0.1:{port}/metrics HTTP/1.1\r\nHost: x\r\n\r\n".encode())

        status, body = asyncio.run(scrape())
    finally:
        bus.close()
        store.close()
    assert status == 200 and "pacsguard_store_events_written" in _families(body)
