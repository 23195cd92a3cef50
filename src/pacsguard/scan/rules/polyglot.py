"""Polyglots: bytes after the data set (PS3.10 7.1 says the file ends with it), which another
program reads as its own format: an appended zip is a valid archive from its central directory at
the end, whatever precedes it. The same holds past wherever the reader's walk stopped: an element
whose length (PS3.5 7.1) runs 1 byte past the file or past its item (PS3.5 7.5) hides from every
DICOM reader what follows it, and from the element and value rules, while an archiver or a
loader finds its own format there all the same; so those bytes are searched as appended data is."""

from __future__ import annotations

import struct

from pacsguard.scan import signatures
from pacsguard.scan.model import Finding, Level
from pacsguard.scan.part10 import PIXEL_DATA, Parsed, Problem, tag_label
from pacsguard.scan.rules import guarded

REF = "PS3.10 7.1"
STOP_REF = "PS3.5 7.1, 7.5; PS3.10 7.1"
#: Stops after which the rest of the file is not a cut element but something else.
GARBAGE_STOPS = frozenset({"structure.bad-vr", "structure.not-elements", "structure.bad-item",
                           "structure.stray-delimiter"})


#: Bytes of the tail copied to tell its format: any header's fields a check reads are in them.
HEAD = 64 * 1024
#: Zeros compared at a time (bytes.startswith is a memcmp in place, no copy of the tail).
_ZEROS = bytes(1 << 20)
#: Bytes past a stop searched for scripts, as the embedded family bounds its script search; pixel
#: data is never searched for them (an image's samples match a short opening by chance).
SCRIPT_SCAN_MAX = 1 << 20


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
    """Each check on its own: one failing on a crafted file leaves the other's findings."""
    return guarded("polyglot", _after_stop, parsed) + guarded("polyglot", _appended, parsed)


def _appended(parsed: Parsed) -> list[Finding]:
    """What the bytes after the data set are (an archive, an executable, zeros, unknown)."""
    findings: list[Finding] = []
    data = parsed.data
    start = trailing(parsed)
    size = len(data) - start
    if size <= 0:
        return findings
    stop = next((p.rule for p in reversed(parsed.problems) if p.offset is not None and p.offset >= start - 12), None)
    if stop is not None and stop not in GARBAGE_STOPS and not parsed.inflated:
        return findings  # a cut or lying element: the structure rules report it, _after_stop what follows
    if zeros(data, start):
        return [*findings, Finding("polyglot.zero-padding", Level.LOW, f"{size:,} zero bytes after the data set",
                                   start, REF, remedy="trailing")]
    kind = signatures.identify(bytes(data[start:start + HEAD]))
    if kind is None:
        # searched in place; a flood of magic numbers there is trailing data all the same
        kind = next((h.kind for h in signatures.find(data, start, limit=2) if h.kind != "flood"), None)
    if kind is not None:
        return [*findings, Finding(f"polyglot.appended-{kind}", Level.HIGH,
                                   f"{signatures.DESCRIPTIONS.get(kind, kind)} is appended after the data set "
                                   f"({size:,} bytes)", start, REF, remedy="trailing")]
    if size < 16:
        # e.g. a gzip trailer (CRC-32, size) some writers leave after a deflated data set
        return [*findings, Finding("polyglot.stray-bytes", Level.LOW, f"{size} stray bytes after the data set",
                                   start, REF, remedy="trailing")]
    return [*findings, Finding("polyglot.trailing-data", Level.MEDIUM,
                               f"{size:,} bytes after the data set that are not DICOM elements", start, REF,
                               remedy="trailing")]


def _resume(parsed: Parsed) -> int:
    """Where in ``parsed.body`` the bytes no rule examined start: where the walk stopped, or, when
    it stopped inside encapsulated pixel data (PS3.5 A.4), past the last fragment it read (the
    embedded family searched those)."""
    start = parsed.end
    last = parsed.elements[-1] if parsed.elements else None
    if last is not None and last.fragments and last.offset == parsed.end:
        at, length = last.fragments[-1]
        start = max(start, at + length)
    return start


