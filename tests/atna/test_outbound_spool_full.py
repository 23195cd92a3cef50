"""Outbound: the spool's disk fills up (a 2 MB tmpfs). The Events are in the store, so the feed
says so once, and once the spool has room again it spools from the store what it missed: every
message once, in the store's order (nothing accepted is lost). A spool transaction that fails is
rolled back, so the next one can begin."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_r8_outbound_kill import N, released, spooled_patients, started, stores

from pacsguard.atna.outbound import forwarder as forwarder_module
from pacsguard.atna.outbound.forwarder import Forwarder
from pacsguard.atna.outbound.spool import Spool
from pacsguard.events.model import Event
from pacsguard.events.subscription import Subscription
from pacsguard.store import EventStore
from tmpfs_helpers import fill, small_tmpfs


def deliver(store: EventStore, subscription: Subscription, events: list[Event]) -> None:
    """As the bus does: the store takes them, then the subscription hands them to the feed."""
    store.append(events)
    target = subscription.delivered + len(events)
    subscription.offer(events)
    deadline = time.monotonic() + 10
    while subscription.delivered < target:
        assert time.monotonic() < deadline, "the feed did not take the events"
        time.sleep(0.02)


@dataclass
class Feed:
    """The outbound feed following a store, its spool on a 2 MB tmpfs (``disk``)."""

    store: EventStore
    disk: Path
    spool: Spool
    forward: Forwarder
    subscription: Subscription
    first: Event  # serve's start, stored before the subscription began


@contextmanager
def feed_on_small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_pending: int = 100_000) -> Iterator[Feed]:
    monkeypatch.setattr(forwarder_module, "RETRY_EVERY", 0.3)
    store = EventStore.open(str(tmp_path / "pacsguard.db"), create=True)
    with small_tmpfs(tmp_path / "spool", "2m") as disk:
        spool = Spool(disk / "spool.db")
        try:
            since = store.size()
            first = started()
            store.append([first])
            forward = Forwarder(spool, "site-a")
            subscription = forward.follow(lambda callback: Subscription(callback, max_pending=max_pending), store,
                                          since)
            yield Feed(store, disk, spool, forward, subscription, first)
        finally:
            spool.close()
            store.close()


def test_a_spool_on_a_full_disk_spools_what_it_missed_from_the_store(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    with feed_on_small_disk(tmp_path, monkeypatch) as feed, \
            caplog.at_level(logging.WARNING, logger="pacsguard.atna.outbound"):
        store, spool, subscription = feed.store, feed.spool, feed.subscription
        deliver(store, subscription, [stores(1), released()])
        filler = fill(feed.disk)
        for i in range(2, N + 1):  # while full, and past several retries
            deliver(store, subscription, [stores(i), released()])
            time.sleep(0.02)
        failed = [r.getMessage() for r in caplog.records if "cannot take messages" in r.getMessage()]
        assert len(failed) == 1, caplog.text
        assert not spool._db.in_transaction
        filler.unlink()
        time.sleep(0.4)
        deliver(store, subscription, [stores(N + 1), released()])
        deliver(store, subscription, [stores(N + 2)])
        subscription.unsubscribe(5)
        assert spooled_patients(spool) == [f"PID-{i}" for i in range(1, N + 3)]  # each once, in order
        # Nothing of the outage is left to skip: the Events that passed during it were not kept
        # (memory in proportion to the outage), nor marked to skip once caught up (the start,
        # stored before the subscription began, is never delivered to it).
        assert feed.forward._caught <= {feed.first.id}
        assert "takes messages again" in caplog.text
        assert "Traceback" not in caplog.text


def test_a_transfer_the_full_spool_missed_still_gets_its_begin_transferring(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One association transfers two patients' images; the spool is full when the second patient's
    first image comes. That image's Begin Transferring was remembered as sent although the spool
    had refused it, so the catch-up left it out: an Instances Transferred with no Begin before it."""
    with feed_on_small_disk(tmp_path, monkeypatch) as feed:
        deliver(feed.store, feed.subscription, [stores(1)])
        filler = fill(feed.disk)
        deliver(feed.store, feed.subscription, [stores(2)])  # the same association, a new patient
        filler.unlink()
        time.sleep(0.4)
        deliver(feed.store, feed.subscription, [stores(3), released()])
        feed.subscription.unsubscribe(5)
        assert spooled_patients(feed.spool) == ["PID-1", "PID-2", "PID-3"]
        assert sorted(spooled_patients(feed.spool, "110102")) == ["PID-1", "PID-2", "PID-3"]


def test_events_dropped_while_the_spool_is_full_are_spooled_once_it_has_room(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The feed falls behind (its queue drops Events) while the spool's disk is full: taking what
    it missed from the store failed with a traceback in the log, and the Event in hand was lost
    from the spool until pacsguard next started."""
    with feed_on_small_disk(tmp_path, monkeypatch, max_pending=3) as feed, \
            caplog.at_level(logging.WARNING, logger="pacsguard.atna.outbound"):
        store, subscription = feed.store, feed.subscription
        deliver(store, subscription, [stores(1)])
        filler = fill(feed.disk)
        with feed.forward._lock:  # the feed is busy: its queue fills and drops the rest
            behind = [stores(i) for i in range(2, 12)]
            store.append(behind)
            subscription.offer(behind)
            assert subscription.dropped > 0
        deadline = time.monotonic() + 10
        while subscription.delivered < 1 + 10 - subscription.dropped:
            assert time.monotonic() < deadline, "the feed did not take the events"
            time.sleep(0.02)
        filler.unlink()
        time.sleep(0.4)
        deliver(store, subscription, [stores(12), released()])
        subscription.unsubscribe(5)
        assert spooled_patients(feed.spool) == [f"PID-{i}" for i in range(1, 13)]  # each once, in order
        assert "Traceback" not in caplog.text and not any(r.exc_info for r in caplog.records)
