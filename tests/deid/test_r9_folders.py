"""Round 9 of outside testing (issue 20: every refused file named with why, nothing accepted
lost). A PACS export folder whose series are symbolic links to where the archive keeps them was
de-identified as if the links were not there: `pacsguard deid export --out anon` wrote the
folder's own files, reported "1 written, 0 withheld" with exit 0, and the linked series never
left the hospital de-identified nor were named anywhere. A link to nothing went unnamed too. And
files that are not DICOM files (empty, cut inside the preamble, a data set without PS3.10 File
Meta Information) were named with pydicom's advice to a programmer, "Use force=True"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
from deid_helpers import KEY, patient_object, pydicom_files

CT = "1.2.840.10008.5.1.4.1.1.2"


def _ct(path: Path) -> None:
    ds = patient_object(CT)
    ds.save_as(path, enforce_file_format=True)


def _deid(tmp_path: Path, *inputs: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, dict[str, str]]]:
    key = tmp_path / "k.key"
    key.write_text(KEY.secret.hex() + "\n")
    key.chmod(0o600)
    run = subprocess.run([sys.executable, "-m", "pacsguard.cli", "deid", *map(str, inputs), "--out",
                          str(tmp_path / "anon"), "--key-file", str(key)], capture_output=True, text=True,
                         timeout=60)
    records = json.loads((tmp_path / "anon.manifest.json").read_text())
    return run, {r["source"]: r for r in records}


def test_a_linked_series_folder_is_de_identified_and_a_broken_link_named(tmp_path: Path) -> None:
    archive = tmp_path / "archive" / "series2"
    archive.mkdir(parents=True)
    for i in range(3):
        _ct(archive / f"IM{i}")
    export = tmp_path / "export"
    export.mkdir()
    _ct(export / "IM_own")
    (export / "series2").symlink_to(archive)
    (export / "again").symlink_to(export)  # a link back up: each real folder is read once
    (export / "IM_gone").symlink_to(tmp_path / "moved-away")
    run, records = _deid(tmp_path, export)
    assert run.returncode == 1, run.stdout + run.stderr
    written = [r for r in records.values() if r["status"] == "written"]
    assert len(written) == 4, records  # IM_own and the three linked ones, each once
    assert all(str(pydicom.dcmread(r["output"]).PatientName).startswith("ANON^") for r in written)
    gone = records[str(export / "IM_gone")]
    assert gone["status"] == "withheld" and gone["reason"] == "cannot be read: No such file or directory"
    assert f"withheld {export / 'IM_gone'}: cannot be read" in run.stdout + run.stderr
    assert "4 written, 1 withheld" in run.stdout + run.stderr


def test_files_that_are_not_dicom_files_are_named_in_an_administrators_words(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "empty.dcm").write_bytes(b"")
    ct = next(p for p in pydicom_files() if p.name == "CT_small.dcm").read_bytes()
    (folder / "short.dcm").write_bytes(ct[:100])
    no_meta = next(p for p in pydicom_files() if p.name == "rtstruct.dcm")  # a data set without PS3.10 meta
    os.symlink(no_meta, folder / "rtstruct.dcm")
    run, records = _deid(tmp_path, folder)
    why = {Path(source).name: r["reason"] for source, r in records.items()}
    assert why == {
        "empty.dcm": "not a DICOM file: it is empty",
        "short.dcm": "not a DICOM file: it is 100 bytes, shorter than the 128-byte preamble and 'DICM' "
                     "prefix a DICOM file begins with (PS3.10 7.1)",
        "rtstruct.dcm": "not a DICOM file: no 'DICM' prefix after the 128-byte preamble (PS3.10 7.1); a "
                        "data set without File Meta Information is not read",
    }, why
    assert "force=True" not in run.stdout + run.stderr
    assert run.returncode == 1
