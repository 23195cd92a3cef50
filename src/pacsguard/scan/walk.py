"""What `pacsguard scan PATH...` scans: files, folders (DICOMDIR media copied or mounted as a
folder), and archives, nested, with bomb limits. Every input becomes Items: a file to scan, or a
file reported as skipped and why (device, symlink loop, unreadable, too big, 0 bytes); nothing
stops the walk. Archives are known by their content, whatever they are called (`sniff`): zip,
tar, and gzip, bzip2 or xz, of a tar or of a single file. Archive members are checked as ZIP
media may hold them (PS3.12, ZIP file media: no encryption, no executable content) before they
are scanned."""

from __future__ import annotations

import bz2
import errno
import gzip
import io
import lzma
import os
import re
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pacsguard.scan import signatures
from pacsguard.scan.model import Finding, Level
from pacsguard.scan.report import display_path

REF = "PS3.12 (ZIP file media)"


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    """Bounds on expanding archives (zip bombs: ratio, total, nesting, member count)."""

    max_ratio: int = 100
    max_total: int = 4 * 1024**3
    max_depth: int = 4
    max_members: int = 100_000
    max_member: int = 2 * 1024**3


@dataclass(slots=True)
class Item:
    """One thing to report on: a file on disk (``path``), a member's bytes (``data``), a skipped
    entry (``skipped``), or an archive's own findings (``findings``; ``container`` set)."""

    name: str
    path: Path | None = None
    data: bytes | None = None
    skipped: str = ""
    findings: list[Finding] = field(default_factory=list)
    container: bool = False
    size: int = 0


#: (st_dev, st_ino, real path or ""): one file or folder, whatever the names it is reached by.
Key = tuple[int, int, str]


@dataclass(slots=True)
class _Seen:
    """What one walk has met, so that each file and folder is scanned once."""

    excluded: dict[Key, str]
    files: dict[Key, str] = field(default_factory=dict)
    folders: dict[Key, str] = field(default_factory=dict)
    given: dict[Key, str] = field(default_factory=dict)  # the PATH arguments

    def repeat(self, path: Path, key: Key, *, given: bool, folder: bool) -> str:
        """Why ``path`` is not scanned again (its skip reason), or "" the first time it is met."""
        name = str(path)
        if folder and key in self.excluded:
            return f"excluded ({self.excluded[key]})"
        first_given = self.given.get(key) if given else None
        if given:
            self.given.setdefault(key, name)
        book = self.folders if folder else self.files
        first = book.get(key)
        if first is None:
            book[key] = name
            return ""
        if first_given is not None:
            return "given twice" if first_given == name else f"given twice (also as {display_path(first_given)})"
        if folder and Path(first) in path.parents:  # a link back to a folder this one is inside
            return f"symlink loop (back to {display_path(first)})"
        return f"already scanned (as {display_path(first)})"


def walk(paths: list[Path], limits: ArchiveLimits = ArchiveLimits(),
         exclude: Sequence[tuple[Path, str]] = ()) -> Iterator[Item]:
    """Items for every file under ``paths`` (folders recursively, symlinks followed once). Each
    file is scanned once however it is reached (a PATH given twice, a folder inside another
    PATH, a symbolic link): a repeat is a skipped Item naming the first. The folders in
    ``exclude`` (folder, why: pacsguard's own --quarantine and --out) are not walked into."""
    seen = _Seen(_keys(exclude))
    for path in paths:
        yield from _walk_one(path, seen, limits)


def _keys(folders: Sequence[tuple[Path, str]]) -> dict[Key, str]:
    keys: dict[Key, str] = {}
    for folder, why in folders:
        try:
            st = folder.stat()
        except OSError:
            continue  # not there: nothing to keep out
        keys[_key(folder, st)] = why
    return keys


