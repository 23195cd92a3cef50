"""Outside round 7 (issue 20): a crafted object whose Content Sequence nests hundreds of levels
deep (PS3.5 7.5, undefined lengths) was withheld as "RecursionError: maximum recursion depth
exceeded while calling a Python object", which says nothing of the file. It is still withheld,
and the reason now names the nesting; an object nested as deep as real ones is written."""

from __future__ import annotations

from pathlib import Path

import pytest
from deid_helpers import engine
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import generate_uid

from pacsguard.deid.files import deidentify_file

CONTENT_SEQUENCE_OPEN = b"\x40\x00\x30\xa7SQ\0\0\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
ITEM_AND_SEQUENCE_CLOSE = b"\xfe\xff\x0d\xe0\0\0\0\0" + b"\xfe\xff\xdd\xe0\0\0\0\0"
TEXT_VALUE = b"\x40\x00\x60\xa1UT\0\0" + (16).to_bytes(4, "little") + b"Quixote Zebulon "


def _nested(path: Path, depth: int) -> Path:
    """A Comprehensive SR whose last element, Content Sequence (0040,A730), nests ``depth`` levels
    down to a Text Value naming the patient (Explicit VR Little Endian)."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID = "Quixote^Zebulon", "PID77341"
    ds.save_as(path, enforce_file_format=True)
    path.write_bytes(path.read_bytes() + CONTENT_SEQUENCE_OPEN * depth + TEXT_VALUE
                     + ITEM_AND_SEQUENCE_CLOSE * depth)
    return path


@pytest.mark.parametrize("depth", [300, 2000])
def test_nesting_too_deep_is_withheld_and_named(tmp_path: Path, depth: int) -> None:
    source = _nested(tmp_path / "in.dcm", depth)
    result = deidentify_file(engine("clean-structured-content"), source, tmp_path / "out.dcm")
    assert result.output is None and not (tmp_path / "out.dcm").exists()
    assert "sequences nest too deeply" in result.withheld
    assert "RecursionError" not in result.withheld


def test_nesting_as_deep_as_real_objects_is_written(tmp_path: Path) -> None:
    source = _nested(tmp_path / "in.dcm", 20)
    result = deidentify_file(engine("clean-structured-content"), source, tmp_path / "out.dcm")
    assert result.output is not None, result.withheld
    assert b"Quixote" not in result.output.read_bytes()
