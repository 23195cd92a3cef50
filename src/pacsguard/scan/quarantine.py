"""Moving infected files aside (`pacsguard scan --quarantine DIR`): each file goes into DIR under
its SHA-256 with a JSON manifest (original path, hashes, findings, when), so nothing is lost and a
reviewer can put it back.

Every file moved keeps its own pair, ``SHA256.quarantined`` and ``SHA256.json``: a second file with
the same bytes (the same payload copied into two series) gets ``SHA256-2.*``, and so on; nothing in
DIR is ever replaced.

Nothing outside the PATHs scanned is ever moved, and no file through a symbolic link met inside
them: the PATH is resolved (the administrator named it, a link too), then each folder below it is
opened by descriptor without following a link (O_NOFOLLOW), the file moved relative to its folder
(renameat), so that a folder swapped for a link to /usr/bin after the walk is not entered. A PATH
that is itself a link to a file is the file moved; the link is removed and the manifest names both.
Across file systems the file is copied, then removed: a copy whose original cannot be removed (a
read-only medium) is deleted again, and the file is reported not moved."""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from pacsguard.owner_only import FILE_MODE, make_private_dir, write_private_file
from pacsguard.scan.model import FileReport
from pacsguard.scan.report import display_path, json_safe
from pacsguard.scan.walk import DIR_FLAGS, READ_FLAGS, open_path

#: Same-content files in one quarantine folder before giving up (SHA256-2 ... SHA256-9999).
MAX_COPIES = 9999


class QuarantineRefused(Exception):
    """The file was not moved, for a reason that is not the file system's (it changed since it
    was scanned, it is outside the PATHs scanned or reached through a link)."""


@dataclass(frozen=True, slots=True)
class Moved:
    """A file quarantined: where it is now, its manifest, and what could not be tidied ("": all)."""

    file: Path
    manifest: Path
    note: str = ""


@dataclass(frozen=True, slots=True)
class _Place:
    """Where a file to move is: its folder opened (``folder_fd``), its ``name`` there, its absolute
    path once resolved (``real``), and the PATH given as a link to it, if it was one."""

    folder_fd: int
    name: str
    real: Path
    link: Path | None


def quarantine(source: Path, report: FileReport, folder: Path, roots: Sequence[Path] = (),
               members: Sequence[FileReport] = ()) -> Moved:
    """Move ``source``, found under one of ``roots`` (the PATHs scanned; the file itself when none),
    into ``folder`` with its manifest (``members``: an archive's members that failed, listed with
    their findings). Both hold a patient's data: a new folder is made 0700 and the manifest 0600
    (pacsguard.owner_only). Raises OSError (the file stays) or QuarantineRefused."""
    make_private_dir(folder)
    with _opened_place(source, roots or (source,)) as place:
        fd = _open_file(place, source)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # swapped since it was scanned
                raise QuarantineRefused(f"{display_path(str(place.real))} is no longer a regular file; not moved")
            digest, md5, size = _hashes(fd)
            if report.sha256 and digest != report.sha256:  # a file rewritten meanwhile
                raise QuarantineRefused(f"{display_path(str(place.real))} changed since it was scanned; not moved")
            doc = _manifest(source, place.real, place.link, (digest, md5, size), report, members)
            target, manifest = _claim(folder, digest, doc)
            try:
                _move(place, fd, st, target)
            except (OSError, QuarantineRefused):
                manifest.unlink(missing_ok=True)  # no manifest for a file that is not there
                raise
        finally:
            os.close(fd)
    return Moved(target, manifest, _unlink(place.link) if place.link is not None else "")


@contextmanager
def _opened_place(source: Path, roots: Sequence[Path]) -> Iterator[_Place]:
    """The folder of ``source`` opened beneath the PATH it was found under (the longest that holds
    it): the PATH resolved, each folder below opened without following a link."""
    for root in sorted(roots, key=lambda r: len(r.parts), reverse=True):
        try:
            within = source.relative_to(root)
        except ValueError:
            continue
        if ".." in within.parts:
            break
        if not within.parts:  # the PATH itself: a link given is followed to the file it names
            real = Path(os.path.realpath(source))
            link = source.absolute() if source.is_symlink() else None
            fd = open_path(real.parent, DIR_FLAGS)
            try:
                yield _Place(fd, real.name, real, link)
            finally:
                os.close(fd)
            return
        real_root = Path(os.path.realpath(root))
        fd = open_path(real_root, DIR_FLAGS)
        try:
            for name in within.parts[:-1]:
                inner = _down(fd, name, source)
                os.close(fd)
                fd = inner
            yield _Place(fd, within.name, real_root / within, None)
        finally:
            os.close(fd)
        return
    raise QuarantineRefused(f"{display_path(str(source))} is not inside a PATH scanned; not moved")


def read_beneath(source: Path, roots: Sequence[Path]) -> bytes:
    """The bytes of ``source`` read as quarantine reads it: beneath the PATH it was found under,
    through no link met inside it (what --sanitize copies). Raises OSError or QuarantineRefused."""
    with _opened_place(source, roots or (source,)) as place:
        fd = _open_file(place, source)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise QuarantineRefused(f"{display_path(str(place.real))} is no longer a regular file")
            with open(fd, "rb", closefd=False) as f:
                return f.read()
        finally:
            os.close(fd)


