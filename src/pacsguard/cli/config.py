"""`pacsguard config check FILE`: every section validated by its owner's model, reported per part.
`pacsguard config show`: the configuration in use, every default filled in, secrets masked."""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from pacsguard.cli.app import App
from pacsguard.cli.common import CONFIG_OPTION, EXIT_USAGE, load, print_error
from pacsguard.runtime.registry import SPINE_SECTIONS, Registry

if TYPE_CHECKING:
    from pacsguard.config.loader import ConfigProblem, LoadedConfig

app = App(name="config", no_args_is_help=True, help="Validate pacsguard.yaml and show the configuration in use.")


@app.command("check")
def check(file: Path | None = typer.Argument(None, help="the configuration file (default: as every command "
                                              "finds it: --config/-c, $PACSGUARD_CONFIG, ./pacsguard.yaml)"),
          config: Path | None = CONFIG_OPTION) -> None:
    """Print OK, or every error with its key path and what was expected (exit 2)."""
    from pacsguard.cli.common import config_path, console, err_console
    from pacsguard.config.loader import ConfigError, load_config

    file = file if file is not None else config_path(config)  # FILE first, as given
    registry = Registry.default()
    owners = {s: "spine" for s in SPINE_SECTIONS} | {str(p.section): p.name for p in registry.with_config()}
    try:
        loaded = load_config(file, registry.config_model())
        problems = tls_problems(loaded) + file_problems(loaded)
        if problems:
            raise ConfigError(str(file), problems)
    except ConfigError as exc:
        for problem in exc.problems:
            print_error(f"{exc.source}: {problem}")
        counts: dict[str, int] = {}
        for problem in exc.problems:
            section = problem.key.split(".", 1)[0]
            counts[section] = counts.get(section, 0) + 1
        # A problem of the file itself ("(file)", "(top level)", "line 3, column 5": not YAML, too
        # big, too deep) stops before any section is read: none of them can be called OK.
        unread = any(p.key.startswith(("(", "line ")) for p in exc.problems)
        for section, owner in owners.items():
            n = counts.get(section, 0)
            verdict = f"{n} problem{'s' * (n != 1)}" if n else "not checked" if unread else "OK"
            err_console.print(f"  {section} ({owner}): {verdict}", highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    console.print(f"{file}: [bold green]OK[/]", highlight=False)
    for section, owner in owners.items():
        console.print(f"  {section} ({owner}): OK", highlight=False)


def tls_problems(loaded: LoadedConfig) -> list[ConfigProblem]:
    """Every TLS block's files loaded as `serve` loads them (present, readable, a key that matches
    its certificate, not expired, a CA OpenSSL reads): what the schema cannot see. A block is any
    model with a ``cert_file`` key: the gateway's listeners and upstreams, store-and-forward
    destinations, the ATNA listeners and outbound feed, the syslog sink, the store's witnesses and
    the witness service; each problem is named by the block's key path (``atna.tls``), as serve's
    own error is (`serve` runs this check before it starts anything). A section turned off
    (``enabled: false``) is not loaded by serve, so it is not checked either."""
    from pacsguard.config.loader import ConfigProblem
    from pacsguard.tls import TLSConfigError

    problems: list[ConfigProblem] = []

    def check(node: Any, key: str) -> None:
        if "cert_file" in type(node).model_fields:
            try:
                _load_tls(node, loaded.resolve)
            except TLSConfigError as exc:
                problems.append(ConfigProblem(key, str(exc)))

    _visit_blocks(loaded, check)
    return problems


def file_problems(loaded: LoadedConfig) -> list[ConfigProblem]:
    """The other files `serve` reads as its services start, read now as they read them: each block
    whose model has a ``check_files(key, resolve)`` method is asked for its problems (keyed by their
    paths under ``key``), so a part checks its own section's files (the ATNA HTTP endpoint's token
    file, the privacy section's watch list and staff directory). Turned-off sections are skipped,
    as in `tls_problems`."""
    problems: list[ConfigProblem] = []

    def check(node: Any, key: str) -> None:
        hook = getattr(node, "check_files", None)
        if callable(hook):
            problems.extend(hook(key, loaded.resolve))

    _visit_blocks(loaded, check)
    return problems


def _visit_blocks(loaded: LoadedConfig, check: Callable[[Any, str], None]) -> None:
    """``check(block, key)`` on every model in the configuration's sections that are on (not
    ``enabled: false``), at any depth and in lists, with its key path (``gateway.routes.0.tls``)."""
    from pydantic import BaseModel

    def visit(node: Any, key: str) -> None:
        if isinstance(node, list | tuple):
            for n, item in enumerate(node):
                visit(item, f"{key}.{n}")
            return
        if not isinstance(node, BaseModel):
            return
        check(node, key)
        for name in type(node).model_fields:
            visit(getattr(node, name), f"{key}.{name}" if key else name)

    for name in type(loaded.config).model_fields:
        section = getattr(loaded.config, name)
        if getattr(section, "enabled", True) is not False:
            visit(section, name)


def _load_tls(block: Any, resolve: Any) -> None:
    """Build the context ``block`` stands for, as its service does: a listener's (it has
    ``require_client_cert``; RFC 8446 server side) when it has a certificate, else a client's, unless
    the block does not use TLS (a ``transport: tcp`` collector, an ``http://`` witness)."""
    from pacsguard.tls import client_context, server_context

    if getattr(block, "transport", "tls") != "tls":
        return
    if "url" in type(block).model_fields and not str(block.url or "").startswith("https://"):
        return  # a witness by file, by syslog (its `syslog` block is visited on its own) or http://
    cert, key, ca = (resolve(value) if (value := getattr(block, name, None)) is not None else None
                     for name in ("cert_file", "key_file", "ca_file"))
    if "require_client_cert" in type(block).model_fields:
        if cert is not None and key is not None:
            server_context(cert, key, ca_file=ca, require_client_cert=block.require_client_cert)
        return
    client_context(ca_file=ca, cert_file=cert, key_file=key)


#: What a masked secret prints as.
MASK = "********"
#: Keys whose string values are secrets themselves (a *_file or path names where one is, and shows).
_SECRET_KEY = re.compile(r"password|passphrase|secret|token|(^|_)key$", re.IGNORECASE)


class ShowFormat(str, Enum):
    yaml = "yaml"
    json = "json"


@app.command("show")
def show(config: Path | None = CONFIG_OPTION,
         fmt: ShowFormat = typer.Option(ShowFormat.yaml, "--format", help="yaml or json")) -> None:
    """The effective configuration, every default filled in and every secret masked, with the file it came from.

    Without a configuration file it prints the defaults (what a command run without one uses),
    says so on stderr, and exits 0; a file named with -c or $PACSGUARD_CONFIG must exist (exit 2).
    """
    import json

    import yaml

    from pacsguard.cli.common import config_path

    loaded = load(config, required=False)
    source = str(loaded.path) if loaded.path is not None else None
    if loaded.path is None:
        # On stderr: stdout stays the YAML or JSON a script reads. Exit 0, since the defaults are
        # the configuration in use (`events search --store` runs on them), and a script's `config
        # show | ...` should not fail in a folder without a file; the note keeps a person from
        # reading the defaults as the file they meant.
        typer.echo(f"config show: no configuration file ({config_path(config)} does not exist); these are the "
                   "defaults. `pacsguard init` writes one; -c names another", err=True)
    data = effective(loaded.config)
    if fmt is ShowFormat.json:
        base = str(loaded.path.parent) if loaded.path is not None else None
        typer.echo(json.dumps({"source": source, "relative_to": base, "config": data}, indent=2))
        return
    typer.echo(f"# from {source or 'no file: every value is a default'}; defaults filled in, secrets masked")
    if loaded.path is not None:
        typer.echo(f"# relative paths are relative to {loaded.path.parent}")
    typer.echo(yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True), nl=False)


def effective(value: Any, key: str = "") -> Any:
    """``value`` (a validated configuration model) as plain YAML/JSON data, with every SecretRef and
    every string under a secret-looking key (password, token, ...) replaced by :data:`MASK`."""
    from pydantic import BaseModel

    from pacsguard.config.schema import SecretRef

    if isinstance(value, SecretRef):
        return MASK
    if isinstance(value, BaseModel):
        return {name: effective(getattr(value, name), name) for name in type(value).model_fields}
    if isinstance(value, dict):
        return {str(k): effective(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [effective(v, key) for v in value]
    if isinstance(value, Enum):
        return effective(value.value, key)
    if isinstance(value, str):
        return MASK if _SECRET_KEY.search(key) and value else value
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)  # paths, networks, durations: their text form, as written in the file
