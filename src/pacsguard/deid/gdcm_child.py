"""The GDCM decoder for 12-bit JPEG Extended frames (ITU-T T.81 Process 4; PS3.5 A.4.1, 8.2.1),
run as a child process of its own by decoded.py: ``python -I gdcm_child.py``.

GDCM's JPEG codec leaves IJG libjpeg's standard error manager in place, which prints its
warnings and errors straight to the process's standard error ("Invalid SOS parameters for
sequential JPEG", "Unsupported JPEG data precision 12" while GDCM looks for the codec of the
right precision); GDCM's own trace (gdcm.Trace) goes there too, and neither can be turned into
a message of the caller through python-gdcm. In a child the parent reads that output and names
what matters in its own words, and a frame that crashes the C++ decoder ends the child, not the
gateway. This file imports only the standard library and gdcm: it is run by path, with -I.

Standard input: one JSON line (rows, columns, bits_stored, signed, photometric), then each frame
as an 8-byte little-endian length and its codestream. Standard output: for each frame a status
byte (0 decoded, 1 failed), an 8-byte little-endian length, and the frame's pixels (16-bit
little-endian values, as GDCM gives them) or the failure in UTF-8; nothing after a failure."""

from __future__ import annotations

import json
import sys
from typing import Any, BinaryIO


def decode_frame(gdcm: Any, frame: bytes, header: dict[str, Any]) -> bytes:
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
    image.SetDimensions((int(header["columns"]), int(header["rows"]), 1))
    image.SetDataElement(element)
    kind = gdcm.PhotometricInterpretation.GetPIType(str(header["photometric"]))
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(kind))
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGExtendedProcess2_4))
    stored = int(header["bits_stored"])
    image.SetPixelFormat(gdcm.PixelFormat(1, 16, stored, stored - 1, 1 if header["signed"] else 0))
    buffer = image.GetBuffer()
    return buffer.encode("utf-8", "surrogateescape") if isinstance(buffer, str) else b""


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    data = stream.read(size)
    return data if len(data) == size else None


def _answer(out: BinaryIO, status: int, payload: bytes) -> None:
    out.write(bytes([status]) + len(payload).to_bytes(8, "little") + payload)
    out.flush()


def main() -> int:
    """Decode every frame on standard input; 0 when all decoded, 1 at the first that did not."""
    source, out = sys.stdin.buffer, sys.stdout.buffer
    try:
        import gdcm
    except ImportError as exc:  # installed, yet its library does not load: told, not a traceback
        _answer(out, 1, f"python-gdcm cannot be loaded: {exc}".encode("utf-8", "replace")[:480])
        return 1
    header = json.loads(source.readline())
    while (size := _read_exactly(source, 8)) is not None:
        frame = _read_exactly(source, int.from_bytes(size, "little"))
        if frame is None:
            _answer(out, 1, b"a frame was cut short on its way to the decoder")
            return 1
        try:
            pixels = decode_frame(gdcm, frame, header)
        except Exception as exc:  # noqa: BLE001 - SWIG raises what GDCM gives it: told to the parent
            _answer(out, 1, f"{type(exc).__name__}: {exc}".encode("utf-8", "replace")[:480])
            return 1
        expected = int(header["rows"]) * int(header["columns"]) * 2
        if len(pixels) != expected:  # GDCM gives an empty buffer for a frame it could not decode
            _answer(out, 1, f"it gave {len(pixels)} bytes of pixels, not {expected}".encode())
            return 1
        _answer(out, 0, pixels)
    return 0


if __name__ == "__main__":
    sys.exit(main())
