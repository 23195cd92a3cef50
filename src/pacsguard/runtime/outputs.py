"""Where published Events go, opened one way by every command that publishes: the store (if any),
the secondary sinks, and the EventBus in front of them, all closed by the caller's ExitStack."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from pacsguard.config import LoadedConfig
    from pacsguard.events import Event, EventBus
    from pacsguard.events.journal import Journal
    from pacsguard.events.sink import EventSink
    from pacsguard.store import EventStore

log = logging.getLogger("pacsguard")


@dataclass(frozen=True, slots=True)
class Outputs:
    bus: EventBus
    store: EventStore | None


def open_store(target: str, *, key: Path | None = None, create: bool = False,
               checkpoint_interval: float = 60.0, key_role: str = "") -> EventStore:
    from pacsguard.store import EventStore

    return EventStore.open(target, key_path=key, create=create, checkpoint_interval=checkpoint_interval,
                           key_role=key_role)


def config_store_target(loaded: LoadedConfig, override: str | None = None) -> str:
    """--store wins; else the configuration's store.url, a path from the file's folder, with its password."""
    from pacsguard.store.location import store_target

    if override is not None:
        return override
    cfg = loaded.config.store
    return store_target(cfg.url, loaded.resolve, _named("store.password", cfg.password.resolve)
                        if cfg.password is not None else None)


def _named(key: str, resolve: Callable[[], str]) -> Callable[[], str]:
    """``resolve`` whose failure names the configuration key it is for: "environment variable X is
    not set" alone leaves the administrator to search which of the file's secrets said X."""

    def named() -> str:
        try:
            return resolve()
        except LookupError as exc:
            raise LookupError(f"{key}: {exc}") from None

    return named


def open_config_store(loaded: LoadedConfig, override: str | None = None, *, writer: bool = False,
                      create: bool = False) -> EventStore:
    """The configuration's store; a writer loads the checkpoint signing key."""
    cfg = loaded.config.store
    return open_store(config_store_target(loaded, override), key=loaded.resolve(cfg.signing_key) if writer else None,
                      create=create, checkpoint_interval=cfg.checkpoint_interval, key_role="store.signing_key")


def open_outputs(stack: ExitStack, store: EventStore | None, sinks: Sequence[EventSink] = (), *,
                 on_error: Callable[[Exception], None] | None = None, close_timeout: float = 30.0,
                 journal: bool | Path = False) -> Outputs:
    """The bus in front of ``store`` (primary) and ``sinks``; a failing secondary sink is logged
    (rate-limited: `SinkFailureLog`) and never stops the primary. Everything is closed by
    ``stack``: the bus flushed first, the store last.
    ``journal``: events become durable in a write-ahead journal before the store's batched commit,
    and what an earlier run left there and the store lacks is written first
    (pacsguard.events.journal): True for the store's own (an SQLite store's file with `.journal`
    appended; none for PostgreSQL), or the journal's path."""
    from pacsguard.events import EventBus, FanOut
    from pacsguard.events.sink import SinkFailureLog
    from pacsguard.runtime.recording import RecordingAlarm

    if store is not None:
        stack.callback(store.close)
    for sink in sinks:
        stack.callback(sink.close)
    targets: list[EventSink] = [*([store] if store is not None else []), *sinks]
    if not targets:
        raise ValueError("open_outputs needs a store or at least one sink")
    failures = SinkFailureLog(log)  # a line per failed batch would flood the log of a long outage
    fan = FanOut(targets[0], targets[1:], on_error=failures.failed, on_recovered=failures.recovered)
    wal, backlog = (open_journal(store, None if journal is True else journal)
                    if journal is not False and store is not None else (None, []))
    bus = EventBus(fan, on_error=on_error, journal=wal, backlog=backlog)
    stack.callback(bus.close, close_timeout)
    bus.listen(RecordingAlarm(bus))
    return Outputs(bus, store)


def journal_path(store: EventStore) -> Path | None:
    """Where an SQLite store's write-ahead journal lives; None for PostgreSQL (answers wait for
    the store's group commit there: the journal would sit on one gateway's disk)."""
    from pathlib import Path

    prefix = "sqlite:///"
    if not store.url.startswith(prefix):
        return None
    return Path(store.url[len(prefix):] + ".journal")


def open_journal(store: EventStore, path: Path | None = None) -> tuple[Journal | None, list[Event]]:
    """The journal at ``path`` (default: the store's own, `journal_path`), and the events of an
    earlier run that it holds and the store lacks (a crash between the journal's fdatasync and the
    store's commit), in their order."""
    from pacsguard.events.journal import Journal, read
    from pacsguard.owner_only import make_private_dir

    if path is None:
        path = journal_path(store)
    if path is None:
        return None, []
    make_private_dir(path.parent)  # 0700, whatever the umask: the journal holds patient data
    try:
        wal = Journal(path)
    except BlockingIOError as exc:
        log.warning("%s: answers wait for the store's commit instead", exc)
        return None, []
    left = read(path)
    return wal, missing_from(store, left) if left else []


def missing_from(store: EventStore, events: list[Event]) -> list[Event]:
    """Those of ``events`` the store does not hold (looked up by id among the store's events from
    the earliest of their times on), each once, in order."""
    from datetime import timedelta

    from pacsguard.store import EventQuery

    since = min(e.time for e in events) - timedelta(seconds=1)
    held = {s.event.id for s in store.search(EventQuery(since=since, limit=None))}
    missing: list[Event] = []
    for event in events:
        if event.id not in held:
            held.add(event.id)
            missing.append(event)
    if missing:
        log.warning("%s: %d events of the journal were not in the store; writing them first", store.name,
                    len(missing))
    return missing


def open_configured_outputs(stack: ExitStack, loaded: LoadedConfig) -> Outputs:
    """serve's outputs: the configuration's store (writer, created if missing) and its sinks."""
    from pacsguard.sinks.build import build_sinks

    store = open_config_store(loaded, writer=True, create=True)
    try:
        sinks = build_sinks(loaded.config.sinks, loaded.resolve)
    except BaseException:
        store.close()
        raise
    return open_outputs(stack, store, sinks, journal=journal_setting(loaded.config.store.journal, loaded.resolve))


def journal_setting(value: str, resolve: Callable[[Path], Path] = lambda p: p) -> bool | Path:
    """``store.journal`` / ``--journal`` as `open_outputs` takes it: auto, none, or a path."""
    from pathlib import Path

    if value == "auto":
        return True
    if value == "none":
        return False
    return resolve(Path(value))
