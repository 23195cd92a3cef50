"""`pacsguard store migrate`: the one command that upgrades a store's schema, after a verified backup."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from pacsguard.cli.app import App
from pacsguard.cli.common import CONFIG_OPTION, STORE_OPTION, fail, load, missing_store
from pacsguard.store.errors import StoreError

if TYPE_CHECKING:
    from datetime import datetime

    from pacsguard.config.loader import LoadedConfig
    from pacsguard.store.upgrade import StoreState

_SQLITE = "sqlite:///"
app = App(name="store", no_args_is_help=True, help="The store itself: schema migrations.")


@app.command("migrate")
def migrate(
    backup_to: Path | None = typer.Option(None, "--backup-to", help="folder for the backup taken before migrating "
                                          "(SQLite: a verified copy; PostgreSQL: a pg_dump -Fc file); required"),
    dry_run: bool = typer.Option(False, "--dry-run", help="say what would be done, change nothing"),
    config: Path | None = CONFIG_OPTION,
    store: str | None = STORE_OPTION,
) -> None:
    """Back the store up, verify the backup, then upgrade its schema to this version's revision.

    Stop every gateway, sensor and service that writes to the store first: no other command
    migrates it, and each refuses to open a store at an older revision until this has run.
    """
    from pacsguard.cli.common import console
    from pacsguard.runtime.outputs import config_store_target
    from pacsguard.store import database, upgrade

    if backup_to is None:
        raise fail("refusing to migrate without a backup: give --backup-to DIR (the store is the audit trail; "
                   "a failed or unwanted upgrade is undone only from a copy taken before it)")
    loaded = load(config, required=store is None)
    url = database.normalise_target(config_store_target(loaded, store))
    held: list[int] = []  # journals locked against a writer starting while this runs
    try:
        engine = database.make_engine(url, create=False)
    except StoreError:
        missing = missing_store(loaded, store)
        if missing is None:
            raise
        raise missing from None
    try:
        name = database.describe(url)
        state = upgrade.read_state(engine, url)
        if state.revision == database.HEAD_REVISION:
            console.print(f"store {name}: {_state(state)}, already at the newest revision; nothing to do",
                          highlight=False)
            return
        held += _writers(loaded, store, url)  # kept until the end: no writer starts meanwhile
        if dry_run:
            target = backup_to / upgrade.backup_name(url, state, _now())
            console.print(f"store {name}: {_state(state)}; would back it up to {target}, verify the copy, "
                          f"then migrate it to revision {database.HEAD_REVISION} (dry run: nothing changed)",
                          highlight=False)
            return
        try:
            result = upgrade.upgrade(engine, url, backup_to)
        except OSError as exc:
            # The backup comes first: a folder this user may not make or write (root's /var/backups
            # as the service user) stops it before anything is migrated. Named by the option, not
            # as a bare "[Errno 13]".
            where = Path(exc.filename).absolute() if isinstance(exc.filename, str) else None
            folder = backup_to.absolute()
            # The folder itself, a file in it, or a parent that had to be made for it.
            if where is None or not (where == folder or folder in where.parents or where in folder.parents):
                raise
            raise fail(f"--backup-to {backup_to}: the backup cannot be written there ({exc.strerror}: {where}); "
                       "nothing was migrated. Give a folder this user may write, or make one for it first "
                       "(docs/deployment.md, \"Upgrades\")") from None
    finally:
        engine.dispose()
        for fd in held:
            os.close(fd)
    console.print(f"backup: {result.backup} ({result.before.events} events, revision "
                  f"{result.before.revision or 'none'}, verified)", highlight=False)
    console.print(f"store {result.store}: before {_state(result.before)}; after {_state(result.after)}",
                  highlight=False)
    verify = "pacsguard audit verify" + (f" --store {store}" if store else "")
    console.print(f"[bold green]migrated[/]; check every seal with `{verify}`", highlight=False)


def _writers(loaded: LoadedConfig, store: str | None, url: str) -> list[int]:
    """Lock the write-ahead journals of an SQLite store, or stop: a `serve` or `gateway run` still
    running (the old version, during an upgrade) holds its journal's lock and would go on writing
    rows the new schema does not expect, under the migration or after it (docs/store.md,
    "Journal"). Returns the locked descriptors. A journal that does not exist has no writer, and
    is not created here: made by root, it would keep the service user out of it."""
    from pacsguard.runtime.outputs import journal_setting
    from pacsguard.store import database

    journals = [Path(url[len(_SQLITE):] + ".journal")] if url.startswith(_SQLITE) else []
    if store is None and journals:
        setting = journal_setting(loaded.config.store.journal, loaded.resolve)
        if isinstance(setting, Path):
            journals = [setting]
        elif setting is False:
            journals = []  # store.journal: none: nothing here shows a running writer
    held: list[int] = []
    try:
        for journal in journals:
            try:
                fd = os.open(journal, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            held.append(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise fail(f"store {database.describe(url)} is in use: a running pacsguard (serve, gateway run) "
                           f"holds its journal {journal}; stop it first (systemctl stop pacsguard) and run "
                           "store migrate again. Nothing was migrated") from None
    except BaseException:
        for fd in held:
            os.close(fd)
        raise
    return held


def _state(state: StoreState) -> str:
    return f"revision {state.revision or 'none'}, {state.events} events"


def _now() -> datetime:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)
