"""`pacsguard PART VERB`: the command line mirrors the parts of DESIGN.md."""

from __future__ import annotations

import typer

from pacsguard import __version__
from pacsguard.cli import audit, config, events, serve

app = typer.Typer(name="pacsguard", no_args_is_help=True, add_completion=False,
                  help="Security gateway, IDS and tamper-evident audit trail for a PACS network.")
app.command("init")(serve.init)
app.command("serve")(serve.serve)
app.add_typer(config.app)
app.add_typer(events.app)
app.add_typer(audit.app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pacsguard {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """Run `pacsguard init`, then `pacsguard serve`. Exit codes: 0 ok, 1 findings, 2 usage/config error."""


def main() -> None:
    _register_optional()
    app()


def _register_optional() -> None:
    # Parts that land later register here; a missing part never breaks the rest of the CLI.
    from importlib import import_module

    for name in ("tls", "gateway", "ids"):
        try:
            module = import_module(f"pacsguard.cli.{name}")
        except ModuleNotFoundError:
            continue
        app.add_typer(module.app)
