"""What `pacsguard scan PATH...` scans: files, folders (DICOMDIR media copied or mounted as a
folder), and archives, nested, with bomb limits. Every input becomes Items: a file to scan, or a
file reported as skipped and why (device, symbolic link, unreadable, too big, 0 bytes); nothing
stops the walk. As clamscan by default, a symbolic link met inside a folder is not followed (it is
reported, naming its target); a PATH that is a link is followed (the administrator named it). Files
are opened without following a link and only when they are regular (a FIFO or a device swapped in
after the walk never blocks a read), and by directory file descriptors past PATH_MAX, as find(1)
reaches them. A file that exists and cannot be read is not judged clean: it carries a
scan.not-scanned finding (medium). Archives are known by their content, whatever they are called
(`sniff`): zip, tar, and gzip, bzip2, xz or LZMA-alone, of a tar or of a single file; a stream
the standard library cannot open (LZ4, lzip...) is noted, not passed as clean. Archive members
are checked as ZIP media may hold them (PS3.12, ZIP file media: no encryption, no executable
content) and as a Windows import station would write them before they are scanned; the bomb
limits count the whole archive file, nested archives included (`Bounds`)."""

from __future__ import annotations

import bz2
import errno
import gzip
import io
import itertools
import lzma
import os
import re
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

from pacsguard.scan import disc, signatures
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
class Spent:
    """What one archive's walk has read so far, every section and nested archive included."""

    members: int = 0
    total: int = 0
    over: bool = False  # a whole-archive limit broke: nothing more of the archive is read


@dataclass(frozen=True, slots=True)
class Bounds(ArchiveLimits):
    """The limits as one archive on disk spends them: max_archive_members and max_archive_total
    (and max_archive_ratio against ``size``, the archive's own bytes) count the whole archive,
    nested archives and every section of a tar read past damage included, not each level or
    section on its own (a bomb of 10 nested archives, each under the limits, breaks them)."""

    size: int = 0
    spent: Spent = field(default_factory=Spent)

    @classmethod
    def of(cls, limits: ArchiveLimits, size: int) -> Bounds:
        """``limits`` for an archive of ``size`` bytes (a Bounds already: the same one, shared)."""
        if isinstance(limits, Bounds):
            return limits
        return cls(**{f.name: getattr(limits, f.name) for f in fields(ArchiveLimits)}, size=size)


@dataclass(slots=True)
class Item:
    """One thing to report on: a file on disk (``path``), a member's bytes (``data``), a skipped
    entry (``skipped``), or an archive's own findings (``findings``; ``container`` set) and bytes
    (``own``: YARA and clamd look at them whole, as clamscan and yara do: a zip's comment or data
    after a tar's end belong to no member)."""

    name: str
    path: Path | None = None
    data: bytes | None = None
    skipped: str = ""
    findings: list[Finding] = field(default_factory=list)
    container: bool = False
    size: int = 0
    own: bytes | None = None


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
    """Items for every file under ``paths``: folders recursively, a symbolic link met inside one
    reported and not followed (a PATH that is a link is followed). Each file is scanned once
    however it is reached (a PATH given twice, a folder inside another PATH): a repeat is a
    skipped Item naming the first. The folders in ``exclude`` (folder, why: pacsguard's own
    --quarantine and --out) are not walked into."""
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


#: What the walk holds for a path still to look at: the path, whether it is a PATH given, and its
#: lstat (None for a PATH given: it is stat'ed then, following a link the administrator named).
_Pending = tuple[Path, bool, "os.stat_result | None"]


def _walk_one(root: Path, seen: _Seen, limits: ArchiveLimits) -> Iterator[Item]:
    pending: list[_Pending] = [(root, True, None)]
    while pending:
        path, given, st = pending.pop()
        if st is None:
            try:
                st = path.stat()
            except OSError as exc:
                yield _not_looked_at(path, _stat_failed(path, exc, given=given), exc)
                continue
        if stat.S_ISLNK(st.st_mode):
            yield Item(str(path), skipped=_link_skipped(path))
            continue
        folder = stat.S_ISDIR(st.st_mode)
        repeat = seen.repeat(path, _key(path, st), given=given, folder=folder)
        if repeat:
            yield Item(str(path), skipped=repeat)
            continue
        if folder:
            try:
                children = _children(path, follow=given)
            except OSError as exc:
                yield _not_looked_at(path, _folder_failed(exc), exc)
                continue
            for name, child in reversed(children):
                if child is None:  # listed, then gone before it could be looked at
                    yield Item(str(path / name), skipped="gone during the scan (moved or deleted)")
                else:
                    pending.append((path / name, False, child))
            continue
        # A PATH that is a link to a file is read as the file it names (the administrator named it).
        real = Path(os.path.realpath(path)) if given and path.is_symlink() else path
        yield from _file_items(path, real, st, limits)


def _children(folder: Path, *, follow: bool) -> list[tuple[str, os.stat_result | None]]:
    """A folder's entries by name, each lstat'ed (None: gone since it was listed). The folder is
    opened as a descriptor (past PATH_MAX too), never through a link unless it is a PATH given."""
    fd = open_path(folder, DIR_FLAGS if follow else DIR_FLAGS | os.O_NOFOLLOW)
    try:
        with os.scandir(fd) as entries:
            out: list[tuple[str, os.stat_result | None]] = []
            for entry in entries:
                try:
                    out.append((entry.name, entry.stat(follow_symlinks=False)))
                except OSError:
                    out.append((entry.name, None))
    finally:
        os.close(fd)
    return sorted(out, key=lambda child: child[0])


def _link_skipped(path: Path) -> str:
    """The skip reason of a symbolic link met inside a folder, naming where it leads: followed, it
    could lead the scan (and --quarantine) out of the medium, to /usr/bin (clamscan's default)."""
    try:
        target = os.readlink(path) if len(os.fsencode(path)) < PATH_CHUNK else _readlink_long(path)
    except OSError:
        target = "?"
    return f"symbolic link, not followed (-> {display_path(target)})"


def _readlink_long(path: Path) -> str:
    fd = open_path(path.parent, DIR_FLAGS)
    try:
        return os.readlink(path.name, dir_fd=fd)
    finally:
        os.close(fd)


def _folder_failed(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:  # swapped for a link since it was listed
        return "symbolic link, not followed"
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return "gone during the scan (moved or deleted)"
    return f"unreadable folder: {exc.strerror or exc}"


def _not_looked_at(path: Path, why: str, exc: OSError) -> Item:
    """A path skipped for an error: a scan.not-scanned finding when it exists and cannot be read."""
    return Item(str(path), skipped=why, findings=[not_scanned(why)] if failed(exc) else [])


def failed(exc: OSError) -> bool:
    """Whether an error opening or reading a file means it exists and could not be read (permissions,
    an I/O error, a name too long), rather than it being gone, a link or a loop."""
    return exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)


def _key(path: Path, st: os.stat_result) -> Key:
    """What makes a file the same file. A file with hard links is told apart by its real path:
    each name is a place the infected bytes stay (and --quarantine must empty)."""
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


#: The skip reason of a file that could not be held in memory to be scanned (MemoryError).
OUT_OF_MEMORY = "out of memory while scanning it"

#: The rule of a file that exists and could not be read: not judged clean (it fails at the
#: default fail_on), as clamscan counts a file it could not read as an error, not as clean.
NOT_SCANNED = "scan.not-scanned"


def not_scanned(why: str) -> Finding:
    """The finding of a file (or folder) that exists and could not be read."""
    return Finding(NOT_SCANNED, Level.MEDIUM, f"could not be scanned ({display_path(why)}): what cannot be read "
                   "is not judged clean", None, "")


#: Opening a file to read: never through a symbolic link, never blocking on a FIFO swapped in
#: after the walk saw a file (the open returns; fstat then says it is no regular file).
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
#: Bytes of a path opened at once when the whole is longer than the system takes (PATH_MAX).
PATH_CHUNK = 2048


