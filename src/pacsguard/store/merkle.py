"""RFC 9162 (Certificate Transparency v2) Merkle tree hashing, section 2.1.

Every stored event is one leaf. The store keeps only the "frontier" (the roots of the perfect
subtrees that make up the tree, one per set bit of its size), so appending is O(log n) and the
root of any size can be signed without reading the whole table.
"""

from __future__ import annotations

import hashlib
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
