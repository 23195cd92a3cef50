"""The metrics service `serve` runs: follows the event bus into counters and answers Prometheus'
scrapes (text exposition format 0.0.4) and load balancers' /healthz on one small HTTP listener."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.process_collector import ProcessCollector

from pacsguard.metrics.counters import EventCounters
from pacsguard.metrics.probes import SpineCollector
from pacsguard.metrics.server import MonitoringServer, Response
from pacsguard.runtime.listening import cannot_listen

if TYPE_CHECKING:
    from pacsguard.events import EventBus, Subscription
    from pacsguard.metrics.config import MetricsConfig
    from pacsguard.runtime.part import BannerRow, ServiceContext
    from pacsguard.store import EventStore


class MetricsService:
    needs_asyncio_loop = False

    def __init__(self, config: MetricsConfig, bus: EventBus, store: EventStore) -> None:
        self.config = config
        self.bus = bus
        self.store = store
        # A registry of its own: two services (or tests) in one process never share a counter.
        self.registry = CollectorRegistry()
        self.counters = EventCounters(self.registry)
        ProcessCollector(registry=self.registry)  # CPU, memory, open files of the serve process
        self.subscription: Subscription | None = None
        self.server = MonitoringServer({"/metrics": self.metrics, "/healthz": self.healthz}, config.timeout)
        self.address: tuple[str, int] | None = None  # where it listens, once started

    async def start(self) -> list[BannerRow]:
        self.subscription = self.bus.subscribe(self.counters.observe)
        self.registry.register(SpineCollector(self.bus, self.store, self.subscription))
        try:
            self.address = host, port = await self.server.start(self.config.host, self.config.port)
        except OSError as exc:  # name the listener and its keys, as the gateway's and ATNA's errors do
            raise cannot_listen("metrics", self.config.host, self.config.port, exc, "metrics.host, metrics.port") \
                from None
        return [("metrics (Prometheus)", f"http://{host}:{port}/metrics", "and /healthz")]

    async def stop(self) -> None:
        await self.server.close()
        if self.subscription is not None:
            await asyncio.to_thread(self.subscription.unsubscribe)

    async def metrics(self) -> Response:
        # Off the loop: a scrape reads the store (the checkpoint age), which must not stall the relay.
        body = await asyncio.to_thread(generate_latest, self.registry)
        return Response(200, CONTENT_TYPE_LATEST, body)

    async def healthz(self) -> Response:
        """200 while the bus writes and the store answers, 503 (naming what failed) otherwise: while
        events cannot be made durable, ``recording`` says since when and why (docs/store.md)."""
        store = await self._store_reachable()
        bus = self.bus.writing
        ok = bus and store
        body: dict[str, object] = {"status": "ok" if ok else "unavailable", "bus": "writing" if bus else "failing",
                                   "store": "reachable" if store else "unreachable", "backlog": self.bus.pending}
        health = self.bus.health()
        if health.failing_since is not None:
            body["recording"] = {"failing_since": health.failing_since, "error": health.error,
                                 "spooled": health.spooled, "dropped": health.dropped}
        return Response(200 if ok else 503, "application/json", json.dumps(body).encode() + b"\n")

    async def _store_reachable(self) -> bool:
        try:
            await asyncio.wait_for(asyncio.to_thread(self.store.size), self.config.timeout / 2)
        except Exception:  # noqa: BLE001 - any failure to read the store is "unreachable" to a load balancer
            return False
        return True


def make_service(ctx: ServiceContext) -> MetricsService | None:
    config: MetricsConfig = ctx.section
    return MetricsService(config, ctx.bus, ctx.store) if config.enabled else None
