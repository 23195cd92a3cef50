"""Round 9 of outside testing (issue 20, "Bad input": files with invalid VRs are withheld and
reported). An explicit VR element whose VR is none of PS3.5 6.2's (Table 6.2-1) was read by
pydicom with a guessed 16-bit length; when the profile kept it (Modality, K) the output carried
the invalid VR on (dcmtk warns, dciodvfy cannot read the file), and when the profile removed it
the file was written as if it were whole, while under an option that decodes it the same file
was withheld with "NotImplementedError". VR bytes 00 00 made pydicom read the element as implicit
VR, and the file was withheld as "cut off inside (0018,0050)". Now each is withheld, naming the
element and its VR."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from deid_helpers import KEY, patient_object
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

CT = "1.2.840.10008.5.1.4.1.1.2"


def _file(folder: Path, name: str, header: bytes, bad_vr: bytes) -> None:
    """A CT object whose element with the explicit VR header ``header`` (tag and VR, PS3.5 7.1.2)
    gets ``bad_vr`` instead; its length field stays as it was."""
    ds = patient_object(CT)
    ds.StudyDescription = "CT head Quixote"
    ds.SliceThickness = "1.25"
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = CT, generate_uid()
    ref.ReferencedFrameNumber = "1"
    ds.ReferencedImageSequence = Sequence([ref])
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = bytearray(buffer.getvalue())
    at = data.index(header)
    data[at + 4:at + 6] = bad_vr
    (folder / name).write_bytes(bytes(data))


def _run(tmp_path: Path, *options: str) -> tuple[subprocess.CompletedProcess[str], list[dict[str, str]]]:
    inputs = tmp_path / "in"
    inputs.mkdir()
    _file(inputs, "kept.dcm", b"\x08\x00\x60\x00CS", b"Cs")  # Modality: K, written back before
    _file(inputs, "removed.dcm", b"\x08\x00\x30\x10LO", b"ZZ")  # Study Description: X by default
    _file(inputs, "nested.dcm", b"\x08\x00\x60\x11IS", b"I5")  # Referenced Frame Number, in an item
    _file(inputs, "no_vr.dcm", b"\x18\x00\x50\x00DS", b"\0\0")  # read as implicit VR: a 32-bit length
    key = tmp_path / "k.key"
    key.write_text(KEY.secret.hex() + "\n")
    key.chmod(0o600)
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "pacsguard.cli", "deid", str(inputs), "--out", str(out),
                          "--key-file", str(key), *options], capture_output=True, text=True, timeout=60)
    records = json.loads((tmp_path / "out.manifest.json").read_text())
    return run, records


def test_an_element_with_an_invalid_vr_withholds_the_file(tmp_path: Path) -> None:
    run, records = _run(tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    why = {Path(r["source"]).name: r["reason"] for r in records if r["status"] == "withheld"}
    assert set(why) == {"kept.dcm", "removed.dcm", "nested.dcm", "no_vr.dcm"}, records
    assert why["kept.dcm"].startswith("(0008,0060) has VR 'Cs', which is not a value representation")
    assert why["removed.dcm"].startswith("(0008,1030) has VR 'ZZ'")
    assert why["nested.dcm"].startswith("(0008,1160) has VR 'I5'")
    assert why["no_vr.dcm"].startswith("(0018,0050) has no VR in an Explicit VR data set"), why  # was "cut off"
    assert "withheld" in run.stderr + run.stdout and "(0008,0060) has VR 'Cs'" in run.stderr + run.stdout
    assert not any((tmp_path / "out").glob("*.dcm"))


def test_the_same_file_gets_the_same_verdict_under_every_option(tmp_path: Path) -> None:
    """clean-descriptors decodes Study Description: before, 'de-identification failed:
    NotImplementedError: Unknown Value Representation'."""
    run, records = _run(tmp_path, "--option", "clean-descriptors")
    why = {Path(r["source"]).name: r["reason"] for r in records}
    assert why["removed.dcm"].startswith("(0008,1030) has VR 'ZZ'"), why
    assert run.returncode == 1
