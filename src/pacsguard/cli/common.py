"""What every command shares: the console, exit codes, loading the config and opening the store.

Exit codes (documented in docs/cli.md): 0 ok, 1 findings (verify found tampering, a check failed),
2 usage, configuration or environment error. No command shows a traceback for a known error.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable, TypeVar

import typer
from rich.console import Console

from pacsguard.config import ConfigError, LoadedConfig, load_config
from pacsguard.config.schema import PacsguardConfig
from pacsguard.store import EventStore, StoreError

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., object])

CONFIG_OPTION = typer.Option(None, "--config", "-c", envvar="PACSGUARD_CONFIG",
                             help="pacsguard.yaml to use (default: ./pacsguard.yaml)")
STORE_OPTION = typer.Option(None, "--store", help="store path (SQLite) or postgresql:// URL; overrides the config")


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def guarded(func: F) -> F:
    """Known errors become one red line and exit 2, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            for problem in exc.problems:
                err_console.print(f"[bold red]error:[/] {exc.source}: {problem}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_USAGE) from None
        except (StoreError, LookupError, OSError) as exc:
            raise fail(str(exc)) from None

    return wrapper  # type: ignore[return-value]


def config_path(explicit: Path | None) -> Path:
    return explicit if explicit is not None else Path(os.environ.get("PACSGUARD_CONFIG", "pacsguard.yaml"))


def load(explicit: Path | None, *, required: bool = True) -> LoadedConfig:
    """Load the configuration; without a file (and not required) the defaults apply."""
    path = config_path(explicit)
    if not path.exists() and not required and explicit is None:
        return LoadedConfig(PacsguardConfig(), None)
    return load_config(path)


def store_target(loaded: LoadedConfig, store: str | None) -> str:
    """--store wins; else the config's store.url with its password from env/file."""
    if store is not None:
        return store
    cfg = loaded.config.store
    url = cfg.url
    if "://" not in url:
        return str(loaded.resolve(Path(url)))
    if cfg.password is not None:
        scheme, rest = url.split("://", 1)
        user, host = rest.split("@", 1) if "@" in rest else ("", rest)
        from urllib.parse import quote
        url = f"{scheme}://{user}:{quote(cfg.password.resolve(), safe='')}@{host}"
    return url


def ids_settings(loaded: LoadedConfig):
    """The `ids:` section validated by the IDS's own model; relative rules_dirs from the file's folder."""
    return validate_ids_section(loaded.config.ids, str(loaded.path or "pacsguard.yaml"),
                                loaded.path.parent if loaded.path else Path.cwd())


def validate_ids_section(section: object, source: str, base: Path):
    from pydantic import ValidationError

    from pacsguard.config.loader import ConfigProblem, _problem
    from pacsguard.ids import IdsSettings

    if not isinstance(section, dict):
        raise ConfigError(source, [ConfigProblem("ids", "expected a mapping of IDS settings")])
    try:
        settings = IdsSettings.model_validate(section)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            p = _problem(err)
            problems.append(ConfigProblem("ids." + p.key if p.key != "(top level)" else "ids", p.message))
        raise ConfigError(source, problems) from None
    dirs = [d if d.is_absolute() else base / d for d in settings.rules_dirs]
    return settings.model_copy(update={"rules_dirs": dirs})


def build_engine(settings):
    """Load the rules; a broken rule file is an error that stops start-up (exit 2), never silence."""
    from pacsguard.ids import RuleError
    from pacsguard.ids import Engine

    try:
        return Engine.from_settings(settings)
    except RuleError as exc:
        for line in str(exc).splitlines():
            err_console.print(f"[bold red]error:[/] {line}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None


def open_store(loaded: LoadedConfig, store: str | None, *, writer: bool = False, create: bool = False) -> EventStore:
    key = loaded.resolve(loaded.config.store.signing_key) if writer else None
    return EventStore.open(store_target(loaded, store), key_path=key, create=create,
                           checkpoint_interval=loaded.config.store.checkpoint_interval)