def _walk_one(root: Path, seen: _Seen, limits: ArchiveLimits) -> Iterator[Item]:
    pending = [(root, True)]
    while pending:
        path, given = pending.pop()
        try:
            st = path.stat()
        except OSError as exc:
            yield Item(str(path), skipped=_stat_failed(path, exc, given=given))
            continue
        folder = stat.S_ISDIR(st.st_mode)
        repeat = seen.repeat(path, _key(path, st), given=given, folder=folder)
        if repeat:
            yield Item(str(path), skipped=repeat)
            continue
        if folder:
            try:
                children = sorted(os.scandir(path), key=lambda e: e.name, reverse=True)
            except OSError as exc:
                yield Item(str(path), skipped=f"unreadable folder: {exc.strerror or exc}")
                continue
            pending.extend((Path(c.path), False) for c in children)
            continue
        yield from _file_items(path, st, limits)


def _key(path: Path, st: os.stat_result) -> Key:
    """What makes a file the same file. A file with hard links is told apart by its real path:
    each name is a place the infected bytes stay (and --quarantine must empty), while a symbolic
    link to it resolves to the same place."""
    real = os.path.realpath(path) if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode) else ""
    return (st.st_dev, st.st_ino, real)


def _stat_failed(path: Path, exc: OSError, *, given: bool) -> str:
    """The skip reason of a path that cannot be looked at."""
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno == errno.ENOENT:
        if path.is_symlink():
            return "dangling symlink"
        # A PATH typed wrong (the CLI exits 2 for it) or a file moved while the scan ran.
        return "no such file or folder" if given else "gone during the scan (moved or deleted)"
    return f"unreadable: {exc.strerror or exc}"


def _file_items(path: Path, st: os.stat_result, limits: ArchiveLimits) -> Iterator[Item]:
    """A file that is not a folder: skipped, scanned, or expanded when its content is an archive."""
    if not stat.S_ISREG(st.st_mode):
        kind = "device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else \
            "FIFO" if stat.S_ISFIFO(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode) else "special file"
        yield Item(str(path), skipped=f"not a regular file ({kind})")
        return
    if st.st_size == 0:
        yield Item(str(path), skipped="empty (0 bytes)")
        return
    sniffed = _sniff_file(path, st.st_size)
    if sniffed is None:
        yield Item(str(path), path=path, size=st.st_size)
        return
    try:
        data = path.read_bytes() if st.st_size <= limits.max_member else b""
    except OSError as exc:
        yield Item(str(path), skipped=f"unreadable: {exc.strerror or exc}")
        return
    if not data:
        yield Item(str(path), skipped=f"archive larger than the limit ({st.st_size:,} bytes)", size=st.st_size)
        return
    notes: list[Finding] = []
    opened = _open(sniffed, data, notes)
    if opened is None:  # not the container it looked like: the file it is, read again by the scan
        yield Item(str(path), path=path, size=st.st_size, findings=notes)
        return
    yield from expand(str(path), path.name, data, sniffed.kind, opened, limits, 0)


ZIP, TAR, GZIP, BZIP2, XZ = "zip", "tar", "gzip", "bzip2", "xz"
#: tarfile's mode for a tar inside each compressed stream (a .tar.gz, whatever its name).
TAR_MODES: dict[str, Literal["r:gz", "r:bz2", "r:xz"]] = {GZIP: "r:gz", BZIP2: "r:bz2", XZ: "r:xz"}
DESCRIBED = {ZIP: "a zip archive", TAR: "a tar archive", GZIP: "a gzip stream", BZIP2: "a bzip2 stream",
             XZ: "an xz stream"}
