"""The test oracle for de-identification: PS3.15 Table E.1-1 as the innolitics dicom-standard
project publishes it (../shared/reference, the 2024 edition, older than the project's table), and
what "satisfies a row" means for each action code (PS3.15 E.1.1)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from pacsguard.deid.dictionary import NEWER_VRS
from pacsguard.deid.profile import Option, Row

REFERENCE = (Path(__file__).resolve().parents[2] / ".." / "shared" / "reference"
             / "confidentiality_profile_attributes.json")

#: The reference's option keys, by the project's option names.
OPTION_KEYS = {
    "retain-safe-private": "rtnSafePrivOpt",
    "retain-uids": "rtnUIDsOpt",
    "retain-device-identity": "rtnDevIdOpt",
    "retain-institution-identity": "rtnInstIdOpt",
    "retain-patient-characteristics": "rtnPatCharsOpt",
    "retain-longitudinal-full-dates": "rtnLongFullDatesOpt",
    "retain-longitudinal-modified-dates": "rtnLongModifDatesOpt",
    "clean-descriptors": "cleanDescOpt",
    "clean-structured-content": "cleanStructContOpt",
    "clean-graphics": "cleanGraphOpt",
}

#: Cells the project's edition (PS3.15 2026c) changed on rows the reference (2024) already had:
#: (tag, option or basic) -> (2024, project's edition).
EDITION_CHANGES = {
    # Requesting Service gained a Clean Descriptors cell: the service's name is kept, cleaned (C).
    ("(0032,1033)", "clean-descriptors"): (None, "C"),
}

#: A name and an ID that the test values carry, so "cleaned" can be checked.
NAME = "SMITHERS^WAYLON"
PATIENT_ID = "PID-00423817"
SECRET_WORDS = ("smithers", "waylon", "00423817")


@cache
def reference_rows() -> tuple[dict[str, Any], ...]:
    return tuple(json.loads(REFERENCE.read_text(encoding="utf-8")))


def exact_tag(row: dict[str, Any]) -> int | None:
    tag = row["tag"]
    if "X" in tag[1:10] or "G" in tag:
        return None
    return int(tag[1:5] + tag[6:10], 16)


def expected(row: dict[str, Any], option: str | None) -> str:
    """The code a row asks for under one option (or the basic profile); where the project's newer
    edition differs (EDITION_CHANGES, explained there), the newer edition's code."""
    changed = EDITION_CHANGES.get((row["tag"].upper(), option or "basic"))
    if changed is not None:
        return changed[1] or str(row["basicProfile"])
    if option is not None and row.get(OPTION_KEYS.get(option, ""), None):
        return str(row[OPTION_KEYS[option]])
    return str(row["basicProfile"])


def vr_of(tag: int) -> str:
    if tag in NEWER_VRS:  # attributes newer than pydicom's dictionary
        return NEWER_VRS[tag]
    vr = dictionary_VR(tag)
    return {"US or SS": "US", "OB or OW": "OB", "US or OW": "US", "US or SS or OW": "US"}.get(vr, vr)


def sample_value(tag: int, vr: str, n: int) -> Any:
    """A value for the attribute that plainly identifies the patient where its VR allows."""
    if vr == "SQ":
        item = Dataset()
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        item.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.99.{n}.1"
        item.PersonName = NAME
        return Sequence([item])
    return {
        "AE": "WAYLONWS", "AS": "045Y", "CS": "SMITHERS", "DA": "20200115", "DS": "7.5", "DT": "20200115101010",
        "IS": "42", "LO": f"{NAME} {PATIENT_ID}", "LT": f"seen by {NAME} id {PATIENT_ID}", "PN": NAME,
        "SH": "SMITHERS0423817"[:16], "ST": f"{NAME} {PATIENT_ID}", "TM": "101010", "UC": NAME,
        "UI": f"1.2.826.0.1.3680043.99.{n}", "UR": "http://smithers.example/", "UT": f"{NAME} {PATIENT_ID}",
        "FL": 1.5, "FD": 1.5, "SL": 3, "SS": 3, "UL": 3, "US": 3, "SV": 3, "UV": 3, "AT": 0x00100010,
    }.get(vr, b"\x01\x02")


