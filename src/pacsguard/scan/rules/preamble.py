"""The 128-byte preamble (PS3.10 7.1): free for application use, so attackers put executables,
scripts or configuration text there and the file runs or is read as that format too
(CVE-2019-11687 PE/DICOM, CVE-2023-33466 Orthanc configuration JSON), also behind a byte order
mark. Zero or TIFF (PS3.10 7.5) are expected; anything else is at least noted."""

from __future__ import annotations

import math
import re
from collections import Counter

from pacsguard.scan import signatures
from pacsguard.scan.model import Finding, Level
from pacsguard.scan.part10 import PREAMBLE, Parsed

REF = "PS3.10 7.1, 7.5"
TIFF = (b"II*\x00", b"MM\x00*")
#: JSON object text: a brace, then a quoted key and a colon (Orthanc's configuration, CVE-2023-33466),
#: after whitespace and comments: Orthanc reads its configuration with comments allowed (JsonCpp's
#: allowComments: /* ... */ and // to the line's end), and its own Configuration.json starts with them.
_GAP = rb'(?:\s|/\*.*?\*/|//[^\n]*\n)*'
JSON = re.compile(rb'^' + _GAP + rb'\{' + _GAP + rb'"[^"]{1,64}"' + _GAP + rb':', re.DOTALL)


def entropy(buf: bytes) -> float:
    """Shannon entropy in bits per byte."""
    if not buf:
        return 0.0
    counts = Counter(buf)
    n = len(buf)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def check(parsed: Parsed) -> list[Finding]:
    pre = parsed.preamble
    if not parsed.part10 or not pre.strip(b"\x00"):
        return []
    if pre[:4] in TIFF:
        # PS3.10 7.5: the TIFF header makes the file a TIFF too; the other 124 bytes are still read
        # by whatever runs or parses them (cmd.exe skips a line it cannot run, a browser the bytes
        # before "<html"), so they are judged as any preamble's, the marker only not counting.
        # A TIFF's IFD is binary by nature: its entropy says nothing.
        hostile = _contents(pre, binary_too=False)
        if hostile is not None:
            return [hostile]
        return [Finding("preamble.tiff", Level.INFO, "TIFF-compatible preamble (dual-personality file, benign)", 0,
                        REF)]
    kind = signatures.identify(pre)
    if kind == "pe" or pre[:2] == b"MZ":
        return [_pe(parsed)]
    if kind == "pdf":
        # A viewer opens the file as a PDF (ISO 32000-1 7.5.2); what the PDF does is judged by the
        # documents family over the whole file (documents.pdf-active): the header alone is a note.
        return [_contents(pre, binary_too=False)
                or Finding("preamble.pdf", Level.LOW, "the preamble starts a PDF header: PDF viewers open the "
                           "file as a PDF, judged as one", 0, f"{REF}; ISO 32000-1 7.5.2", remedy="preamble")]
    if kind is not None:
        return [Finding(f"preamble.{kind}", Level.HIGH,
                        f"the preamble is {signatures.DESCRIPTIONS[kind]}: the file is also that format", 0,
                        REF, remedy="preamble")]
    return [_contents(pre) or Finding("preamble.nonzero", Level.INFO, "non-zero preamble of no known format", 0,
                                      REF, remedy="preamble")]


def _contents(pre: bytes, *, binary_too: bool = True) -> Finding | None:
    """What text the preamble holds, whatever its first bytes (a TIFF header included): JSON
    configuration, script or markup; with ``binary_too``, encrypted or compressed data too."""
    # A byte order mark before the text (UTF-8, UTF-16 either way) hides it from a byte pattern,
    # not from a reader of JSON or scripts that skips the mark, as text readers do: judged without it.
    text = signatures.unbom(pre)
    if JSON.match(pre) or JSON.match(text):
        return Finding("preamble.json", Level.HIGH, "the preamble holds JSON configuration text "
                       "(a PACS reading it as its configuration: CVE-2023-33466)", 0,
                       f"{REF}; CVE-2023-33466", remedy="preamble")
    scripts = signatures.scripts(pre, limit=1)
    if scripts or signatures.scripts(text, limit=1):
        at = scripts[0].offset if scripts else 0  # found once decoded: at the byte order mark
        return Finding("preamble.script", Level.HIGH, "the preamble holds script or markup", at,
                       REF, remedy="preamble")
    # Commands without a "#!" line: ``sh file.dcm`` (or cmd.exe, PowerShell) runs plain text too, so
    # the text is judged by what it runs, padded with spaces or NULs or not.
    command = signatures.command_line(pre)
    at = command.offset if command is not None else 0  # found once decoded: at the byte order mark
    command = command or signatures.command_line(text)
    if command is not None:
        return Finding("preamble.script", Level.HIGH, f"the preamble holds commands a shell runs: {command.of[:100]!r}",
                       at, REF, remedy="preamble")
    bits = entropy(pre)
    if binary_too and bits > 6.2:
        return Finding("preamble.entropy", Level.MEDIUM,
                       f"the preamble looks encrypted or compressed ({bits:.1f} bits per byte)", 0, REF,
                       remedy="preamble")
    return None


def _pe(parsed: Parsed) -> Finding:
    hit = signatures.verify("pe", parsed.data, 0)
    if hit is None or hit.target is None:
        return Finding("preamble.pe", Level.HIGH, "the preamble starts with an MZ (DOS executable) header", 0,
                       f"{REF}; CVE-2019-11687", remedy="preamble")
    where = f"at offset {hit.target}"
    if hit.target >= PREAMBLE:
        inside = next((e for e in parsed.elements if not parsed.inflated
                       and e.value_offset <= hit.target < e.value_offset + max(e.length, 0)), None)
        where += f", past the preamble inside {inside.label}" if inside else ", past the preamble"
    return Finding("preamble.pe", Level.CRITICAL, f"the preamble is a Windows PE executable; its PE header is {where}",
                   0, f"{REF}; CVE-2019-11687", remedy="preamble")
