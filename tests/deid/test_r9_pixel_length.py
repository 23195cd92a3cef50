"""Round 9 of outside testing (issue 20: no PHI left, every byte searched; every refused file named
with why). Native Pixel Data longer than its image (Rows x Columns x Samples x Frames x Bits
Allocated, PS3.5 8.1.1) carries bytes no viewer shows and no OCR reads: the outputs carried them
on as they were, here the patient's name and birth date after the last pixel, with and without
clean-pixel-data. Such a file is now withheld, unless the extra bytes are zeros (padding). And
pydicom's own valid uncompressed YBR_FULL_422 image was withheld as "the file is cut off": its
pixel data holds two samples per pixel (PS3.3 C.7.6.3.1.2), not three."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from deid_helpers import engine, patient_object, pydicom_files

from pacsguard.deid.engine import Withheld
from pacsguard.deid.files import deidentify_file, read_whole

CT = "1.2.840.10008.5.1.4.1.1.2"
HIDDEN = b"Quixote^Zebulon PID77341 19470823"[:32]


def _ct(path: Path, after: bytes) -> None:
    ds = patient_object(CT)
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelData = np.zeros((64, 64), np.uint16).tobytes() + after
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize("options", [(), ("clean-pixel-data",)])
def test_bytes_after_the_image_are_not_passed_on(tmp_path: Path, options: tuple[str, ...]) -> None:
    _ct(tmp_path / "in.dcm", HIDDEN)
    result = deidentify_file(engine(*options), tmp_path / "in.dcm", tmp_path / "out.dcm")
    assert result.output is None and not (tmp_path / "out.dcm").exists()
    assert result.withheld == ("pixel data is 8224 bytes, 8192 expected: the 32 bytes past the image hold "
                               "data that is no pixel of it and cannot be checked")


def test_zero_padding_after_the_image_is_accepted(tmp_path: Path) -> None:
    _ct(tmp_path / "in.dcm", bytes(32))
    result = deidentify_file(engine(), tmp_path / "in.dcm", tmp_path / "out.dcm")
    assert result.output is not None, result.withheld


def test_an_uncompressed_ybr_full_422_image_is_whole() -> None:
    path = next(p for p in pydicom_files() if p.name == "SC_ybr_full_422_uncompressed.dcm")
    try:
        ds = read_whole(path)
    except Withheld as exc:
        pytest.fail(f"withheld: {exc}")
    assert ds.PhotometricInterpretation == "YBR_FULL_422" and len(ds.PixelData) == 100 * 100 * 2
