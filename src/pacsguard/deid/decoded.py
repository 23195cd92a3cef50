"""Compressed pixel data decoded for the Clean Pixel Data checks (PS3.15 E.3.1), and masked frames
written back uncompressed.

An encapsulated image (PS3.5 A.4: JPEG, JPEG-LS, JPEG 2000, RLE) is decoded frame by frame with
pydicom's pixel handlers (Pillow, pylibjpeg with libjpeg and OpenJPEG; RLE is pydicom's own), so
OCR and the region masks see what a viewer shows. When nothing is masked the object keeps its
compressed frames as they came. When a region is blanked the frames cannot be recompressed
without a second loss, so every frame goes out in Explicit VR Little Endian (PS3.5 A.2) with the
Image Pixel attributes of the decoded form (PS3.3 C.7.6.3); an image that was lossy stays marked
so (Lossy Image Compression "01", its method and ratio, PS3.3 C.7.6.1.1.5), told from the transfer
syntax or, for JPEG-LS Near-Lossless and JPEG 2000, from the codestream (lossy.py). 12-bit JPEG
Extended frames no pydicom plugin decodes are decoded by GDCM (python-gdcm) directly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID, ExplicitVRLittleEndian

from pacsguard.deid.engine import Withheld
from pacsguard.deid.lossy import ALWAYS_LOSSY, MAY_BE_LOSSY, codestream_loss

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
    from pydicom.pixels.decoders.base import get_decoder

    syntax = UID(str(ds.file_meta.TransferSyntaxUID))
    size = decoded_size(ds)
    if size > limit_mib * _MIB:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        raise Withheld(f"{frames} frame(s) of {ds.Rows} x {ds.Columns} decode to {-(-size // _MIB)} MiB, more "
                       f"than pixels.max_decoded_mib ({limit_mib} MiB) allows: {syntax.name} pixels not checked")
    failures: list[str] = []
    try:
        plugins = _plugins(get_decoder(syntax).available_plugins)
    except NotImplementedError:  # no decoder for this syntax at all (the video ones)
        plugins = []
    for plugin in plugins:
        try:
            stack, photometric, index = _frames(get_decoder(syntax), ds, plugin)
            break
        except Exception as exc:  # noqa: BLE001 - a damaged codestream: the next decoder, or withheld
            failures.append(f"{plugin}: {_first_line(exc).replace(f'{plugin}: ', '', 1)}")
    else:  # no plugin, or none decoded it: pixels not checked never leave
        failed = "; ".join(failures) or "no installed decoder handles it"
        if not _is_jpeg_12(ds, syntax):
            raise Withheld(f"{syntax.name} ({syntax}) pixel data cannot be decoded to be checked for "
                           f"burned-in text: {failed[:480]}")
        stack, photometric = _gdcm_jpeg_12(ds, failed[:480]), str(ds.PhotometricInterpretation)
        index = stack.shape[0]
    if stack is None or index != stack.shape[0]:
        raise Withheld(f"{syntax.name} ({syntax}) pixel data holds {index} frame(s), Number of Frames says "
                       f"{int(ds.get('NumberOfFrames', 1) or 1)}: not checked")
    return Decoded(stack, photometric, len(ds.PixelData))


#: pydicom's decoding plugins in the order they are tried, each on its own: pylibjpeg (libjpeg,
#: OpenJPEG, its RLE) and Pillow first, then pydicom's own RLE, and GDCM only when those fail.
#: Left to itself pydicom tries GDCM first for every JPEG, JPEG-LS and JPEG 2000 frame once
#: python-gdcm is installed (for 12-bit JPEG Extended, below), which puts one more C++ decoder in
#: front of every image a sender crafted; a plugin not named here is not used.
PLUGIN_ORDER = ("pylibjpeg", "pillow", "pydicom", "gdcm")


def _plugins(available: tuple[str, ...] | list[str]) -> list[str]:
    """The installed plugins of a transfer syntax's decoder, in PLUGIN_ORDER."""
    return [name for name in PLUGIN_ORDER if name in available]


def _frames(decoder: Any, ds: Dataset, plugin: str) -> tuple[Any, str, int]:
    """Every frame of ``ds`` decoded by ``plugin`` alone (pydicom 3 Decoder.iter_array), frames
    first, with the decoded Photometric Interpretation and the number of frames decoded."""
    import numpy as np

    stack: Any = None
    photometric = str(ds.get("PhotometricInterpretation", ""))
    index = 0
    for frame, image_pixel in decoder.iter_array(ds, decoding_plugin=plugin, as_rgb=True):
        if stack is None:  # one array for every frame: no list of copies besides it
            stack = np.empty((int(ds.get("NumberOfFrames", 1) or 1), *frame.shape), dtype=frame.dtype)
        stack[index] = frame
        index += 1
        photometric = str(image_pixel.get("photometric_interpretation", photometric))
    return stack, photometric, index


def _is_jpeg_12(ds: Dataset, syntax: str) -> bool:
    """JPEG Extended with more than 8 bits (T.81 Process 4, 12-bit DCT), which pydicom's plugins
    may all refuse: its GDCM plugin turns 12 bits down, Pillow decodes 8 bits only, and pylibjpeg's
    libjpeg refuses a sequential scan whose Se (T.81 B.2.3) is not 63, as older encoders wrote it
    (pydicom's JPEG-lossy.dcm). GDCM itself decodes them, as IJG libjpeg does."""
    return syntax == "1.2.840.10008.1.2.4.51" and int(ds.get("BitsStored", 8) or 8) > 8


