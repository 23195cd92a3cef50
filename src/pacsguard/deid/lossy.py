"""Whether a compressed image was compressed with loss, read from its codestream (PS3.3
C.7.6.1.1.5 Lossy Image Compression; PS3.5 8.2 and A.4).

Some transfer syntaxes are lossy by construction (the DCT processes of JPEG, the MPEG video
syntaxes); others may be lossless or lossy, and only the codestream tells:

- JPEG-LS Near-Lossless (PS3.5 A.4.3): the NEAR parameter of each Start of Scan (ITU-T T.87
  C.2.3) bounds the error of every sample; NEAR 0 is lossless.
- JPEG 2000 (PS3.5 A.4.4, Part 2 and High-Throughput: A.4.5, A.4.11): the wavelet of the COD and
  COC segments (ITU-T T.800 A.6.1, A.6.2; 0 is the irreversible 9-7 filter) and the quantization
  style of the QCD and QCC segments (A.6.4, A.6.5; other than "none" is scalar quantization)
  prove a loss. The reversible 5-3 filter without quantization proves nothing: an encoder may
  still have dropped coding passes to meet a rate (gdcmconv --j2k --lossy does exactly that), so
  such a codestream is "cannot tell" and the caller decides."""

from __future__ import annotations

import re
from collections.abc import Iterable

#: Syntaxes always lossy, with the Lossy Image Compression Method (PS3.3 C.7.6.1.1.5.1 defined terms).
ALWAYS_LOSSY = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.100": "ISO_13818_2",  # MPEG2 Main Profile / Main Level
    "1.2.840.10008.1.2.4.100.1": "ISO_13818_2",  # the same, fragmentable
    "1.2.840.10008.1.2.4.101": "ISO_13818_2",  # MPEG2 Main Profile / High Level
    "1.2.840.10008.1.2.4.101.1": "ISO_13818_2",
    **{f"1.2.840.10008.1.2.4.{n}": "ISO_14496_10" for n in ("102", "103", "104", "105", "106")},
    **{f"1.2.840.10008.1.2.4.{n}.1": "ISO_14496_10" for n in ("102", "103", "104", "105", "106")},
    "1.2.840.10008.1.2.4.107": "ISO_23008_2",  # HEVC/H.265 Main Profile
    "1.2.840.10008.1.2.4.108": "ISO_23008_2",  # HEVC/H.265 Main 10 Profile
}
#: Syntaxes that may be lossless or lossy, with the method named when they are lossy.
MAY_BE_LOSSY = {
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",  # JPEG-LS Lossy (Near-Lossless)
    "1.2.840.10008.1.2.4.91": "ISO_15444_1",  # JPEG 2000 Image Compression
    "1.2.840.10008.1.2.4.93": "ISO_15444_2",  # JPEG 2000 Part 2 Multi-component
    "1.2.840.10008.1.2.4.203": "ISO_15444_15",  # High-Throughput JPEG 2000
}

_SOS, _EOI = 0xDA, 0xD9
_SIZ, _COD, _COC, _QCD, _QCC, _SOT, _EOC = 0xFF51, 0xFF52, 0xFF53, 0xFF5C, 0xFF5D, 0xFF90, 0xFFD9


def codestream_loss(syntax: str, frame: bytes) -> bool | None:
    """True when ``frame`` (one frame's codestream) proves a lossy compression, False when it
    proves a lossless one, None when it cannot tell (or cannot be read)."""
    if syntax == "1.2.840.10008.1.2.4.81":
        return jpeg_ls_loss(frame)
    if syntax in MAY_BE_LOSSY:
        return j2k_loss(_codestream_of(frame))
    return None


def frames_loss(syntax: str, frames: Iterable[bytes]) -> bool | None:
    """The verdict of codestream_loss over every frame of one object: True as soon as a frame
    proves a loss (the frames after it are not read), False when every frame proves a lossless
    coding, None otherwise. Frames of one object may come from different encoders or settings
    (a JPEG-LS frame with NEAR 0 beside one with NEAR 3), so the first frame alone does not tell."""
    verdicts: set[bool | None] = set()
    for frame in frames:
        found = codestream_loss(syntax, frame)
        if found:
            return True
        verdicts.add(found)
    return False if verdicts == {False} else None


