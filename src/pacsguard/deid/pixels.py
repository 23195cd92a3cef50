"""Burned-in text (PS3.15 E.3.1 Clean Pixel Data Option; PS3.3 C.7.6.1.1.7 Burned In Annotation).

An object whose pixels may carry text (Burned In Annotation YES, or a SOP class or modality known
to burn text in: secondary capture, ultrasound, endoscopy and other visible-light photographs,
screen captures) is withheld unless Clean Pixel Data is chosen; with it, the pixels are checked
(OCR and the administrator's region masks, ocr.py) before anything is written."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from pacsguard.deid.engine import Withheld

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


#: Overlay groups (PS3.3 C.9.2: 6000-601E, even; an even 60xx group past them is taken as one too)
#: and their elements this module reads.
_OVERLAY_GROUPS = range(0x6000, 0x6100, 2)
_OVERLAY_DATA = 0x3000
_OVERLAY_BITS_ALLOCATED = 0x0100
_OVERLAY_BIT_POSITION = 0x0102


def remove_embedded_overlays(ds: Dataset) -> list[int]:
    """Take out every overlay group (60xx) that has no Overlay Data (60xx,3000) of its own, or an
    empty one (a value of length 0 holds no overlay: PS3.5 7.1.1), and
    the bit plane of Pixel Data it names when it is an embedded overlay; return the groups.

    Overlay Data is X in Table E.1-1 (PS3.15), yet an overlay may still live in the unused high
    bits of Pixel Data (Overlay Bits Allocated equal to Bits Allocated, Overlay Bit Position the
    bit; PS3.5 8.1.2, the form retired in 2004 that viewers such as dcmtk still render). Removing
    the group alone would leave the text in the pixel values; removing the data alone would leave
    a group that names no overlay. A group without data and without an embedded plane is no
    overlay either (PS3.3 C.9.2) and goes too: only its descriptions and labels were left.
    Raises Withheld when the plane overlaps the stored bits, or the pixel data is
    compressed or of a size whose bits cannot be addressed."""
    by_group: dict[int, list[int]] = {}
    for found in ds.keys():  # one pass: most objects have no overlay group at all
        if found.group in _OVERLAY_GROUPS:
            by_group.setdefault(found.group, []).append(int(found))
    removed: list[int] = []
    for group, tags in sorted(by_group.items()):
        if _has_overlay_data(ds, group):
            continue
        allocated = _int(ds, group << 16 | _OVERLAY_BITS_ALLOCATED, 1)
        if allocated > 1 and "PixelData" in ds:
            _clear_bit_plane(ds, _int(ds, group << 16 | _OVERLAY_BIT_POSITION, 0))
        for tag in tags:
            del ds[tag]
        removed.append(group)
    return removed


def _has_overlay_data(ds: Dataset, group: int) -> bool:
    """True if the group's Overlay Data (60xx,3000) is present with a value: an empty one leaves
    the overlay, if any, where Overlay Bits Allocated and Bit Position put it (in Pixel Data)."""
    elem = ds.get_item(group << 16 | _OVERLAY_DATA)  # raw: the length alone answers, nothing decoded
    if elem is None:
        return False
    return bool(elem.length if isinstance(elem, RawDataElement) else elem.value)


def _int(ds: Dataset, tag: int, default: int) -> int:
    try:
        value = ds[tag].value
        return int(value[0] if isinstance(value, list | tuple) else value)
    except (KeyError, TypeError, ValueError, IndexError):
        return default


def _clear_bit_plane(ds: Dataset, position: int) -> None:
    """Clear bit ``position`` of every native pixel value (PS3.5 8.1.1: values of Bits Allocated
    bits, in the transfer syntax's byte order), leaving the stored bits untouched."""
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax.is_compressed:
        raise Withheld(f"an embedded overlay in compressed pixel data ({syntax.name}) cannot be removed")
    bits, stored, high = _int(ds, 0x00280100, 0), _int(ds, 0x00280101, 0), _int(ds, 0x00280102, -1)
    if bits not in (8, 16, 32) or not 0 <= position < bits:
        raise Withheld(f"an embedded overlay at bit {position} of {bits}-bit pixels cannot be removed")
    if high - stored < position <= high:
        raise Withheld(f"an embedded overlay at bit {position} lies in the stored bits "
                                     f"{high - stored + 1}-{high}: removing it would change the image")
    size = bits // 8
    index = position // 8 if syntax.is_little_endian else size - 1 - position // 8
    table = bytes(b & ~(1 << position % 8) & 0xFF for b in range(256))
    data = bytearray(ds.PixelData)
    data[index::size] = bytes(data[index::size]).translate(table)
    ds.PixelData = bytes(data)


#: Transfer syntaxes whose frames are JPEG (ITU-T T.81) or JPEG-LS (ITU-T T.87) codestreams:
#: Baseline, Extended, Lossless and Lossless SV1, JPEG-LS Lossless and Near-Lossless (PS3.5 A.4).
_JPEG_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
})
#: Transfer syntaxes whose frames are JPEG 2000 codestreams (ITU-T T.800 Annex A): JPEG 2000
#: Lossless and lossy, Part 2 multi-component, and High-Throughput JPEG 2000 (PS3.5 A.4.4, A.4.11).
_J2K_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.92",
    "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
})
#: Marker segments that hold text and no part of the image: COM (T.81 B.2.4.5, any text an encoder
#: or a device writes) and APP1 and APP13 (Exif and XMP, IPTC: names, dates, serial numbers). The
#: other APPn stay: APP0 (JFIF), APP2 (ICC), APP14 (Adobe colour transform) and APP8 (JPEG-LS
#: colour transform) change how the image decodes.
_TEXT_MARKERS = frozenset({0xFE, 0xE1, 0xED})
#: Markers without a length field (T.81 B.1.1.3): TEM, RST0-RST7, SOI, EOI.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})


