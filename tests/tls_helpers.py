"""Shared by the TLS tests: what a server's describe_peer says of a client, over a socket pair."""

from __future__ import annotations

import socket
import ssl
import threading

from pacsguard.tls.contexts import describe_peer


def peer_as_described(server: ssl.SSLContext, client: ssl.SSLContext) -> dict[str, object]:
    """Handshake ``client`` with ``server`` over a socket pair (server name "localhost") and
    return describe_peer of the client, as the server sees it."""
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
