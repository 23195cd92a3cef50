"""Files cut off where pydicom cannot tell (issue 20, round 6): after a top-level element of
undefined length (PS3.5 7.5.1: no length to check the end against), inside a deflated data set
(PS3.5 A.5: offsets are in the inflated stream), and inside encapsulated Pixel Data or a sequence
whose Sequence Delimitation Item never comes. Each is withheld naming where the file ends; the
whole files still read."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from deid_helpers import KEY
from pydicom import dcmread
from pydicom.data import get_testdata_file

from pacsguard.deid.build import make_engine
from pacsguard.deid.engine import Withheld
from pacsguard.deid.files import deidentify_file, read_whole

SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def _sr_with_undefined_content_sequence(syntax: str) -> bytes:
    """test-SR.dcm with its Content Sequence of undefined length and one element after it."""
    ds = dcmread(get_testdata_file("test-SR.dcm"))
    ds["ContentSequence"].is_undefined_length = True
    ds.add_new(0x00880140, "UI", "1.2.3.4.5")  # Storage Media File-set UID: something after the sequence
    ds.file_meta.TransferSyntaxUID = syntax
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


EXPLICIT = _sr_with_undefined_content_sequence("1.2.840.10008.1.2.1")
IMPLICIT = _sr_with_undefined_content_sequence("1.2.840.10008.1.2")
DEFLATED = Path(get_testdata_file("image_dfl.dcm")).read_bytes()
JPEG2000 = Path(get_testdata_file("JPEG2000.dcm")).read_bytes()


def _deflated_parts() -> tuple[bytes, bytes]:
    """image_dfl.dcm as its preamble and meta, and its data set inflated."""
    meta_length = struct.unpack("<I", DEFLATED[140:144])[0]
    start = 144 + meta_length
    return DEFLATED[:start], zlib.decompress(DEFLATED[start:], -zlib.MAX_WBITS)


def _deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def _withheld(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "cut.dcm"
    path.write_bytes(data)
    with pytest.raises(Withheld) as caught:
        read_whole(path)
    return str(caught.value)


@pytest.mark.parametrize("cut", [2, 4, 7])
@pytest.mark.parametrize("data", [EXPLICIT, IMPLICIT], ids=["explicit", "implicit"])
def test_a_header_cut_after_an_undefined_length_sequence_is_withheld(tmp_path: Path, data: bytes,
                                                                       cut: int) -> None:
    end = data.rfind(SEQUENCE_END) + len(SEQUENCE_END)
    reason = _withheld(tmp_path, data[:end + cut])
    assert "cut off" in reason and f"byte {end + cut} of the file" in reason
    assert f"{cut} bytes into the header of the element after (0040,A730)" in reason


@pytest.mark.parametrize("cut", [2, 6])
def test_a_deflated_data_set_cut_inside_a_header_is_withheld(tmp_path: Path, cut: int) -> None:
    head, inflated = _deflated_parts()
    pixels = inflated.rfind(b"\xe0\x7f\x10\x00")
    assert pixels > 0
    reason = _withheld(tmp_path, head + _deflate(inflated[:pixels + cut]))
    assert f"ends at byte {pixels + cut} of its inflated data set" in reason
    assert "header of the element after (0028,0103)" in reason


def test_a_cut_deflate_stream_is_named(tmp_path: Path) -> None:
    reason = _withheld(tmp_path, DEFLATED[:-100])
    assert reason == (f"the deflated data set is cut off: the file ends at byte {len(DEFLATED) - 100} "
                      "before the deflate stream's final block")


def test_encapsulated_pixel_data_without_its_delimiter_is_named(tmp_path: Path) -> None:
    assert JPEG2000.endswith(SEQUENCE_END)
    reason = _withheld(tmp_path, JPEG2000[:-8])
    assert f"ends at byte {len(JPEG2000) - 8} of the file" in reason
    assert "(7FE0,0010) of undefined length, whose Sequence Delimitation Item never comes" in reason


def test_a_sequence_without_its_delimiter_is_named(tmp_path: Path) -> None:
    end = EXPLICIT.rfind(SEQUENCE_END)
    reason = _withheld(tmp_path, EXPLICIT[:end])
    assert f"ends at byte {end} of the file, inside (0040,A730) of undefined length" in reason


def test_the_cut_file_is_not_written_and_the_reason_names_the_place(tmp_path: Path) -> None:
    end = EXPLICIT.rfind(SEQUENCE_END) + len(SEQUENCE_END)
    source = tmp_path / "in.dcm"
    source.write_bytes(EXPLICIT[:end + 4])
    result = deidentify_file(make_engine(KEY, []), source, tmp_path / "out", into_folder=True)
    assert result.output is None and not (tmp_path / "out").exists()
    assert f"byte {end + 4}" in result.withheld


@pytest.mark.parametrize(("data", "attribute"), [(EXPLICIT, "StorageMediaFileSetUID"),
                                                 (IMPLICIT, "StorageMediaFileSetUID"),
                                                 (EXPLICIT[:EXPLICIT.rfind(SEQUENCE_END) + 8], "ContentSequence"),
                                                 (DEFLATED, "PixelData"), (JPEG2000, "PixelData")],
                         ids=["explicit", "implicit", "ends-at-the-sequence", "deflated", "jpeg2000"])
def test_whole_files_still_read(tmp_path: Path, data: bytes, attribute: str) -> None:
    path = tmp_path / "whole.dcm"
    path.write_bytes(data)
    assert attribute in read_whole(path)
