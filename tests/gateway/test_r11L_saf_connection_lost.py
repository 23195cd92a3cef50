"""Round 11, helper L: a store-and-forward route records a lost connection as a relayed route does.

The relay (gateway/relay.py) records a connection lost while established, or after the client's
A-RELEASE-RQ and before the A-RELEASE-RP (PS3.8 9.2.3: a transport closed then is an A-P-ABORT,
AA-4), as `dicom.association.aborted` with `cause: connection-lost`. The route's Storage SCP
answers an A-RELEASE-RQ only once every request before it is answered and that answer sent: a
C-STORE still being checked, or its C-STORE-RSP held for its records (record_before_response),
keeps the association releasing, and a reset then is a connection lost during release, not a
release; an association aborted while its A-RELEASE-RP waits is not recorded released as well.

The peer is a raw-socket requestor on 127.0.121.1 against a real StoreForwardRoute; it resets its
connection (SO_LINGER 0: an RST).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from pathlib import Path
from typing import Any

import pytest
from playbook import route_config
from test_durable import Gate
from test_store_forward_scp import Client, associate, store_rq, until
from test_store_forward_scp import run_route as run

from pacsguard.config.schema import Route
from pacsguard.dicom import pdu as P
from pacsguard.gateway.store_forward.route import StoreForwardRoute
from peers.dcmtk import free_port

HOST = "127.0.121.1"  # the route's Storage SCP
DEST = "127.0.121.2"  # its destination: nobody listens, nothing is forwarded

def saf_route(tmp_path: Path) -> Route:
    listen = {"host": HOST, "port": free_port(HOST), "ae_title": "PACSGUARD"}
    return route_config(mode="store-and-forward", listen=listen,
                        destinations=[{"host": DEST, "port": free_port(DEST), "ae_title": "NOBODY",
                                       "connect_timeout": 1}],
                        spool={"directory": str(tmp_path / "spool"), "min_free_mib": 0},
                        retry={"initial_delay": 5, "max_delay": 5})


def reset(client: Client) -> None:
    """Close with an RST (SO_LINGER 0), as a modality whose process was killed."""
    sock = client.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.writer.transport.abort()


def ended(published: list[Any]) -> list[Any]:
    return [e for e in published if e.kind in ("dicom.association.released", "dicom.association.aborted")]


def state_of(sf: StoreForwardRoute) -> str:
    (association,) = sf.associations
    return association.state


def test_a_connection_reset_while_established_is_recorded_as_the_relay_records_it(tmp_path: Path) -> None:
    async def scenario(client: Client, gate: Gate, published: list[Any], sf: StoreForwardRoute) -> None:
        await associate(client)
        reset(client)
        await until(lambda: bool(ended(published)), "the association's end recorded")

    (end,) = ended(run(saf_route(tmp_path), scenario))
    assert end.kind == "dicom.association.aborted"
    assert (end.details["cause"], end.details["by"]) == ("connection-lost", "client"), end.details
    assert end.message.startswith("client closed the connection without A-RELEASE"), end.message
    assert end.details["reason"] == end.message


def test_a_reset_while_a_store_is_still_checked_during_release_is_a_connection_lost(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The C-STORE's object checks are still running when the A-RELEASE-RQ comes: the release waits
    for its answer (PS3.8 9.3.6); the requestor resets meanwhile."""
    from pacsguard.gateway.store_forward import receiver
    from pacsguard.gateway.store_forward.judging import run_checks as checked

    checking, go_on = threading.Event(), threading.Event()

    def held_checks(*args: Any, **kwargs: Any) -> Any:
        checking.set()
        go_on.wait(5)  # in the object's worker thread; set once the reset is recorded
        return checked(*args, **kwargs)

    monkeypatch.setattr(receiver, "run_checks", held_checks)

    async def scenario(client: Client, gate: Gate, published: list[Any], sf: StoreForwardRoute) -> None:
        await associate(client)
        await client.send(store_rq())
        await until(checking.is_set, "the object is being checked")
        await client.send(P.encode_release_rq())
        await until(lambda: state_of(sf) == "releasing", "the A-RELEASE-RQ read")
        reset(client)
        await until(lambda: bool(ended(published)), "the association's end recorded")
        go_on.set()
        await until(lambda: any(e.kind == "gateway.object.discarded" for e in published), "the object withdrawn")

    published = run(saf_route(tmp_path), scenario)
    (end,) = ended(published)
    assert end.kind == "dicom.association.aborted"
    assert (end.details["cause"], end.details["by"]) == ("connection-lost", "client"), end.details
    assert end.message.startswith("client closed the connection during release, before the A-RELEASE-RP"), \
        end.message
    (store,) = [e for e in published if e.kind == "dicom.dimse.c-store"]
    assert store.details["decision"] == "aborted"


def test_a_reset_while_the_store_answer_waits_for_its_records_is_no_release(tmp_path: Path) -> None:
    """The C-STORE-RSP is held until its records are durable (record_before_response, the store's
    sink shut): the A-RELEASE-RP is held behind it, and the requestor, which has neither, resets.
    The association was not released: it ends aborted during release, the object is withdrawn."""
    async def scenario(client: Client, gate: Gate, published: list[Any], sf: StoreForwardRoute) -> None:
        await associate(client)
        gate.shut()
        await client.send(store_rq())
        await until(lambda: any(e.kind == "dicom.dimse.c-store" for e in published), "the C-STORE answered")
        await client.send(P.encode_release_rq())
        await until(lambda: state_of(sf) != "established", "the A-RELEASE-RQ read")
        assert await client.read(timeout=0.2) == [], "an answer was sent before its records were durable"
        reset(client)
        await until(lambda: bool(ended(published)), "the association's end recorded")
        await until(lambda: any(e.kind == "gateway.object.discarded" for e in published), "the object withdrawn")

    published = run(saf_route(tmp_path), scenario)
    (end,) = ended(published)
    assert end.kind == "dicom.association.aborted", (end.kind, end.message)
    assert end.details["cause"] == "connection-lost", end.details
    assert "during release, before the A-RELEASE-RP" in end.message, end.message


def test_a_release_whose_answer_never_leaves_has_one_end(tmp_path: Path) -> None:
    """The records cannot be made durable within record_timeout while the A-RELEASE-RP waits behind
    the C-STORE-RSP: the association is aborted (`record-failure`). It was recorded released first
    as well, before: two ends for one association, the first one false."""
    route = saf_route(tmp_path).model_copy(update={"record_timeout": 0.5})

    async def scenario(client: Client, gate: Gate, published: list[Any], sf: StoreForwardRoute) -> None:
        await associate(client)
        gate.shut()
        await client.send(store_rq())
        await until(lambda: any(e.kind == "dicom.dimse.c-store" for e in published), "the C-STORE answered")
        await client.send(P.encode_release_rq())
        await until(lambda: any(e.kind == "dicom.association.aborted" for e in published), "the record timeout")
        await asyncio.sleep(0.1)  # anything recorded with it

    ends = [(e.kind, e.details.get("cause")) for e in ended(run(route, scenario))]
    assert ends == [("dicom.association.aborted", "record-failure")], ends