def open_path(path: Path | str, flags: int) -> int:
    """os.open(path, flags), also past PATH_MAX (ENAMETOOLONG): then a few folders at a time, each
    opened relative to the last (openat), as find(1) reaches them. ``flags`` apply to the last
    component; the folders before it are opened as named."""
    try:
        return os.open(path, flags)
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
    text = os.fsencode(path)
    head, _, last = text.rpartition(b"/")
    fd = os.open(b"/" if text.startswith(b"/") else b".", DIR_FLAGS)
    try:
        for chunk in _chunks(head):
            inner = os.open(chunk, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = inner
        return os.open(last, flags, dir_fd=fd)
    finally:
        os.close(fd)


def _chunks(folders: bytes) -> Iterator[bytes]:
    """``folders`` ("a/b/c...") as relative paths of at most PATH_CHUNK bytes (a name is at most 255)."""
    chunk: list[bytes] = []
    size = 0
    for name in (n for n in folders.split(b"/") if n):
        if chunk and size + len(name) + 1 > PATH_CHUNK:
            yield b"/".join(chunk)
            chunk, size = [], 0
        chunk.append(name)
        size += len(name) + 1
    if chunk:
        yield b"/".join(chunk)


class NotRead(Exception):
    """A file not read: ``reason`` is its skip reason; ``findings`` a scan.not-scanned finding when
    it exists and could not be read (a FIFO, a link or a file gone are no such failure)."""

    def __init__(self, reason: str, *, failed: bool = False, size: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.size = size
        self.findings = [not_scanned(reason)] if failed else []


def read_regular(path: Path, limit: int, *, too_big: str = "larger than the limit") -> bytes:
    """The bytes of the regular file at ``path``, at most ``limit`` of them: opened without following
    a link and without blocking (O_NOFOLLOW | O_NONBLOCK), the opened descriptor fstat'ed, so that
    a file swapped for a FIFO, a device or a link to /dev/zero after the walk saw it is skipped, and
    a file that grows while it is read is cut at the limit. Raises NotRead."""
    try:
        fd = open_path(path, READ_FLAGS)
    except OSError as exc:
        raise NotRead(_open_failed(exc), failed=failed(exc)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRead(f"not a regular file ({_kind(st)})")
        if st.st_size == 0:
            raise NotRead("empty (0 bytes)")
        if st.st_size > limit:
            raise NotRead(f"{too_big} ({st.st_size:,} > {limit:,} bytes)", size=st.st_size)
        data = _read_fd(fd, limit + 1, st.st_size)
    except OSError as exc:
        raise NotRead(f"unreadable: {exc.strerror or exc}", failed=True, size=0) from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise NotRead(f"{too_big} (more than {limit:,} bytes)", size=len(data))
    return data


#: Bytes asked for at once past a file's size as fstat gave it (a file that grew since).
READ_CHUNK = 16 * 1024 * 1024


def _read_fd(fd: int, most: int, size: int) -> bytes:
    """At most ``most`` bytes of the file, to its end. FileIO.read(n) allocates n bytes before it
    reads: asked for ``most`` (the 2 GiB limit) it reserved 2 GiB for every file, which fails
    (MemoryError) where memory is not overcommitted (vm.overcommit_memory=2, a ulimit -v). So the
    first read asks for the size fstat gave and one byte more, and a file that grew since is read
    on in READ_CHUNK pieces."""
    parts: list[bytes] = []
    got = 0
    with io.FileIO(fd, closefd=False) as f:
        while got < most:
            chunk = f.read(min(most - got, size + 1 - got if got <= size else READ_CHUNK))
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _open_failed(exc: OSError) -> str:
    """The skip reason of a file that could not be opened to be read."""
    if exc.errno == errno.ELOOP:  # O_NOFOLLOW: a link (swapped in since the walk saw a file)
        return "symbolic link, not followed"
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return "gone during the scan (moved or deleted)"
    return f"unreadable: {exc.strerror or exc}"


def _kind(st: os.stat_result) -> str:
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return "device"
    if stat.S_ISFIFO(st.st_mode):
        return "FIFO"
    if stat.S_ISSOCK(st.st_mode):
        return "socket"
    return "folder" if stat.S_ISDIR(st.st_mode) else "special file"


def _file_items(path: Path, real: Path, st: os.stat_result, limits: ArchiveLimits) -> Iterator[Item]:
    """A file that is not a folder: skipped, scanned, or expanded when its content is an archive.
    ``real`` is where it is read (``path`` itself, or the file a PATH given as a link names)."""
    if not stat.S_ISREG(st.st_mode):
        yield Item(str(path), skipped=f"not a regular file ({_kind(st)})")
        return
    if st.st_size == 0:
        yield Item(str(path), skipped="empty (0 bytes)")
        return
    sniffed = _sniff_file(real)
    if sniffed is None or sniffed.kind in UNOPENED:
        # A stream that cannot be opened is still scanned as the file it is, with what it hides noted.
        yield Item(str(path), path=real, size=st.st_size, findings=[] if sniffed is None else [unopened(sniffed.kind)])
        return
    notes: list[Finding] = []
    try:
        data = read_regular(real, limits.max_member, too_big="archive larger than the limit")
        opened = _open(sniffed, data, notes, limits.max_members)
    except NotRead as exc:
        yield Item(str(path), skipped=exc.reason, findings=exc.findings, size=exc.size or st.st_size)
        return
    except MemoryError:
        # The archive itself cannot be held (a scan with an address space limit, other jobs): this
        # file is not scanned, the walk goes on (as scan_item does for a file).
        yield Item(str(path), skipped=OUT_OF_MEMORY, findings=[not_scanned(OUT_OF_MEMORY)], size=st.st_size)
        return
    if opened is None:  # not the container it looked like: the file it is, read again by the scan
        yield Item(str(path), path=real, size=st.st_size, findings=notes)
        return
    for item in expand(str(path), path.name, data, sniffed.kind, opened, limits, 0, notes):
        if item.container and item.name == str(path):
            item.path = real  # the archive on disk (what --quarantine moves when a member fails)
        yield item

ZIP, TAR, GZIP, BZIP2, XZ, LZMA, DISC = "zip", "tar", "gzip", "bzip2", "xz", "lzma", "disc"
#: tarfile's mode for a tar inside each compressed stream (a .tar.gz, whatever its name; "r:xz"
#: reads an LZMA-alone stream too: lzma.LZMAFile's FORMAT_AUTO takes both).
TAR_MODES: dict[str, Literal["r:gz", "r:bz2", "r:xz"]] = {GZIP: "r:gz", BZIP2: "r:bz2", XZ: "r:xz", LZMA: "r:xz"}
DESCRIBED = {ZIP: "a zip archive", TAR: "a tar archive", GZIP: "a gzip stream", BZIP2: "a bzip2 stream",
             XZ: "an xz stream", LZMA: "an LZMA stream", DISC: "a disc image"}
#: What gunzip, bunzip2, unxz and unlzma take off a name to name what they write.
SUFFIXES = {GZIP: (".gz", ".gzip", ".z"), BZIP2: (".bz2", ".bz"), XZ: (".xz",), LZMA: (".lzma",)}
#: Compressed streams known by their magic number that the standard library cannot open, so what
#: they hold (a .tar.lz4's members) is not scanned: an archive.unopened finding names the format.
#: Zstandard, 7-Zip and RAR are structure.unopened-archive's (the structure rules know them).
UNOPENED: dict[str, tuple[bytes, str]] = {
    "lz4": (b"\x04\x22\x4d\x18", "an LZ4 frame (.lz4)"),
    "lz4-legacy": (b"\x02\x21\x4c\x18", "an LZ4 legacy frame (.lz4)"),
    "lzip": (b"LZIP", "an lzip stream (.lz)"),
    "lzop": (b"\x89LZO\x00\r\n\x1a\n", "an lzop stream (.lzo)"),
    "bzip3": (b"BZ3v1", "a bzip3 stream (.bz3)"),
    "compress": (b"\x1f\x9d", "a compress (LZW) stream (.Z)"),
}
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
    chance, so failing to open it is no finding. ``unopened``: the kind of UNOPENED stream the
    bytes start with when a zip ends them (the zip is opened, the stream noted)."""

    kind: str
    at_start: bool
    unopened: str = ""


def part10(head: bytes) -> bool:
    """"DICM" after the 128-byte preamble (PS3.10 7.1), or at 0 where a writer left the preamble out
    (part10 reads both as DICOM): scanned as DICOM, whatever the preamble or the end holds (an
    appended zip is the polyglot rule's, a zip header in the preamble the preamble rule's)."""
    return head[128:132] == b"DICM" or head[:4] == b"DICM"


def sniff(head: bytes, tail: Callable[[], bytes], descriptors: Callable[[], bytes] = bytes) -> Sniffed | None:
    """The container ``head`` (the first HEAD bytes) starts or ``tail()`` (the last TAIL bytes, read
    only when the start says nothing) ends, whatever the name; None for a Part-10 file first:
    gzip ID1 ID2 1F 8B (RFC 1952 2.3.1), bzip2 "BZh" and a block size 1-9, xz FD 37 7A 58 5A 00
    (xz file format 2.1.1.1), a zip's first bytes (ZIP_STARTS), a tar header ("ustar" at 257, or a
    pre-POSIX header whose checksum at 148 holds: POSIX ustar), else a zip's end of central
    directory record in the tail, as zipfile.is_zipfile looks for it (APPNOTE.TXT 4.3.16): bytes
    before a zip (a self-extractor) do not hide it. Between the two, ``descriptors()`` (the bytes
    from disc.FIRST_DESCRIPTOR on): an ISO 9660 or UDF disc image, whose files are opened as
    members; its last file may be a zip, which is that file, not the image."""
    if part10(head):
        return None
    kind = _magic(head)
    if kind is None and disc.is_disc(descriptors()):
        return Sniffed(DISC, True)
    if kind in UNOPENED:
        # A zip after the stream (its end record last) is a zip to zip readers: opened, the stream noted.
        return Sniffed(ZIP, False, kind) if _ends_as_zip(tail()) else Sniffed(kind, True)
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
    if _lzma_alone(head):
        return LZMA
    return next((kind for kind, (magic, _) in UNOPENED.items() if head.startswith(magic)
                 and (kind != "compress" or _lzw_flags(head[2:3]))), None)


#: liblzma's check on an LZMA-alone dictionary size (lzma_alone_decoder, as FORMAT_AUTO reads it):
#: 2^n or 2^n + 2^(n-1) bytes, or unknown (all ones), here from liblzma's and the LZMA SDK's
#: smallest dictionary, 4 KiB; a file that merely starts with a byte below 225 is not one.
_LZMA_DICTS = frozenset({1 << n for n in range(12, 32)} | {(1 << n) + (1 << (n - 1)) for n in range(12, 32)}
                        | {0xFFFFFFFF})


def _lzma_alone(head: bytes) -> bool:
    """An LZMA-alone header (.lzma, xz-utils' lzma --format=lzma; the LZMA SDK's lzma.txt): a
    properties byte lc/lp/pb below 225, a dictionary size liblzma accepts, an uncompressed size
    unknown (all ones) or under 2^38, and the range coder's first byte 0. No magic number: these
    checks are liblzma's own when it detects the format (FORMAT_AUTO)."""
    if len(head) < 14 or head[0] > 224:
        return False
    dictionary, size = struct.unpack_from("<IQ", head, 1)
    return dictionary in _LZMA_DICTS and (size == (1 << 64) - 1 or size < 1 << 38) and head[13] == 0


def _lzw_flags(flags: bytes) -> bool:
    """compress(1)'s third byte: 9 to 16 bits per code, the unused bits 0x60 clear."""
    return bool(flags) and 9 <= flags[0] & 0x1F <= 16 and not flags[0] & 0x60


def unopened(kind: str) -> Finding:
    """archive.unopened: a compressed stream pacsguard knows and cannot open (UNOPENED): what it
    holds was not scanned, and what is not scanned is not judged clean."""
    return Finding("archive.unopened", Level.MEDIUM, f"{UNOPENED[kind][1]}, which pacsguard cannot open: what it "
                   "holds (a tar's members) was not scanned; decompress it and scan the result", 0, REF)


def _tar_header(block: bytes) -> bool:
    """A tar header block: its checksum (8 octal digits at 148) is the sum of its bytes, the field
    counted as spaces (POSIX ustar; tarfile's own test, so that it opens what this accepts)."""
    try:
        tarfile.TarInfo.frombuf(block[:HEAD], "utf-8", "surrogateescape")
    except (tarfile.HeaderError, ValueError):
        return False
    return True


def _sniff_file(path: Path) -> Sniffed | None:
    """`sniff` of a file: one read of its first bytes (all a Part-10 file costs), its last only when
    the first say nothing. Opened as read_regular opens (no link, no FIFO); None when it cannot be."""
    try:
        fd = open_path(path, READ_FLAGS)
    except OSError:
        return None  # the scan reads it, and says why it cannot
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        with io.FileIO(fd, closefd=False) as f:
            head = f.read(HEAD) or b""

            def tail() -> bytes:
                if len(head) < HEAD:  # the whole file
                    return head
                f.seek(max(0, st.st_size - TAIL))
                return f.read(TAIL) or b""

            def descriptors() -> bytes:
                if st.st_size <= disc.FIRST_DESCRIPTOR:
                    return b""
                f.seek(disc.FIRST_DESCRIPTOR)
                return f.read(8 * disc.SECTOR) or b""

            return sniff(head, tail, descriptors)
    except OSError:
        return None
    finally:
        os.close(fd)


#: An opened container: a zip, a tar (compressed or not), or the first bytes of a single file
#: compressed as a gzip, bzip2 or xz stream.
Opened = zipfile.ZipFile | tarfile.TarFile | disc.Disc | bytes


def _open(sniffed: Sniffed, data: bytes, notes: list[Finding], max_members: int = 100_000) -> Opened | None:
    """The container ``data`` was sniffed as, opened; None when it is not one after all (then, if its
    magic number said so, an archive.corrupt note in ``notes``, and it is scanned as a file). A
    stream that does not open and a zip ending the bytes: the zip, as zip readers open it. A disc
    image whose directory records number more than ``max_members`` is not opened."""
    if sniffed.unopened or sniffed.kind in UNOPENED:
        notes.append(unopened(sniffed.unopened or sniffed.kind))
    if sniffed.kind in UNOPENED:
        return None
    if sniffed.kind == DISC:
        # None: more records than members allowed, or pycdlib cannot open it (noted): then it is
        # scanned as the one file it is, structure.unopened-archive.
        return disc.open_disc(data, max_members, notes)
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
        if sniffed.kind != ZIP and _ends_as_zip(data[-TAIL:]):
            return _open(Sniffed(ZIP, False), data, notes)
        return None


def _stream(kind: str, data: bytes) -> gzip.GzipFile | bz2.BZ2File | lzma.LZMAFile:
    if kind == GZIP:
        return gzip.GzipFile(fileobj=io.BytesIO(data))
    if kind == BZIP2:
        return bz2.BZ2File(io.BytesIO(data))
    return lzma.LZMAFile(io.BytesIO(data), format=lzma.FORMAT_ALONE if kind == LZMA else lzma.FORMAT_AUTO)


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
           notes: Sequence[Finding] = ()) -> Iterator[Item]:
    """The members of an opened container as Items, then the container's own Item with what it broke.
    ``name`` is the container as reported, ``base`` its own file or member name. ``limits`` are
    the whole archive's (Bounds: a nested archive spends its outer archive's). ``notes``: what
    opening it found (an unopened stream before a zip), on the container's own Item."""
    limits = Bounds.of(limits, len(data))
    problems: list[Finding] = list(notes)
    members: Iterable[Member]
    try:
        if isinstance(opened, zipfile.ZipFile):
            yield from _before_zip(name, data, opened, problems, limits, depth)
            members = itertools.chain(_zip_members(opened, len(data), problems, limits),
                                      _unlisted_entries(data, opened, problems, limits))
        elif isinstance(opened, tarfile.TarFile):
            members = _tar_members(opened, len(data), problems, limits)
        elif isinstance(opened, disc.Disc):
            members = _disc_members(opened, problems, limits)
        else:
            members = _stream_members(kind, base, data, problems, limits)
        yield from _member_list(name, data, members, problems, limits, depth)
        if not isinstance(opened, zipfile.ZipFile | disc.Disc):
            tar = opened if kind == TAR and isinstance(opened, tarfile.TarFile) else None
            yield from _appended_zip(name, data, kind, problems, limits, depth, tar)
            if isinstance(opened, tarfile.TarFile):
                yield from _after_tar(name, data, kind, opened, problems, limits, depth)
        if not isinstance(opened, disc.Disc):
            yield from _disc_too(name, data, kind, problems, limits, depth)
    except ARCHIVE_ERRORS as exc:
        problems.append(Finding("archive.corrupt", Level.LOW, f"the archive cannot be read: {display_path(str(exc))}",
                                None, REF))
    yield Item(name, findings=problems, container=True, size=len(data), own=data)


def _member_ranges(archive: tarfile.TarFile | None) -> list[tuple[int, int]]:
    """[start, end) of the data of each tar member read so far (POSIX ustar: after its header). The
    members the walk read, not getmembers(): that would read on past a bomb's member limit."""
    # TarFile.members: the list tarfile fills as it reads headers (typeshed leaves it out).
    members: list[tarfile.TarInfo] = getattr(archive, "members", []) if archive is not None else []
    return [(info.offset_data, info.offset_data + info.size) for info in members
            if info.isfile() or info.type not in tarfile.SUPPORTED_TYPES]


def _appended_zip(name: str, data: bytes, kind: str, problems: list[Finding], limits: Bounds,
                  depth: int, tar: tarfile.TarFile | None) -> Iterator[Item]:
    """The members of a zip after a tar or a compressed stream: tar and gunzip read from the start,
    a zip reader from the end record (APPNOTE.TXT 4.3.16), so one file shows each its own members.
    Both sets are scanned; the file itself is a polyglot made to show tools different contents. A
    zip lying wholly inside the data of a member of ``tar`` (an uncompressed tar: a study export's
    reports.zip as its last member) is that member, already scanned: no polyglot."""
    if not _ends_as_zip(data[-TAIL:]):
        return
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except ARCHIVE_ERRORS:
        return  # an end record by chance, with no zip behind it
    if not archive.infolist() or _in_member(data, archive, _member_ranges(tar)):
        return
    problems.append(Finding("archive.polyglot", Level.HIGH, f"{DESCRIBED[kind]} that is also a zip archive: "
                            "zip readers open other members than it holds, scanned too", None, REF))
    yield from _member_list(name, data, _zip_members(archive, len(data), problems, limits), problems, limits, depth)


#: What a member name stands for when it is what a compressed tar holds after its end-of-archive.
AFTER_TAR = "(data after the tar)"


def _after_tar(name: str, data: bytes, kind: str, tar: tarfile.TarFile, problems: list[Finding],
               limits: Bounds, depth: int) -> Iterator[Item]:
    """What a tar holds after its end-of-archive: tar extracts none of it, so it can carry a
    payload past tools that only look at members. It is scanned as a member of its own
    (AFTER_TAR). In a gzip, bzip2 or xz compressed tar it is inside the stream, seen only
    inflated; a zip there is in the tar gunzip writes, which unzip then opens (a re-probe: the
    plain tar was a polyglot, the same tar gzipped passed clean): its members are scanned too (a
    plain tar's appended zip is `_appended_zip`'s). The stream is inflated once, keeping only its
    last TAIL bytes and what follows the tar, within the bomb limits. A tar whose reading stopped
    early (a member limit) has no end to look past."""
    # TarFile._loaded: set once iteration reached the end-of-archive (typeshed leaves it out).
    if not getattr(tar, "_loaded", False):
        return
    if kind == TAR:
        if not _ends_as_zip(data[-TAIL:]) and not (yield from _past_damage(name, data[tar.offset:], problems,
                                                                            limits, depth)):
            yield from _trailing_member(name, data[tar.offset:], problems, limits, depth)
        return
    bound = min(limits.max_total, limits.max_member, max(SMALL, len(data) * limits.max_ratio))
    tail, after, seen = _inflated_after(kind, data, tar.offset, bound)
    if seen > bound:
        return
    if not _ends_as_zip(tail):
        if not (yield from _past_damage(name, after, problems, limits, depth)):
            yield from _trailing_member(name, after, problems, limits, depth)
        return
    inflated, _ = _inflate(kind, data, bound)
    if len(inflated) <= bound:
        yield from _appended_zip(name, inflated, TAR, problems, limits, depth, tar)


#: Damaged header blocks a tar is read past, one after another (GNU tar skips each).
MAX_RESUMES = 64


def _past_damage(name: str, rest: bytes, problems: list[Finding], limits: Bounds,
                 depth: int) -> Generator[Item, None, bool]:
    """The members after a damaged header. tarfile ends a tar at a header it cannot read; GNU tar
    says "Skipping to next header", looks for the next valid header block and extracts on (POSIX
    ustar headers are block-aligned). ``rest`` starts where tarfile stopped: not a zero block (the
    end-of-archive) there means damage. The members found are scanned as this archive's, and the
    damage is a finding: a tar made to show tools different members. False: no damage, or no
    header after it (the bytes are then the trailing member they were)."""
    resumed = False
    for _ in range(MAX_RESUMES):
        if not rest[:tarfile.BLOCKSIZE].strip(b"\0"):
            break  # the end-of-archive: what follows is _trailing_member's
        at = next((k for k in range(tarfile.BLOCKSIZE, len(rest) - tarfile.BLOCKSIZE + 1, tarfile.BLOCKSIZE)
                   if rest[k:k + tarfile.BLOCKSIZE].strip(b"\0") and _tar_header(rest[k:k + tarfile.BLOCKSIZE])),
                  None)
        if at is None:
            break
        problems.append(Finding("archive.damaged-header", Level.MEDIUM, f"{at:,} bytes that are no tar header "
                                "between members: tarfile stops there, GNU tar skips to the next header and "
                                "extracts the members after it, scanned too", None, REF))
        rest = rest[at:]
        try:
            sub = tarfile.open(fileobj=io.BytesIO(rest), mode="r:")
        except ARCHIVE_ERRORS:
            break
        resumed = True
        yield from _member_list(name, rest, _tar_members(sub, len(rest), problems, limits), problems, limits, depth)
        if not getattr(sub, "_loaded", False):
            break
        rest = rest[sub.offset:]
    if resumed and rest.strip(b"\0"):
        yield from _trailing_member(name, rest, problems, limits, depth)
    return resumed


def _trailing_member(name: str, after: bytes, problems: list[Finding], limits: Bounds,
                     depth: int) -> Iterator[Item]:
    """The bytes after a tar's last member, as a member, unless they are only the end-of-archive's
    zero blocks and the record's padding (POSIX ustar: two or more zero blocks)."""
    skip = len(after) - len(after.lstrip(b"\0"))
    rest = after[skip - skip % tarfile.BLOCKSIZE:]
    if rest.strip(b"\0"):
        yield from _member_items(f"{name}!{AFTER_TAR}", AFTER_TAR, rest, problems, limits, depth)


def _inflated_after(kind: str, data: bytes, offset: int, bound: int) -> tuple[bytes, bytes, int]:
    """Inflate the stream compressed in ``data`` no further than ``bound`` (+1) bytes; its last TAIL
    bytes, the bytes from ``offset`` on, and how many were inflated. What came before a break is
    kept (a cut stream is judged on what it gave)."""
    tail = b""
    after = io.BytesIO()
    seen = 0
    try:
        with _stream(kind, data) as stream:
            while seen <= bound and (chunk := stream.read1(CHUNK)):
                if seen + len(chunk) > offset:
                    after.write(chunk[max(0, offset - seen):])
                seen += len(chunk)
                tail = (tail + chunk)[-TAIL:]
    except ARCHIVE_ERRORS:
        pass
    return tail, after.getvalue(), seen


def _in_member(data: bytes, archive: zipfile.ZipFile, inside: list[tuple[int, int]]) -> bool:
    """Whether the zip zipfile found from the end of ``data`` lies in one of the ``inside`` ranges:
    its first local header, its central directory and its end record (APPNOTE.TXT 4.3.6)."""
    first = min((info.header_offset for info in archive.infolist()), default=archive.start_dir)
    end = data.rfind(EOCD, max(0, len(data) - TAIL))
    return any(start <= min(first, archive.start_dir, end) and end + EOCD_SIZE <= stop for start, stop in inside)


def _member_list(name: str, data: bytes, members: Iterable[Member], problems: list[Finding], limits: Bounds,
                 depth: int) -> Iterator[Item]:
    """The Items of an archive's members, each read in turn, stopping at the bomb limits: this
    archive's own (its members against its size) and the whole archive's (``limits.spent``)."""
    total = 0
    for member_name, read in members:
        if limits.spent.over:
            break
        try:
            content = read()
        except MemoryError:
            # A member too large for the memory left (the archive is held too): not scanned, which
            # is said; the members after it and the files after the archive still are.
            problems.append(Finding("archive.member-unreadable", Level.MEDIUM, f"{display_path(member_name)} "
                                    "could not be held in memory to be scanned (out of memory), so it was not "
                                    "scanned", None, REF))
            continue
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
        limits.spent.total += len(content)
        bomb = _bomb(total, len(data), limits, "inflate to") or _spent_bomb(limits, 0, "inflate to")
        if bomb is not None:  # headers that understate what they hold: stop at the limit
            problems.append(bomb)
            break
        yield from _member_items(f"{name}!{member_name}", member_name, content, problems, limits, depth)


def _before_zip(name: str, data: bytes, archive: zipfile.ZipFile, problems: list[Finding], limits: Bounds,
                depth: int) -> Iterator[Item]:
    """The bytes before a zip's first member, scanned as a member of their own: a self-extractor's
    program runs, its zip only feeds it (a split archive's 4-byte marker is no content)."""
    starts = [info.header_offset for info in archive.infolist()]
    start = min(starts, default=archive.start_dir)  # zipfile's offset of what came before the zip
    before = data[:max(0, min(start, archive.start_dir, len(data)))]
    if before and before not in SPLIT_MARKERS:
        yield from _member_items(f"{name}!{BEFORE_ZIP}", BEFORE_ZIP, before, problems, limits, depth)


def _member_items(full: str, member_name: str, content: bytes, problems: list[Finding], limits: Bounds,
                  depth: int) -> Iterator[Item]:
    """One member read: a nested container expanded, an executable noted, the member scanned.
    Nothing once the whole archive broke a limit (the rest is not read)."""
    if limits.spent.over:
        return
    shown = display_path(member_name)
    notes: list[Finding] = []
    sniffed = sniff(content[:HEAD], lambda: content[-TAIL:],
                    lambda: content[disc.FIRST_DESCRIPTOR:disc.FIRST_DESCRIPTOR + 8 * disc.SECTOR])
    opened = None if sniffed is None else _open(sniffed, content, notes,
                                                 max(0, limits.max_members - limits.spent.members))
    if sniffed is not None and opened is not None:
        if depth + 1 > limits.max_depth:
            problems.append(Finding("archive.nesting", Level.HIGH, f"archives nested deeper than "
                                    f"{limits.max_depth} ({shown})", None, REF))
            return
        yield from expand(full, member_name, content, sniffed.kind, opened, limits, depth + 1, notes)
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


def _spent_bomb(limits: Bounds, more: int, verb: str) -> Finding | None:
    """archive.bomb when what the whole archive has read, nested archives and every section
    included, and ``more`` bytes about to be, break max_archive_total or max_archive_ratio
    against the archive's own size; the walk of the whole archive then stops (``spent.over``)."""
    found = _bomb(limits.spent.total + more, limits.size, limits, verb)
    if found is None:
        return None
    limits.spent.over = True
    return Finding(found.rule, found.level, found.explanation.replace("members ", "members in all (nested "
                   "archives included) ", 1), None, REF)


def _count(limits: Bounds, members: int, problems: list[Finding]) -> int:
    """Count ``members`` more against the whole archive's max_archive_members; how many of them
    fit (the rest are not read: an archive.bomb finding, and the whole walk stops)."""
    room = max(0, limits.max_members - limits.spent.members)
    limits.spent.members += members
    if members <= room:
        return members
    limits.spent.over = True
    problems.append(Finding("archive.bomb", Level.HIGH, f"{limits.spent.members:,} members or more (limit "
                            f"{limits.max_members:,}, nested archives included); the rest is not read", None, REF))
    return room


#: Why a member name escapes the folder it is extracted to (zip slip, CVE-2007-4559 for tar).
TRAVERSAL_REF = "PS3.10 8.2 (File IDs); APPNOTE.TXT 4.4.17.1"
_DRIVE = re.compile(r"[A-Za-z]:")
_SEPARATORS = re.compile(r"[/\\]")


def _traversal(name: str, problems: list[Finding]) -> None:
    """archive.path-traversal for a member name that an extractor would write outside its folder:
    absolute ("/", "\\", a UNC "\\\\server\\share", or a drive letter: APPNOTE 4.4.17.1 forbids
    them) or with a ".." component, "/" or "\\" separated (Windows extractors split on both), once
    Windows trims a component's trailing dots and spaces (".. ", "..."). archive.windows-name for
    one Windows writes elsewhere than named (`windows_name`)."""
    parts = _SEPARATORS.split(name)
    if name.startswith(("/", "\\")):
        why = "an absolute path"
    elif _DRIVE.match(name):
        why = "a path on a drive"
    elif ".." in parts:
        why = 'a path with a ".." component'
    elif any(_windows_parent(part) for part in parts):
        why = 'a path with a component Windows reads as ".." (it trims trailing dots and spaces)'
    else:
        why = ""
    if why:
        problems.append(Finding("archive.path-traversal", Level.HIGH, f"member {display_path(name)!r} is {why}: "
                                "extracted, it would be written outside the extraction folder", None, TRAVERSAL_REF))
        return
    windows = windows_name(parts)
    if windows:
        problems.append(Finding("archive.windows-name", Level.HIGH, f"member {display_path(name)!r} has {windows}: "
                                "extracted on Windows (a PACS import station), it is not written as the file "
                                "scanned", None, WINDOWS_REF))


#: Where Win32 path rules are written down: Microsoft's "Naming Files, Paths, and Namespaces"
#: (reserved device names, trailing dots and spaces, ":" for streams) and MS-FSCC (pathnames:
#: a stream name after the file name's colon).
WINDOWS_REF = "APPNOTE.TXT 4.4.17.1; Win32 Naming Files, Paths, and Namespaces; MS-FSCC (pathnames)"
#: DOS device names: Windows opens the device whatever the folder or the extension ("NUL.dcm",
#: "COM1 .txt"), so a member named so is written to a device, not to a file; CONIN$ and CONOUT$
#: are the console's; COM and LPT with a superscript digit are devices too.
_DEVICE = re.compile(r"(?i)(?:CON|PRN|AUX|NUL|COM[0-9\u00b9\u00b2\u00b3]|LPT[0-9\u00b9\u00b2\u00b3]|CONIN\$|CONOUT\$)"
                     r"[ .]*(?:\..*)?")


def _windows_parent(part: str) -> bool:
    """A component that Windows reads as ".." once it trims trailing dots and spaces: only dots
    and spaces, at least two dots (".. ", "...", ". ."), as Win32 path normalisation does."""
    return part.count(".") >= 2 and not part.strip(". ")


def windows_name(parts: Sequence[str]) -> str:
    """Why Windows would not write a member of these name components as named, or "": a reserved
    device name, a colon (an alternate data stream, "report.dcm:payload"; a drive letter first is
    `_traversal`'s), a component ending in a dot or a space (trimmed: "run.bat." is run.bat)."""
    for part in parts:
        if _DEVICE.fullmatch(part):
            return f"a reserved device name ({display_path(part)!r})"
        if ":" in part:
            return f"an alternate data stream ({display_path(part)!r}: the part after the colon)"
        if part not in ("", ".") and part.endswith((".", " ")):
            return f"a name Windows trims of its trailing dots and spaces ({display_path(part)!r})"
    return ""


#: A member's name and how to read it (None: it broke a limit while being read, noted in problems).
Member = tuple[str, Callable[[], "bytes | None"]]


def _zip_members(archive: zipfile.ZipFile, size: int, problems: list[Finding], limits: Bounds,
                 ) -> Iterator[Member]:
    """The members worth reading. The central directory declares every size before anything is
    inflated: an archive whose members declare past the archive-wide limits is not read at all."""
    infos = archive.infolist()
    infos = infos[:_count(limits, len(infos), problems)]
    wanted = [info for info in infos if _zip_member_ok(archive, info, problems, limits)]
    declared = sum(info.file_size for info in wanted)
    bomb = _bomb(declared, size, limits, "declare") or _spent_bomb(limits, declared, "declare")
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

        yield written_name(info.filename, unicode_path(info.extra)), read


#: APPNOTE.TXT 4.6.9: the Info-ZIP Unicode Path Extra Field's header ID.
UNICODE_PATH = 0x7075


def unicode_path(extra: bytes) -> str | None:
    """The name of the Info-ZIP Unicode Path Extra Field (APPNOTE.TXT 4.6.9: version 1, the CRC-32
    of the header's name, the name in UTF-8), which Info-ZIP unzip and 7-Zip write the member as
    instead of the header's name; Python's zipfile ignores it. None: no such field. The CRC is not
    required to match (4.6.9 says to ignore the field then): an extractor that does not check it
    writes the name all the same, and judging one name more costs nothing."""
    pos = 0
    while pos + 4 <= len(extra):
        ident, size = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4:pos + 4 + size]
        if ident == UNICODE_PATH and len(body) >= 5 and body[0] == 1:
            return bytes(body[5:]).decode("utf-8", "replace")
        pos += 4 + size
    return None


