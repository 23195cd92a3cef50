"""Round 10 (C): Clean Pixel Data (PS3.15 E.3.1) over compressed pixel data. With clean-pixel-data
chosen, every object whose pixel data was encapsulated (PS3.5 A.4: JPEG, JPEG-LS, JPEG 2000, RLE)
was withheld ("cannot be masked in place"), so an ultrasound archive, mostly JPEG, could not be
de-identified at all. Now the frames are decoded, OCR and region masks run on them, and a masked
image goes out in Explicit VR Little Endian with its lossy marking kept (PS3.3 C.7.6.1.1.5); a
clean one keeps its compressed frames. Files compressed by dcmtk (dcmcjpeg, dcmcjpls, dcmcrle) and
GDCM (gdcmconv --j2k) from an ultrasound-like image with text drawn into it, and pydicom's own
compressed test files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytesseract
import pytest
from deid_helpers import KEY, engine
from PIL import Image, ImageDraw, ImageFont
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID, ExplicitVRLittleEndian

from pacsguard.deid.build import make_engine
from pacsguard.deid.config import DeidConfig, PixelSettings, RegionMask
from pacsguard.deid.files import deidentify_file, read_whole
from pacsguard.deid.profile import Option

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
WORDS = ("SMITHERS", "20240315", "PID4711")
US = "1.2.840.10008.5.1.4.1.1.6.1"  # Ultrasound Image Storage
US_MULTI = "1.2.840.10008.5.1.4.1.1.3.1"  # Ultrasound Multi-frame Image Storage
ANATOMY = (slice(100, 160), slice(130, 190))  # inside the ellipse, far from the text


def _tool(name: str) -> str:
    path = shutil.which(name, path="/usr/bin")
    assert path, f"{name} is missing (Debian dcmtk / libgdcm-tools: make peers)"
    return path


def _frame(text: bool, colour: bool) -> np.ndarray:
    assert FONT.exists(), "fonts-dejavu-core is missing (make peers)"
    assert shutil.which("tesseract"), "tesseract-ocr is missing (make peers)"
    img = Image.new("RGB" if colour else "L", (320, 240), 0)
    draw = ImageDraw.Draw(img)
    draw.ellipse((90, 60, 230, 200), fill=(120, 110, 100) if colour else 120)  # the "anatomy"
    if text:
        font = ImageFont.truetype(str(FONT), 18)
        white = (255, 255, 255) if colour else 255
        draw.text((8, 6), f"{WORDS[0]} {WORDS[2]}", fill=white, font=font)
        draw.text((8, 212), WORDS[1], fill=white, font=font)
    return np.asarray(img, dtype=np.uint8)


def _native(path: Path, frames: list[np.ndarray]) -> Path:
    """An ultrasound object (multi-frame when there are several) of ``frames``, uncompressed."""
    multi = len(frames) > 1
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(US_MULTI if multi else US)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.826.0.1.3680043.99.10.1")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.99.10.2", "1.2.826.0.1.3680043.99.10.3"
    ds.Modality, ds.PatientID, ds.PatientName = "US", "PID4711", "SMITHERS^WAYLON"
    ds.Manufacturer = "Sonix"
    ds.Rows, ds.Columns = frames[0].shape[:2]
    colour = frames[0].ndim == 3
    ds.SamplesPerPixel, ds.PhotometricInterpretation = (3, "RGB") if colour else (1, "MONOCHROME2")
    if colour:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if multi:
        ds.NumberOfFrames = len(frames)
    ds.PixelData = np.stack(frames).tobytes()
    dcmwrite(path, ds, enforce_file_format=True)
    return path


def _compressed(tmp_path: Path, how: str, frames: list[np.ndarray]) -> Path:
    """``frames`` as an ultrasound object compressed by dcmtk or GDCM."""
    source = _native(tmp_path / "native.dcm", frames)
    out = tmp_path / f"{how}.dcm"
    commands = {
        "jpeg-baseline": [_tool("dcmcjpeg"), "+eb", "+un"],  # keep the SOP Instance UID
        "jpeg-lossless": [_tool("dcmcjpeg"), "+e1"],
        "jpeg-ls": [_tool("dcmcjpls")],
        "rle": [_tool("dcmcrle")],
        "j2k": [_tool("gdcmconv"), "--j2k"],
    }
    subprocess.run([*commands[how], str(source), str(out)], check=True, capture_output=True, timeout=60)
    return out


def _ocr(pixels: np.ndarray) -> str:
    grey = pixels if pixels.ndim == 2 else pixels.mean(axis=2).astype(np.uint8)
    big = Image.fromarray(grey).resize((grey.shape[1] * 3, grey.shape[0] * 3))
    return str(pytesseract.image_to_string(big, config="--psm 11")) + str(
        pytesseract.image_to_string(Image.fromarray(255 - np.asarray(big)), config="--psm 11"))


SYNTAXES = {"jpeg-baseline": "1.2.840.10008.1.2.4.50", "jpeg-lossless": "1.2.840.10008.1.2.4.70",
            "jpeg-ls": "1.2.840.10008.1.2.4.80", "rle": "1.2.840.10008.1.2.5", "j2k": "1.2.840.10008.1.2.4.90"}


@pytest.mark.parametrize(("how", "colour"), [("jpeg-baseline", True), ("jpeg-baseline", False),
                                             ("jpeg-lossless", False), ("jpeg-ls", False), ("rle", True),
                                             ("j2k", False)])
def test_burned_in_text_in_compressed_frames_is_blanked(tmp_path: Path, how: str, colour: bool) -> None:
    pixels = _frame(text=True, colour=colour)
    source = _compressed(tmp_path, how, [pixels])
    ds = read_whole(source)
    assert ds.file_meta.TransferSyntaxUID == SYNTAXES[how]
    assert any(w in _ocr(ds.pixel_array) for w in WORDS)  # the text survives compression, readable
    result = deidentify_file(engine("clean-pixel-data"), source, tmp_path / "out.dcm")
    assert result.output is not None, result.withheld
    assert result.report.pixels.startswith("masked")
    out = read_whole(result.output)
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert out.PhotometricInterpretation == ("RGB" if colour else "MONOCHROME2")
    after = out.pixel_array
    assert after.shape == pixels.shape
    seen = _ocr(after)
    assert not [w for w in WORDS if w in seen], seen
    decoded = ds.pixel_array
    # the anatomy is what the source decoded to (RGB of a YBR JPEG: within rounding of the conversion)
    assert np.abs(after[ANATOMY].astype(int) - decoded[ANATOMY].astype(int)).max() <= 1
    assert out.BurnedInAnnotation == "NO" and out.PatientIdentityRemoved == "YES"
    if how == "jpeg-baseline":  # PS3.3 C.7.6.1.1.5: once lossy, always lossy
        assert out.LossyImageCompression == "01"
        assert out.LossyImageCompressionMethod == ds.get("LossyImageCompressionMethod", "ISO_10918_1")
        assert float(out.LossyImageCompressionRatio) > 1
    else:
        assert out.get("LossyImageCompression", "00") == "00"


@pytest.mark.parametrize("how", ["rle", "j2k", "jpeg-baseline"])
def test_every_frame_of_a_compressed_cine_is_checked(tmp_path: Path, how: str) -> None:
    frames = [_frame(text=False, colour=False), _frame(text=True, colour=False), _frame(text=False, colour=False)]
    frames[2] = frames[2].copy()
    frames[2][6:30, 8:200] = np.asarray(_frame(text=True, colour=False))[6:30, 8:200]  # text in the last too
    source = _compressed(tmp_path, how, frames)
    result = deidentify_file(engine("clean-pixel-data"), source, tmp_path / "out.dcm")
    assert result.output is not None, result.withheld
    out = read_whole(result.output)
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and int(out.NumberOfFrames) == 3
    after = out.pixel_array
    for index in (1, 2):
        seen = _ocr(after[index])
        assert not [w for w in WORDS if w in seen], (index, seen)
    decoded = read_whole(source).pixel_array
    for index in range(3):  # the anatomy of every frame, the clean one included, is as decoded
        assert (after[index][ANATOMY] == decoded[index][ANATOMY]).all(), index


@pytest.mark.parametrize("how", ["jpeg-baseline", "j2k", "rle"])
def test_a_clean_compressed_image_passes_compressed(tmp_path: Path, how: str) -> None:
    source = _compressed(tmp_path, how, [_frame(text=False, colour=False)])
    before = read_whole(source)
    result = deidentify_file(engine("clean-pixel-data"), source, tmp_path / "out.dcm")
    assert result.output is not None, result.withheld
    assert result.report.pixels.startswith("clean")
    out = read_whole(result.output)
    assert out.file_meta.TransferSyntaxUID == SYNTAXES[how]  # nothing blanked: no decode-recode loss
    assert (out.pixel_array == before.pixel_array).all() and out.BurnedInAnnotation == "NO"


def test_a_region_mask_blanks_compressed_frames_without_ocr(tmp_path: Path) -> None:
    source = _compressed(tmp_path, "jpeg-ls", [_frame(text=True, colour=False)])
    mask = RegionMask(manufacturer="Sonix", boxes=[(0, 0, 320, 34), (0, 206, 320, 34)])
    config = DeidConfig(pixels=PixelSettings(ocr=False, region_masks=[mask]))
    result = deidentify_file(make_engine(KEY, [Option.CLEAN_PIXEL_DATA], config), source, tmp_path / "out.dcm")
    assert result.output is not None, result.withheld
    after = read_whole(result.output).pixel_array
    assert after[:34].max() == 0 and after[206:].max() == 0
    assert (after[ANATOMY] == read_whole(source).pixel_array[ANATOMY]).all()


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_gdcm.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPEG2000.dcm",
                                  "MR_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm",
                                  "JPEGLSNearLossless_16.dcm"])
def test_pydicoms_compressed_files_are_checked_not_withheld(tmp_path: Path, name: str) -> None:
    source = Path(str(get_testdata_file(name)))
    result = deidentify_file(engine("clean-pixel-data"), source, tmp_path / "out.dcm")
    assert result.output is not None, result.withheld
    assert result.report.pixels.startswith(("clean", "masked"))
    out = read_whole(result.output)
    assert out.pixel_array.shape == read_whole(source).pixel_array.shape
    if result.report.pixels.startswith("masked"):
        assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_an_image_no_handler_decodes_is_withheld_naming_its_syntax(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # 12-bit JPEG Extended whose scan header says Se 0: neither Pillow nor libjpeg (as pylibjpeg
    # builds it) decodes it, and without python-gdcm (test_r10H_jpeg_12bit.py) nothing does.
    monkeypatch.setitem(sys.modules, "gdcm", None)
    source = Path(str(get_testdata_file("JPEG-lossy.dcm")))
    result = deidentify_file(engine("clean-pixel-data"), source, tmp_path / "out.dcm")
    assert result.output is None
    assert "JPEG Extended" in result.withheld and "1.2.840.10008.1.2.4.51" in result.withheld
    assert "cannot be decoded" in result.withheld and "Traceback" not in result.withheld
    assert "python-gdcm" in result.withheld


def test_a_cine_too_large_to_decode_is_withheld_naming_the_limit(tmp_path: Path) -> None:
    frames = [_frame(text=False, colour=True)] * 6  # 6 x 320 x 240 x 3 = 1.4 MB decoded
    source = _compressed(tmp_path, "rle", frames)
    config = DeidConfig(pixels=PixelSettings(max_decoded_mib=1))
    result = deidentify_file(make_engine(KEY, [Option.CLEAN_PIXEL_DATA], config), source, tmp_path / "out.dcm")
    assert result.output is None
    assert "6 frame(s) of 240 x 320" in result.withheld and "pixels.max_decoded_mib (1 MiB)" in result.withheld
    config = DeidConfig(pixels=PixelSettings(max_decoded_mib=2))
    result = deidentify_file(make_engine(KEY, [Option.CLEAN_PIXEL_DATA], config), source, tmp_path / "out2.dcm")
    assert result.output is not None, result.withheld


def test_a_lossy_jpeg_2000_image_masked_stays_marked_lossy(tmp_path: Path) -> None:
    # pydicom's JPEG2000.dcm: Lossy Image Compression 01; a region mask makes it masked
    source = Path(str(get_testdata_file("JPEG2000.dcm")))
    before = read_whole(source)
    assert before.LossyImageCompression == "01"
    config = DeidConfig(pixels=PixelSettings(ocr=False, region_masks=[RegionMask(boxes=[(0, 0, 16, 16)])]))
    result = deidentify_file(make_engine(KEY, [Option.CLEAN_PIXEL_DATA], config), source, tmp_path / "out.dcm")
    assert result.output is not None, result.withheld
    out = read_whole(result.output)
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and out.LossyImageCompression == "01"
    # Its codestream proves the 9-7 wavelet: the method and ratio are added (test_r10H_lossy_marking.py).
    assert out.LossyImageCompressionMethod == "ISO_15444_1"
    # An approximate ratio (PS3.3 C.7.6.1.1.5.2): decoded bytes over the codestream's (~2,000 here).
    assert float(out.LossyImageCompressionRatio) == pytest.approx(before.pixel_array.nbytes / len(before.PixelData),
                                                                  rel=0.1)
    after, decoded = out.pixel_array, before.pixel_array
    assert (after[:18, :18] == decoded.min()).all() and (after[40:, 40:] == decoded[40:, 40:]).all()
