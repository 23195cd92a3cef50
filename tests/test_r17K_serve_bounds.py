"""Round 17, area K (uptime): what a client can make `pacsguard serve` hold stays bounded.

Metrics series. A DIMSE command whose Command Field no service defines (PS3.7 E.1) is recorded as
`dicom.dimse.unknown-0xNNNN`; its `pacsguard_dimse_requests_total` series was labelled
`service="UNKNOWN-0XNNNN"`, so any client the route's `hosts` admit could add one series per value
of the 16-bit field (65,536 per route and status), each kept for the life of `serve` and sent on
every scrape. Now every such request is counted under one `service="UNKNOWN"`.

Requests waiting for their answer. A client that sends requests and never reads the answers had
each of them held by the gateway until the association ended (~3 KB each): 65,000 C-ECHO-RQs on
one association (all 16-bit Message IDs are distinct) grew `serve` by 185 MB, and a route admits
256 associations. Now a sender with MAX_OUTSTANDING requests unanswered is aborted at the next
(PS3.7 D.3.3.3: the window is 1 unless negotiated; dcmtk and pynetdicom ask for no more).

Checked end to end: a real `pacsguard serve` (relay route to its demo upstream, metrics on), raw
associations over loopback, the scraped text and the store."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pacsguard.events.model import Event
from pacsguard.metrics.counters import EventCounters
from pacsguard.records.dicom import MAX_OUTSTANDING
from pacsguard.store import EventQuery, EventStore

HOST = "127.0.78.1"  # this helper's loopback address (round 17, area K)
PACSGUARD = Path(sys.executable).with_name("pacsguard")
VERIFICATION = b"1.2.840.10008.1.1"
IMPLICIT_LE = b"1.2.840.10008.1.2"
REQUESTS = "pacsguard_dimse_requests_total"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _item(kind: int, value: bytes) -> bytes:
    return bytes([kind, 0]) + struct.pack(">H", len(value)) + value


def _associate_rq(called: str, calling: str) -> bytes:
    """A-ASSOCIATE-RQ (PS3.8 9.3.2) proposing Verification in Implicit VR Little Endian."""
    context = _item(0x20, b"\x01\x00\x00\x00" + _item(0x30, VERIFICATION) + _item(0x40, IMPLICIT_LE))
    user = _item(0x50, _item(0x51, struct.pack(">I", 16384)))
    body = (b"\x00\x01\x00\x00" + called.ljust(16).encode() + calling.ljust(16).encode() + bytes(32)
            + _item(0x10, b"1.2.840.10008.3.1.1.1") + context + user)
    return b"\x01\x00" + struct.pack(">I", len(body)) + body


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0, element, len(value)) + value


def _command(command_field: int, message_id: int = 1) -> bytes:
    """A P-DATA-TF (PS3.8 9.3.5) with one command set (PS3.7 E.1), no data set."""
    body = (_element(0x0002, VERIFICATION + b"\0") + _element(0x0100, struct.pack("<H", command_field))
            + _element(0x0110, struct.pack("<H", message_id)) + _element(0x0800, struct.pack("<H", 0x0101)))
    pdv = b"\x01\x03" + _element(0x0000, struct.pack("<I", len(body))) + body
    return b"\x04\x00" + struct.pack(">I", len(pdv) + 4) + struct.pack(">I", len(pdv)) + pdv


def _send_unknown(port: int, command_field: int) -> None:
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(_associate_rq("PACSGUARD", "PROBE"))
        assert sock.recv(1) == b"\x02", "the relay did not accept the association"
        sock.sendall(_command(command_field))
        sock.settimeout(5)
        while sock.recv(65536):  # the gateway aborts the association: read until it closes
            pass


Labels = tuple[tuple[str, str], ...]


def _scrape(port: int) -> dict[tuple[str, Labels], float]:
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _requests(samples: dict[tuple[str, Labels], float]) -> dict[Labels, float]:
    return {labels: value for (name, labels), value in samples.items() if name == REQUESTS}


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """`pacsguard serve` with a relay route to its demo upstream and metrics: (route port, metrics port)."""
    route, upstream, metrics = _free_port(), _free_port(), _free_port()
    config = tmp_path / "pacsguard.yaml"
    config.write_text(f"""
