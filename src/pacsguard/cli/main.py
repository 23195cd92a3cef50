"""`pacsguard PART VERB`: the command line mirrors the parts of DESIGN.md (pacsguard.runtime.registry).

Nothing heavy is imported before the arguments are parsed: a part's commands load when it is used."""

from __future__ import annotations

import gc
import sys

import typer

from pacsguard import __version__
from pacsguard.cli.app import App
from pacsguard.cli.lazy import PartsGroup
from pacsguard.runtime.registry import Registry

app = App(name="pacsguard", cls=PartsGroup, no_args_is_help=True, add_completion=False,
            help="Security gateway, IDS and tamper-evident audit trail for a PACS network.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pacsguard {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """Run `pacsguard init`, then `pacsguard serve`. Exit codes: 0 ok, 1 findings, 2 usage/config error."""


def command(registry: Registry | None = None) -> PartsGroup:
    """The root click command over ``registry`` (default: every part in PART_MODULES)."""
    group = typer.main.get_command(app)
    assert isinstance(group, PartsGroup)
    return group.use(registry) if registry is not None else group


def main() -> None:
    try:
        command().main(prog_name="pacsguard")
    except SystemExit as exc:
        # --help and --version are written by click before any command (and its guard) runs: click
        # answers a reader gone away with a silent exit 1, which scripts read as "findings".
        if exc.code == 1 and _reader_gone():
            raise SystemExit(141) from None
        raise
    except OSError as exc:  # the same on a full disk (> /dev/full): one line, not a traceback
        print(f"error: cannot write the output: {exc.strerror or exc}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        # The command has closed what it opened; what is left is the imported libraries' state, which
        # Python's collections at exit would walk object by object (~70 ms after `ids read`) only to
        # free memory the process gives back anyway. Frozen objects are left out of those walks.
        gc.freeze()


def _reader_gone() -> bool:
    from pacsguard.cli.common import stdout_closed

    return stdout_closed()
