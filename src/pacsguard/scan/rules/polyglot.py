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


def trailing(parsed: Parsed) -> tuple[int, bytes]:
    """Where the bytes after the data set start in the file, and those bytes ("" when none)."""
    if not parsed.dicom:
        return len(parsed.data), b""
    if parsed.inflated:
        start = parsed.compressed_end
        return start, bytes(parsed.data[start:])
    start = parsed.end
    return start, bytes(parsed.data[start:])


def check(parsed: Parsed) -> list[Finding]:
    start, tail = trailing(parsed)
    if not tail:
        return []
    stop = next((p.rule for p in reversed(parsed.problems) if p.offset is not None and p.offset >= start - 12), None)
    if stop is not None and stop not in GARBAGE_STOPS and not parsed.inflated:
        return []  # a cut or lying element: the structure rules report it
    if not tail.strip(b"\x00"):
        return [Finding("polyglot.zero-padding", Level.LOW, f"{len(tail):,} zero bytes after the data set", start,
                        REF, remedy="trailing")]
    hits = signatures.find(tail, limit=2)
    kind = signatures.identify(tail)
    if kind is None and hits:
        kind = hits[0].kind
    if kind is not None:
        return [Finding(f"polyglot.appended-{kind}", Level.HIGH,
                        f"{signatures.DESCRIPTIONS.get(kind, kind)} is appended after the data set "
                        f"({len(tail):,} bytes)", start, REF, remedy="trailing")]
    if len(tail) < 16:
        # e.g. a gzip trailer (CRC-32, size) some writers leave after a deflated data set
        return [Finding("polyglot.stray-bytes", Level.LOW, f"{len(tail)} stray bytes after the data set", start, REF,
                        remedy="trailing")]
    return [Finding("polyglot.trailing-data", Level.MEDIUM,
                    f"{len(tail):,} bytes after the data set that are not DICOM elements", start, REF,
                    remedy="trailing")]
