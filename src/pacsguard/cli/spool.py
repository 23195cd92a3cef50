"""`pacsguard gateway spool list|show|retry|purge`: what the store-and-forward routes hold (docs/gateway.md,
"Store-and-forward routes"). They read the spool folders named in pacsguard.yaml; a running
gateway picks up a retry request within a second."""

from __future__ import annotations

import getpass
import json
import time
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from pacsguard.cli.app import App
from pacsguard.cli.common import CONFIG_OPTION, STORE_OPTION, fail, load, open_store, shown

if TYPE_CHECKING:
    from pacsguard.config import LoadedConfig
    from pacsguard.config.schema import Route
    from pacsguard.gateway.store_forward.spool import Spool, SpoolEntry
    from pacsguard.store import EventStore

app = App(name="spool", no_args_is_help=True, help="The store-and-forward spool: what waits, retry, purge.")

ROUTE_OPTION = typer.Option(None, "--route", help="only this store-and-forward route (default: all)")
JSON_OPTION = typer.Option(False, "--json", help="the same as --format json")


class Format(str, Enum):
    """What `spool list` and `spool show` print."""

    table = "table"
    json = "json"


#: `--format` as every other command that prints a table names it (`events search`, `audit
#: patient`, `atna sources`, ...): a script written for those found no such option here.
FORMAT_OPTION = typer.Option(Format.table, "--format", help="table or json")


def _routes(loaded: LoadedConfig, route: str | None) -> list[Route]:
    routes = [r for r in loaded.section("gateway").routes if r.mode == "store-and-forward"]
    if route is not None:
        routes = [r for r in routes if r.name == route]
        if not routes:
            raise fail(f"no store-and-forward route is named {route!r}")
    return routes


def _spools(loaded: LoadedConfig, route: str | None) -> list[tuple[str, Spool]]:
    from pacsguard.gateway.store_forward.route import spool_for

    return [(r.name, spool_for(r, loaded.resolve)) for r in _routes(loaded, route)]


def _entries(loaded: LoadedConfig, route: str | None) -> list[tuple[str, Spool, SpoolEntry]]:
    """Every spooled object, each queued one's destinations checked against its route's
    configuration (a destination renamed, moved or removed strands what waits for it)."""
    from pacsguard.gateway.store_forward.route import spool_for

    found = []
    for r in _routes(loaded, route):
        spool = spool_for(r, loaded.resolve)
        found += [(r.name, spool, e) for e in spool.entries(configured={d.key for d in r.destinations})]
    return found


@app.command("list")
def list_(route: str | None = ROUTE_OPTION, fmt: Format = FORMAT_OPTION, as_json: bool = JSON_OPTION,
          config: Path | None = CONFIG_OPTION) -> None:
    """Every spooled object: queued for a destination, damaged (its metadata unreadable), quarantined,
    or kept after sending."""
    from rich.table import Table

    from pacsguard.cli.common import console

    entries = _entries(load(config), route)
    if as_json or fmt is Format.json:
        typer.echo(json.dumps([{"route": name, **e.as_dict()} for name, _, e in entries], indent=2))
        return
    table = Table(header_style="bold")
    for col in ("route", "id", "state", "SOP instance", "KiB", "age", "waiting for"):
        table.add_column(col, overflow="fold")
    now = time.time()
    for name, _, e in entries:
        waiting = ", ".join(_waiting(e, d) for d in e.pending) or e.damage
        table.add_row(shown(name), shown(e.meta.id), e.state, shown(e.meta.object.sop_instance_uid),
                      f"{e.meta.bytes / 1024:,.0f}", _age(now - e.meta.received), shown(waiting or "-"))
    console.print(table if entries else "the spool is empty")
    _warn_stranded(entries)


def _warn_stranded(entries: list[tuple[str, Spool, SpoolEntry]]) -> None:
    """Name each destination objects wait for that their route no longer has, and what to do."""
    from pacsguard.cli.common import console
    from pacsguard.gateway.store_forward.route import stranded_reason

    stranded: dict[tuple[str, str], int] = {}
    for name, _, e in entries:
        for destination in e.unconfigured:
            stranded[name, destination] = stranded.get((name, destination), 0) + 1
    for (name, destination), count in stranded.items():
        console.print(f"[yellow]warning:[/] {count} object(s) wait for {shown(stranded_reason(name, destination))}",
                      highlight=False, soft_wrap=True)


def _waiting(entry: SpoolEntry, destination: str) -> str:
    """A destination the object still waits for, with why it waits (failed sends, an answer never
    recorded: it is asked with a C-FIND before it is sent again)."""
    notes = []
    if destination in entry.unconfigured:  # no forwarder serves it: docs/gateway.md says what to do
        notes.append("no longer configured: name a destination so, or purge")
    if destination in entry.failures:
        notes.append(f"{entry.failures[destination]['attempts']} failed")
    if destination in entry.in_doubt:
        notes.append("in doubt")
    return f"{destination} ({', '.join(notes)})" if notes else destination