def written_name(header: str, unicode: str | None) -> str:
    """The name a member is judged by: the Unicode Path's (what unzip writes) when it has one,
    unless only the header's is a name Windows runs (signatures.script_name): tools that ignore
    the field (Python, Windows Explorer) write that one."""
    if unicode is None or unicode == header:
        return header
    return header if signatures.script_name(header) and not signatures.script_name(unicode) else unicode


#: APPNOTE.TXT 4.3.7 local file header, 4.3.9 data descriptor (its signature optional).
LOCAL_HEADER, DESCRIPTOR = b"PK\x03\x04", b"PK\x07\x08"


@dataclass(frozen=True, slots=True)
class _Local:
    """One local file header (APPNOTE.TXT 4.3.7) as a streaming reader meets it: its offset, name,
    flags, method, sizes, and where its data starts and ends."""

    offset: int
    name: str
    flags: int
    method: int
    size: int
    start: int
    end: int


def _local_entries(data: bytes, archive: zipfile.ZipFile, limits: Bounds, problems: list[Finding]) -> list[_Local]:
    """The local entries in file order, as a streaming reader (Java's ZipInputStream, libarchive,
    upload handlers) reads them: header after header from the first member up to the central
    directory, each entry's end from its compressed size (a ZIP64 one's from its Zip64 extra
    field, 4.5.3), or, for an entry with a data descriptor (flag bit 3, 4.4.4), `_described_end`.
    Stops at what is no local header (a streaming reader stops there too); an entry whose end
    cannot be found, or more than max_archive_members entries, stop it with a finding, since the
    entries after it would go unseen."""
    listed = {info.header_offset: info.compress_size for info in archive.infolist()}
    # A streaming reader starts at the file's first byte: an entry before the first listed one counts.
    pos = 0 if data[:4] == LOCAL_HEADER else min(listed, default=archive.start_dir)
    out: list[_Local] = []
    while data[pos:pos + 4] == LOCAL_HEADER and pos + 30 <= len(data):
        if len(out) >= limits.max_members:
            problems.append(Finding("archive.bomb", Level.HIGH, f"more than {limits.max_members:,} local entries; "
                                    "the rest is not read", None, REF))
            break
        flags, method, _, _, _, packed, size, name_len, extra_len = struct.unpack_from("<HHHHIIIHH", data, pos + 6)
        start = pos + 30 + name_len + extra_len
        header = bytes(data[pos + 30:pos + 30 + name_len]).decode("utf-8" if flags & 0x800 else "cp437", "replace")
        extra = bytes(data[pos + 30 + name_len:start])
        name = written_name(header, unicode_path(extra))
        if ZIP64_MARK in (packed, size):
            size, packed = _zip64_sizes(extra, size, packed)
        end, why = (start + packed, "") if not flags & 0x8 and packed != ZIP64_MARK else \
            _described_end(data, start, method, packed, listed.get(pos), limits)
        if end is None:
            # An entry inflating past the bound is a bomb in itself; any other is a walk cut short.
            rule, level = ("archive.bomb", Level.HIGH) if why.startswith(INFLATES_PAST) else \
                ("archive.local-walk-stopped", Level.MEDIUM)
            problems.append(Finding(rule, level, f"the local entries cannot be walked past {display_path(name)!r} "
                                    f"at offset {pos:,}: {why}; an entry after it that the central directory does "
                                    "not list (streaming extractors write it out) was not looked for", pos, REF))
            break
        out.append(_Local(pos, name, flags, method, size, start, min(end, len(data))))
        pos = end + (_descriptor_length(data, end, end - start) if flags & 0x8 else 0)
    return out


