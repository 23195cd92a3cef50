"""Opening the database behind the store: SQLite (WAL) by default, PostgreSQL by URL.

Turns driver errors into `StoreError`s that name the file or host; creates new stores and runs the
Alembic migrations of old ones, the latter only when asked (`migrate`).
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import create_engine, event, inspect, select, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, DBAPIError

from pacsguard.owner_only import create_private_file
from pacsguard.store.errors import StoreError
from pacsguard.store.schema import STORE_FORMAT, meta

if TYPE_CHECKING:
    from alembic.config import Config

_ALEMBIC_INI = Path(__file__).with_name("alembic.ini")

#: The Alembic revision of the newest store schema: the head of migrations/versions/ (a test holds
#: the two together). Opening a store at this revision reads it with one query and loads no Alembic
#: (~0.2 s of imports and migration scripts); a store at an older revision is refused until
#: `pacsguard store migrate` upgrades it.
HEAD_REVISION = "0004"
WRITE = "pacsguard_write"  # execution option that marks a writing transaction
#: The PostgreSQL advisory lock key that serialises migrations (any fixed 64-bit number of our own).
MIGRATION_LOCK = 0x7061637367756172
#: How long an SQLite opener or writer waits for another's lock before "database is locked".
SQLITE_BUSY_TIMEOUT_S = 30


def normalise_target(target: str) -> str:
    """A path becomes an SQLite URL; `postgresql://` gets the psycopg (v3) driver."""
    if "://" not in target:
        return "sqlite:///" + str(Path(target).expanduser().resolve())
    if target.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + target.split("://", 1)[1]
    return target


def describe(url: str) -> str:
    """The store named for messages: the file path, or host:port/db with no password."""
    parsed = _parse(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.database or ":memory:"
    # libpq also takes the host and port as query parameters: the only way to name a unix socket's
    # folder in a URL (PostgreSQL docs, "Connection URIs"), e.g. postgresql://u@/db?host=/run/postgresql
    host = parsed.host or _query_value(parsed, "host") or "localhost"
    port = parsed.port or _query_value(parsed, "port") or 5432
    return f"{parsed.get_backend_name()}://{host}:{port}/{parsed.database}"


def _query_value(parsed: URL, name: str) -> str | None:
    """A query parameter of the URL (the first, when it is repeated)."""
    value = parsed.query.get(name)
    if isinstance(value, tuple):
        value = value[0] if value else None
    return value or None


def _parse(url: str) -> URL:
    """``url`` parsed, or a StoreError naming it without its password: SQLAlchemy raises
    ArgumentError for a URL it cannot split, and a bare ValueError for a port that is not a number
    (``host:5432x``, an IPv6 address without its brackets' end), which reached the administrator as
    an internal error."""
    try:
        return make_url(url)
    except ArgumentError:
        why = "it is not of the form postgresql://USER@HOST:PORT/DATABASE"
    except ValueError:
        why = "its port is not a number (an IPv6 address goes in brackets: [::1]:5432)"
    raise StoreError(f"store URL {_without_password(url)} is not valid: {why}")


def _without_password(url: str) -> str:
    """A URL too broken to parse, shown without the password of its userinfo (RFC 3986 3.2.1) or of
    its query (libpq's ``password=``, ``sslpassword=``): the message goes to a terminal and logs."""
    scheme, sep, rest = url.partition("://")
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    userinfo, at, host = rest[:end].rpartition("@")
    authority = f"{userinfo.split(':', 1)[0]}@{host}" if at else host
    tail = re.sub(r"(?i)(password=)[^&#]*", r"\1***", rest[end:])
    return f"{scheme}{sep}{authority}{tail}"


def make_engine(url: str, *, create: bool) -> Engine:
    parsed = _parse(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        path = Path(parsed.database or "")
        if not create and not path.exists():
            # Neutral: the caller knows how the path was named (--store or a configuration) and what
            # to advise (pacsguard.cli.common.missing_store).
            raise StoreError(f"{path}: no store here (`pacsguard init` creates the configuration's store)")
        if create:
            # Made 0600 before SQLite opens it: SQLite gives the file the umask's mode (0644 under
            # umask 022) and copies the file's mode to its -wal and -shm files.
            create_private_file(path)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "isolation_level": None})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "connect", _strict_text(describe(url)))
        # pysqlite's own transaction handling cannot take the write lock up front: BEGIN IMMEDIATE does,
        # so two writers serialise instead of failing on upgrade from a read lock. Readers use a plain
        # BEGIN, so a search never waits for the writer's fsync (WAL readers do not block writers).
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql(
            "BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN"))
        return engine
    if backend == "postgresql":
        # client_encoding utf8: a SQL_ASCII database would otherwise hand back bytes, which SQLAlchemy
        # cannot even read the server version from; `_check_encoding` then refuses it by name.
        # connect_args win over the URL's query: a connect_timeout the administrator gave in the URL
        # (libpq's parameter) was silently replaced by ours, so only set it when the URL has none.
        connect_args: dict[str, object] = {"client_encoding": "utf8"}
        if "connect_timeout" not in parsed.query:
            connect_args["connect_timeout"] = 10
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    raise StoreError(f"store URL {describe(url)}: only sqlite and postgresql stores are supported")