@app.command("show")
def show(object_id: str = typer.Argument(..., help="the id `spool list` shows"), route: str | None = ROUTE_OPTION,
         fmt: Format = FORMAT_OPTION, as_json: bool = JSON_OPTION, config: Path | None = CONFIG_OPTION) -> None:
    """One spooled object: what the association said, its destinations, failures, manifest."""
    from pacsguard.cli.common import console

    found = [(name, e) for name, _, e in _entries(load(config), route) if e.meta.id == object_id]
    if not found:
        raise fail(f"no spooled object {object_id!r}; `pacsguard gateway spool list` shows the ids", code=1)
    name, entry = found[0]
    data = {"route": name, **entry.as_dict()}
    if as_json or fmt is Format.json:
        typer.echo(json.dumps(data, indent=2))
        return
    for key, value in [*((k, v) for k, v in data.items() if k != "meta"), *data["meta"].items()]:
        console.print(f"[bold]{key}:[/] {shown(value)}", highlight=False, soft_wrap=True)


@app.command("retry")
def retry(route: str | None = ROUTE_OPTION, config: Path | None = CONFIG_OPTION) -> None:
    """Ask the running gateway to try every waiting destination now, not after its backoff."""
    from pacsguard.cli.common import console

    spools = _spools(load(config), route)
    for name, spool in spools:
        try:
            spool.root.mkdir(parents=True, exist_ok=True)
            spool.request_retry()
        except OSError as exc:
            # The request is a file the gateway reads (docs/gateway.md): a spool this user cannot
            # write (read-only file system, another owner) gets no request, and the route says so.
            raise fail(f"route {name}: retry not requested: cannot write the request into its spool "
                       f"{spool.root} ({exc.strerror or exc}); run this as the user the gateway runs as, "
                       "or make the spool folder writable, then retry") from None
        console.print(f"route {name}: retry requested", highlight=False)


@app.command("purge")
def purge(object_ids: list[str] = typer.Argument(None, help="ids to delete (default: every one the filters keep)"),
          route: str | None = ROUTE_OPTION,
          state: str | None = typer.Option(None, "--state", help="only queued, damaged, quarantined or sent objects"),
          yes: bool = typer.Option(False, "--yes", help="really delete: spooled objects are then lost"),
          config: Path | None = CONFIG_OPTION, store: str | None = STORE_OPTION) -> None:
    """Delete spooled objects for good, recording who did (gateway.spool.purged)."""
    from pacsguard.cli.common import console

    if state not in (None, "queued", "damaged", "quarantined", "sent"):
        raise fail(f"--state: expected queued, damaged, quarantined or sent, got {state!r}")
    loaded = load(config)
    chosen = [(n, s, e) for n, s, e in _entries(loaded, route)
              if (not object_ids or e.meta.id in object_ids) and (state is None or e.state == state)]
    missing = set(object_ids or ()) - {e.meta.id for _, _, e in chosen}
    if missing:
        raise fail(f"no spooled object {', '.join(sorted(missing))}; `pacsguard gateway spool list` shows the ids",
                   code=1)
    if not chosen:
        console.print("nothing to purge")
        return
    if not yes:
        raise fail(f"{len(chosen)} object(s) would be deleted for good; add --yes to do it")
    # The store first: a purge that cannot be recorded (no store, PostgreSQL down) deletes nothing.
    es = open_store(loaded, store)
    purged = 0
    try:
        for name in dict.fromkeys(n for n, _, _ in chosen):
            route_chosen = [(s, e) for n, s, e in chosen if n == name]
            purged += _purge_route(es, name, route_chosen, getpass.getuser(), purged, len(chosen))
    finally:
        es.close()
    console.print(f"purged {len(chosen)} object(s)")


def _purge_route(es: EventStore, route: str, chosen: list[tuple[Spool, SpoolEntry]], user: str,
                 before: int, total: int) -> int:
    """Record one route's chosen objects as purged (gateway.spool.purged), then delete them; how many
    went. Nothing is deleted whose record did not land: a store that fails (full, read-only, locked)
    stops the purge here, naming how many of ``total`` were purged (``before``, by earlier routes)
    and what stopped it (exit 2). An object that cannot be deleted after its record is named too."""
    from pacsguard.gateway.store_forward import records

    event = records.purged(route, [e.meta for _, e in chosen], user, [e.state for _, e in chosen])
    try:
        es.append([event])
    except Exception as exc:  # noqa: BLE001 - any store failure stops the purge before it deletes
        raise fail(f"purged {before} of {total} object(s); stopped at route {route}: its "
                   f"{len(chosen)} object(s) were not deleted, since the store could not record their purge "
                   f"(gateway.spool.purged): {exc}") from None
    left: list[str] = []
    for spool, entry in chosen:
        try:
            spool.purge(entry)
        except OSError as exc:
            left.append(f"{entry.meta.id} ({exc.strerror or exc})")
    if left:
        raise fail(f"purged {before + len(chosen) - len(left)} of {total} object(s); stopped at route {route}: "
                   f"recorded as purged but could not delete {', '.join(left)}: delete them by hand or run "
                   "the purge again") from None
    return len(chosen)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"
