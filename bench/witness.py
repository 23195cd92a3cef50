"""Witness benchmark: the cost of RFC 9162 consistency proofs, on the writer's side (one proof per
checkpoint sent to a witness service, from the frontier it keeps plus the leaves appended since)
and on the verifier's side (`audit verify --witness`: one proof per witnessed checkpoint over the
whole sealed tree), and the time a checkpoint listener takes from the store's writer.

    .venv/bin/python bench/witness.py [--leaves 1000000] [--per-checkpoint 1000] [--witnessed 1440]

Leaves are random 32-byte hashes: the proofs do not depend on what the events hold.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from pacsguard.store.merkle import Frontier, LeafTree, consistency_proof, frontier_subtrees, verify_consistency
from pacsguard.store.store import Checkpoint
from pacsguard.witness.delivery import WitnessDelivery


class _Nowhere:
    name = "nowhere"

    def deliver(self, checkpoint: Checkpoint) -> None:
        time.sleep(3600)  # a witness that never answers: signed() must not wait for it

    def close(self) -> None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=1_000_000)
    parser.add_argument("--per-checkpoint", type=int, default=1_000, help="events between two checkpoints")
    parser.add_argument("--witnessed", type=int, default=1_440, help="checkpoints a witness holds (a day of 60 s)")
    args = parser.parse_args()
    leaves = [os.urandom(32) for _ in range(args.leaves)]

    # Writer: frontier at m, proof to m + k reading only the k appended leaves, then the frontier moves on.
    frontier, times, lengths = Frontier(), [], []
    step = args.per_checkpoint
    for leaf in leaves[:step]:
        frontier.append(leaf)
    while frontier.size + step <= len(leaves):
        start = time.perf_counter()
        appended = leaves[frontier.size:frontier.size + step]
        proof = consistency_proof(frontier.size, frontier.size + step, frontier_subtrees(frontier, appended))
        times.append(time.perf_counter() - start)
        lengths.append(len(proof))
        for leaf in appended:
            frontier.append(leaf)
        if len(times) >= 200:
            break
    print(f"writer: proof over {step:,} appended leaves: median {statistics.median(times) * 1e3:.2f} ms, "
          f"worst {max(times) * 1e3:.2f} ms, {max(lengths)} hashes at most ({len(times)} checkpoints)")

    # Verifier: every witnessed size against the whole tree.
    tree = LeafTree(leaves)
    start = time.perf_counter()
    root = tree.root(0, len(leaves))
    built = time.perf_counter() - start
    sizes = sorted({max(1, len(leaves) * (i + 1) // args.witnessed) for i in range(args.witnessed)})
    start = time.perf_counter()
    for m in sizes:
        proof = consistency_proof(m, len(leaves), tree.root)
        assert verify_consistency(m, len(leaves), tree.root(0, m), root, proof)
    proved = time.perf_counter() - start
    print(f"verifier: root of {len(leaves):,} leaves {built:.2f} s; {len(sizes):,} witnessed checkpoints "
          f"proven in {proved:.2f} s ({proved / len(sizes) * 1e3:.2f} ms each)")

    # The store's writer: what telling a listener of a checkpoint costs while the witness is away.
    delivery = WitnessDelivery([_Nowhere()], close_timeout=0)
    cp = Checkpoint(1, bytes(32), 0, "0" * 16, bytes(64))
    start = time.perf_counter()
    for _ in range(10_000):
        delivery.signed(cp)
    print(f"writer: signed() {(time.perf_counter() - start) / 10_000 * 1e6:.2f} us per checkpoint "
          "(queued; the courier delivers)")


if __name__ == "__main__":
    main()
