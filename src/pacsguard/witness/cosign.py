"""The witness's countersignature: its own Ed25519 signature (RFC 8032) over the log's checkpoint,
saying "this witness held this tree head of this log at this time"."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pacsguard.store import keys
from pacsguard.store.store import Checkpoint


def cosignature_message(cp: Checkpoint, received_us: int) -> bytes:
    """The bytes a countersignature covers: the log, its signed tree head and when the witness took it."""
    return (f"pacsguard-cosignature/v1\n{cp.key_id}\n{cp.tree_size}\n{cp.root.hex()}\n{cp.time_us}\n"
            f"{received_us}\n").encode()


def cosign(key: Ed25519PrivateKey, cp: Checkpoint, received_us: int) -> bytes:
    return key.sign(cosignature_message(cp, received_us))


def cosigned_by(key: Ed25519PublicKey, cp: Checkpoint, received_us: int, signature: bytes) -> bool:
    return keys.verify_signature(key, signature, cosignature_message(cp, received_us))
