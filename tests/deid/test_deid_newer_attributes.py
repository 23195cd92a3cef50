"""Attributes Table E.1-1 (2026c) lists that pydicom's data dictionary does not know yet: in an
implicit VR file (PS3.5 7.1.3) pydicom alone would read them as UN bytes; the engine reads them
with their PS3.6 VR (pacsguard.deid.dictionary), so the options that keep them still clean them."""

from __future__ import annotations

import io
from pathlib import Path

from annex_e_oracle import NAME, PATIENT_ID, SECRET_WORDS
from deid_helpers import engine
from pydicom import dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian, generate_uid

from pacsguard.deid.dictionary import NEWER_VRS
from pacsguard.deid.encode import encode_file
from pacsguard.deid.files import read_whole

SEX_PARAMETERS_SEQUENCE = 0x00100043
SEX_PARAMETERS_COMMENT = 0x00100042
EFFECTIVE_START = 0x0040A034
HISTOLOGICAL_DIAGNOSES = 0x00081304


def _implicit_file(tmp: Path) -> Path:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = PATIENT_ID
    ds.PatientName = NAME
    inner = Dataset()
    inner.add(DataElement(SEX_PARAMETERS_COMMENT, "UT", f"told by {NAME}"))
    inner.PersonName = NAME
    ds.add(DataElement(SEX_PARAMETERS_SEQUENCE, "SQ", Sequence([inner])))
    ds.add(DataElement(EFFECTIVE_START, "DT", "20200115101010"))
    code = Dataset()
    code.CodeValue = "1"
    code.CodingSchemeDesignator = "99TEST"
    code.CodeMeaning = "diagnosis"
    code.PersonName = NAME
    ds.add(DataElement(HISTOLOGICAL_DIAGNOSES, "SQ", Sequence([code])))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = tmp / "implicit.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _with_vrs(ds: Dataset) -> Dataset:
    """Read back: give the newer attributes their VR as the engine does (recursively)."""
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        if isinstance(raw, RawDataElement) and raw.VR is None and tag in NEWER_VRS:
            ds[tag] = raw._replace(VR=NEWER_VRS[tag])
        if ds[tag].VR == "SQ":
            for item in ds[tag].value:
                _with_vrs(item)
    return ds


def _text(ds: Dataset) -> str:
    return " ".join(str(e.value) for e in ds.iterall()).lower()


def test_a_file_pydicom_reads_as_un_is_cleaned_with_the_attributes_own_vr(tmp_path: Path) -> None:
    source = read_whole(_implicit_file(tmp_path))
    assert source.get_item(SEX_PARAMETERS_SEQUENCE).VR is None  # pydicom has no VR for it here
    e = engine("retain-patient-characteristics", "retain-longitudinal-modified-dates", "clean-descriptors")
    e.deidentify(source)
    out = _with_vrs(dcmread(io.BytesIO(encode_file(source))))
    kept = out[SEX_PARAMETERS_SEQUENCE]
    assert kept.VR == "SQ" and len(kept.value) == 1  # K: kept, and its item cleaned
    assert SEX_PARAMETERS_COMMENT in kept.value[0]  # C under retain-patient-characteristics
    assert out[HISTOLOGICAL_DIAGNOSES].VR == "SQ" and len(out[HISTOLOGICAL_DIAGNOSES].value) == 1  # C
    shifted = str(out[EFFECTIVE_START].value)
    assert len(shifted) == 14 and shifted != "20200115101010" and shifted.endswith("101010")  # moved back
    assert not any(word in _text(out) for word in SECRET_WORDS)


def test_without_the_options_they_are_removed(tmp_path: Path) -> None:
    source = read_whole(_implicit_file(tmp_path))
    engine().deidentify(source)
    out = dcmread(io.BytesIO(encode_file(source)))
    for tag in (SEX_PARAMETERS_SEQUENCE, EFFECTIVE_START, HISTOLOGICAL_DIAGNOSES):
        assert tag not in out
