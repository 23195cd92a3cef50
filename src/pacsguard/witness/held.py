"""What a witness holds, read for `audit verify --witness URL-or-FILE`: a witness file (JSON lines,
one checkpoint statement per line, as the file witness writes them) or a pacsguard witness service;
and, for `audit prove --checkpoint FILE`, a saved copy in any of the forms a witness gives: the file
witness's lines, a witness service's ledger lines (statement plus countersignature), or its answer to
``GET /v1/logs/LOG/checkpoints`` (or one statement) saved as one JSON object."""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from pacsguard.store.statement import from_statement
from pacsguard.store.store import Checkpoint
from pacsguard.witness.cosign import cosigned_by
from pacsguard.witness.errors import WitnessError
from pacsguard.witness.http import WitnessClient
from pacsguard.witness.jsontext import loads
from pacsguard.witness.ledger import Held


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
    return [_parse(item, str(path), n) for n, item in _json_lines(path, _read(path))]


@dataclass(frozen=True, slots=True)
class WitnessedCopy:
    """One checkpoint as a witness's copy holds it; ``held`` when the copy carries the witness's
    countersignature (a witness service's ledger line or answer)."""

    checkpoint: Checkpoint
    held: Held | None = None

    def countersigned(self, witness_key: Ed25519PublicKey) -> bool:
        """Whether ``witness_key`` countersigned this checkpoint (RFC 8032 5.1.7); False without one."""
        h = self.held
        return h is not None and cosigned_by(witness_key, h.checkpoint, h.received_us, h.cosignature)


def read_copy(path: Path) -> list[WitnessedCopy]:
    """Every checkpoint a saved witness copy holds, whichever form it has (the module's docstring)."""
    text = _read(path)
    try:
        whole = loads(text)
    except ValueError:
        items = list(_json_lines(path, text))
    else:
        listed = whole.get("checkpoints") if isinstance(whole, dict) else None
        items = list(enumerate(listed if isinstance(listed, list) else [whole], 1))
    return [_copy(item, str(path), n) for n, item in items]


def _copy(item: object, source: str, n: int) -> WitnessedCopy:
    if isinstance(item, dict) and "cosignature" in item:
        try:
            held = Held.from_dict(item)
        except (ValueError, KeyError, TypeError) as exc:
            raise WitnessError(f"{source}: checkpoint {n}: unreadable countersignature ({exc})") from None
        return WitnessedCopy(held.checkpoint, held)
    return WitnessedCopy(_parse(item, source, n))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WitnessError(f"{path}: witness file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise WitnessError(f"{path}: cannot read the witness file ({exc})") from None


def _json_lines(path: Path, text: str) -> Iterable[tuple[int, object]]:
    for n, line in enumerate(text.splitlines(), 1):
        # A SIEM's export of the syslog witness's MSG (rsyslog's %msg%) keeps the BOM that marks
        # it as UTF-8 (RFC 5424 6.4); it belongs to the syslog message, not to the JSON.
        line = line.removeprefix("\ufeff")
        if not line.strip():
            continue
        try:
            yield n, loads(line)
        except ValueError as exc:
            raise WitnessError(f"{path} line {n}: not JSON ({exc})") from None


def _parse(item: object, source: str, n: int) -> Checkpoint:
    try:
        return from_statement(item)
    except ValueError as exc:
        raise WitnessError(f"{source}: checkpoint {n}: {exc}") from None