#: APPNOTE.TXT 4.5.3: the Zip64 extended information extra field's ID; 4.4.8, 4.4.9: a size of
#: 0xFFFFFFFF in a header says the real one is in that field.
ZIP64_EXTRA, ZIP64_MARK = 0x0001, 0xFFFFFFFF
#: 4.3.7, 4.3.12, 4.3.14, 4.3.16: what may follow an entry's data (and its descriptor).
NEXT_RECORDS = (LOCAL_HEADER, b"PK\x01\x02", b"PK\x06\x06", EOCD)


def _zip64_sizes(extra: bytes, size: int, packed: int) -> tuple[int, int]:
    """(uncompressed, compressed) sizes of a local header whose fields say 0xFFFFFFFF: the Zip64
    extra field holds 8-byte values for the marked ones, uncompressed first (4.5.3). A marked size
    with no value for it stays marked (its end is then found as a data descriptor entry's)."""
    pos = 0
    while pos + 4 <= len(extra):
        ident, length = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4:pos + 4 + length]
        pos += 4 + length
        if ident != ZIP64_EXTRA:
            continue
        values = [struct.unpack_from("<Q", body, at)[0] for at in range(0, len(body) - 7, 8)]
        if size == ZIP64_MARK and values:
            size = values.pop(0)
        if packed == ZIP64_MARK and values:
            packed = values.pop(0)
        break
    return size, packed


