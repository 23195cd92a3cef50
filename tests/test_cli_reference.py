"""Issue 17, item 5: docs/cli.md's reference is generated from the command tree, and matches it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from pacsguard.cli.app import value_name
from pacsguard.cli.lazy import load_command
from pacsguard.cli.main import command
from pacsguard.cli.reference import MARKER, main, reference, updated

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_docs_cli_md_is_the_generated_reference() -> None:
    assert main(["--check", str(DOC)]) == 0, "docs/cli.md is stale: run python -m pacsguard.cli.reference"


def test_reference_names_every_command_and_option() -> None:
    text = reference()
    for section in ("### `pacsguard config show`", "### `pacsguard events tail`", "### `pacsguard ids rules list`",
                    "### `pacsguard gateway run`", "### `pacsguard audit verify`"):
        assert section in text
    assert "| `--format [table\\|json]` |" in text and "[default: 1000;" in text and "1<=x<=1000000000000000]" in text
    # Options name their values as dcmtk and click do, never by a Python annotation.
    options = re.findall(r"^\| `(-[^`]*)` \|", text, re.M)
    assert options and not [o for o in options if re.search(r"<|list\[|range", o)]


def test_stale_reference_is_replaced_and_prose_kept(tmp_path: Path) -> None:
    doc = tmp_path / "cli.md"
    doc.write_text(f"# Command line\n\nprose\n\n{MARKER}\n\nold reference\n")
    assert main(["--check", str(doc)]) == 1
    assert main([str(doc)]) == 0 and main(["--check", str(doc)]) == 0
    assert doc.read_text() == updated("# Command line\n\nprose\n", reference())
    assert doc.read_text().startswith("# Command line\n\nprose\n\n" + MARKER)


def test_value_names() -> None:
    assert [value_name(x) for x in ("<str>", "<list[Path]>", "<int range>", "<table|json>")] == [
        "TEXT", "PATH", "INTEGER", "[table|json]"]


def _helps(command: Any, ctx: typer.Context) -> Iterator[tuple[str, str]]:
    """(command path, its --help text) for ``command`` and every command under it, deferred parts loaded."""
    yield ctx.command_path, command.get_help(ctx)
    for name in getattr(command, "list_commands", lambda _: [])(ctx):
        sub = command.get_command(ctx, name)
        if sub is None:
            continue
        if getattr(sub, "part", None) is not None:
            sub = load_command(sub.part)
        yield from _helps(sub, typer.Context(sub, info_name=name, parent=ctx))


def test_arguments_are_named_as_click_names_them_not_by_python_type() -> None:
    helps = dict(_helps(command(), typer.Context(command(), info_name="pacsguard")))
    assert len(helps) > 20
    labelled = {path: label for path, text in helps.items() for label in re.findall(r"<[^<>\s]*>", text)}
    assert not labelled, f"Python type labels in --help: {labelled}"
    read = helps["pacsguard ids read"]
    assert "Usage: pacsguard ids read [OPTIONS] CAPTURE\n" in read
    assert re.search(r"^Arguments:\n  CAPTURE +pcap or pcapng capture file", read, re.M)
    check = helps["pacsguard ids rules check"]
    assert "[OPTIONS] [PATHS]...\n" in check and re.search(r"^  PATHS\.\.\. +rule files", check, re.M)


def test_the_reference_tables_read_at_80_columns() -> None:
    """Every table line of docs/cli.md fits 80 columns, and a wrapped code span is closed and
    opened again on each line it spans (pacsguard.cli.mdtable)."""
    from pacsguard.cli.mdtable import table

    assert all(len(line) <= 80 for line in DOC.read_text().splitlines() if line.startswith("|"))
    lines = table(["option", "description"],
                  [["`--format [table\\|json\\|sarif\\|html]`", "the report's form " * 8], ["`-j, --jobs N`", "x"]])
    assert all(len(line) <= 80 for line in lines) and len({line.count(" | ") for line in lines if " | " in line}) == 1
    first = [line.split(" | ")[0].removeprefix("| ").strip() for line in lines[2:]]
    assert all(cell.count("`") % 2 == 0 for cell in first)
    assert "".join(c.strip("`") for c in first[:2]).replace(" ", "") == "--format[table\\|json\\|sarif\\|html]"
