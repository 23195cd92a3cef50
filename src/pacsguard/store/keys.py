"""The Ed25519 key that signs the store's checkpoints (RFC 8032 via `cryptography`).

The private key lives in a file of its own (mode 0600), never in the YAML configuration; the
verifier needs only the public key, so a copy of it can be kept off the machine.
"""

from __future__ import annotations

import hashlib
import os
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


def _kind(key: object) -> str:
    """"RSA", "EC", "Ed448"... for a key of another type than the checkpoints' Ed25519."""
    name = type(key).__name__.removeprefix("_")
    return name.removesuffix("PrivateKey").removesuffix("PublicKey") or name


#: The most a key file may hold: a PEM Ed25519 key is some 120 bytes, one with comments or a
#: certificate beside it a few KiB.
MAX_KEY_FILE = 64 * 1024


def _read_key_file(path: Path, where: str, missing: str) -> bytes:
    """The bytes of a key file, or a StoreError saying what ``path`` is instead: a folder, missing,
    unreadable or empty (not a bare "[Errno 21] Is a directory" naming neither the file's role
    nor what to give)."""
    try:
        if path.is_dir():
            raise StoreError(f"{where}: a folder, not a key file")
        with path.open("rb") as f:
            data = f.read(MAX_KEY_FILE + 1)  # bounded: --key /dev/zero grew to 23 GB before the kernel ended it
    except FileNotFoundError:
        raise StoreError(f"{where}: {missing}") from None
    except PermissionError:
        raise StoreError(f"{where}: cannot be read (permission denied)") from None
    except OSError as exc:
        raise StoreError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    if not data.strip():
        raise StoreError(f"{where}: an empty file, not a key")
    if len(data) > MAX_KEY_FILE:
        raise StoreError(f"{where}: more than {MAX_KEY_FILE // 1024} KiB, not a key file (a PEM Ed25519 key is "
                         "under 200 bytes)")
    return data


def _not_a_key(data: bytes, wanted: str) -> str:
    """Why ``data`` is no PEM key of the kind wanted (RFC 7468 section 2: its BEGIN label)."""
    if b"-----BEGIN CERTIFICATE-----" in data:
        return f"a certificate, not {wanted}"
    if b"-----BEGIN" not in data:
        return f"not a PEM file (no -----BEGIN line); {wanted} is wanted"
    return f"not {wanted} (its PEM block cannot be read)"


def load_private_key(path: Path, *, role: str = "") -> Ed25519PrivateKey:
    """The Ed25519 private key in the PEM (PKCS #8, RFC 8410) file ``path``; ``role`` names the
    option or configuration key that gave it (``--key``, ``store.signing_key``) in every error."""
    where = f"{role}: {path}" if role else str(path)
    wanted = "a PEM Ed25519 private key"
    data = _read_key_file(path, where, "signing key not found (run `pacsguard init`)")
    if b"PRIVATE KEY" not in data and b"PUBLIC KEY" in data:
        beside = f" ({path.name.removesuffix('.pub')}, beside it?)" if path.name.endswith(".pub") else ""
        raise StoreError(f"{where}: a public key; the private signing key is wanted{beside}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # an encrypted key: pacsguard signs unattended, with no passphrase to ask for
        raise StoreError(f"{where}: an encrypted private key; give it unencrypted (mode 0600)") from None
    except ValueError:  # the library's text names neither the file nor what to give
        raise StoreError(f"{where}: {_not_a_key(data, wanted)}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise StoreError(f"{where}: the checkpoint key must be Ed25519, found a key of type {_kind(key)}")
    return key


def load_public_key(path: Path, *, role: str = "") -> Ed25519PublicKey:
    """Accept either the public key file or the private key file (the public half is derived);
    ``role`` names the option or configuration key that gave it in every error."""
    where = f"{role}: {path}" if role else str(path)
    data = _read_key_file(path, where, "key file not found")
    if b"PRIVATE KEY" in data:
        return load_private_key(path, role=role).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise StoreError(f"{where}: {_not_a_key(data, 'a PEM Ed25519 public key')}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise StoreError(f"{where}: the checkpoint key must be Ed25519, found a key of type {_kind(key)}")
    return key


def beside_store(target: str) -> Path | None:
    """Where `gateway run --store F` made F's key before keys moved out of the store's folder
    (``F.key``): still used when it exists, so older stores keep their key; None for a URL."""
    return None if "://" in target else Path(target + ".key")


KEY_DIR_ENV = "PACSGUARD_KEY_DIR"


def key_dir() -> Path:
    """The folder for keys pacsguard makes itself, away from any store: $PACSGUARD_KEY_DIR if set;
    /etc/pacsguard/keys for root; else $XDG_CONFIG_HOME/pacsguard/keys (XDG Base Directory
    Specification; default ~/.config/pacsguard/keys)."""
    chosen = os.environ.get(KEY_DIR_ENV)
    if chosen:
        return Path(chosen)
    if os.geteuid() == 0:
        return Path("/etc/pacsguard/keys")
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "pacsguard" / "keys"


def default_key(target: str) -> Path:
    """The signing key `gateway run --store TARGET` makes when no --key is given: in `key_dir()`,
    named after the store and a digest of its absolute path or URL (without a password), so that
    two stores never share one by accident."""
    if "://" in target:
        scheme, rest = target.split("://", 1)
        host = rest.rsplit("@", 1)[-1]
        where, name = f"{scheme}://{host}", host.rsplit("/", 1)[-1] or "store"
    else:
        where = str(Path(target).resolve())
        name = Path(target).name
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:64]
    return key_dir() / f"{safe}-{hashlib.sha256(where.encode()).hexdigest()[:12]}.key"


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
