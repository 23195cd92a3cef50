"""The folder a benchmark works in: the one given on its command line (kept, for a look after),
or a temporary one, removed when the benchmark exits: its stores, spools and corpora are hundreds
of MB to GBs, and a run a day would fill /tmp."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path


def work_folder(given: Path | None, prefix: str) -> Path:
    """``given`` (made if missing), or a new temporary folder named ``prefix...`` that is removed at
    exit (a normal one, an error or Ctrl-C; not a kill)."""
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        return given
    work = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    return work
