"""Round 10 (H): 12-bit JPEG Extended (1.2.840.10008.1.2.4.51, T.81 Process 4) under Clean Pixel
Data (PS3.15 E.3.1). pydicom's GDCM plugin turns 12-bit JPEG Extended down, Pillow decodes 8 bits
only, and pylibjpeg's libjpeg refuses a sequential scan whose spectral selection end (Se, T.81
B.2.3) is not 63, as in pydicom's JPEG-lossy.dcm: such an image was withheld ("cannot be
decoded"). GDCM itself (python-gdcm) decodes it, as IJG libjpeg does, with a warning; the decoder
now falls back to it. Images with text drawn in them compressed by dcmtk (dcmcjpeg +ee: extended
sequential, 12 bits chosen from Bits Stored), once with the scan header JPEG-lossy.dcm has.

The made image also showed tesseract reading one word at confidence 30 beside a name it read at
92 and dropping it; OCR now reads a frame again after blanking what it found."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytesseract
import pytest
from deid_helpers import engine
from PIL import Image, ImageDraw, ImageFont
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID, ExplicitVRLittleEndian

from pacsguard.deid.files import deidentify_file, read_whole

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
WORDS = ("KOWALCZYK", "19570412", "MRN88213")
SC = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
ANATOMY = (slice(100, 160), slice(130, 190))


def _image() -> np.ndarray:
    """320 x 240, 12 bits stored: a disc of 1500 on 200, and text of 4000 at the top and bottom."""
    assert FONT.exists(), "fonts-dejavu-core is missing (make peers)"
    img = Image.new("I", (320, 240), 200)
    draw = ImageDraw.Draw(img)
    draw.ellipse((90, 60, 230, 200), fill=1500)
    font = ImageFont.truetype(str(FONT), 18)
    draw.text((8, 6), f"{WORDS[0]} {WORDS[2]}", fill=4000, font=font)
    draw.text((8, 212), WORDS[1], fill=4000, font=font)
    return np.asarray(img, dtype=np.uint16)


def _object(pixels: np.ndarray) -> Dataset:
    """A secondary capture of ``pixels``, 16 bits allocated, 12 stored, uncompressed."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(SC)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.826.0.1.3680043.99.10.121")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.99.10.122", "1.2.826.0.1.3680043.99.10.123"
    ds.Modality, ds.PatientID, ds.PatientName = "OT", "MRN88213", "KOWALCZYK^IRENA"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 240, 320, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def _jpeg_12(tmp_path: Path, *, se_zero: bool = False) -> Path:
    """The image compressed by dcmcjpeg +ee; with ``se_zero`` its Start of Scan says Se 0 where
    dcmtk writes 63, as the encoder of pydicom's JPEG-lossy.dcm did (same length, same data)."""
    native, out = tmp_path / "native.dcm", tmp_path / "jpeg12.dcm"
    dcmwrite(native, _object(_image()), enforce_file_format=True)
    tool = shutil.which("dcmcjpeg", path="/usr/bin")
    assert tool, "dcmcjpeg is missing (Debian dcmtk: make peers)"
    subprocess.run([tool, "+ee", "+un", str(native), str(out)], check=True, capture_output=True, timeout=60)
    if se_zero:
        ds = read_whole(out)
        sos = b"\xff\xda\x00\x08\x01\x01\x00\x00"  # one component, table 0/0, Ss 0, then Se
        assert ds.PixelData.count(sos + b"\x3f\x00") == 1
        ds.PixelData = ds.PixelData.replace(sos + b"\x3f\x00", sos + b"\x00\x00")
        ds.save_as(out)
    return out


def _ocr(pixels: np.ndarray) -> str:
    assert shutil.which("tesseract"), "tesseract-ocr is missing (make peers)"
    low, high = int(pixels.min()), int(pixels.max())
    grey = ((pixels.astype(float) - low) * 255 / max(high - low, 1)).astype(np.uint8)
    big = Image.fromarray(grey).resize((grey.shape[1] * 3, grey.shape[0] * 3))
    return str(pytesseract.image_to_string(big, config="--psm 11"))


