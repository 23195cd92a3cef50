"""A Markdown table that reads at 80 columns as plain text: each cell wrapped to its column, a
long row continued on the rows below it with the other cells empty (the convention of docs/).
Used by the generated command reference (pacsguard.cli.reference)."""

from __future__ import annotations

import textwrap

WIDTH = 80
#: Code spans up to this long stay on one line; a longer one may break at a space, closed with a
#: backtick at the end of one line and opened again on the next.
SHORT_SPAN = 24


def table(header: list[str], rows: list[list[str]], width: int = WIDTH) -> list[str]:
    """The lines of a table of ``header`` and ``rows`` (cells as Markdown text, "|" escaped) no
    wider than ``width`` where the longest word or short code span of each column allows."""
    columns = len(header)
    every = [header, *rows]
    natural = [max(len(r[k]) for r in every) for k in range(columns)]
    # The header stays one line: a Markdown table has one header row before its delimiter row.
    floor = [max(3, len(header[k]), max(_longest_token(r[k]) for r in every)) for k in range(columns)]
    sizes = natural[:]
    room = width - (3 * columns + 1)
    while sum(sizes) > room:
        k = max(range(columns), key=lambda j: sizes[j] - floor[j])
        if sizes[k] <= floor[k]:
            break  # as narrow as its words allow: wider than asked
        sizes[k] -= 1
    lines = _rows(header, sizes)
    lines.append("|" + "|".join("-" * (size + 2) for size in sizes) + "|")
    for row in rows:
        lines += _rows(row, sizes)
    return lines


def _rows(cells: list[str], sizes: list[int]) -> list[str]:
    parts = [_wrap(cell, size) for cell, size in zip(cells, sizes, strict=True)]
    return ["| " + " | ".join((p[i] if i < len(p) else "").ljust(size) for p, size in zip(parts, sizes, strict=True))
            + " |" for i in range(max(len(p) for p in parts))]


def _protect(text: str) -> str:
    """``text`` with the spaces of its short code spans made unbreakable (NUL, put back later)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        end = text.find("`", i + 1) if text[i] == "`" else -1
        if end < 0:
            out.append(text[i])
            i += 1
            continue
        span = text[i:end + 1]
        out.append(span.replace(" ", "\0") if len(span) <= SHORT_SPAN else span)
        i = end + 1
    return "".join(out)


def _longest_token(text: str) -> int:
    return max((len(t) for t in _protect(text).split()), default=0)


def _wrap(text: str, size: int) -> list[str]:
    if not text:
        return [""]
    room = size - 2 if "`" in text else size  # a broken code span's two extra backticks
    lines = [line.replace("\0", " ") for line in textwrap.wrap(_protect(text), max(room, 1),
                                                               break_long_words=False, break_on_hyphens=False)]
    out: list[str] = []
    open_span = False
    for line in lines:
        if open_span:
            line = "`" + line
        open_span = line.count("`") % 2 == 1
        out.append(line + "`" if open_span else line)
    return out or [""]
