"""Recognising executables, archives, documents and scripts by their first bytes, verified past
the magic number so that a few bytes of pixel data that happen to match do not count.

Formats: PE/COFF (Microsoft PE format: MZ, e_lfanew at 0x3C, "PE\\0\\0", machine), ELF (System V
ABI 4.1: e_ident), Mach-O (mach-o/loader.h, fat.h: both byte orders, fat and fat 64), zip (APPNOTE 4.3.7
local file header), OLE2 compound files, PDF (ISO 32000 7.5.2 header), Windows shortcuts (MS-SHLLINK
2.1), shebang and shell scripts, PowerShell, batch, PHP and HTML, in ASCII and in UTF-16 (either byte
order, as Windows writes them); as whole files also Windows Script Host (VBScript, JScript, encoded),
PowerShell download cradles, batch files and AUTORUN.INF."""

from __future__ import annotations

import html
import re
import struct
from bisect import bisect_left
from dataclasses import dataclass

#: IMAGE_FILE_MACHINE values of executables that run on hospital workstations and servers.
PE_MACHINES = frozenset({0x014C, 0x8664, 0xAA64, 0x01C4, 0x0200})
#: Mach-O CPU types: x86, x86_64, arm, arm64, ppc, ppc64.
MACHO_CPUS = frozenset({7, 0x01000007, 12, 0x0100000C, 18, 0x01000012})
MACHO_MAGICS = {b"\xfe\xed\xfa\xce": ">", b"\xfe\xed\xfa\xcf": ">", b"\xce\xfa\xed\xfe": "<", b"\xcf\xfa\xed\xfe": "<"}
FAT_MAGIC = b"\xca\xfe\xba\xbe"
FAT_MAGIC_64 = b"\xca\xfe\xba\xbf"
#: fat.h: FAT_MAGIC and FAT_MAGIC_64 (a fat binary of 64-bit offsets), then both byte-swapped
#: (FAT_CIGAM, FAT_CIGAM_64); each with the byte order of its nfat_arch.
FAT_MAGICS = {FAT_MAGIC: ">", FAT_MAGIC_64: ">", b"\xbe\xba\xfe\xca": "<", b"\xbf\xba\xfe\xca": "<"}

