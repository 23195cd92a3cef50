"""Round 7: what the secondary outputs lose shows in /metrics.

A SIEM outage longer than the syslog queue dropped events from the syslog copy (docs/sinks.md) and
a full disk dropped them from the JSON-lines file; the store and /healthz stayed fine, so only a
log line told. The outputs' counts are now metrics, read at scrape time."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from test_metrics_endpoint import _families, _get, _serving

from pacsguard.events import Event, EventBus, FanOut
from pacsguard.sinks import JsonLinesSink, SyslogSink
from pacsguard.store import EventStore
from pacsguard.store.keys import generate_key


def _closed_port() -> int:
    """A loopback port nothing listens on (the SIEM is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_syslog_drops_queue_and_shortened_events_are_scraped(tmp_path: Path) -> None:
    store = EventStore.open(str(tmp_path / "s.db"), key_path=generate_key(tmp_path / "k.key"), create=True)
    syslog = SyslogSink("127.0.0.1", _closed_port(), queue_size=3, backoff_initial=30, backoff_max=30)
    jsonl = JsonLinesSink(tmp_path / "events.json")
    bus = EventBus(FanOut(store, [syslog, jsonl]), max_delay=0.01)
    try:
        for n in range(9):
            bus.publish(Event(kind="dicom.association.requested", component="gateway", message=f"event {n}"))
        bus.publish(Event(kind="ids.alert.big", component="ids", details={"value": "x" * 20_000}))
        assert bus.flush(10)

        async def scrape() -> tuple[int, bytes]:
            async with _serving(bus, store) as port:
                return await _get(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")

        status, body = asyncio.run(scrape())
    finally:
        bus.close()
        syslog.close(0)
        jsonl.close()
        store.close()
    assert status == 200
    families = _families(body)
    dropped = families["pacsguard_sink_dropped_events"]
    assert dropped[("pacsguard_sink_dropped_events_total", (("sink", "syslog"),))] == 7  # 10 events, 3 queued
    assert dropped[("pacsguard_sink_dropped_events_total", (("sink", "jsonl"),))] == 0
    assert families["pacsguard_sink_queued_events"][("pacsguard_sink_queued_events", (("sink", "syslog"),))] == 3
    assert families["pacsguard_sink_connected"][("pacsguard_sink_connected", (("sink", "syslog"),))] == 0
    truncated = families["pacsguard_sink_truncated_events"]
    assert truncated[("pacsguard_sink_truncated_events_total", (("sink", "syslog"),))] == 1
