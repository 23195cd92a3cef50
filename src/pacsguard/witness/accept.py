"""The witness's judgement of a checkpoint a log sends it, apart from HTTP (server.py carries it).

A checkpoint is taken only if its signature verifies with the public key pinned for that log, and,
when the witness already holds one, if an RFC 9162 consistency proof (2.1.4.2) from the held size
shows the new tree extends the held one. A log that presents another root at a size it held, or a
smaller tree than it held, has been forked or rolled back: refused (422) and recorded.
"""

from __future__ import annotations

import hmac
import logging
import time
from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pacsguard.events.model import Event, Outcome, Severity
from pacsguard.store import keys
from pacsguard.store.merkle import verify_consistency
from pacsguard.store.statement import from_statement, signed_by
from pacsguard.store.store import Checkpoint
from pacsguard.witness.cosign import cosign
from pacsguard.witness.errors import WitnessError
from pacsguard.witness.ledger import Held, Ledger

log = logging.getLogger("pacsguard.witness")

# Checkpoints in one paged answer: about 500 KB, half the answer a client reads (http.MAX_BODY);
# a checkpoint a minute fills 2,000 in a day and a half, so a whole list would outgrow it.
PAGE = 1000


@dataclass(frozen=True, slots=True)
class PinnedLog:
    """A log this witness serves: its public key (whose fingerprint names it) and its bearer token."""

    key: Ed25519PublicKey
    token: str
    name: str


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, Any]


class Witness:
    def __init__(self, ledger: Ledger, key: Ed25519PrivateKey, logs: Mapping[str, PinnedLog],
                 publish: Callable[[Event], None] = lambda event: None) -> None:
        self.ledger = ledger
        self.key = key
        self.key_id = keys.key_id(key.public_key())
        self.logs = dict(logs)
        self.publish = publish

    def held(self, log: str, start: int | None = None) -> Answer:
        """The checkpoints held for ``log``: all of them, or with ``start`` (`?from=SIZE`) a page of
        at most PAGE from tree size ``start`` on, with ``next`` (the size to ask from) while more
        remain. Sizes only grow in a ledger (`_take`), so a page is a slice found by bisection."""
        if log not in self.logs:
            return Answer(404, {"error": f"no log {log} is pinned at this witness"})
        items = self.ledger.held(log)
        if start is None:
            return Answer(200, {"log": log, "checkpoints": [h.to_dict() for h in items]})
        first = bisect_left(items, start, key=lambda h: h.checkpoint.tree_size)
        page = items[first:first + PAGE]
        body: dict[str, Any] = {"log": log, "checkpoints": [h.to_dict() for h in page]}
        if first + PAGE < len(items):
            body["next"] = items[first + PAGE].checkpoint.tree_size
        return Answer(200, body)

    def submit(self, log: str, token: str | None, body: Any, peer: str) -> Answer:
        pinned = self.logs.get(log)
        if pinned is None:
            return self._reject(404, f"no log {log} is pinned at this witness", log, peer)
        if token is None or not hmac.compare_digest(token.encode(), pinned.token.encode()):
            return self._reject(401, f"no or a wrong bearer token for log {pinned.name}", log, peer)
        try:
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            cp = from_statement(body.get("checkpoint"))
            proof_from, proof = _consistency(body.get("consistency"))
        except ValueError as exc:
            return Answer(400, {"error": str(exc)})
        if cp.key_id != log:
            return self._reject(400, f"the checkpoint names log {cp.key_id}, sent to log {log}", log, peer)
        if not signed_by(cp, pinned.key):
            return self._reject(403, f"the checkpoint at size {cp.tree_size} does not verify with log "
                                f"{pinned.name}'s pinned key", log, peer)
        with self.ledger.lock:
            return self._take(cp, proof_from, proof, pinned, peer)

    def _take(self, cp: Checkpoint, proof_from: int | None, proof: list[bytes], pinned: PinnedLog,
              peer: str) -> Answer:
        head = self.ledger.head(cp.key_id)
        if head is not None:
            held = head.checkpoint
            same = self.ledger.find(cp.key_id, cp.tree_size)
            if same is not None:
                if same.checkpoint.root == cp.root:
                    return self._taken(same)  # sent again (an answer lost on the way): nothing new
                return self._inconsistent(cp, held, f"another root at size {cp.tree_size} than the one held", peer)
            if cp.tree_size < held.tree_size:
                return self._inconsistent(cp, held, f"a tree of {cp.tree_size} events, smaller than the "
                                          f"{held.tree_size} held (rolled back)", peer)
            if proof_from != held.tree_size:
                return Answer(409, {"held": held.tree_size, "error": f"send a consistency proof from size "
                                    f"{held.tree_size}"})
            if not verify_consistency(held.tree_size, cp.tree_size, held.root, cp.root, proof):
                return self._inconsistent(cp, held, f"a tree that does not extend the one of size "
                                          f"{held.tree_size} held (the consistency proof fails)", peer)
        received = time.time_ns() // 1000
        taken = Held(cp, received, cosign(self.key, cp, received), self.key_id)
        try:
            self.ledger.append(taken)
        except WitnessError as exc:
            # Not held, so not countersigned: 503 (RFC 9110 15.6.4) tells the log to try again later.
            log.error("%s", exc)
            return Answer(503, {"error": f"the witness cannot store the checkpoint now: {exc}"})
        return self._taken(taken)

    def _taken(self, held: Held) -> Answer:
        return Answer(200, {"held": held.checkpoint.tree_size, "received_us": held.received_us,
                            "witness_key": held.witness_key, "cosignature": held.to_dict()["cosignature"]})

    def _inconsistent(self, cp: Checkpoint, held: Checkpoint, what: str, peer: str) -> Answer:
        name = self.logs[cp.key_id].name
        error = f"log {name} presented {what}: forked or rolled back"
        self.publish(Event(kind="pacsguard.witness.inconsistent", component="witness", severity=Severity.ALERT,
                           outcome=Outcome.MAJOR_FAILURE, message=error,
                           details={"log": cp.key_id, "tree_size": cp.tree_size, "held": held.tree_size,
                                    "error": error, "peer": peer}))
        return Answer(422, {"held": held.tree_size, "error": error})

    def _reject(self, status: int, error: str, log: str, peer: str) -> Answer:
        self.publish(Event(kind="pacsguard.witness.rejected", component="witness", severity=Severity.WARNING,
                           outcome=Outcome.SERIOUS_FAILURE, message=f"witness refused a checkpoint: {error}",
                           details={"log": log, "error": error, "peer": peer}))
        return Answer(status, {"error": error})


def _consistency(value: Any) -> tuple[int | None, list[bytes]]:
    if value is None:
        return None, []
    if not isinstance(value, dict) or not isinstance(value.get("from"), int) or \
            not isinstance(value.get("proof"), list) or len(value["proof"]) > 128:
        raise ValueError("consistency: expected {\"from\": size, \"proof\": [hex, ...]} (at most 128 hashes)")
    try:
        return value["from"], [bytes.fromhex(str(h)) for h in value["proof"]]
    except ValueError:
        raise ValueError("consistency: a proof hash is not hex") from None
