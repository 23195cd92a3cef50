"""`pacsguard config check FILE`."""

from __future__ import annotations

from pathlib import Path

import typer

from pacsguard.cli.common import EXIT_USAGE, console, err_console, ids_settings
from pacsguard.config import ConfigError, load_config

app = typer.Typer(name="config", no_args_is_help=True, help="Validate pacsguard.yaml.")


@app.command("check")
def check(file: Path = typer.Argument(Path("pacsguard.yaml"), help="the configuration file")) -> None:
    """Print OK, or every error with its key path and what was expected (exit 2)."""
    try:
        loaded = load_config(file)
        ids_settings(loaded)
    except ConfigError as exc:
        for problem in exc.problems:
            err_console.print(f"[bold red]error:[/] {exc.source}: {problem}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None
    console.print(f"{file}: [bold green]OK[/]", highlight=False)