def jpeg_ls_loss(frame: bytes) -> bool | None:
    """NEAR of every scan (T.87 C.2.3: Ls, Ns, Ns x (Ci, Tmi), NEAR, ILV, Al|Ah): any NEAR above 0
    is a loss, all 0 is lossless. The marker segments are followed one by one; the coded data of
    a scan is passed over up to the next marker (T.87 A.1: an 0xFF in coded data is followed by a
    byte below 0x80, a marker's second byte is 0x80 or above)."""
    if not frame.startswith(b"\xff\xd8"):
        return None
    pos, nears = 2, []
    while pos + 4 <= len(frame):
        if frame[pos] != 0xFF:
            return None
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == _EOI:
            break
        if 0xD0 <= marker <= 0xD7:  # RSTn (T.87 C.1.2 with a restart interval): more coded data
            pos = _next_marker(frame, pos + 2)
            continue
        end = pos + 2 + int.from_bytes(frame[pos + 2:pos + 4], "big")
        if end > len(frame):
            return None
        if marker == _SOS:
            at = pos + 5 + 2 * frame[pos + 4]
            if at >= end:
                return None
            nears.append(frame[at])
            end = _next_marker(frame, end)
        pos = end
    if not nears:
        return None
    return max(nears) > 0


#: A marker in JPEG-LS coded data (T.87 A.1): 0xFF then a byte of 0x80 or above.
_MARKER = re.compile(rb"\xff[\x80-\xff]")


def _next_marker(frame: bytes, pos: int) -> int:
    """Where the marker after the coded data starting at ``pos`` begins (the end when none); the
    search runs in the regular expression engine, not byte by byte in Python, as every frame of
    an object is read."""
    found = _MARKER.search(frame, pos)
    return found.start() if found else len(frame)


def _codestream_of(frame: bytes) -> bytes:
    """The codestream of a JPEG 2000 frame: the frame itself, or the first Contiguous Codestream
    box of a frame wrapped as a JP2 file (jp2.py); empty when neither can be read."""
    from pacsguard.deid.jp2 import SIGNATURE, Malformed, boxes

    if not frame.startswith(SIGNATURE):
        return frame
    try:
        return next((content for kind, _, content in boxes(frame) if kind == b"jp2c"), b"")
    except Malformed:
        return b""


def j2k_loss(stream: bytes) -> bool | None:
    """True when a COD or COC segment of the main header or of a tile-part header names the 9-7
    irreversible wavelet (or a Part 2 kernel other than 5-3), or a QCD or QCC segment a scalar
    quantization; otherwise None (5-3 without quantization: lossless or truncated, T.800 J.10)."""
    if not stream.startswith(b"\xff\x4f"):
        return None
    csiz, pos, lossy = 0, 2, False
    while pos + 4 <= len(stream):  # the main header (T.800 A.1.3), each segment with its length
        marker = int.from_bytes(stream[pos:pos + 2], "big")
        if marker in (_SOT, _EOC):
            break
        end = pos + 2 + int.from_bytes(stream[pos + 2:pos + 4], "big")
        if stream[pos] != 0xFF or end > len(stream):
            return None
        if marker == _SIZ and end >= pos + 40:
            csiz = int.from_bytes(stream[pos + 38:pos + 40], "big")
        lossy = lossy or _segment_lossy(stream[pos:end], marker, csiz)
        pos = end
    while not lossy and pos + 12 <= len(stream) and int.from_bytes(stream[pos:pos + 2], "big") == _SOT:
        psot = int.from_bytes(stream[pos + 6:pos + 10], "big")
        tile_end = pos + psot if psot else len(stream)
        at = pos + 2 + int.from_bytes(stream[pos + 2:pos + 4], "big")
        while at + 4 <= min(tile_end, len(stream)):  # the tile-part header, up to SOD
            marker = int.from_bytes(stream[at:at + 2], "big")
            end = at + 2 + int.from_bytes(stream[at + 2:at + 4], "big")
            if stream[at] != 0xFF or marker == 0xFF93 or end > len(stream):
                break
            lossy = lossy or _segment_lossy(stream[at:end], marker, csiz)
            at = end
        if not psot or psot < 14:
            break
        pos = tile_end
    return True if lossy else None


def _segment_lossy(segment: bytes, marker: int, csiz: int) -> bool:
    """One COD, COC, QCD or QCC segment (from its marker) names a lossy coding. A component index
    takes two bytes when the image has more than 256 components (T.800 A.6.2, A.6.5)."""
    component = 2 if csiz > 256 else 1
    at = {_COD: 13, _COC: 4 + component + 5, _QCD: 4, _QCC: 4 + component}.get(marker)
    if at is None or at >= len(segment):
        return False
    if marker in (_COD, _COC):
        return segment[at] != 1  # 1: the 5-3 reversible filter; 0: 9-7; 2 and up: a Part 2 kernel
    return segment[at] & 0x1F != 0  # Sqcd/Sqcc: 0 no quantization, 1 and 2 scalar
