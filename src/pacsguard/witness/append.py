"""Appending one whole line to a witness's JSON-lines file (the file witness's copy, the witness
service's ledger): durably, or not at all.

A full disk or a file size limit can let write(2) take only part of a line (POSIX write(): "fewer
bytes than requested"). Left there, the next checkpoint would be glued to that half line, and the
reader (`audit verify --witness FILE`, the ledger at start) refuses the whole file. So a line that
could not be written whole is cut off again, and the file is as it was before."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from pacsguard.owner_only import create_private_file


def append_line(path: Path, line: bytes) -> None:
    """Append ``line`` (ending in LF) to ``path`` (created owner-only) and fsync it; on any error the
    file is cut back to its size before, and the OSError is raised."""
    create_private_file(path)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))
    try:
        start = os.fstat(fd).st_size
        if start and os.pread(fd, 1, start - 1) != b"\n":
            # A half line left by an older version or a crash: the new line starts on its own.
            line = b"\n" + line
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
                os.fsync(fd)
            raise
    finally:
        os.close(fd)
