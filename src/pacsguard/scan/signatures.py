"""Recognising executables, archives, documents and scripts by their first bytes, verified past
the magic number so that a few bytes of pixel data that happen to match do not count.

Formats: PE/COFF (Microsoft PE format: MZ, e_lfanew at 0x3C, "PE\\0\\0", machine), ELF (System V
ABI 4.1: e_ident), Mach-O (mach-o/loader.h, fat.h: both byte orders, fat), zip (APPNOTE 4.3.7
local file header), OLE2 compound files, PDF (ISO 32000 7.5.2 header), shebang and shell scripts."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

#: IMAGE_FILE_MACHINE values of executables that run on hospital workstations and servers.
PE_MACHINES = frozenset({0x014C, 0x8664, 0xAA64, 0x01C4, 0x0200})
#: Mach-O CPU types: x86, x86_64, arm, arm64, ppc, ppc64.
MACHO_CPUS = frozenset({7, 0x01000007, 12, 0x0100000C, 18, 0x01000012})
MACHO_MAGICS = {b"\xfe\xed\xfa\xce": ">", b"\xfe\xed\xfa\xcf": ">", b"\xce\xfa\xed\xfe": "<", b"\xcf\xfa\xed\xfe": "<"}
FAT_MAGIC = b"\xca\xfe\xba\xbe"

#: Binary signatures searched for inside element values: (kind, needle). Each hit is verified. A PE
#: is found by its header ("PE\0\0"), then its MZ looked for before it: "MZ" alone is two bytes,
#: found every few kilobytes of pixel data.
NEEDLES: tuple[tuple[str, bytes], ...] = (
    ("pe-header", b"PE\x00\x00"),
    ("elf", b"\x7fELF"),
    ("macho", b"\xfe\xed\xfa\xce"), ("macho", b"\xfe\xed\xfa\xcf"),
    ("macho", b"\xce\xfa\xed\xfe"), ("macho", b"\xcf\xfa\xed\xfe"), ("macho", FAT_MAGIC),
    ("zip", b"PK\x03\x04"),
    ("ole", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"),
    ("7z", b"7z\xbc\xaf\x27\x1c"),
    ("rar", b"Rar!\x1a\x07"),
    ("pdf", b"%PDF-"),
)

#: Script and markup openings, searched case-insensitively in text and small binary values.
SCRIPT = re.compile(
    rb"#!\s*/(?:usr/)?(?:local/)?bin/|<script[\s>]|<iframe[\s>]|javascript:|\bon(?:error|load)\s*="
    rb"|powershell(?:\.exe)?\s+-|\bcmd(?:\.exe)?\s+/c\b|@echo\s+off|<html[\s>]|<svg[\s>]|\bIEX\s*\(",
    re.IGNORECASE)

DESCRIPTIONS = {
    "pe": "a Windows PE executable", "pe-header": "a PE header", "elf": "an ELF executable",
    "macho": "a Mach-O executable", "zip": "a zip archive", "ole": "an OLE2 compound file (Office)",
    "7z": "a 7-Zip archive", "rar": "a RAR archive", "pdf": "a PDF document", "gzip": "a gzip stream",
    "script": "script or markup", "json": "JSON configuration text",
}

MZ_LOOKBACK = 4096
EXECUTABLE = frozenset({"pe", "pe-header", "elf", "macho"})
ARCHIVE = frozenset({"zip", "7z", "rar", "gzip"})


@dataclass(frozen=True, slots=True)
class Hit:
    """A verified signature: ``kind`` (a key of DESCRIPTIONS) at ``offset`` in the searched buffer;
    ``target`` is where a PE's e_lfanew points (its "PE\\0\\0")."""

    kind: str
    offset: int
    target: int | None = None

    @property
    def description(self) -> str:
        return DESCRIPTIONS.get(self.kind, self.kind)


def pe_header_at(buf: bytes, at: int) -> bool:
    """A PE signature and a known machine at ``at``."""
    if at < 0 or at + 6 > len(buf) or bytes(buf[at:at + 4]) != b"PE\x00\x00":
        return False
    return struct.unpack_from("<H", buf, at + 4)[0] in PE_MACHINES


