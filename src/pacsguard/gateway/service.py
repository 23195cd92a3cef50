"""The gateway as a service of `serve`: its routes on the shared loop, decisions published to the
bus, the quarantine read back from the store (every gateway on one store shares it)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pacsguard.config.schema import GatewayConfig, Route
    from pacsguard.events import Event
    from pacsguard.events.durable import Durability
    from pacsguard.gateway.objects import ObjectCheck
    from pacsguard.ids import Engine
    from pacsguard.runtime.part import BannerRow, ServiceContext
    from pacsguard.store import EventStore


def quarantine_reader(store: EventStore) -> Callable[[int], list[tuple[int, Event]]]:
    """Reads the quarantine changes (gateway.quarantine.*) stored after a sequence number."""
    from pacsguard.store import EventQuery

    def read(after: int) -> list[tuple[int, Event]]:
        query = EventQuery(kind="gateway.quarantine.*", after_seq=after, limit=None)
        return [(s.seq, s.event) for s in store.search(query)]
    return read


class GatewayService:
    """The gateway's listeners; with a rule engine, the IDS rules run inline on every route (IPS)."""

    def __init__(self, config: GatewayConfig, publish: Callable[[Event], int | None], store: EventStore, *,
                 resolve: Callable[[Path], Path] = lambda p: p, engine: Engine | None = None,
                 durability: Durability | None = None,
                 object_checks: Callable[[Route], list[ObjectCheck]] | None = None) -> None:
        from pacsguard.gateway import Gateway

        self.engine = engine
        self.gateway = Gateway(config, publish, resolve=resolve, read_quarantine=quarantine_reader(store),
                               engine=engine, durability=durability,
                               object_checks=object_checks)
        # Every route runs on uvloop, TLS ones too (the handshake's first records, which uvloop
        # reads before start_tls() takes a connection over, are handed on: gateway.server).
        self.needs_asyncio_loop = False

    async def start(self) -> list[BannerRow]:
        rows: list[BannerRow] = []
        if self.engine is not None:
            rows.append(("IPS (inline rules)", f"{len(self.engine.active_rules)} rules active",
                         f"{len(self.engine.inactive)} inactive (see pacsguard ids rules list)"))
        for item in await self.gateway.start():
            tls = " TLS" if item.tls else ""
            rows.append((f"gateway route {item.route}", f"{item.ae_title}@{item.host}:{item.port}{tls}",
                         f"-> {item.upstream}"))
        return rows

    async def stop(self) -> None:
        await self.gateway.stop()


def make_service(ctx: ServiceContext) -> GatewayService | None:
    """serve's gateway: none without routes; with routes, the configuration's IDS rules inline and
    answers held until their records are durable on the shared bus."""
    from pacsguard.events.durable import Durability
    from pacsguard.ids.part import rule_engine

    config: GatewayConfig = ctx.section
    if not config.routes:
        return None
    return GatewayService(config, ctx.bus.publish_ticket, ctx.store, resolve=ctx.resolve,
                          engine=rule_engine(ctx.loaded), durability=Durability(ctx.bus),
                          object_checks=object_check_builder(ctx))



def object_check_builder(ctx: ServiceContext) -> Callable[[Route], list[ObjectCheck]]:
    """Builds the object checks a store-and-forward route names (``object_checks``), each once,
    from the part that offers it (pacsguard.runtime.part.Part.object_checks) with that part's section."""
    from pacsguard.runtime.part import ServiceContext, load_ref
    from pacsguard.runtime.registry import Registry

    offered = Registry.default().object_checks()
    built: dict[str, ObjectCheck] = {}

    def checks(route: Route) -> list[ObjectCheck]:
        for name in route.object_checks:
            if name not in built:
                part, ref = offered[name]
                part.check_dependencies()
                section = ctx.loaded.section(part.section) if part.section is not None else None
                built[name] = load_ref(ref)(ServiceContext(ctx.loaded, section, ctx.bus, ctx.store))
        return [built[name] for name in route.object_checks]
    return checks