def _described_end(data: bytes, start: int, method: int, packed: int, listed: int | None,
                   limits: Bounds) -> tuple[int | None, str]:
    """Where the data of an entry whose sizes follow it ends (flag bit 3, 4.4.4; or a ZIP64 size
    with no extra field), and why not when it cannot be found: from the central directory when it
    lists the entry; a deflated one where its deflate stream ends (what ZipInputStream does),
    inflated no further than the whole archive allows; else at the data descriptor (4.3.9) that
    follows its data (what libarchive looks for: its signature, its compressed size the distance
    from ``start``, a stored entry's CRC-32 that of the bytes between), looked for no further than
    max_archive_member bytes. A size the local header gives (a writer setting bit 3 and the
    sizes) is used when none of these is found."""
    if listed is not None:
        return start + listed, ""
    why = f"no data descriptor after its data fits it (up to {MAX_DESCRIPTORS:,} signatures looked at)"
    if method == zipfile.ZIP_DEFLATED:
        most = min(limits.max_member, max(SMALL, (len(data) - start) * limits.max_ratio))
        end, why = _deflate_end(data, start, most)
        if end is not None:
            return end, ""
    end = _descriptor_end(data, start, method == zipfile.ZIP_STORED, limits.max_member)
    if end is not None:
        return end, ""
    if 0 < packed != ZIP64_MARK:
        return start + packed, ""
    return None, why


