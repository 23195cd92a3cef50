"""HL7 v2 de-identification (PID, NK1, PV1, free text) with the same keys as DICOM: the patient's
pseudonymous ID and name are the ones the DICOM objects of the same patient get."""

from __future__ import annotations

import pytest
from deid_helpers import KEY, OTHER_KEY

from pacsguard.deid.hl7 import deidentify_message
from pacsguard.deid.pseudonym import Pseudonyms

MESSAGE = "\r".join([
    "MSH|^~\\&|RIS|HOSP|PACS|HOSP|20240315101500||ADT^A08|MSG0001|P|2.5.1",
    "PID|1||PID4711^^^HOSP^MR||SMITHERS^WAYLON^J||19610402|M||2106-3|12 ELM ST^^SPRINGFIELD^IL^62701||"
    "555-0100|||||ACC778899|123-45-6789",
    "NK1|1|SMITHERS^MARGE|SPO|12 ELM ST^^SPRINGFIELD|555-0101",
    "|".join(["PV1", "1", "I", "WARD3^12^A", "", "", "", "1234^HIBBERT^JULIUS", *[""] * 11, "VN445566",
              *[""] * 24, "20240314080000", "20240316"]),
    "OBX|1|TX|NOTE||Waylon Smithers seen 20240315, MRN PID4711, stable||||||F",
    "NTE|1||Call SMITHERS family",
]) + "\r"


def test_identifiers_are_replaced_and_removed() -> None:
    out = deidentify_message(MESSAGE, Pseudonyms(KEY.secret))
    for secret in ("SMITHERS", "WAYLON", "Waylon", "Smithers", "PID4711", "ELM ST", "555-01", "123-45-6789",
                   "HIBBERT", "19610402", "ACC778899", "VN445566", "MARGE", "20240315,"):
        assert secret not in out, secret
    pid = next(s for s in out.split("\r") if s.startswith("PID")).split("|")
    assert pid[3] == Pseudonyms(KEY.secret).patient_id("PID4711")
    assert pid[5] == Pseudonyms(KEY.secret).patient_name("PID4711", "SMITHERS^WAYLON^J")
    assert pid[8] == "M"  # sex is not an identifier
    nk1 = next(s for s in out.split("\r") if s.startswith("NK1")).split("|")
    assert nk1[3] == "SPO" and nk1[2] == ""
    assert out.startswith("MSH|^~\\&|RIS")
    assert "stable" in out  # the meaning of free text stays


def test_same_ids_as_dicom_and_keyed() -> None:
    from pydicom.dataset import Dataset

    from pacsguard.deid.build import make_engine

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.11", "1.2.3.4"
    ds.PatientID, ds.PatientName = "PID4711", "SMITHERS^WAYLON^J"
    make_engine(KEY, []).deidentify(ds)
    pid = next(s for s in deidentify_message(MESSAGE, Pseudonyms(KEY.secret)).split("\r") if s.startswith("PID"))
    assert pid.split("|")[3] == ds.PatientID and pid.split("|")[5] == str(ds.PatientName)
    other = deidentify_message(MESSAGE, Pseudonyms(OTHER_KEY.secret))
    assert ds.PatientID not in other


def test_dates_shift_with_the_option_and_keep_intervals() -> None:
    out = deidentify_message(MESSAGE, Pseudonyms(KEY.secret), keep_dates_shifted=True)
    pv1 = next(s for s in out.split("\r") if s.startswith("PV1")).split("|")
    from datetime import datetime

    admit, discharge = datetime.strptime(pv1[44][:8], "%Y%m%d"), datetime.strptime(pv1[45][:8], "%Y%m%d")
    assert (discharge - admit).days == 2 and pv1[44][8:] == "080000"
    assert pv1[44][:8] != "20240314"
    plain = deidentify_message(MESSAGE, Pseudonyms(KEY.secret))
    assert next(s for s in plain.split("\r") if s.startswith("PV1")).split("|")[44] == ""


def test_not_hl7_is_refused() -> None:
    with pytest.raises(ValueError, match="MSH"):
        deidentify_message("PID|1||X", Pseudonyms(KEY.secret))