#: Bytes hashed at a time: a file is moved whatever its size, never held whole in memory (a file
#: the scan could not hold, reported scan.not-scanned, is moved all the same).
HASH_CHUNK = 1 << 20


def _hashes(fd: int) -> tuple[str, str, int]:
    """SHA-256 and MD5 (hex) and size of the file open as ``fd``, read from its start in
    HASH_CHUNK pieces."""
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, HASH_CHUNK):
        sha.update(chunk)
        md5.update(chunk)
        size += len(chunk)
    return sha.hexdigest(), md5.hexdigest(), size


def _open_file(place: _Place, source: Path) -> int:
    """The file itself, opened without following a link or blocking on a FIFO."""
    try:
        return os.open(place.name, READ_FLAGS, dir_fd=place.folder_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise QuarantineRefused(f"{display_path(str(source))} is a symbolic link: nothing is moved "
                                    "through a link") from None
        raise


def _down(fd: int, name: str, source: Path) -> int:
    """The folder ``name`` in the folder ``fd``, opened without following a link."""
    try:
        return os.open(name, DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise QuarantineRefused(f"{display_path(str(source))} is reached through a symbolic link "
                                    f"({display_path(name)}): nothing is moved through a link") from None
        raise


def _move(place: _Place, fd: int, st: os.stat_result, target: Path) -> None:
    """Rename the file opened as ``fd`` to ``target`` (renameat from its folder); across file systems
    copy it and remove the original, deleting the copy again if the original cannot be removed."""
    try:
        os.rename(place.name, target, src_dir_fd=place.folder_fd)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy_then_remove(place, fd, st, target)
        return
    moved = os.stat(target, follow_symlinks=False)
    if (moved.st_dev, moved.st_ino) != (st.st_dev, st.st_ino):  # another file swapped in: put it back
        os.rename(target, place.name, dst_dir_fd=place.folder_fd)
        raise QuarantineRefused(f"{display_path(str(place.real))} was replaced while being moved; not moved")


def _copy_then_remove(place: _Place, fd: int, st: os.stat_result, target: Path) -> None:
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            while chunk := os.read(fd, 1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view):]
            os.fsync(out)
        finally:
            os.close(out)
        with suppress(OSError):  # the times are a courtesy to the reviewer, not the quarantine
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        now = os.stat(place.name, dir_fd=place.folder_fd, follow_symlinks=False)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise QuarantineRefused(f"{display_path(str(place.real))} was replaced while being moved; not moved")
        os.unlink(place.name, dir_fd=place.folder_fd)
    except BaseException:
        target.unlink(missing_ok=True)  # a copy of a file that stays where it was is no quarantine
        raise


def _manifest(source: Path, real: Path, link: Path | None, hashes: tuple[str, str, int],
              report: FileReport, members: Sequence[FileReport] = ()) -> dict[str, Any]:
    """The manifest's fields (``hashes``: SHA-256, MD5, size). Paths are shown as text (bytes that
    are not UTF-8 as ``\\xNN``); the exact bytes of a path that is not UTF-8 are kept in base64,
    to put the file back."""
    digest, md5, size = hashes
    doc: dict[str, Any] = {
        "original": display_path(str(real)), "scanned_as": display_path(report.path), "sha256": digest,
        "md5": md5, "size": size,
        "quarantined": datetime.now(timezone.utc).isoformat(), "patient_id": report.patient_id or None,
        "study_uid": report.study_uid or None, "findings": [f.to_dict() for f in report.findings]}
    if display_path(str(real)) != str(real):
        doc["original_base64"] = base64.b64encode(os.fsencode(real)).decode()
    if link is not None:
        doc["link"] = display_path(str(link))  # the symbolic link scanned; removed
        doc["target"] = doc["original"]
    if members:  # an archive moved for what its members hold
        doc["members"] = [{"path": display_path(m.path), "findings": [f.to_dict() for f in m.findings]}
                          for m in members]
    return doc


def _claim(folder: Path, digest: str, doc: dict[str, Any]) -> tuple[Path, Path]:
    """The first free ``SHA256[-N]`` pair in ``folder``, its manifest written. The manifest is
    created exclusively (O_EXCL): two scans quarantining the same bytes at once never share a name."""
    for n in range(1, MAX_COPIES + 1):
        stem = digest if n == 1 else f"{digest}-{n}"
        target, manifest = folder / f"{stem}.quarantined", folder / f"{stem}.json"
        if os.path.lexists(target):
            continue
        data = orjson.dumps(json_safe({**doc, "file": target.name}), option=orjson.OPT_INDENT_2)
        try:
            write_private_file(manifest, data)
        except FileExistsError:
            continue
        return target, manifest
    raise QuarantineRefused(f"{MAX_COPIES} files with SHA-256 {digest} already in {display_path(str(folder))}")


def _unlink(link: Path) -> str:
    """Remove the symbolic link that pointed at the file moved: "" or why it stays."""
    try:
        link.unlink()
    except OSError as exc:
        return f"the link {display_path(str(link))} was not removed: {exc.strerror or exc}"
    return ""