#: What gunzip, bunzip2 and unxz take off a name to name what they write.
SUFFIXES = {GZIP: (".gz", ".gzip", ".z"), BZIP2: (".bz2", ".bz"), XZ: (".xz",)}
#: The bytes sniffed at the start: one tar header block (POSIX ustar: 512 bytes, "ustar" at 257).
HEAD = 512
#: The end of central directory record is 22 bytes and a comment of up to 65,535 (APPNOTE.TXT
#: 4.3.16): zipfile looks for it in this many last bytes, so does `sniff`.
EOCD, EOCD_SIZE = b"PK\x05\x06", 22
TAIL = EOCD_SIZE + 0xFFFF
#: A zip's first bytes: a local file header (APPNOTE 4.3.7), an empty archive's end record, or the
#: split/spanning signature or its temporary "PK00" before the first header (APPNOTE 8.5.3, 8.5.4).
SPLIT_MARKERS = (b"PK\x07\x08", b"PK00")
ZIP_STARTS = (b"PK\x03\x04", EOCD, *(marker + b"PK\x03\x04" for marker in SPLIT_MARKERS))
#: What a member name stands for when it is the bytes before a zip (a self-extractor's program).
BEFORE_ZIP = "(data before the zip)"
#: What the archive readers raise on damaged input (zlib.error and LZMAError are no OSError).
ARCHIVE_ERRORS = (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError, RuntimeError, zlib.error,
                  lzma.LZMAError, struct.error)


@dataclass(frozen=True, slots=True)
class Sniffed:
    """A container known by its content: its ``kind`` and whether its magic number starts the bytes
    (``at_start``); a zip known only by an end record near the end may be bytes that hold one by
    chance, so failing to open it is no finding."""

    kind: str
    at_start: bool


def part10(head: bytes) -> bool:
    """"DICM" after the 128-byte preamble (PS3.10 7.1), or at 0 where a writer left the preamble out
    (part10 reads both as DICOM): scanned as DICOM, whatever the preamble or the end holds (an
    appended zip is the polyglot rule's, a zip header in the preamble the preamble rule's)."""
    return head[128:132] == b"DICM" or head[:4] == b"DICM"


def sniff(head: bytes, tail: Callable[[], bytes]) -> Sniffed | None:
    """The container ``head`` (the first HEAD bytes) starts or ``tail()`` (the last TAIL bytes, read
    only when the start says nothing) ends, whatever the name; None for a Part-10 file first:
    gzip ID1 ID2 1F 8B (RFC 1952 2.3.1), bzip2 "BZh" and a block size 1-9, xz FD 37 7A 58 5A 00
    (xz file format 2.1.1.1), a zip's first bytes (ZIP_STARTS), a tar header ("ustar" at 257, or a
    pre-POSIX header whose checksum at 148 holds: POSIX ustar), else a zip's end of central
    directory record in the tail, as zipfile.is_zipfile looks for it (APPNOTE.TXT 4.3.16): bytes
    before a zip (a self-extractor) do not hide it."""
    if part10(head):
        return None
    kind = _magic(head)
    if kind is not None:
        return Sniffed(kind, True)
    return Sniffed(ZIP, False) if _ends_as_zip(tail()) else None


def _ends_as_zip(end: bytes) -> bool:
    """Whether ``end`` (a file's last TAIL bytes) holds a zip's end of central directory record:
    without a comment it ends the file; with one, the last signature is where zipfile reads it."""
    return end[-EOCD_SIZE:-EOCD_SIZE + 4] == EOCD or 0 <= end.rfind(EOCD) <= len(end) - EOCD_SIZE


def _magic(head: bytes) -> str | None:
    if head.startswith(b"\x1f\x8b"):
        return GZIP
    if head.startswith(b"BZh") and head[3:4] in (b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"8", b"9"):
        return BZIP2
    if head.startswith(b"\xfd7zXZ\x00"):
        return XZ
    if head.startswith(ZIP_STARTS):
        return ZIP
    if head[257:262] == b"ustar" or _tar_header(head):
        return TAR
    return None


def _tar_header(block: bytes) -> bool:
    """A tar header block: its checksum (8 octal digits at 148) is the sum of its bytes, the field
    counted as spaces (POSIX ustar; tarfile's own test, so that it opens what this accepts)."""
    try:
        tarfile.TarInfo.frombuf(block[:HEAD], "utf-8", "surrogateescape")
    except (tarfile.HeaderError, ValueError):
        return False
    return True


def _sniff_file(path: Path, size: int) -> Sniffed | None:
    """`sniff` of a file: one read of its first bytes (all a Part-10 file costs), its last only when
    the first say nothing."""
    try:
        with path.open("rb") as f:
            head = f.read(HEAD)

            def tail() -> bytes:
                if len(head) < HEAD:  # the whole file
                    return head
                f.seek(max(0, size - TAIL))
                return f.read(TAIL)

            return sniff(head, tail)
    except OSError:
        return None  # the scan reads it, and says why it cannot


