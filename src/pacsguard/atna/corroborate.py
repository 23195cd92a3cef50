"""A patient report held up against a witness's copy of the checkpoints (`audit patient --witness`,
`audit prove --checkpoint`): the report's checkpoint is the tree head the witness holds (same size,
root and log), or an RFC 9162 consistency proof (section 2.1.4) the report carries links it to a
checkpoint the witness holds, later or earlier. The witness is outside the host, so a store rewritten
and re-signed with its own key after the witness saw it no longer matches.

Findings are named like those of `audit verify --witness` (store/witnessed.py), with its exit codes:
``forked`` (6) when the witness saw another tree where the report's should be, ``witness`` (1) when
its copy fails the log's key or cannot corroborate the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pacsguard.store.merkle import LeafTree, consistency_proof, verify_consistency
from pacsguard.store.statement import signed_by
from pacsguard.store.store import Checkpoint

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from pacsguard.store import EventStore

EXIT_CODES = {"witness": 1, "forked": 6}


@dataclass(slots=True)
class Corroboration:
    """What a witness's copy says of a report: ``matched``, the witnessed checkpoint that holds it up."""

    findings: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    matched: Checkpoint | None = None

    @property
    def exit_code(self) -> int:
        return max((EXIT_CODES.get(kind, 1) for kind, _ in self.findings), default=0)


def witness_section(store: EventStore, report: dict[str, Any], held: Sequence[Checkpoint],
                    source: str) -> dict[str, Any]:
    """The consistency proof between the report's checkpoint and the newest checkpoint ``source``
    holds of the same log, for the report to carry. ValueError when there is none to link to, or
    the store does not extend what the witness saw (then `audit verify --witness` tells how)."""
    cp = report.get("checkpoint")
    if cp is None:
        raise ValueError("the report names no checkpoint to link to the witness's")
    log, size = cp["key_id"], int(cp["tree_size"])
    mine = sorted((h for h in held if h.key_id == log), key=lambda h: h.tree_size)
    if not mine:
        raise ValueError(f"{source} holds no checkpoint of log {log}")
    newest = mine[-1]
    leaves = store.leaves(0, max(size, newest.tree_size))
    if len(leaves) < newest.tree_size:
        raise ValueError(f"{source} saw the log at size {newest.tree_size}; the store holds {len(leaves)} events: "
                         "run `audit verify --witness` (truncated or rolled back)")
    tree = LeafTree(leaves)
    if tree.root(0, newest.tree_size) != newest.root:
        raise ValueError(f"the store's events #0..#{newest.tree_size - 1} do not hash to the root {source} saw: "
                         "run `audit verify --witness` (forked)")
    low, high = sorted((size, newest.tree_size))
    return {"source": source, "tree_size": newest.tree_size, "root": newest.root.hex(), "time_us": newest.time_us,
            "consistency": [h.hex() for h in consistency_proof(low, high, tree.root)]}


def corroborate(report: dict[str, Any], witnessed: Sequence[Checkpoint], key: Ed25519PublicKey) -> Corroboration:
    """Hold the report's checkpoint up against the checkpoints of a witness's copy (its other checks
    are `report.prove`'s)."""
    out = Corroboration()
    cp = report.get("checkpoint")
    if cp is None:
        out.findings.append(("witness", "the report names no checkpoint: a witness has nothing to corroborate"))
        return out
    try:
        size, root, log = int(cp["tree_size"]), bytes.fromhex(cp["root"]), str(cp["key_id"])
    except (KeyError, TypeError, ValueError) as exc:  # an edited report: `report.prove` names it too
        out.findings.append(("witness", f"the report's checkpoint is unreadable ({exc}): nothing to corroborate"))
        return out
    mine = sorted((h for h in witnessed if h.key_id == log), key=lambda h: h.tree_size)
    if not mine:
        logs = sorted({h.key_id for h in witnessed})
        out.findings.append(("witness", f"the witness's copy holds no checkpoint of log {log} (it holds "
                                        f"{', '.join(logs) or 'none'}): a copy of another log's tree"))
        return out
    trusted = [h for h in mine if signed_by(h, key)]
    for bad in (h for h in mine if h not in trusted):
        out.findings.append(("witness", f"the witness's checkpoint at size {bad.tree_size} does not verify with "
                                        f"log {log}'s key: its copy was altered or forged; left out"))
    at_size = [h for h in trusted if h.tree_size == size]
    same = next((h for h in at_size if h.root == root), None)
    if same is not None:
        out.matched = same
        out.notes.append(f"the witness holds the report's checkpoint: size {size}, the same root, signed by log {log}")
        return out
    if at_size:
        out.findings.append(("forked", f"the witness saw root {at_size[0].root.hex()[:16]}... at size {size}; the "
                                       f"report's checkpoint names root {root.hex()[:16]}...: the events were "
                                       "rewritten and re-signed after the witness saw them (a fork)"))
        return out
    _linked(report.get("witness"), size, root, trusted, out)
    return out


def _linked(carried: Any, size: int, root: bytes, trusted: list[Checkpoint], out: Corroboration) -> None:
    """The report's checkpoint against another witnessed size, through the proof the report carries."""
    sizes = ", ".join(str(h.tree_size) for h in trusted[-6:])
    if not isinstance(carried, dict):
        out.findings.append(("witness", f"the witness does not hold the report's checkpoint (size {size}); it holds "
                                        f"sizes {sizes}: a consistency proof is needed: make the report with "
                                        "`audit patient ... --witness FILE|URL` of this witness"))
        return
    try:
        other, other_root = int(carried["tree_size"]), bytes.fromhex(carried["root"])
        proof = [bytes.fromhex(h) for h in carried["consistency"]]
    except (KeyError, TypeError, ValueError) as exc:
        out.findings.append(("witness", f"the report's consistency proof is unreadable ({exc})"))
        return
    held = next((h for h in trusted if h.tree_size == other), None)
    if held is None:
        out.findings.append(("witness", f"the report carries a proof to size {other}, which this witness's copy does "
                                        f"not hold (it holds sizes {sizes}): make the report with this witness"))
        return
    if held.root != other_root:
        out.findings.append(("forked", f"the witness saw root {held.root.hex()[:16]}... at size {other}; the report "
                                       f"links to root {other_root.hex()[:16]}...: the events were rewritten after "
                                       "the witness saw them (a fork)"))
        return
    low, high = sorted(((size, root), (other, other_root)))
    if not verify_consistency(low[0], high[0], low[1], high[1], proof):
        out.findings.append(("forked", f"the consistency proof between size {size} and the witnessed size {other} "
                                       "fails: the report's tree does not extend the witnessed one (a fork)"))
        return
    out.matched = held
    if other > size:
        out.notes.append(f"the witness saw a later checkpoint (size {other}); the report's checkpoint is consistent "
                         "with it (RFC 9162 consistency proof)")
    else:
        out.notes.append(f"the witness saw size {other}, and the report's tree extends it: events #0..#{other - 1} "
                         f"are corroborated by the witness; events #{other}..#{size - 1} rest on the log's key alone")
