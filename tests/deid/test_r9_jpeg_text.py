"""Round 9 of outside testing (issue 20: no PHI left, every byte searched). A JPEG frame can carry
text beside the image: a COM segment (ITU-T T.81 B.2.4.5) that an encoder or a device writes, or
Exif/XMP (APP1). Pixel Data is no attribute of Table E.1-1 and its codestream was never read, so a
CT whose JPEG stream said "Patient Quixote^Zebulon PID77341" went out saying so (without
clean-pixel-data, which checks only images that may hold burned-in text). Those segments are now
removed from every JPEG and JPEG-LS frame; the image decodes exactly as before."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from deid_helpers import encapsulated_ct, engine
from PIL import Image
from pydicom.uid import JPEGBaseline8Bit

from pacsguard.deid.files import deidentify_file

TEXT = b"Patient Quixote^Zebulon PID77341 born 19470823"


def _frame(shade: int, *, comment: bool, exif: bool) -> bytes:
    image = Image.fromarray(np.full((64, 64), shade, np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **({"comment": TEXT} if comment else {}))
    data = buffer.getvalue()
    if exif:  # an APP1 Exif segment right after SOI
        payload = b"Exif\0\0" + TEXT
        data = data[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + data[2:]
    return data


@pytest.mark.parametrize(("count", "bot", "comment", "exif"), [
    (1, False, True, False), (1, True, True, True), (2, True, True, False), (2, False, False, True)])
def test_text_segments_leave_the_jpeg_frames(tmp_path: Path, count: int, bot: bool, comment: bool,
                                              exif: bool) -> None:
    encapsulated_ct(tmp_path / "in.dcm", [_frame(40 + 80 * i, comment=comment, exif=exif) for i in range(count)],
                    JPEGBaseline8Bit, bot=bot)
    result = deidentify_file(engine(), tmp_path / "in.dcm", tmp_path / "out.dcm")
    assert result.output is not None, result.withheld
    data = result.output.read_bytes()
    assert b"Quixote" not in data and b"PID77341" not in data and b"19470823" not in data
    removed = count * (comment + exif)
    assert result.report.pixels.endswith(f"; {removed} JPEG comment or metadata segment{'s' if removed > 1 else ''} "
                                         "removed"), result.report.pixels
    before, after = pydicom.dcmread(tmp_path / "in.dcm"), pydicom.dcmread(result.output)
    assert np.array_equal(before.pixel_array, after.pixel_array)  # every frame, through the offset table
    assert (int.from_bytes(after.PixelData[4:8], "little") > 0) is bot


def test_a_jpeg_without_text_keeps_its_pixel_data_byte_for_byte(tmp_path: Path) -> None:
    encapsulated_ct(tmp_path / "in.dcm", [_frame(90, comment=False, exif=False)], JPEGBaseline8Bit, bot=False)
    result = deidentify_file(engine(), tmp_path / "in.dcm", tmp_path / "out.dcm")
    assert result.output is not None
    assert pydicom.dcmread(result.output).PixelData == pydicom.dcmread(tmp_path / "in.dcm").PixelData
    assert "JPEG" not in result.report.pixels
