"""Outside round 7 (issue 20): attributes PS3.15 2026c Table E.1-1 does not list, which the
project's own rules (src/pacsguard/deid/rules.py) now decide by their meaning, not only their VR:
- a DIMSE command (group 0000, PS3.7 6.3) written into a stored object is removed whole, like a
  misplaced group 0002: its Error Comment can name the patient;
- comments written as LO (Dose Comment, Frame of Reference Transformation Comment, System Status
  and Test Result Comments) are free text: removed, or cleaned under clean-descriptors;
- Contact Display Name (a person, LO) gets a dummy; Breed Registration Number (a non-human
  patient's registry number) and Owner ID go, and Breed Registration Sequence is emptied (Type 2C);
- Long Code Value (PS3.3 Table 8.8-1) is a code, kept like Code Value: the free-text rule for its
  VR UC removed it, leaving code items with no value."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest
from deid_helpers import engine, pydicom_files
from pydicom.dataset import Dataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence

from pacsguard.deid.engine import Report
from pacsguard.deid.files import deidentify_file, read_whole

NAME, PID = "Quixote^Zebulon", "PID77341"


def _ct() -> Dataset:
    ds = read_whole(next(p for p in pydicom_files() if p.name == "CT_small.dcm"))
    ds.PatientName, ds.PatientID = NAME, PID
    return ds


def _write_with_command_group(ds: Dataset, path: Path) -> None:
    """Write ``ds`` as a Part 10 file as a careless device does, group 0000 and all (pydicom's
    dcmwrite refuses to: the bytes are laid out here with its lower-level writers)."""
    out = DicomFileLike(io.BytesIO())
    out.is_little_endian, out.is_implicit_VR = True, False
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, ds.file_meta)
    write_dataset(out, ds)
    path.write_bytes(out.parent.getvalue())


def _dcmdump(path: Path) -> str:
    proc = subprocess.run(["dcmdump", "+L", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_a_command_group_in_the_file_is_removed_whole(tmp_path: Path) -> None:
    ds = _ct()
    ds.add_new(0x00000902, "LO", "Store of QUIXOTE^ZEBULON PID77341 failed")  # Error Comment
    ds.add_new(0x00000600, "AE", "RESEARCH_AE")  # Move Destination
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = ds.SOPClassUID, "1.2.826.0.77341.9"
    item.add_new(0x00000902, "LO", "retry for Quixote")
    ds.ReferencedImageSequence = Sequence([item])
    source = tmp_path / "in.dcm"
    _write_with_command_group(ds, source)
    assert "QUIXOTE^ZEBULON" in _dcmdump(source)  # dcmtk reads the group in the input

    result = deidentify_file(engine(), source, tmp_path / "out.dcm")
    assert result.output is not None, result.withheld
    dump = _dcmdump(result.output)
    assert "(0000," not in dump
    assert "QUIXOTE" not in dump.upper() and "RESEARCH_AE" not in dump


def test_explain_names_the_command_group() -> None:
    ds = _ct()
    ds.add_new(0x00000902, "LO", "Store of QUIXOTE^ZEBULON failed")
    report = Report(detailed=True)
    engine().apply_attributes(ds, report)
    change = next(c for c in report.changes if c.path == "(0000,0902)")
    assert "DIMSE command" in change.source and "PS3.7" in change.source


COMMENTS = (0x30040006, 0x300600C8, 0x00287007, 0x0028702A)


def test_comments_written_as_lo_are_removed() -> None:
    ds = _ct()
    for tag in COMMENTS:
        ds.add_new(tag, "LO", "reviewed with Zebulon Quixote, ext 4471")
    engine().deidentify(ds)
    assert [f"{t:08X}" for t in COMMENTS if t in ds] == []


def test_comments_written_as_lo_are_cleaned_under_clean_descriptors() -> None:
    ds = _ct()
    for tag in COMMENTS:
        ds.add_new(tag, "LO", "reviewed with Zebulon Quixote, ext 4471")
    engine("clean-descriptors").deidentify(ds)
    assert [ds[t].value for t in COMMENTS] == ["reviewed with X X, ext X"] * len(COMMENTS)


@pytest.mark.parametrize("options", [(), ("retain-patient-characteristics", "clean-descriptors")])
def test_people_and_registration_numbers_do_not_pass(options: tuple[str, ...]) -> None:
    ds = _ct()
    ds.add_new(0x0074100C, "LO", "Sancho Panza")  # Contact Display Name
    registry = Dataset()
    registry.CodeValue, registry.CodingSchemeDesignator, registry.CodeMeaning = "109200", "DCM", "AKC"
    breed = Dataset()
    breed.BreedRegistrationNumber = "AKC-WS55512301"
    breed.BreedRegistryCodeSequence = Sequence([registry])
    ds.BreedRegistrationSequence = Sequence([breed])
    elsewhere = Dataset()
    elsewhere.BreedRegistrationNumber = "AKC-WS55512301"
    elsewhere.add_new(0x21000160, "SH", "zquixote")  # Owner ID
    ds.ReferencedPatientPhotoSequence = Sequence([elsewhere])
    engine(*options).deidentify(ds)
    assert ds[0x0074100C].value == "ANONYMOUS"
    assert ds.BreedRegistrationSequence == Sequence()  # present, empty: Type 2C
    assert "AKC-WS55512301" not in str(ds) and "zquixote" not in str(ds)


@pytest.mark.parametrize("options", [(), ("clean-descriptors",), ("clean-structured-content",)])
def test_a_long_code_value_is_kept_as_the_code_it_is(options: tuple[str, ...]) -> None:
    ds = _ct()
    code = Dataset()
    code.LongCodeValue = "LOCAL-ANATOMY-2024-00017-LEFT"
    code.CodingSchemeDesignator, code.CodeMeaning = "99STMARY", "Left lobe"
    ds.AnatomicRegionSequence = Sequence([code])
    engine(*options).deidentify(ds)
    assert ds.AnatomicRegionSequence[0].LongCodeValue == "LOCAL-ANATOMY-2024-00017-LEFT"
