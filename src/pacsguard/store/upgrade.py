"""The explicit upgrade of a store's schema: a verified backup first, then the Alembic migrations.

SQLite is copied with its online backup API (a consistent snapshot even while readers hold it) and
the copy is checked (PRAGMA integrity_check, same event count) before anything is migrated.
PostgreSQL is dumped with `pg_dump -Fc` and the dump is read back with `pg_restore --list`; without
pg_dump on PATH the upgrade is refused rather than run without a backup.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.engine import Engine, make_url

from pacsguard.owner_only import create_private_file, make_private_dir
from pacsguard.store import database
from pacsguard.store.errors import StoreError
from pacsguard.store.schema import events

#: How long pg_dump may take before the upgrade gives up (a large store dumps in minutes, not hours).
PG_DUMP_TIMEOUT = 3600.0


@dataclass(frozen=True, slots=True)
class StoreState:
    """A store's schema revision and how many events it holds."""

    revision: str | None
    events: int


@dataclass(frozen=True, slots=True)
class UpgradeResult:
    store: str
    before: StoreState
    after: StoreState
    backup: Path | None  # None when the store was already at the head (nothing to back up for)


def read_state(engine: Engine, url: str) -> StoreState:
    """The revision and event count of an existing pacsguard store, at any revision."""
    rev = database.store_revision(engine, url)
    with engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(events)).scalar_one()
    return StoreState(rev, int(count))


def backup_name(url: str, state: StoreState, now: datetime) -> str:
    """<store name>-rev<revision>-<UTC time>.<db|dump>: the revision says which pacsguard reads it back."""
    parsed = make_url(url)
    sqlite = parsed.get_backend_name() == "sqlite"
    stem = Path(parsed.database or "store").stem if sqlite else (parsed.database or "store")
    stamp = now.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stem}-rev{state.revision or 'none'}-{stamp}.{'db' if sqlite else 'dump'}"


def backup(url: str, state: StoreState, folder: Path, *, now: datetime | None = None) -> Path:
    """A verified copy of the store in ``folder`` (made 0700 if missing; the copy 0600)."""
    make_private_dir(folder)
    dest = folder / backup_name(url, state, now or datetime.now(timezone.utc))
    if dest.exists():
        raise StoreError(f"{dest}: a backup of that name exists already; not overwriting it")
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        _backup_sqlite(Path(parsed.database or ""), dest, state)
    else:
        _backup_postgresql(url, dest)
    return dest


def upgrade(engine: Engine, url: str, folder: Path) -> UpgradeResult:
    """Back the store up into ``folder``, verify the copy, then migrate it to HEAD_REVISION."""
    name = database.describe(url)
    before = read_state(engine, url)
    if before.revision == database.HEAD_REVISION:
        return UpgradeResult(name, before, before, None)
    copy = backup(url, before, folder)
    database.migrate(engine, url)
    after = read_state(engine, url)
    if after.events != before.events:
        raise StoreError(f"{name}: held {before.events} events before migrating and {after.events} after; "
                         f"the backup {copy} holds the store as it was")
    return UpgradeResult(name, before, after, copy)


def _backup_sqlite(source: Path, dest: Path, state: StoreState) -> None:
    create_private_file(dest)
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        try:
            out = sqlite3.connect(dest)
            try:
                src.backup(out)
                # One self-contained file: the copy inherits WAL mode from the store's header.
                out.execute("PRAGMA journal_mode=DELETE")
            finally:
                out.close()
        finally:
            src.close()
        _verify_sqlite_copy(dest, state)
    except (sqlite3.Error, StoreError) as exc:
        dest.unlink(missing_ok=True)
        raise StoreError(f"{dest}: the backup of {source} failed, nothing was migrated: {exc}") from None


def _verify_sqlite_copy(dest: Path, state: StoreState) -> None:
    copy = sqlite3.connect(f"file:{dest}?mode=ro", uri=True)
    try:
        problems = [row[0] for row in copy.execute("PRAGMA integrity_check")]
        if problems != ["ok"]:
            raise StoreError(f"integrity_check of the copy: {'; '.join(problems[:3])}")
        count = copy.execute("SELECT count(*) FROM events").fetchone()[0]
    finally:
        copy.close()
    if count != state.events:
        raise StoreError(f"the copy holds {count} events, the store {state.events}")


def _backup_postgresql(url: str, dest: Path) -> None:
    pg_dump, pg_restore = shutil.which("pg_dump"), shutil.which("pg_restore")
    if pg_dump is None or pg_restore is None:
        raise StoreError("pg_dump and pg_restore are needed to back up a PostgreSQL store before migrating "
                         "(Debian: apt install postgresql-client); nothing was migrated")
    parsed = make_url(url)
    # The password goes through the environment, never the command line (other users can read argv).
    plain = parsed.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    env = {**os.environ, **({"PGPASSWORD": str(parsed.password)} if parsed.password is not None else {})}
    create_private_file(dest)
    try:
        _run([pg_dump, "--format=custom", f"--file={dest}", f"--dbname={plain}"], env)
        listing = _run([pg_restore, "--list", str(dest)], env)
        if " TABLE DATA public events " not in listing:
            raise StoreError("the dump has no data of the events table")
    except StoreError as exc:
        dest.unlink(missing_ok=True)
        raise StoreError(f"{dest}: the backup of {database.describe(url)} failed, nothing was migrated: "
                         f"{exc}") from None


def _run(argv: list[str], env: dict[str, str]) -> str:
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=PG_DUMP_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StoreError(f"{Path(argv[0]).name}: {exc}") from None
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise StoreError(f"{Path(argv[0]).name} exited {done.returncode}: {lines[-1] if lines else ''}")
    return done.stdout
