"""Tables that stay readable at any width and never cut a value (issue 17, item 1).

One layout decision for every table a command prints:

* piped (no width): every column as wide as its longest value, nothing folded or cut, so that
  ``grep`` and ``awk`` see each value whole on its row;
* a terminal wide enough for the key columns at full width: a table; the free-text columns
  (``fold=True``: messages, titles) fold onto continuation lines within their share of the width;
* a narrower terminal: one block per record, ``name: value`` fields packed onto lines, a blank
  line between records. A value longer than the line stays on one line (the terminal wraps it).

Key columns (AE titles, hosts, ports, patient IDs, paths) are never folded in any layout.
Plain text only, so that importing it costs nothing at start-up.

Every value is shown through `printable`: what a table shows came from the network, from files
and from archives, and must not drive the administrator's terminal.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TextIO

from pacsguard.hidden_characters import HIDDEN

__all__ = ["Column", "Layout", "layout_for", "printable", "render", "terminal_width", "write_lines"]

#: Spaces between two columns.
GAP = 2
#: The narrowest a folded column may become before the table gives way to blocks.
MIN_FOLD = 16


#: Tab, LF and CR, and every character hidden_characters names: controls, the marks that reorder
#: bidirectional text ("Trojan Source"), and zero-width ones ("j\u200bsmith" is not "jsmith").
_UNSAFE = re.compile(f"[\t\n\r]|{HIDDEN.pattern}")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """``text`` safe to write to a terminal: each control or reordering character becomes a
    visible escape (``\\x1b``, ``\\n``, ``\\u202e``). A file name, AE title, patient name or syslog
    field could otherwise carry escape sequences that move the cursor, recolour or retitle the
    terminal, write its clipboard (OSC 52), hide a finding's row, or reverse the text shown."""
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(lambda m: _NAMED.get(m.group(), f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                                            else f"\\u{ord(m.group()):04x}" if ord(m.group()) < 0x10000
                                            else f"\\U{ord(m.group()):08x}"), text)


@dataclass(frozen=True, slots=True)
class Column:
    """One column: its header, whether its values may fold, and (for streams) its expected width."""

    name: str
    fold: bool = False
    width: int = 0


@dataclass(frozen=True, slots=True)
class Layout:
    """Widths chosen once for a set of columns; ``widths is None`` means one block per record."""

    columns: tuple[Column, ...]
    widths: tuple[int, ...] | None
    line: int | None

    def header(self) -> list[str]:
        if self.widths is None:
            return []
        return [_join(self.widths, [c.name for c in self.columns])]

    def record(self, values: Sequence[str]) -> list[str]:
        """The lines of one record: table rows (folded columns on continuation lines) or a block."""
        values = [printable(v) for v in values]
        if self.widths is None:
            return _block(self.columns, values, self.line)
        folds = self.line is not None  # piped: nothing folds
        cells = [textwrap.wrap(v, w, break_on_hyphens=False) or [""] if c.fold and folds and len(v) > w else [v]
                 for c, v, w in zip(self.columns, values, self.widths, strict=True)]
        height = max(len(c) for c in cells)
        return [_join(self.widths, [c[i] if i < len(c) else "" for c in cells]) for i in range(height)]


def _join(widths: Sequence[int], cells: Sequence[str]) -> str:
    # The last cell is not padded: no trailing spaces. A key value wider than its column shifts the
    # rest of its row rather than being cut.
    parts = [cell.ljust(w) for w, cell in zip(widths[:-1], cells[:-1], strict=True)]
    return (" " * GAP).join([*parts, cells[-1]]).rstrip()


def _block(columns: Sequence[Column], values: Sequence[str], line: int | None) -> list[str]:
    lines: list[str] = []
    current = ""
    for column, value in zip(columns, values, strict=True):
        if not value:
            continue
        field = f"{column.name}: {value}"
        if current and line is not None and len(current) + GAP + len(field) <= line:
            current += " " * GAP + field
            continue
        if current:
            lines.append(current)
        current = field
        if column.fold and line is not None and len(field) > line:
            # Free text folds under its name; a key value longer than the line stays whole.
            *full, current = textwrap.wrap(field, line, subsequent_indent="  ", break_on_hyphens=False)
            lines.extend(full)
    if current:
        lines.append(current)
    return lines


def layout_for(columns: Sequence[Column], width: int | None,
               rows: Sequence[Sequence[str]] = ()) -> Layout:
    """The layout of ``rows`` (or, for a stream, of the columns' expected widths) in ``width``
    characters; ``width=None`` (piped): natural widths, never folded."""
    natural = [max([len(c.name), c.width, *(len(printable(r[i])) for r in rows)]) for i, c in enumerate(columns)]
    cols = tuple(columns)
    if width is None:
        return Layout(cols, tuple(natural), None)
    gaps = GAP * (len(cols) - 1)
    if sum(natural) + gaps <= width:
        return Layout(cols, tuple(natural), width)
    fixed = sum(n for c, n in zip(cols, natural, strict=True) if not c.fold)
    folding = [i for i, c in enumerate(cols) if c.fold]
    room = width - fixed - gaps
    if not folding or room < MIN_FOLD * len(folding):
        return Layout(cols, None, width)
    # Folded columns share what the key columns leave, each no wider than it needs.
    widths = list(natural)
    share = room // len(folding)
    for i in folding:
        widths[i] = min(natural[i], share)
    spare = room - sum(widths[i] for i in folding)
    for i in folding:
        grow = min(spare, natural[i] - widths[i])
        widths[i] += grow
        spare -= grow
    return Layout(cols, tuple(widths), width)


def render(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int | None) -> list[str]:
    """Every line of a table of ``rows`` laid out for ``width`` (None: piped)."""
    layout = layout_for(columns, width, rows)
    lines = layout.header()
    for i, row in enumerate(rows):
        if layout.widths is None and i:
            lines.append("")
        lines.extend(layout.record(row))
    return lines


def terminal_width(stream: TextIO | None = None) -> int | None:
    """The width to lay out for: the terminal's (COLUMNS wins, as in every shell tool), or None when
    ``stream`` (default stdout) is not a terminal, so that piped output is never folded or cut."""
    out = stream if stream is not None else sys.stdout
    try:
        tty = out.isatty()
    except ValueError:  # a closed stream
        return None
    if not tty:
        return None
    columns = os.environ.get("COLUMNS", "")
    if columns.isascii() and columns.isdigit() and int(columns) > 0:
        return int(columns)
    return shutil.get_terminal_size().columns


def write_lines(lines: Iterable[str], stream: TextIO | None = None, *, alert: bool = False) -> None:
    """Write ``lines``; ``alert`` lines are red on a terminal (never when piped, or with NO_COLOR)."""
    out = stream if stream is not None else sys.stdout
    red = alert and terminal_width(out) is not None and "NO_COLOR" not in os.environ
    for line in lines:
        out.write(f"\x1b[31m{line}\x1b[0m\n" if red and line else line + "\n")
    out.flush()