def verify(kind: str, buf: bytes, at: int) -> Hit | None:
    """The Hit when the bytes at ``at`` are really ``kind``. An MZ header's e_lfanew may point far past
    the header (CVE-2019-11687: a PE in the preamble whose header sits in the data elements), so
    ``buf`` is the whole file (or inflated data set), not just the value searched."""
    end = len(buf)
    if kind == "pe":
        if at + 0x40 > end:
            return None
        target = at + struct.unpack_from("<I", buf, at + 0x3C)[0]
        return Hit("pe", at, target) if pe_header_at(buf, target) else None
    if kind == "pe-header":
        if not pe_header_at(buf, at):
            return None
        # The DOS header whose e_lfanew points here, if it is within a few KiB before.
        mz = buf.rfind(b"MZ", max(0, at - MZ_LOOKBACK), at) if isinstance(buf, bytes) else -1
        while mz >= 0:
            if mz + 0x40 <= len(buf) and mz + struct.unpack_from("<I", buf, mz + 0x3C)[0] == at:
                return Hit("pe", mz, at)
            mz = buf.rfind(b"MZ", max(0, at - MZ_LOOKBACK), mz)
        return Hit(kind, at)
    if kind == "elf":
        ident = bytes(buf[at + 4:at + 7])
        return Hit(kind, at) if len(ident) == 3 and ident[0] in (1, 2) and ident[1] in (1, 2) and ident[2] == 1 \
            else None
    if kind == "macho":
        head = bytes(buf[at:at + 8])
        if len(head) < 8:
            return None
        if head[:4] == FAT_MAGIC:
            # fat header: a few architectures; a Java class file (same magic) has a version >= 45 here
            count = struct.unpack_from(">I", head, 4)[0]
            return Hit(kind, at) if 0 < count <= 8 else None
        order = MACHO_MAGICS.get(head[:4])
        return Hit(kind, at) if order and struct.unpack_from(order + "I", head, 4)[0] in MACHO_CPUS else None
    if kind == "zip":
        if at + 30 > end:
            return None
        version, flags, method = struct.unpack_from("<HHH", buf, at + 4)
        name_len = struct.unpack_from("<H", buf, at + 26)[0]
        name = bytes(buf[at + 30:at + 30 + name_len])
        ok = version <= 63 and method in (0, 8, 9, 12, 14, 93, 95, 99) and 0 < name_len <= 1024 \
            and len(name) == name_len and all(32 <= c < 127 for c in name)
        return Hit(kind, at) if ok else None
    if kind == "pdf":
        return Hit(kind, at) if bytes(buf[at + 5:at + 7]) in (b"1.", b"2.") else None
    return Hit(kind, at)


#: The name of the internal YARA rule that finds every needle in the same pass as the other rules.
NEEDLE_RULE = "pacsguard_internal_needles"


def needle_rule() -> str:
    """YARA source of one rule whose strings are NEEDLES (``$<index>``), so a single Aho-Corasick
    pass over the file yields every candidate offset; Python then verifies each one."""
    strings = "\n".join(f"        ${i} = {{ {needle.hex(' ')} }}" for i, (_, needle) in enumerate(NEEDLES))
    return f"rule {NEEDLE_RULE}\n{{\n    strings:\n{strings}\n    condition:\n        any of them\n}}\n"


def verify_all(raw: bytes, candidates: list[tuple[int, int]], start: int, end: int, limit: int = 8) -> list[Hit]:
    """Verified hits among ``candidates`` ((needle index, offset), sorted by offset) in [start, end)."""
    from bisect import bisect_left

    hits: list[Hit] = []
    counts: dict[str, int] = {}
    for index, at in candidates[bisect_left(candidates, (start, -1), key=lambda c: (c[1], c[0])):]:
        if at >= end:
            break
        kind = NEEDLES[index][0]
        if counts.get(kind, 0) >= limit:
            continue
        hit = verify(kind, raw, at)
        if hit is not None:
            hits.append(hit)
            counts[kind] = counts.get(kind, 0) + 1
    return hits


def find(raw: bytes, start: int = 0, end: int | None = None, *, limit: int = 8,
         kinds: frozenset[str] | None = None) -> list[Hit]:
    """Verified signatures in ``raw[start:end]`` (offsets in ``raw``), at most ``limit`` of each kind.
    bytes.find per needle runs at memchr speed and copies nothing, so pixel data costs little."""
    stop = len(raw) if end is None else end
    hits: list[Hit] = []
    for kind, needle in NEEDLES:
        if kinds is not None and kind not in kinds:
            continue
        found = 0
        at = raw.find(needle, start, stop)
        while at >= 0 and found < limit:
            hit = verify(kind, raw, at)
            if hit is not None:
                hits.append(hit)
                found += 1
            at = raw.find(needle, at + 1, stop)
    hits.sort(key=lambda h: h.offset)
    return hits


def identify(buf: bytes) -> str | None:
    """What ``buf`` starts with, when it is one of the kinds above (or gzip, a script, JSON)."""
    head = bytes(buf[:64])
    for kind, needle in (("pe", b"MZ"), *NEEDLES):
        if head.startswith(needle) and verify(kind, buf, 0) is not None:
            return kind
    if head.startswith(b"\x1f\x8b\x08"):
        return "gzip"
    stripped = head.lstrip(b"\x00 \t\r\n\xef\xbb\xbf")
    if SCRIPT.search(bytes(buf[:4096])) and stripped[:1] in (b"#", b"<", b"@", b"p", b"P", b"c", b"C", b"I"):
        return "script"
    return None


def scripts(buf: bytes, limit: int = 4) -> list[Hit]:
    """Script or markup openings anywhere in ``buf`` (case-insensitive)."""
    out: list[Hit] = []
    for match in SCRIPT.finditer(bytes(buf)):
        out.append(Hit("script", match.start()))
        if len(out) >= limit:
            break
    return out
