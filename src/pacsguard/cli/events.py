"""`pacsguard events search|tail`: read the store, as a table or as JSON lines."""

from __future__ import annotations

import heapq
import re
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import typer

from pacsguard.cli.app import App
from pacsguard.cli.common import (
    CONFIG_OPTION,
    EXIT_PIPE_CLOSED,
    STORE_OPTION,
    fail,
    load,
    open_store,
    stdout_closed,
)
from pacsguard.cli.layout import Column, Layout, layout_for, terminal_width, write_lines

if TYPE_CHECKING:
    from pacsguard.events.model import Party
    from pacsguard.store import EventQuery, EventStore, StoredEvent

app = App(name="events", no_args_is_help=True, help="Search and follow the event store.")


class Format(str, Enum):
    table = "table"
    json = "json"


def _when(text: str | None, name: str) -> datetime | None:
    if text is None:
        return None
    from pacsguard.events.model import parse_time

    try:
        return parse_time(text if "T" in text or len(text) > 10 else text + "T00:00:00")
    except ValueError as exc:
        why = f" ({exc})" if "outside the years" in str(exc) else ""
        raise fail(f"--{name}: expected an ISO 8601 date or time such as 2026-11-23 or 2026-11-23T08:00:00Z, "
                   f"got {text!r}{why}") from None


def window(since: str | None, until: str | None) -> tuple[datetime | None, datetime | None]:
    """--since and --until of a search. The window runs from --since to before --until, so an --until
    not after --since holds no time: refused (exit 2), as `audit patient` refuses it, because the
    search could only answer "no event", which reads as "nobody did it" (a swapped pair in a script)."""
    start, end = _when(since, "since"), _when(until, "until")
    if start is not None and end is not None and end <= start:
        raise fail(f"--until {until} ({end.isoformat()}) is not after --since {since} ({start.isoformat()}): "
                   "the search covers from --since to before --until, so that window holds no time")
    return start, end


def given(value: str | None, option: str, what: str) -> str | None:
    """A filter's value; an empty one (`--patient "$PID"` with PID unset) is refused (exit 2): it
    could only match nothing, and an empty answer to "who touched this patient" reads as "nobody"."""
    if value is not None and not value.strip():
        raise fail(f"{option}: empty; give {what}")
    return value


#: The time, limit and format options of every search command (`events search`, `audit search`).
SINCE_OPTION = typer.Option(None, "--since", help="from this time (ISO 8601, UTC if no offset)")
UNTIL_OPTION = typer.Option(None, "--until", help="before this time")
LIMIT_OPTION = typer.Option(1000, "--limit", min=1, max=10**15, help="at most this many events")
FORMAT_OPTION = typer.Option(Format.table, "--format", help="table or json (one event per line)")
KIND_HELP = "event kind, e.g. dicom.association.rejected, or dicom.* for every kind it begins"


@app.command("search")
def search(
    patient: str | None = typer.Option(None, "--patient", help="patient ID"),
    study: str | None = typer.Option(None, "--study", help="Study Instance UID"),
    actor: str | None = typer.Option(None, "--actor", help="AE title, host or user who acted, or AE@host[:port] "
                                     "as the table shows it"),
    kind: str | None = typer.Option(None, "--kind", help=KIND_HELP),
    since: str | None = SINCE_OPTION,
    until: str | None = UNTIL_OPTION,
    limit: int = LIMIT_OPTION,
    fmt: Format = FORMAT_OPTION,
    config: Path | None = CONFIG_OPTION,
    store: str | None = STORE_OPTION,
) -> None:
    """Find events by patient, study, actor, kind and time; oldest first."""
    from pacsguard.store import EventQuery

    # One event more than asked tells whether the output stops short of what matched.
    start, end = window(since, until)
    query = EventQuery(patient=given(patient, "--patient", "a patient ID"),
                       study=given(study, "--study", "a Study Instance UID"),
                       actor=given(actor, "--actor", "an AE title, host or user"),
                       kind=given(kind, "--kind", "an event kind such as dicom.association.rejected or dicom.*"),
                       since=start, until=end, limit=limit + 1)
    es = open_store(load(config, required=store is None), store)
    try:
        found = read_events(es, query)
    finally:
        es.close()
    print_limited(found, limit, fmt, "events search")
    if not found:
        note_unknown_kind(kind, "events search")


