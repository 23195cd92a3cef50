"""Outbound (round 8): a repository that reads one message and then closes the connection, each
time (a syslog receiver closing after each message). Nothing counts as delivered (the connection
did not stay open ``confirm_after``), so nothing is lost; the recorded reason says that the
repository took messages and closed, not only that it may refuse pacsguard's certificate."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path

from test_outbound import pki  # noqa: F401 - pki is a fixture

from pacsguard.atna.outbound.sender import EARLY_CLOSE, Failure, OutboundSender
from pacsguard.atna.outbound.spool import Spool
from pacsguard.tls import client_context

HOST = "127.0.85.5"


def closes_after_each_message(listener: socket.socket, context: ssl.SSLContext, got: list[bytes],
                              stop: threading.Event) -> None:
    """Accept, read one octet-counted frame (RFC 5425 4.3), close; again."""
    while not stop.is_set():
        try:
            raw, _ = listener.accept()
        except TimeoutError:
            continue
        try:
            with context.wrap_socket(raw, server_side=True) as conn:
                conn.settimeout(5)
                head = b""
                while not head.endswith(b" "):
                    head += conn.recv(1)
                body = b""
                while len(body) < int(head):
                    body += conn.recv(int(head) - len(body))
                got.append(body)
        except (OSError, ValueError):
            continue


def test_a_repository_closing_after_each_message_is_named_and_loses_nothing(
        tmp_path: Path, pki: dict[str, Path]) -> None:  # noqa: F811
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pki["cert"], pki["key"])
    listener = socket.create_server((HOST, 0))
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    got: list[bytes] = []
    stop = threading.Event()
    thread = threading.Thread(target=closes_after_each_message, args=(listener, server, got, stop), daemon=True)
    thread.start()
    spool = Spool(tmp_path / "spool.db")
    spool.add([b"<AuditMessage>%d</AuditMessage>" % i for i in range(3)])
    failures: list[Failure] = []
    sender = OutboundSender(spool, "site-a", HOST, port, client_context(ca_file=pki["ca"]), server_name="localhost",
                            retry=0.2, retry_max=0.4, on_failed=failures.append)
    sender.start()
    try:
        end = time.monotonic() + 15
        while len(got) < 3 and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        sender.stop()
        stop.set()
        thread.join(5)
        listener.close()
    try:
        assert len(got) >= 3 and all(b"<AuditMessage>0</AuditMessage>" in m for m in got)
        assert spool.delivered() == 0 and spool.pending() == 3  # nothing counted as delivered, nothing lost
    finally:
        spool.close()
    assert len(failures) == 1, failures  # one event however often it closes
    reason = failures[0].reason
    assert reason != EARLY_CLOSE
    assert "within 1 s (confirm_after) of taking audit messages" in reason
    assert "close the connection after each message" in reason
