"""Round 9 of outside testing (issue 20): one patient's name written in the equivalent forms
PS3.5 6.2 (Table 6.2-1, PN) allows gets one pseudonym. "Trailing null components and their
delimiters may be omitted": a modality that writes QUIXOTE^ZEBULON^^^ and one that writes
QUIXOTE^ZEBULON name the same person, and so does an HL7 PID-5 with its name type code
(QUIXOTE^ZEBULON^^^^^L, HL7 v2.5.1 2.A.88 XPN). Before, each form got its own Patient's Name
pseudonym, so the recipient saw two names for one pseudonymous Patient ID, and the HL7 message's
name no longer matched the DICOM objects'."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom
from deid_helpers import KEY, engine, patient_object
from pydicom.dataset import Dataset

from pacsguard.deid.engine import Report
from pacsguard.deid.hl7 import deidentify_message
from pacsguard.deid.pseudonym import Pseudonyms

CT = "1.2.840.10008.5.1.4.1.1.2"


def _ct(name: str) -> Dataset:
    ds = patient_object(CT, name=name)
    return ds


def test_two_modalities_spelling_one_name_differently_give_one_pseudonym(tmp_path: Path) -> None:
    """Through `pacsguard deid`: one patient, the name with and without trailing delimiters (and
    an empty trailing component group), in two files; the two outputs carry one name."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    forms = ("Quixote^Zebulon", "Quixote^Zebulon^^^", "Quixote^Zebulon^^^^==")
    for i, name in enumerate(forms):
        _ct(name).save_as(inputs / f"{i}.dcm", enforce_file_format=True)
    key = tmp_path / "k.key"
    key.write_text(KEY.secret.hex() + "\n")  # the form `pacsguard deid keygen` writes
    key.chmod(0o600)
    cli = [sys.executable, "-m", "pacsguard.cli", "deid"]
    run = subprocess.run([*cli, str(inputs), "--out", str(tmp_path / "out"), "--key-file", str(key)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr + run.stdout
    records = json.loads((tmp_path / "out.manifest.json").read_text())
    names = {str(pydicom.dcmread(r["output"]).PatientName) for r in records}
    assert len(records) == 3 and len(names) == 1, names
    assert names == {Pseudonyms(KEY.secret).patient_name("PID77341", "Quixote^Zebulon")}


def test_a_name_that_differs_keeps_its_own_pseudonym() -> None:
    """Only the forms PS3.5 calls equal are one: another middle name is another name."""
    p = Pseudonyms(KEY.secret)
    assert p.patient_name("PID77341", "Quixote^Zebulon^^^") == p.patient_name("PID77341", "Quixote^Zebulon")
    assert p.patient_name("PID77341", "Quixote^Zebulon^A") != p.patient_name("PID77341", "Quixote^Zebulon")
    assert p.patient_name("PID77341", "^Zebulon") != p.patient_name("PID77341", "Zebulon")  # an interior null


def test_hl7_pid5_with_a_name_type_code_matches_the_dicom_objects() -> None:
    """PID-5 as real ADT feeds send it (family^given^^^^^L) gets the DICOM object's name."""
    message = ("MSH|^~\\&|RIS|HOSP|PACS|HOSP|20190317101010||ADT^A08|MSG0001|P|2.5.1\r"
               "PID|1||PID77341^^^HOSP^MR||QUIXOTE^ZEBULON^^^^^L||19470823|M\r")
    pid5 = deidentify_message(message, Pseudonyms(KEY.secret)).split("\r")[1].split("|")[5]
    ds = _ct("QUIXOTE^ZEBULON")
    engine().deidentify(ds, Report())
    assert pid5 == str(ds.PatientName)
