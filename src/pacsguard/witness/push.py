"""Delivery to a second pacsguard (the witness service): POST each checkpoint with an RFC 9162
consistency proof (2.1.4.1) from the size the witness holds, and check its countersignature.

The proof needs the tree at the held size only through its frontier (merkle.frontier_subtrees), so
the courier keeps the frontier at the size the witness last took and reads only the leaves
appended since; after a restart, or when the witness holds another size, it is rebuilt once from
the stored leaves."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from pacsguard.store import keys
from pacsguard.store.merkle import Frontier, consistency_proof, frontier_subtrees
from pacsguard.store.statement import to_statement
from pacsguard.store.store import Checkpoint
from pacsguard.witness.cosign import cosigned_by
from pacsguard.witness.errors import WitnessError, WitnessRefused
from pacsguard.witness.http import Reply, WitnessClient

#: Reads the stored leaf hashes of events #start..#end-1 (EventStore.leaves).
Leaves = Callable[[int, int], list[bytes]]


class HttpWitness:
    def __init__(self, client: WitnessClient, leaves: Leaves, witness_key: Path | None = None,
                 key_role: str = "") -> None:
        """``key_role`` names where ``witness_key`` was given (a configuration key), for its errors."""
        self.client = client
        self.leaves = leaves
        self.name = client.url
        self.witness_key: Ed25519PublicKey | None = keys.load_public_key(witness_key, role=key_role) if witness_key \
            else None
        self._frontier: Frontier | None = None  # the tree at the size the witness holds, as far as known

    def deliver(self, checkpoint: Checkpoint) -> None:
        for _ in range(3):  # at most: unknown held size, then a proof from the size the witness names
            reply = self.client.request("POST", checkpoint.key_id, self._body(checkpoint))
            if reply.status == 200:
                self._taken(checkpoint, reply)
                return
            held = reply.body.get("held")
            if reply.status != 409 or not isinstance(held, int):
                raise _refusal(self.name, checkpoint, reply)
            if held > checkpoint.tree_size:
                raise WitnessRefused(f"witness {self.name} holds a tree of {held} events, larger than the "
                                     f"checkpoint at size {checkpoint.tree_size}: is this store rolled back?")
            self._frontier = self._frontier_at(held)
        raise WitnessError(f"witness {self.name}: no agreement on the held size for checkpoint "
                           f"{checkpoint.tree_size}")

    def _body(self, checkpoint: Checkpoint) -> dict[str, object]:
        body: dict[str, object] = {"checkpoint": to_statement(checkpoint)}
        old = self._frontier
        if old is not None and 0 < old.size < checkpoint.tree_size:
            appended = self.leaves(old.size, checkpoint.tree_size)
            proof = consistency_proof(old.size, checkpoint.tree_size, frontier_subtrees(old, appended))
            body["consistency"] = {"from": old.size, "proof": [h.hex() for h in proof]}
        return body

    def _frontier_at(self, size: int) -> Frontier:
        known = self._frontier
        if known is not None and known.size == size:
            return known
        frontier = known.copy() if known is not None and known.size < size else Frontier()
        for leaf in self.leaves(frontier.size, size):
            frontier.append(leaf)
        if frontier.size != size:
            raise WitnessRefused(f"witness {self.name} holds a tree of {size} events; the store has "
                                 f"{frontier.size}")
        return frontier

    def _taken(self, checkpoint: Checkpoint, reply: Reply) -> None:
        try:
            signature = base64.b64decode(str(reply.body.get("cosignature")), validate=True)
            received = int(str(reply.body.get("received_us")))
        except ValueError:
            if self.witness_key is not None:
                raise WitnessRefused(f"witness {self.name}: its answer holds no readable countersignature") from None
            # No key to check it with, but a witness that took the checkpoint always countersigns
            # (docs/witness.md): a 200 without one (a proxy's or another service's page at this URL)
            # was counted as delivered, and the checkpoint left the queue held by nobody. Kept and
            # retried, and the outage recorded, until a witness takes it.
            raise WitnessError(f"witness {self.name}: answered 200 to the checkpoint at size {checkpoint.tree_size} "
                               "without a countersignature: is this URL a pacsguard witness?") from None
        if self.witness_key is not None:
            if not cosigned_by(self.witness_key, checkpoint, received, signature):
                raise WitnessRefused(f"witness {self.name}: its countersignature does not verify with the pinned "
                                     "witness key")
        self._frontier = self._frontier_at(checkpoint.tree_size)

    def close(self) -> None:
        return None


def _refusal(name: str, checkpoint: Checkpoint, reply: Reply) -> WitnessError:
    error = f"witness {name} answered {reply.status} to the checkpoint at size {checkpoint.tree_size}: " \
            f"{reply.body.get('error', 'no reason given')}"
    # A server error or an overloaded witness may pass; a 4xx judgement of this checkpoint will not.
    return WitnessRefused(error) if 400 <= reply.status < 500 else WitnessError(error)