#: An opened container: a zip, a tar (compressed or not), or the first bytes of a single file
#: compressed as a gzip, bzip2 or xz stream.
Opened = zipfile.ZipFile | tarfile.TarFile | bytes


def _open(sniffed: Sniffed, data: bytes, notes: list[Finding]) -> Opened | None:
    """The container ``data`` was sniffed as, opened; None when it is not one after all (then, if its
    magic number said so, an archive.corrupt note in ``notes``, and it is scanned as a file)."""
    try:
        if sniffed.kind == ZIP:
            archive = zipfile.ZipFile(io.BytesIO(data))  # bytes before the zip are offset (APPNOTE 4.3.16)
            # An empty zip found only by its end record: 22 bytes that happen to end some other file.
            return archive if archive.infolist() or sniffed.at_start else None
        if sniffed.kind == TAR:
            return tarfile.open(fileobj=io.BytesIO(data), mode="r:")
        first, error = _inflate(sniffed.kind, data, HEAD)
        if error and not first:
            raise ValueError(error)
        if _tar_header(first):
            try:  # a compressed tar: tarfile inflates it member by member as it reads
                return tarfile.open(fileobj=io.BytesIO(data), mode=TAR_MODES[sniffed.kind])
            except ARCHIVE_ERRORS:
                pass  # a first block like a tar header and no tar: the one file it is
        return first
    except ARCHIVE_ERRORS as exc:
        if sniffed.at_start:
            notes.append(Finding("archive.corrupt", Level.LOW, f"starts as {DESCRIBED[sniffed.kind]} that cannot be "
                                 f"read ({display_path(str(exc))}): scanned as a file", None, REF))
        return None


def _stream(kind: str, data: bytes) -> gzip.GzipFile | bz2.BZ2File | lzma.LZMAFile:
    if kind == GZIP:
        return gzip.GzipFile(fileobj=io.BytesIO(data))
    if kind == BZIP2:
        return bz2.BZ2File(io.BytesIO(data))
    return lzma.LZMAFile(io.BytesIO(data))


#: Bytes inflated per read of a compressed stream.
CHUNK = 1 << 20


def _inflate(kind: str, data: bytes, limit: int) -> tuple[bytes, str]:
    """Up to ``limit`` bytes of the file compressed in ``data`` (one more if there are more: a bomb
    is known without inflating it), and why the stream broke off ("" if it did not). What came
    before a break is kept: read1 hands over each block as it is inflated, so a cut stream or bytes
    after it (gunzip: "trailing garbage") cost nothing already inflated."""
    out = io.BytesIO()
    try:
        with _stream(kind, data) as stream:
            while out.tell() <= limit:
                chunk = stream.read1(min(CHUNK, limit + 1 - out.tell()))
                if not chunk:
                    break
                out.write(chunk)
    except ARCHIVE_ERRORS as exc:
        return out.getvalue(), str(exc) or type(exc).__name__
    return out.getvalue(), ""


def expand(name: str, base: str, data: bytes, kind: str, opened: Opened, limits: ArchiveLimits, depth: int,
           ) -> Iterator[Item]:
    """The members of an opened container as Items, then the container's own Item with what it broke.
    ``name`` is the container as reported, ``base`` its own file or member name."""
    problems: list[Finding] = []
    try:
        if isinstance(opened, zipfile.ZipFile):
            yield from _before_zip(name, data, opened, problems, limits, depth)
            members = _zip_members(opened, len(data), problems, limits)
        elif isinstance(opened, tarfile.TarFile):
            members = _tar_members(opened, len(data), problems, limits)
        else:
            members = _stream_members(kind, base, data, problems, limits)
        yield from _member_list(name, data, members, problems, limits, depth)
        if not isinstance(opened, zipfile.ZipFile):
            yield from _appended_zip(name, data, kind, problems, limits, depth)
    except ARCHIVE_ERRORS as exc:
        problems.append(Finding("archive.corrupt", Level.LOW, f"the archive cannot be read: {display_path(str(exc))}",
                                None, REF))
    yield Item(name, findings=problems, container=True, size=len(data))


