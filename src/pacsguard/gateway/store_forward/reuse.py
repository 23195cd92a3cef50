"""Spent object files of a store-and-forward spool, kept for the next objects to overwrite.

Why: writing a new file makes the file system allocate its blocks as they are written back, and
the fsync before each answer then also commits that allocation to the file system's journal.
Overwriting a file whose blocks are allocated already (and whose pages may still be cached) skips
both: on the ext4 disk of docs/PERFORMANCE.md, an 8 MB object written and synced as a new file
took 12.9 ms and 0.95 CPU-s/GB, overwritten in a spent file 6.9 ms and 0.45 CPU-s/GB.

A spent file is an object every destination has (retention ``delete``). It moves into
``free/`` instead of being unlinked, while the pool holds less than its byte limit
(``spool.reuse_mib``) and fewer than `MAX_FILES`; the next object received takes the newest
one (its pages are the likeliest to be cached), overwrites it and truncates what is left over
before it is synced. A spent file holds the bytes of an object already forwarded until it is
overwritten, as a deleted file's blocks do: it stays in the spool's 0700 folder, and the spool
hands the pool's space back (`trim`) before it refuses an object for want of free space.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from pathlib import Path
from uuid import uuid4

from pacsguard.owner_only import make_private_dir

log = logging.getLogger("pacsguard.gateway")

MAX_FILES = 1024  # a bound on the folder, whatever the byte limit


class FilePool:
    """The ``free/`` folder of one spool: spent files, newest last."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self._files: list[tuple[str, int]] = []  # (name, size), newest last
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._files)

    def load(self) -> None:
        """Adopt the files a previous run left in the folder (any content: they are only
        overwritten). Only plain files: a symbolic link or a folder there is not pacsguard's, and
        writing an object through a link would put patient data wherever it points (the spool
        checks again when it takes one, `Spool.create`)."""
        make_private_dir(self.folder)
        found: list[tuple[str, int]] = []
        for path in self.folder.iterdir():
            try:
                st = path.lstat()
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                found.append((path.name, st.st_size))
            else:
                log.warning("spool: %s is not a plain file; not reused for objects, left as it is", path)
        with self._lock:
            self._files = sorted(found)
            self._bytes = sum(size for _, size in found)
        self._shrink()

    def put(self, path: Path) -> bool:
        """Keep ``path`` (moved into the pool) when there is room; False: the caller deletes it."""
        if self.max_bytes <= 0:
            return False
        try:
            size = path.lstat().st_size
        except OSError:
            return False
        with self._lock:
            if len(self._files) >= MAX_FILES or self._bytes + size > self.max_bytes:
                return False
            name = f"{time.time_ns():020d}-{uuid4().hex[:8]}"  # sorts by age, as `load` reads them
            self._files.append((name, size))
            self._bytes += size
        try:
            os.replace(path, self.folder / name)
        except OSError:
            self._forget(name)
            return False
        return True

    def take(self, target: Path) -> bool:
        """Move the newest spent file to ``target``; False when the pool is empty."""
        while True:
            with self._lock:
                if not self._files:
                    return False
                name, size = self._files.pop()
                self._bytes -= size
            try:
                os.replace(self.folder / name, target)
                return True
            except FileNotFoundError:  # removed behind the pool's back: try the next
                continue

    def trim(self) -> int:
        """Delete every spent file; the bytes handed back to the file system."""
        with self._lock:
            files, self._files, freed, self._bytes = self._files, [], self._bytes, 0
        for name, _ in files:
            (self.folder / name).unlink(missing_ok=True)
        return freed

    def _forget(self, name: str) -> None:
        with self._lock:
            for i, (n, size) in enumerate(self._files):
                if n == name:
                    del self._files[i]
                    self._bytes -= size
                    return

    def _shrink(self) -> None:
        """Down to the limits (a lower ``reuse_mib`` than the previous run's): oldest first."""
        while True:
            with self._lock:
                if not self._files or (len(self._files) <= MAX_FILES and self._bytes <= self.max_bytes):
                    return
                name, size = self._files.pop(0)
                self._bytes -= size
            (self.folder / name).unlink(missing_ok=True)
