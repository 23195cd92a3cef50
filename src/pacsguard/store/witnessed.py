"""`audit verify --witness`: does the store extend every checkpoint a witness saw?

A witness (a file, a SIEM, a second pacsguard) holds copies of the checkpoints the store signed.
For each one, at size m, an RFC 9162 consistency proof (2.1.4) from m to the store's sealed tree
is computed over the stored events and verified against the witnessed root. Each way a store can
fall short of what was witnessed has its own finding and exit code:

| finding              | exit | what the witness shows                                              |
|----------------------|------|---------------------------------------------------------------------|
| `deleted checkpoint` | 3    | it holds a checkpoint (consistent with the events) the store lacks  |
| `truncated tail`     | 4    | it saw more events than remain, and the store itself counts more     |
| `rollback`           | 5    | it saw more events than the store, which shows no sign of ever       |
|                      |      | having had them: an older copy replaced the store                   |
| `forked`             | 6    | the events up to a witnessed size hash to another root: rewritten    |
|                      |      | after the witness saw them (re-signed if the store's own checkpoint  |
|                      |      | at that size verifies)                                               |
| `witness`            | 1    | a witnessed checkpoint whose signature fails with the log's key, or  |
|                      |      | none of this log's key while the witness or the store holds some:    |
|                      |      | the witness saw another log, or the store was re-signed with a new   |
|                      |      | key                                                                  |
| `unreadable line`    | 1    | a line of a witness file that is not a checkpoint (a half line an    |
|                      |      | older version left on a full disk, damage in transit): the other     |
|                      |      | lines are still read and checked, but what the line held cannot be   |
|                      |      | compared, so verify cannot say the store extends everything          |

When several apply, verify exits with the highest code. A file none of whose lines is a checkpoint
is not a witness's copy at all: a WitnessError (exit 2), as for a file that cannot be read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from pacsguard.events.model import json_time, time_from_us
from pacsguard.store import keys
from pacsguard.store.merkle import LeafTree, consistency_proof, verify_consistency
from pacsguard.store.statement import from_statement, signed_by
from pacsguard.store.store import Checkpoint
from pacsguard.store.verify import Finding, VerifyReport
from pacsguard.witness.errors import WitnessError
from pacsguard.witness.held import WitnessedCopy, copy_of, json_lines, read_bytes, read_copy
from pacsguard.witness.jsontext import loads

EXIT_CODES = {"witness": 1, "deleted checkpoint": 3, "truncated tail": 4, "rollback": 5, "forked": 6}


T = TypeVar("T")


def exit_code(findings: Iterable[Finding]) -> int:
    """0 without findings; the highest witness code among them; else 1 (the store's own findings)."""
    codes = [EXIT_CODES.get(f.kind, 1) for f in findings]
    return max(codes, default=0)


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A line of a witness's copy that holds no checkpoint that can be read: ``why`` says what it is."""

    source: str
    line: int
    why: str

    def __str__(self) -> str:
        return f"{self.source} line {self.line}: {self.why}"

    def finding(self) -> Finding:
        return Finding("unreadable line", None, f"{self}; left out, the other lines are checked: what it held "
                       "(a checkpoint, or half of one) cannot be compared with the store")


def read_witness_file(path: Path) -> tuple[list[Checkpoint], list[Unreadable]]:
    """The checkpoint statements of a witness file (JSON lines: the file witness's, or a SIEM's
    export of the syslog witness's MSG), and the lines that hold none. One damaged line must not
    hide what every other line proves; WitnessError when no line at all holds a checkpoint."""
    return _read_on(path, None, from_statement)


def read_witness_copy(path: Path) -> tuple[list[WitnessedCopy], list[Unreadable]]:
    """`witness.held.read_copy` for `audit prove --checkpoint`, reading on past lines that hold no
    checkpoint: a whole-file JSON answer (a saved GET) is read as before, a JSON-lines copy (the file
    witness's, a witness service's ledger) line by line."""
    data = read_bytes(path)
    try:
        loads(data.decode("utf-8"))
    except ValueError:
        return _read_on(path, data, copy_of)
    return read_copy(path), []


def _read_on(path: Path, data: bytes | None, convert: Callable[[object], T]) -> tuple[list[T], list[Unreadable]]:
    """Each JSON line of ``path`` (or of ``data``, its bytes) made into what ``convert`` makes of it,
    and the lines that are not JSON or that ``convert`` refuses (ValueError)."""
    items, bad = json_lines(path, data)
    unreadable = [Unreadable(str(path), n, why) for n, why in bad]
    read: list[T] = []
    for n, item in items:
        try:
            read.append(convert(item))
        except ValueError as exc:
            unreadable.append(Unreadable(str(path), n, f"not a checkpoint statement ({exc})"))
    return read, _unless_none_read(path, bool(read), unreadable)


def _unless_none_read(path: Path, any_read: bool, bad: list[Unreadable]) -> list[Unreadable]:
    """``bad`` in line order; a file of which not one line is a checkpoint is refused whole: it is
    not a witness's copy (another file given by mistake), and findings line by line would hide that."""
    bad.sort(key=lambda u: u.line)
    if bad and not any_read:
        more = f"; {len(bad) - 1} more unreadable line(s)" if len(bad) > 1 else ""
        raise WitnessError(f"{bad[0]}{more}; no line holds a checkpoint: not a witness's copy")
    return bad


def check_witnessed(report: VerifyReport, stored: Sequence[Checkpoint], witnessed: Sequence[Checkpoint],
                    key: Ed25519PublicKey | None, source: str, unreadable: Sequence[Unreadable] = ()) -> None:
    """Add to ``report`` what ``witnessed`` (checkpoints held by the witness ``source``) says about the
    store whose sealed tree and checkpoints ``report`` and ``stored`` hold. Checkpoints of another log
    (another key) are left out; with ``key``, each witnessed signature is checked first. Each of
    ``unreadable`` (lines of the witness's file that hold no checkpoint) is a finding of its own."""
    log = keys.key_id(key) if key is not None else None
    held = sorted({(cp.tree_size, cp.root, cp.time_us): cp for cp in witnessed
                   if log is None or cp.key_id == log}.values(), key=lambda cp: cp.tree_size)
    report.witnesses.append({"source": source, "log": log, "checkpoints": len(held),
                             "newest": held[-1].tree_size if held else None,
                             **({"unreadable_lines": [u.line for u in unreadable]} if unreadable else {})})
    report.findings.extend(u.finding() for u in unreadable)
    if not held and (witnessed or stored):
        # What `audit prove` says of such a copy too (docs/audit.md): nothing of this log to prove
        # against is no proof; a store re-signed with a new key looks exactly like this (a witness
        # service, asked for this log only, then answers that it knows none).
        report.findings.append(_other_log(witnessed, log, report.chain, source) if witnessed else
                               Finding("witness", None, f"{source} holds no checkpoint of log {log}, the store's, "
                                       f"which signed {len(stored)}: the witness never saw this log (none was "
                                       "delivered to it), or the store was re-signed with a new key"))
        return
    trusted: list[Checkpoint] = []
    for cp in held:
        if key is not None and not signed_by(cp, key):
            report.findings.append(Finding("witness", cp.tree_size, f"{source} holds a checkpoint at size "
                                           f"{cp.tree_size} whose signature fails with key {log}: not made by this "
                                           "log's key (the witness's copy was altered or forged); left out"))
        else:
            trusted.append(cp)
    chain = report.chain
    size = len(chain)
    tree = LeafTree(chain)
    root = tree.root(0, size)
    own = {cp.tree_size: cp for cp in stored}
    deleted: list[Checkpoint] = []
    for cp in (c for c in trusted if c.tree_size <= size):
        proof = consistency_proof(cp.tree_size, size, tree.root)
        if verify_consistency(cp.tree_size, size, cp.root, root, proof):
            if cp.tree_size not in own:
                deleted.append(cp)
            continue
        report.findings.append(_forked(cp, tree.root(0, cp.tree_size), own.get(cp.tree_size), key, source))
    if deleted:
        sizes = ", ".join(str(cp.tree_size) for cp in deleted[:12]) + (" ..." if len(deleted) > 12 else "")
        report.findings.append(Finding("deleted checkpoint", deleted[-1].tree_size, f"{source} holds "
                                       f"{len(deleted)} checkpoint(s) the store lacks, at size {sizes}: the "
                                       "events still match them, so the checkpoints were deleted"))
    beyond = [cp for cp in trusted if cp.tree_size > size]
    if beyond and report.lost is not None:
        # Not a cut tail: the chain breaks at deleted events whose hashes are lost, later ones remain.
        report.findings.append(Finding("deleted", report.lost, f"{source} saw the log at size "
                                       f"{beyond[-1].tree_size}; the store's events past the missing event "
                                       f"#{report.lost} cannot be compared with it (its leaf hash is lost)"))
    elif beyond:
        report.findings.append(_shorter(beyond[-1], size, max([report.head_size or 0, *own]), source))


def _other_log(witnessed: Sequence[Checkpoint], log: str | None, chain: Sequence[bytes], source: str) -> Finding:
    """The witness holds checkpoints, but none of the key the store is verified with. Their roots are
    compared with the stored events (unverified: the key that signed them is not at hand) to say
    whether the events too differ from what the witness saw."""
    logs = sorted({cp.key_id for cp in witnessed})
    newest = max(witnessed, key=lambda cp: cp.tree_size)
    tree = LeafTree(chain)
    if newest.tree_size > len(chain):
        events = f"it saw {newest.tree_size} events, the store holds {len(chain)}"
    elif tree.root(0, newest.tree_size) == newest.root:
        events = f"the stored events still hash to the root it saw at size {newest.tree_size}"
    else:
        events = (f"the stored events #0..#{newest.tree_size - 1} hash to another root than the one it saw: "
                  "they were rewritten")
    return Finding("witness", None, f"{source} holds {len(witnessed)} checkpoint(s) of log {', '.join(logs)}, none "
                   f"signed by key {log}, the store's: it saw another log, or the store was re-signed with a new "
                   f"key; {events} (verify with --key and that log's public key to check them)")


def _when(cp: Checkpoint) -> str:
    return json_time(time_from_us(cp.time_us))


def _forked(cp: Checkpoint, ours: bytes, own: Checkpoint | None, key: Ed25519PublicKey | None,
            source: str) -> Finding:
    resigned = own is not None and own.root != cp.root and key is not None and signed_by(own, key)
    how = (f"; the store's own checkpoint at size {cp.tree_size} signs the rewritten root with the same key, "
           "so the rewrite was re-signed with the real key" if resigned else "")
    return Finding("forked", cp.tree_size, f"{source} saw root {cp.root.hex()[:16]}... at size {cp.tree_size} "
                   f"(signed {_when(cp)}); the store's events #0..#{cp.tree_size - 1} hash to {ours.hex()[:16]}...: "
                   f"they were rewritten after the witness saw them (a fork){how}")


def _shorter(newest: Checkpoint, size: int, counted: int, source: str) -> Finding:
    """The witness saw more events than the store holds: cut (the store still counts them) or rolled back."""
    at = f"{source} saw the log at size {newest.tree_size} (signed {_when(newest)})"
    if counted > size:
        return Finding("truncated tail", size, f"{at}; the store holds only {size} events in its chain while its "
                       f"tree head or checkpoints count {counted}: events #{size}..#{newest.tree_size - 1} were cut "
                       "from the tail")
    return Finding("rollback", size, f"{at}; the store ends at {size} events and shows no sign of having been "
                   "larger: it was replaced by an older copy (rolled back), or its tail was cut and its tree head "
                   "and checkpoints rewritten to match")
