"""Outbound (round 8): the feed falls so far behind that its subscription's queue overflows and
drops Events. They are in the store: the feed takes them from it, from after the last Event it
spooled, so that every message is spooled once and in the store's order (nothing accepted is lost)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from test_r8_outbound_kill import N, released, spooled_patients, started, stores

from pacsguard.atna.outbound.forwarder import Forwarder
from pacsguard.atna.outbound.spool import Spool
from pacsguard.events.model import Event
from pacsguard.events.subscription import Subscription
from pacsguard.store import EventStore


def test_events_the_full_queue_dropped_are_taken_from_the_store_once_in_order(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = EventStore.open(str(tmp_path / "pacsguard.db"), create=True)
    spool = Spool(tmp_path / "spool.db")
    try:
        since = store.size()
        store.append([started()])
        forward = Forwarder(spool, "site-a")
        subscription = forward.follow(lambda callback: Subscription(callback, max_pending=3), store, since)
        batch: list[Event] = [e for i in range(1, N + 1) for e in (stores(i), released())]
        store.append(batch)  # the store takes them first, then the bus hands them to the feed
        with caplog.at_level(logging.WARNING, logger="pacsguard.atna.outbound"):
            with forward._lock:  # the feed is busy: its queue holds 3, the rest is dropped
                subscription.offer(batch)
                time.sleep(0.2)
            deadline = time.monotonic() + 10
            while subscription.delivered < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert subscription.dropped == 2 * N - 3
            later = [stores(N + 1)]  # the next Event after the gap, delivered as usual
            store.append(later)
            subscription.offer(later)
            deadline = time.monotonic() + 10
            while subscription.delivered < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
        subscription.unsubscribe(5)
        assert spooled_patients(spool) == [f"PID-{i}" for i in range(1, N + 2)]  # each once, in order
        assert any("fell behind" in r.getMessage() and str(2 * N - 3) in r.getMessage() for r in caplog.records)
    finally:
        spool.close()
        store.close()
