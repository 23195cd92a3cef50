"""Round 9 of outside testing (issue 20: hostile files). `deid IN --out DIR` names each output
after its SOP Instance UID. That is the keyed 2.25 UID, except under retain-uids, where it is the
input's own value, and a hostile input's value was used as a path: SOP Instance UID "../evil"
wrote evil.dcm beside DIR, an absolute one wrote wherever it pointed (as the user running the
tool: root on many PACS servers), "1.2/3" made a folder in DIR. Now an output is named only by a
value of digits and dots (PS3.5 9.1), and any other input is withheld, naming why; nothing is
written outside DIR."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pydicom
from deid_helpers import KEY
from pydicom import config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT = "1.2.840.10008.5.1.4.1.1.2"


def _ct(path: Path, sop_instance_uid: str) -> None:
    fm = FileMetaDataset()
    fm.TransferSyntaxUID, fm.MediaStorageSOPClassUID = ExplicitVRLittleEndian, CT
    fm.MediaStorageSOPInstanceUID = "1.2.3"
    ds = Dataset()
    ds.file_meta = fm
    ds.SOPClassUID, ds.SOPInstanceUID = CT, sop_instance_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "Quixote^Zebulon", "PID77341", "CT"
    mode = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE  # pydicom would refuse to write such a UID
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.save_as(path, enforce_file_format=True)
    finally:
        config.settings.writing_validation_mode = mode


def test_a_sop_instance_uid_that_is_a_path_writes_nothing_outside_the_folder(tmp_path: Path) -> None:
    work = tmp_path / "work"
    inputs = work / "in"
    inputs.mkdir(parents=True)
    hostile = {"up.dcm": "../evil", "abs.dcm": str(tmp_path / "abs_evil"), "sub.dcm": "1.2/3",
               "dots.dcm": "..", "empty.dcm": ""}
    for name, uid in hostile.items():
        _ct(inputs / name, uid)
    _ct(inputs / "zeros.dcm", "1.2.840.0123.04")  # leading zeros: no valid UID, yet a safe name
    key = tmp_path / "k.key"
    key.write_text(KEY.secret.hex() + "\n")
    key.chmod(0o600)
    out = work / "anon"
    run = subprocess.run([sys.executable, "-m", "pacsguard.cli", "deid", str(inputs), "--out", str(out),
                          "--key-file", str(key), "--option", "retain-uids"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stdout + run.stderr
    everything = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()}
    made = {p for p in everything if p.parts[:2] not in (("work", "in"),)} - {Path("k.key")}
    assert made == {Path("work/anon.manifest.json"), Path("work/anon/1.2.840.0123.04.dcm")}, made
    records = {Path(r["source"]).name: r for r in json.loads((work / "anon.manifest.json").read_text())}
    for name, uid in hostile.items():
        assert records[name]["status"] == "withheld"
        assert records[name]["reason"] == (f"its SOP Instance UID {uid[:64]!r} is not a UID (PS3.5 9.1: digits "
                                           "and dots) and cannot name its output file"), records[name]
    assert pydicom.dcmread(out / "1.2.840.0123.04.dcm").SOPInstanceUID == "1.2.840.0123.04"
