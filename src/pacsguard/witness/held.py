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
    """Every checkpoint statement of a witness file; WitnessError at the first line that holds none
    (`store.witnessed.read_witness_file` reads on past such lines, for `audit`)."""
    items, bad = json_lines(path)
    if bad:
        n, why = bad[0]
        raise WitnessError(f"{path} line {n}: {why}")
    return [_parse(item, str(path), n) for n, item in items]


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
    """Every checkpoint a saved witness copy holds, whichever form it has (the module's docstring);
    WitnessError at the first line that holds none."""
    data = read_bytes(path)
    try:
        whole = loads(data.decode("utf-8"))
    except ValueError:
        items, bad = json_lines(path, data)
        if bad:
            n, why = bad[0]
            raise WitnessError(f"{path} line {n}: {why}") from None
    else:
        listed = whole.get("checkpoints") if isinstance(whole, dict) else None
        items = list(enumerate(listed if isinstance(listed, list) else [whole], 1))
    out = []
    for n, item in items:
        try:
            out.append(copy_of(item))
        except ValueError as exc:
            raise WitnessError(f"{path}: checkpoint {n}: {exc}") from None
    return out


def copy_of(item: object) -> WitnessedCopy:
    """One item of a copy: a witness service's ledger line (statement and countersignature) or a
    bare checkpoint statement. ValueError saying what it lacks."""
    if isinstance(item, dict) and "cosignature" in item:
        try:
            held = Held.from_dict(item)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"unreadable countersignature ({exc})") from None
        return WitnessedCopy(held.checkpoint, held)
    return WitnessedCopy(from_statement(item))


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise WitnessError(f"{path}: witness file not found") from None
    except OSError as exc:
        raise WitnessError(f"{path}: cannot read the witness file ({exc.strerror or exc})") from None


def json_lines(path: Path, data: bytes | None = None) -> tuple[list[tuple[int, object]], list[tuple[int, str]]]:
    """Each line's JSON value with its number, and the lines that are not JSON (number, why). Lines
    end at LF (JSON Lines; CR LF too): the bytes are split, not the text, so one line that is not
    UTF-8 spoils only itself. Blank lines are skipped."""
    items: list[tuple[int, object]] = []
    bad: list[tuple[int, str]] = []
    for n, raw in enumerate((read_bytes(path) if data is None else data).split(b"\n"), 1):
        try:
            line = raw.removesuffix(b"\r").decode("utf-8")
        except UnicodeDecodeError as exc:
            bad.append((n, f"not UTF-8 (byte {exc.start + 1} of the line)"))
            continue
        # A SIEM's export of the syslog witness's MSG (rsyslog's %msg%) keeps the BOM that marks
        # it as UTF-8 (RFC 5424 6.4); it belongs to the syslog message, not to the JSON.
        line = line.removeprefix("\ufeff")
        if not line.strip():
            continue
        try:
            items.append((n, loads(line)))
        except ValueError as exc:
            bad.append((n, f"not JSON ({exc})"))
    return items, bad


def _parse(item: object, source: str, n: int) -> Checkpoint:
    try:
        return from_statement(item)
    except ValueError as exc:
        raise WitnessError(f"{source}: checkpoint {n}: {exc}") from None
