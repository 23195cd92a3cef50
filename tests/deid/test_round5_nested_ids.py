"""Round 5 of outside testing (issue 20, bug 19b): a Patient ID inside a sequence item names its
own patient (Group of Patients Identification Sequence (0010,0027), Source Patient Group
Identification Sequence (0010,0026), PS3.3 C.7.1.1), so it gets that patient's keyed pseudonym,
the one that patient's own objects get, and never the pseudonym of the object's patient."""

from __future__ import annotations

from deid_helpers import KEY, engine, pydicom_files
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacsguard.deid.files import read_whole
from pacsguard.deid.pseudonym import Pseudonyms, shift_da

GROUP_OF_PATIENTS = 0x00100027  # Group of Patients Identification Sequence
SOURCE_PATIENT_GROUP = 0x00100026  # Source Patient Group Identification Sequence
MODIFIED_DATES = "retain-longitudinal-modified-dates"


def _object(patient_id: str, name: str) -> Dataset:
    ds = read_whole(next(p for p in pydicom_files() if p.name == "CT_small.dcm"))
    ds.PatientID = patient_id
    ds.PatientName = name
    ds.StudyDate = "20240115"
    return ds


def _member(patient_id: str, name: str = "", study_date: str = "") -> Dataset:
    item = Dataset()
    item.PatientID = patient_id
    if name:
        item.PatientName = name
    if study_date:
        item.StudyDate = study_date
    item.PatientPosition = "FFS"
    return item


def _group_image(*members: Dataset) -> Dataset:
    ds = _object("GROUP-A", "Cage^A")
    ds.add_new(GROUP_OF_PATIENTS, "SQ", Sequence(members))
    return ds


def _deidentified(ds: Dataset, *options: str) -> Dataset:
    engine(*options).deidentify(ds)
    return ds


def test_each_member_of_a_group_gets_the_pseudonym_of_its_own_objects() -> None:
    group = _deidentified(_group_image(_member("MOUSE-1"), _member("MOUSE-2")))
    own = [str(_deidentified(_object(pid, "Mouse^" + pid[-1])).PatientID) for pid in ("MOUSE-1", "MOUSE-2")]
    nested = [str(item.PatientID) for item in group[GROUP_OF_PATIENTS].value]
    assert nested == own
    assert len({*nested, str(group.PatientID)}) == 3  # no two patients collapse into one


def test_the_objects_own_patient_keeps_the_pseudonyms_it_always_had() -> None:
    """Longitudinal linkage of existing outputs: the top-level Patient ID, Name and date offset
    are derived from the top-level originals exactly as before, group sequence or not."""
    pseudonyms = Pseudonyms(KEY.secret)
    group = _deidentified(_group_image(_member("MOUSE-1", "Mouse^1")), MODIFIED_DATES)
    assert group.PatientID == pseudonyms.patient_id("GROUP-A")
    assert group.PatientName == pseudonyms.patient_name("GROUP-A", "Cage^A")
    assert group.StudyDate == shift_da("20240115", pseudonyms.day_shift("GROUP-A"))


def test_the_group_named_in_a_member_object_gets_the_groups_pseudonym() -> None:
    member = _object("MOUSE-1", "Mouse^1")
    member.add_new(SOURCE_PATIENT_GROUP, "SQ", Sequence([_member("GROUP-A")]))
    member = _deidentified(member)
    group = _deidentified(_object("GROUP-A", "Cage^A"))
    assert member[SOURCE_PATIENT_GROUP].value[0].PatientID == group.PatientID
    assert member.PatientID != group.PatientID


def test_a_members_name_and_dates_are_keyed_under_its_own_id() -> None:
    group = _deidentified(_group_image(_member("MOUSE-1", "Mouse^1", "20240110")), MODIFIED_DATES)
    alone = _object("MOUSE-1", "Mouse^1")
    alone.StudyDate = "20240110"
    alone = _deidentified(alone, MODIFIED_DATES)
    item = group[GROUP_OF_PATIENTS].value[0]
    assert item.PatientName == alone.PatientName
    assert item.StudyDate == alone.StudyDate  # the member's own offset (PS3.15 E.3.6), not the group's
    assert item.StudyDate != shift_da("20240110", Pseudonyms(KEY.secret).day_shift("GROUP-A"))


def test_an_item_naming_the_objects_own_patient_gets_the_same_pseudonym() -> None:
    ds = _object("GROUP-A", "Cage^A")
    ds.add_new(GROUP_OF_PATIENTS, "SQ", Sequence([_member("GROUP-A")]))
    ds = _deidentified(ds)
    assert ds[GROUP_OF_PATIENTS].value[0].PatientID == ds.PatientID


def test_an_empty_nested_id_is_no_claim_to_be_the_objects_patient() -> None:
    group = _deidentified(_group_image(_member("")))
    assert group[GROUP_OF_PATIENTS].value[0].PatientID != group.PatientID


def test_text_in_a_members_item_is_cleaned_of_both_patients() -> None:
    item = _member("MOUSE-1", "Whiskers^Pip")
    item.PatientComments = "Whiskers shares a cage with Cage A"
    group = _deidentified(_group_image(item), "clean-descriptors")
    text = str(group[GROUP_OF_PATIENTS].value[0].PatientComments).lower()
    assert "whiskers" not in text
    assert "cage" not in text
