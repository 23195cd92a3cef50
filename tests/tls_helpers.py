"""Shared by the TLS tests: what a server's describe_peer says of a client, over a socket pair."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

from pacsguard.tls.contexts import describe_peer


def peer_as_described(ca: Path, server_cert: Path, client_cert: Path) -> dict[str, object]:
    """Handshake a client presenting ``client_cert`` (its key beside it, .key) with a server
    presenting ``server_cert`` and requiring a certificate from ``ca``, over a socket pair (server
    name "localhost"); describe_peer of the client, as the server sees it."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(server_cert, server_cert.with_suffix(".key"))
    server.load_verify_locations(ca)
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.create_default_context(cafile=str(ca))
    client.load_cert_chain(client_cert, client_cert.with_suffix(".key"))
    a, b = socket.socketpair()
    peer: dict[str, object] = {}
    with a, b:
        a.settimeout(10)
        b.settimeout(10)

        def serve() -> None:
            with server.wrap_socket(a, server_side=True) as tls:
                peer.update(describe_peer(tls))

        thread = threading.Thread(target=serve)
        thread.start()
        with client.wrap_socket(b, server_hostname="localhost"):
            thread.join(10)
    return peer