def note_unknown_kind(kind: str | None, command: str) -> None:
    """Say on standard error why a --kind found nothing when no part records a kind so named
    (`atna` for `atna.*`, a typo, a `*` not at the end): the store matches a kind whole, or by
    its beginning when it ends in `*`, so such a value finds nothing, silently, for ever.
    Standard output stays empty for scripts, and the exit code 0 (nothing found is no error)."""
    if kind is None:
        return
    from fnmatch import fnmatchcase

    from pacsguard.runtime.registry import Registry

    # A declared kind may itself be a family (`ids.alert.*`: the rule names the rest).
    declared = [k.kind for k in Registry.default().event_kinds()]
    if kind.endswith("*"):
        if "*" not in kind[:-1] and any(d.startswith(kind[:-1]) or kind.startswith(d[:-1]) for d in declared):
            return
    elif any(fnmatchcase(kind, d) for d in declared):
        return
    from pacsguard.cli.layout import printable

    prefix = kind.endswith("*") and "*" not in kind[:-1]
    named = f"begins with '{printable(kind[:-1])}'" if prefix else f"is called '{printable(kind)}'"
    typer.echo(f"{command}: note: no kind of event {named}; a kind is matched whole, or by "
               "its beginning when it ends in * (dicom.*); `pacsguard events schema` lists every kind", err=True)


def read_events(es: EventStore, query: EventQuery) -> list[StoredEvent]:
    """The events ``query`` finds. A stored event whose record is framed right but does not decode as
    an Event (a damaged or edited row: no writer of pacsguard stores one) is an error that says
    where the search stopped and what to run, not an internal error."""
    found: list[StoredEvent] = []
    try:
        for row in _search(es, query):
            found.append(row)
    except (ValueError, LookupError, TypeError) as exc:
        where = f"the event read after #{found[-1].seq}" if found else "the first event read"
        raise fail(f"{es.name}: the store is damaged: {where} does not decode as an event "
                   f"({type(exc).__name__}: {exc}); run `pacsguard audit verify` to see which rows are") from None
    return found


def _search(es: EventStore, query: EventQuery) -> Iterator[StoredEvent]:
    """``es.search(query)``, where an --actor of the form the table prints (`AE@host`, `AE@host:port`,
    with ` (user)` after it) also finds the events of that AE title calling from that host. The store
    matches --actor as one AE title, host or user; the value is asked for that way too, since an AE
    title (PS3.5 6.2, VR AE) and a user name (alice@hospital.org) may themselves hold an '@'."""
    ae = actor_ae(query.actor) if query.actor is not None else None
    if ae is None:
        yield from es.search(query)
        return
    wanted = query.actor
    # The index narrows by the AE title; its events are read in order until enough are found.
    by_ae = (row for row in es.search(replace(query, actor=ae, limit=None)) if wanted in party_forms(row.event.actor))
    merged = heapq.merge(es.search(query), by_ae, key=lambda row: row.seq, reverse=query.newest_first)
    last, count = None, 0
    for row in merged:
        if row.seq == last:  # found both ways
            continue
        last, count = row.seq, count + 1
        yield row
        if count == query.limit:
            return


def actor_ae(value: str) -> str | None:
    """The AE title of an --actor of the form `AE@host[:port][ (user)]`; None for any other value."""
    core = re.sub(r" \([^()]*\)$", "", value)
    ae, at, host = core.rpartition("@")
    return ae if at and ae.strip() and host.strip() else None


def party_forms(party: Party) -> set[str]:
    """Every way the table writes ``party`` as AE@host (`Party.label`): with or without its port (an
    IPv6 address in brackets too, RFC 3986 3.2.2), with or without its user after it."""
    if not party.ae_title or not party.host:
        return set()
    hosts = {party.host, f"[{party.host}]"} if ":" in party.host else {party.host}
    bases = {f"{party.ae_title}@{host}" for host in hosts}
    if party.port:
        bases |= {f"{base}:{party.port}" for base in bases}
    if party.user:
        bases |= {f"{base} ({party.user})" for base in bases}
    return bases


def print_limited(found: list[StoredEvent], limit: int, fmt: Format, command: str) -> None:
    """Print the first ``limit`` of ``found`` (asked for one more than ``limit``), then say on
    standard error (standard output stays the events alone, for scripts) when more matched than
    --limit let through, and how to go on."""
    _print(found[:limit], fmt)
    if len(found) > limit:
        last = found[limit - 1]
        when = last.event.time.astimezone(timezone.utc).isoformat()
        typer.echo(f"{command}: stopped at --limit {limit} with more events left (the last shown "
                   f"is #{last.seq} of {when}); raise --limit or narrow with --since", err=True)


