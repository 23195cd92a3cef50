"""Round 9, wave 2: what a patient's name pseudonym and date offset (PS3.15 E.3.6) are keyed by.

- DICOM objects without a Patient ID were all keyed by the empty ID: every such object, of any
  patient, got one date offset and one name key, so one known date revealed the offset of all.
  They are now keyed by the patient's name with the birth date, else by the Study Instance UID.
- HL7 keyed the patient by PID-3's first repetition and PID-5's first repetition: an SSN listed
  before the record number, an empty first repetition of either (HL7 v2.5.1 3.4.2.5 sends one
  when there is no legal name) gave other pseudonyms and offsets than the patient's DICOM objects.
- A byte order mark before MSH, or a message cut off inside MSH, was called "not starting with
  an MSH segment"."""

from __future__ import annotations

import pytest
from deid_helpers import KEY, engine
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pacsguard.deid.engine import Report
from pacsguard.deid.hl7 import deidentify_message
from pacsguard.deid.pseudonym import Pseudonyms

P = Pseudonyms(KEY.secret)
MODIFIED = "retain-longitudinal-modified-dates"


def _ct(patient_id: str | None, name: str, birth: str, study: str | None = None) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyInstanceUID = study or generate_uid()
    if patient_id is not None:
        ds.PatientID = patient_id
    ds.PatientName, ds.PatientBirthDate, ds.Modality = name, birth, "CT"
    ds.StudyDate = ds.SeriesDate = "20240402"
    return ds


def _out(ds: Dataset) -> tuple[str, str]:
    """The shifted Study Date and the name pseudonym."""
    engine(MODIFIED).apply_attributes(ds, Report())
    return str(ds.StudyDate), str(ds.PatientName)


@pytest.mark.parametrize("patient_id", [None, ""])
def test_objects_without_a_patient_id_do_not_share_one_offset(patient_id: str | None) -> None:
    a = _out(_ct(patient_id, "QUIXOTE^ZEBULON", "19520714"))
    b = _out(_ct(patient_id, "QUIMBY^JOSEPHINE", "19610203"))
    c = _out(_ct(patient_id, "", ""))
    d = _out(_ct(patient_id, "", ""))
    assert len({a[0], b[0], c[0], d[0]}) == 4  # four offsets: known dates of one reveal nothing of the others
    assert a[1] != b[1] and c[1] != d[1]


def test_one_patient_without_an_id_keeps_one_offset_and_name_across_studies() -> None:
    first = _out(_ct("", "QUIXOTE^ZEBULON", "19520714"))
    second = _out(_ct(None, "QUIXOTE^ZEBULON^^", "19520714"))
    assert first == second
    # Within one study, objects of an anonymous patient still share the offset (intervals kept).
    study = generate_uid()
    assert _out(_ct("", "", "", study)) == _out(_ct("", "", "", study))


def test_a_patient_id_still_decides_as_before() -> None:
    a = _out(_ct("PID77341", "QUIXOTE^ZEBULON", "19520714"))
    b = _out(_ct("PID77341", "QUIXOTE^ZEBULON", "19610203"))
    assert a == b
    assert a[1] == P.patient_name("PID77341", "QUIXOTE^ZEBULON")


def _adt(pid3: str, pid5: str, pid7: str = "19520714") -> str:
    return (f"MSH|^~\\&|ADT1|GHH|RADIS|SPRING|20240402101500||ADT^A04^ADT_A01|CTRL1|P|2.5.1\r"
            f"PID|1||{pid3}||{pid5}||{pid7}|M\r"
            "PV1|1|O" + "|" * 42 + "20240402\r")


def _hl7(message: str) -> tuple[str, str]:
    """PV1-44 (admit date, 20240402 before) shifted and PID-5, as DICOM writes the name."""
    out = deidentify_message(message, P, keep_dates_shifted=True)
    segments = {s.split("|")[0]: s.split("|") for s in out.split("\r") if s}
    return segments["PV1"][44], segments["PID"][5]


@pytest.mark.parametrize("pid3, pid5", [
    ("123-45-6789^^^SSA^SS~MRN77341^^^GHH^MR", "QUIXOTE^ZEBULON"),
    ("~MRN77341^^^GHH^MR", "QUIXOTE^ZEBULON"),
    ("987654321^^^USA^NNUSA~MRN77341^^^GHH", "QUIXOTE^ZEBULON^^^^^L"),
    ("MRN77341^^^GHH^MR", "~QUIXOTE^ZEBULON^^^^^D"),
    ("MRN77341^^^GHH^MR", "ZEB^^^^^^A~QUIXOTE^ZEBULON^^^^^L"),
])
def test_hl7_keys_the_record_number_and_legal_name_as_dicom(pid3: str, pid5: str) -> None:
    dicom = _out(_ct("MRN77341", "QUIXOTE^ZEBULON", "19520714"))
    assert _hl7(_adt(pid3, pid5)) == dicom


def test_hl7_without_pid3_matches_dicom_without_patient_id() -> None:
    dicom = _out(_ct("", "QUIXOTE^ZEBULON", "19520714"))
    assert _hl7(_adt("", "QUIXOTE^ZEBULON", "195207141030")) == dicom
    other = _hl7(_adt("", "QUIMBY^JOSEPHINE", "19610203"))
    assert other[0] != dicom[0]
    # Neither a name nor a birth date: keyed by the message's own control ID, shared with nothing.
    anonymous = _hl7(_adt("", "", ""))
    assert anonymous[0] not in (dicom[0], other[0], _out(_ct("", "", ""))[0])


def test_a_byte_order_mark_before_msh_is_read_as_the_message() -> None:
    message = _adt("MRN77341^^^GHH^MR", "QUIXOTE^ZEBULON")
    assert deidentify_message("\ufeff" + message, P) == deidentify_message(message, P)


@pytest.mark.parametrize("message, words", [
    ("MSH", "MSH-1 (the field separator) is missing"),
    ("MSH\rPID|1", "MSH-1 (the field separator) is missing"),
    ("MSH|^", "MSH-2 (encoding characters)"),
    ("PID|1||MRN77341\r", "starts with 'PID|1||M'"),
    ("", "starts with ''"),
])
def test_a_message_cut_off_in_msh_is_named_so(message: str, words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)").replace("|", r"\|")):
        deidentify_message(message, P)


def test_a_short_msh_with_its_separators_is_read() -> None:
    assert deidentify_message("MSH|^~", P) == "MSH|^~\r"
    # MSH-2 ends with the segment: the CR is no escape character.
    out = deidentify_message("MSH|^~\rNTE|1||Z\\XE9\\BULON QUIXOTE\rPID|1||MRN77341||QUIXOTE^ZÉBULON", P)
    assert "QUIXOTE" not in out and "BULON" not in out
