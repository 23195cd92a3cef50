"""RFC 9162 (Certificate Transparency v2) Merkle tree hashing, section 2.1, with inclusion (2.1.3)
and consistency (2.1.4) proofs.

Every stored event is one leaf. The store keeps only the "frontier" (the roots of the perfect
subtrees that make up the tree, one per set bit of its size), so appending is O(log n) and the
root of any size can be signed without reading the whole table.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """MTH({d}) = SHA-256(0x00 || d) (RFC 9162 2.1.1)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Interior node: SHA-256(0x01 || left || right) (RFC 9162 2.1.1)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


@dataclass(slots=True)
class Frontier:
    """The compact state of an append-only Merkle tree: size and perfect-subtree roots, left to right."""

    size: int = 0
    nodes: list[bytes] = field(default_factory=list)

    def append(self, leaf: bytes) -> None:
        node = leaf
        size = self.size
        # Each trailing 1-bit of the old size is a perfect subtree of the same height: merge with it.
        while size & 1:
            node = hashlib.sha256(b"\x01" + self.nodes.pop() + node).digest()
            size >>= 1
        self.nodes.append(node)
        self.size += 1

    def root(self) -> bytes:
        if not self.nodes:
            return EMPTY_ROOT
        it = reversed(self.nodes)
        acc = next(it)
        for left in it:
            acc = hashlib.sha256(b"\x01" + left + acc).digest()
        return acc

    def to_bytes(self) -> bytes:
        return b"".join(self.nodes)

    @classmethod
    def from_bytes(cls, size: int, data: bytes) -> "Frontier":
        count = bin(size).count("1")
        if len(data) != count * HASH_SIZE:
            raise ValueError(f"frontier of a tree of size {size} needs {count} hashes, found {len(data) // HASH_SIZE}")
        return cls(size, [data[i:i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)])

    def copy(self) -> "Frontier":
        return Frontier(self.size, list(self.nodes))


def root_of(leaves: list[bytes]) -> bytes:
    """MTH over a list of leaf hashes (RFC 9162 2.1.1), recursively: the reference definition."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = 1 << ((n - 1).bit_length() - 1)
    return node_hash(root_of(leaves[:k]), root_of(leaves[k:]))


def inclusion_proof(index: int, leaves: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 2.1.3.1: the audit path of leaf `index` in the tree of `leaves`."""
    n = len(leaves)
    if n <= 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if index < k:
        return inclusion_proof(index, leaves[:k]) + [root_of(leaves[k:])]
    return inclusion_proof(index - k, leaves[k:]) + [root_of(leaves[:k])]


def verify_inclusion(index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes) -> bool:
    """RFC 9162 2.1.3.2: recompute the root from a leaf and its audit path."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def _split(n: int) -> int:
    """The k of RFC 9162 2.1.1: the largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


class LeafTree:
    """Subtree hashes MTH(D[start:end]) over a sequence of leaf hashes (RFC 9162 2.1.1), remembering
    the large perfect subtrees so that many proofs over one tree cost about one pass over its leaves."""

    _MEMO_FROM = 256  # smaller subtrees are rehashed: cheap, and the memo stays ~n/256 entries

    def __init__(self, leaves: Sequence[bytes], offset: int = 0) -> None:
        self._leaves = leaves
        self._offset = offset  # the tree position of leaves[0]
        self._memo: dict[tuple[int, int], bytes] = {}

    def root(self, start: int, end: int) -> bytes:
        n = end - start
        if n <= 0:
            return EMPTY_ROOT
        if n == 1:
            return self._leaves[start - self._offset]
        key = (start, n)
        found = self._memo.get(key)
        if found is not None:
            return found
        k = _split(n)
        node = node_hash(self.root(start, start + k), self.root(start + k, end))
        if n >= self._MEMO_FROM and n & (n - 1) == 0:
            self._memo[key] = node
        return node


def consistency_proof(old_size: int, new_size: int, subtree: Callable[[int, int], bytes]) -> list[bytes]:
    """PROOF(m, D[n]) of RFC 9162 2.1.4.1, with ``subtree(start, end)`` giving MTH(D[start:end]).

    Every node of the proof lying in the old tree is one of its frontier nodes (a perfect subtree
    of the size-m tree), and every other node lies wholly in D[m:n]: so a writer that kept the
    frontier at m needs only the leaves appended since (``frontier_subtrees``)."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"no consistency proof from size {old_size} to size {new_size}")
    if old_size in (0, new_size):
        return []

    def sub(m: int, start: int, end: int, whole: bool) -> list[bytes]:
        n = end - start
        if m == n:
            return [] if whole else [subtree(start, end)]
        k = _split(n)
        if m <= k:
            return sub(m, start, start + k, whole) + [subtree(start + k, end)]
        return sub(m - k, start + k, end, False) + [subtree(start, start + k)]

    return sub(old_size, 0, new_size, True)


def frontier_subtrees(old: Frontier, appended: Sequence[bytes]) -> Callable[[int, int], bytes]:
    """``subtree(start, end)`` for `consistency_proof` from ``old.size``: old-tree nodes from the
    frontier, the rest from the leaves ``appended`` after it."""
    known: dict[tuple[int, int], bytes] = {}
    start = 0
    for bit, node in zip((b for b in reversed(range(old.size.bit_length())) if old.size >> b & 1), old.nodes,
                         strict=True):
        known[(start, start + (1 << bit))] = node
        start += 1 << bit
    tree = LeafTree(appended, offset=old.size)

    def subtree(begin: int, end: int) -> bytes:
        node = known.get((begin, end))
        if node is not None:
            return node
        if begin < old.size:
            raise ValueError(f"subtree [{begin}, {end}) is neither a frontier node nor wholly appended")
        return tree.root(begin, end)

    return subtree


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> bool:
    """RFC 9162 2.1.4.2: whether the tree of ``new_root`` extends the tree of ``old_root``. The
    empty tree is extended by every tree; equal sizes need an empty proof and equal roots."""
    if old_size > new_size or old_size < 0:
        return False
    if old_size == 0:
        return not proof
    if old_size == new_size:
        return not proof and old_root == new_root
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)  # the old tree is perfect: its root is a node of the new one
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root
