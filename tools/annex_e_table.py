"""Generate src/pacsguard/deid/annex_e.tsv from the DICOM standard's own text of PS3.15, Table E.1-1
"Application Level Confidentiality Profile Attributes", in either form NEMA publishes it:

- the DocBook source, ``part15.xml`` (dicom.nema.org/medical/dicom/current/source/docbook/part15/);
- the HTML rendering of it, ``part15.html`` (.../output/html/).

    python tools/annex_e_table.py path/to/part15.xml > src/pacsguard/deid/annex_e.tsv

The first line of the output names the edition found in the document's own subtitle ("DICOM
PS3.15 2026c - ..."), the input's file name and its SHA-256, so the table can be traced to the
exact document it came from. Every row of the table becomes one line: tag, name, then one action
code per column, in the table's own column order (an empty cell stays empty). Nothing is edited
by hand. The standard itself is not copied into the project: only these facts are.
"""

from __future__ import annotations

import hashlib
import re
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

#: The columns of Table E.1-1 after Attribute Name and Tag, under the names the project uses.
COLUMNS = (
    ("Retd.", "retired"),
    ("In Std. Comp. IOD", "in_std_iod"),
    ("Basic Prof.", "basic"),
    ("Rtn. Safe Priv. Opt.", "retain_safe_private"),
    ("Rtn. UIDs Opt.", "retain_uids"),
    ("Rtn. Dev. Id. Opt.", "retain_device_identity"),
    ("Rtn. Inst. Id. Opt.", "retain_institution_identity"),
    ("Rtn. Pat. Chars. Opt.", "retain_patient_characteristics"),
    ("Rtn. Long. Full Dates Opt.", "retain_longitudinal_full_dates"),
    ("Rtn. Long. Modif. Dates Opt.", "retain_longitudinal_modified_dates"),
    ("Clean Desc. Opt.", "clean_descriptors"),
    ("Clean Struct. Cont. Opt.", "clean_structured_content"),
    ("Clean Graph. Opt.", "clean_graphics"),
)

TABLE_ID = "table_E.1-1"
_EDITION = re.compile(r"PS3\.15 (\d{4}[a-z])")
# Header cells cite the part a column comes from, "(from PS3.6)"; the DocBook source has an empty
# cross-reference there, "(from )". Either way it is not part of the column's name.
_FROM_PART = re.compile(r"\s*\(from[^)]*\)")
_DOCBOOK = "{http://docbook.org/ns/docbook}"
_XML_ID = "{http://www.w3.org/XML/1998/namespace}id"


def _text(raw: str) -> str:
    """A cell's text on one line; the zero-width spaces the standard puts in long names as line-break
    hints are not part of the name."""
    return " ".join(raw.replace("\u200b", "").split())


class _HtmlTableReader(HTMLParser):
    """Collects the text of every cell of the table whose anchor is ``table_E.1-1`` (HTML rendering)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.seen_anchor = False
        self.depth = 0  # <table> nesting inside the wanted table
        self.rows: list[list[str]] = []
        self.cell: list[str] | None = None
        self.subtitle: list[str] = []
        self.in_subtitle = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a" and ("id", TABLE_ID) in attrs:
            self.seen_anchor = True
        elif tag == "h2" and ("class", "subtitle") in attrs and not self.subtitle:
            self.in_subtitle = True
        elif tag == "table" and self.seen_anchor:
            self.depth += 1
        elif self.depth and tag == "tr":
            self.rows.append([])
        elif self.depth and tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self.in_subtitle = False
        elif tag == "table" and self.depth:
            self.depth -= 1
            if not self.depth:
                self.seen_anchor = False
        elif self.depth and tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append(_text("".join(self.cell)))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.in_subtitle:
            self.subtitle.append(data)
        if self.cell is not None:
            self.cell.append(data)


def read_html(text: str) -> tuple[str, list[list[str]]]:
    """The subtitle and the rows (header first) of Table E.1-1 in NEMA's HTML rendering."""
    reader = _HtmlTableReader()
    reader.feed(text)
    return "".join(reader.subtitle), reader.rows


def read_docbook(text: str) -> tuple[str, list[list[str]]]:
    """The subtitle and the rows (header first) of Table E.1-1 in NEMA's DocBook source: the
    ``<table xml:id="table_E.1-1">`` element, its ``<thead>`` and ``<tbody>`` rows in order."""
    root = ET.fromstring(text)
    subtitle = root.find(f"{_DOCBOOK}subtitle")
    if subtitle is None:
        subtitle = next(root.iter(f"{_DOCBOOK}subtitle"), None)
    table = next((t for t in root.iter(f"{_DOCBOOK}table") if t.get(_XML_ID) == TABLE_ID), None)
    if table is None:
        return "", []
    rows = [[_text("".join(cell.itertext())) for cell in tr] for tr in table.iter(f"{_DOCBOOK}tr")]
    return "".join(subtitle.itertext()) if subtitle is not None else "", rows


def render(source: Path) -> str:
    """annex_e.tsv for the PS3.15 document at ``source``; ValueError when it holds no usable table."""
    data = source.read_bytes()
    text = data.decode("utf-8")
    docbook = text.lstrip().startswith("<?xml") and "docbook.org/ns/docbook" in text[:2000]
    subtitle, rows = read_docbook(text) if docbook else read_html(text)
    edition = _EDITION.search(subtitle)
    if edition is None or not rows:
        raise ValueError(f"{source}: no PS3.15 edition or no Table E.1-1 found")
    header, *body = rows
    wanted = ["Attribute Name", "Tag", *(c for c, _ in COLUMNS)]
    got = [_FROM_PART.sub("", h) for h in header]
    if got != wanted:
        raise ValueError(f"unexpected columns: {got}")
    digest = hashlib.sha256(data).hexdigest()
    lines = [f"# PS3.15 {edition.group(1)} Table E.1-1 from {source.name} sha256:{digest}",
             "\t".join(["tag", "name", *(n for _, n in COLUMNS)])]
    for row in body:
        if len(row) != len(wanted):
            raise ValueError(f"row of {len(row)} cells: {row}")
        name, tag, *codes = row
        lines.append("\t".join([tag.upper(), name, *codes]))
    return "\n".join(lines) + "\n"


def main(path: str) -> int:
    try:
        sys.stdout.write(render(Path(path)))
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
