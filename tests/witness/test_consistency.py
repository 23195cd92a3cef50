"""RFC 9162 2.1.4 consistency proofs: generated over a leaf list and over a frontier plus the
leaves appended since, and verified; every tampered proof or root fails."""

from __future__ import annotations

import hashlib

import pytest

from pacsguard.store.merkle import (
    Frontier,
    LeafTree,
    consistency_proof,
    frontier_subtrees,
    leaf_hash,
    root_of,
    verify_consistency,
)


def _leaves(n: int, salt: bytes = b"") -> list[bytes]:
    return [leaf_hash(salt + str(i).encode()) for i in range(n)]


def _proof(m: int, leaves: list[bytes]) -> list[bytes]:
    return consistency_proof(m, len(leaves), LeafTree(leaves).root)


@pytest.mark.parametrize("n", range(1, 34))
def test_every_prefix_is_proven_consistent(n: int) -> None:
    leaves = _leaves(n)
    for m in range(0, n + 1):
        proof = _proof(m, leaves)
        assert verify_consistency(m, n, root_of(leaves[:m]), root_of(leaves), proof), (m, n)


def test_rfc9162_example_sizes_give_the_documented_proof_lengths() -> None:
    # RFC 9162 2.1.5: the tree of 7 leaves; from 3 the proof is [c, d, g, l], from 4 [l], from 6 [i, j, k].
    leaves = _leaves(7)
    assert len(_proof(3, leaves)) == 4
    assert _proof(4, leaves) == [root_of(leaves[4:7])]
    assert len(_proof(6, leaves)) == 3


def test_frontier_and_appended_leaves_give_the_same_proof_as_the_whole_tree() -> None:
    leaves = _leaves(300)
    for m in (1, 2, 3, 7, 64, 100, 255, 256, 257, 299):
        old = Frontier()
        for leaf in leaves[:m]:
            old.append(leaf)
        for n in (m, m + 1, 300):
            assert consistency_proof(m, n, frontier_subtrees(old, leaves[m:n])) == _proof(m, leaves[:n])


@pytest.mark.parametrize("m,n", [(1, 2), (3, 7), (4, 7), (6, 7), (5, 300), (256, 300)])
def test_a_rewritten_old_tree_or_a_tampered_proof_fails(m: int, n: int) -> None:
    leaves = _leaves(n)
    proof = _proof(m, leaves)
    new_root = root_of(leaves)
    forked = leaves.copy()
    forked[m - 1] = leaf_hash(b"rewritten")
    assert not verify_consistency(m, n, root_of(forked[:m]), new_root, proof)
    assert not verify_consistency(m, n, root_of(leaves[:m]), root_of(forked), proof)
    for i in range(len(proof)):
        bad = proof.copy()
        bad[i] = hashlib.sha256(bad[i]).digest()
        assert not verify_consistency(m, n, root_of(leaves[:m]), new_root, bad)
    assert not verify_consistency(m, n, root_of(leaves[:m]), new_root, proof[:-1])
    assert not verify_consistency(m, n, root_of(leaves[:m]), new_root, [*proof, proof[0]])


def test_sizes_out_of_order_are_refused() -> None:
    leaves = _leaves(5)
    assert not verify_consistency(5, 4, root_of(leaves), root_of(leaves[:4]), [])
    assert not verify_consistency(4, 4, root_of(leaves[:4]), root_of(leaves), [])
    assert verify_consistency(4, 4, root_of(leaves[:4]), root_of(leaves[:4]), [])
    with pytest.raises(ValueError):
        consistency_proof(5, 4, LeafTree(leaves).root)
