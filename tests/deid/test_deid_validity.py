"""Outputs are valid DICOM: dcmtk's dcmdump reads every one, dicom3tools' dciodvfy finds no error
in an output that it did not find in the input, and deflated and big-endian files come out in
their own transfer syntax (PS3.5 A.5, A.3)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from deid_helpers import engine, pydicom_files
from pydicom.filewriter import dcmwrite
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian

from pacsguard.deid.files import deidentify_file, read_whole

_UID = re.compile(r"(?<=UID )[0-9.]+|<[0-9.]+>|\b[0-9]+(\.[0-9]+){2,}\b")


def _tool(name: str) -> str:
    path = shutil.which(name) or f"/usr/bin/{name}"
    assert Path(path).exists(), f"{name} is missing: install the Debian package (make peers)"
    return path


def _dcmdump(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_tool("dcmdump"), "-q", str(path)], capture_output=True, text=True, errors="replace",
                          timeout=60)


def _dciodvfy_errors(path: Path) -> set[str]:
    proc = subprocess.run([_tool("dciodvfy"), str(path)], capture_output=True, text=True, errors="replace", timeout=60)
    # UIDs differ by design between input and output: an error about "a UID" is the same error.
    return {_UID.sub("<uid>", " ".join(line.split())) for line in (proc.stdout + proc.stderr).splitlines()
            if line.startswith("Error")}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, Path]]:
    out = tmp_path_factory.mktemp("deid-out")
    e = engine()
    pairs = []
    for n, path in enumerate(pydicom_files()):
        result = deidentify_file(e, path, out / f"{n}.dcm")
        if result.output is not None:
            pairs.append((path, result.output))
    assert len(pairs) >= 40
    return pairs


def test_dcmdump_reads_every_output(outputs: list[tuple[Path, Path]]) -> None:
    bad = []
    for _, out in outputs:
        proc = _dcmdump(out)
        if proc.returncode != 0 or "E:" in proc.stderr:
            bad.append((out.name, proc.stderr[-300:]))
    assert bad == []


def test_dciodvfy_finds_no_new_error(outputs: list[tuple[Path, Path]]) -> None:
    new = {}
    for source, out in outputs:
        added = _dciodvfy_errors(out) - _dciodvfy_errors(source)
        if added:
            new[source.name] = sorted(added)
    assert new == {}


@pytest.mark.parametrize(("name", "syntax"), [("CT_small.dcm", DeflatedExplicitVRLittleEndian),
                                              ("MR_small_bigendian.dcm", ExplicitVRBigEndian)])
def test_deflated_and_big_endian_come_out_valid(name: str, syntax: str, tmp_path: Path) -> None:
    source = next(p for p in pydicom_files() if p.name == name)
    ds = read_whole(source)
    if ds.file_meta.TransferSyntaxUID != syntax:  # pydicom ships no deflated CT: make one (PS3.5 A.5)
        ds.file_meta.TransferSyntaxUID = syntax
        source = tmp_path / "deflated.dcm"
        dcmwrite(source, ds, enforce_file_format=True)
    assert read_whole(source).file_meta.TransferSyntaxUID == syntax
    result = deidentify_file(engine(), source, tmp_path / "out.dcm")
    assert result.output is not None, result.withheld
    ds = read_whole(result.output)
    assert ds.file_meta.TransferSyntaxUID == syntax
    assert ds.PatientIdentityRemoved in ("YES", "NO")
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    proc = _dcmdump(result.output)
    assert proc.returncode == 0, proc.stderr
