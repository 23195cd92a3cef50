"""What every command shares: the console, exit codes, loading the config and opening the store.

Exit codes (documented in docs/cli.md): 0 ok, 1 findings (verify found tampering, a check failed),
2 usage, configuration or environment error. No command shows a traceback for a known error.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import stat
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import typer

from pacsguard.runtime.outputs import open_config_store
from pacsguard.runtime.part import MissingDependency
from pacsguard.store.errors import StoreError

if TYPE_CHECKING:
    from pydantic import BaseModel
    from rich.console import Console

    from pacsguard.config.loader import LoadedConfig
    from pacsguard.ids import IdsSettings
    from pacsguard.store import EventStore

    console: Console
    err_console: Console

__all__ = ["CONFIG_OPTION", "EXIT_FINDINGS", "EXIT_OK", "EXIT_USAGE", "STORE_OPTION", "LogLevel", "config_path",
           "console", "err_console", "fail", "guarded", "load", "load_ids_section", "log_level_option", "open_store",
           "print_error", "print_rule_problems", "shown"]

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2
#: `ids read` / `ids live`: the capture could not be read completely (docs/ids.md).
EXIT_INCOMPLETE = 7  # not 3-6: those are audit verify --witness findings (docs/cli.md)
#: A bug in pacsguard (sysexits.h EX_SOFTWARE): named on one line, the traceback with PACSGUARD_DEBUG=1.
EXIT_INTERNAL = 70
#: The reader of stdout went away (`... | head`): 128 + SIGPIPE, what a shell reports for a Unix tool
#: that SIGPIPE ended.
EXIT_PIPE_CLOSED = 141

#: The two consoles, made on first use (PEP 562) so that a command's --help never loads rich.
_CONSOLES = {"console": False, "err_console": True}


def __getattr__(name: str) -> Any:
    stderr = _CONSOLES.get(name)
    if stderr is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # Kept as the module's attribute: later uses get this same console, as when it was made at import.
    made = globals()[name] = new_console(stderr=stderr)
    return made


#: The width rich lays out piped output to: wider than any row (tables never fill it: they take
#: the width their cells need).
PIPED_WIDTH = 1 << 16


def new_console(**options: Any) -> Console:
    """A rich Console (``options`` as rich takes them) whose broken pipe is a BrokenPipeError, which
    `guarded` turns into exit 141: rich's own answer is SystemExit(1), which scripts read as
    "found something" (`audit verify | true` exited 1 on a clean store)."""
    from rich.console import Console

    class PipedConsole(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError(errno.EPIPE, "the reader of the output went away")

    made = PipedConsole(**options)
    if not made.is_terminal:
        # Piped or redirected: a line is never folded at rich's default 80 columns (a store path
        # cut in the middle, a table's finding over several lines: docs/cli.md "never folded or
        # cut"); a table takes the width its cells need.
        made.soft_wrap = True
        made.width = PIPED_WIDTH
    return made


def _err_console() -> Console:
    """The stderr console, for this module's own messages (a bare global name would skip __getattr__)."""
    made: Console = sys.modules[__name__].err_console
    return made

F = TypeVar("F", bound=Callable[..., object])
M = TypeVar("M", bound="BaseModel")  # a configuration model, as config.loader.validate_model takes it

CONFIG_OPTION = typer.Option(None, "--config", "-c", envvar="PACSGUARD_CONFIG",
                             help="pacsguard.yaml to use (default: ./pacsguard.yaml)")
STORE_OPTION = typer.Option(None, "--store", help="store path (SQLite) or postgresql:// URL; overrides the config")


class LogLevel(str, Enum):
    """`--log-level` of the long-running commands: a choice, so that a word logging does not know
    (`verbose`) is a usage error naming the choices (exit 2), not an internal error (exit 70)."""

    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


def log_level_option(default: LogLevel) -> Any:
    """The `--log-level` option, case-insensitive as logging's own names are (`DEBUG` works)."""
    return typer.Option(default, "--log-level", case_sensitive=False, help="how much the log says")


def validate_options(model: type[M], data: object, options: dict[str, str], prefix: str = "") -> M:
    """``model`` validated from what a command's options gave (`gateway run`, `atna listen`), each
    problem named by the option that gave the value, not by a configuration key the administrator
    never wrote: ``options`` maps a key path (and everything under it) to its option."""
    from pacsguard.config.loader import ConfigError, ConfigProblem, validate_model

    try:
        return validate_model(model, data, "command line", prefix=prefix)
    except ConfigError as exc:
        named = []
        for problem in exc.problems:
            under = [k for k in options if problem.key == k or problem.key.startswith(k + ".")]
            named.append(ConfigProblem(options[max(under, key=len)], problem.message) if under else problem)
        raise ConfigError(exc.source, named) from None


