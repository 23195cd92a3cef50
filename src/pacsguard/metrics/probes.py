"""Metrics read at scrape time from the spine: the bus's write statistics and backlog, how far the
sinks lag, the age of the store's newest signed checkpoint, and what the metrics part itself missed.

A Prometheus custom collector (its collect() runs on every scrape), so nothing here polls."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from sqlalchemy import select

from pacsguard.store.schema import checkpoints

if TYPE_CHECKING:
    from pacsguard.events import EventBus, Subscription
    from pacsguard.store import EventStore


def newest_checkpoint_time_us(store: EventStore) -> int | None:
    """When the newest signed checkpoint was made: the one over the largest tree, found through the
    primary key rather than by reading the whole list (a checkpoint a minute for years)."""
    query = select(checkpoints.c.time_us).order_by(checkpoints.c.tree_size.desc()).limit(1)
    with store.engine.connect() as conn:
        newest: int | None = conn.execute(query).scalar()
    return newest


class SpineCollector:
    """Gauges and counters of the bus and the store, computed when Prometheus scrapes."""

    def __init__(self, bus: EventBus, store: EventStore, subscription: Subscription) -> None:
        self.bus = bus
        self.store = store
        self.subscription = subscription

    def collect(self) -> Iterator[Metric]:
        stats = self.bus.stats()
        commits = SummaryMetricFamily("pacsguard_store_commit_seconds",
                                      "time to write one batch of events to the store and the sinks")
        commits.add_metric([], count_value=stats.batches, sum_value=stats.seconds)
        yield commits
        yield CounterMetricFamily("pacsguard_store_events_written", "events the store accepted", value=stats.events)
        yield CounterMetricFamily("pacsguard_store_commit_failures", "failed attempts to write a batch "
                                  "(its events are kept and retried)", value=stats.failures)
        yield GaugeMetricFamily("pacsguard_store_backlog_events", "events published and not yet written",
                                value=self.bus.pending)
        oldest = self.bus.oldest_pending_time_us
        lag = max(0.0, time.time() - oldest / 1e6) if oldest is not None else 0.0
        yield GaugeMetricFamily("pacsguard_sink_delivery_lag_seconds", "age of the oldest event not yet "
                                "delivered to the store and the sinks (0 when none waits)", value=lag)
        newest = newest_checkpoint_time_us(self.store)
        if newest is not None:  # no checkpoint yet: absent rather than a made-up age
            yield GaugeMetricFamily("pacsguard_checkpoint_age_seconds", "seconds since the newest signed "
                                    "checkpoint of the store", value=max(0.0, time.time() - newest / 1e6))
        yield CounterMetricFamily("pacsguard_metrics_dropped_events", "events the metrics part missed because "
                                  "it fell too far behind (its counters are low by as many)",
                                  value=self.subscription.dropped)