def _descriptor_end(data: bytes, start: int, stored: bool, most: int) -> int | None:
    """Where the first data descriptor after ``start`` that fits is (4.3.9: "PK\\7\\8", CRC-32, the
    compressed and uncompressed sizes, 4 or 8 bytes each): its compressed size is the distance from
    ``start``, and for a stored entry its uncompressed size the same and its CRC-32 that of the
    bytes between. The CRC-32 is carried on from one candidate to the next: each byte is summed
    once, so the search is linear in what it looks at (at most ``most`` bytes and MAX_DESCRIPTORS
    signatures: a flood of fake ones costs no more)."""
    view = memoryview(data)
    stop = min(len(data), start + most + len(DESCRIPTOR))
    crc, summed = 0, start
    at = data.find(DESCRIPTOR, start, stop)
    for _ in range(MAX_DESCRIPTORS):
        if at < 0:
            break
        for fmt in ("<III", "<IQQ"):
            if at + 4 + struct.calcsize(fmt) > len(data):
                continue
            want, packed, size = struct.unpack_from(fmt, data, at + 4)
            if packed != at - start or (stored and size != packed):
                continue
            if not stored:
                return at
            crc, summed = zlib.crc32(view[summed:at], crc), at
            if crc == want:
                return at
        at = data.find(DESCRIPTOR, at + 1, stop)
    return None