@app.command("tail")
def tail(
    count: int = typer.Option(20, "--lines", "-n", min=0, help="show the newest N events first"),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing new events until Ctrl-C"),
    kind: str | None = typer.Option(None, "--kind", help=KIND_HELP),
    fmt: Format = FORMAT_OPTION,
    interval: float = typer.Option(0.5, "--interval", min=0.05, help="seconds between polls with --follow"),
    config: Path | None = CONFIG_OPTION,
    store: str | None = STORE_OPTION,
) -> None:
    """The newest events, and with -f every new one as it is stored."""
    from pacsguard.store import EventQuery

    es = open_store(load(config, required=store is None), store)
    try:
        newest = read_events(es, EventQuery(kind=kind, limit=count, newest_first=True))[::-1] if count else []
        if not newest:  # before a --follow that would wait for ever
            note_unknown_kind(kind, "events tail")
        if not follow:
            _print(newest, fmt)
            return
        # One stream: the widths are chosen once, the header printed once, then every row as it comes.
        layout = layout_for(COLUMNS, terminal_width())
        if fmt is Format.table:
            write_lines(layout.header())
        _stream(newest, fmt, layout)
        last = newest[-1].seq if newest else es.size() - 1
        while True:
            time.sleep(interval)
            if stdout_closed():
                # `events tail -f | grep -m1 ...`: the reader went away while the store was quiet.
                # Without a write to fail, the pipeline would wait for the next event, maybe hours
                # on a quiet night (GNU tail -f checks its output the same way).
                raise typer.Exit(EXIT_PIPE_CLOSED)
            batch = read_events(es, EventQuery(kind=kind, after_seq=last, limit=1000))
            if batch:
                _stream(batch, fmt, layout)
                last = batch[-1].seq
    except KeyboardInterrupt:
        pass
    finally:
        es.close()


#: The columns of an event, with the widths a stream expects (AE@host:port, kinds, patient IDs).
COLUMNS = (Column("#", width=6), Column("time (UTC)", width=23), Column("kind", width=30),
           Column("outcome", width=7), Column("actor", width=24), Column("target", width=24),
           Column("patient", width=10), Column("message", fold=True, width=30))


def _cells(row: StoredEvent) -> list[str]:
    ev = row.event
    return [str(row.seq), ev.time.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3], ev.kind,
            ev.outcome, ev.actor.label(), ev.target.label(), ",".join(ev.patient_ids), ev.message]


def _stream(rows: Iterable[StoredEvent], fmt: Format, layout: Layout) -> None:
    for row in rows:
        if fmt is Format.json:
            write_lines([row.event.to_json()])
            continue
        lines = layout.record(_cells(row))
        write_lines([*lines, ""] if layout.widths is None else lines, alert=row.event.severity <= 4)


def _print(rows: Iterable[StoredEvent], fmt: Format) -> None:
    rows = list(rows)
    if fmt is Format.json:
        write_lines(row.event.to_json() for row in rows)
        return
    layout = layout_for(COLUMNS, terminal_width(), [_cells(row) for row in rows])
    write_lines(layout.header())
    for i, row in enumerate(rows):
        if layout.widths is None and i:
            write_lines([""])
        write_lines(layout.record(_cells(row)), alert=row.event.severity <= 4)


@app.command("schema")
def schema(check: Path | None = typer.Option(None, "--check", help="compare with this file instead of printing; "
                                                                    "exit 1 if it differs")) -> None:
    """Print the JSON Schema of every kind of Event the parts record (docs/events.schema.json)."""
    import json

    from pacsguard.runtime.registry import Registry

    text = json.dumps(Registry.default().event_schema(), indent=2, sort_keys=True) + "\n"
    if check is None:
        sys.stdout.write(text)
        return
    try:
        # Bytes, not text in the locale's encoding: the file is UTF-8 whatever LANG says.
        held = check.read_bytes()
    except OSError as exc:  # a missing file is a usage error (2), not a schema that differs (1)
        raise fail(f"{check}: cannot read: {exc.strerror or exc}") from None
    if held != text.encode():
        raise fail(f"{check} is not the schema the code declares; regenerate it with `pacsguard events schema`", 1)
