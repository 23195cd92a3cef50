"""Generate src/pacsguard/deid/annex_e.tsv from the DICOM standard's own HTML rendering of PS3.15
(DocBook output, the file NEMA publishes as part15.html), Table E.1-1 "Application Level
Confidentiality Profile Attributes".

    python tools/annex_e_table.py path/to/part15.html > src/pacsguard/deid/annex_e.tsv

The first line of the output names the edition found in the file's subtitle ("DICOM PS3.15 2020b").
Every row of the table becomes one line: tag, name, then one action code per column, in the
table's own column order (an empty cell stays empty). Nothing is edited by hand.
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser

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


class _TableReader(HTMLParser):
    """Collects the text of every cell of the table whose anchor is ``table_E.1-1``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.seen_anchor = False
        self.depth = 0  # <table> nesting inside the wanted table
        self.rows: list[list[str]] = []
        self.cell: list[str] | None = None
        self.subtitle: list[str] = []
        self.in_subtitle = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a" and ("id", "table_E.1-1") in attrs:
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
            self.rows[-1].append(" ".join("".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.in_subtitle:
            self.subtitle.append(data)
        if self.cell is not None:
            self.cell.append(data)


def main(path: str) -> int:
    reader = _TableReader()
    with open(path, encoding="utf-8") as f:
        reader.feed(f.read())
    edition = re.search(r"PS3\.15 (\d{4}[a-z])", "".join(reader.subtitle))
    if edition is None or not reader.rows:
        print(f"{path}: no PS3.15 edition or no Table E.1-1 found", file=sys.stderr)
        return 1
    header, *body = reader.rows
    wanted = ["Attribute Name", "Tag", *(c for c, _ in COLUMNS)]
    got = [re.sub(r" \(from PS3\.\d+\)", "", h) for h in header]
    if got != wanted:
        print(f"unexpected columns: {got}", file=sys.stderr)
        return 1
    print(f"# PS3.15 {edition.group(1)} Table E.1-1")
    print("\t".join(["tag", "name", *(n for _, n in COLUMNS)]))
    for row in body:
        if len(row) != len(wanted):
            print(f"row of {len(row)} cells: {row}", file=sys.stderr)
            return 1
        name, tag, *codes = row
        print("\t".join([tag.upper(), name, *codes]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
