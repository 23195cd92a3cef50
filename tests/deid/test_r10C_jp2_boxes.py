"""Round 10 (C): JPEG 2000 frames wrapped as JP2 files (ISO/IEC 15444-1 Annex I). Round 9 removed
the COM segments of bare JPEG 2000 codestreams, but a frame that begins with the JP2 signature box
was passed on unopened, and its XML, UUID and UUID Info boxes went out as they came: a device's
XML metadata with the patient's name in it. Now only the signature, File Type, JP2 Header and
Contiguous Codestream boxes are kept, the codestream's COM segments go too, the frames decode as
before, and a box structure that cannot be followed withholds the object, saying why."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from deid_helpers import encapsulated_ct, engine
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.uid import JPEG2000, JPEG2000Lossless

from pacsguard.deid.files import deidentify_file, read_whole

NAME = b"Quixote^Zebulon"
XML = b'<?xml version="1.0"?><study><patient name="Quixote^Zebulon" id="PID77341"/></study>'
COMMENT = "Scanned for Zebulon Quixote PID77341"


def _pixels(seed: int) -> np.ndarray:
    grid = np.add.outer(np.arange(64), np.arange(64)) * (seed + 1)
    return (grid % 251).astype(np.uint8)


def _box(kind: bytes, content: bytes) -> bytes:
    return (len(content) + 8).to_bytes(4, "big") + kind + content


def _jp2(pixels: np.ndarray, *, lossy: bool = False, last_box_to_end: bool = False) -> bytes:
    """A JP2 file from OpenJPEG (through Pillow) with a comment in its codestream, and XML, UUID and
    UUID Info boxes (I.7) with the patient's name added after its JP2 Header box."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG2000", comment=COMMENT, irreversible=lossy)
    data = buffer.getvalue()
    assert data.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n")  # Pillow wrote a JP2 file
    at = data.index(b"jp2c") - 4
    extra = (_box(b"xml ", XML) + _box(b"uuid", bytes(16) + b"operator Quixote^Zebulon")
             + _box(b"uinf", _box(b"ulst", b"\x00\x01" + bytes(16))
                    + _box(b"url ", b"\x00\x00\x00\x00file:///Quixote^Zebulon\x00")))
    codestream = data[at + 8:]
    tail = (b"\x00\x00\x00\x00jp2c" + codestream) if last_box_to_end else data[at:]
    return data[:at] + extra + tail


@pytest.mark.parametrize(("lossy", "last_box_to_end", "frames"), [(False, False, 1), (True, False, 1),
                                                                  (False, True, 1), (False, False, 3)])
def test_text_boxes_of_jp2_frames_go_and_pixels_decode_the_same(tmp_path: Path, lossy: bool,
                                                                last_box_to_end: bool, frames: int) -> None:
    originals = [_pixels(n) for n in range(frames)]
    jp2 = [_jp2(p, lossy=lossy, last_box_to_end=last_box_to_end) for p in originals]
    assert all(NAME in f and COMMENT.encode() in f for f in jp2)
    source = tmp_path / "in.dcm"
    encapsulated_ct(source, jp2, JPEG2000 if lossy else JPEG2000Lossless)
    before = read_whole(source).pixel_array
    result = deidentify_file(engine(), source, tmp_path / "out.dcm")
    assert result.output is not None, result.withheld
    data = result.output.read_bytes()
    assert NAME not in data and b"Zebulon" not in data and b"PID77341" not in data
    out = read_whole(result.output)
    kept = list(generate_frames(out.PixelData, number_of_frames=frames))
    assert all(f.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n") for f in kept)  # still a JP2 file
    assert all(b"xml " not in f[:f.index(b"jp2c")] and b"uuid" not in f for f in kept)
    # 4 boxes (xml, uuid, uinf) and the COM segment of each frame
    assert f"{frames * 4} JPEG comment or metadata segment" in result.report.pixels
    assert np.array_equal(out.pixel_array, before)
    if not lossy:
        assert np.array_equal(out.pixel_array if frames > 1 else out.pixel_array[None], np.stack(originals))


@pytest.mark.parametrize(("cut", "words"), [
    (lambda f: f[:f.index(b"xml ") - 4] + (9999).to_bytes(4, "big") + f[f.index(b"xml "):],
     "the 'xml ' box at byte"),
    (lambda f: f[:f.index(b"jp2c") - 4], "no Contiguous Codestream box"),
    (lambda f: f[:-3], "declares"),
])
def test_a_malformed_jp2_frame_is_withheld_naming_why(tmp_path: Path, cut: object, words: str) -> None:
    frame = cut(_jp2(_pixels(0)))  # type: ignore[operator]
    source = tmp_path / "in.dcm"
    encapsulated_ct(source, [frame], JPEG2000Lossless)
    result = deidentify_file(engine(), source, tmp_path / "out.dcm")
    assert result.output is None
    assert "JP2 file has a malformed box structure (ISO/IEC 15444-1 Annex I)" in result.withheld
    assert words in result.withheld and "Zebulon" not in result.withheld
