"""Outside round 7 (issue 20): Clean Descriptors (PS3.15 E.3.5) scrubbed descriptions of the
patient's own name and ID only. The other people the object names (the referring and performing
physicians, the operators) and the patient's other names and IDs stayed in "CT for Dr Holmes, read
by Watson": Table E.1-1 replaces each of those names where it stands, and a description repeating
one kept it. Every person name and patient ID the object holds, in its sequences too, is now
scrubbed from cleaned text; ordinary words stay."""

from __future__ import annotations

from deid_helpers import engine
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacsguard.deid.engine import Report


def _study() -> Dataset:
    ds = Dataset()
    ds.PatientName, ds.PatientID = "Quixote^Zebulon", "PID77341"
    ds.ReferringPhysicianName = "Holmes^Sherlock"
    ds.OperatorsName = ["Hudson^Martha", "Lestrade^G"]
    ds.OtherPatientNames = "Panza^Sancho"
    ds.OtherPatientIDs = "MRN-ABQ"
    step = Dataset()
    step.PerformingPhysicianName = "Watson^John"
    ds.ProcedureCodeSequence = Sequence([step])
    ds.StudyDescription = "CT chest for Dr Holmes, read by Watson"
    ds.SeriesDescription = "Tech Hudson and Lestrade; aka Sancho, MRN-ABQ"
    ds.ImageComments = "Sherlock asked for contrast"
    return ds


def test_everyone_the_object_names_is_scrubbed_from_cleaned_text() -> None:
    ds = _study()
    engine("clean-descriptors").deidentify(ds)
    assert ds.StudyDescription == "CT chest for Dr X, read by X"
    assert ds.SeriesDescription == "Tech X and X; aka X, X"
    assert ds.ImageComments == "X asked for contrast"


def test_the_names_are_read_before_they_are_replaced() -> None:
    ds = _study()
    report = Report(detailed=True)
    engine("clean-descriptors", "retain-patient-characteristics").apply_attributes(ds, report)
    assert "Holmes" not in str(ds) and "Watson" not in str(ds) and "Hudson" not in str(ds)
    assert "contrast" in ds.ImageComments and "chest" in ds.StudyDescription
