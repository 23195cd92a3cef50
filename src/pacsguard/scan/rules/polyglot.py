"""Polyglots: bytes after the data set (PS3.10 7.1 says the file ends with it), which another
program reads as its own format: an appended zip is a valid archive from its central directory at
the end, whatever precedes it."""

from __future__ import annotations

from pacsguard.scan import signatures
from pacsguard.scan.model import Finding, Level
from pacsguard.scan.part10 import Parsed

REF = "PS3.10 7.1"
#: Stops after which the rest of the file is not a cut element but something else.
GARBAGE_STOPS = frozenset({"structure.bad-vr", "structure.tag-order", "structure.bad-item",
                           "structure.stray-delimiter"})


#: Bytes of the tail copied to tell its format: any header's fields a check reads are in them.
HEAD = 64 * 1024
#: Zeros compared at a time (bytes.startswith is a memcmp in place, no copy of the tail).
_ZEROS = bytes(1 << 20)


def trailing(parsed: Parsed) -> int:
    """Where the bytes after the data set start in the file (``len(parsed.data)``: there are none).
    An offset, not the bytes: a tail may be most of a 2 GiB file, and copying it doubled memory."""
    if not parsed.dicom:
        return len(parsed.data)
    return min(parsed.compressed_end if parsed.inflated else parsed.end, len(parsed.data))


def zeros(data: bytes, start: int) -> bool:
    """True when ``data[start:]`` is all zero bytes, compared in place a MiB at a time."""
    return all(data.startswith(_ZEROS[:len(data) - at], at) for at in range(start, len(data), len(_ZEROS)))


def check(parsed: Parsed) -> list[Finding]:
    data = parsed.data
    start = trailing(parsed)
    size = len(data) - start
    if size <= 0:
        return []
    stop = next((p.rule for p in reversed(parsed.problems) if p.offset is not None and p.offset >= start - 12), None)
    if stop is not None and stop not in GARBAGE_STOPS and not parsed.inflated:
        return []  # a cut or lying element: the structure rules report it
    if zeros(data, start):
        return [Finding("polyglot.zero-padding", Level.LOW, f"{size:,} zero bytes after the data set", start,
                        REF, remedy="trailing")]
    kind = signatures.identify(bytes(data[start:start + HEAD]))
    if kind is None:
        # searched in place; a flood of magic numbers there is trailing data all the same
        kind = next((h.kind for h in signatures.find(data, start, limit=2) if h.kind != "flood"), None)
    if kind is not None:
        return [Finding(f"polyglot.appended-{kind}", Level.HIGH,
                        f"{signatures.DESCRIPTIONS.get(kind, kind)} is appended after the data set "
                        f"({size:,} bytes)", start, REF, remedy="trailing")]
    if size < 16:
        # e.g. a gzip trailer (CRC-32, size) some writers leave after a deflated data set
        return [Finding("polyglot.stray-bytes", Level.LOW, f"{size} stray bytes after the data set", start, REF,
                        remedy="trailing")]
    return [Finding("polyglot.trailing-data", Level.MEDIUM,
                    f"{size:,} bytes after the data set that are not DICOM elements", start, REF,
                    remedy="trailing")]
