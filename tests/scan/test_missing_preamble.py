"""A file that starts with "DICM" (PS3.10 7.1 wants 128 bytes of preamble before it, which some
writers leave out) is DICOM all the same: every rule runs on it, and the missing preamble is a low
finding. Before part10._magic_first it was "not DICOM" (a note), and whatever it carried was
never searched. Raw data sets with no preamble and no "DICM" (pydicom's no-meta test files) are
read as before."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset
from pydicom.uid import UID
from scan_samples import base, encode, mz_header, pe_header

from pacsguard.scan.model import FileReport, Level
from pacsguard.scan.scanner import Scanner

DEFLATED_TS = "1.2.840.10008.1.2.1.99"


def rules(report: FileReport) -> dict[str, Level]:
    out: dict[str, Level] = {}
    for f in report.findings:
        out[f.rule] = max(out.get(f.rule, Level.INFO), f.level)
    return out


def without_preamble(ds: Dataset) -> bytes:
    """pydicom's Part-10 encoding of ``ds``, its 128-byte preamble cut off: "DICM" at offset 0."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = encode(ds)
    assert data[128:132] == b"DICM"
    return data[128:]


def pe() -> bytes:
    """A Windows executable's headers: MZ whose e_lfanew finds "PE\\0\\0" and an x86 COFF header."""
    program = bytearray(mz_header(0x40)) + bytes(64)
    program[0x40:0x40 + 24] = pe_header()
    return bytes(program)


@pytest.mark.parametrize("syntax", [None, "1.2.840.10008.1.2", DEFLATED_TS], ids=["explicit", "implicit", "deflated"])
def test_dicm_at_offset_0_is_scanned_as_dicom(syntax: str | None, scanner: Scanner) -> None:
    ds = base()
    ds.private_block(0x0009, "PACSGUARD TEST", create=True).add_new(0x10, "OB", pe())
    if syntax:
        ds.file_meta.TransferSyntaxUID = UID(syntax)
    data = without_preamble(ds)
    report = scanner.scan_bytes(data, "no-preamble")
    found = rules(report)
    assert "structure.not-dicom" not in found
    assert found.get("structure.missing-preamble") == Level.LOW
    payload = [f for f in report.findings if f.rule == "embedded.pe"]
    assert payload and payload[0].level == Level.HIGH and (payload[0].tag or "").startswith("(0009,")
    if syntax != DEFLATED_TS:  # offsets of a deflated data set are in the inflated stream
        assert payload[0].offset is not None and data[payload[0].offset:payload[0].offset + 2] == b"MZ"
    assert report.patient_id == str(ds.PatientID) and report.study_uid == str(ds.StudyInstanceUID)


def test_a_clean_file_without_preamble_is_only_low(scanner: Scanner) -> None:
    report = scanner.scan_bytes(without_preamble(base()), "no-preamble")
    assert [(f.rule, f.level, f.offset) for f in report.findings] == [("structure.missing-preamble", Level.LOW, 0)]
    assert not report.fails(Level.MEDIUM)


#: pydicom's test files with no preamble and no "DICM": raw data sets (the last one is no data set
#: at all, a note). Before "DICM" at offset 0 was read, none had a finding above info.
NO_META = ("OT-PAL-8-face.dcm", "ExplVR_BigEndNoMeta.dcm", "ExplVR_LitEndNoMeta.dcm", "rtstruct.dcm", "no_meta.dcm")


def test_raw_data_sets_without_preamble_or_dicm_read_as_before(scanner: Scanner) -> None:
    seen = 0
    for path in map(Path, get_testdata_files()):
        if path.name not in NO_META or not os.path.isfile(path):
            continue
        data = path.read_bytes()
        if data[:4] == b"DICM" or data[128:132] == b"DICM":
            continue  # a file of that name with a header: not one of these
        seen += 1
        report = scanner.scan_bytes(data, path.name)
        assert [f.rule for f in report.findings if f.level > Level.INFO] == [], path.name
    assert seen >= 4


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=0, max_size=600))
def test_arbitrary_bytes_after_dicm_scan_without_raising(blob: bytes) -> None:
    report = Scanner().scan_bytes(b"DICM\x02\x00\x00\x00UL" + blob, "fuzz")
    assert not any(f.rule.endswith(".error") for f in report.findings)
