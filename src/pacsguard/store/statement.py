"""A signed checkpoint as it leaves the host: the JSON statement that witnesses receive and hold.

The fields are those of the store's checkpoint (RFC 9162 4.10 signs a tree head the same way:
size, root, time), with the signature in base64 and the fingerprint of the signing key, which is
also the name of the log (`log`) at a witness. A statement can be checked by anyone holding the
log's public key: its signature covers `checkpoint_message(tree_size, root, time_us)`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import timezone
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from pacsguard.events.model import json_time, time_from_us
from pacsguard.store import keys
from pacsguard.store.merkle import HASH_SIZE
from pacsguard.store.store import Checkpoint, checkpoint_message

STATEMENT_TYPE = "pacsguard-checkpoint/v1"


def to_statement(cp: Checkpoint) -> dict[str, Any]:
    """The statement of ``cp`` (keys sorted when serialised; ``time`` is for human readers only)."""
    return {"type": STATEMENT_TYPE, "log": cp.key_id, "tree_size": cp.tree_size, "root": cp.root.hex(),
            "time_us": cp.time_us, "time": json_time(time_from_us(cp.time_us).astimezone(timezone.utc)),
            "signature": base64.b64encode(cp.signature).decode()}


def from_statement(data: Any) -> Checkpoint:
    """Parse a statement; ValueError naming the field that is missing or malformed. Extra keys (a
    witness's countersignature, when it received it) are ignored."""
    if not isinstance(data, Mapping):
        raise ValueError("a checkpoint statement must be a JSON object")
    if data.get("type") != STATEMENT_TYPE:
        raise ValueError(f"type: expected {STATEMENT_TYPE!r}, got {data.get('type')!r}")
    size, time_us, log = data.get("tree_size"), data.get("time_us"), data.get("log")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"tree_size: expected a positive integer, got {size!r}")
    if not isinstance(time_us, int) or isinstance(time_us, bool):
        raise ValueError(f"time_us: expected an integer, got {time_us!r}")
    if not isinstance(log, str) or not log:
        raise ValueError(f"log: expected the signing key's fingerprint, got {log!r}")
    try:
        root = bytes.fromhex(str(data.get("root")))
        signature = base64.b64decode(str(data.get("signature")), validate=True)
    except (ValueError, binascii.Error) as exc:
        raise ValueError(f"root or signature is not hex/base64 ({exc})") from None
    if len(root) != HASH_SIZE:
        raise ValueError(f"root: expected {HASH_SIZE} bytes, got {len(root)}")
    if len(signature) != 64:
        raise ValueError(f"signature: an Ed25519 signature has 64 bytes, got {len(signature)}")
    return Checkpoint(size, root, time_us, log, signature)


def signed_by(cp: Checkpoint, key: Ed25519PublicKey) -> bool:
    """Whether ``key`` made the signature of ``cp`` (RFC 8032 5.1.7)."""
    return keys.verify_signature(key, cp.signature, checkpoint_message(cp.tree_size, cp.root, cp.time_us))
