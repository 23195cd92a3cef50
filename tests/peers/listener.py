"""A TCP listener for the tests' misbehaving peers (witnesses, a raw-socket PACS): each accepted
connection is served by ``serve`` in a thread of its own until ``close``."""

from __future__ import annotations

import socket
import threading


class Listener:
    """Listens on ``host`` (a free port); a subclass's ``serve`` handles each connection."""

    def __init__(self, host: str, join_for: float = 6.0) -> None:
        self.listener = socket.create_server((host, 0))
        self.listener.settimeout(0.2)
        self.port: int = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.join_for = join_for
        self.accepting = threading.Thread(target=self._accept, daemon=True)
        self.accepting.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self.serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        self.accepting.join(5)
        for thread in self.threads:
            thread.join(self.join_for)


def read_head(conn: socket.socket) -> bytes:
    """An HTTP request's head, up to and with its blank line (and what came in the same reads)."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(4096)
        if not chunk:
            raise OSError("closed")
        head += chunk
    return head
