"""Whether a connection kept open between uses is still there: one look, without waiting, before
something is sent on it (the syslog sink, the outbound ATNA sender, a store-and-forward
destination's kept association)."""

from __future__ import annotations

import select
import socket
import ssl
from typing import Literal

Probe = Literal["quiet", "data", "eof", "reset"]


def probe(sock: socket.socket) -> Probe:
    """What the peer sent while the connection was idle: nothing ("quiet"), application data
    ("data", read and dropped: the caller decides what it means), its end ("eof"), or a reset or
    TLS error ("reset"). TLS records that carry no data (TLS 1.3 session tickets) are consumed
    and count as quiet. The socket's timeout is as it was after the look."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):  # closed, or a descriptor select cannot take
        return "reset"
    if not readable and not (isinstance(sock, ssl.SSLSocket) and sock.pending()):  # decrypted, not yet read
        return "quiet"
    timeout = sock.gettimeout()
    try:
        sock.setblocking(False)
        return "data" if sock.recv(65536) else "eof"
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
        return "quiet"
    except OSError:  # ssl.SSLError included
        return "reset"
    finally:
        try:
            sock.settimeout(timeout)
        except OSError:
            pass
