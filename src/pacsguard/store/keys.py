"""The Ed25519 key that signs the store's checkpoints (RFC 8032 via `cryptography`).

The private key lives in a file of its own (mode 0600), never in the YAML configuration; the
verifier needs only the public key, so a copy of it can be kept off the machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pacsguard.owner_only import write_private_file
from pacsguard.store.errors import StoreError


def generate_key(path: Path) -> Path:
    """Write a new private key to `path` (0600) and its public key to `path.pub`; refuse to overwrite."""
    if path.exists():
        raise StoreError(f"{path}: a signing key already exists; refusing to overwrite it")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    write_private_file(path, pem)  # its folder too is made 0700
    # The public half is meant to be copied off the machine: it keeps the umask's mode.
    public_path(path).write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def public_path(path: Path) -> Path:
    return path.with_name(path.name + ".pub")


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise StoreError(f"{path}: signing key not found (run `pacsguard init`)") from None
    except (ValueError, TypeError) as exc:
        raise StoreError(f"{path}: not a PEM Ed25519 private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise StoreError(f"{path}: the checkpoint key must be Ed25519, found {type(key).__name__}")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Accept either the public key file or the private key file (the public half is derived)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StoreError(f"{path}: key file not found") from None
    if b"PRIVATE KEY" in data:
        return load_private_key(path).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise StoreError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise StoreError(f"{path}: the checkpoint key must be Ed25519, found {type(key).__name__}")
    return key


def beside_store(target: str) -> Path | None:
    """The key a store file keeps beside it (`gateway run --store F` makes ``F.key``); None for a URL."""
    return None if "://" in target else Path(target + ".key")


def pick_public_key(candidates: Sequence[Path], signed_by: Sequence[str]) -> tuple[Path, Ed25519PublicKey] | None:
    """Of the key files that exist among ``candidates`` (public ``.pub`` or private), the first whose
    fingerprint signed a checkpoint (``signed_by``, newest first); else the first that exists, so
    that verify names both fingerprints; None if none exists."""
    found = [(path, load_public_key(path)) for path in dict.fromkeys(candidates) if path.is_file()]
    for wanted in signed_by:
        for path, key in found:
            if key_id(key) == wanted:
                return path, key
    return found[0] if found else None


def key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def verify_signature(key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True
