"""Outside round 7 (issue 20): attributes newer than pydicom 3.0.2's dictionary (NEWER_VRS in
src/pacsguard/deid/dictionary.py) written in an Explicit VR file with VR UN, as a writer whose
dictionary lacks them writes them (pydicom itself does). An option that keeps such a sequence
(retain-patient-characteristics keeps Sex Parameters for Clinical Use Category Sequence) passed its
items as bytes, unchecked, the comment naming the patient included; one that cleans it
(clean-descriptors on Principal Diagnosis Code Sequence) replaced the sequence by two NUL bytes.
The value is now read as the Implicit VR Little Endian sequence PS3.5 6.2.2 says it is, and its
items de-identified; one that does not parse is removed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from deid_helpers import engine
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, generate_uid

from pacsguard.deid.files import deidentify_file

SEX_PARAMETERS_SEQUENCE = 0x00100043  # K under retain-patient-characteristics
SEX_PARAMETERS_COMMENT = 0x00100042  # C under retain-patient-characteristics
PRINCIPAL_DIAGNOSIS = 0x00081301  # C under clean-descriptors
COMMENT = "Quixote Zebulon asked on 20240301 to be called Zeb"


def _implicit_items(*items: Dataset) -> bytes:
    """Items of defined length in Implicit VR Little Endian: a sequence's value as UN (PS3.5 6.2.2)."""
    out = b""
    for item in items:
        body = DicomBytesIO()
        body.is_little_endian, body.is_implicit_VR = True, True
        write_dataset(body, item)
        out += b"\xfe\xff\x00\xe0" + len(body.getvalue()).to_bytes(4, "little") + body.getvalue()
    return out


def _file(path: Path, tag: int, value: bytes, *, syntax: str, undefined: bool, patient: bool = True) -> Path:
    """A minimal object whose last element is ``tag`` written as UN holding ``value``, of defined
    length or undefined length (then closed by a Sequence Delimitation Item); the patient's name,
    ID and sex (group 0010) only when ``tag`` comes after them."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID = generate_uid()
    if patient:
        ds.PatientName, ds.PatientID, ds.PatientSex = "Quixote^Zebulon", "PID77341", "M"
    ds.save_as(path, enforce_file_format=True)
    order = "little" if syntax == ExplicitVRLittleEndian else "big"
    group, element = (tag >> 16).to_bytes(2, order), (tag & 0xFFFF).to_bytes(2, order)
    if undefined:
        header = group + element + b"UN\0\0" + b"\xff\xff\xff\xff"
        value += b"\xfe\xff\xdd\xe0\0\0\0\0"  # the delimiter is Implicit VR Little Endian too
    else:
        header = group + element + b"UN\0\0" + len(value).to_bytes(4, order)
    path.write_bytes(path.read_bytes() + header + value)
    return path


def _dump(path: Path) -> str:
    proc = subprocess.run(["dcmdump", "+L", "+U8", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# Of undefined length pydicom reads the value as a sequence itself, in little endian; a big endian
# file with one is not read at all (and withheld): that case is not pacsguard's to test.
@pytest.mark.parametrize(("syntax", "undefined"), [(ExplicitVRLittleEndian, False), (ExplicitVRBigEndian, False),
                                                   (ExplicitVRLittleEndian, True)])
def test_a_kept_newer_sequence_written_as_un_has_its_items_cleaned(tmp_path: Path, syntax: str,
                                                                   undefined: bool) -> None:
    item = Dataset()
    item.add_new(SEX_PARAMETERS_COMMENT, "UT", COMMENT)
    source = _file(tmp_path / "in.dcm", SEX_PARAMETERS_SEQUENCE, _implicit_items(item), syntax=syntax,
                   undefined=undefined)
    assert b"Quixote" in source.read_bytes()
    result = deidentify_file(engine("retain-patient-characteristics"), source, tmp_path / "out.dcm")
    assert result.output is not None, result.withheld
    assert "Quixote" not in result.output.read_bytes().decode("latin-1")
    out = dcmread(result.output)
    assert out[SEX_PARAMETERS_SEQUENCE].VR == "SQ"
    assert out[SEX_PARAMETERS_SEQUENCE].value[0][SEX_PARAMETERS_COMMENT].value == "X X asked on X to be called Zeb"
    assert "(0010,0043) SQ" in _dump(result.output)


def test_a_cleaned_newer_sequence_written_as_un_stays_a_sequence(tmp_path: Path) -> None:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "C34.1", "I10", "Upper lobe, lung"
    source = _file(tmp_path / "in.dcm", PRINCIPAL_DIAGNOSIS, _implicit_items(code),
                   syntax=ExplicitVRLittleEndian, undefined=False, patient=False)
    result = deidentify_file(engine("clean-descriptors"), source, tmp_path / "out.dcm")
    assert result.output is not None, result.withheld
    out = dcmread(result.output)
    assert out[PRINCIPAL_DIAGNOSIS].VR == "SQ"
    assert out[PRINCIPAL_DIAGNOSIS].value[0].CodeValue == "C34.1"


def test_a_newer_sequence_written_as_un_that_does_not_parse_is_removed(tmp_path: Path) -> None:
    # An empty item, then text that pydicom's read_sequence would take for a second item.
    value = _implicit_items(Dataset()) + b"Quixote Zebulon!"
    source = _file(tmp_path / "in.dcm", SEX_PARAMETERS_SEQUENCE, value, syntax=ExplicitVRLittleEndian,
                   undefined=False)
    result = deidentify_file(engine("retain-patient-characteristics"), source, tmp_path / "out.dcm")
    assert result.output is not None, result.withheld
    assert SEX_PARAMETERS_SEQUENCE not in dcmread(result.output)
    assert b"Quixote" not in result.output.read_bytes()
