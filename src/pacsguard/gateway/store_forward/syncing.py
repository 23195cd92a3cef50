"""The group fsync of a spool folder: one directory fsync (POSIX: it makes the names created in
the folder durable) serves every object renamed into it before that fsync began.

Objects committed while a sync runs wait for the next one, which covers them all: under
concurrent associations the folder costs one fsync per round instead of one per object, and an
object alone costs exactly what it did. `sync()` returns only once a sync that started after the
caller's rename has completed, so nothing is acknowledged before its directory entry is durable.
It is called from the worker threads that commit objects (the same thread that fsync'd the
object), so an object costs the event loop one hand-off to a thread, not two."""

from __future__ import annotations

import os
import threading
from pathlib import Path


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