def _sqlite_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
    cur = dbapi_conn.cursor()
    # First: switching a fresh file to WAL takes an exclusive lock, and writers started together
    # must wait for it rather than fail with "database is locked".
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    # 16 KiB pages: sealed records are ~0.5-1 KB and six B-trees grow per event; measured 1.4x
    # the ingest rate of the 4 KiB default (bench/store.py). Only takes effect on a new file,
    # so it must come before WAL is switched on.
    cur.execute("PRAGMA page_size=16384")
    _switch_to_wal(cur)
    # FULL: an acknowledged event survives power loss, not only a killed process.
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA cache_size=-65536")  # 64 MiB: keeps the index B-trees' hot pages in memory
    # A query the planner misjudges should read what it reads, not first build a temporary index
    # over the whole store (it did for a join of the patient search, on a 10M-event file).
    cur.execute("PRAGMA automatic_index=OFF")
    cur.close()


class UndecodableText(StoreError):
    """A TEXT value of an SQLite store that is not valid UTF-8: SQLite keeps whatever bytes an edit
    writes (``CAST(x'ff' AS TEXT)``), pacsguard never stores such text. Raised while rows are read,
    in place of sqlite3's "Could not decode to UTF-8 column 'body' with text '...'", whose message
    echoes the value (a sealed record holds patient data). It names the store, not the row: the
    reader that knows the row (the search, by seq) reads the value as a BLOB and names it itself."""


