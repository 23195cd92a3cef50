"""A witness URL that answers 200 but is no witness (round 9, docs/witness.md): a proxy's or
another service's JSON page at the configured URL took every checkpoint as "delivered" when no
witness key was pinned, so the checkpoints left the queue and nobody held them, with no event
said. A witness that takes a checkpoint always countersigns it: without a countersignature the
checkpoint stays queued, the outage is recorded once (`pacsguard.witness.unreachable`), and it is
delivered when a real witness answers."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pacsguard.events.model import Event
from pacsguard.store import EventStore
from pacsguard.store.keys import generate_key
from pacsguard.witness.delivery import WitnessDelivery
from pacsguard.witness.errors import WitnessError
from pacsguard.witness.http import WitnessClient
from pacsguard.witness.push import HttpWitness
from store_helpers import make_events

HOST = "127.0.106.2"


class _NotAWitness(BaseHTTPRequestHandler):
    """Answers every POST 200 with a JSON body that is not a witness's answer."""

    answer = b'{"status": "ok"}'
    posts = 0

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).posts += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.answer)))
        self.end_headers()
        self.wfile.write(self.answer)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        return None


@pytest.fixture
def not_a_witness():  # type: ignore[no-untyped-def]
    server = ThreadingHTTPServer((HOST, 0), _NotAWitness)
    _NotAWitness.posts = 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _store(tmp_path: Path) -> EventStore:
    key = tmp_path / "site.key"
    generate_key(key)
    return EventStore.open(str(tmp_path / "store.db"), key_path=key, create=True, checkpoint_interval=3600)


@pytest.mark.parametrize("answer", [b'{"status": "ok"}', b"{}", b'{"cosignature": "!!", "received_us": 1}'])
def test_a_200_without_a_countersignature_is_not_a_delivery(tmp_path: Path, not_a_witness: str,
                                                            answer: bytes) -> None:
    _NotAWitness.answer = answer
    es = _store(tmp_path)
    es.append(make_events(4))
    cp = es.checkpoint()
    assert cp is not None
    push = HttpWitness(WitnessClient(not_a_witness, "t" * 64), es.leaves)
    with pytest.raises(WitnessError, match="without a countersignature: is this URL a pacsguard witness"):
        push.deliver(cp)
    es.close()


def test_the_checkpoints_stay_queued_and_the_outage_is_recorded(tmp_path: Path, not_a_witness: str) -> None:
    _NotAWitness.answer = b'{"status": "ok"}'
    es = _store(tmp_path)
    recorded: list[Event] = []
    delivery = WitnessDelivery([HttpWitness(WitnessClient(not_a_witness, "t" * 64), es.leaves)],
                               recorded.append, backoff=(0.05, 0.2), close_timeout=0.5)
    es.add_checkpoint_listener(delivery)
    es.append(make_events(4))
    es.checkpoint()
    deadline = time.monotonic() + 10
    while _NotAWitness.posts < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    courier = delivery.couriers[0]
    assert _NotAWitness.posts >= 3, "the checkpoint was not sent again"
    assert courier.delivered == 0 and len(courier.queue) == 1
    kinds = [e.kind for e in recorded]
    assert kinds == ["pacsguard.witness.unreachable"], kinds
    assert "without a countersignature" in json.dumps(recorded[0].details)
    es.close()


class _Trickle(BaseHTTPRequestHandler):
    """Sends the status line and headers, then the body one byte every 0.3 s (for at most 8 s)."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        end = time.monotonic() + 8
        try:
            while time.monotonic() < end:
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.3)
        except OSError:
            return  # the client gave up: what the test expects

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        return None


def test_a_witness_that_trickles_its_answer_is_given_up_at_the_deadline() -> None:
    """Each read had the socket's timeout, but the whole answer none: a witness, or whatever is on
    the path, sending a byte every few seconds held `audit verify --witness` (and a courier) for as
    long as it went on."""
    server = ThreadingHTTPServer((HOST, 0), _Trickle)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = WitnessClient(f"http://{HOST}:{server.server_address[1]}", timeout=1.0)
        started = time.monotonic()
        with pytest.raises(WitnessError, match=r"no whole answer within 1 s \(\d+ bytes of it came\)"):
            client.held("0123456789abcdef")
        assert time.monotonic() - started < 4
    finally:
        server.shutdown()
        server.server_close()
