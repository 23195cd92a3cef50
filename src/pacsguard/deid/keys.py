"""The de-identification key: 32 random bytes whose holder alone can link pseudonyms back to
identities (the U action of PS3.15 E.1.1, the Patient ID and name, and the date shift of E.3.6 are
HMAC-SHA256 under it).

A key is kept as 64 hex digits in a file of mode 0600, or given in an environment variable. It is
never logged; what identifies it in manifests and Events is its fingerprint."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ENV = "PACSGUARD_DEID_KEY"
KEY_BYTES = 32


class KeyProblem(Exception):
    """A key file or variable is missing or not 64 hex digits (the message never holds the key)."""


@dataclass(frozen=True, slots=True)
class DeidKey:
    secret: bytes

    def __repr__(self) -> str:  # a key must never reach a log through repr()
        return f"DeidKey({self.fingerprint})"

    @property
    def fingerprint(self) -> str:
        """A public name for the key: SHA-256 over a label and the key, first 16 hex digits."""
        return "sha256:" + hashlib.sha256(b"pacsguard-deid-key\0" + self.secret).hexdigest()[:16]


def parse_key(text: str, where: str) -> DeidKey:
    value = text.strip()
    try:
        secret = bytes.fromhex(value)
    except ValueError:
        raise KeyProblem(f"{where}: not a hex key (pacsguard deid keygen writes one)") from None
    if len(secret) != KEY_BYTES:
        raise KeyProblem(f"{where}: a key is {KEY_BYTES * 2} hex digits, this one has {len(value)}")
    return DeidKey(secret)


def load_key(key_file: Path | None = None, env: str = DEFAULT_ENV) -> DeidKey:
    """The key from ``key_file`` if given, else from the environment variable ``env``."""
    if key_file is not None:
        try:
            text = key_file.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyProblem(f"{key_file}: cannot read the key file ({type(exc).__name__})") from None
        return parse_key(text, str(key_file))
    value = os.environ.get(env)
    if not value:
        raise KeyProblem(f"no key: give --key-file or set {env} (pacsguard deid keygen makes one)")
    return parse_key(value, f"${env}")


def generate_key(path: Path) -> DeidKey:
    """Write a new key to ``path`` (mode 0600, refusing to overwrite) and return it."""
    from pacsguard.owner_only import write_private_file

    key = DeidKey(secrets.token_bytes(KEY_BYTES))
    try:
        write_private_file(path, key.secret.hex().encode("ascii") + b"\n")
    except FileExistsError:
        raise KeyProblem(f"{path} exists; a key is never overwritten") from None
    return key


#: The AES key that seals originals is derived from the de-identification key (HKDF, RFC 5869),
#: so no second secret is needed and the HMAC pseudonyms never share a key with the cipher.
_SEAL_INFO = b"pacsguard-deid-seal v1"
_NONCE_BYTES = 12  # AES-GCM's 96-bit nonce (NIST SP 800-38D 8.2.2: random nonces)


def _seal_key(key: DeidKey) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_SEAL_INFO).derive(key.secret)


def seal(key: DeidKey, plaintext: bytes, context: bytes) -> str:
    """``plaintext`` encrypted and authenticated under ``key`` (AES-256-GCM, NIST SP 800-38D, a
    random nonce), bound to ``context`` (authenticated, not encrypted): base64 text. Only the key's
    holder can open it; a sealed value moved to another context does not open."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = secrets.token_bytes(_NONCE_BYTES)
    return base64.b64encode(nonce + AESGCM(_seal_key(key)).encrypt(nonce, plaintext, context)).decode("ascii")


def unseal(key: DeidKey, sealed: str, context: bytes) -> bytes:
    """Open what :func:`seal` made; KeyProblem when it was sealed under another key, in another
    context, or altered."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        data = base64.b64decode(sealed, validate=True)
        return AESGCM(_seal_key(key)).decrypt(data[:_NONCE_BYTES], data[_NONCE_BYTES:], context)
    except (InvalidTag, ValueError):
        raise KeyProblem("the sealed value does not open with this key (another key, or altered)") from None
