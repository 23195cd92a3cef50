"""Files and folders that may hold patient data (PHI) or keys: created readable by their owner only.

HIPAA 45 CFR 164.312(a)(1) asks for access control on ePHI; on one host that starts with the file
mode. The modes are set explicitly after creation (fchmod/chmod), so a permissive umask such as 022
cannot widen them. Files and folders that already exist keep the mode their owner gave them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import os
import pwd
import stat
import time
from collections.abc import Iterator
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


class AccessDenied(PermissionError):
    """EACCES or EPERM on a file or folder, said in one line: whose it is, its mode, and the user
    this process runs as (a store made by `sudo pacsguard init`, a folder root kept, a service
    user that owns nothing). errno, strerror and filename stay those of the original error."""

    line = ""

    def __str__(self) -> str:
        return self.line or super().__str__()


def _name(uid: int, gid: int) -> str:
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    return f"{user}:{group}"


def whose(path: Path) -> str:
    """``path``'s owner and mode for a message ("root:root's, mode 0600"); "" when it cannot be
    looked at."""
    try:
        st = os.stat(path)
    except OSError:
        return ""
    return f"{_name(st.st_uid, st.st_gid)}'s, mode {stat.S_IMODE(st.st_mode):04o}"


def runs_as() -> str:
    """The user and group this process runs as."""
    return _name(os.geteuid(), os.getegid())


def _denied(path: Path, exc: PermissionError, doing: str) -> AccessDenied:
    """``exc`` from ``doing`` ``path`` (open, create, lock), with the owner and mode of the file,
    or of the folder that refused a new file, and who this process is."""
    me = runs_as()
    try:
        st, what = os.stat(path), path
    except OSError:  # not there (or its folder not searchable): the nearest folder that exists refused
        what = path.parent
        while not os.path.lexists(what) and what != what.parent:
            what = what.parent
        try:
            st = os.stat(what)
        except OSError:
            st = None
    kind = "folder" if st is not None and stat.S_ISDIR(st.st_mode) else "file"
    whose = (f"the {kind} {what} is {_name(st.st_uid, st.st_gid)}'s, mode {stat.S_IMODE(st.st_mode):04o}"
             if st is not None else f"{what} cannot be looked at")
    denied = AccessDenied(exc.errno, exc.strerror, exc.filename)
    denied.line = (f"cannot {doing} {path}: Permission denied ({whose}, and this process runs as {me}; "
                   f"make it {me.split(':')[0]}'s, or run as the user that owns it)")
    return denied


@contextlib.contextmanager
def _explained(path: Path, doing: str) -> Iterator[None]:
    try:
        yield
    except AccessDenied:
        raise
    except PermissionError as exc:
        raise _denied(path, exc, doing) from None


def make_private_dir(path: Path) -> Path:
    """Create ``path`` and any missing parents with mode 0700; existing folders are left as they are."""
    missing: list[Path] = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        try:
            with _explained(folder, "create the folder"):
                folder.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # made meanwhile by another process: its mode is that process's choice
        os.chmod(folder, DIR_MODE)
    return path


def create_private_file(path: Path) -> bool:
    """Create ``path`` empty with mode 0600 if it does not exist (its folder too, 0700).
    Returns True if this call created it."""
    make_private_dir(path.parent)
    try:
        with _explained(path, "create"):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return True


def write_private_file(path: Path, data: bytes) -> None:
    """Write a new file ``path`` holding ``data`` with mode 0600; refuses to replace an existing one.
    A write that fails (a full disk) removes the file it created: no empty or cut copy, key or
    manifest is left to be taken for a whole one."""
    make_private_dir(path.parent)
    with _explained(path, "create"):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), FILE_MODE)
            fh.write(data)
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise


def hold_lock(path: Path, *, wait: float = 0.0) -> int | None:
    """Open ``path`` (created 0600 if missing) and take its exclusive lock (flock), waiting up to
    ``wait`` seconds for another holder to let go. Returns the open descriptor, which holds the lock
    until it is closed, or None when another process still holds it. The kernel drops the lock when
    its process dies, SIGKILL included, so a restart never finds a stale one."""
    create_private_file(path)
    with _explained(path, "open"):
        fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN) or time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.1)
