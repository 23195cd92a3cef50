"""Round 9 of outside testing (issue 20: hostile files, every refused file named with why). An
element that declares a wrong length (Patient's Name of 16 bytes said to be 48, or an odd 15)
makes the reader take the bytes after it for elements that are not there, until one of them
runs past the end. The file was withheld, rightly, as "the file is cut off inside (2E30,2E31)":
a tag the file does not hold, and no cut to look for. The reason now says that no attribute has
that tag and that an element before it probably declares a wrong length. A file really cut inside
a real element is named as before."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from deid_helpers import engine, patient_object, pydicom_files

from pacsguard.deid.files import deidentify_file

CT = "1.2.840.10008.5.1.4.1.1.2"
HINT = ", a tag no attribute has: an element before it probably declares a wrong length"


def _with_name_length(length: int) -> bytes:
    ds = patient_object(CT)
    ds.StudyDescription = "head"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = bytearray(buffer.getvalue())
    at = data.index(b"\x10\x00\x10\x00PN")
    struct.pack_into("<H", data, at + 6, length)
    return bytes(data)


@pytest.mark.parametrize("length", [0x30, 15])
def test_a_wrong_length_is_named_as_such(tmp_path: Path, length: int) -> None:
    (tmp_path / "in.dcm").write_bytes(_with_name_length(length))
    result = deidentify_file(engine(), tmp_path / "in.dcm", tmp_path / "out.dcm")
    assert result.output is None and not (tmp_path / "out.dcm").exists()
    # Where the reader stops depends on the bytes it misreads: inside a "value" past the end, or at
    # a "VR" that is none; either way it names that no attribute has the tag, and why.
    assert result.withheld.startswith(("the file is cut off inside (", "(")) and result.withheld.endswith(HINT), \
        result.withheld


def test_a_file_cut_inside_a_real_element_says_only_that(tmp_path: Path) -> None:
    ct = next(p for p in pydicom_files() if p.name == "CT_small.dcm").read_bytes()
    (tmp_path / "in.dcm").write_bytes(ct[:-1000])  # inside Pixel Data
    result = deidentify_file(engine(), tmp_path / "in.dcm", tmp_path / "out.dcm")
    assert result.withheld == "the file is cut off inside (7FE0,0010)"