def _strict_text(where: str) -> Callable[[sqlite3.Connection, object], None]:
    """A connect listener that makes the connection decode TEXT strictly as UTF-8 (as sqlite3's own
    default does), raising `UndecodableText`, which carries no byte of the value, on failure."""
    message = (f"{where}: the store is damaged: a text value in it is not valid UTF-8 (SQLite keeps whatever "
               "bytes an edit writes; pacsguard never stores such text): the store was edited outside pacsguard; "
               "run `pacsguard audit verify` to see what else is, and restore a backup")

    def decode(value: bytes) -> str:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise UndecodableText(message) from None

    def listener(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        dbapi_conn.text_factory = decode

    return listener


def _switch_to_wal(cur: sqlite3.Cursor) -> None:
    """Switch the file to WAL (a no-op once it is). On a fresh file every opener reads the header
    under a shared lock and then wants the exclusive lock; SQLite answers all but one "database is
    locked" at once, without waiting the busy timeout (waiting would deadlock), so the losers try
    again until the file is WAL or the timeout has passed."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


MIGRATE_COMMAND = "pacsguard store migrate --backup-to DIR"


def check_or_create(engine: Engine, url: str, *, create: bool,
                    initialise: Callable[[Connection], None]) -> bool:
    """Make sure the database is a pacsguard store at the newest schema. Returns True if it was new.

    A store already at the head is checked with a read and no lock. A store at an older revision is
    refused, by writers and readers alike: upgrading the audit trail is an administrator's explicit
    step with a backup first (`migrate`). A new store is created (``initialise``) at the head in one
    transaction under a lock that every opener takes (PostgreSQL: a transaction-level advisory lock;
    SQLite: the write lock of BEGIN IMMEDIATE), and the state is read again once the lock is held: of
    any number of gateways and sensors that start together against a fresh store, one creates it and
    the others find it made."""
    where = describe(url)
    with _store_errors(where):
        with engine.connect() as conn:
            _check_encoding(conn, where)
            state = _state(conn, where, create=create)
            if state == "current":
                return False
            if state == "old":
                raise StoreError(outdated_message(where, revision(conn)))
        with _locked(engine) as conn:
            state = _state(conn, where, create=create)
            if state == "old":
                raise StoreError(outdated_message(where, revision(conn)))
            if state == "new":
                _upgrade(conn)
                initialise(conn)
    return state == "new"


def migrate(engine: Engine, url: str) -> tuple[str | None, str]:
    """Upgrade an existing pacsguard store to HEAD_REVISION under the migration lock, in one
    transaction. Returns its revision before and after; a store already at the head is left alone."""
    where = describe(url)
    with _store_errors(where), _locked(engine) as conn:
        before = revision(conn)
        if _state(conn, where, create=False) == "old":
            _check_known(where, before)
            _upgrade(conn)
    return before, HEAD_REVISION


def store_revision(engine: Engine, url: str) -> str | None:
    """The schema revision of an existing pacsguard store (None: made before revisions were recorded)."""
    where = describe(url)
    with _store_errors(where), engine.connect() as conn:
        _state(conn, where, create=False)
        return revision(conn)


def revision(conn: Connection) -> str | None:
    found = _revisions(conn, set(inspect(conn).get_table_names()))
    return found[0] if len(found) == 1 else None


def outdated_message(where: str, found: str | None) -> str:
    """Why an older store is not opened, and the one command that upgrades it."""
    return (f"{where}: the store is at schema revision {found or 'none'}, this pacsguard needs revision "
            f"{HEAD_REVISION}; it does not migrate the audit trail on its own: stop what writes to it, "
            f"then run `{MIGRATE_COMMAND}` (it backs the store up first)")


def _check_encoding(conn: Connection, where: str) -> None:
    """PostgreSQL must store text as UTF-8: a SQL_ASCII database (initdb's default under LC_ALL=C)
    hands text back as bytes and accepts any byte sequence, which a patient's name in another
    script would turn into mojibake in the audit trail (psycopg's docs on SQL_ASCII)."""
    if conn.dialect.name != "postgresql":
        return
    encoding = conn.execute(text("SHOW server_encoding")).scalar()
    if isinstance(encoding, bytes):
        encoding = encoding.decode("ascii", "replace")
    if str(encoding).upper() not in ("UTF8", "UTF-8"):
        raise StoreError(f"{where}: the database's encoding is {encoding}; pacsguard stores UTF-8 text: "
                         "create the database with ENCODING 'UTF8' (createdb -E UTF8 -T template0 NAME)")


@contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """A writing transaction holding the migration lock."""
    with engine.execution_options(**{WRITE: True}).begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        yield conn


@contextmanager
def _store_errors(where: str) -> Iterator[None]:
    """Driver errors become StoreErrors that name the store."""
    try:
        yield
    except DatabaseError as exc:
        if "file is not a database" in str(exc.orig):
            raise StoreError(f"{where}: not a pacsguard store (not an SQLite database)") from None
        raise StoreError(f"{where}: cannot open the store: {first_line(exc)}{_read_only_hint(where, exc)}"
                         f"{_postgresql_hint(where, exc)}") from None
    except DBAPIError as exc:
        raise StoreError(f"{where}: {first_line(exc)}") from None
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{where}: not a pacsguard store ({exc})") from None


#: PostgreSQL's refusals that name no setting, and the settings they are about: the administrator
#: reads "password authentication failed" with no word of where pacsguard took the password from.
_POSTGRESQL_HINTS = (
    ("password authentication failed", " (the password is store.password in pacsguard.yaml; with --store, "
     "PGPASSWORD or ~/.pgpass)"),
    ("no password supplied", " (give the password as store.password in pacsguard.yaml; with --store, "
     "PGPASSWORD or ~/.pgpass)"),
    ("permission denied for schema", " (this role may not create the store's tables: create the store once "
     "as the database's owner with `pacsguard init`, then let this role write to it; docs/store.md, "
     "\"An append-only role for the services\")"),
)


def _postgresql_hint(where: str, exc: DatabaseError) -> str:
    """Which setting a PostgreSQL refusal is about (see `_POSTGRESQL_HINTS`); "" for others."""
    if not where.startswith("postgresql://"):
        return ""
    message = str(exc.orig)
    return next((hint for needle, hint in _POSTGRESQL_HINTS if needle in message), "")


def _read_only_hint(where: str, exc: DatabaseError) -> str:
    """Why SQLite cannot open a store in a folder it cannot write (a write-blocked evidence copy, a
    snapshot mounted read-only, a folder of another owner): in WAL mode even a reader makes FILE-shm
    beside the file (sqlite.org/wal.html, "Read-Only Databases"), and SQLite only says "unable to
    open database file"."""
    folder = Path(where).parent
    if "unable to open database file" not in str(exc.orig) or "://" in where:
        return ""
    if _others(where) and not os.access(where, os.R_OK | os.W_OK):
        # The file itself is another user's (made by `sudo pacsguard init`): SQLite names no cause.
        # (One of this user's that cannot be written is on a read-only file system: below.)
        from pacsguard.owner_only import runs_as, whose

        return (f" (the file is {whose(Path(where))}, and this process runs as {runs_as()}: make it "
                f"{runs_as().split(':')[0]}'s, or run as the user that owns it)")
    if os.access(folder, os.W_OK):
        return ""
    return (f" (its folder {folder} cannot be written: a read-only file system, or a folder this user may not "
            "write to; an SQLite store in WAL mode is read through a -shm file made beside it: copy the store "
            "with its -wal file to a writable folder and open the copy, or run as the store's owner)")


def _others(path: str) -> bool:
    """Whether ``path`` exists and belongs to another user than the one this process runs as."""
    try:
        return os.stat(path).st_uid != os.geteuid()
    except OSError:
        return False


def _check_known(where: str, found: str | None) -> None:
    """A revision this code's migration scripts do not know (a newer pacsguard wrote it) is refused:
    Alembic cannot upgrade from it, and downgrading an audit trail is not pacsguard's to do."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    if found is None:
        return
    try:
        ScriptDirectory.from_config(_alembic_config()).get_revision(found)
    except CommandError:
        raise StoreError(f"{where}: schema revision {found} is not one this pacsguard knows (its newest is "
                         f"{HEAD_REVISION}): a newer pacsguard wrote it; install that version") from None


def _state(conn: Connection, where: str, *, create: bool) -> str:
    """"new" (empty: to be created), "old" (a pacsguard store to upgrade) or "current"; anything else
    is refused."""
    tables = set(inspect(conn).get_table_names())
    if "pacsguard_meta" not in tables:
        if tables - {"alembic_version"}:
            raise StoreError(f"{where}: not a pacsguard store (it has tables {sorted(tables)[:5]}, "
                             "but no pacsguard_meta)")
        if not create:
            raise StoreError(f"{where}: empty database, not a pacsguard store (run `pacsguard init`)")
        return "new"
    fmt = conn.execute(select(meta.c.value).where(meta.c.key == "format")).scalar()
    if fmt is None:  # the table is there, its row is not: a cut or damaged file, or a hand edit
        raise StoreError(f"{where}: a pacsguard store whose format record is missing: the database is "
                         "damaged (a cut file?); restore it from a backup and verify that")
    if fmt != STORE_FORMAT:
        raise StoreError(f"{where}: not a pacsguard store (format {fmt!r})")
    if _revisions(conn, tables) == [HEAD_REVISION]:
        return "current"
    # Only on this path, so opening a current store stays one query: a damaged version table
    # reads as no revision or a wrong one, and must not send the administrator to `migrate`.
    _refuse_damaged(conn, where, tables & {"alembic_version", meta.name})
    return "old"


#: Findings of SQLite's quick_check shown in the message (it lists up to 100).
_SHOWN_FINDINGS = 3


def _refuse_damaged(conn: Connection, where: str, tables: set[str]) -> None:
    """StoreError with SQLite's own findings when its page check (PRAGMA quick_check, sqlite.org
    pragma.html#pragma_quick_check) finds ``tables`` damaged: the records the revision is read from,
    so a refused old store is not read page by page at every start. PostgreSQL checks its pages
    itself and fails the query that meets a damaged one."""
    if conn.dialect.name != "sqlite":
        return
    found: list[str] = []
    for table in sorted(tables):
        found += [line for row in conn.exec_driver_sql(f'PRAGMA quick_check("{table}")')
                  for line in str(row[0]).splitlines()]
    # "ok" per table when clean; "*** in database main ***" heads a list: a title, not a finding.
    findings = [f for f in found if f != "ok" and not f.startswith("*** ")]
    if not findings:
        return
    more = f" and {len(findings) - _SHOWN_FINDINGS} more" if len(findings) > _SHOWN_FINDINGS else ""
    raise StoreError(f"{where}: the database is damaged (SQLite's quick_check: "
                     f"{'; '.join(findings[:_SHOWN_FINDINGS])}{more}): its schema revision cannot be trusted "
                     "and a damaged store is not migrated; restore the store from a backup and run "
                     "`pacsguard audit verify` on it")


def _revisions(conn: Connection, tables: set[str]) -> list[str]:
    """The revisions Alembic recorded in the store (its version table; none if it has no such table)."""
    if "alembic_version" not in tables:
        return []
    return [row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))]


def _alembic_config() -> Config:
    from alembic.config import Config

    cfg = Config(str(_ALEMBIC_INI))
    cfg.set_main_option("script_location", str(_ALEMBIC_INI.parent / "migrations"))
    return cfg


def _upgrade(conn: Connection) -> None:
    from alembic import command

    cfg = _alembic_config()
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")


#: sqlite3's message for TEXT it cannot decode ends with the value itself (CPython's
#: Modules/_sqlite/cursor.c: "Could not decode to UTF-8 column '%s' with text '%s'").
_ECHOED_TEXT = re.compile(r"( column '[^']*') with text '.*", re.DOTALL)


def without_text(message: str) -> str:
    """A driver's message without the stored value sqlite3 quotes in it when it cannot decode TEXT
    (a sealed record holds patient data: no error line echoes it). The connections pacsguard opens
    decode TEXT themselves (`UndecodableText`); this guards any message that still quotes it."""
    return _ECHOED_TEXT.sub(r"\1 (the value is not valid UTF-8; not shown)", message)


def first_line(exc: BaseException) -> str:
    """A database failure for one line: the driver's own first line, without SQLAlchemy's wrapper
    (the SQL, a link to its documentation) and without any text it cannot decode."""
    text = without_text(str(getattr(exc, "orig", None) or exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__