store: {{url: var/pacsguard.db, signing_key: var/keys/store-signing.key}}
gateway:
  routes:
    - name: relay
      listen: {{host: {HOST}, port: {route}, ae_title: PACSGUARD}}
      upstream: {{host: {HOST}, port: {upstream}, ae_title: DEMOPACS}}
      policy: {{hosts: [127.0.0.0/8], services: [C-ECHO]}}
demo_upstream: {{enabled: true, host: {HOST}, port: {upstream}, ae_title: DEMOPACS, storage: var/demo}}
metrics: {{enabled: true, host: {HOST}, port: {metrics}}}
""")
    subprocess.run([str(PACSGUARD), "init", "-c", str(config)], check=True, capture_output=True, timeout=60)
    process = subprocess.Popen([str(PACSGUARD), "serve", "-c", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, "pacsguard serve ended at start"
            try:
                _scrape(metrics)
                socket.create_connection((HOST, route), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "pacsguard serve did not start listening in 30 s"
                time.sleep(0.1)
        yield route, metrics
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def test_unknown_command_fields_from_a_client_add_one_series_not_one_each(serve: tuple[int, int]) -> None:
    route, metrics = serve
    count = 40
    for n in range(count):
        _send_unknown(route, 0x0200 + 2 * n)  # none of these is a DIMSE command (PS3.7 E.1)
    deadline = time.monotonic() + 15
    while True:
        series = _requests(_scrape(metrics))
        if sum(series.values()) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert series == {(("route", "relay"), ("service", "UNKNOWN"), ("status", "aborted")): count}


def test_the_defined_services_keep_their_names_and_nothing_else_gets_one() -> None:
    registry = CollectorRegistry()
    counters = EventCounters(registry)
    kinds = ["c-echo", "c-store", "c-find", "c-move", "c-get", "c-cancel", "n-event-report", "n-get", "n-set",
             "n-action", "n-create", "n-delete"]
    for kind in [*kinds, *(f"unknown-0x{n:04x}" for n in range(1000)), "c-store-rsp", "x" * 300]:
        counters.observe(Event(kind=f"dicom.dimse.{kind}", component="gateway",
                               details={"route": "ct", "status": "0x0000"}))
    text = generate_latest(registry).decode()
    services = {s.labels["service"]: s.value for family in text_string_to_metric_families(text)
                for s in family.samples if s.name == REQUESTS}
    assert services == {**{kind.upper(): 1 for kind in kinds}, "UNKNOWN": 1002}


def test_a_client_that_never_reads_its_answers_is_aborted_not_held(serve: tuple[int, int], tmp_path: Path) -> None:
    route, _ = serve
    count = 4 * MAX_OUTSTANDING
    with socket.create_connection((HOST, route), timeout=5) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the answers back up at once
        sock.sendall(_associate_rq("PACSGUARD", "NOREAD"))
        assert sock.recv(1) == b"\x02", "the relay did not accept the association"
        time.sleep(0.5)  # the A-ASSOCIATE-AC's remainder is read below with the rest
        sock.sendall(b"".join(_command(0x0030, n) for n in range(1, count + 1)))  # C-ECHO-RQ (PS3.7 9.3.5)
        time.sleep(2)  # a client busy elsewhere: the gateway may not hold what it sent meanwhile
        received = b""
        sock.settimeout(1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:  # the gateway holds the association and sends nothing more
                continue
            if not chunk:
                break
            received += chunk
        else:
            pytest.fail("the gateway still held the association 10 s after the flood")
    assert b"\x07\x00\x00\x00\x00\x04" in received, "no A-ABORT (PS3.8 9.3.8) came"
    store = EventStore.open(str(tmp_path / "var" / "pacsguard.db"))
    try:
        deadline = time.monotonic() + 10
        while True:
            aborted = [s.event for s in store.search(EventQuery(kind="dicom.association.aborted", limit=None))]
            said = [s.event for s in store.search(EventQuery(kind="dicom.protocol.violation", limit=None))]
            if (aborted and said) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        store.close()
    assert len(aborted) == 1 and aborted[0].details["by"] == "gateway"
    assert len(said) == 1
    assert f"({MAX_OUTSTANDING}; PS3.7 D.3.3.3" in said[0].message
