"""Round 10, area D: a witness that trickles its answer's status line and headers (RFC 9112 2.1).

The client bounded the body of an answer by the request's timeout, but the status line and the
headers only per read: a witness (or whatever is on the path) sending a byte every fraction of a
second, each before the socket's timeout, held a delivery's courier, and `audit verify --witness`,
as long as it went on. The whole answer now has one deadline, the client's timeout: then the
delivery is retried later (the outage recorded once) and verify exits 2 naming the slow witness.

The witness here is a real socket server, over HTTP and over HTTPS (each trickled byte its own TLS
record), that trickles for at most TRICKLE_FOR seconds and then hangs up.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pacsguard.events.model import Event
from pacsguard.store import EventStore
from pacsguard.store.keys import generate_key, public_path
from pacsguard.tls import client_context, make_ca, make_cert, server_context
from pacsguard.witness.delivery import WitnessDelivery
from pacsguard.witness.errors import WitnessError
from pacsguard.witness.http import WitnessClient
from pacsguard.witness.push import HttpWitness
from peers.listener import Listener
from store_helpers import make_events
from test_cli import run

HOST = "127.0.105.11"  # this helper's loopback range (round 10, area D)
#: How long the witness trickles, at most: far past every deadline the tests expect.
TRICKLE_FOR = 30.0
#: A byte every STEP seconds: each read gets one well before any socket timeout runs out.
STEP = 0.2


class TricklingWitness(Listener):
    """Accepts connections on HOST; reads each request's head, then sends a status line and an
    endless header field one byte every STEP seconds, for at most TRICKLE_FOR seconds."""

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        self.context = context
        self.requests = 0
        super().__init__(HOST, STEP + 6)

    @property
    def url(self) -> str:
        scheme = "https" if self.context is not None else "http"
        return f"{scheme}://{HOST}:{self.port}"

    def serve(self, conn: socket.socket) -> None:
        end = time.monotonic() + TRICKLE_FOR
        try:
            conn.settimeout(5)
            if self.context is not None:
                conn = self.context.wrap_socket(conn, server_side=True)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            self.requests += 1
            answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Pad: " + b"a" * 100_000
            for byte in answer:
                if self.stop.is_set() or time.monotonic() > end:
                    return
                conn.sendall(bytes([byte]))
                time.sleep(STEP)
        except OSError:
            return  # the client gave up: what the tests expect
        finally:
            conn.close()



def witness_pki(tmp_path: Path, host: str) -> dict[str, Path]:
    """A CA and the witness's server certificate for ``host``."""
    ca, ca_key = make_ca(tmp_path / "pki", "Hospital CA", 30)
    cert, key = make_cert(tmp_path / "pki", "witness", ca, ca_key, hosts=[host], server=True, days=30)
    return {"ca": ca, "cert": cert, "key": key}


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    return witness_pki(tmp_path, HOST)


@pytest.fixture(params=["http", "https"])
def trickling(request: pytest.FixtureRequest, pki: dict[str, Path]) -> Iterator[tuple[TricklingWitness,
                                                                                       ssl.SSLContext | None]]:
    tls = request.param == "https"
    server = TricklingWitness(server_context(pki["cert"], pki["key"]) if tls else None)
    try:
        yield server, client_context(ca_file=pki["ca"]) if tls else None
    finally:
        server.close()


def _store(tmp_path: Path) -> tuple[EventStore, Path]:
    key = generate_key(tmp_path / "keys" / "site.key")
    es = EventStore.open(str(tmp_path / "site.db"), key_path=key, create=True, checkpoint_interval=3600)
    return es, key


def test_reading_a_trickling_witness_ends_at_the_deadline(trickling) -> None:  # type: ignore[no-untyped-def]
    """`audit verify --witness`'s read (held): a status line and headers that trickle in are given up
    at the client's timeout, named as too slow, not waited for while they come."""
    server, context = trickling
    client = WitnessClient(server.url, context=context, timeout=1.0)
    started = time.monotonic()
    with pytest.raises(WitnessError) as raised:
        client.held("0123456789abcdef")
    took = time.monotonic() - started
    assert took < 3.0, f"given up after {took:.1f} s, not at the 1 s deadline: {raised.value}"
    assert raised.match(r"witness https?://127\.0\.105\.11:\d+: too slow: no whole answer within 1 s "
                        r"\(\d+ bytes of it came\)")
    assert server.requests == 1


def retried_later(client: WitnessClient, tries: Callable[[], int], tmp_path: Path, within: float) -> Event:
    """A store's delivery of a checkpoint through ``client`` to a witness too slow for it: the
    courier gives the checkpoint up at the deadline, records the outage once, keeps the checkpoint
    queued and tries again after its backoff (``tries()`` counts the tries the witness saw, a
    second within ``within`` s). Returns the outage's record."""
    es, _ = _store(tmp_path)
    recorded: list[Event] = []
    delivery = WitnessDelivery([HttpWitness(client, es.leaves)], recorded.append, backoff=(0.1, 0.2),
                               close_timeout=0.5)
    es.add_checkpoint_listener(delivery)
    started = time.monotonic()
    try:
        es.append(make_events(4))
        es.checkpoint()
        while tries() < 2 and time.monotonic() - started < within:
            time.sleep(0.05)
        assert tries() >= 2, f"the checkpoint was not sent again within {within:g} s: the first try is still held"
        courier = delivery.couriers[0]
        assert courier.delivered == 0 and len(courier.queue) == 1
        assert [e.kind for e in recorded] == ["pacsguard.witness.unreachable"]
        return recorded[0]
    finally:
        es.close()


def test_a_delivery_to_a_trickling_witness_is_retried_later(trickling, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Named as too slow, the witness's URL in the record."""
    server, context = trickling
    outage = retried_later(WitnessClient(server.url, "t" * 64, context, timeout=1.0), lambda: server.requests,
                           tmp_path, 6)
    assert "too slow: no whole answer within 1 s" in outage.message and server.url in outage.message


def test_audit_verify_names_the_witness_that_was_too_slow(tmp_path: Path) -> None:
    """The command an administrator runs: exit 2 within the 10 s timeout (and a margin), one line
    that names the witness's URL and says it was too slow; no traceback."""
    es, key = _store(tmp_path)
    es.append(make_events(3))
    assert es.checkpoint() is not None
    es.close()
    server = TricklingWitness()
    try:
        started = time.monotonic()
        proc = run("audit", "verify", "--store", str(tmp_path / "site.db"), "--key", str(public_path(key)),
                   "--witness", server.url, cwd=tmp_path, check_code=2)
        took = time.monotonic() - started
    finally:
        server.close()
    assert took < 20, f"audit verify took {took:.1f} s: {proc.stderr}"
    assert f"witness {server.url}: too slow: no whole answer within 10 s" in proc.stderr, proc.stderr
