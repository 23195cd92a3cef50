"""What `pacsguard scan PATH...` scans: files, folders (DICOMDIR media copied or mounted as a
folder), and zip and tar archives, nested, with bomb limits. Every input becomes Items: a file to
scan, or a file reported as skipped and why (device, symlink loop, unreadable, too big, 0 bytes);
nothing stops the walk. Archive members are checked as ZIP media may hold them (PS3.12, ZIP file media:
no encryption, no executable content) before they are scanned."""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
    """A file that is not a folder: skipped, scanned, or expanded when it is an archive."""
    if not stat.S_ISREG(st.st_mode):
        kind = "device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else \
            "FIFO" if stat.S_ISFIFO(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode) else "special file"
        yield Item(str(path), skipped=f"not a regular file ({kind})")
        return
    if st.st_size == 0:
        yield Item(str(path), skipped="empty (0 bytes)")
        return
    archive = _archive_kind(path)
    if archive is None:
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
    yield from expand(str(path), data, archive, limits, 0)


def _archive_kind(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            head = f.read(512)
    except OSError:
        return None
    return archive_kind(head, path.name)


def archive_kind(head: bytes, name: str) -> str | None:
    """"zip", "tar" (also gzip/bzip2/xz-compressed tar by name) or None."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    lower = name.lower()
    if lower.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")):
        return "tar"
    return None


def expand(name: str, data: bytes, kind: str, limits: ArchiveLimits, depth: int) -> Iterator[Item]:
    """The members of an archive as Items, then the archive's own Item with what it broke."""
    problems: list[Finding] = []
    total = 0
    try:
        members = _zip_members(data, problems, limits) if kind == "zip" else _tar_members(data, problems, limits)
        for member_name, read in members:
            try:
                content = read()
            except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError, RuntimeError) as exc:
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
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError, RuntimeError) as exc:
        problems.append(Finding("archive.corrupt", Level.LOW, f"the archive cannot be read: {display_path(str(exc))}",
                                None, REF))
    yield Item(name, findings=problems, container=True, size=len(data))


def _member_items(full: str, member_name: str, content: bytes, problems: list[Finding], limits: ArchiveLimits,
                  depth: int) -> Iterator[Item]:
    """One member read: a nested archive expanded, an executable noted, the member scanned."""
    shown = display_path(member_name)
    nested = archive_kind(content[:512], member_name)
    if nested is not None:
        if depth + 1 > limits.max_depth:
            problems.append(Finding("archive.nesting", Level.HIGH, f"archives nested deeper than "
                                    f"{limits.max_depth} ({shown})", None, REF))
            return
        yield from expand(full, content, nested, limits, depth + 1)
        return
    found = signatures.identify(content)
    if found in signatures.EXECUTABLE or found == "script":
        problems.append(Finding("archive.executable", Level.HIGH, f"{shown} is "
                                f"{signatures.DESCRIPTIONS[found]}: media carry no executable content", None, REF))
    if not content:
        yield Item(full, skipped="empty (0 bytes)")
        return
    yield Item(full, data=content, size=len(content))


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


def _zip_members(data: bytes, problems: list[Finding], limits: ArchiveLimits) -> Iterator[Member]:
    """The members worth reading. The central directory declares every size before anything is
    inflated: an archive whose members declare past the archive-wide limits is not read at all."""
    archive = zipfile.ZipFile(io.BytesIO(data))
    infos = archive.infolist()
    if len(infos) > limits.max_members:
        problems.append(Finding("archive.bomb", Level.HIGH, f"{len(infos):,} members (limit {limits.max_members:,})",
                                None, REF))
        infos = infos[:limits.max_members]
    wanted = [info for info in infos if _zip_member_ok(info, problems, limits)]
    bomb = _bomb(sum(info.file_size for info in wanted), len(data), limits, "declare")
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


def _tar_members(data: bytes, problems: list[Finding], limits: ArchiveLimits) -> Iterator[Member]:
    """The regular members, their sizes summed as the headers come (a compressed tar has no
    directory up front): reading stops once the sum breaks the archive-wide limits."""
    archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    count = declared = 0
    for info in archive:
        count += 1
        if count > limits.max_members:
            problems.append(Finding("archive.bomb", Level.HIGH, f"more than {limits.max_members:,} members", None,
                                    REF))
            break
        _traversal(info.name, problems)
        if not _tar_member_ok(info, len(data), problems, limits):
            continue
        declared += info.size
        bomb = _bomb(declared, len(data), limits, "declare")
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
