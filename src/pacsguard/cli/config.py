"""`pacsguard config check FILE`: every section validated by its owner's model, reported per part."""

from __future__ import annotations

from pathlib import Path

import typer

from pacsguard.cli.app import App
from pacsguard.cli.common import EXIT_USAGE
from pacsguard.runtime.registry import SPINE_SECTIONS, Registry

app = App(name="config", no_args_is_help=True, help="Validate pacsguard.yaml.")


@app.command("check")
def check(file: Path = typer.Argument(Path("pacsguard.yaml"), help="the configuration file")) -> None:
    """Print OK, or every error with its key path and what was expected (exit 2)."""
    from pacsguard.cli.common import console, err_console
    from pacsguard.config.loader import ConfigError, load_config

    registry = Registry.default()
    owners = {s: "spine" for s in SPINE_SECTIONS} | {str(p.section): p.name for p in registry.with_config()}
    try:
        load_config(file, registry.config_model())
    except ConfigError as exc:
        for problem in exc.problems:
            err_console.print(f"[bold red]error:[/] {exc.source}: {problem}", highlight=False, soft_wrap=True)
        counts: dict[str, int] = {}
        for problem in exc.problems:
            section = problem.key.split(".", 1)[0]
            counts[section] = counts.get(section, 0) + 1
        for section, owner in owners.items():
            n = counts.get(section, 0)
            verdict = f"{n} problem{'s' * (n != 1)}" if n else "OK"
            err_console.print(f"  {section} ({owner}): {verdict}", highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    console.print(f"{file}: [bold green]OK[/]", highlight=False)
    for section, owner in owners.items():
        console.print(f"  {section} ({owner}): OK", highlight=False)
