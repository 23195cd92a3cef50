"""Round 10, area D: the witness service's 32 connections, and the clients that only hold them.

A witness serves at most 32 connections at once. Idle ones (a TLS scan, a client that connects and
says nothing) held their slot until the socket's timeout ran out on a read, and one trickling its
request head a byte at a time held it for as long as it went on: meanwhile a store's delivery was
closed unanswered, recorded as an outage, and retried. Now a connection that has not sent its
request is the first to go when every slot is taken (the oldest closed for the newcomer), and each
request must arrive whole within `timeout` seconds (RFC 9112 2.1), however it trickles.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacsguard.config.schema import SecretRef
from pacsguard.events.model import Event
from pacsguard.store import EventStore
from pacsguard.store.keys import generate_key, key_id, load_public_key, public_path
from pacsguard.tls import client_context, make_ca, make_cert
from pacsguard.witness.build import witness_server
from pacsguard.witness.config import WitnessedLog, WitnessServiceConfig
from pacsguard.witness.delivery import WitnessDelivery
from pacsguard.witness.http import WitnessClient
from pacsguard.witness.push import HttpWitness
from pacsguard.witness.server import MAX_CLIENTS, WitnessServer
from store_helpers import make_events

HOST = "127.0.105.21"  # this helper's loopback range (round 10, area D)
TOKEN = "t0ken-of-site-a-round-10"
#: More idle connections than the witness has slots.
IDLE = MAX_CLIENTS + 8


class Setup:
    """A witness service on HOST (HTTP or HTTPS) pinning one site's key, and that site's store."""

    def __init__(self, tmp: Path, tls: bool, timeout: float) -> None:
        self.tmp = tmp
        self.site_key = generate_key(tmp / "site" / "site.key")
        settings: dict[str, object] = {
            "enabled": True, "host": HOST, "port": 0, "storage": Path("held"), "signing_key": Path("keys/w.key"),
            "timeout": timeout,
            "logs": [WitnessedLog(name="site-a", public_key=public_path(self.site_key),
                                  token=SecretRef(env="SITE_A_TOKEN"))]}
        self.context = None
        if tls:
            ca, ca_key = make_ca(tmp / "pki", "Hospital CA", 30)
            cert, key = make_cert(tmp / "pki", "witness", ca, ca_key, hosts=[HOST], server=True, days=30)
            settings["tls"] = {"cert_file": cert, "key_file": key}
            self.context = client_context(ca_file=ca)
        self.server: WitnessServer = witness_server(WitnessServiceConfig.model_validate(settings),
                                                    lambda p: tmp / "witness" / p, lambda e: None)
        self.url = self.server.start()

    def deliver_one(self, recorded: list[Event]) -> tuple[WitnessDelivery, EventStore]:
        """The site's store, its witness delivery (as `serve` builds it), and one signed checkpoint."""
        es = EventStore.open(str(self.tmp / "site" / "site.db"), key_path=self.site_key, create=True,
                             checkpoint_interval=3600)
        push = HttpWitness(WitnessClient(self.url, TOKEN, self.context), es.leaves,
                           witness_key=public_path(self.tmp / "witness" / "keys" / "w.key"))
        delivery = WitnessDelivery([push], recorded.append, backoff=(0.05, 0.2), close_timeout=1.0)
        es.add_checkpoint_listener(delivery)
        es.append(make_events(5))
        assert es.checkpoint() is not None
        return delivery, es

    def held(self) -> list[int]:
        log = key_id(load_public_key(self.site_key))
        return [h["tree_size"] for h in WitnessClient(self.url, context=self.context).held(log)]


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SITE_A_TOKEN", TOKEN)


@pytest.fixture(params=["http", "https"])
def setup(request: pytest.FixtureRequest, tmp_path: Path, token: None) -> Iterator[Setup]:
    s = Setup(tmp_path, request.param == "https", timeout=10.0)
    try:
        yield s
    finally:
        s.server.close()


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_a_delivery_gets_through_while_idle_connections_hold_every_slot(setup: Setup) -> None:
    """40 idle connections, more than the 32 slots, opened before the store delivers: its first
    try is served at once (no outage recorded), within a bound far under the 10 s timeout, with
    no idle connection closed by its timeout yet."""
    port = _port_of(setup.url)
    idle = [socket.create_connection((HOST, port), timeout=15) for _ in range(IDLE)]
    recorded: list[Event] = []
    try:
        time.sleep(0.5)  # every one accepted: the slots are all taken
        assert not setup.server.httpd.slots.acquire(blocking=False), "the idle connections hold no slot"
        started = time.monotonic()
        delivery, es = setup.deliver_one(recorded)
        try:
            while delivery.couriers[0].delivered == 0 and time.monotonic() - started < 5:
                time.sleep(0.02)
            took = time.monotonic() - started
            assert delivery.couriers[0].delivered == 1, f"not delivered within 5 s; recorded: {recorded}"
        finally:
            es.close()
        assert took < 3.0, f"the delivery took {took:.1f} s"
        assert [e.kind for e in recorded] == [], "the first try was refused: the witness was full"
        # The eight past 32 each closed an older idle one, and the delivery one more.
        assert sum(_closed(sock) for sock in idle) >= IDLE - MAX_CLIENTS + 1
        assert setup.held() == [5]
    finally:
        for sock in idle:
            sock.close()


def test_a_request_trickled_in_is_cut_off_at_the_timeout(tmp_path: Path, token: None,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A client sending its request head a byte every 0.2 s (each byte well within the 1 s timeout)
    is closed when the 1 s for the whole request are over, not when it stops; the service answers
    the next client as before."""
    s = Setup(tmp_path, False, timeout=1.0)
    slow = socket.create_connection((HOST, _port_of(s.url)), timeout=15)
    try:
        request = b"GET /v1/logs/0123456789abcdef/checkpoints HTTP/1.1\r\nHost: w\r\nX-Pad: " + b"a" * 200
        started, closed = time.monotonic(), False
        for byte in request:
            if time.monotonic() - started > 8:
                break
            try:
                slow.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.2)
            if _closed(slow):
                closed = True
                break
        took = time.monotonic() - started
        assert closed, f"the connection was still open after {took:.1f} s of trickling"
        assert took < 3.0, f"closed only after {took:.1f} s"
        assert s.held() == []  # and it answers the next client
        assert "Traceback" not in caplog.text
    finally:
        slow.close()
        s.server.close()


def test_idle_connections_are_closed_oldest_first_for_newcomers(tmp_path: Path, token: None,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """With every slot idle, each newcomer takes the slot of the connection that has waited
    longest: the first ones opened are closed, the newest still open, and no warning is logged
    for them (a TLS scan would make hundreds)."""
    s = Setup(tmp_path, False, timeout=10.0)
    port = _port_of(s.url)
    caplog.set_level(logging.WARNING, logger="pacsguard.witness")
    idle = []
    try:
        for _ in range(MAX_CLIENTS):
            idle.append(socket.create_connection((HOST, port), timeout=15))
            time.sleep(0.01)  # each accepted in turn: the order is the order opened
        time.sleep(0.3)
        newer = [socket.create_connection((HOST, port), timeout=15) for _ in range(3)]
        idle += newer
        time.sleep(0.5)
        assert [_closed(sock) for sock in idle[:3]] == [True] * 3
        assert not any(_closed(sock) for sock in idle[3:])
        assert "witness service" not in caplog.text
    finally:
        for sock in idle:
            sock.close()
        s.server.close()


def _closed(sock: socket.socket) -> bool:
    """Whether the peer closed ``sock`` (an end of file, or a reset, waiting to be read)."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)
        sock.settimeout(15)
