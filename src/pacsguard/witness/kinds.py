"""The kinds of Event witness delivery and the witness service record (docs/witness.md)."""

from __future__ import annotations

from pacsguard.events.kinds import INTEGER, STRING, EventKind

_DELIVERY = {"witness": STRING, "tree_size": INTEGER, "error": STRING}
_RECEIVED = {"log": STRING, "tree_size": INTEGER, "held": INTEGER, "error": STRING, "peer": STRING}

KINDS = (
    EventKind("pacsguard.witness.unreachable", "a witness could not be given a checkpoint; it stays queued and "
              "is retried (recorded once per outage)", _DELIVERY, required=("witness", "tree_size", "error")),
    EventKind("pacsguard.witness.reachable", "a witness took a checkpoint again after an outage", _DELIVERY,
              required=("witness", "tree_size")),
    EventKind("pacsguard.witness.refused", "a witness refused a checkpoint: it does not verify with the key the "
              "witness pinned, or is not consistent with what the witness holds", _DELIVERY,
              required=("witness", "tree_size", "error")),
    EventKind("pacsguard.witness.inconsistent", "the witness service was sent a checkpoint that does not extend "
              "the one it holds for that log (a fork or a rollback of that log)", _RECEIVED,
              required=("log", "tree_size", "held", "error")),
    EventKind("pacsguard.witness.rejected", "the witness service refused a request: no or a wrong token, an "
              "unknown log, a signature that fails", _RECEIVED, required=("error",)),
)
