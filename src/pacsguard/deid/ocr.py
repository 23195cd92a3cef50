"""Finding and masking burned-in text under the Clean Pixel Data Option (PS3.15 E.3.1).

Each frame is rendered to 8-bit grey, read by tesseract (Debian tesseract-ocr, through
pytesseract), and every word box it finds with enough confidence is blanked in the stored pixel
values, as are the administrator's region masks for the device. Compressed frames (JPEG, JPEG-LS,
JPEG 2000, RLE: PS3.5 A.4) are decoded first (decoded.py); if a region is blanked in one, every
frame is written back uncompressed, as no recompression would be lossless."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset

from pacsguard.deid.decoded import decode, write_native
from pacsguard.deid.engine import Withheld

if TYPE_CHECKING:
    from pacsguard.deid.config import PixelSettings, RegionMask

#: A word must hold a letter or a digit to count as text (tesseract reports noise as punctuation).
_WORDLIKE = re.compile(r"[A-Za-z0-9]")
#: Boxes grow by this many pixels on every side so the edges of glyphs go too.
_MARGIN = 2
#: OCR readings of one frame at most: the first, and more while each finds words to blank.
_PASSES = 3


@dataclass(frozen=True, slots=True)
class Box:
    x: int
    y: int
    width: int
    height: int


def render(frame: Any) -> Any:
    """A frame (rows x columns, or x samples) scaled to 8-bit grey for OCR, as a PIL image."""
    import numpy as np
    from PIL import Image

    data = np.asarray(frame, dtype=np.float64)
    if data.ndim == 3:
        data = data.mean(axis=2)
    low, high = float(data.min()), float(data.max())
    scaled = np.zeros_like(data) if high <= low else (data - low) * (255.0 / (high - low))
    image = Image.fromarray(scaled.astype(np.uint8), mode="L")
    # tesseract reads small glyphs poorly: enlarge small images so text is ~20 pixels high.
    factor = 3 if max(image.size) < 1024 else 1
    return image.resize((image.width * factor, image.height * factor)) if factor > 1 else image, factor


def find_text(frame: Any, settings: PixelSettings) -> tuple[list[Box], list[str]]:
    """Word boxes (in frame pixels) and words tesseract finds in one frame."""
    import pytesseract

    image, factor = render(frame)
    boxes: list[Box] = []
    words: list[str] = []
    for inverted in (False, True):  # light text on dark, then dark on light
        from PIL import ImageOps

        seen = ImageOps.invert(image) if inverted else image
        data = pytesseract.image_to_data(seen, lang=settings.language, config="--psm 11",
                                         output_type=pytesseract.Output.DICT)
        for i, text in enumerate(data["text"]):
            if not text or not _WORDLIKE.search(text) or float(data["conf"][i]) < settings.min_confidence:
                continue
            words.append(text)
            boxes.append(Box(data["left"][i] // factor, data["top"][i] // factor,
                             -(-data["width"][i] // factor), -(-data["height"][i] // factor)))
    return boxes, words


def _blank(stack: Any, index: int, boxes: list[Box]) -> int:
    """Set each box of frame ``index``, with a margin, to the frame's lowest value; how many."""
    for box in boxes:
        y0, x0 = max(box.y - _MARGIN, 0), max(box.x - _MARGIN, 0)
        stack[index, y0:box.y + box.height + _MARGIN, x0:box.x + box.width + _MARGIN] = stack[index].min()
    return len(boxes)


def _mask_matches(mask: RegionMask, ds: Dataset) -> bool:
    return ((not mask.manufacturer or str(ds.get("Manufacturer", "")) == mask.manufacturer)
            and (not mask.model or str(ds.get("ManufacturerModelName", "")) == mask.model)
            and (mask.rows is None or int(ds.get("Rows", 0)) == mask.rows)
            and (mask.columns is None or int(ds.get("Columns", 0)) == mask.columns))