def _appended_zip(name: str, data: bytes, kind: str, problems: list[Finding], limits: ArchiveLimits,
                  depth: int) -> Iterator[Item]:
    """The members of a zip after a tar or a compressed stream: tar and gunzip read from the start,
    a zip reader from the end record (APPNOTE.TXT 4.3.16), so one file shows each its own members.
    Both sets are scanned; the file itself is a polyglot made to show tools different contents."""
    if not _ends_as_zip(data[-TAIL:]):
        return
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except ARCHIVE_ERRORS:
        return  # an end record by chance, with no zip behind it
    if not archive.infolist():
        return
    problems.append(Finding("archive.polyglot", Level.HIGH, f"{DESCRIBED[kind]} that is also a zip archive: "
                            "zip readers open other members than it holds, scanned too", None, REF))
    yield from _member_list(name, data, _zip_members(archive, len(data), problems, limits), problems, limits, depth)


def _member_list(name: str, data: bytes, members: Iterable[Member], problems: list[Finding], limits: ArchiveLimits,
                 depth: int) -> Iterator[Item]:
    """The Items of an archive's members, each read in turn, stopping at the bomb limits."""
    total = 0
    for member_name, read in members:
        try:
            content = read()
        except ARCHIVE_ERRORS as exc:
            # One damaged member (a bad CRC-32, a local header naming another file) must not hide
            # the members after it; it is not scanned itself, which must not pass unseen either.
            problems.append(Finding("archive.member-unreadable", Level.MEDIUM, f"{display_path(member_name)} "
                                    f"cannot be read, so it was not scanned (an extractor may still write "
                                    f"it out): {display_path(str(exc))}", None, REF))
            continue
        if content is None:
            continue
        total += len(content)
        bomb = _bomb(total, len(data), limits, "inflate to")
        if bomb is not None:  # headers that understate what they hold: stop at the limit
            problems.append(bomb)
            break
        yield from _member_items(f"{name}!{member_name}", member_name, content, problems, limits, depth)


def _before_zip(name: str, data: bytes, archive: zipfile.ZipFile, problems: list[Finding], limits: ArchiveLimits,
                depth: int) -> Iterator[Item]:
    """The bytes before a zip's first member, scanned as a member of their own: a self-extractor's
    program runs, its zip only feeds it (a split archive's 4-byte marker is no content)."""
    starts = [info.header_offset for info in archive.infolist()]
    start = min(starts, default=archive.start_dir)  # zipfile's offset of what came before the zip
    before = data[:max(0, min(start, archive.start_dir, len(data)))]
    if before and before not in SPLIT_MARKERS:
        yield from _member_items(f"{name}!{BEFORE_ZIP}", BEFORE_ZIP, before, problems, limits, depth)


def _member_items(full: str, member_name: str, content: bytes, problems: list[Finding], limits: ArchiveLimits,
                  depth: int) -> Iterator[Item]:
    """One member read: a nested container expanded, an executable noted, the member scanned."""
    shown = display_path(member_name)
    notes: list[Finding] = []
    sniffed = sniff(content[:HEAD], lambda: content[-TAIL:])
    opened = None if sniffed is None else _open(sniffed, content, notes)
    if sniffed is not None and opened is not None:
        if depth + 1 > limits.max_depth:
            problems.append(Finding("archive.nesting", Level.HIGH, f"archives nested deeper than "
                                    f"{limits.max_depth} ({shown})", None, REF))
            return
        yield from expand(full, member_name, content, sniffed.kind, opened, limits, depth + 1)
        return
    found = signatures.identify(content)
    if found in signatures.EXECUTABLE or found == "script":
        problems.append(Finding("archive.executable", Level.HIGH, f"{shown} is "
                                f"{signatures.DESCRIPTIONS[found]}: media carry no executable content", None, REF))
    if not content:
        yield Item(full, skipped="empty (0 bytes)")
        return
    yield Item(full, data=content, size=len(content), findings=notes)