def remove_jpeg_text(ds: Dataset) -> int:
    """Remove the text segments (_TEXT_MARKERS) from the header of every JPEG frame of ``ds``,
    before the Start of Scan; return how many went. Decoding is unchanged. A comment such as
    "Patient Quixote^Zebulon PID77341" in a CT's JPEG stream went out as it came: Pixel Data is
    no attribute of Table E.1-1, and its codestream was never read. The frames are encapsulated
    anew (PS3.5 A.4, one fragment per frame, a Basic Offset Table if the input had one) only when
    something was removed; an Extended Offset Table (7FE0,0001-0002) would then be wrong and goes."""
    from pydicom.encaps import encapsulate, generate_frames

    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if syntax not in _JPEG_SYNTAXES | _J2K_SYNTAXES or "PixelData" not in ds:
        return 0
    strip = _without_text_segments if syntax in _JPEG_SYNTAXES else _without_j2k_text
    data = ds.PixelData
    frames = list(generate_frames(data, number_of_frames=_int(ds, 0x00280008, 1)))
    removed = 0
    cleaned = []
    for frame in frames:
        kept, count = strip(frame)
        cleaned.append(kept)
        removed += count
    if removed:
        has_bot = len(data) >= 8 and int.from_bytes(data[4:8], "little") > 0
        ds.PixelData = encapsulate(cleaned, has_bot=has_bot)
        ds["PixelData"].is_undefined_length = True
        for tag in (0x7FE00001, 0x7FE00002):  # Extended Offset Table and its Lengths
            if tag in ds:
                del ds[tag]
    return removed


def _without_text_segments(frame: bytes) -> tuple[bytes, int]:
    """``frame`` without its text marker segments up to Start of Scan (0xFFDA), and how many went;
    unchanged (0) when it does not begin as a JPEG codestream (SOI) or a length runs past its end."""
    if not frame.startswith(b"\xff\xd8"):
        return frame, 0
    out, pos, removed = [frame[:2]], 2, 0
    while pos + 1 < len(frame):
        if frame[pos] != 0xFF:
            return frame, 0
        marker = frame[pos + 1]
        if marker == 0xFF:  # a fill byte before a marker (T.81 B.1.1.2)
            out.append(frame[pos:pos + 1])
            pos += 1
            continue
        if marker == 0xDA or marker == 0xD9:  # Start of Scan (entropy-coded data follows), EOI
            break
        if marker in _STANDALONE:
            out.append(frame[pos:pos + 2])
            pos += 2
            continue
        if pos + 4 > len(frame):
            return frame, 0
        end = pos + 2 + int.from_bytes(frame[pos + 2:pos + 4], "big")
        if end > len(frame):
            return frame, 0
        if marker in _TEXT_MARKERS:
            removed += 1
        else:
            out.append(frame[pos:end])
        pos = end
    out.append(frame[pos:])
    return b"".join(out), removed


