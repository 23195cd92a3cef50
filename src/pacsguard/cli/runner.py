"""Running the long-lived services in the foreground: the event bus into the store, the gateway's
listeners on asyncio, and a clean stop on Ctrl-C / SIGTERM (flush, final signed checkpoint)."""

from __future__ import annotations

import asyncio
import os
import signal
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

from rich.table import Table

from pacsguard import __version__
from pacsguard.cli.common import console
from pacsguard.config.schema import GatewayConfig
from pacsguard.events import Event, EventBus
from pacsguard.gateway import Gateway
from pacsguard.store import EventQuery, EventStore


def quarantine_reader(store: EventStore) -> Callable[[int], list[tuple[int, Event]]]:
    def read(after: int) -> list[tuple[int, Event]]:
        return [(s.seq, s.event) for s in store.search(EventQuery(kind="gateway.quarantine.*", after_seq=after, limit=None))]
    return read


def run_foreground(stack: ExitStack, bus: EventBus, store: EventStore, gateway: GatewayConfig,
                   resolve: Callable[[Path], Path], listeners: list[tuple[str, str, str]], engine=None) -> None:
    """Start the gateway (if it has routes), show what listens where, wait for a signal, stop."""

    async def main() -> None:
        gw = Gateway(gateway, bus.publish, resolve=resolve, read_quarantine=quarantine_reader(store), engine=engine)
        if engine is not None:
            listeners.append(("IPS (inline rules)", f"{len(engine.active_rules)} rules active",
                              f"{len(engine.inactive)} inactive (see pacsguard ids rules list)"))
        for item in await gw.start():
            tls = " TLS" if item.tls else ""
            listeners.append((f"gateway route {item.route}", f"{item.ae_title}@{item.host}:{item.port}{tls}",
                              f"-> {item.upstream}"))
        show(listeners)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        console.print("stopping: letting open associations finish (5 s at most)...")
        await gw.stop()

    # uvloop (libuv) cuts the relay's per-read cost by a third against asyncio's own loop
    # (bench/gateway.py, docs/PERFORMANCE.md). It reads a new socket before start_tls() can take it
    # over, so routes that terminate TLS (whose explicit handshake records failures as events) run
    # on asyncio's loop; PACSGUARD_EVENT_LOOP=asyncio chooses it always.
    tls_routes = any(route.listen.tls is not None for route in gateway.routes)
    if os.environ.get("PACSGUARD_EVENT_LOOP", "uvloop") == "uvloop" and not tls_routes:
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def show(listeners: list[tuple[str, str, str]]) -> None:
    table = Table(title=f"pacsguard {__version__} is running (Ctrl-C stops it)", header_style="bold")
    for col in ("service", "listening on / using", "notes"):
        table.add_column(col)
    for row in listeners:
        table.add_row(*row)
    console.print(table)