#: Members inflating to less than this in all are never a bomb, whatever their ratio.
SMALL = 1 << 20


def _bomb(total: int, size: int, limits: ArchiveLimits, verb: str) -> Finding | None:
    """archive.bomb when members that ``verb`` ``total`` bytes in all break the archive-wide limits:
    more than max_total, or (past SMALL) more than max_ratio times the archive's own size (many
    members each small enough to pass alone, 1,500 MiB of zeros in a 1.7 MB zip)."""
    if total > limits.max_total:
        why = f"members {verb} {total:,} bytes, more than the limit ({limits.max_total:,})"
    elif total > SMALL and total > size * limits.max_ratio:
        why = (f"members {verb} {total:,} bytes from a {size:,}-byte archive ({total / max(1, size):,.0f}x, "
               f"limit {limits.max_ratio}x)")
    else:
        return None
    return Finding("archive.bomb", Level.HIGH, why + "; the rest is not read", None, REF)


#: Why a member name escapes the folder it is extracted to (zip slip, CVE-2007-4559 for tar).
TRAVERSAL_REF = "PS3.10 8.2 (File IDs); APPNOTE.TXT 4.4.17.1"
_DRIVE = re.compile(r"[A-Za-z]:")
_SEPARATORS = re.compile(r"[/\\]")


def _traversal(name: str, problems: list[Finding]) -> None:
    """archive.path-traversal for a member name that an extractor would write outside its folder:
    absolute ("/", "\\" or a drive letter: APPNOTE 4.4.17.1 forbids them) or with a ".."
    component, "/" or "\\" separated (Windows extractors split on both)."""
    if name.startswith(("/", "\\")):
        why = "an absolute path"
    elif _DRIVE.match(name):
        why = "a path on a drive"
    elif ".." in _SEPARATORS.split(name):
        why = 'a path with a ".." component'
    else:
        return
    problems.append(Finding("archive.path-traversal", Level.HIGH, f"member {display_path(name)!r} is {why}: "
                            "extracted, it would be written outside the extraction folder", None, TRAVERSAL_REF))


#: A member's name and how to read it (None: it broke a limit while being read, noted in problems).
Member = tuple[str, Callable[[], "bytes | None"]]


def _zip_members(archive: zipfile.ZipFile, size: int, problems: list[Finding], limits: ArchiveLimits,
                 ) -> Iterator[Member]:
    """The members worth reading. The central directory declares every size before anything is
    inflated: an archive whose members declare past the archive-wide limits is not read at all."""
    infos = archive.infolist()
    if len(infos) > limits.max_members:
        problems.append(Finding("archive.bomb", Level.HIGH, f"{len(infos):,} members (limit {limits.max_members:,})",
                                None, REF))
        infos = infos[:limits.max_members]
    wanted = [info for info in infos if _zip_member_ok(info, problems, limits)]
    bomb = _bomb(sum(info.file_size for info in wanted), size, limits, "declare")
    if bomb is not None:
        problems.append(bomb)
        return
    for info in wanted:

        def read(info: zipfile.ZipInfo = info) -> bytes | None:
            with archive.open(info) as member:
                # The header's size may lie: read one byte more than it says and no more.
                content = member.read(info.file_size + 1)
            if len(content) > info.file_size:
                problems.append(Finding("archive.bomb", Level.HIGH, f"{display_path(info.filename)} inflates past "
                                        "the size its header declares", None, REF))
                return None
            return content

        yield info.filename, read