def _without_j2k_text(frame: bytes) -> tuple[bytes, int]:
    """A JPEG 2000 frame without its text: a bare codestream's COM segments; a JP2 file's text
    boxes (jp2.py) and its codestream's COM segments. Raises Withheld for a JP2 file whose box
    structure cannot be followed."""
    from pacsguard.deid.jp2 import SIGNATURE, without_text_boxes

    if frame.startswith(SIGNATURE):
        return without_text_boxes(frame, _without_j2k_comments)
    return _without_j2k_comments(frame)


#: JPEG 2000 markers (ITU-T T.800 A.2-A.4): Start of Codestream, Start of Tile-part, Start of Data,
#: End of Codestream, and COM (A.9.2: "unstructured data", any text an encoder or device writes).
_J2K_SOC, _J2K_SOT, _J2K_SOD, _J2K_EOC, _J2K_COM = 0xFF4F, 0xFF90, 0xFF93, 0xFFD9, 0xFF64


def _without_j2k_comments(frame: bytes) -> tuple[bytes, int]:
    """``frame`` without the text of its COM segments, and how many there were. Every COM goes, not
    only those that do not name an encoder: a COM plays no part in decoding (T.800 A.9.2), and
    which text is "only" an encoder name cannot be told safely. Those of the main header (SOC to
    the first SOT) are removed: no length counts them. Those of a tile-part header are kept with
    their text overwritten by spaces (Rcom 1, Latin text), as the tile-part's Psot and any TLM
    marker count their bytes. Unchanged (0) when ``frame`` is not a codestream (a JP2 file is
    opened by _without_j2k_text) or a length runs past its end."""
    if not frame.startswith(b"\xff\x4f"):
        return frame, 0
    out, pos, removed = [frame[:2]], 2, 0
    while True:  # the main header: marker segments, each with its length (T.800 A.1.3)
        if pos + 4 > len(frame) or frame[pos] != 0xFF:
            return frame, 0
        marker = int.from_bytes(frame[pos:pos + 2], "big")
        if marker in (_J2K_SOT, _J2K_EOC):
            break
        end = pos + 2 + int.from_bytes(frame[pos + 2:pos + 4], "big")
        if end > len(frame):
            return frame, 0
        if marker == _J2K_COM:
            removed += 1
        else:
            out.append(frame[pos:end])
        pos = end
    body = bytearray(frame[pos:])
    at = 0
    while at + 12 <= len(body) and int.from_bytes(body[at:at + 2], "big") == _J2K_SOT:
        psot = int.from_bytes(body[at + 6:at + 10], "big")  # 0: the tile-part runs to EOC
        tile_end = at + psot if psot else len(body)
        if tile_end > len(body) or psot and psot < 14:
            return frame, 0
        pos = at + 2 + int.from_bytes(body[at + 2:at + 4], "big")
        while pos + 4 <= tile_end:  # the tile-part header, up to SOD
            marker = int.from_bytes(body[pos:pos + 2], "big")
            if marker == _J2K_SOD:
                break
            end = pos + 2 + int.from_bytes(body[pos + 2:pos + 4], "big")
            if body[pos] != 0xFF or end > tile_end:
                return frame, 0
            if marker == _J2K_COM and end >= pos + 6:
                body[pos + 4:end] = b"\x00\x01" + b" " * (end - pos - 6)
                removed += 1
            pos = end
        if not psot:
            break
        at = tile_end
    out.append(bytes(body))
    return b"".join(out), removed

