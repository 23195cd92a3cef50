"""Round 9, wave 2: JPEG 2000 codestreams lose their COM segments (ITU-T T.800 A.9.2), which hold
any text an encoder or a device writes ("Patient Quixote^Zebulon PID77341"). Pixel Data is no
attribute of Table E.1-1, and the JPEG pass (T.81 COM, APP1, APP13) did not read JPEG 2000: a
J2K-compressed CT went out with its comment. Every COM goes now, the encoder's too; the frames
decode as before, checked with Pillow's OpenJPEG and with GDCM's gdcmconv."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from deid_helpers import encapsulated_ct, engine
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.uid import JPEG2000, ExplicitVRLittleEndian, JPEG2000Lossless

from pacsguard.deid.files import deidentify_file

TEXT = b"Patient Quixote^Zebulon PID77341 born 19470823"


def _pixels(seed: int) -> np.ndarray:
    return ((np.arange(64 * 64).reshape(64, 64) * (seed + 3)) % 251).astype(np.uint8)


def _codestream(pixels: np.ndarray, *, tiles: bool, lossy: bool) -> bytes:
    """A J2K codestream with a COM in its main header and, with ``tiles``, one in the first
    tile-part header too (its Psot grown to count it)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG2000", no_jp2=True, comment=TEXT, irreversible=lossy,
                                 **({"tile_size": (32, 32)} if tiles else {}))
    data = buffer.getvalue()
    assert TEXT in data
    if tiles:
        decoded = np.asarray(Image.open(io.BytesIO(data)))
        sot = data.index(b"\xff\x90\x00\x0a")
        com = b"\xff\x64" + (len(TEXT) + 4).to_bytes(2, "big") + b"\x00\x01" + TEXT
        psot = int.from_bytes(data[sot + 6:sot + 10], "big") + len(com)
        data = data[:sot + 6] + psot.to_bytes(4, "big") + data[sot + 10:sot + 12] + com + data[sot + 12:]
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), decoded)  # still a valid stream
    return data


@pytest.mark.parametrize(("syntax", "tiles", "frames"), [
    (JPEG2000Lossless, False, 1), (JPEG2000Lossless, True, 2), (JPEG2000, True, 1)])
def test_comments_leave_j2k_frames_and_the_pixels_decode_the_same(tmp_path: Path, syntax: str, tiles: bool,
                                                                   frames: int) -> None:
    gdcmconv = shutil.which("gdcmconv")
    assert gdcmconv, "GDCM's gdcmconv (Debian libgdcm-tools) is needed to decode JPEG 2000 independently"
    lossy = syntax == JPEG2000
    streams = [_codestream(_pixels(i), tiles=tiles, lossy=lossy) for i in range(frames)]
    encapsulated_ct(tmp_path / "in.dcm", streams, syntax)
    result = deidentify_file(engine(), tmp_path / "in.dcm", tmp_path / "out.dcm")
    assert result.output is not None, result.withheld
    data = result.output.read_bytes()
    assert TEXT not in data and b"Quixote" not in data and b"PID77341" not in data
    removed = frames * (2 if tiles else 1)
    assert f"; {removed} JPEG comment or metadata segment" in result.report.pixels, result.report.pixels
    out = pydicom.dcmread(result.output)
    cleaned = list(generate_frames(out.PixelData, number_of_frames=frames))
    for before, after in zip(streams, cleaned, strict=True):
        assert b"\xff\x64" not in after[:after.index(b"\xff\x90")]  # no COM left in the main header
        expected = np.asarray(Image.open(io.BytesIO(before)))
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(after))), expected)
    # GDCM decodes the written object to the pixels the input decodes to.
    for name in ("in", "out"):
        done = subprocess.run([gdcmconv, "--raw", str(tmp_path / f"{name}.dcm"), str(tmp_path / f"{name}.raw.dcm")],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    raw_in, raw_out = (pydicom.dcmread(tmp_path / f"{n}.raw.dcm") for n in ("in", "out"))
    assert raw_out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert raw_in.PixelData == raw_out.PixelData


def test_a_codestream_without_comments_keeps_its_bytes(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(_pixels(1)).save(buffer, "JPEG2000", no_jp2=True)
    stream = buffer.getvalue()
    plain = stream[:2] + stream[stream.index(b"\xff\x51"):]  # Pillow's own COM, if any, taken out
    if b"\xff\x64" in plain[:plain.index(b"\xff\x90")]:
        com = plain.index(b"\xff\x64")
        plain = plain[:com] + plain[com + 2 + int.from_bytes(plain[com + 2:com + 4], "big"):]
    encapsulated_ct(tmp_path / "in.dcm", [plain], JPEG2000Lossless)
    result = deidentify_file(engine(), tmp_path / "in.dcm", tmp_path / "out.dcm")
    assert result.output is not None, result.withheld
    assert pydicom.dcmread(result.output).PixelData == pydicom.dcmread(tmp_path / "in.dcm").PixelData
    assert "JPEG" not in result.report.pixels