def _zip_member_ok(info: zipfile.ZipInfo, problems: list[Finding], limits: ArchiveLimits) -> bool:
    """Whether a zip member is read: not a folder, not encrypted, not a bomb on its own."""
    _traversal(info.filename, problems)
    name = display_path(info.filename)
    if info.is_dir():
        return False
    if info.flag_bits & 0x1:
        problems.append(Finding("archive.encrypted", Level.MEDIUM, f"{name} is encrypted: it cannot be "
                                "scanned, and media may not be encrypted", None, REF))
        return False
    ratio = info.file_size / max(1, info.compress_size)
    if info.file_size > limits.max_member or (info.file_size > SMALL and ratio > limits.max_ratio):
        problems.append(Finding("archive.bomb", Level.HIGH, f"{name} inflates {ratio:,.0f}x to "
                                f"{info.file_size:,} bytes", None, REF))
        return False
    return True


def _tar_members(archive: tarfile.TarFile, size: int, problems: list[Finding], limits: ArchiveLimits,
                 ) -> Iterator[Member]:
    """The regular members, their sizes summed as the headers come (a compressed tar has no
    directory up front): reading stops once the sum breaks the archive-wide limits."""
    count = declared = 0
    for info in archive:
        count += 1
        if count > limits.max_members:
            problems.append(Finding("archive.bomb", Level.HIGH, f"more than {limits.max_members:,} members", None,
                                    REF))
            break
        _traversal(info.name, problems)
        if not _tar_member_ok(info, size, problems, limits):
            continue
        declared += info.size
        bomb = _bomb(declared, size, limits, "declare")
        if bomb is not None:
            problems.append(bomb)
            break

        def read(info: tarfile.TarInfo = info) -> bytes | None:
            member = archive.extractfile(info)
            return member.read(info.size) if member is not None else None

        yield info.name, read


def _tar_member_ok(info: tarfile.TarInfo, size: int, problems: list[Finding], limits: ArchiveLimits) -> bool:
    """Whether a tar member is read: a regular file, not a bomb on its own (links are checked)."""
    name = display_path(info.name)
    if info.issym() or info.islnk():
        if info.linkname.startswith("/") or ".." in Path(info.linkname).parts:
            problems.append(Finding("archive.link-traversal", Level.HIGH, f"{name} links outside the "
                                    f"archive ({display_path(info.linkname)})", None, REF))
        return False
    if not info.isfile():
        return False
    if info.size > limits.max_member or (info.size > SMALL and info.size > size * limits.max_ratio):
        problems.append(Finding("archive.bomb", Level.HIGH, f"{name} is {info.size:,} bytes in a "
                                f"{size:,}-byte archive", None, REF))
        return False
    return True


def _stream_members(kind: str, base: str, data: bytes, problems: list[Finding], limits: ArchiveLimits,
                    ) -> Iterator[Member]:
    """The one file a gzip (RFC 1952; its members, concatenated, are one file), bzip2 or xz stream
    holds, named as gunzip would name it, inflated no further than the bomb limits allow: more
    than max_archive_ratio times the stream past 1 MiB, max_archive_total, the largest file."""
    ratio_bound = max(SMALL, len(data) * limits.max_ratio)
    bound = min(ratio_bound, limits.max_total, limits.max_member)
    member = _stream_name(base, kind)

    def read() -> bytes | None:
        content, error = _inflate(kind, data, bound)
        if len(content) > bound:
            why = (f"more than {limits.max_ratio}x the {len(data):,}-byte stream" if bound == ratio_bound
                   else f"past the limit of {bound:,} bytes")
            problems.append(Finding("archive.bomb", Level.HIGH, f"{display_path(member)} inflates {why}; "
                                    "the rest is not read", None, REF))
            return None
        if error:
            problems.append(Finding("archive.corrupt", Level.LOW, f"the {kind} stream breaks off after "
                                    f"{len(content):,} bytes ({display_path(error)}): what came before is "
                                    "scanned", None, REF))
        return content

    yield member, read


def _stream_name(name: str, kind: str) -> str:
    """What gunzip (bunzip2, unxz) names the file it writes: the last part of ``name`` (a member's
    may have folders) without its suffix, or as it is when it has none."""
    base = _SEPARATORS.split(name)[-1]
    for suffix in SUFFIXES[kind]:
        if base.lower().endswith(suffix) and len(base) > len(suffix):
            return base[:-len(suffix)]
    return base
