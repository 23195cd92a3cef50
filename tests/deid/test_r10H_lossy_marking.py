"""Round 10 (H): a masked compressed image written uncompressed says whether its compression lost
(PS3.3 C.7.6.1.1.5 Lossy Image Compression, its method and ratio), read from the codestream when
the transfer syntax may be either (PS3.5 8.2): JPEG-LS Near-Lossless (NEAR of the scans, T.87
C.2.3) and JPEG 2000 (the wavelet of COD/COC, the quantization of QCD/QCC, T.800 A.6). Before,
only JPEG Baseline and Extended were marked, or the object's own "01": a near-lossless JPEG-LS
image that did not say so (pydicom's own test files, any encoder that leaves the attribute out)
went out after masking as if it had never lost a bit. Files made by dcmtk (dcmcjpls), GDCM
(gdcmconv --j2k) and pydicom with OpenJPEG."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from deid_helpers import KEY
from PIL import Image, ImageDraw
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filewriter import dcmwrite
from pydicom.uid import JPEG2000, UID, ExplicitVRLittleEndian

from pacsguard.deid.build import make_engine
from pacsguard.deid.config import DeidConfig, PixelSettings, RegionMask
from pacsguard.deid.decoded import Decoded, write_native
from pacsguard.deid.files import deidentify_file, read_whole
from pacsguard.deid.profile import Option

US = "1.2.840.10008.5.1.4.1.1.6.1"  # Ultrasound Image Storage
LOSSY_KEYWORDS = ("LossyImageCompression", "LossyImageCompressionMethod", "LossyImageCompressionRatio")


def _tool(name: str) -> str:
    path = shutil.which(name, path="/usr/bin")
    assert path, f"{name} is missing (Debian dcmtk / libgdcm-tools: make peers)"
    return path


def _native(path: Path) -> Path:
    """A 320 x 240 8-bit ultrasound image with a bright band (where a mask will go) and a disc."""
    img = Image.new("L", (320, 240), 0)
    draw = ImageDraw.Draw(img)
    draw.ellipse((90, 60, 230, 200), fill=120)
    draw.rectangle((0, 0, 319, 20), fill=230)
    pixels = np.asarray(img, dtype=np.uint8) + (np.arange(320, dtype=np.uint8) % 7)[None, :]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(US)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.826.0.1.3680043.99.10.81")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.99.10.82", "1.2.826.0.1.3680043.99.10.83"
    ds.Modality, ds.PatientID, ds.PatientName, ds.Manufacturer = "US", "PID4711", "SMITHERS^WAYLON", "Sonix"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 240, 320, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    dcmwrite(path, ds, enforce_file_format=True)
    return path


def _made(tmp_path: Path, command: list[str], *, undeclared: bool = True) -> Path:
    """The native image compressed by ``command`` (source and output appended); with
    ``undeclared`` its Lossy Image Compression attributes are taken out, as an encoder that does
    not write them leaves the object (pydicom's JPEGLSNearLossless_16.dcm, pydicom's compress())."""
    source, out = _native(tmp_path / "native.dcm"), tmp_path / "compressed.dcm"
    subprocess.run([*command, str(source), str(out)], check=True, capture_output=True, timeout=60)
    if undeclared:
        ds = read_whole(out)
        for keyword in LOSSY_KEYWORDS:
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(out)
    return out


def _masked(tmp_path: Path, source: Path, corner: int = 24) -> Dataset:
    """``source`` de-identified with a region mask over its top left ``corner`` pixels, so it is
    always masked."""
    config = DeidConfig(pixels=PixelSettings(ocr=False, region_masks=[RegionMask(boxes=[(0, 0, corner, corner)])]))
    result = deidentify_file(make_engine(KEY, [Option.CLEAN_PIXEL_DATA], config), source, tmp_path / "out.dcm")
    assert result.output is not None, result.withheld
    assert result.report.pixels.startswith("masked"), result.report.pixels
    out = read_whole(result.output)
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    return out


def codestream_loss(syntax: str, frame: bytes) -> bool | None:
    from pacsguard.deid.lossy import codestream_loss as read  # new in this round: imported here

    return read(syntax, frame)


def _first_frame(path: Path) -> bytes:
    ds = dcmread(path)
    return bytes(next(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1))))


def test_dcmtk_near_lossless_jpeg_ls_is_marked_lossy_from_its_near(tmp_path: Path) -> None:
    source = _made(tmp_path, [_tool("dcmcjpls"), "--encode-nearlossless", "--max-deviation", "3"])
    before = read_whole(source)
    assert before.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.81" and "LossyImageCompression" not in before
    out = _masked(tmp_path, source)
    assert out.LossyImageCompression == "01" and out.LossyImageCompressionMethod == "ISO_14495_1"
    expected = 320 * 240 / len(before.PixelData)
    assert abs(float(out.LossyImageCompressionRatio) - expected) < 0.05 and expected > 1


def test_dcmtk_lossless_jpeg_ls_is_not_marked(tmp_path: Path) -> None:
    source = _made(tmp_path, [_tool("dcmcjpls"), "--encode-lossless"])
    assert read_whole(source).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
    out = _masked(tmp_path, source)
    assert not [k for k in LOSSY_KEYWORDS if k in out]


def test_near_lossless_syntax_with_near_zero_is_lossless(tmp_path: Path) -> None:
    # a lossless JPEG-LS codestream (NEAR 0) sent under the Near-Lossless syntax, as some encoders do
    source = _made(tmp_path, [_tool("dcmcjpls"), "--encode-lossless"])
    ds = read_whole(source)
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.81")
    ds.save_as(source)
    out = _masked(tmp_path, source)
    assert "LossyImageCompression" not in out
    assert codestream_loss("1.2.840.10008.1.2.4.81", _first_frame(source)) is False


@pytest.mark.parametrize("name", ["JPEGLSNearLossless_16.dcm", "SC_rgb_jls_lossy_line.dcm",
                                  "SC_rgb_jls_lossy_sample.dcm"])
def test_pydicoms_near_lossless_files_are_marked_lossy(tmp_path: Path, name: str) -> None:
    source = Path(str(get_testdata_file(name)))
    assert "LossyImageCompression" not in read_whole(source)  # the files do not say it themselves
    out = _masked(tmp_path, source)
    assert out.LossyImageCompression == "01" and out.LossyImageCompressionMethod == "ISO_14495_1"
    assert float(out.LossyImageCompressionRatio) > 1


def _openjpeg_lossy(tmp_path: Path, syntax: str = JPEG2000) -> Path:
    """The native image compressed by pydicom with OpenJPEG at 20:1 (9-7 wavelet, scalar
    quantization); pydicom writes no Lossy Image Compression."""
    ds = read_whole(_native(tmp_path / "native.dcm"))
    ds.compress(JPEG2000, ds.pixel_array, j2k_cr=[20])
    assert "LossyImageCompression" not in ds
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    path = tmp_path / "openjpeg.dcm"
    ds.save_as(path)
    return path


def test_an_irreversible_jpeg_2000_image_is_marked_lossy(tmp_path: Path) -> None:
    source = _openjpeg_lossy(tmp_path)
    out = _masked(tmp_path, source)
    assert out.LossyImageCompression == "01" and out.LossyImageCompressionMethod == "ISO_15444_1"
    assert 19 < float(out.LossyImageCompressionRatio) < 21  # asked for 20:1; its COM segment goes first
    assert codestream_loss(JPEG2000, _first_frame(source)) is True


def test_htj2k_names_its_own_method(tmp_path: Path) -> None:
    # the same codestream under High-Throughput JPEG 2000 (PS3.5 A.4.11), which may be lossy
    out = _masked(tmp_path, _openjpeg_lossy(tmp_path, "1.2.840.10008.1.2.4.203"))
    assert out.LossyImageCompression == "01" and out.LossyImageCompressionMethod == "ISO_15444_15"


def test_gdcm_lossless_jpeg_2000_is_not_marked(tmp_path: Path) -> None:
    source = _made(tmp_path, [_tool("gdcmconv"), "--j2k"])
    assert read_whole(source).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
    out = _masked(tmp_path, source)
    assert not [k for k in LOSSY_KEYWORDS if k in out]


def test_gdcm_lossy_jpeg_2000_with_the_reversible_wavelet_is_lossy(tmp_path: Path) -> None:
    # gdcmconv --lossy keeps the 5-3 wavelet and drops coding passes: the header cannot tell, the
    # pixels differ; with GDCM's own "01" and ratio the marking is kept, without it it is lossy
    declared = _made(tmp_path, [_tool("gdcmconv"), "--j2k", "--lossy", "-q", "10"], undeclared=False)
    before = read_whole(declared)
    assert before.file_meta.TransferSyntaxUID == JPEG2000 and before.LossyImageCompression == "01"
    assert (before.pixel_array != read_whole(tmp_path / "native.dcm").pixel_array).any()
    out = _masked(tmp_path, declared)
    assert out.LossyImageCompression == "01"
    assert out.LossyImageCompressionRatio == before.LossyImageCompressionRatio
    (tmp_path / "out.dcm").unlink()
    ds = read_whole(declared)
    for keyword in LOSSY_KEYWORDS:
        if keyword in ds:
            delattr(ds, keyword)
    ds.save_as(declared)
    out = _masked(tmp_path, declared)
    assert out.LossyImageCompression == "01" and out.LossyImageCompressionMethod == "ISO_15444_1"
    assert codestream_loss(JPEG2000, _first_frame(declared)) is None  # the header proves nothing


def test_pydicoms_irreversible_jpeg_2000_gets_its_method_and_ratio(tmp_path: Path) -> None:
    # US1_J2KI.dcm says "01" and names neither method nor ratio; its codestream is 9-7
    source = Path(str(get_testdata_file("US1_J2KI.dcm")))
    before = read_whole(source)
    assert before.LossyImageCompression == "01" and "LossyImageCompressionMethod" not in before
    out = _masked(tmp_path, source)
    assert out.LossyImageCompression == "01" and out.LossyImageCompressionMethod == "ISO_15444_1"
    frames = before.pixel_array
    assert float(out.LossyImageCompressionRatio) == pytest.approx(frames.nbytes / len(before.PixelData), rel=0.02)


def test_a_second_lossy_step_is_named_after_the_first(tmp_path: Path) -> None:
    # an image once JPEG-compressed at 8:1 (the object says so), now JPEG 2000 with the 9-7 wavelet
    source = _openjpeg_lossy(tmp_path)
    ds = read_whole(source)
    ds.LossyImageCompression, ds.LossyImageCompressionMethod, ds.LossyImageCompressionRatio = "01", "ISO_10918_1", "8"
    ds.save_as(source)
    out = _masked(tmp_path, source)
    assert list(out.LossyImageCompressionMethod) == ["ISO_10918_1", "ISO_15444_1"]
    ratios = [float(r) for r in out.LossyImageCompressionRatio]
    assert ratios[0] == 8 and ratios[1] > 1


def test_a_jp2_wrapped_irreversible_frame_is_read_through_its_boxes(tmp_path: Path) -> None:
    stream = _first_frame(_openjpeg_lossy(tmp_path))
    header = b"\x00\x00\x00\x16ihdr" + bytes(14)
    jp2 = (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00\x00\x00\x14ftypjp2 \x00\x00\x00\x00jp2 "
           + (8 + len(header)).to_bytes(4, "big") + b"jp2h" + header
           + (8 + len(stream)).to_bytes(4, "big") + b"jp2c" + stream)
    assert codestream_loss(JPEG2000, jp2) is True


@pytest.mark.parametrize(("syntax", "method"), [("1.2.840.10008.1.2.4.100", "ISO_13818_2"),
                                                ("1.2.840.10008.1.2.4.102", "ISO_14496_10"),
                                                ("1.2.840.10008.1.2.4.107", "ISO_23008_2")])
def test_video_syntaxes_are_always_lossy(syntax: str, method: str) -> None:
    # no installed decoder reads them today; should one, the masked frames must still say so
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel, ds.PhotometricInterpretation = 2, 2, 8, 1, "MONOCHROME2"
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(4)])
    frames = np.zeros((1, 2, 2), dtype=np.uint8)
    write_native(ds, Decoded(frames, "MONOCHROME2", 2), frames.tobytes())
    assert ds.LossyImageCompression == "01" and ds.LossyImageCompressionMethod == method
    assert ds.LossyImageCompressionRatio == "2.00"


def test_jpeg_ls_scans_after_restart_markers_are_read() -> None:
    # two scans (one per component, ILV 0), the first with a restart marker in its coded data
    # (T.87 C.1.2): the NEAR of the second scan counts, coded bytes are not taken for segments
    sof = b"\xff\xf7\x00\x0b\x08\x00\x02\x00\x02\x01\x01\x11\x00"
    scan1 = b"\xff\xda\x00\x08\x01\x01\x00\x00\x00\x00" + b"\x12\x34" + b"\xff\xd0" + b"\x00\x09\xff\x7f\x10"
    scan2 = b"\xff\xda\x00\x08\x01\x02\x00\x03\x00\x00" + b"\x55"
    stream = b"\xff\xd8" + sof + scan1 + scan2 + b"\xff\xd9"
    assert codestream_loss("1.2.840.10008.1.2.4.81", stream) is True
    lossless = stream.replace(b"\x01\x02\x00\x03", b"\x01\x02\x00\x00")
    assert codestream_loss("1.2.840.10008.1.2.4.81", lossless) is False
    assert codestream_loss("1.2.840.10008.1.2.4.81", stream[:20]) is None  # cut before any NEAR


def _j2k(tile_transform: int, main_quantization: int = 0x40) -> bytes:
    """A one-tile codestream (T.800 A): 5-3 in the main header's COD, ``tile_transform`` in the
    tile-part header's COD (0: 9-7), QCD with style ``main_quantization`` (0x40: none)."""
    siz = b"\xff\x51\x00\x29\x00\x00" + (8).to_bytes(4, "big") * 2 + bytes(8) + (8).to_bytes(4, "big") * 2
    siz += bytes(8) + b"\x00\x01" + b"\x07\x01\x01"
    cod = b"\xff\x52\x00\x0c\x00\x00\x00\x01\x00\x05\x04\x04\x00"
    qcd = b"\xff\x5c\x00\x04" + bytes([main_quantization]) + b"\x48"
    tile = cod + bytes([tile_transform]) + b"\xff\x93" + b"\x00\x00"
    sot = b"\xff\x90\x00\x0a\x00\x00" + (12 + len(tile)).to_bytes(4, "big") + b"\x00\x01"
    return b"\xff\x4f" + siz + cod + b"\x01" + qcd + sot + tile + b"\xff\xd9"


def test_jpeg_2000_tile_part_headers_and_quantization_are_read() -> None:
    assert codestream_loss(JPEG2000, _j2k(1)) is None  # 5-3 throughout, no quantization: cannot tell
    assert codestream_loss(JPEG2000, _j2k(0)) is True  # one tile says 9-7
    assert codestream_loss(JPEG2000, _j2k(1, main_quantization=0x42)) is True  # scalar expounded
    assert codestream_loss(JPEG2000, b"\xff\x4f\xff\x51\x00\x29") is None  # cut short