#: Data descriptor signatures tried for one entry: a real descriptor is the first that fits, after
#: as many signatures as the entry's bytes hold by chance (one in 4 GiB of random bytes).
MAX_DESCRIPTORS = 10_000


def _descriptor_length(data: bytes, end: int, packed: int) -> int:
    """The length of the data descriptor at ``end`` (4.3.9): its signature is optional and its sizes
    4 or 8 bytes (ZIP64); the form whose compressed size is ``packed`` and that a record follows
    (or the file ends) is it, else one of the two, else the plain 12 or 16 bytes."""
    signed = 4 if data[end:end + 4] == DESCRIPTOR else 0
    forms = [(signed + 4, width) for width in (4, 8)]

    def sized(form: tuple[int, int]) -> bool:
        field = data[end + form[0]:end + form[0] + form[1]]
        return len(field) == form[1] and int.from_bytes(field, "little") == packed

    def followed(form: tuple[int, int]) -> bool:
        after = end + form[0] + 2 * form[1]
        return after == len(data) or data[after:after + 4] in NEXT_RECORDS

    for fits in (lambda f: sized(f) and followed(f), sized, followed):
        form = next((f for f in forms if fits(f)), None)
        if form is not None:
            return form[0] + 2 * form[1]
    return signed + 12


def _deflate_end(data: bytes, start: int, most: int) -> tuple[int | None, str]:
    """Where the raw deflate stream (RFC 1951) starting at ``start`` ends, inflating no more than
    ``most`` bytes on the way; None and why when it breaks or runs past that."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending: bytes | memoryview = memoryview(data)[start:]
    seen = 0
    try:
        while not inflater.eof and pending and seen <= most:
            seen += len(inflater.decompress(pending, CHUNK))
            pending = inflater.unconsumed_tail
    except zlib.error as exc:
        return None, f"its deflate stream breaks ({exc})"
    if inflater.eof:
        return len(data) - len(inflater.unused_data), ""
    return None, f"{INFLATES_PAST} {most:,} bytes" if seen > most else "its deflate stream is cut short"


INFLATES_PAST = "its deflate stream inflates past"


def _unlisted_entries(data: bytes, archive: zipfile.ZipFile, problems: list[Finding],
                      limits: Bounds) -> Iterator[Member]:
    """Local entries the central directory does not list (APPNOTE.TXT 4.3.6: the central directory
    is the archive's index, but streaming readers never read it and extract every local entry):
    a zip made to show tools different members. Each is read (stored or deflated) within the bomb
    limits and scanned as a member."""
    listed = {info.header_offset for info in archive.infolist()}
    for entry in _local_entries(data, archive, limits, problems):
        if entry.offset in listed:
            continue
        if limits.spent.over or not _count(limits, 1, problems):
            return
        shown = display_path(entry.name)
        _traversal(entry.name, problems)
        problems.append(Finding("archive.unlisted-entry", Level.HIGH, f"{shown} is a local entry the central "
                                "directory does not list: zip readers skip it, streaming extractors write it "
                                "out; scanned too", None, REF))
        if entry.flags & 0x1:
            problems.append(Finding("archive.encrypted", Level.MEDIUM, f"{shown} is encrypted: it cannot be "
                                    "scanned, and media may not be encrypted", None, REF))
            continue
        if entry.method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            problems.append(Finding("archive.member-unreadable", Level.MEDIUM, f"{shown} uses compression method "
                                    f"{entry.method}, which is not read here, so it was not scanned", None, REF))
            continue

        def read(entry: _Local = entry) -> bytes | None:
            raw = data[entry.start:entry.end]
            if entry.method == zipfile.ZIP_STORED:
                return raw
            bound = min(limits.max_member, max(SMALL, len(raw) * limits.max_ratio))
            content = zlib.decompressobj(-zlib.MAX_WBITS).decompress(raw, bound + 1)
            if len(content) > bound:
                problems.append(Finding("archive.bomb", Level.HIGH, f"{display_path(entry.name)} inflates past "
                                        f"{bound:,} bytes", None, REF))
                return None
            return content

        yield entry.name, read


def _zip_member_ok(archive: zipfile.ZipFile, info: zipfile.ZipInfo, problems: list[Finding],
                   limits: ArchiveLimits) -> bool:
    """Whether a zip member is read: not a folder, not a symbolic link (checked as a tar's is), not
    encrypted, not a bomb on its own."""
    _traversal(info.filename, problems)
    written = unicode_path(info.extra)
    if written is not None and written != info.filename:
        _traversal(written, problems)
    name = display_path(info.filename)
    if info.is_dir():
        return False
    if _zip_symlink(info):
        # Where extractors disagree (another host: one writes a link, another a file holding the
        # target's bytes), the member is scanned as a file too, and only a target that leaves the
        # archive counts (a file's bytes are no target that cannot be read).
        certain = info.create_system in LINK_HOSTS
        _zip_link(archive, info, problems, certain=certain)
        if certain:
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


#: The longest link target read from a zip member (Linux's PATH_MAX).
MAX_LINK = 4096


#: "Version made by" hosts (APPNOTE.TXT 4.4.2.2) whose external attributes Info-ZIP unzip reads as
#: a Unix mode, symbolic links included (unix.c mapattr): VMS 2, Unix 3, Atari 5, QDOS 12, Acorn
#: 13, BeOS 16, Tandem 17, AtheOS 30. For FAT (0) it takes the mode when its owner bits agree with
#: the DOS attributes; other extractors read the mode whatever the host.
LINK_HOSTS = frozenset({2, 3, 5, 12, 13, 16, 17, 30})


def _zip_symlink(info: zipfile.ZipInfo) -> bool:
    """A member an extractor may create as a symbolic link: a Unix mode S_IFLNK in the high 16 bits
    of its external attributes (APPNOTE.TXT 4.4.15), its data the target, whatever host wrote it:
    Info-ZIP unzip makes the link for every host of LINK_HOSTS and for FAT, not only Unix."""
    return stat.S_ISLNK(info.external_attr >> 16)


def _zip_link(archive: zipfile.ZipFile, info: zipfile.ZipInfo, problems: list[Finding], *,
              certain: bool = True) -> None:
    """archive.link-traversal for a zip symbolic link leading outside the archive, as for a tar's;
    ``certain``: the member is a link to every extractor, so a target that cannot be read counts."""
    if info.file_size > MAX_LINK or info.flag_bits & 0x1:
        target = ""
    else:
        try:
            with archive.open(info) as member:
                target = member.read(MAX_LINK + 1).decode("utf-8", "surrogateescape")
        except ARCHIVE_ERRORS:
            target = ""
    name = display_path(info.filename)
    if not target and certain:  # encrypted, damaged or too long: where it leads cannot be known
        problems.append(Finding("archive.link-traversal", Level.HIGH, f"{name} is a symbolic link whose target "
                                "cannot be read: it may lead outside the archive", None, REF))
    elif _link_escapes(target):
        problems.append(Finding("archive.link-traversal", Level.HIGH, f"{name} links outside the archive "
                                f"({display_path(target)})", None, REF))


def _link_escapes(target: str) -> bool:
    """Whether a member link's target leads outside the extraction folder: absolute ("/", "\\", a
    drive letter) or with a ".." component ("/" or "\\" separated; ".. " and "..." too, as Windows
    trims them to "..")."""
    parts = _SEPARATORS.split(target)
    return target.startswith(("/", "\\")) or bool(_DRIVE.match(target)) or any(
        part == ".." or _windows_parent(part) for part in parts)


def _tar_members(archive: tarfile.TarFile, size: int, problems: list[Finding], limits: Bounds,
                 ) -> Iterator[Member]:
    """The regular members, their sizes summed as the headers come (a compressed tar has no
    directory up front): reading stops once the sum breaks the limits, this tar's or the whole
    archive's (the members read so far in every section and nested archive, and this one)."""
    declared = 0
    for info in archive:
        if limits.spent.over or not _count(limits, 1, problems):
            break
        _traversal(info.name, problems)
        if not _tar_member_ok(info, size, problems, limits):
            continue
        declared += info.size
        bomb = _bomb(declared, size, limits, "declare") or _spent_bomb(limits, info.size, "declare")
        if bomb is not None:
            problems.append(bomb)
            break

        def read(info: tarfile.TarInfo = info) -> bytes | None:
            if info.issparse():
                return _stored(archive, info)
            member = archive.extractfile(info)
            return member.read(info.size) if member is not None else None

        yield info.name, read


def _stored(archive: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    """The bytes a GNU sparse member (type "S") stores, as its header's size field counts them: GNU
    tar writes them out as the file when the sparse map is empty, where tarfile reads the map's
    (empty) file; scanning what is stored covers both."""
    archive.fileobj.seek(info.offset)
    header = archive.fileobj.read(tarfile.BLOCKSIZE)
    # POSIX ustar size: octal digits; GNU tar's base-256 form (a leading 0x80 byte) for large ones.
    field = header[124:136]
    stored = int.from_bytes(field[1:], "big") if field[:1] == b"\x80" else int(field.strip(b"\0 ") or b"0", 8)
    archive.fileobj.seek(info.offset_data)
    return bytes(archive.fileobj.read(stored))


def _tar_member_ok(info: tarfile.TarInfo, size: int, problems: list[Finding], limits: ArchiveLimits) -> bool:
    """Whether a tar member is read: a regular file, not a bomb on its own (links are checked)."""
    name = display_path(info.name)
    if info.issym() or info.islnk():
        if _link_escapes(info.linkname):
            problems.append(Finding("archive.link-traversal", Level.HIGH, f"{name} links outside the "
                                    f"archive ({display_path(info.linkname)})", None, REF))
        return False
    # GNU tar extracts a member of a type it does not know as a regular file ("Unknown file type
    # 'Z', extracted as normal file"; POSIX ustar: unknown types read as regular), and so does
    # tarfile's extractfile; a GNU sparse member is a file too.
    if not (info.isfile() or info.issparse() or info.type not in tarfile.SUPPORTED_TYPES):
        return False
    if info.size > limits.max_member or (info.size > SMALL and info.size > size * limits.max_ratio):
        problems.append(Finding("archive.bomb", Level.HIGH, f"{name} is {info.size:,} bytes in a "
                                f"{size:,}-byte archive", None, REF))
        return False
    return True


def _stream_members(kind: str, base: str, data: bytes, problems: list[Finding], limits: Bounds,
                    ) -> Iterator[Member]:
    """The one file a gzip (RFC 1952; its members, concatenated, are one file), bzip2 or xz stream
    holds, named as gunzip would name it, inflated no further than the bomb limits allow: more
    than max_archive_ratio times the stream past 1 MiB, what is left of max_archive_total for the
    whole archive (the outer archive's members read so far count), the largest file."""
    ratio_bound = max(SMALL, len(data) * limits.max_ratio)
    member = _stream_name(base, kind)
    if not _count(limits, 1, problems):
        return

    def read() -> bytes | None:
        left = max(0, limits.max_total - limits.spent.total)
        bound = min(ratio_bound, left, limits.max_member)
        content, error = _inflate(kind, data, bound)
        if len(content) > bound:
            if bound == ratio_bound:
                why = f"more than {limits.max_ratio}x the {len(data):,}-byte stream"
            elif bound == left:
                limits.spent.over = True
                why = (f"past the {left:,} bytes left of the limit of {limits.max_total:,} for all members "
                       "(nested archives included)")
            else:
                why = f"past the limit of {bound:,} bytes"
            problems.append(Finding("archive.bomb", Level.HIGH, f"{display_path(member)} inflates {why}; "
                                    "the rest is not read", None, REF))
            return None
        if error:
            problems.append(Finding("archive.corrupt", Level.LOW, f"the {kind} stream breaks off after "
                                    f"{len(content):,} bytes ({display_path(error)}): what came before is "
                                    "scanned", None, REF))
        return content

    yield member, read


def _disc_too(name: str, data: bytes, kind: str, problems: list[Finding], limits: Bounds,
              depth: int) -> Iterator[Item]:
    """The files of a disc image that is also the archive ``data`` was opened as: ECMA-119 leaves
    the first 32 KiB (the system area) to the writer, room for a tar or a zip's first entries, so
    an archive tool sees one set of files and a CD drive another. Both are scanned, the file is
    archive.polyglot. Only an image pycdlib opens counts (descriptor bytes met by chance in a
    member's data are no image)."""
    if len(data) <= disc.FIRST_DESCRIPTOR or not disc.is_disc(data[disc.FIRST_DESCRIPTOR:disc.FIRST_DESCRIPTOR
                                                                      + 8 * disc.SECTOR]):
        return
    notes: list[Finding] = []
    image = disc.open_disc(data, max(0, limits.max_members - limits.spent.members), notes)
    if image is None:
        return
    problems.append(Finding("archive.polyglot", Level.HIGH, f"{DESCRIBED[kind]} that is also a disc image: a CD "
                            "drive shows other files than the archive holds; both are scanned", None, REF))
    problems.extend(notes)
    yield from _member_list(name, data, _disc_members(image, problems, limits), problems, limits, depth)


def _disc_members(image: disc.Disc, problems: list[Finding], limits: Bounds) -> Iterator[Member]:
    """The files of a disc image, each counted against the whole archive's member limit, its
    names judged as a zip's or tar's member names are (every tree's: a Windows import station
    reads the Joliet names, Linux the Rock Ridge ones)."""
    room = max(0, limits.max_members - limits.spent.members)
    for member in disc.disc_members(image, problems, room, limits.max_member, _traversal, _disc_name, _disc_link):
        if limits.spent.over or not _count(limits, 1, problems):
            return
        yield member


def _disc_link(name: str, target: str, problems: list[Finding]) -> None:
    """archive.link-traversal for a disc image's symbolic link (Rock Ridge SL, RRIP 4.1.3; UDF,
    ECMA-167 4/14.16) leading outside the image, as for a tar's: a Linux import station that
    mounts the CD and reads DICOM/IM1 through a link to /etc/shadow, or copies the link, reaches
    the station's own files. A target that cannot be read may lead anywhere."""
    shown = display_path(name)
    if not target:
        problems.append(Finding("archive.link-traversal", Level.HIGH, f"{shown} is a symbolic link on the image "
                                "whose target cannot be read: it may lead outside the image", None, REF))
    elif _link_escapes(target):
        problems.append(Finding("archive.link-traversal", Level.HIGH, f"{shown} is a symbolic link on the image "
                                f"leading outside it ({display_path(target)})", None, REF))


def _disc_name(names: list[str]) -> str:
    """The name a disc image's file is scanned under: the first (Joliet, else Rock Ridge, else
    ISO 9660) unless another names it as a program Windows runs (AUTORUN.INF), as written_name
    chooses between a zip's two names."""
    return next((n for n in names if signatures.script_name(n)), names[0])


def _stream_name(name: str, kind: str) -> str:
    """What gunzip (bunzip2, unxz) names the file it writes: the last part of ``name`` (a member's
    may have folders) without its suffix, or as it is when it has none."""
    base = _SEPARATORS.split(name)[-1]
    for suffix in SUFFIXES[kind]:
        if base.lower().endswith(suffix) and len(base) > len(suffix):
            return base[:-len(suffix)]
    return base