def as_reference_row(row: Row) -> dict[str, Any]:
    """A row of the project's table in the reference's shape, for rows the reference does not have."""
    cells = {OPTION_KEYS[o.value]: a for o in Option if o.column and (a := row.action(o.column)) is not None}
    return {"tag": row.tag, "name": row.name, "basicProfile": row.basic, **cells}


def every_attribute(nested: bool = False, rows: Iterable[dict[str, Any]] | None = None) -> Dataset:
    """A data set with every attribute of the reference table (or of ``rows``) that a data set can
    hold (groups 0000, 0002 and 0004 belong to commands, file meta and DICOMDIRs), and with
    ``nested``, all of them again inside an item of a sequence the table does not list."""
    rows = tuple(reference_rows() if rows is None else rows)
    ds = Dataset()
    ds.PatientID = PATIENT_ID
    ds.PatientName = NAME
    for n, row in enumerate(rows):
        tag = exact_tag(row)
        if tag is None or tag >> 16 in (0x0000, 0x0002, 0x0004):
            continue
        vr = vr_of(tag)
        ds.add(DataElement(tag, vr, sample_value(tag, vr, n)))
    ds.PatientID = PATIENT_ID
    ds.PatientName = NAME
    ds.add_new(0x50000010, "US", 1)  # Curve Data group (50xx,xxxx)
    ds.add_new(0x60003000, "OW", b"\x00\x01" * 8)  # Overlay Data
    ds.add_new(0x60004000, "LT", NAME)  # Overlay Comments
    ds.add_new(0x00090010, "LO", "ACME 1.0")  # a private block and one private attribute
    ds.add_new(0x00091001, "LO", NAME)
    if nested:
        inner = every_attribute(rows=rows)
        ds.add_new(0x52009229, "SQ", Sequence([inner]))  # Shared Functional Groups Sequence: not listed
    return ds


def walk(ds: Dataset, prefix: str = "") -> Iterator[tuple[str, DataElement]]:
    for elem in ds:
        path = f"{prefix}{int(elem.tag):08X}"
        yield path, elem
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value or ()):
                yield from walk(item, f"{path}[{i}].")


def _text(elem: DataElement) -> str:
    return str(elem.value if elem.value is not None else "")


def _empty(elem: DataElement) -> bool:
    return elem.value in (None, "", b"", []) or (elem.VR == "SQ" and len(elem.value) == 0)


def _changed(before: DataElement, after: DataElement) -> bool:
    return _text(before) != _text(after)


def _identifying(elem: DataElement) -> bool:
    text = _text(elem).lower()
    return any(w in text for w in SECRET_WORDS)


def satisfied(code: str, before: DataElement, after: DataElement | None) -> bool:
    """Does ``after`` (None: removed) carry out ``code`` on ``before`` (PS3.15 E.1.1)?"""
    present = after is not None
    z = present and (_empty(after) or _changed(before, after) or not _identifying(after))  # Z: empty or dummy
    d = present and not _empty(after) and (_changed(before, after) or before.VR == "SQ")  # D: a dummy
    if before.VR == "SQ" and present:
        # A sequence "replaced" keeps no identifying value anywhere inside it.
        d = not any(_identifying(e) for _, e in walk_items(after))
        z = _empty(after) or d
    if code == "X":
        return not present
    if code == "Z":
        return z
    if code == "D":
        return d
    if code == "K":
        return present and (before.VR == "SQ" or _text(before) == _text(after))
    if code == "U":
        if present and _empty(before):
            return True  # no UID to replace
        return present and _changed(before, after) and all(UID(v).is_valid for v in _values(after))
    if code == "C":
        if not present:
            return False
        if _empty(before):
            return True  # nothing to clean
        if before.VR in ("DA", "DT"):
            return _changed(before, after)
        return not _identifying(after) if before.VR != "SQ" else d
    if code in ("X/Z", "X/D", "Z/D", "X/Z/D"):
        return (not present and "X" in code) or (z and "Z" in code) or (d and "D" in code)
    if code == "X/Z/U*":
        return not present or _empty(after) or d
    raise AssertionError(f"unknown code {code}")


def walk_items(seq_elem: DataElement) -> Iterator[tuple[str, DataElement]]:
    for item in seq_elem.value or ():
        yield from walk(item)


def _values(elem: DataElement) -> list[str]:
    value = elem.value
    return [str(v) for v in value] if isinstance(value, list | tuple) or hasattr(value, "__iter__") and not isinstance(
        value, str) else [str(value)]
