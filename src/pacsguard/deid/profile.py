"""PS3.15 Annex E, Table E.1-1 (Application Level Confidentiality Profile Attributes) as data, and
the profile's options (PS3.15 E.3) with their CID 7050 codes (PS3.16).

The table is annex_e.tsv beside this module, generated from the standard's own text of PS3.15
(NEMA's DocBook source part15.xml, or its HTML rendering) by tools/annex_e_table.py; its first
line names the edition and the SHA-256 of the document read. Nothing in it is typed by hand.
Regenerate it from a newer part15.xml the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from functools import cache
from importlib.resources import files


class Option(str, Enum):
    """The options of PS3.15 E.3, by their command-line names."""

    CLEAN_PIXEL_DATA = "clean-pixel-data"
    CLEAN_RECOGNIZABLE_VISUAL_FEATURES = "clean-recognizable-visual-features"
    CLEAN_GRAPHICS = "clean-graphics"
    CLEAN_STRUCTURED_CONTENT = "clean-structured-content"
    CLEAN_DESCRIPTORS = "clean-descriptors"
    RETAIN_LONGITUDINAL_FULL_DATES = "retain-longitudinal-full-dates"
    RETAIN_LONGITUDINAL_MODIFIED_DATES = "retain-longitudinal-modified-dates"
    RETAIN_PATIENT_CHARACTERISTICS = "retain-patient-characteristics"
    RETAIN_DEVICE_IDENTITY = "retain-device-identity"
    RETAIN_INSTITUTION_IDENTITY = "retain-institution-identity"
    RETAIN_UIDS = "retain-uids"
    RETAIN_SAFE_PRIVATE = "retain-safe-private"

    @property
    def column(self) -> str | None:
        """Its column in annex_e.tsv; None for the two pixel options, which Table E.1-1 has no column for."""
        return _COLUMNS.get(self)

    @property
    def code(self) -> tuple[str, str]:
        """Its code in CID 7050 (De-identification Method), scheme DCM: (value, meaning)."""
        return _CODES[self]


_COLUMNS = {
    Option.RETAIN_SAFE_PRIVATE: "retain_safe_private",
    Option.RETAIN_UIDS: "retain_uids",
    Option.RETAIN_DEVICE_IDENTITY: "retain_device_identity",
    Option.RETAIN_INSTITUTION_IDENTITY: "retain_institution_identity",
    Option.RETAIN_PATIENT_CHARACTERISTICS: "retain_patient_characteristics",
    Option.RETAIN_LONGITUDINAL_FULL_DATES: "retain_longitudinal_full_dates",
    Option.RETAIN_LONGITUDINAL_MODIFIED_DATES: "retain_longitudinal_modified_dates",
    Option.CLEAN_DESCRIPTORS: "clean_descriptors",
    Option.CLEAN_STRUCTURED_CONTENT: "clean_structured_content",
    Option.CLEAN_GRAPHICS: "clean_graphics",
}

#: PS3.16 CID 7050: the Basic profile is 113100, the options 113101-113112.
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
_CODES = {
    Option.CLEAN_PIXEL_DATA: ("113101", "Clean Pixel Data Option"),
    Option.CLEAN_RECOGNIZABLE_VISUAL_FEATURES: ("113102", "Clean Recognizable Visual Features Option"),
    Option.CLEAN_GRAPHICS: ("113103", "Clean Graphics Option"),
    Option.CLEAN_STRUCTURED_CONTENT: ("113104", "Clean Structured Content Option"),
    Option.CLEAN_DESCRIPTORS: ("113105", "Clean Descriptors Option"),
    Option.RETAIN_LONGITUDINAL_FULL_DATES: ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    Option.RETAIN_LONGITUDINAL_MODIFIED_DATES: (
        "113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    Option.RETAIN_PATIENT_CHARACTERISTICS: ("113108", "Retain Patient Characteristics Option"),
    Option.RETAIN_DEVICE_IDENTITY: ("113109", "Retain Device Identity Option"),
    Option.RETAIN_UIDS: ("113110", "Retain UIDs Option"),
    Option.RETAIN_SAFE_PRIVATE: ("113111", "Retain Safe Private Option"),
    Option.RETAIN_INSTITUTION_IDENTITY: ("113112", "Retain Institution Identity Option"),
}

#: Options that cannot be chosen together: PS3.15 E.3.6 offers the dates either in full or modified.
EXCLUSIVE = (frozenset({Option.RETAIN_LONGITUDINAL_FULL_DATES, Option.RETAIN_LONGITUDINAL_MODIFIED_DATES}),)


@dataclass(frozen=True, slots=True)
class Row:
    """One row of Table E.1-1. ``tag`` as the table writes it, ``(gggg,eeee)``; ``mask``/``value``
    match a 32-bit tag (repeating groups such as 60xx have x digits masked out); ``private`` is the
    row for every private attribute (odd group)."""

    tag: str
    name: str
    retired: bool
    in_std_iod: bool
    basic: str
    options: tuple[tuple[str, str], ...]  # (column, action) for every non-empty option cell
    mask: int
    value: int
    private: bool

    def action(self, column: str) -> str | None:
        return next((a for c, a in self.options if c == column), None)

    def matches(self, tag: int) -> bool:
        return (tag & self.mask) == self.value


@dataclass(frozen=True)
class Table:
    edition: str
    rows: tuple[Row, ...]
    exact: dict[int, Row] = field(init=False, repr=False, compare=False)
    repeating: tuple[Row, ...] = field(init=False, repr=False, compare=False)
    private_row: Row = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Indexes built once: find() runs for every attribute of every object.
        object.__setattr__(self, "exact", {r.value: r for r in self.rows if r.mask == 0xFFFFFFFF and not r.private})
        object.__setattr__(self, "repeating", tuple(r for r in self.rows if r.mask != 0xFFFFFFFF and not r.private))
        object.__setattr__(self, "private_row", next(r for r in self.rows if r.private))

    def find(self, tag: int) -> Row | None:
        """The row that decides an attribute: its own, a repeating-group row, or the private row."""
        row = self.exact.get(tag)
        if row is not None:
            return row
        for row in self.repeating:
            if row.matches(tag):
                return row
        return self.private_row if (tag >> 16) & 1 else None


_TAG = re.compile(r"^\(([0-9A-FX]{4}),([0-9A-FX]{4})\)$")


def _pattern(tag: str) -> tuple[int, int, bool]:
    if tag.startswith("(GGGG,EEEE)"):
        return 0, 0, True
    m = _TAG.match(tag)
    if m is None:
        raise ValueError(f"Table E.1-1 tag not understood: {tag!r}")
    digits = m.group(1) + m.group(2)
    mask = int("".join("0" if d == "X" else "F" for d in digits), 16)
    value = int(digits.replace("X", "0"), 16)
    return mask, value, False


def parse_table(text: str) -> Table:
    """Read annex_e.tsv: a comment naming the edition, a header, one row per attribute."""
    lines = text.splitlines()
    edition = re.search(r"PS3\.15 (\d{4}[a-z])", lines[0])
    if edition is None:
        raise ValueError("annex_e.tsv does not name its edition")
    header = lines[1].split("\t")
    rows = []
    for line in lines[2:]:
        cells = dict(zip(header, line.split("\t"), strict=True))
        mask, value, private = _pattern(cells["tag"])
        options = tuple((c, cells[c]) for c in _COLUMNS.values() if cells[c])
        rows.append(Row(cells["tag"], cells["name"], cells["retired"] == "Y", cells["in_std_iod"] == "Y",
                        cells["basic"], options, mask, value, private))
    return Table(edition.group(1), tuple(rows))


@cache
def table() -> Table:
    """The project's Table E.1-1 (loaded once; a Table is immutable)."""
    return parse_table(files("pacsguard.deid").joinpath("annex_e.tsv").read_text(encoding="utf-8"))
