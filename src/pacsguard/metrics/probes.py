"""Metrics read at scrape time from the spine: the bus's write statistics and backlog, how far the
sinks lag, the age of the store's newest signed checkpoint, what the metrics part itself missed,
and what the secondary outputs (`sinks:`, docs/sinks.md) queued, dropped and shortened.

A Prometheus custom collector (its collect() runs on every scrape), so nothing here polls."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from sqlalchemy import select

from pacsguard.events.sink import FanOut
from pacsguard.store.schema import checkpoints

if TYPE_CHECKING:
    from pacsguard.events import EventBus, Subscription
    from pacsguard.store import EventStore


def secondary_sinks(bus: EventBus) -> list[tuple[str, object]]:
    """(label, sink) of the JSON-lines and syslog outputs behind the store (runtime.outputs puts
    them in a FanOut after the store), labelled `jsonl` and `syslog` as in pacsguard.yaml."""
    fan = bus.sink
    if not isinstance(fan, FanOut) or not fan.others:
        return []
    from pacsguard.sinks.jsonl import JsonLinesSink
    from pacsguard.sinks.syslog import SyslogSink

    return [("jsonl" if isinstance(sink, JsonLinesSink) else "syslog", sink) for sink in fan.others
            if isinstance(sink, (JsonLinesSink, SyslogSink))]


def sink_metrics(bus: EventBus) -> Iterator[Metric]:
    """The outputs' own counts. Without them a SIEM outage longer than the syslog queue, or a full
    disk under the JSON-lines file, shows only as log lines: the store and /healthz are fine."""
    from pacsguard.sinks.syslog import SyslogSink

    sinks = secondary_sinks(bus)
    if not sinks:
        return
    lost = CounterMetricFamily("pacsguard_sink_dropped_events", "events an output did not deliver (the syslog "
                               "queue overflowed, the JSON-lines file could not take them); the store has them",
                               labels=["sink"])
    queued = GaugeMetricFamily("pacsguard_sink_queued_events", "events waiting in the syslog output's queue",
                               labels=["sink"])
    connected = GaugeMetricFamily("pacsguard_sink_connected", "1 while the syslog output holds a connection "
                                  "to its collector", labels=["sink"])
    shortened = CounterMetricFamily("pacsguard_sink_truncated_events", "events sent shortened because their "
                                    "syslog message would be too long", labels=["sink"])
    for name, sink in sinks:
        if isinstance(sink, SyslogSink):
            lost.add_metric([name], sink.dropped)
            queued.add_metric([name], sink.pending)
            connected.add_metric([name], 1 if sink.connected else 0)
            shortened.add_metric([name], sink.truncated)
        else:
            lost.add_metric([name], getattr(sink, "lost", 0))
    yield lost
    if queued.samples:
        yield from (queued, connected, shortened)


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
        yield from sink_metrics(self.bus)
