"""Compressed pixel data decoded for the Clean Pixel Data checks (PS3.15 E.3.1), and masked frames
written back uncompressed.

An encapsulated image (PS3.5 A.4: JPEG, JPEG-LS, JPEG 2000, RLE) is decoded frame by frame with
pydicom's pixel handlers (Pillow, pylibjpeg with libjpeg and OpenJPEG; RLE is pydicom's own), so
OCR and the region masks see what a viewer shows. When nothing is masked the object keeps its
compressed frames as they came. When a region is blanked the frames cannot be recompressed
without a second loss, so every frame goes out in Explicit VR Little Endian (PS3.5 A.2) with the
Image Pixel attributes of the decoded form (PS3.3 C.7.6.3); an image that was lossy stays marked
so (Lossy Image Compression "01", its method and ratio, PS3.3 C.7.6.1.1.5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from pacsguard.deid.engine import Withheld

#: Transfer syntaxes whose frames are always lossy (PS3.5 A.4.1): JPEG Baseline and Extended
#: (ITU-T T.81 DCT processes), with the method named as PS3.3 C.7.6.1.1.5.1 names it.
_ALWAYS_LOSSY = {"1.2.840.10008.1.2.4.50": "ISO_10918_1", "1.2.840.10008.1.2.4.51": "ISO_10918_1"}
_MIB = 1 << 20


@dataclass(slots=True)
class Decoded:
    """Every frame of an image, frames first, as the decoder gave them (colour by pixel)."""

    frames: Any  # numpy array: frames x rows x columns (x samples)
    photometric: str  # the Photometric Interpretation of the decoded values (RGB for YBR JPEG)
    compressed_size: int  # bytes of the encapsulated Pixel Data, for the compression ratio


def decoded_size(ds: Dataset) -> int:
    """Bytes the decoded frames take: Frames x Rows x Columns x Samples x bytes per sample."""
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        per_sample = (int(ds.BitsAllocated) + 7) // 8
        return frames * int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) * per_sample
    except (AttributeError, TypeError, ValueError):
        raise Withheld("compressed pixel data without a usable Rows, Columns, Bits Allocated or Number "
                       "of Frames cannot be decoded to be checked") from None


def decode(ds: Dataset, limit_mib: int) -> Decoded:
    """Decode every frame of ``ds``'s encapsulated Pixel Data; raises Withheld, naming the transfer
    syntax, when no installed handler decodes it, and naming the sizes when the decoded frames
    would take more than ``limit_mib`` MiB (pixels.max_decoded_mib): a cine loop of thousands of
    frames would otherwise take the gateway's memory."""
    import numpy as np
    from pydicom.pixels.decoders.base import get_decoder

    syntax = UID(str(ds.file_meta.TransferSyntaxUID))
    size = decoded_size(ds)
    if size > limit_mib * _MIB:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        raise Withheld(f"{frames} frame(s) of {ds.Rows} x {ds.Columns} decode to {-(-size // _MIB)} MiB, more "
                       f"than pixels.max_decoded_mib ({limit_mib} MiB) allows: {syntax.name} pixels not checked")
    try:
        decoder = get_decoder(syntax)
        stack: Any = None
        photometric = str(ds.get("PhotometricInterpretation", ""))
        index = 0
        for frame, image_pixel in decoder.iter_array(ds, as_rgb=True):
            if stack is None:  # one array for every frame: no list of copies besides it
                stack = np.empty((int(ds.get("NumberOfFrames", 1) or 1), *frame.shape), dtype=frame.dtype)
            stack[index] = frame
            index += 1
            photometric = str(image_pixel.get("photometric_interpretation", photometric))
    except Exception as exc:  # no plugin, a damaged codestream: pixels not checked never leave
        raise Withheld(f"{syntax.name} ({syntax}) pixel data cannot be decoded to be checked for "
                       f"burned-in text: {_first_line(exc)}") from None
    if stack is None or index != stack.shape[0]:
        raise Withheld(f"{syntax.name} ({syntax}) pixel data holds {index} frame(s), Number of Frames says "
                       f"{int(ds.get('NumberOfFrames', 1) or 1)}: not checked")
    return Decoded(stack, photometric, len(ds.PixelData))


def _first_line(exc: Exception) -> str:
    """The handler's message on one line: pydicom puts each plugin's failure on a line of its own
    after a heading ending in a colon."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        lines = lines[1:]
    return f"{type(exc).__name__}: {'; '.join(lines)[:240]}" if lines else type(exc).__name__


def write_native(ds: Dataset, decoded: Decoded, data: bytes) -> None:
    """Put the masked frames ``data`` (native bytes, PS3.5 8.1.1) in ``ds`` in place of its
    encapsulated Pixel Data and say so: Transfer Syntax Explicit VR Little Endian, the decoded
    Photometric Interpretation, colour by pixel, no Extended Offset Table (PS3.5 A.4 only), and
    Lossy Image Compression kept "01" with its method and ratio when the source was lossy."""
    syntax = str(ds.file_meta.TransferSyntaxUID)
    _keep_lossy(ds, syntax, decoded)
    bits = int(ds.BitsAllocated)
    ds.add_new(0x7FE00010, "OB" if bits <= 8 else "OW", data + b"\0" * (len(data) & 1))
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PhotometricInterpretation = decoded.photometric
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        ds.PlanarConfiguration = 0
    for tag in (0x7FE00001, 0x7FE00002):  # Extended Offset Table and its Lengths describe fragments
        if tag in ds:
            del ds[tag]


def _keep_lossy(ds: Dataset, syntax: str, decoded: Decoded) -> None:
    """PS3.3 C.7.6.1.1.5: once lossy, always lossy. JPEG Baseline and Extended always are; other
    syntaxes (JPEG-LS near-lossless, JPEG 2000) are taken at the object's own word."""
    if str(ds.get("LossyImageCompression", "")) != "01" and syntax not in _ALWAYS_LOSSY:
        return
    ds.LossyImageCompression = "01"
    method = _ALWAYS_LOSSY.get(syntax)
    if "LossyImageCompressionMethod" not in ds and method:
        ds.LossyImageCompressionMethod = method
    if "LossyImageCompressionRatio" not in ds and "LossyImageCompressionMethod" in ds and decoded.compressed_size:
        ratio = decoded.frames.nbytes / decoded.compressed_size
        ds.LossyImageCompressionRatio = f"{ratio:.2f}"[:16]
