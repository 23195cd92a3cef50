"""What a witness holds, read for `audit verify --witness URL-or-FILE`: a witness file (JSON lines,
one checkpoint statement per line, as the file witness writes them) or a pacsguard witness service."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterable
from pathlib import Path

from pacsguard.store.statement import from_statement
from pacsguard.store.store import Checkpoint
from pacsguard.witness.errors import WitnessError
from pacsguard.witness.http import WitnessClient


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def read_witness(source: str, logs: Iterable[str], *, token: str | None = None,
                 context: ssl.SSLContext | None = None) -> list[Checkpoint]:
    """The checkpoints ``source`` holds: for a URL, those of each log in ``logs`` (key fingerprints);
    for a file, all of them (verify keeps the log's own)."""
    if is_url(source):
        client = WitnessClient(source, token, context)
        return [_parse(item, f"{source} ({log})", n) for log in dict.fromkeys(logs)
                for n, item in enumerate(client.held(log), 1)]
    return read_file(Path(source))


def read_file(path: Path) -> list[Checkpoint]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WitnessError(f"{path}: witness file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise WitnessError(f"{path}: cannot read the witness file ({exc})") from None
    out: list[Checkpoint] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            raise WitnessError(f"{path} line {n}: not JSON") from None
        out.append(_parse(item, str(path), n))
    return out


def _parse(item: object, source: str, n: int) -> Checkpoint:
    try:
        return from_statement(item)
    except ValueError as exc:
        raise WitnessError(f"{source}: checkpoint {n}: {exc}") from None
