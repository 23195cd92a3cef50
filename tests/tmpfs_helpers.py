"""A small tmpfs mounted for one test, so that a disk can be filled (full-disk and spool tests)."""

from __future__ import annotations

import contextlib
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
