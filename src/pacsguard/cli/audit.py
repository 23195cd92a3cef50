"""`pacsguard audit verify`: prove the store has not been altered since it was sealed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from pacsguard.cli.app import App
from pacsguard.cli.common import CONFIG_OPTION, EXIT_FINDINGS, STORE_OPTION, guarded, load, open_store
from pacsguard.cli.events import Format

if TYPE_CHECKING:
    from pacsguard.store.verify import VerifyReport

app = App(name="audit", no_args_is_help=True, help="The audit trail: verification of the store.")


@app.command("verify")
@guarded
def verify(
    key: Path | None = typer.Option(None, "--key", help="public (or private) checkpoint key; default: the "
                                    "config's store.signing_key"),
    fmt: Format = typer.Option(Format.table, "--format"),
    config: Path | None = CONFIG_OPTION,
    store: str | None = STORE_OPTION,
) -> None:
    """Recompute every seal, chain link and signed checkpoint. Exit 1 on any finding."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from pacsguard.cli.common import err_console
    from pacsguard.store import keys
    from pacsguard.store.verify import verify_store

    loaded = load(config, required=store is None or key is None)
    key_path = key if key is not None else loaded.resolve(loaded.config.store.signing_key)
    public = keys.load_public_key(key_path)
    es = open_store(loaded, store)
    try:
        with Progress(TextColumn("verifying {task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), console=err_console, transient=True,
                      disable=fmt is Format.json) as progress:
            task = progress.add_task(es.name, total=None)
            report = verify_store(es, public, lambda done, total: progress.update(task, completed=done, total=total))
    finally:
        es.close()
    if fmt is Format.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        _show(report)
    if not report.ok:
        raise typer.Exit(EXIT_FINDINGS)


def _show(report: VerifyReport) -> None:
    from rich.table import Table

    from pacsguard.cli.common import console

    signature = "[green]valid[/]" if report.newest_checkpoint_valid else "[red]INVALID[/]"
    cp = "none yet" if report.newest_checkpoint is None else f"size {report.newest_checkpoint}, signature {signature}"
    console.print(f"store {report.store}: {report.events} events, {report.checkpoints} checkpoints; "
                  f"newest checkpoint: {cp}",
                  highlight=False)
    if report.ok:
        console.print("[bold green]OK[/]: every event, chain link, index row and checkpoint verifies")
        return
    table = Table(title=f"[bold red]{len(report.findings)} findings[/]", header_style="bold")
    table.add_column("finding")
    table.add_column("event #", justify="right")
    table.add_column("what was found", overflow="fold")
    for f in report.findings:
        table.add_row(f.kind, "" if f.seq is None else str(f.seq), f.message)
    console.print(table)