def _gdcm_pixels(path: Path) -> np.ndarray:
    """What GDCM's own reader decodes the file to, as the reference for the anatomy."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    assert reader.Read(), path
    image = reader.GetImage()
    data = image.GetBuffer().encode("utf-8", "surrogateescape")
    rows, columns = image.GetDimension(1), image.GetDimension(0)
    return np.frombuffer(data, dtype="<u2").reshape(rows, columns)


def test_burned_in_text_in_a_12_bit_jpeg_only_gdcm_decodes_is_found_and_blanked(tmp_path: Path) -> None:
    source = _jpeg_12(tmp_path, se_zero=True)
    ds = read_whole(source)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.51" and ds.BitsStored == 12
    with pytest.raises(RuntimeError, match="Unable to decode"):  # no plugin of pydicom's does
        ds.pixel_array  # noqa: B018
    before = _gdcm_pixels(source)
    assert before.max() > 255 and any(w in _ocr(before) for w in WORDS)  # 12-bit values, text readable
    result = deidentify_file(engine("clean-pixel-data"), source, tmp_path / "out.dcm")
    assert result.output is not None, result.withheld
    assert result.report.pixels.startswith("masked"), result.report.pixels
    out = read_whole(result.output)
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and out.BitsAllocated == 16
    after = out.pixel_array
    assert after.shape == (240, 320)
    seen = _ocr(after)
    assert not [w for w in WORDS if w in seen], seen
    assert (after[ANATOMY] == before[ANATOMY]).all()  # the anatomy as GDCM decodes it
    assert after[:4].max() < 4000 and after[4:30, :200].max() < 1000  # the top text is gone
    assert out.LossyImageCompression == "01" and out.LossyImageCompressionMethod == "ISO_10918_1"
    assert float(out.LossyImageCompressionRatio) > 1
    assert out.BurnedInAnnotation == "NO"


def test_a_word_read_with_low_confidence_beside_others_is_read_again(tmp_path: Path) -> None:
    # dcmtk's own 12-bit JPEG, which pylibjpeg decodes: tesseract reads "MRN&88213" at confidence
    # 30 beside the name (92) and drops it; once the name and the date are blanked it reads it
    source = _jpeg_12(tmp_path)
    result = deidentify_file(engine("clean-pixel-data"), source, tmp_path / "out.dcm")
    assert result.output is not None, result.withheld
    after = read_whole(result.output).pixel_array
    seen = _ocr(after)
    assert not [w for w in WORDS if w in seen], seen
    assert after[4:30, :260].max() < 1000  # the whole top line is blanked


def test_pydicoms_12_bit_jpeg_lossy_is_checked_not_withheld(tmp_path: Path) -> None:
    source = Path(str(get_testdata_file("JPEG-lossy.dcm")))
    result = deidentify_file(engine("clean-pixel-data"), source, tmp_path / "out.dcm")
    assert result.output is not None, result.withheld
    assert result.report.pixels.startswith(("clean", "masked")), result.report.pixels
    out = read_whole(result.output)
    if result.report.pixels.startswith("masked"):
        assert (out.Rows, out.Columns) == (1024, 256) and out.pixel_array.max() > 0
    else:
        assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.51"


def test_without_gdcm_a_12_bit_jpeg_is_withheld_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gdcm", None)  # import gdcm raises ImportError
    source = Path(str(get_testdata_file("JPEG-lossy.dcm")))
    result = deidentify_file(engine("clean-pixel-data"), source, tmp_path / "out.dcm")
    assert result.output is None
    assert "1.2.840.10008.1.2.4.51" in result.withheld and "python-gdcm" in result.withheld
    assert "Traceback" not in result.withheld