def quiet_libraries() -> None:
    """pynetdicom (the demo PACS) and Alembic (a new store's schema) narrate every step at INFO: the
    long-running commands keep their warnings only, unless --log-level debug asks for everything.
    pynetdicom also logs a peer that refuses or cannot be reached at ERROR, naming neither route nor
    destination, which pacsguard's own events say with both (gateway.object.delayed, .in-doubt): its
    lines are kept for debug only."""
    import logging

    level = logging.getLogger().level
    logging.getLogger("alembic").setLevel(max(logging.WARNING, level))
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if level <= logging.DEBUG else logging.CRITICAL)


def shown(text: object) -> str:
    """Text from the network, files or archives inside rich markup: its control characters made
    visible (`layout.printable`) and its square brackets escaped, so that it can neither drive the
    terminal nor be read as markup (a stray "[/x]" would be an error)."""
    from rich.markup import escape

    from pacsguard.cli.layout import printable

    return escape(printable(str(text)))


def print_error(message: object) -> None:
    """One red "error:" line on stderr. Messages quote paths, configuration values, peers' data:
    shown as text, never as markup."""
    _err_console().print(f"[bold red]error:[/] {shown(message)}", highlight=False, soft_wrap=True)


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    print_error(message)
    return typer.Exit(code)


def guarded(func: F) -> F:
    """Known errors become one red line and exit 2, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            result = func(*args, **kwargs)
            # Flushed here, not by click at exit: there a reader gone away is a silent exit 1
            # (click's EPIPE handling), and a full disk a traceback.
            sys.stdout.flush()
            return result
        except BrokenPipeError as exc:
            if stdout_closed():
                raise typer.Exit(EXIT_PIPE_CLOSED) from None
            raise fail(str(exc)) from None
        except (StoreError, LookupError, OSError, MissingDependency) as exc:
            if isinstance(exc, OSError) and stdout_fails(exc):
                raise fail(f"cannot write the output: {exc.strerror or exc}") from None
            raise fail(str(exc)) from None
        except Exception as exc:
            # A configuration (or rule file) can only be broken if its module was loaded: no import
            # here otherwise (the configuration loader brings pydantic and yaml, ~50 ms).
            loader = sys.modules.get("pacsguard.config.loader")
            if loader is not None and isinstance(exc, loader.ConfigError):
                for problem in exc.problems:
                    print_error(f"{exc.source}: {problem}")
                raise typer.Exit(EXIT_USAGE) from None
            database = sys.modules.get("sqlalchemy.exc")
            if database is not None and isinstance(exc, database.DBAPIError):
                # The store's database failed under a query (a damaged page, a dropped table, a
                # server gone): the store cannot be read, not a bug (docs/store.md, exit 2).
                from pacsguard.store.database import without_text

                raise fail(f"the store's database failed: {without_text(str(exc.orig or exc))}; `pacsguard audit "
                           "verify` tells what is damaged") from None
            tls = sys.modules.get("pacsguard.tls.contexts")
            if tls is not None and isinstance(exc, tls.TLSConfigError):  # names the file and what is wrong
                raise fail(str(exc)) from None
            rules = sys.modules.get("pacsguard.ids.rules")
            if rules is not None and isinstance(exc, rules.RuleError):
                raise print_rule_problems(exc) from None
            if _ends_on_purpose(exc) or os.environ.get("PACSGUARD_DEBUG"):
                raise
            # A bug: one line that names it, not a traceback for the administrator to read.
            print_error(f"internal error: {type(exc).__name__}: {exc} (a bug in pacsguard; "
                        "PACSGUARD_DEBUG=1 shows the traceback)")
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper  # type: ignore[return-value]


def stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (POLLERR on its write end, Linux pipe(7)), as
    when `pacsguard audit search | head` has its lines. Then the command stops quietly, as Unix tools
    do on SIGPIPE, and stdout is pointed at /dev/null: Python's flush of it at exit would fail again
    and print "Exception ignored". Another broken pipe (a socket) is an error as before."""
    import select

    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        if not any(events & select.POLLERR for _, events in poller.poll(0)):
            return False
        _point_at_devnull(fd)
    except (OSError, ValueError, AttributeError):  # stdout closed, replaced (tests), or no file
        return False
    return True


