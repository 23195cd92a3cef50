"""Burned-in text (PS3.15 E.3.1): text the test renders into the pixels of a secondary capture and
of an ultrasound-like object is found by OCR and masked, OCR of the output finds none of it, and
an image without text passes unmasked. Uses Debian's tesseract-ocr and a DejaVu font."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytesseract
import pytest
from deid_helpers import engine
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian

from pacsguard.deid.files import deidentify_file, read_whole

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
WORDS = ("SMITHERS", "20240315", "PID4711")


def _image(text: bool) -> np.ndarray:
    assert FONT.exists(), "fonts-dejavu-core is missing (make peers)"
    assert shutil.which("tesseract"), "tesseract-ocr is missing (make peers)"
    img = Image.new("L", (320, 240), 0)
    draw = ImageDraw.Draw(img)
    draw.ellipse((90, 60, 230, 200), fill=120)  # "anatomy"
    if text:
        font = ImageFont.truetype(str(FONT), 18)
        draw.text((8, 6), f"{WORDS[0]} {WORDS[2]}", fill=255, font=font)
        draw.text((8, 212), WORDS[1], fill=255, font=font)
    return np.asarray(img, dtype=np.uint8)


def _object(path: Path, pixels: np.ndarray, sop_class: str, modality: str) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.99.7.1"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, "1.2.826.0.1.3680043.99.7.1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.99.7.2", "1.2.826.0.1.3680043.99.7.3"
    ds.Modality, ds.PatientID, ds.PatientName = modality, "PID4711", "SMITHERS^WAYLON"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    dcmwrite(path, ds, enforce_file_format=True)
    return path


def _ocr(pixels: np.ndarray) -> str:
    big = Image.fromarray(pixels).resize((pixels.shape[1] * 3, pixels.shape[0] * 3))
    return str(pytesseract.image_to_string(big, config="--psm 11")) + str(
        pytesseract.image_to_string(Image.fromarray(255 - np.asarray(big)), config="--psm 11"))


@pytest.mark.parametrize(("sop_class", "modality"), [("1.2.840.10008.5.1.4.1.1.7", "OT"),
                                                     ("1.2.840.10008.5.1.4.1.1.6.1", "US")])
def test_text_in_the_pixels_is_found_and_masked(sop_class: str, modality: str, tmp_path: Path) -> None:
    pixels = _image(text=True)
    assert any(w in _ocr(pixels) for w in WORDS)  # the test's own text is readable to begin with
    source = _object(tmp_path / "in.dcm", pixels, sop_class, modality)
    withheld = deidentify_file(engine(), source, tmp_path / "plain.dcm")
    assert withheld.output is None and "clean-pixel-data" in withheld.withheld
    result = deidentify_file(engine("clean-pixel-data"), source, tmp_path / "out.dcm")
    assert result.output is not None, result.withheld
    assert result.report.pixels.startswith("masked")
    out = read_whole(result.output)
    after = out.pixel_array
    seen = _ocr(after)
    assert not [w for w in WORDS if w in seen], seen
    assert out.PatientIdentityRemoved == "YES" and out.BurnedInAnnotation == "NO"
    assert "113101" in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    # the anatomy in the middle is untouched
    assert (after[100:160, 130:190] == pixels[100:160, 130:190]).all()


def test_an_image_without_text_passes_unmasked(tmp_path: Path) -> None:
    pixels = _image(text=False)
    source = _object(tmp_path / "in.dcm", pixels, "1.2.840.10008.5.1.4.1.1.7", "OT")
    result = deidentify_file(engine("clean-pixel-data"), source, tmp_path / "out.dcm")
    assert result.output is not None, result.withheld
    assert result.report.pixels == "clean"
    assert (read_whole(result.output).pixel_array == pixels).all()
