"""RFC 9162 inclusion proofs (section 2.1.3) of stored events against a signed checkpoint, for
reports that are checked offline with only the store's public key.

A proof names its index (the event's seq), the tree size of the checkpoint and the audit path;
the verifier recomputes the leaf hash from the sealed record the report carries, never reads it
from the store. The leaves are read from the store once per call; the records are not (the caller
has them from its search, and a second copy of 200,000 records would double the memory).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select

from pacsguard.store.errors import StoreError
from pacsguard.store.merkle import node_hash
from pacsguard.store.schema import events
from pacsguard.store.store import Checkpoint, EventStore


@dataclass(frozen=True, slots=True)
class InclusionProof:
    seq: int
    tree_size: int
    path: tuple[bytes, ...]


def inclusion_proofs(store: EventStore, seqs: Iterable[int], checkpoint: Checkpoint) -> list[InclusionProof]:
    """A proof per seq below the checkpoint's tree size (others are skipped: not yet signed)."""
    size = checkpoint.tree_size
    wanted = sorted({s for s in seqs if 0 <= s < size})
    if not wanted:
        return []
    with store.engine.connect() as conn:
        leaves = [_leaf(seq, leaf, store.name) for seq, leaf in conn.execute(
            select(events.c.seq, events.c.leaf).where(events.c.seq < size).order_by(events.c.seq))]
    if len(leaves) != size:
        # Rows are missing: no path can be computed; the proofs of what remains will fail to verify.
        leaves += [bytes(32)] * (size - len(leaves))
    levels = _levels(leaves)
    return [InclusionProof(seq, size, tuple(_path(seq, size, levels, leaves))) for seq in wanted]


def stored_leaves(store: EventStore, seqs: Iterable[int]) -> dict[int, bytes | None]:
    """The leaf column of each of ``seqs`` that has an events row (None for one that holds no hash):
    what an event newer than the checkpoint, which has no proof, is checked against."""
    wanted = sorted(set(seqs))
    out: dict[int, bytes | None] = {}
    with store.engine.connect() as conn:
        for i in range(0, len(wanted), _CHUNK):
            for seq, leaf in conn.execute(select(events.c.seq, events.c.leaf).where(
                    events.c.seq.in_(wanted[i:i + _CHUNK]))):
                out[seq] = bytes(leaf) if isinstance(leaf, (bytes, memoryview)) else None
    return out


#: Seqs asked for per statement (SQLite's default limit of bound parameters is far above it).
_CHUNK = 500


def _leaf(seq: int, leaf: object, store: str) -> bytes:
    """A stored leaf hash; one of another type (SQLite keeps whatever an UPDATE writes) is named,
    not a crash: no proof can be computed over it."""
    if not isinstance(leaf, (bytes, memoryview)):
        raise StoreError(f"{store}: event #{seq}'s leaf column holds {str(leaf)[:40]!r} ({type(leaf).__name__}), not a "
                         "hash: the store was edited outside pacsguard; run `pacsguard audit verify`")
    return bytes(leaf)


def _levels(leaves: list[bytes]) -> list[list[bytes]]:
    """The perfect-subtree hashes level by level (level 0 = leaves), so each path costs O(log n)."""
    levels = [leaves]
    while len(levels[-1]) > 1:
        below = levels[-1]
        levels.append([node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)])
    return levels


def _subtree(start: int, count: int, levels: list[list[bytes]], leaves: list[bytes]) -> bytes:
    """MTH of leaves[start:start+count]; perfect, aligned subtrees come from the level cache."""
    if count & (count - 1) == 0 and start % count == 0:
        level = count.bit_length() - 1
        if level < len(levels) and start // count < len(levels[level]):
            return levels[level][start // count]
    if count == 1:
        return leaves[start]
    k = 1 << ((count - 1).bit_length() - 1)
    return node_hash(_subtree(start, k, levels, leaves), _subtree(start + k, count - k, levels, leaves))


def _path(index: int, size: int, levels: list[list[bytes]], leaves: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 2.1.3.1 over leaves[0:size], iteratively from the top."""
    out: list[bytes] = []
    start, count = 0, size
    while count > 1:
        k = 1 << ((count - 1).bit_length() - 1)
        if index - start < k:
            out.append(_subtree(start + k, count - k, levels, leaves))
            count = k
        else:
            out.append(_subtree(start, k, levels, leaves))
            start, count = start + k, count - k
    out.reverse()
    return out