#: Binary signatures searched for inside element values: (kind, needle). Each hit is verified. A PE
#: is found by its header ("PE\0\0"), then its MZ looked for before it: "MZ" alone is two bytes,
#: found every few kilobytes of pixel data.
NEEDLES: tuple[tuple[str, bytes], ...] = (
    ("pe-header", b"PE\x00\x00"),
    ("elf", b"\x7fELF"),
    ("macho", b"\xfe\xed\xfa\xce"), ("macho", b"\xfe\xed\xfa\xcf"),
    ("macho", b"\xce\xfa\xed\xfe"), ("macho", b"\xcf\xfa\xed\xfe"), ("macho", FAT_MAGIC), ("macho", FAT_MAGIC_64),
    ("zip", b"PK\x03\x04"),
    ("ole", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"),
    ("7z", b"7z\xbc\xaf\x27\x1c"),
    ("rar", b"Rar!\x1a\x07"),
    ("pdf", b"%PDF-"),
)

#: What a whole file, a preamble or appended data may also start with: a fat header byte-swapped.
#: fat.h keeps the fat header big endian on disk (FAT_CIGAM is how a little-endian reader sees it in
#: memory), so these are recognised where it costs nothing, not searched for in every value: each
#: needle is one more YARA string over every byte (these two cost 5% on pixel data).
LEADING: tuple[tuple[str, bytes], ...] = (("macho", b"\xbe\xba\xfe\xca"), ("macho", b"\xbf\xba\xfe\xca"))
#: NEEDLES as one alternation, for the few bytes around a pixel data fragment boundary.
NEEDLE_RE = re.compile(b"|".join(re.escape(needle) for _, needle in NEEDLES))
LONGEST_NEEDLE = max(len(needle) for _, needle in NEEDLES)
#: The fewest bytes verify() accepts as a signature: "PE\0\0" and its machine (a PE header whose MZ
#: is elsewhere, CVE-2019-11687), a 7-Zip or RAR signature. A shorter value holds none of them.
SMALLEST_HEADER = 6

#: HTML elements that run or load content (a web viewer showing a value renders them), and the
#: event attributes that run script without any element of their own (<img onerror=...>).
ACTIVE_TAGS = ("script", "iframe", "html", "svg", "object", "embed")
EVENTS = ("error", "load", "mouseover", "focus", "click", "toggle", "begin", "animationstart", "pageshow")
#: Attribute names that start with "on" and are common words, no event handler (HTML Living Standard
#: 8.1.8.2 lists none of them): onset, online, oncology... A handler named after one ("ononline")
#: still counts: the look-ahead reads what follows "on" up to the "=".
NOT_HANDLERS = rb"(?!(?:set|line|colog[a-z]*|going|ly|to|wards?|call|site)\s*=)"
#: "\b" before an opening whose first byte was consumed by SCRIPT's leading class (see _openings).
_WORD_BEFORE = rb"(?<![0-9A-Za-z_].)"
#: Between two UTF-16 code units of ASCII: the zero byte, or a run of whitespace units.
_NUL, _WS_ANY, _WS_SOME = rb"\x00", rb"(?:\x00\s)*\x00", rb"(?:\x00\s)+\x00"


def _wide(text: str) -> bytes:
    """``text`` (ASCII) as a pattern for UTF-16: a zero byte between its characters. Without the
    zero after the last one (LE) or before the first (BE), the same bytes match both orders."""
    return _NUL.join(re.escape(bytes([c])) for c in text.encode("ascii"))


def _any(*patterns: bytes) -> bytes:
    return b"(?:" + b"|".join(patterns) + b")"


def _openings() -> list[tuple[bytes, bytes]]:
    """(first byte, pattern of the rest) of each script opening: shebang (POSIX exec), PHP, HTML
    elements and event handlers, javascript: URLs, PowerShell, cmd and batch; each in ASCII, then
    in UTF-16 (PowerShell, HTML and .NET text are UTF-16 as often as not)."""
    tags, events = "|".join(ACTIVE_TAGS).encode(), "|".join(EVENTS).encode()
    ascii_ = [
        (b"#", rb"!\s*/(?:usr/)?(?:local/)?bin/"),
        # PHP's short echo tag "<?=" (always on since PHP 5.4) runs as "<?php echo" does; PHP parses
        # a whole file before it runs any, so code amid binary bytes only runs closed by "?>".
        (b"<", rb"(?:\?php\s|\?=[^\x00-\x08\x0e-\x1f]{0,512}?\?>|(?:" + tags + rb")[\s/>])"),
        (b"j", rb"avascript:"),
        (b"o", _WORD_BEFORE + rb"n(?:" + events + rb")\s*="),
        # Any on* attribute inside a tag is an event handler (HTML Living Standard 8.1.8.2: the
        # set grows; sanitizers drop every on* attribute): <input autofocus onfocusin=...>.
        # Words clinical shorthand writes as "attributes" (<pain onset=acute>) are no handler.
        (b"<", rb"[a-z][^<>]{0,256}?[\s/\"']on" + NOT_HANDLERS + rb"[a-z]+\s*="),
        (b"p", rb"owershell(?:\.exe)?\s+-"),
        (b"c", _WORD_BEFORE + rb"md(?:\.exe)?\s+/c\b"),
        (b"@", rb"echo\s+off"),
        (b"i", _WORD_BEFORE + rb"ex\s*\("),
    ]
    wide = [
        (b"#", _NUL + _wide("!") + _WS_ANY + _wide("/") + _NUL + b"(?:" + _wide("usr/") + _NUL + b")?(?:"
         + _wide("local/") + _NUL + b")?" + _wide("bin/")),
        (b"<", _NUL + _any(_wide("?php") + _NUL + rb"\s",
                           _any(*(_wide(t) for t in ACTIVE_TAGS)) + _NUL + rb"[\s/>]")),
        (b"j", _NUL + _wide("avascript:")),
        (b"o", _NUL + _wide("n") + _NUL + _any(*(_wide(e) for e in EVENTS)) + _WS_ANY + _wide("=")),
        (b"p", _NUL + _wide("owershell") + b"(?:" + _NUL + _wide(".exe") + b")?" + _WS_SOME + _wide("-")),
        (b"c", _NUL + _wide("md") + b"(?:" + _NUL + _wide(".exe") + b")?" + _WS_SOME + _wide("/c")),
        (b"@", _NUL + _wide("echo") + _WS_SOME + _wide("off")),
        (b"i", _NUL + _wide("ex") + _WS_ANY + _wide("(")),
    ]
    return ascii_ + wide


def _script_pattern() -> re.Pattern[bytes]:
    """One regular expression for every opening, led by a class of their first bytes: re skips
    the bytes outside it in C, case-sensitively (a case-insensitive lead would disable that), and
    only then tries the rest, case-insensitively, behind a look-behind at the consumed byte. Four
    times the speed of a plain alternation on binary values, with twice the openings."""
    openings = _openings()
    firsts = sorted({c for first, _ in openings for c in first.lower() + first.upper()})
    lead = b"[" + b"".join(re.escape(bytes([c])) for c in firsts) + b"]"
    rest = b"|".join(b"(?<=" + re.escape(first) + b")" + pattern for first, pattern in openings)
    return re.compile(lead + b"(?i:" + rest + b")")


#: Script and markup openings, searched case-insensitively in text and small binary values.
SCRIPT = _script_pattern()

DESCRIPTIONS = {
    "pe": "a Windows PE executable", "pe-header": "a PE header", "elf": "an ELF executable",
    "macho": "a Mach-O executable", "zip": "a zip archive", "ole": "an OLE2 compound file (Office)",
    "7z": "a 7-Zip archive", "rar": "a RAR archive", "pdf": "a PDF document", "gzip": "a gzip stream",
    "script": "script or markup", "json": "JSON configuration text",
    "lnk": "a Windows shortcut (.lnk), which runs what it points at",
    "flood": "a flood of one signature's magic number",
}
#: Failed verifications of one needle in one searched span after which the span is a flood: far
#: above what chance gives a 2 GiB image (a 4-byte needle: one in 4 GiB of random bytes).
FLOOD = 10_000

MZ_LOOKBACK = 4096
EXECUTABLE = frozenset({"pe", "pe-header", "elf", "macho", "lnk"})
ARCHIVE = frozenset({"zip", "7z", "rar", "gzip"})
#: Archives the scanner recognises but does not open (walk.py opens zip, tar, gzip, bzip2, xz, LZMA-alone).
UNOPENED_ARCHIVES = frozenset({"7z", "rar"})
#: A Zstandard frame's magic number (RFC 8878 3.1.1), recognised only where a file starts.
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: A Zstandard skippable frame (RFC 8878 3.1.2): magic 0x184D2A50 to 0x184D2A5F, little endian,
#: which decoders skip; a file may start with one before its first frame.
ZSTD_SKIPPABLE = re.compile(rb"[\x50-\x5f]\x2a\x4d\x18", re.DOTALL)


#: Where an ISO 9660 volume descriptor set starts (ECMA-119 6.2.1, 8.1: the system area is
#: sectors 0-15 of 2048 bytes), and how many of its sectors are looked at: the primary descriptor,
#: a boot record (El Torito), Joliet's supplementary one, or UDF's volume recognition sequence
#: (ECMA-167 2/8.3: "BEA01", "NSR02"/"NSR03", "TEA01"), each an identifier at byte 1.
DISC_DESCRIPTORS, DISC_SECTOR, DISC_SECTORS = 16 * 2048, 2048, 8
_DISC_IDS = (b"CD001", b"BEA01", b"NSR02", b"NSR03", b"TEA01")
_OCTAL, _HEX = frozenset(b"01234567"), frozenset(b"0123456789abcdefABCDEF")
#: An LHA header's method ID at byte 2 (after its size and checksum): -lh0- to -lh7-, -lhd-, -lzs-...
LHA_METHOD = re.compile(rb"-l(?:h[0-7ds]|z[s45])-")


def unopened_container(buf: bytes) -> str | None:
    """What ``buf`` is, when it is a container or disc image pacsguard recognises and does not
    open, so that what it holds was not scanned: an optical disc image (ISO 9660, ECMA-119 8.1;
    UDF, ECMA-167 2/8.3: a CD or DVD of another hospital as a file), a Microsoft cabinet (MS-CAB
    2.1: "MSCF", reserved zero), an ARJ archive (0x60 0xEA and a basic header of at most 2,600
    bytes), a cpio archive (POSIX.1 pax cpio format: "070707" and octal fields; SVR4 "070701",
    "070702" and hexadecimal ones; the old binary header 070707 in either byte order with a
    name ended by its NUL), compiled HTML Help ("ITSF", version 3: its pages run script in
    HTML Help), an MS-DOS COMPRESS.EXE file ("SZDD", "KWAJ": setup.ex_), a Windows imaging file
    ("MSWIM"), LHA (a method ID, "-lh5-", at byte 2), ACE ("**ACE**" at byte 7), xar ("xar!"),
    an Apple disk image (the "koly" trailer 512 bytes from the end) and a VHDX or VHD virtual
    disk ("vhdxfile"; "conectix" first or 512 bytes from the end). The description names the
    format; None: none of these."""
    head = bytes(buf[:32])
    if len(head) < 8:
        return None
    for sector in range(DISC_SECTORS):
        at = DISC_DESCRIPTORS + sector * DISC_SECTOR
        if bytes(buf[at + 1:at + 6]) in _DISC_IDS:
            return "an optical disc image (ISO 9660 or UDF, a CD or DVD as a file)"
    if head.startswith(b"MSCF\0\0\0\0"):
        return "a Microsoft cabinet (.cab)"
    if head.startswith(b"\x60\xea") and 0 < struct.unpack_from("<H", head, 2)[0] <= 2600:
        return "an ARJ archive"
    if _cpio(bytes(buf[:512])):
        return "a cpio archive"
    if head.startswith(b"ITSF") and struct.unpack_from("<I", head, 4)[0] == 3:
        return "a compiled HTML Help file (.chm), whose pages run script when it is opened"
    if head.startswith((b"SZDD\x88\xf0\x27\x33", b"KWAJ\x88\xf0\x27\xd1")):
        return "an MS-DOS COMPRESS.EXE file (setup.ex_)"
    if head.startswith(b"MSWIM\0\0\0"):
        return "a Windows imaging file (.wim)"
    if LHA_METHOD.match(head, 2) and head[0] > 0:
        return "an LHA archive (.lzh)"
    if head[7:14] == b"**ACE**":
        return "an ACE archive"
    if head.startswith(b"xar!"):
        return "a xar archive"
    if head.startswith((b"vhdxfile", b"conectix")):
        return "a virtual disk image (VHD, VHDX)"
    tail = bytes(buf[-512:-504]) if len(buf) >= 1024 else b""
    if tail.startswith(b"koly"):
        return "an Apple disk image (.dmg)"
    if tail == b"conectix":
        return "a virtual disk image (VHD, VHDX)"
    return None


def _cpio(head: bytes) -> bool:
    """A cpio header: ASCII ("070707" and 70 octal digits; "070701"/"070702" and 104 hexadecimal
    ones), or binary (magic 070707 as a 16-bit word, either byte order, and the name of namesize
    bytes, NUL included, after the 26-byte header)."""
    if head.startswith(b"070707"):
        return len(head) >= 76 and all(c in _OCTAL for c in head[6:76])
    if head.startswith((b"070701", b"070702")):
        return len(head) >= 110 and all(c in _HEX for c in head[6:110])
    order = {b"\xc7\x71": "<", b"\x71\xc7": ">"}.get(head[:2])
    if order is None or len(head) < 28:
        return False
    size = struct.unpack_from(order + "H", head, 20)[0]
    return 1 < size <= len(head) - 26 and head[26 + size - 1] == 0 and 0 not in head[26:26 + size - 1]


def zstd(head: bytes) -> bool:
    """Does ``head`` start as a Zstandard file: a frame (RFC 8878 3.1.1) or a skippable frame (3.1.2)?"""
    return head[:4] == ZSTD_MAGIC or ZSTD_SKIPPABLE.match(head[:4]) is not None


@dataclass(frozen=True, slots=True)
class Hit:
    """A verified signature: ``kind`` (a key of DESCRIPTIONS) at ``offset`` in the searched buffer;
    ``target`` is where a PE's e_lfanew points (its "PE\\0\\0"). A "flood" names the kind whose
    magic number it repeats in ``of``, from its first copy at ``offset``; a "script" found by
    command_line holds in ``of`` the run of text it is in."""

    kind: str
    offset: int
    target: int | None = None
    of: str = ""

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
        return Hit(kind, at) if _elf_ident(buf, at) or _elf_loadable(buf, at) else None
    if kind == "macho":
        head = bytes(buf[at:at + 8])
        if len(head) < 8:
            return None
        fat = FAT_MAGICS.get(head[:4])
        if fat is not None:
            # fat header: a few architectures; a Java class file (CAFEBABE too) has a version >= 45 here
            count = struct.unpack_from(fat + "I", head, 4)[0]
            return Hit(kind, at) if 0 < count <= 8 else None
        order = MACHO_MAGICS.get(head[:4])
        return Hit(kind, at) if order and struct.unpack_from(order + "I", head, 4)[0] in MACHO_CPUS else None
    if kind == "zip":
        return Hit(kind, at) if _zip_header(buf, at) else None
    if kind == "pdf":
        return Hit(kind, at) if bytes(buf[at + 5:at + 7]) in (b"1.", b"2.") else None
    return Hit(kind, at)


#: ELF e_machine values (System V ABI 4.1, gABI's list) of the processors hospital machines run:
#: x86, MIPS, PowerPC (32, 64), s390, ARM, x86-64, AArch64, RISC-V, LoongArch.
ELF_MACHINES = frozenset({3, 8, 0x14, 0x15, 0x16, 0x28, 0x3E, 0xB7, 0xF3, 0x102})
#: e_type: relocatable, executable, shared object (a PIE executable), core.
ELF_TYPES = frozenset({1, 2, 3, 4})


def _elf_ident(buf: bytes, at: int) -> bool:
    """e_ident as System V ABI 4.1 writes it: a class and data encoding of 1 or 2, version 1."""
    ident = bytes(buf[at + 4:at + 7])
    return len(ident) == 3 and ident[0] in (1, 2) and ident[1] in (1, 2) and ident[2] == 1


def _elf_loadable(buf: bytes, at: int) -> bool:
    """What a loader checks, whatever the rest of e_ident says: Linux's binfmt_elf reads the magic,
    e_type and e_machine (in the machine's own byte order), not EI_CLASS, EI_DATA or EI_VERSION, so
    an ELF with version 0 still runs. A known e_type and e_machine, in either byte order."""
    fields = bytes(buf[at + 16:at + 20])
    if len(fields) < 4:
        return False
    return any(struct.unpack(order + "HH", fields)[0] in ELF_TYPES
               and struct.unpack(order + "HH", fields)[1] in ELF_MACHINES for order in "<>")


#: Bytes no member name holds (APPNOTE.TXT 4.4.17: a name is text, in IBM code page 437 or, with
#: bit 11 of the flags, UTF-8, Appendix D): NUL, the C0 controls and DEL. Any other byte may be a
#: letter of either; these are what random or pixel bytes after "PK\3\4" give away.
NAME_CONTROLS = bytes(range(32)) + b"\x7f"
#: Compression methods of APPNOTE.TXT 4.4.5 that writers use: stored, deflate, deflate64, bzip2,
#: LZMA, zstd, xz, AES (99).
ZIP_METHODS = frozenset({0, 8, 9, 12, 14, 93, 95, 99})


def _zip_header(buf: bytes, at: int) -> bool:
    """A zip local file header at ``at`` (APPNOTE.TXT 4.3.7): the version needed to extract, a known
    method, and a file name (4.4.17) of 1 to 1024 bytes without controls; UTF-8 when flag bit 11
    says so (4.4.4), else any code page (names of CDs written on other systems)."""
    if at + 30 > len(buf):
        return False
    version, flags, method = struct.unpack_from("<HHH", buf, at + 4)
    name_len = struct.unpack_from("<H", buf, at + 26)[0]
    # 4.4.3: the lower byte is the version (at most 6.3); the upper byte is read by no extractor
    # (unzip, Python, Java ignore it; writers copy "version made by"'s host there, 0x0314).
    if version & 0xFF > 63 or method not in ZIP_METHODS or not 0 < name_len <= 1024:
        return False
    name = bytes(buf[at + 30:at + 30 + name_len])
    if len(name) != name_len or len(name.translate(None, NAME_CONTROLS)) != name_len:
        return False
    if flags & 0x0800 and not name.isascii():
        try:
            name.decode("utf-8")
        except UnicodeDecodeError:
            return False
    return True


#: The name of the internal YARA rule that finds every needle in the same pass as the other rules.
NEEDLE_RULE = "pacsguard_internal_needles"


def needle_rule() -> str:
    """YARA source of one rule whose strings are NEEDLES (``$<index>``), so a single Aho-Corasick
    pass over the file yields every candidate offset; Python then verifies each one."""
    strings = "\n".join(f"        ${i} = {{ {needle.hex(' ')} }}" for i, (_, needle) in enumerate(NEEDLES))
    return f"rule {NEEDLE_RULE}\n{{\n    strings:\n{strings}\n    condition:\n        any of them\n}}\n"


@dataclass(slots=True)
class Budget:
    """Failed verifications one file may still cost: a value of magic numbers that start nothing
    costs a verification each, so a file of them is cut short (and reported as a flood)."""

    misses: int = 1_000_000


def _flood(kind: str, at: int) -> Hit:
    return Hit("flood", at, of=kind)


def verify_all(raw: bytes, candidates: list[tuple[int, int]], start: int, end: int, limit: int = 8, *,
               skip: frozenset[int] = frozenset(), budget: Budget | None = None) -> list[Hit]:
    """Verified hits among ``candidates`` ((needle index, offset), sorted by offset) in [start, end),
    but for the needles in ``skip``; a kind that fails FLOOD times (or the budget) is a flood hit.
    Walked by index from a bisection: a file of many values costs no copy of the list per value."""
    budget = budget if budget is not None else Budget()
    hits: list[Hit] = []
    counts: dict[str, int] = {}
    misses: dict[str, int] = {}
    i, stop = bisect_left(candidates, (start, -1), key=lambda c: (c[1], c[0])), len(candidates)
    while i < stop:
        index, at = candidates[i]
        i += 1
        if at >= end:
            break
        kind = NEEDLES[index][0]
        if index in skip or counts.get(kind, 0) >= limit or misses.get(kind, 0) > FLOOD:
            continue
        hit = verify(kind, raw, at)
        if hit is not None:
            hits.append(hit)
            counts[kind] = counts.get(kind, 0) + 1
            continue
        misses[kind] = misses.get(kind, 0) + 1
        budget.misses -= 1
        if misses[kind] == FLOOD or budget.misses <= 0:
            hits.append(_flood(kind, at))
            misses[kind] = FLOOD + 1  # stop verifying this kind here
    return hits


def find(raw: bytes, start: int = 0, end: int | None = None, *, limit: int = 8,
         kinds: frozenset[str] | None = None, budget: Budget | None = None) -> list[Hit]:
    """Verified signatures in ``raw[start:end]`` (offsets in ``raw``), at most ``limit`` of each kind.
    bytes.find per needle runs at memchr speed and copies nothing, so pixel data costs little. A
    needle that fails verification FLOOD times (or exhausts ``budget``) ends in a flood hit."""
    stop = len(raw) if end is None else end
    budget = budget if budget is not None else Budget()
    hits: list[Hit] = []
    for kind, needle in NEEDLES:
        if kinds is None or kind in kinds:
            hits.extend(_find_needle(raw, kind, needle, start, stop, limit, budget))
    hits.sort(key=lambda h: h.offset)
    return hits


def _find_needle(raw: bytes, kind: str, needle: bytes, start: int, stop: int, limit: int,
                 budget: Budget) -> list[Hit]:
    """Up to ``limit`` verified hits of one needle, or those found before it floods."""
    hits: list[Hit] = []
    misses = 0
    at = raw.find(needle, start, stop)
    while at >= 0 and len(hits) < limit:
        hit = verify(kind, raw, at)
        if hit is not None:
            hits.append(hit)
        else:
            misses += 1
            budget.misses -= 1
            if misses >= FLOOD or budget.misses <= 0:
                hits.append(_flood(kind, at))
                break
        at = raw.find(needle, at + 1, stop)
    return hits


#: MS-SHLLINK 2.1: HeaderSize 0x4C, then LinkCLSID 00021401-0000-0000-C000-000000000046.
LNK_HEADER = b"\x4c\x00\x00\x00\x01\x14\x02\x00\x00\x00\x00\x00\xc0\x00\x00\x00\x00\x00\x00\x46"

#: Byte order marks (Unicode 15.0, 23.8) and the encodings they stand for; UTF-32 LE's before the
#: UTF-16 LE mark it starts with.
BOMS = ((b"\x00\x00\xfe\xff", "utf-32-be"), (b"\xff\xfe\x00\x00", "utf-32-le"), (b"\xef\xbb\xbf", "utf-8"),
        (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))


def unbom(buf: bytes) -> bytes:
    """``buf`` without its byte order mark: UTF-16 and UTF-32 text decoded and written as UTF-8, so
    that checks written for ASCII (a "<", a "{", a keyword) read it; without a mark, ``buf``."""
    for bom, codec in BOMS:
        if buf.startswith(bom):
            rest = bytes(buf[len(bom):])
            return rest if codec == "utf-8" else rest.decode(codec, "replace").encode("utf-8")
    return bytes(buf)


#: XML 1.0 Appendix F.1: the encodings an XML document's first four bytes give away without a byte
#: order mark ("<?" or "<" in UTF-32 or UTF-16, either order; "<?xm" in EBCDIC), as expat, libxml2
#: and Java's parsers detect them.
XML_SNIFF = ((b"\x00\x00\x00<", "utf-32-be"), (b"<\x00\x00\x00", "utf-32-le"), (b"\x00<\x00?", "utf-16-be"),
             (b"<\x00?\x00", "utf-16-le"), (b"\x4c\x6f\xa7\x94", "cp037"))
#: UTF-16 text (either order) of white space or "<", whatever follows: a parser reading it.
_UTF16_OPENING = re.compile(rb"(?:[\t\n\r <]\x00){2}|(?:\x00[\t\n\r <]){2}")


def xml_text(doc: bytes) -> bytes:
    """An XML document's text as UTF-8 (ASCII-compatible), so that patterns written for ASCII read
    it: behind a byte order mark (unbom), or in an encoding its first bytes give away without one
    (XML 1.0 Appendix F.1: UTF-16 and UTF-32 either order, EBCDIC); else ``doc`` itself."""
    head = bytes(doc[:4])
    if head[:2] in (b"\xff\xfe", b"\xfe\xff") or head[:3] == b"\xef\xbb\xbf" or head == b"\x00\x00\xfe\xff":
        return unbom(doc)
    for magic, codec in XML_SNIFF:
        if head == magic:
            return bytes(doc).decode(codec, "replace").encode("utf-8")
    if _UTF16_OPENING.match(head):
        codec = "utf-16-le" if head[1:2] == b"\x00" else "utf-16-be"
        return bytes(doc).decode(codec, "replace").encode("utf-8")
    return bytes(doc)


#: What Windows Script Host files call (WSH's WScript object, VBScript's CreateObject, JScript's
#: ActiveXObject), PowerShell download cradles and the cmdlets that run what they fetch, encoded
#: scripts (.vbe/.jse: the script encoder's "#@~^" and a base64 length) and an AUTORUN.INF section
#: that runs a program: calls a script makes and a text about it hardly ever writes.
TEXT_SCRIPT = re.compile(
    rb"(?im)\bWScript\s*\.\s*(?!exe\b)[a-z]|\bCreateObject\s*\(|\bGetObject\s*\(\s*\"|\bActiveXObject\s*\("
    rb"|\b(?:Invoke-Expression|Invoke-WebRequest|Invoke-RestMethod|Start-BitsTransfer|DownloadString|DownloadFile"
    rb"|DownloadData|FromBase64String)\b|\biex\s*[($]|\|\s*iex\b|\bNew-Object\s+(?:System\.)?Net\.WebClient\b"
    rb"|(?<![\w-])-EncodedCommand\b|\b(?:powershell|pwsh)(?:\.exe)?\b[^\r\n]*?\s-e(?:c|nc?\w*)?\s+[a-z0-9+/]{16}"
    rb"|#@~\^[a-z0-9+/]{6}=="
    rb"|^[ \t]*\[autorun\][ \t]*\r?$.*?^[ \t]*(?:open|shellexecute|shell\\[^\r\n=]*\\command)[ \t]*=[ \t]*\S",
    re.DOTALL)
#: cmd.exe's commands, beginning a line, in lower or upper case as batch files write them (a
#: README's sentence starts "Start", "Copy", "If").
_COMMANDS = ("start", "call", "copy", "xcopy", "robocopy", "del", "erase", "set", "setlocal", "endlocal", "echo",
             "rem", "if", "for", "goto", "cd", "chdir", "pushd", "popd", "md", "mkdir", "rd", "rmdir", "move", "ren",
             "rename", "exit", "pause", "cls", "title", "cmd", "reg", "attrib", "taskkill", "shift", "timeout")
#: Programs batch files run to fetch, decode or start more (any case: they are file names).
_PROGRAMS = rb"(?i:powershell|pwsh|wscript|cscript|mshta|rundll32|regsvr32|bitsadmin|certutil|schtasks|msiexec)" \
    rb"(?i:\.exe)?\b"
#: A program run by its file name, quoted or not, from a variable ("%~dp0viewer.exe") or a drive.
_RUNS = rb'"?(?:%~?\w*%?|[A-Za-z]:)?[^\s"%]*(?i:\.(?:exe|com|bat|cmd|msi|ps1|vbs|vbe|js|jse|wsf|hta|scr))"?(?=\s|$)'
BATCH_LINE = re.compile(rb"[ \t]*(?:@|::|:[A-Za-z_]|(?:" + b"|".join(c.encode() + b"|" + c.upper().encode()
                                                                     for c in _COMMANDS)
                        + rb")(?:[ \t]|$)|" + _PROGRAMS + b"|" + _RUNS + b")")
#: What only a batch file has: "@echo", a variable or argument (%NAME%, %~dp0, %1, %*), a program
#: started or called by its file name, one of _PROGRAMS. (A line that only names a program is a
#: command, not a sign: "viewer.exe shows the images." is a README's.)
BATCH_SIGN = re.compile(rb"(?m)^[ \t]*@(?i:echo)\b|%[A-Za-z_]\w*%|%~[a-z]*[0-9]|%[0-9*]"
                        rb'|^[ \t]*(?i:start|call)[ \t]+(?:"[^"\r\n]*"[ \t]+)?' + _RUNS
                        + rb"|^[ \t]*" + _PROGRAMS)
#: Bytes of text: tab, line feed, form feed, carriage return, the DOS end-of-file mark, printable
#: ASCII and every byte of UTF-8 or a code page above it.
_TEXT_BYTES = b"\t\n\x0c\r\x1a" + bytes(range(32, 127)) + bytes(range(128, 256))
#: Bytes of a file looked at to tell what it is.
HEAD = 4096


def _text(head: bytes) -> bytes | None:
    """``head`` as ASCII-compatible text: behind a byte order mark decoded (unbom), UTF-16 without
    one too (every other byte zero); None when it holds bytes no text has (a binary file)."""
    if head[:2] in (b"\xff\xfe", b"\xfe\xff") or head[:3] == b"\xef\xbb\xbf" or head[:4] == b"\x00\x00\xfe\xff":
        head = unbom(head).replace("\ufffd".encode(), b"")
    elif len(head) >= 4 and not head[1::2].strip(b"\x00") and b"\x00" not in head[0::2]:
        head = head[0::2]
    elif len(head) >= 4 and not head[0::2].strip(b"\x00") and b"\x00" not in head[1::2]:
        head = head[1::2]
    return None if head.translate(None, _TEXT_BYTES) else head


def _batch(text: bytes, cut: bool) -> bool:
    """A batch file (cmd.exe): every line that is not blank a command, a label or a comment, and
    one of them what only batch files write. The last line of a ``cut`` head is left out."""
    lines = text.splitlines()[:-1] if cut else text.splitlines()
    lines = [line for line in lines if line.strip()]
    return bool(lines) and all(BATCH_LINE.match(line) for line in lines) and BATCH_SIGN.search(text) is not None


def identify(buf: bytes) -> str | None:
    """What ``buf`` starts with, when it is one of the kinds above (or gzip, a script, JSON, a
    shortcut). A script is recognised by its content: an opening of SCRIPT at the start, or, for a
    whole text file (a CD's or USB stick's), what Windows Script Host, PowerShell, batch files and
    AUTORUN.INF write (TEXT_SCRIPT, _batch)."""
    head = bytes(buf[:64])
    for kind, needle in (("pe", b"MZ"), *NEEDLES, *LEADING):
        if head.startswith(needle) and verify(kind, buf, 0) is not None:
            return kind
    if head.startswith(b"\x1f\x8b\x08"):
        return "gzip"
    if head.startswith(LNK_HEADER):
        return "lnk"
    stripped = head.lstrip(b"\x00 \t\r\n\xef\xbb\xbf\xff\xfe")  # and the UTF-8 and UTF-16 byte order marks
    start = bytes(buf[:HEAD])
    if SCRIPT.search(start) and stripped[:1] in (b"#", b"<", b"@", b"p", b"P", b"c", b"C", b"I"):
        return "script"
    text = _text(start)
    if text is not None and (TEXT_SCRIPT.search(text) or _batch(text, len(buf) > HEAD)):
        return "script"
    return None


#: File names Windows runs on a double-click (or AutoPlay): scripts for cmd.exe, PowerShell and
#: Windows Script Host (.wsh its settings, naming a script), HTML applications, shortcuts and
#: screen savers (PE files by another name); also what runs with no header to know it by: a .com
#: (MS-DOS programs have none; a PE named .com runs as well) and a .pif; installers (.msi, .msp:
#: OLE files msiexec runs), Control Panel items (.cpl), compiled HTML Help (.chm), console
#: snap-ins (.msc) and registry files (.reg, which regedit merges).
SCRIPT_EXTENSIONS = frozenset({".bat", ".cmd", ".ps1", ".vbs", ".vbe", ".js", ".jse", ".wsf", ".wsh", ".hta", ".lnk",
                               ".scr", ".com", ".pif", ".msi", ".msp", ".cpl", ".chm", ".msc", ".reg"})


def base_name(name: str) -> str:
    """The last part of a path or of an archive member's name ("a.zip!dir/x.bat" gives x.bat)."""
    return re.split(r"[/\\!]", name)[-1]


def script_name(name: str) -> bool:
    """Is ``name`` (a path, or an archive member "a.zip!dir/x") one Windows runs as a program or
    script, whatever it holds: SCRIPT_EXTENSIONS, and AUTORUN.INF (AutoPlay, any case)?"""
    base = base_name(name).lower()
    dot = base.rfind(".")
    return base == "autorun.inf" or (dot > 0 and base[dot:] in SCRIPT_EXTENSIONS)


#: URL schemes that run script where a viewer puts a value in a link or a source (HTML Living
#: Standard 7.11.1; data: with an HTML type renders a page), searched in text decoded as a browser
#: decodes an attribute value: character references (HTML 13.2.5.72) undone, then the tab, line
#: feed and carriage return the URL parser removes anywhere (WHATWG URL 4.4), and NUL, dropped.
SCHEMES = re.compile(r"(?:java|vb)script:|data:text/html", re.IGNORECASE)
#: Bytes a browser removes or decodes before it reads a URL's scheme.
_URL_NOISE = str.maketrans("", "", "\t\n\r\x00")


#: An ISO 2022 escape sequence (ISO/IEC 2022 13; PS3.5 6.1.2.5): ESC, intermediate bytes 0x20-0x2F,
#: a final byte 0x30-0x7E. Readers decoding a value drop it: "<scr ESC ( B ipt>" shows as "<script>".
ISO2022_ESCAPE = re.compile(rb"\x1b[\x20-\x2f]*[\x30-\x7e]")


def unescaped(buf: bytes) -> bytes:
    """``buf`` without its ISO 2022 escape sequences, as a reader decoding it shows it (PS3.5
    6.1.2.5); ``buf`` itself when it holds no ESC (nearly every value: no cost)."""
    raw = bytes(buf)
    return ISO2022_ESCAPE.sub(b"", raw) if b"\x1b" in raw else raw


def markup(buf: bytes) -> int | None:
    """Where ``buf`` (a short text a web viewer shows) holds script or markup: SCRIPT's openings as
    written, or a script-running URL scheme once decoded as a browser decodes an attribute value
    (&#106;avascript:, java&#x09;script:, javascript&colon;). The text is judged without its ISO
    2022 escape sequences (PS3.5 6.1.2.5), as readers show it. None: nothing."""
    buf = unescaped(buf)
    hits = scripts(buf, limit=1)
    if hits:
        return hits[0].offset
    return 0 if url_scheme(buf) else None


def url_scheme(buf: bytes) -> bool:
    """Does ``buf`` hold a script-running URL scheme once decoded as a browser decodes an attribute
    value: character references undone (HTML 13.2.5.72: &#106;avascript:, javascript&colon;),
    then tab, line feed, carriage return and NUL removed (WHATWG URL 4.4: java&#x09;script:)?"""
    text = bytes(buf).decode("latin-1")
    if "&" in text:  # most values have none: no decoding
        text = html.unescape(text)
    return SCHEMES.search(text.translate(_URL_NOISE)) is not None


def scripts(buf: bytes, limit: int = 4) -> list[Hit]:
    """Script or markup openings anywhere in ``buf`` (case-insensitive)."""
    out: list[Hit] = []
    for match in SCRIPT.finditer(bytes(buf)):
        out.append(Hit("script", match.start()))
        if len(out) >= limit:
            break
    return out


#: Programs a script written as plain commands runs to fetch, open a shell or run what it fetched:
#: POSIX shells and interpreters, downloaders, network tools, and Windows' own programs that do the
#: same (PowerShell, certutil, mshta, bitsadmin...): what a dropper without a "#!" line is made of.
_COMMAND_PROGRAMS = (
    "curl", "wget", "fetch", "tftp", "ftp", "scp", "sh", "bash", "dash", "zsh", "ksh", "ash", "busybox", "nc", "ncat",
    "netcat", "socat", "telnet", "python[0-9.]*", "perl", "ruby", "php", "node", "lua", "chmod", "chown", "rm",
    "mkfifo", "base64", "openssl", "xxd", "eval", "crontab", "nohup", "setsid", "powershell", "pwsh", "certutil",
    "mshta", "bitsadmin", "rundll32", "regsvr32", "wscript", "cscript", "msiexec", "schtasks", "wmic", "iex")
#: One of them as a command: first on a line of text or after a shell's separator (; & | ` $( or
#: a newline), behind sudo/env/exec and a path if any; then the rest of its line.
COMMAND = re.compile(rb"(^|[;&|`\n]|\$\()[ \t]*(?:(?:sudo|env|exec|nohup|setsid|command)[ \t]+)*(?:[\w.~-]*/)*"
                     rb"(?i:" + "|".join(_COMMAND_PROGRAMS).encode() + rb")(?i:\.exe)?(?=[ \t|;&<>]|$)([^\n]*)",
                     re.MULTILINE)
#: What a command line has and a sentence about the program does not: a URL, a pipe, a separator,
#: a redirection, a substitution, an option, a mode change, a socket or a temporary file.
COMMAND_SYNTAX = re.compile(rb"://|[|;`<>]|&&|\$\(|[ \t]--?[A-Za-z]|[ \t][+-]x\b|/dev/(?:tcp|udp)/|/tmp/")
#: Text inside binary bytes: a run of printable ASCII (tab included) at least this long.
_TEXT_RUN = re.compile(rb"[\t\x20-\x7e]{6,}")


def command_line(buf: bytes) -> Hit | None:
    """Commands a shell or cmd.exe runs, judged by content, not by a "#!" line (POSIX exec needs none:
    ``sh file`` runs any text): in each run of printable text of ``buf`` (NUL padding, binary bytes
    and line ends split runs), a program of _COMMAND_PROGRAMS used as a command with command-line
    syntax (COMMAND_SYNTAX: ``curl http://x/a|sh``, ``wget ...; chmod +x ...``, ``powershell -enc``),
    or what Windows Script Host and PowerShell droppers write (TEXT_SCRIPT). The Hit is the first,
    with its text in ``of``."""
    for run in _TEXT_RUN.finditer(bytes(buf)):
        text = run.group()
        for m in COMMAND.finditer(text):
            # After a separator the command is chained or piped into: shell syntax already.
            if m.group(1) not in (b"", b"\n") or COMMAND_SYNTAX.search(m.group(2)):
                return Hit("script", run.start() + m.start(1) + len(m.group(1)), of=text.decode("ascii").strip())
        if (m2 := TEXT_SCRIPT.search(text)) is not None:
            return Hit("script", run.start() + m2.start(), of=text.decode("ascii").strip())
    return None
