"""What `pacsguard scan PATH...` scans: files, folders (DICOMDIR media copied or mounted as a
folder), and zip and tar archives, nested, with bomb limits. Every input becomes Items: a file to
scan, or a file reported as skipped and why (device, symlink loop, unreadable, too big, 0 bytes);
nothing stops the walk. Archive members are checked as ZIP media may hold them (PS3.12, ZIP file media:
no encryption, no executable content) before they are scanned."""

from __future__ import annotations

import errno
import io
import os
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pacsguard.scan import signatures
from pacsguard.scan.model import Finding, Level

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


def walk(paths: list[Path], limits: ArchiveLimits = ArchiveLimits()) -> Iterator[Item]:
    """Items for every file under ``paths`` (folders recursively, symlinks followed once)."""
    seen: set[tuple[int, int]] = set()
    for path in paths:
        yield from _walk_one(path, seen, limits)


def _walk_one(root: Path, seen: set[tuple[int, int]], limits: ArchiveLimits) -> Iterator[Item]:
    pending = [root]
    while pending:
        path = pending.pop()
        try:
            st = path.stat()
        except OSError as exc:
            reason = "symlink loop" if exc.errno == errno.ELOOP else f"unreadable: {exc.strerror or exc}"
            if exc.errno == errno.ENOENT and path.is_symlink():
                reason = "dangling symlink"
            yield Item(str(path), skipped=reason)
            continue
        if stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in seen:
                yield Item(str(path), skipped="symlink loop (folder already scanned)")
                continue
            seen.add(key)
            try:
                children = sorted(os.scandir(path), key=lambda e: e.name, reverse=True)
            except OSError as exc:
                yield Item(str(path), skipped=f"unreadable folder: {exc.strerror or exc}")
                continue
            pending.extend(Path(c.path) for c in children)
            continue
        if not stat.S_ISREG(st.st_mode):
            kind = "device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else \
                "FIFO" if stat.S_ISFIFO(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode) else "special file"
            yield Item(str(path), skipped=f"not a regular file ({kind})")
            continue
        if st.st_size == 0:
            yield Item(str(path), skipped="empty (0 bytes)")
            continue
        archive = _archive_kind(path)
        if archive is None:
            yield Item(str(path), path=path, size=st.st_size)
            continue
        try:
            data = path.read_bytes() if st.st_size <= limits.max_member else b""
        except OSError as exc:
            yield Item(str(path), skipped=f"unreadable: {exc.strerror or exc}")
            continue
        if not data:
            yield Item(str(path), skipped=f"archive larger than the limit ({st.st_size:,} bytes)", size=st.st_size)
            continue
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
            full = f"{name}!{member_name}"
            content = read()
            if content is None:
                continue
            total += len(content)
            if total > limits.max_total:
                problems.append(Finding("archive.bomb", Level.HIGH, f"members inflate past {limits.max_total:,} bytes",
                                        None, REF))
                break
            nested = archive_kind(content[:512], member_name)
            if nested is not None:
                if depth + 1 > limits.max_depth:
                    problems.append(Finding("archive.nesting", Level.HIGH, f"archives nested deeper than "
                                            f"{limits.max_depth} ({member_name})", None, REF))
                    continue
                yield from expand(full, content, nested, limits, depth + 1)
                continue
            found = signatures.identify(content)
            if found in signatures.EXECUTABLE or found == "script":
                problems.append(Finding("archive.executable", Level.HIGH, f"{member_name} is "
                                        f"{signatures.DESCRIPTIONS[found]}: media carry no executable content",
                                        None, REF))
            if not content:
                yield Item(full, skipped="empty (0 bytes)")
                continue
            yield Item(full, data=content, size=len(content))
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError, RuntimeError) as exc:
        problems.append(Finding("archive.corrupt", Level.LOW, f"the archive cannot be read: {exc}", None, REF))
    yield Item(name, findings=problems, container=True, size=len(data))


#: A member's name and how to read it (None: it broke a limit while being read, noted in problems).
Member = tuple[str, Callable[[], "bytes | None"]]


def _zip_members(data: bytes, problems: list[Finding], limits: ArchiveLimits) -> Iterator[Member]:
    archive = zipfile.ZipFile(io.BytesIO(data))
    infos = archive.infolist()
    if len(infos) > limits.max_members:
        problems.append(Finding("archive.bomb", Level.HIGH, f"{len(infos):,} members (limit {limits.max_members:,})",
                                None, REF))
        infos = infos[:limits.max_members]
    for info in infos:
        if info.is_dir():
            continue
        if info.flag_bits & 0x1:
            problems.append(Finding("archive.encrypted", Level.MEDIUM, f"{info.filename} is encrypted: it cannot be "
                                    "scanned, and media may not be encrypted", None, REF))
            continue
        ratio = info.file_size / max(1, info.compress_size)
        if info.file_size > limits.max_member or (info.file_size > 1 << 20 and ratio > limits.max_ratio):
            problems.append(Finding("archive.bomb", Level.HIGH, f"{info.filename} inflates {ratio:,.0f}x to "
                                    f"{info.file_size:,} bytes", None, REF))
            continue

        def read(info: zipfile.ZipInfo = info) -> bytes | None:
            with archive.open(info) as member:
                # The header's size may lie: read one byte more than it says and no more.
                content = member.read(info.file_size + 1)
            if len(content) > info.file_size:
                problems.append(Finding("archive.bomb", Level.HIGH, f"{info.filename} inflates past the size its "
                                        "header declares", None, REF))
                return None
            return content

        yield info.filename, read


def _tar_members(data: bytes, problems: list[Finding], limits: ArchiveLimits) -> Iterator[Member]:
    archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    count = 0
    for info in archive:
        count += 1
        if count > limits.max_members:
            problems.append(Finding("archive.bomb", Level.HIGH, f"more than {limits.max_members:,} members", None,
                                    REF))
            break
        if info.issym() or info.islnk():
            if info.linkname.startswith("/") or ".." in Path(info.linkname).parts:
                problems.append(Finding("archive.link-traversal", Level.HIGH, f"{info.name} links outside the "
                                        f"archive ({info.linkname})", None, REF))
            continue
        if not info.isfile():
            continue
        if info.size > limits.max_member or (info.size > 1 << 20 and info.size > len(data) * limits.max_ratio):
            problems.append(Finding("archive.bomb", Level.HIGH, f"{info.name} is {info.size:,} bytes in a "
                                    f"{len(data):,}-byte archive", None, REF))
            continue

        def read(info: tarfile.TarInfo = info) -> bytes | None:
            member = archive.extractfile(info)
            return member.read(info.size) if member is not None else None

        yield info.name, read