class PixelCleaner:
    """The engine's PixelCleaner: OCR and region masks over every frame; raises Withheld when the
    pixels cannot be checked or changed.

    Burned In Annotation (PS3.3 C.7.6.1.1.7) becomes NO only when the pixels were looked at: by
    OCR, or by the administrator's region masks for the device when ``pixels.ocr`` is off. With
    OCR off and no mask for the device nothing looks at the pixels, so the object is withheld
    (issue 20: a file whose pixels cannot be checked is never forwarded)."""

    def __init__(self, settings: PixelSettings) -> None:
        self.settings = settings

    def region_boxes(self, ds: Dataset) -> list[Box]:
        """The boxes of every region mask that matches this object's device."""
        return [Box(*b) for m in self.settings.region_masks if _mask_matches(m, ds) for b in m.boxes]

    def unchecked(self, ds: Dataset) -> str:
        """Why nothing would look at these pixels (then the object is withheld), or ''."""
        if not self.settings.ocr and not self.region_boxes(ds):
            return "pixels.ocr is off and no region mask matches this device: the pixels cannot be checked"
        return ""

    def _mask(self, stack: Any, fixed: list[Box]) -> int:
        """Blank the region masks and the words OCR finds in every frame; how many boxes were
        blanked. OCR reads a frame again after each blanking that found words (up to _PASSES
        readings): a word read with too little confidence beside others ("MRN&88213" at 30 next
        to a name at 92) is often read well once they are gone."""
        masked = 0
        for index in range(stack.shape[0]):
            found: list[Box] = []
            if self.settings.ocr:
                found, _ = find_text(stack[index], self.settings)
            masked += _blank(stack, index, [*fixed, *found])
            for _ in range(_PASSES - 1 if found else 0):
                found, _ = find_text(stack[index], self.settings)
                if not found:
                    break
                masked += _blank(stack, index, found)
        return masked

    def __call__(self, ds: Dataset) -> str:
        if self.settings.ocr and (find_spec("pytesseract") is None or find_spec("PIL") is None):
            raise Withheld("OCR needs pytesseract and Pillow: pip install 'pacsguard[deid]'")
        if "PixelData" not in ds:
            raise Withheld("float pixel data cannot be checked for burned-in text")
        unchecked = self.unchecked(ds)
        if unchecked:
            raise Withheld(unchecked)
        fixed = self.region_boxes(ds)
        decoded = None
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            decoded = decode(ds, self.settings.max_decoded_mib)
            stack, photometric = decoded.frames, decoded.photometric
        else:
            stack, photometric = _native_frames(ds), str(ds.get("PhotometricInterpretation", ""))
        if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR"):
            raise Withheld(f"photometric interpretation {photometric} is not checked")
        masked = self._mask(stack, fixed)
        said = decoded.note if decoded is not None else ""  # the decoder's warnings, in our words
        if masked:
            multi = int(ds.get("NumberOfFrames", 1) or 1) > 1
            data = native_bytes(ds, stack if multi else stack[0])
            if decoded is not None:
                write_native(ds, decoded, data)  # masked frames cannot be recompressed losslessly
            else:
                ds.PixelData = data
            if int(ds.get("SamplesPerPixel", 1)) > 1:
                ds.PlanarConfiguration = 0  # pixel_array is colour-by-pixel, and so are the bytes written back
            ds.BurnedInAnnotation = "NO"
            return f"masked {masked}{said}"
        ds.BurnedInAnnotation = "NO"
        return f"clean{said}"


def _native_frames(ds: Dataset) -> Any:
    """The native pixels of ``ds``, frames first, as a copy the masks may change."""
    try:
        pixels = ds.pixel_array.copy()
    except Exception as exc:  # no handler, odd layout: unchecked pixels never leave
        raise Withheld(f"the pixels cannot be decoded to be checked: {type(exc).__name__}") from None
    return pixels if int(ds.get("NumberOfFrames", 1) or 1) > 1 else pixels[None, ...]


def native_bytes(ds: Dataset, pixels: Any) -> bytes:
    """Masked pixels as native Pixel Data of the data set's own layout (PS3.5 8.1.1): Bits
    Allocated 1 packed eight pixels to a byte, least significant bit first (pydicom's pack_bits);
    others at Bits Allocated bits each. Raises Withheld when the result would not have the
    length Rows x Columns x Samples x Frames x Bits Allocated / 8 (rounded up) asks, rather than
    write an object whose frames a reader would split wrongly."""
    bits = int(ds.BitsAllocated)
    if bits == 1:
        from pydicom.pixels.utils import pack_bits

        data = pack_bits(pixels)
    elif bits == pixels.dtype.itemsize * 8:
        data = pixels.tobytes()
    else:
        raise Withheld(f"{bits}-bit pixels decode to {pixels.dtype.itemsize * 8}-bit values: cannot be written back")
    count = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1)
    count *= int(ds.get("NumberOfFrames", 1) or 1)
    needed = (count * bits + 7) // 8
    if len(data) != needed:
        raise Withheld(f"the masked pixel data would be {len(data)} bytes, {needed} expected: not written")
    return data
