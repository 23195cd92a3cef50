"""Burned-in text (PS3.15 E.3.1 Clean Pixel Data Option; PS3.3 C.7.6.1.1.7 Burned In Annotation).

An object whose pixels may carry text (Burned In Annotation YES, or a SOP class or modality known
to burn text in: secondary capture, ultrasound, endoscopy and other visible-light photographs,
screen captures) is withheld unless Clean Pixel Data is chosen; with it, the pixels are checked
(OCR and the administrator's region masks, ocr.py) before anything is written."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

_PIXELS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

#: SOP classes (PS3.4 Annex B) whose images routinely hold burned-in text.
TEXT_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color Secondary Capture
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
    "1.2.840.10008.5.1.4.1.1.6.2",  # Enhanced US Volume Storage
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image Storage
    "1.2.840.10008.5.1.4.1.1.77.1.1",  # VL Endoscopic Image Storage
    "1.2.840.10008.5.1.4.1.1.77.1.4",  # VL Photographic Image Storage
})
#: Modalities (PS3.3 C.7.3.1.1.1) whose images routinely hold burned-in text.
TEXT_MODALITIES = frozenset({"US", "SC", "OT", "XC", "ES", "GM", "SM", "DOC"})


@dataclass(frozen=True, slots=True)
class PixelVerdict:
    check: bool  # the pixels must be checked (OCR, masks) before the object may leave
    withhold: bool  # the object must not leave at all
    reason: str
    clean_known: bool  # nothing identifying is known to be in the pixels without a check


def may_hold_text(ds: Dataset) -> str | None:
    """Why this object's pixels may hold burned-in text, or None."""
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        return "Burned In Annotation is YES"
    if str(ds.get("SOPClassUID", "")) in TEXT_CLASSES:
        return f"SOP class {ds.SOPClassUID} is known to burn text into its pixels"
    if str(ds.get("Modality", "")).upper() in TEXT_MODALITIES:
        return f"modality {ds.Modality} is known to burn text into its pixels"
    return None


def pixel_verdict(ds: Dataset, clean_pixel_data: bool) -> PixelVerdict:
    if not any(k in ds for k in _PIXELS):
        return PixelVerdict(False, False, "none", True)
    why = may_hold_text(ds)
    if why is not None and not clean_pixel_data:
        return PixelVerdict(False, True, f"{why}; withheld without clean-pixel-data", False)
    if clean_pixel_data:
        return PixelVerdict(True, False, why or "clean-pixel-data checks every image", False)
    declared_clean = str(ds.get("BurnedInAnnotation", "")).upper() == "NO"
    return PixelVerdict(False, False, "not checked", declared_clean)
