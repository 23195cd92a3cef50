"""Round 6 (soak), the accept path under resets and descriptor exhaustion, and the spool watch.
A real Gateway on uvloop (what `serve` runs) on 127.0.65.0/24, ports 28000-28499; raw sockets as
clients; descriptors really run out (the process's RLIMIT_NOFILE lowered for a moment).

1. A client that sends its A-ASSOCIATE-RQ and resets at once keeps its address in the records, on
   a relayed and on a store-and-forward route (the address accept() returned; getpeername() after
   the reset knows none, and uvloop asks only then): no "?" host, the host policy judges it.
3. The store-and-forward high-water watch survives a spool it cannot read (EMFILE): the spool
   filled past the mark afterwards is still announced, and a long blind spell is recorded.
4. Connections refused for want of a descriptor, at accept() or at a TLS handshake's spare handle,
   are closed at once and counted in `gateway.descriptors.exhausted` (count, route, sources); no
   task error, the listener works again once descriptors are free.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvloop
from playbook import associate_rq, route_config
from pydicom.data import get_testdata_file
from saf_spool import spool_file

from pacsguard.config.schema import GatewayConfig
from pacsguard.events import Event
from pacsguard.gateway import Gateway
from pacsguard.gateway.quarantine import QuarantineList
from pacsguard.gateway.store_forward import route as sf_route_module
from pacsguard.gateway.store_forward.route import StoreForwardRoute
from pacsguard.tls import make_ca, make_cert

pytestmark = pytest.mark.timeout(120)

LISTEN = "127.0.65.2"
SOURCE = "127.0.65.91"  # the resetting client
FLOOD = "127.0.65.98"  # the clients refused for want of a descriptor
NOBODY = 28499  # no one listens there: the relayed route's PACS
EXHAUSTED = "gateway.descriptors.exhausted"
CT = Path(get_testdata_file("CT_small.dcm"))


def _port(offset: int) -> int:
    """A port of this module's range (28000-28498) free on LISTEN."""
    for candidate in range(28000 + offset, 28499):
        with socket.socket() as probe:
            try:
                probe.bind((LISTEN, candidate))
            except OSError:
                continue
            return candidate
    raise AssertionError("no free port in 28000-28498")


def _relay(name: str, port: int, **more: Any) -> dict[str, Any]:
    return {"name": name, "listen": {"host": LISTEN, "port": port, "ae_title": "PACSGUARD", **more.pop("listen", {})},
            "upstream": {"host": LISTEN, "port": NOBODY, "ae_title": "NOBODY", "connect_timeout": 1},
            "policy": {"hosts": ["127.0.65.0/24"]}, **more}


def _store_forward(tmp_path: Path, port: int) -> dict[str, Any]:
    return {"name": "saf", "mode": "store-and-forward",
            "listen": {"host": LISTEN, "port": port, "ae_title": "PACSGUARD"},
            "destinations": [{"host": LISTEN, "port": NOBODY, "ae_title": "NOBODY", "connect_timeout": 1}],
            "policy": {"hosts": ["127.0.65.0/24"]}, "retry": {"initial_delay": 60, "max_delay": 60},
            "spool": {"directory": str(tmp_path / "spool"), "min_free_mib": 0}}


def _on_gateway(routes: list[dict[str, Any]], scenario: Callable[[Gateway], Awaitable[None]]
                ) -> tuple[list[Event], list[dict[str, Any]]]:
    """Run ``scenario`` against a Gateway of ``routes`` on uvloop; returns what it published and
    what reached the loop's exception handler (a task error, "never retrieved")."""
    published: list[Event] = []
    errors: list[dict[str, Any]] = []
    gw = Gateway(GatewayConfig.model_validate({"routes": routes}), published.append)

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
        await gw.start()
        try:
            await scenario(gw)
        finally:
            await gw.stop(grace=1.0)

    uvloop.run(main())
    return published, errors


def _rq_then_reset(port: int) -> None:
    """An A-ASSOCIATE-RQ, then a TCP RST at once (SO_LINGER 0), from SOURCE."""
    with socket.socket() as client:
        client.settimeout(5)
        client.bind((SOURCE, 0))
        client.connect((LISTEN, port))
        client.sendall(associate_rq("GOODSCU", "PACSGUARD"))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_a_client_that_resets_at_once_keeps_its_address(tmp_path: Path) -> None:
    relay_port = _port(0)
    saf_port = _port(relay_port - 28000 + 1)

    async def flood(gw: Gateway) -> None:
        for port in (relay_port, saf_port):
            for _ in range(15):
                await asyncio.to_thread(_rq_then_reset, port)
                await asyncio.sleep(0.02)
        await asyncio.sleep(1.5)  # the relayed route tries its PACS (nobody there) and records

    published, errors = _on_gateway([_relay("relay", relay_port), _store_forward(tmp_path, saf_port)], flood)
    dicom = [e for e in published if e.kind.startswith(("dicom.", "ids."))]
    assert {e.details.get("route") for e in dicom} >= {"relay", "saf"}, [e.message for e in published]
    strangers = [(e.kind, e.actor.host, e.message) for e in dicom if e.actor.host != SOURCE]
    assert not strangers, strangers
    assert not [e for e in dicom if "not an IP address" in e.message]
    assert not errors


# --- descriptors running out -------------------------------------------------------------------

def _lowest_free_descriptor() -> int:
    probe = os.open(os.devnull, os.O_RDONLY)
    os.close(probe)
    return probe


