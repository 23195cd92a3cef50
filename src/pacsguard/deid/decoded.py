"""Compressed pixel data decoded for the Clean Pixel Data checks (PS3.15 E.3.1), and masked frames
written back uncompressed.

An encapsulated image (PS3.5 A.4: JPEG, JPEG-LS, JPEG 2000, RLE) is decoded frame by frame with
pydicom's pixel handlers (Pillow, pylibjpeg with libjpeg and OpenJPEG; RLE is pydicom's own), so
OCR and the region masks see what a viewer shows. When nothing is masked the object keeps its
compressed frames as they came. When a region is blanked the frames cannot be recompressed
without a second loss, so every frame goes out in Explicit VR Little Endian (PS3.5 A.2) with the
Image Pixel attributes of the decoded form (PS3.3 C.7.6.3); an image that was lossy stays marked
so (Lossy Image Compression "01", its method and ratio, PS3.3 C.7.6.1.1.5), told from the transfer
syntax or, for JPEG-LS Near-Lossless and JPEG 2000, from the codestream of every frame (lossy.py).
12-bit JPEG Extended frames no pydicom plugin decodes are decoded by GDCM (python-gdcm) directly,
in a child process (gdcm_child.py) whose standard error is read here: IJG libjpeg inside GDCM
prints its warnings there, and a frame that crashes GDCM ends the child, not the caller."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID, ExplicitVRLittleEndian

from pacsguard.deid.engine import Withheld
from pacsguard.deid.lossy import ALWAYS_LOSSY, MAY_BE_LOSSY, frames_loss

_MIB = 1 << 20


@dataclass(slots=True)
class Decoded:
    """Every frame of an image, frames first, as the decoder gave them (colour by pixel)."""

    frames: Any  # numpy array: frames x rows x columns (x samples)
    photometric: str  # the Photometric Interpretation of the decoded values (RGB for YBR JPEG)
    compressed_size: int  # bytes of the encapsulated Pixel Data, for the compression ratio
    note: str = ""  # for the report: "; ..." when the decoder had something to say (GDCM's warnings)


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
    note = ""
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
        (stack, note), photometric = _gdcm_jpeg_12(ds, failed[:480]), str(ds.PhotometricInterpretation)
        index = stack.shape[0]
    if stack is None or index != stack.shape[0]:
        raise Withheld(f"{syntax.name} ({syntax}) pixel data holds {index} frame(s), Number of Frames says "
                       f"{int(ds.get('NumberOfFrames', 1) or 1)}: not checked")
    return Decoded(stack, photometric, len(ds.PixelData), note)


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


def _gdcm_jpeg_12(ds: Dataset, first_failure: str) -> tuple[Any, str]:
    """Every frame of a 12-bit JPEG Extended monochrome image decoded by GDCM (python-gdcm) in a
    child process (gdcm_child.py), frames first, as 16-bit values (PS3.5 8.2.1: Bits Allocated
    16), signed ones sign-extended from Bits Stored (PS3.3 C.7.6.3.1.1: two's complement); and a
    note for the report naming what GDCM's JPEG decoder warned about. Raises Withheld, naming
    what is wrong, when GDCM is not installed, the image is not monochrome, or a frame does not
    decode."""
    import numpy as np
    from pydicom.encaps import generate_frames

    what = "JPEG Extended (1.2.840.10008.1.2.4.51) 12-bit pixel data cannot be decoded to be checked for burned-in text"
    if not _installed("gdcm"):
        raise Withheld(f"{what}: {first_failure}; GDCM (python-gdcm) is not installed")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise Withheld(f"{what}: GDCM is used for monochrome images only, this one is {photometric}")
    rows, columns, count = int(ds.Rows), int(ds.Columns), int(ds.get("NumberOfFrames", 1) or 1)
    frames: list[bytes] = []
    for frame in generate_frames(ds.PixelData, number_of_frames=count):
        if len(frames) >= count:
            raise Withheld(f"{what}: the pixel data holds more frames than Number of Frames ({count})")
        frames.append(bytes(frame))
    if len(frames) != count:
        raise Withheld(f"{what}: the pixel data holds {len(frames)} frame(s), Number of Frames says {count}")
    stored, signed = int(ds.BitsStored), int(ds.get("PixelRepresentation", 0) or 0) == 1
    header = {"rows": rows, "columns": columns, "bits_stored": stored, "signed": signed, "photometric": photometric}
    decoded, said = _run_gdcm(what, header, frames)
    stack = np.empty((count, rows, columns), dtype="<i2" if signed else "<u2")
    for index, data in enumerate(decoded):
        if len(data) != rows * columns * 2:
            raise Withheld(f"{what}: GDCM decoded frame {index + 1} to {len(data)} bytes, not {rows * columns * 2}")
        stack[index] = _stored_values(np.frombuffer(data, dtype="<u2"), stored, signed).reshape(rows, columns)
    warned = [line for line in said if not _NEGOTIATION.search(line)]
    note = f"; decoded by GDCM, whose JPEG decoder warned: {'; '.join(warned)[:240]}" if warned else ""
    return stack, note


#: How long GDCM may take for every frame of one object (the decoded frames are bounded by
#: pixels.max_decoded_mib): a frame crafted to make the decoder loop must not hold a worker.
GDCM_SECONDS = 120
#: What GDCM's JPEG codec makes libjpeg print while it finds the codec of the frame's precision
#: (it starts from Bits Allocated, 16): no news about the image.
_NEGOTIATION = re.compile(r"^Unsupported JPEG data precision \d+$")


def _installed(name: str) -> bool:
    from importlib.util import find_spec

    try:
        return find_spec(name) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules: not usable
        return False


class _Stopped(Exception):
    """GDCM's child gave no answer for a frame: what happened, in words."""


def _run_gdcm(what: str, header: dict[str, Any], frames: list[bytes]) -> tuple[list[bytes], list[str]]:
    """The frames decoded one by one by gdcm_child.py, and the distinct lines GDCM and its libjpeg
    printed (their standard error goes to a file read here, so none reaches the terminal or the
    gateway's log). Raises Withheld naming the frame, and what GDCM said, when one fails."""
    script = Path(__file__).with_name("gdcm_child.py")
    deadline = time.monotonic() + GDCM_SECONDS
    decoded: list[bytes] = []
    with tempfile.TemporaryFile() as printed:
        try:
            child = subprocess.Popen([sys.executable, "-I", str(script)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=printed)
        except OSError as exc:
            raise Withheld(f"{what}: GDCM could not be started: {exc.strerror or exc}") from None
        failure = ""
        try:
            _send(child, json.dumps(header).encode() + b"\n")
            for frame in frames:
                decoded.append(_gdcm_frame(child, frame, deadline))
            _send(child, b"", close=True)
            child.wait(max(deadline - time.monotonic(), 0.1))
        except _Stopped as exc:
            failure = str(exc)
        except (OSError, subprocess.TimeoutExpired):  # a pipe closed by a child that died: named below
            failure = "no answer"
        finally:
            if child.poll() is None:
                child.kill()
            child.wait()
            _close(child)
        printed.seek(0)
        said = list(dict.fromkeys(_printable(line) for line in printed.read(64 * 1024).splitlines() if line.strip()))
    if not failure and child.returncode == 0:
        return decoded, said
    told = [line for line in said if not _NEGOTIATION.search(line)]
    raise Withheld(f"{what}: {_gdcm_failure(child.returncode, failure, len(decoded) + 1)}"
                   + (f" ({'; '.join(told)})"[:240] if told else ""))


def _close(child: subprocess.Popen[bytes]) -> None:
    """Close the pipes to an ended child; what its stdin still buffered has nowhere to go."""
    for pipe in (child.stdin, child.stdout):
        if pipe is not None and not pipe.closed:
            try:
                pipe.close()
            except OSError:  # BrokenPipeError: the child is gone
                pass


def _gdcm_failure(returncode: int, failure: str, frame: int) -> str:
    """Why GDCM's child did not decode frame ``frame``, in words."""
    if returncode < 0 and failure in ("", "no answer"):
        return f"GDCM stopped on signal {_signal_name(-returncode)} while decoding frame {frame}"
    if failure.startswith("GDCM"):
        return failure
    return f"GDCM could not decode frame {frame}: {failure or f'it ended with status {returncode}'}"


def _gdcm_frame(child: subprocess.Popen[bytes], frame: bytes, deadline: float) -> bytes:
    """One frame through the GDCM child: its codestream sent, its pixels read back. Raises
    _Stopped when GDCM reports a failure, the child ends, or the deadline passes."""
    _send(child, len(frame).to_bytes(8, "little") + frame)
    head = _receive(child, 9, deadline)
    payload = _receive(child, int.from_bytes(head[1:], "little"), deadline)
    if head[0]:
        raise _Stopped(_printable(payload))
    return payload


def _send(child: subprocess.Popen[bytes], data: bytes, *, close: bool = False) -> None:
    """Write ``data`` to the child (and close its input). A child that has left is not an error
    here: the answer it may have written first, or its end, says why when it is read."""
    if child.stdin is None:
        raise _Stopped("no answer")
    try:
        if data:
            child.stdin.write(data)
            child.stdin.flush()
        if close:
            child.stdin.close()
    except BrokenPipeError:
        pass


def _receive(child: subprocess.Popen[bytes], size: int, deadline: float) -> bytes:
    """Exactly ``size`` bytes of the child's answer, waiting no later than ``deadline``; read
    from the descriptor itself, as select() knows nothing of a buffered reader's buffer."""
    import select

    if child.stdout is None:
        raise _Stopped("no answer")
    fd, parts, left = child.stdout.fileno(), [], size
    while left:
        wait = deadline - time.monotonic()
        if wait <= 0 or not select.select([fd], [], [], wait)[0]:
            raise _Stopped(f"GDCM took more than {GDCM_SECONDS} s")
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise _Stopped("no answer")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _printable(line: bytes) -> str:
    """A line a C library printed, as one line of text with nothing a terminal would act on."""
    text = line.decode("utf-8", "replace")
    return "".join(c if c.isprintable() else " " for c in text).strip()[:240]


def _signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _stored_values(values: Any, stored: int, signed: bool) -> Any:
    """The Bits Stored low bits of each 16-bit value; signed ones sign-extended (two's
    complement), whatever GDCM left in the bits above High Bit."""
    import numpy as np

    low = values & ((1 << stored) - 1)
    if not signed:
        return low
    wide = low.astype(np.int32)
    return np.where(wide >= 1 << (stored - 1), wide - (1 << stored), wide).astype("<i2")


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
    JPEG 2000 lose when the codestream of any frame says so (lossy.py: headers only, frames after
    one that proves a loss are not read): a multi-frame object may hold frames of different
    encoders or settings. When no frame proves a loss and not every frame proves none (JPEG
    2000's 5-3 filter may still have dropped coding passes), the image is taken as lossy unless
    the object says which it is."""
    if syntax in ALWAYS_LOSSY:
        return True
    if syntax not in MAY_BE_LOSSY:
        return False
    found = frames_loss(syntax, _codestreams(ds))
    return found if found is not None else declared not in ("00", "01")


def _codestreams(ds: Dataset) -> Iterator[bytes]:
    """Each frame's codestream (PS3.5 A.4) in turn; an empty one when the fragments cannot be
    read further (it proves nothing)."""
    from pydicom.encaps import generate_frames

    try:
        for frame in generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1)):
            yield bytes(frame)
    except (ValueError, TypeError, KeyError, AttributeError):
        yield b""


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
