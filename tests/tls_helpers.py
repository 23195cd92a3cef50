"""Shared by the TLS tests: what a server's describe_peer says of a client, over a socket pair."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def s_server_connection(host: str, cert: Path, key: Path, *args: str) -> Iterator[socket.socket]:
    """A TCP connection to ``openssl s_server`` (one accept on a free port of ``host``, with
    ``cert``, ``key`` and ``args``), for a client context to be tried on; the server is killed
    after."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(["openssl", "s_server", "-accept", f"{host}:{port}", "-cert", str(cert), "-key",
                               str(key), *args, "-naccept", "1", "-quiet"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                raw = socket.create_connection((host, port), timeout=10)
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "openssl s_server did not start"
                time.sleep(0.1)
        with raw:
            yield raw
    finally:
        server.kill()
        server.wait(10)
