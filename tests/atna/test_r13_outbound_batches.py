"""The outbound feed spools the Events the subscription hands over one after another in one
transaction, once it has no more queued: one transaction per Event made the feed's thread wait
for the GIL at each statement beside a busy event loop (14 Events/s spooled beside a busy thread,
bench/outbound.py; 143 now). Every message still arrives once, in order, with its Begin
Transferring."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_outbound_spool_full import deliver
from test_r8_outbound_kill import released, spooled_patients, started, stores

from pacsguard.atna.outbound import forwarder as forwarder_module
from pacsguard.atna.outbound.forwarder import Forwarder
from pacsguard.atna.outbound.spool import Spool
from pacsguard.events.subscription import Subscription
from pacsguard.store import EventStore


@contextmanager
def counted_spool(tmp_path: Path) -> Iterator[tuple[EventStore, Spool, list[int]]]:
    """A store, and a spool that notes how many messages each of its transactions took."""
    store = EventStore.open(str(tmp_path / "pacsguard.db"), create=True)
    spool = Spool(tmp_path / "spool.db")
    adds: list[int] = []
    real_add = spool.add

    def counted(messages: list[bytes], last_event: str | None = None) -> int:
        adds.append(len(messages))
        return real_add(messages, last_event)

    spool.add = counted  # type: ignore[method-assign]
    try:
        yield store, spool, adds
    finally:
        spool.close()
        store.close()


def test_events_queued_behind_a_busy_feed_are_spooled_together(tmp_path: Path) -> None:
    with counted_spool(tmp_path) as (store, spool, adds):
        since = store.size()
        store.append([started()])
        forward = Forwarder(spool, "site-a")
        subscription = forward.follow(Subscription, store, since)
        with forward._lock:  # the feed is busy: what comes meanwhile queues up
            queued = [e for i in range(1, 301) for e in (stores(i), released())]
            store.append(queued)
            subscription.offer(queued)
        deliver(store, subscription, [])
        deliver(store, subscription, [stores(301)])  # and one on its own, once the queue is empty
        subscription.unsubscribe(5)
        assert spooled_patients(spool) == [f"PID-{i}" for i in range(1, 302)]  # each once, in order
        assert sorted(spooled_patients(spool, "110102")) == sorted(f"PID-{i}" for i in range(1, 302))
        # serve's start (caught up from the store), then not one transaction an Event
        assert len(adds) <= 4 and sum(adds) == 1 + 2 * 301, adds


def test_a_batch_is_at_most_batch_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forwarder_module, "BATCH", 10)
    with counted_spool(tmp_path) as (store, spool, adds):
        forward = Forwarder(spool, "site-a")
        subscription = forward.follow(Subscription, store, store.size())
        with forward._lock:
            queued = [stores(i) for i in range(1, 36)]
            store.append(queued)
            subscription.offer(queued)
        deliver(store, subscription, [])
        subscription.unsubscribe(5)
        assert spooled_patients(spool) == [f"PID-{i}" for i in range(1, 36)]
        assert adds[:3] == [20, 20, 20] and sum(adds) == 70, adds  # 10 Events, 2 messages each
