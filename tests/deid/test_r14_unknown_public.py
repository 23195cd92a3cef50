"""Outside round 14 (D1): public attributes no dictionary knows were kept, value unchanged, in every
transfer syntax ("K keep not listed"), and so was an element of overlay group 6020 (the same element
in group 6000 went). PS3.15 E.3.1 removes every attribute not listed unless it is known to identify
nobody: an unlisted attribute is kept only when the data dictionary (PS3.6) defines it; one it does
not know goes, and every element of an even 60xx group goes with its group, as 6000's do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from pacsguard.deid.profile import table
from pacsguard.deid.rules import decide

MARKERS = ("ZQXUNKNOWN10", "ZQXUNKNOWN08", "ZQXOVL2", "ZQXOVL0", "ZQXNESTED", "ZQXLEN")


def _pacsguard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacsguard.cli", *args], capture_output=True, text=True,
                          timeout=240, env={**os.environ, "COLUMNS": "200"})


def _object(syntax: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.99.3." + str(abs(hash(syntax)) % 1000)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.99.1", "1.2.826.0.1.3680043.99.2"
    ds.Modality, ds.PatientName, ds.PatientID = "CT", "ZQXDOE^JOHN", "ZQXPID"
    ds.add_new(0x00109999, "LO", "ZQXUNKNOWN10")
    ds.add_new(0x00089998, "LO", "ZQXUNKNOWN08")
    ds.add_new(0x60200022, "LO", "ZQXOVL2")  # overlay group past 601E, no Overlay Data
    ds.add_new(0x60000022, "LO", "ZQXOVL0")
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = ds.SOPClassUID, "1.2.826.0.1.3680043.99.7"
    item.add_new(0x00189999, "LO", "ZQXNESTED")
    ds.ReferencedImageSequence = Sequence([item])
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.BurnedInAnnotation = "NO"
    ds.PixelData = bytes(range(16))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    ds.file_meta = meta
    return ds


SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian)


def _strings(ds: Dataset) -> str:
    found = []
    for elem in ds.iterall():
        value = elem.value
        found.append(value.decode("latin-1") if isinstance(value, bytes) else str(value))
    return "\n".join(found)


@pytest.mark.parametrize("syntax", SYNTAXES, ids=lambda s: pydicom.uid.UID(s).keyword)
def test_unknown_public_attributes_are_removed_in_every_syntax(tmp_path: Path, syntax: str) -> None:
    source = tmp_path / "in.dcm"
    pydicom.dcmwrite(source, _object(syntax), enforce_file_format=True)
    assert "ZQXUNKNOWN10" in _strings(pydicom.dcmread(source))  # the input holds them
    key = tmp_path / "deid.key"
    assert _pacsguard("deid", "keygen", str(key)).returncode == 0
    run = _pacsguard("deid", str(source), "--out", str(tmp_path / "out"), "--key-file", str(key))
    assert run.returncode == 0, run.stderr
    [output] = list((tmp_path / "out").glob("*.dcm"))
    ds = pydicom.dcmread(output)
    text = _strings(ds) + "\n" + output.read_bytes().decode("latin-1")
    for marker in MARKERS:
        assert marker not in text, marker
    for tag in (0x00109999, 0x00089998, 0x60200022, 0x60000022):
        assert tag not in ds
    assert 0x00189999 not in ds.ReferencedImageSequence[0]
    # What the profile keeps is still there.
    assert ds.Modality == "CT" and ds.Rows == 4 and ds.Columns == 4
    assert ds.PixelData == bytes(range(16))
    dump = subprocess.run(["dcmdump", "+L", str(output)], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    assert "(0008,0060) CS [CT]" in dump.stdout and "(7fe0,0010)" in dump.stdout
    assert not any(m in dump.stdout for m in MARKERS)
    assert "(0010,9999)" not in dump.stdout and "(6020," not in dump.stdout


def test_explain_names_the_decision(tmp_path: Path) -> None:
    source = tmp_path / "in.dcm"
    pydicom.dcmwrite(source, _object(ExplicitVRLittleEndian), enforce_file_format=True)
    shown = _pacsguard("deid", "explain", str(source))
    assert shown.returncode == 0, shown.stderr
    lines = {line.split()[0]: line for line in shown.stdout.splitlines() if line.strip().startswith("(")}
    assert "unknown to the data dictionary" in lines["(0010,9999)"] and " remove " in lines["(0010,9999)"]
    assert "unknown to the data dictionary" in lines["(0008,9998)"]
    assert "in the data dictionary" in lines["(0008,0060)"] and " keep " in lines["(0008,0060)"]


def test_rules_for_unlisted_attributes() -> None:
    t, none = table(), frozenset()
    assert decide(t, 0x00109999, "LO", none).effect.value == "remove"
    assert decide(t, 0x00109999, "UN", none).effect.value == "remove"
    assert decide(t, 0x00080000, "UL", none).effect.value == "remove"  # group length
    assert decide(t, 0x60200022, "LO", none).effect.value == "remove"
    assert decide(t, 0x60000010, "US", none).effect.value == "remove"
    assert decide(t, 0x00080060, "CS", none).effect.value == "keep"  # Modality
    assert decide(t, 0x00280010, "US", none).effect.value == "keep"  # Rows