def _after_stop(parsed: Parsed) -> list[Finding]:
    """Executables, archives, Office files and scripts in the bytes from where the walk stopped to
    the end of the file (of the inflated data set, when deflated): the value of the element that
    overran, up to the file's end, and everything after it. Stops on bytes that are no element at
    all (GARBAGE_STOPS) leave them to the appended-data judgement of ``check``; in a deflated data
    set those bytes are not the file's tail, so they are searched here too."""
    if not parsed.dicom or not parsed.stopped or not parsed.problems:
        return []
    stop = parsed.problems[-1]  # the walk stops right after recording why
    if stop.rule in GARBAGE_STOPS and not parsed.inflated:
        return []
    body, start = parsed.body, _resume(parsed)
    if start >= len(body):
        return []
    out: list[Finding] = []
    seen: set[str] = set()
    for hit in _hits(parsed, body, start, stop):
        if hit.kind in seen:
            continue
        seen.add(hit.kind)
        if hit.kind == "flood":
            # What the appended-data rule makes of a flood: unknown bytes, its later copies unsearched.
            out.append(Finding("polyglot.trailing-data", Level.MEDIUM,
                               f"the {len(body) - start:,} bytes past where the walk stopped ({_why(stop)}) are "
                               f"flooded with the magic number of {signatures.DESCRIPTIONS.get(hit.of, hit.of)}: "
                               "what follows the flood is not searched for that kind", hit.offset, STOP_REF,
                               inflated=parsed.inflated))
            continue
        out.append(Finding(f"polyglot.appended-{hit.kind}", Level.HIGH,
                           f"{hit.description} in the {len(body) - start:,} bytes from where the walk stopped "
                           f"({_why(stop)}), {hit.offset - start:,} bytes in: no DICOM reader reads past that "
                           "stop, a program reading its own format finds it", hit.offset, STOP_REF,
                           inflated=parsed.inflated))
    return out


def _why(stop: Problem) -> str:
    where = f" at {stop.offset:,}" if stop.offset is not None else ""
    return f"{stop.rule}{where}" + (f", {tag_label(stop.tag)}" if stop.tag is not None else "")


def _hits(parsed: Parsed, body: bytes, start: int, stop: Problem) -> list[signatures.Hit]:
    """Verified signatures in ``body[start:]``, in order: a format starting right there (as a tail
    is identified), the needles anywhere (from YARA's pass when it made one, else searched in
    place), then scripts in the first SCRIPT_SCAN_MAX bytes that are not pixel data."""
    hits: list[signatures.Hit] = []
    kind = signatures.identify(bytes(body[start:start + HEAD]))
    if kind is not None and kind != "pdf":
        hits.append(signatures.Hit(kind, start))
    needles = parsed.needles
    if needles is not None and not (needles and needles[0][1] < 0):  # (index, -1), sorted first: a flood
        found = signatures.verify_all(body, needles, start, len(body), limit=1)
    else:
        found = signatures.find(body, start, limit=1)  # no YARA pass, or one it gave up on (a flood)
    # A PDF is a document, no program: a cut Encapsulated PDF ends this way. A PE header whose MZ
    # is before the stop (the preamble's, CVE-2019-11687) is reported where the header is.
    hits += [signatures.Hit("pe-header", h.target) if h.offset < start and h.target is not None else h
             for h in found if h.kind != "pdf"]
    hits += _scripts(parsed, body, start, stop)
    return sorted(hits, key=lambda h: h.offset)


def _scripts(parsed: Parsed, body: bytes, start: int, stop: Problem) -> list[signatures.Hit]:
    # Only the data set's first Pixel Data is the image, exempt: one after it is a repeat (PS3.5 7.1).
    first = parsed.top(PIXEL_DATA) is None
    if stop.tag == PIXEL_DATA and first:
        return []
    end = min(len(body), start + SCRIPT_SCAN_MAX)
    pixels = body.find(struct.pack("<HH" if parsed.little else ">HH", PIXEL_DATA >> 16, PIXEL_DATA & 0xFFFF),
                       start, end) if first else -1
    window = bytes(body[start:pixels if pixels >= 0 else end])
    return [signatures.Hit("script", start + h.offset) for h in signatures.scripts(window, limit=1)]
