"""What a witness service holds: per log, every checkpoint it accepted, in a JSON-lines file of its
own (`<storage>/<log>.jsonl`, owner-only, appended and fsynced before the answer), each line the
checkpoint statement plus the witness's countersignature and the time it received it."""

from __future__ import annotations

import base64
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacsguard.owner_only import make_private_dir
from pacsguard.store.statement import from_statement, to_statement
from pacsguard.store.store import Checkpoint
from pacsguard.witness.append import append_line
from pacsguard.witness.errors import WitnessError
from pacsguard.witness.jsontext import loads

_LOG_ID = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True, slots=True)
class Held:
    checkpoint: Checkpoint
    received_us: int
    cosignature: bytes
    witness_key: str

    def to_dict(self) -> dict[str, Any]:
        return {**to_statement(self.checkpoint), "received_us": self.received_us, "witness_key": self.witness_key,
                "cosignature": base64.b64encode(self.cosignature).decode()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Held:
        return cls(from_statement(data), int(data["received_us"]), base64.b64decode(data["cosignature"]),
                   str(data["witness_key"]))


class Ledger:
    """The held checkpoints of every log, loaded at start; appends are serialised by one lock."""

    def __init__(self, folder: Path) -> None:
        self.folder = make_private_dir(folder)
        self.lock = threading.Lock()
        self._held: dict[str, list[Held]] = {}
        for path in sorted(folder.glob("*.jsonl")):
            if _LOG_ID.fullmatch(path.stem):
                self._held[path.stem] = [self._parse(path, n, line) for n, line in
                                         enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]

    @staticmethod
    def _parse(path: Path, n: int, line: str) -> Held:
        try:
            return Held.from_dict(loads(line))
        except (ValueError, KeyError, TypeError) as exc:
            raise WitnessError(f"{path} line {n}: not a held checkpoint ({exc}); the witness will not start "
                               "over a damaged ledger") from None

    def held(self, log: str) -> list[Held]:
        return list(self._held.get(log, ()))

    def head(self, log: str) -> Held | None:
        items = self._held.get(log)
        return items[-1] if items else None

    def find(self, log: str, size: int) -> Held | None:
        return next((h for h in self._held.get(log, ()) if h.checkpoint.tree_size == size), None)

    def append(self, held: Held) -> None:
        """Durably add ``held`` (call with ``lock`` held); WitnessError, and nothing held, if the
        ledger file cannot take it whole."""
        log = held.checkpoint.key_id
        if not _LOG_ID.fullmatch(log):
            raise ValueError(f"log {log!r} is not a key fingerprint")
        path = self.folder / f"{log}.jsonl"
        try:
            # Whole or not at all: a half line (a full disk) would stop the witness's next start.
            append_line(path, json.dumps(held.to_dict(), sort_keys=True).encode() + b"\n")
        except OSError as exc:
            raise WitnessError(f"{path}: cannot append the checkpoint at size {held.checkpoint.tree_size} "
                               f"({exc.strerror or exc}); it is not held") from None
        self._held.setdefault(log, []).append(held)
