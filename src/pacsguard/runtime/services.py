"""Running the parts' services: built from the registry, started in registry order on one asyncio
loop, stopped in reverse on Ctrl-C, SIGTERM or a hang-up (or when a caller's stop event is set)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from pacsguard.runtime.loop import run_event_loop
from pacsguard.runtime.part import BannerRow, Service, ServiceContext

if TYPE_CHECKING:
    from pacsguard.config import LoadedConfig
    from pacsguard.events import EventBus
    from pacsguard.runtime.registry import Registry
    from pacsguard.sdnotify import Notifier, Watchdog
    from pacsguard.store import EventStore


def build_services(registry: Registry, loaded: LoadedConfig, bus: EventBus, store: EventStore) -> list[Service]:
    """One service per part whose factory finds something enabled in the configuration, in registry order."""
    services: list[Service] = []
    for part in registry:
        factory = part.service_factory()
        if factory is None:
            continue
        section = loaded.section(part.section) if part.section is not None else None
        service = factory(ServiceContext(loaded, section, bus, store))
        if service is not None:
            services.append(service)
    return services


async def run_services(services: list[Service], stop: asyncio.Event,
                       show: Callable[[list[BannerRow]], None] = lambda rows: None,
                       banner: list[BannerRow] | None = None, on_stopping: Callable[[], None] = lambda: None) -> None:
    """Start each service, show the banner, wait for ``stop``, stop them in reverse. A service that
    fails to start stops those already started before the error goes on."""
    from pacsguard.sdnotify import Notifier

    notifier = Notifier()  # systemd (Type=notify, deploy/pacsguard.service); silent elsewhere
    rows = list(banner or [])
    started: list[Service] = []
    try:
        for service in services:
            rows.extend(await service.start())
            started.append(service)
        show(rows)
        notifier.ready(f"serving: {len(started)} service(s)")
        watchdog = _watchdog(notifier, asyncio.get_running_loop())
        try:
            await stop.wait()
        finally:
            if watchdog is not None:
                watchdog.stop()
        notifier.stopping("stopping: letting open associations finish")
        on_stopping()
    finally:
        for service in reversed(started):
            await service.stop()


def _watchdog(notifier: Notifier, loop: asyncio.AbstractEventLoop) -> Watchdog | None:
    """systemd's watchdog (WatchdogSec=), pinged only while the event loop answers: a hung loop
    stops the pings and systemd restarts the service."""
    from pacsguard.sdnotify import Watchdog, watchdog_interval

    interval = watchdog_interval()
    if interval is None or not notifier.enabled:
        return None

    def loop_answers() -> bool:
        try:
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(timeout=interval)
        except Exception:  # noqa: BLE001 - timeout or a closed loop: unhealthy either way
            return False
        return True

    return Watchdog(notifier, interval, healthy=loop_answers).start()


def stop_on_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Set ``stop`` on the signals that stop the services cleanly (their events recorded, a final
    checkpoint signed): SIGINT, SIGTERM, and SIGHUP, which the terminal sends when the SSH session
    that ran `make run` or `serve` goes away (POSIX "General Terminal Interface", modem disconnect);
    its default action ended the process on the spot, leaving a start without a stop in the audit
    trail. A SIGHUP ignored on purpose (`nohup pacsguard serve`) stays ignored.

    Without a terminal (systemd, a container) no hang-up can come: a SIGHUP there is a daemon's
    "reload or reopen your logs" (rsyslog, nginx, Suricata; a logrotate postrotate script), and
    stopping on it ended the gateway with exit code 0, which `Restart=on-failure` does not restart.
    It is ignored with a warning saying so."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
        return
    # Known now, while the terminal is there: once it hung up, isatty() fails on it like any write.
    terminals = [fd for fd in (1, 2) if _isatty(fd)]
    if not terminals and not _isatty(0):
        loop.add_signal_handler(signal.SIGHUP, _not_a_hang_up)
        return

    def hang_up() -> None:
        # Whatever is printed while stopping ("stopping: ...", a log line) would fail with EIO on
        # the terminal that is gone and turn the clean stop into a failed one: it goes nowhere.
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            for fd in terminals:
                os.dup2(devnull, fd)
        finally:
            os.close(devnull)
        stop.set()

    loop.add_signal_handler(signal.SIGHUP, hang_up)


def _not_a_hang_up() -> None:
    logging.getLogger("pacsguard").warning(
        "SIGHUP ignored: pacsguard has no terminal to hang up and nothing to reload (the JSON-lines "
        "file is reopened after rotation by itself); SIGTERM stops it, a restart reads the configuration")


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def run_foreground(services: list[Service], show: Callable[[list[BannerRow]], None], banner: list[BannerRow],
                   on_stopping: Callable[[], None] = lambda: None) -> None:
    """Run the services until SIGINT, SIGTERM or SIGHUP (:func:`stop_on_signals`).

    On uvloop (pacsguard.runtime.loop); a service that needs asyncio's loop gets it (none does
    today: the gateway's TLS routes run on uvloop too)."""

    def started(rows: list[BannerRow]) -> None:
        show(rows)
        # What exists once the services listen (imported libraries, configuration, rules, routes)
        # lives as long as the process: frozen, Python's full collections walk only what was made
        # since, instead of stalling the loop 25-60 ms over all of it while no association moves
        # (docs/PERFORMANCE.md, "Per small C-STORE").
        gc.freeze()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        logging.getLogger("pacsguard").debug("event loop: %s", type(loop).__module__.split(".")[0])
        stop_on_signals(loop, stop)
        await run_services(services, stop, started, banner, on_stopping)

    run_event_loop(main(), plain=any(service.needs_asyncio_loop for service in services))
