"""A small tmpfs mounted for one test, and the file that fills it (full-disk and spool tests)."""

from __future__ import annotations

import contextlib
import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of ``size`` on ``folder``; the test fails (never skips) when it cannot be mounted."""
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)],
                            capture_output=True, text=True)
    assert result.returncode == 0, f"cannot mount a tmpfs (root needed): {result.stderr}"
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path) -> Path:
    """Write a file until the file system is full; returns it (delete it to free the space)."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as out:
        while True:
            try:
                out.write(bytes(65536))
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
    # Bytes smaller than a chunk may be left: take them too.
    with filler.open("ab", buffering=0) as out:
        with contextlib.suppress(OSError):
            while True:
                out.write(bytes(512))
    return filler