@contextmanager
def descriptors_left(count: int) -> Iterator[None]:
    """Only ``count`` more descriptors for this process (RLIMIT_NOFILE lowered to the lowest free
    number plus ``count``), until the block ends."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (_lowest_free_descriptor() + count, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def _closed_by_gateway(sock: socket.socket, timeout: float = 5.0) -> bool:
    """Whether the gateway ended the connection (EOF or reset) within ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    try:
        return await asyncio.wait_for(loop.sock_recv(sock, 1), timeout) == b""
    except ConnectionResetError:
        return True
    except asyncio.TimeoutError:
        return False


def _clients(count: int) -> list[socket.socket]:
    """Sockets made before descriptors run out (connect() takes none of this process's)."""
    clients = []
    for _ in range(count):
        client = socket.socket()
        client.bind((FLOOD, 0))
        client.setblocking(False)
        clients.append(client)
    return clients


def _refused(published: list[Event]) -> list[Event]:
    return [e for e in published if e.kind == EXHAUSTED]


def test_connections_refused_for_want_of_descriptors_are_closed_and_counted() -> None:
    port = _port(100)
    outcome: dict[str, Any] = {}

    async def exhaust(gw: Gateway) -> None:
        loop = asyncio.get_running_loop()
        clients = _clients(6)
        try:
            with descriptors_left(0):
                for client in clients:
                    await loop.sock_connect(client, (LISTEN, port))
                outcome["closed"] = [await _closed_by_gateway(client) for client in clients]
            # Descriptors free again: the listener serves the next client as ever.
            reader, writer = await asyncio.open_connection(LISTEN, port)
            writer.write(associate_rq("GOODSCU", "PACSGUARD"))
            outcome["answered"] = await asyncio.wait_for(reader.read(1), 10)
            writer.close()
        finally:
            for client in clients:
                client.close()

    published, errors = _on_gateway([_relay("relay", port)], exhaust)
    assert outcome["closed"] == [True] * 6  # told at once, not left hanging in the backlog
    assert outcome["answered"]  # an A-ASSOCIATE-RJ (the PACS is unreachable), from a working listener
    refused = _refused(published)
    assert refused, [e.message for e in published]
    assert sum(e.details["refused"] for e in refused) == 6
    assert len(refused) <= 2  # the first at once, the rest summed up: never one record per connection
    first = refused[0]
    assert first.details["routes"] == {"relay": first.details["refused"]}
    assert set(first.details["hosts"]) == {FLOOD} and first.actor.host == FLOOD
    assert first.details["error"] == "EMFILE" and first.details["limit"] > 0
    assert "ran out of file descriptors" in first.message and "RLIMIT_NOFILE" in first.message
    assert not errors


@pytest.fixture
def server_tls(tmp_path: Path) -> dict[str, str]:
    ca_cert, ca_key = make_ca(tmp_path / "pki", "Test Hospital CA", 30)
    cert, key = make_cert(tmp_path / "pki", "gateway", ca_cert, ca_key, hosts=[LISTEN], days=30, server=True)
    return {"cert_file": str(cert), "key_file": str(key)}


def test_a_tls_handshake_without_a_spare_descriptor_is_refused_and_counted(server_tls: dict[str, str]) -> None:
    port = _port(200)
    outcome: dict[str, Any] = {}

    async def exhaust(gw: Gateway) -> None:
        loop = asyncio.get_running_loop()
        (client,) = _clients(1)
        try:
            # accept() takes the one descriptor left; the handshake's spare handle (dup) finds none.
            with descriptors_left(1):
                await loop.sock_connect(client, (LISTEN, port))
                outcome["closed"] = await _closed_by_gateway(client)
            await asyncio.sleep(0.3)  # a task error would reach the handler by now
        finally:
            client.close()

    published, errors = _on_gateway([_relay("tls", port, listen={"tls": server_tls})], exhaust)
    assert outcome["closed"]
    refused = _refused(published)
    assert [e.details["refused"] for e in refused] == [1], [e.message for e in published]
    assert refused[0].details["route"] == "tls" and refused[0].actor.host == FLOOD
    assert not errors, errors


# --- the spool's high-water watch ----------------------------------------------------------------

def test_the_high_water_watch_survives_a_spool_it_cannot_read(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sf_route_module, "WATCH_INTERVAL", 0.05)
    monkeypatch.setattr(sf_route_module, "UNREADABLE_RECORDED_AFTER", 0.3, raising=False)
    route = route_config(name="sf", mode="store-and-forward",
                         destinations=[{"host": LISTEN, "port": NOBODY, "ae_title": "NOBODY"}],
                         spool={"directory": str(tmp_path / "spool"), "min_free_mib": 0, "high_water_mib": 0.001})
    published: list[Event] = []
    sf = StoreForwardRoute(route, [], publish=published.append, quarantined=QuarantineList(),
                           quarantine=lambda *a, **k: None)
    sf.spool.open()
    sf._watch.start()
    try:
        with descriptors_left(0):
            time.sleep(0.6)  # a dozen looks, each failing with EMFILE
        blind = [e for e in published if e.kind == "gateway.spool.unreadable"]
        spool_file(sf.spool, CT, ["NOBODY"])  # ~39 KB: past the 1 KiB mark
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(e.kind == "gateway.spool.high-water" for e in published):
            time.sleep(0.05)
        alive = sf._watch.is_alive()
    finally:
        sf._stop.set()
        sf._watch.join(5)
        sf.spool.close()
        sf._meta_writer.shutdown()
    assert alive
    assert [e.details["route"] for e in published if e.kind == "gateway.spool.high-water"] == ["sf"]
    assert len(blind) == 1 and "EMFILE" in blind[0].details["error"], [e.message for e in published]