def _point_at_devnull(fd: int) -> None:
    """Make ``fd`` (stdout) write to /dev/null: Python's flush of it at exit then cannot fail again
    and print "Exception ignored"."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def stdout_fails(exc: OSError) -> bool:
    """Whether ``exc`` (naming no file) is stdout's: `> file` on a full file system, or `1< file`
    (EBADF: stdout open for reading). Then stdout is pointed at /dev/null (`_point_at_devnull`)."""
    if exc.filename is not None or exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EBADF):
        return False
    try:
        fd = sys.stdout.fileno()
        if exc.errno == errno.EBADF:
            # `1< file`: stdout open for reading only, so no write to it can succeed
            if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY:
                return False
        elif not stat.S_ISCHR(os.fstat(fd).st_mode) and os.fstatvfs(fd).f_bavail:
            return False  # a file system with room (a device, /dev/full, has none to tell)
        _point_at_devnull(fd)
    except (OSError, ValueError, AttributeError):  # stdout closed or replaced (tests)
        return False
    return True


def _ends_on_purpose(exc: Exception) -> bool:
    """typer.Exit, typer.Abort and the usage errors (TyperException): how a command ends on purpose."""
    return isinstance(exc, (typer.Exit, typer.Abort, typer.exceptions.TyperException))


def config_path(explicit: Path | None) -> Path:
    return explicit if explicit is not None else Path(os.environ.get("PACSGUARD_CONFIG", "pacsguard.yaml"))


def load(explicit: Path | None, *, required: bool = True) -> LoadedConfig:
    """Load the configuration; without a file (and not required) the defaults apply."""
    from pacsguard.config.loader import LoadedConfig, default_model, load_config

    path = config_path(explicit)
    if not path.exists() and not required and explicit is None:
        return LoadedConfig(default_model()(), None)
    return load_config(path)


def open_store(loaded: LoadedConfig, override: str | None = None, *, writer: bool = False,
               create: bool = False) -> EventStore:
    """The store a command reads or writes (--store, else the configuration's store.url); an SQLite
    store that is not there is told with advice that fits how it was named (`missing_store`)."""
    try:
        return open_config_store(loaded, override, writer=writer, create=create)
    except StoreError:
        missing = None if create else missing_store(loaded, override)
        if missing is None:
            raise
        raise missing from None


def missing_store(loaded: LoadedConfig, override: str | None) -> StoreError | None:
    """Why the SQLite store named by ``override`` (--store) or by the configuration is not there, with
    what to do about it; None when it is there or not an SQLite file. The advice fits what the
    administrator typed: "or give --store" to one who gave --store sent them back to the option that
    was wrong."""
    from pacsguard.store.database import normalise_target
    from pacsguard.store.location import store_target

    # The path only: a PostgreSQL URL's password is not needed to tell an SQLite file missing.
    target = normalise_target(override if override is not None else store_target(loaded.config.store.url,
                                                                                  loaded.resolve))
    prefix = "sqlite:///"
    if not target.startswith(prefix) or Path(target[len(prefix):]).exists():
        return None
    path = target[len(prefix):]
    if override is not None:
        return StoreError(f"{path}: no store at the path given with --store; check it (`pacsguard config "
                          "show` prints the configuration's store.url, where `pacsguard init` made it)")
    if loaded.path is None:
        return StoreError(f"{path}: no store here (store.url's default; no configuration file); run "
                          "`pacsguard init` to create both, or give --store PATH-or-URL")
    return StoreError(f"{path}: no store here (store.url of {loaded.path}); create it with `pacsguard init "
                      f"-c {loaded.path}`, or give --store PATH-or-URL to read another store")


def load_ids_section(data: object, source: str, base: Path) -> IdsSettings:
    """An `ids:` section read from a --settings file, validated by the IDS's own model (errors name
    `ids.<key>`), with relative rules_dirs taken from ``base``."""
    from pacsguard.config.loader import ConfigError, ConfigProblem, validate_model
    from pacsguard.ids import IdsSettings
    from pacsguard.ids.part import settings_for

    if not isinstance(data, dict):
        raise ConfigError(source, [ConfigProblem("ids", "expected a mapping of IDS settings")])
    return settings_for(validate_model(IdsSettings, data, source, prefix="ids"), base)


def print_rule_problems(exc: Exception) -> typer.Exit:
    """A broken rule file (RuleError): every problem on its own red line, exit 2."""
    for problem in getattr(exc, "problems", None) or [exc]:
        print_error(problem)
    return typer.Exit(EXIT_USAGE)
