"""The simplest witness: a file of checkpoint statements, one JSON object per line, appended and
flushed to disk (fsync) one at a time. A USB disk, an NFS mount of another host, or a folder a log
shipper watches; `audit verify --witness FILE` reads it back."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pacsguard.owner_only import create_private_file
from pacsguard.store.statement import to_statement
from pacsguard.store.store import Checkpoint
from pacsguard.witness.errors import WitnessError


class FileWitness:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = f"file {path}"

    def deliver(self, checkpoint: Checkpoint) -> None:
        line = json.dumps(to_statement(checkpoint), sort_keys=True).encode() + b"\n"
        try:
            create_private_file(self.path)  # statements hold no patient data; the file is the log's own
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise WitnessError(f"witness {self.path}: cannot append ({exc.strerror})") from None

    def close(self) -> None:
        return None
