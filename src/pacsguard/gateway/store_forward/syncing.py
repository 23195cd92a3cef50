"""Syncing a spool: the kernel's early write-out of an object as it arrives, and the group fsync
of a spool folder.

The group fsync of a spool folder: one directory fsync (POSIX: it makes the names created in
the folder durable) serves every object renamed into it before that fsync began.

Objects committed while a sync runs wait for the next one, which covers them all: under
concurrent associations the folder costs one fsync per round instead of one per object, and an
object alone costs exactly what it did. `sync()` returns only once a sync that started after the
caller's rename has completed, so nothing is acknowledged before its directory entry is durable.
It is called from the worker threads that commit objects (the same thread that fsync'd the
object), so an object costs the event loop one hand-off to a thread, not two."""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from pathlib import Path

SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>: start writing dirty pages out, wait for none


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's sync_file_range(2), or None where there is none (not Linux)."""
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    call.restype = ctypes.c_int
    return call


_SYNC_FILE_RANGE = _load_sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Have the kernel start writing ``length`` bytes of ``fd`` from ``offset`` to the disk,
    without waiting for them (sync_file_range(2), SYNC_FILE_RANGE_WRITE). It makes nothing durable
    (no metadata, no disk cache flush): it only leaves less for the fdatasync before the answer, so
    the disk works while the network does. Where the call is missing or fails, that fdatasync
    writes it all, as before."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, SYNC_FILE_RANGE_WRITE)


def fsync_dir(path: Path) -> None:
    """Make the names in a folder durable (POSIX: fsync on the directory)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FolderSync:
    """Group fsync of one folder, for any number of threads."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._cond = threading.Condition()
        self._requested = 0  # callers so far; caller n is covered once a sync begun after it ends
        self._covered = 0
        self._running = False

    def sync(self) -> None:
        """Return once the folder was fsync'd after this call began; raise OSError if that fails."""
        with self._cond:
            self._requested += 1
            mine = self._requested
            while self._covered < mine:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                covers = self._requested
                self._cond.release()
                try:
                    fsync_dir(self.folder)
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._cond.notify_all()
                # Reached only when the fsync succeeded: a failure propagates to this caller, and the
                # others waiting on it try their own.
                self._covered = max(self._covered, covers)