def _gdcm_jpeg_12(ds: Dataset, first_failure: str) -> Any:
    """Every frame of a 12-bit JPEG Extended unsigned monochrome image decoded by GDCM
    (python-gdcm), frames first, as 16-bit values (PS3.5 8.2.1: Bits Allocated 16). Raises
    Withheld, naming what is missing, when GDCM is not installed, the image is not unsigned
    monochrome or a frame does not decode."""
    import numpy as np
    from pydicom.encaps import generate_frames

    what = "JPEG Extended (1.2.840.10008.1.2.4.51) 12-bit pixel data cannot be decoded to be checked for burned-in text"
    try:
        import gdcm
    except ImportError:
        raise Withheld(f"{what}: {first_failure}; GDCM (python-gdcm) is not installed") from None
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise Withheld(f"{what}: GDCM is used for monochrome images only, this one is {photometric}")
    if int(ds.get("PixelRepresentation", 0) or 0) != 0:  # how GDCM gives signed samples back is untested
        raise Withheld(f"{what}: GDCM is used for unsigned pixels only (Pixel Representation 0)")
    rows, columns, count = int(ds.Rows), int(ds.Columns), int(ds.get("NumberOfFrames", 1) or 1)
    stack = np.empty((count, rows, columns), dtype="<u2")
    done = 0
    for frame in generate_frames(ds.PixelData, number_of_frames=count):
        if done >= count:
            raise Withheld(f"{what}: the pixel data holds more frames than Number of Frames ({count})")
        try:
            data = _gdcm_frame(gdcm, bytes(frame), ds)
        except Exception as exc:  # GDCM's wrappers raise what SWIG gives them
            raise Withheld(f"{what}: GDCM could not decode frame {done + 1}: {_first_line(exc)}") from None
        if len(data) != rows * columns * 2:
            raise Withheld(f"{what}: GDCM decoded frame {done + 1} to {len(data)} bytes, not {rows * columns * 2}")
        stack[done] = np.frombuffer(data, dtype=stack.dtype).reshape(rows, columns)
        done += 1
    if done != count:
        raise Withheld(f"{what}: the pixel data holds {done} frame(s), Number of Frames says {count}")
    return stack


def _gdcm_frame(gdcm: Any, frame: bytes, ds: Dataset) -> bytes:
    """One frame through a gdcm.Image holding it as its only fragment; GDCM hands the pixels back
    as a str of surrogate-escaped bytes."""
    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(frame)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetValue(fragments.__ref__())
    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((int(ds.Columns), int(ds.Rows), 1))
    image.SetDataElement(element)
    kind = gdcm.PhotometricInterpretation.GetPIType(str(ds.PhotometricInterpretation))
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(kind))
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGExtendedProcess2_4))
    stored = int(ds.BitsStored)
    image.SetPixelFormat(gdcm.PixelFormat(1, 16, stored, stored - 1, 0))
    buffer = image.GetBuffer()
    return buffer.encode("utf-8", "surrogateescape") if isinstance(buffer, str) else b""


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
    """PS3.3 C.7.6.1.1.5: once lossy, always lossy. When this compression lost, Lossy Image
    Compression is "01" and its method and ratio are added after any earlier ones the object
    names (C.7.6.1.1.5.1, .2: one value per step); an object that said "01" keeps saying it."""
    declared = str(ds.get("LossyImageCompression", "")).strip()
    if _this_step_lossy(ds, syntax, declared):
        ds.LossyImageCompression = "01"
        _add_step(ds, ALWAYS_LOSSY.get(syntax) or MAY_BE_LOSSY.get(syntax), decoded)
    elif declared == "01":
        _add_step(ds, None, decoded)


def _this_step_lossy(ds: Dataset, syntax: str, declared: str) -> bool:
    """JPEG Baseline and Extended and the video syntaxes always lose; JPEG-LS Near-Lossless and
    JPEG 2000 lose when their first frame's codestream says so (lossy.py). A codestream that
    cannot tell (JPEG 2000's 5-3 filter may still have dropped coding passes) is taken as lossy
    unless the object says which it is."""
    if syntax in ALWAYS_LOSSY:
        return True
    if syntax not in MAY_BE_LOSSY:
        return False
    found = codestream_loss(syntax, _first_frame(ds))
    return found if found is not None else declared not in ("00", "01")


def _first_frame(ds: Dataset) -> bytes:
    """The first frame's codestream (PS3.5 A.4), empty when the fragments cannot be read."""
    from pydicom.encaps import generate_frames

    try:
        return bytes(next(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1))))
    except (StopIteration, ValueError, TypeError, KeyError, AttributeError):
        return b""


def _add_step(ds: Dataset, method: str | None, decoded: Decoded) -> None:
    """Name ``method`` (when the last method named is another one, or none is) and the ratio of
    this compression, decoded bytes over compressed bytes, when the ratios then fall one short."""
    methods = _values(ds, "LossyImageCompressionMethod")
    ratios = _values(ds, "LossyImageCompressionRatio")
    if method is not None and (not methods or methods[-1] != method):
        methods.append(method)
        ds.LossyImageCompressionMethod = methods if len(methods) > 1 else methods[0]
    if methods and len(ratios) == len(methods) - 1 and decoded.compressed_size:
        ratios.append(f"{decoded.frames.nbytes / decoded.compressed_size:.2f}"[:16])
        ds.LossyImageCompressionRatio = ratios if len(ratios) > 1 else ratios[0]


def _values(ds: Dataset, keyword: str) -> list[str]:
    """The values of a multi-valued string attribute (none when absent or empty)."""
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    return [str(v) for v in value] if isinstance(value, MultiValue | list) else [str(value)]
