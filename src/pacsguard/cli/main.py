"""`pacsguard PART VERB`: the command line mirrors the parts of DESIGN.md (pacsguard.runtime.registry).

Nothing heavy is imported before the arguments are parsed: a part's commands load when it is used."""

from __future__ import annotations

import codecs
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


#: The codec error handler of stdout (`escape_unencodable`), registered by `main`.
ESCAPE_ERRORS = "pacsguard-escape"

#: The one line for a stdout the shell closed (`>&-`) before pacsguard started.
_NO_STDOUT = ("error: cannot write the output: standard output is closed; redirect it to a file or "
              "to /dev/null instead of closing it")


def main() -> None:
    _prepare_streams()
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


def _prepare_streams() -> None:
    """Refuse a closed stdout (`>&-`) at once, with one line and exit 2, as a Unix tool answers
    "write error: Bad file descriptor": Python leaves ``sys.stdout`` None, every command would
    then fail on its first line (an internal error, exit 70) or drop its output and exit 0, and
    the next file the command opens would take descriptor 1. Then make stdout escape what its
    encoding cannot hold (`escape_unencodable`) instead of raising UnicodeEncodeError."""
    if sys.stdout is None:
        if sys.stderr is not None:
            print(_NO_STDOUT, file=sys.stderr)
        raise SystemExit(2)
    codecs.register_error(ESCAPE_ERRORS, escape_unencodable)
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors=ESCAPE_ERRORS)


def escape_unencodable(exc: UnicodeError) -> tuple[str, int]:
    """A codec error handler (PEP 293) writing each character stdout's encoding cannot hold as a
    JSON escape, ``\\uXXXX`` (two, a UTF-16 pair, above U+FFFF: RFC 8259 section 7).

    A terminal or pipe that is not UTF-8 (`PYTHONIOENCODING=latin-1`, a Latin-1 locale) then
    shows "Yamada \\u5c71\\u7530" instead of failing the command, and JSON output stays valid
    JSON that decodes to the very same text. The same holds for a lone surrogate (an argument
    that was not valid UTF-8, `$'\\xff'`), which not even UTF-8 can write."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    return "".join(map(_json_escape, exc.object[exc.start:exc.end])), exc.end


def _json_escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def _reader_gone() -> bool:
    from pacsguard.cli.common import stdout_closed

    return stdout_closed()
