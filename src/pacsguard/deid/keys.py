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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ENV = "PACSGUARD_DEID_KEY"
KEY_BYTES = 32
_MAX_KEY_FILE = 1024  # bytes read of a key file: 64 hex digits, a newline, spaces a hand edit left


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
        raise KeyProblem(f"{where}: not a key (not hex digits; pacsguard deid keygen writes one)") from None
    if len(secret) != KEY_BYTES:
        raise KeyProblem(f"{where}: a key is {KEY_BYTES * 2} hex digits, this one has {len(value)}")
    return DeidKey(secret)


def load_key(key_file: Path | None = None, env: str = DEFAULT_ENV) -> DeidKey:
    """The key from ``key_file`` if given, else from the environment variable ``env``."""
    if key_file is not None:
        if key_file.is_dir():
            raise KeyProblem(f"{key_file}: a folder, not a pacsguard key file")
        try:
            with open(key_file, "rb") as f:
                data = f.read(_MAX_KEY_FILE + 1)  # a key file is 65 bytes: a DICOM file is not read whole
        except OSError as exc:
            raise KeyProblem(f"{key_file}: cannot read the key file ({exc.strerror or type(exc).__name__})") from None
        if len(data) > _MAX_KEY_FILE:
            raise KeyProblem(f"{key_file}: not a pacsguard key file (more than {_MAX_KEY_FILE} bytes; a key file "
                             f"holds {KEY_BYTES * 2} hex digits, as pacsguard deid keygen writes)")
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise KeyProblem(f"{key_file}: not a pacsguard key file (not text; a key file holds {KEY_BYTES * 2} "
                             "hex digits, as pacsguard deid keygen writes)") from None
        return parse_key(text, str(key_file))
    value = os.environ.get(env)
    if not value:
        raise KeyProblem(f"no key: give --key-file or set {env} (pacsguard deid keygen makes one)")
    return parse_key(value, f"${env}")


def generate_key(path: Path, announce: Callable[[DeidKey], None] | None = None) -> DeidKey:
    """Write a new key to ``path`` (mode 0600, refusing to overwrite) and return it, all or nothing:
    the file is created exclusively, written, flushed to the disk with its folder (fsync), and then
    ``announce`` tells of it (the command prints its fingerprint). When any step fails (a full disk,
    a folder that cannot be written, an output that cannot be written) the file this call made is
    removed again and KeyProblem says why, so no partial key, nor one nobody was told of, remains."""
    from pacsguard.owner_only import FILE_MODE, make_private_dir

    key = DeidKey(secrets.token_bytes(KEY_BYTES))
    try:
        make_private_dir(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    except FileExistsError:
        raise KeyProblem(f"{path} exists; a key is never overwritten") from None
    except OSError as exc:
        raise KeyProblem(f"{path}: cannot create the key file ({exc.strerror or exc})") from None
    try:
        _write_durably(fd, path, key.secret.hex().encode("ascii") + b"\n")
    except OSError as exc:
        raise KeyProblem(f"{path}: cannot write the key ({exc.strerror or exc}); "
                         f"{_take_back(path, key, whole=False)}") from None
    if announce is not None:
        try:
            announce(key)
        except OSError as exc:
            raise KeyProblem(f"{path}: {exc.strerror or exc}; {_take_back(path, key, whole=True)}") from None
    return key


def _write_durably(fd: int, path: Path, data: bytes) -> None:
    """``data`` written whole to ``fd`` (closed after) and flushed to the disk, with the folder entry
    naming ``path`` (fsync(2) of the file, then of its folder: a crash after it keeps the file)."""
    try:
        os.fchmod(fd, 0o600)  # as owner_only does: the umask cannot widen it
        view = memoryview(data)
        while view:  # os.write may write less than asked (a signal, a nearly full disk)
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    folder = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _take_back(path: Path, key: DeidKey, *, whole: bool) -> str:
    """Remove the key file this call made, after a later step failed; what the error adds. When it
    cannot be removed, say plainly what the file holds: a whole, durable key (``whole``), or a key
    cut short, which no command would take."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        if whole:
            return (f"the key in it is complete and on disk (key {key.fingerprint}), but could not be removed "
                    f"({exc.strerror or exc}): use it, or delete it")
        return f"it holds a key cut short and could not be removed ({exc.strerror or exc}): delete it"
    return "no key file was kept"


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
