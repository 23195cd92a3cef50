"""ClamAV as an optional second engine, through clamd's socket with the INSTREAM command
(clamd(8): a "z"-prefixed command, then chunks each preceded by a 4-byte big-endian length, a
zero length to end; the answer is "stream: OK", "stream: NAME FOUND" or "... ERROR")."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from pacsguard.scan.model import Finding, Level

CHUNK = 1 << 20
REF = "clamd(8) INSTREAM"


class ClamdError(Exception):
    """clamd could not be reached or answered with an error."""


@dataclass(frozen=True, slots=True)
class Clamd:
    """A clamd address: a Unix socket path, or ``tcp://host:port``."""

    address: str
    timeout: float = 60.0

    def _connect(self) -> socket.socket:
        if self.address.startswith("tcp://"):
            host, _, port = self.address[6:].rpartition(":")
            return socket.create_connection((host, int(port)), timeout=self.timeout)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.address)
        except OSError:
            sock.close()
            raise
        return sock

    def ping(self) -> bool:
        try:
            with self._connect() as sock:
                sock.sendall(b"zPING\0")
                return sock.recv(64).rstrip(b"\0\n") == b"PONG"
        except OSError:
            return False

    def instream(self, data: bytes) -> str | None:
        """The signature clamd found in ``data``, or None when clean; ClamdError when it could not say."""
        try:
            with self._connect() as sock:
                sock.sendall(b"zINSTREAM\0")
                view = memoryview(data)
                for at in range(0, len(view), CHUNK):
                    chunk = view[at:at + CHUNK]
                    sock.sendall(struct.pack(">I", len(chunk)) + chunk)
                sock.sendall(struct.pack(">I", 0))
                reply = b""
                while not reply.endswith(b"\0"):
                    part = sock.recv(4096)
                    if not part:
                        break
                    reply += part
        except OSError as exc:
            raise ClamdError(f"clamd at {self.address}: {exc}") from exc
        text = reply.rstrip(b"\0\n").decode("utf-8", "replace")
        if text.endswith("FOUND"):
            return text.removeprefix("stream:").strip().removesuffix("FOUND").strip()
        if text.endswith("OK"):
            return None
        raise ClamdError(f"clamd at {self.address}: {text or 'no answer'}")

    def findings(self, data: bytes) -> list[Finding]:
        try:
            name = self.instream(data)
        except ClamdError as exc:
            return [Finding("clamav.error", Level.LOW, str(exc), None, REF)]
        if name is None:
            return []
        return [Finding("clamav.found", Level.HIGH, f"ClamAV signature {name}", None, REF)]
