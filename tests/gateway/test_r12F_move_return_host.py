"""Outside round 12, helper F: how a C-MOVE return route knows the sub-association it expects
(docs/gateway.md, "C-MOVE through the gateway"; docs/ids.md, "Expected associations").

The inline IDS announces a relayed C-MOVE-RQ as an association expected from the route's
upstream.host (the address its upstream leg reached: a host name counts as the address it
resolved to) to the Move Destination AE title (PS3.4 C.4.2.2), and the return route's
`dicom.association.requested` record names the C-MOVE in `details.expected_by` when the PACS
connects from that address. A PACS that opens its sub-association from another of its addresses
(multi-homed, a cluster) is not linked there: the calling AE title cannot be the second key, as
AE titles are not authenticated (PS3.15 B.1) and any host allowed on the return route could then
claim a C-MOVE in flight. The C-MOVE's own accounting does not depend on it: the C-STORE is
credited through its Move Originator Message ID either way (`details.c_move`,
`details.delivered`). Both are pinned here with a real C-MOVE.

Peers: dcmtk's movescu (from /usr/bin) as the workstation, a pynetdicom Query/Retrieve SCP as the
PACS (its C-MOVE sub-association bound to a chosen source address), a pynetdicom Storage SCP as
the Move Destination behind the return route. Everything on 127.0.126.30-39.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_under_test import serving
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelMove  # type: ignore[attr-defined]

from peers.dcmtk import Dcmtk, free_port

pytestmark = [pytest.mark.peers, pytest.mark.timeout(60)]

GW = "127.0.126.33"  # both routes listen here
PACS = "127.0.126.30"  # the PACS as the main route's upstream.host
PACS_OTHER = "127.0.126.31"  # another address of the same PACS (a second interface, a cluster node)
WS = "127.0.126.32"  # the Move Destination's real address, behind the return route
PROGRAM = [sys.executable, "-m", "pacsguard.cli"]


def ct() -> Dataset:
    ds = dcmread(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
    ds.PatientID, ds.StudyInstanceUID = "R12F-MOVE", generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


@pytest.fixture
def peers(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """The PACS (C-MOVE SCP) and the workstation (Storage SCP); ``source`` picks the address the
    PACS opens its sub-association from; an indirect parameter, the address the PACS listens on."""
    obj = ct()
    pacs_host = getattr(request, "param", PACS)
    state: dict[str, Any] = {"source": pacs_host, "received": [], "object": obj,
                             "pacs_port": free_port(pacs_host), "ws_port": free_port(WS)}

    def on_move(event: Any) -> Iterator[Any]:
        yield (GW, state["return_port"], {"bind_address": (state["source"], 0)})
        yield 1
        yield (0xFF00, obj)

    def on_store(event: Any) -> int:
        state["received"].append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    pacs = AE(ae_title="R12FPACS")
    pacs.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
    pacs.add_requested_context(CTImageStorage, obj.file_meta.TransferSyntaxUID)
    ws = AE(ae_title="WS1")
    ws.add_supported_context(CTImageStorage, obj.file_meta.TransferSyntaxUID)
    servers = [pacs.start_server((pacs_host, state["pacs_port"]), block=False,
                                 evt_handlers=[(evt.EVT_C_MOVE, on_move)]),
               ws.start_server((WS, state["ws_port"]), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])]
    try:
        yield state
    finally:
        for server in servers:
            server.shutdown()


@pytest.mark.parametrize("source", [PACS, PACS_OTHER], ids=["from-upstream-host", "from-another-address"])
def test_the_return_route_links_by_the_pacs_host_and_the_c_move_is_credited_either_way(
        source: str, peers: dict[str, Any], dcmtk: Dcmtk, tmp_path: Path) -> None:
    peers["source"] = source
    requested, move = _move_through(PACS, peers, dcmtk, tmp_path)
    # The IDS's expectation: keyed by the PACS's configured host, never by an AE title alone.
    if source == PACS:
        assert requested.details["expected_by"]["message_id"] == move.details["message_id"]
    else:
        assert "expected_by" not in requested.details, requested.details


@pytest.mark.parametrize("peers", ["127.0.0.1"], indirect=True)
def test_an_upstream_host_written_as_a_name_links_by_the_address_it_reached(
        peers: dict[str, Any], dcmtk: Dcmtk, tmp_path: Path) -> None:
    """``upstream.host: localhost``: the expectation is keyed by the address the gateway's upstream
    leg connected to (127.0.0.1), so the PACS's sub-association from there is linked."""
    requested, move = _move_through("localhost", peers, dcmtk, tmp_path)
    assert requested.details["expected_by"]["message_id"] == move.details["message_id"]


def _move_through(upstream_host: str, peers: dict[str, Any], dcmtk: Dcmtk, tmp_path: Path) -> tuple[Any, Any]:
    """movescu through the main route (upstream at *upstream_host*); the return route's
    ``requested`` record and the C-MOVE's, after checking the C-MOVE's own accounting."""
    peers["return_port"] = free_port(GW)
    routes = [
        {"name": "main", "listen": {"host": GW, "port": free_port(GW), "ae_title": "PACSGUARD"},
         "upstream": {"host": upstream_host, "port": peers["pacs_port"], "ae_title": "R12FPACS",
                      "connect_timeout": 5},
         "policy": {"move_destinations": ["WS1"]}},
        {"name": "retrieve", "listen": {"host": GW, "port": peers["return_port"], "ae_title": "WS1"},
         "upstream": {"host": WS, "port": peers["ws_port"], "ae_title": "WS1", "connect_timeout": 5},
         "policy": {"calling_ae_titles": ["R12FPACS"], "services": ["C-ECHO", "C-STORE"]}},
    ]
    home = tmp_path / "gw"
    home.mkdir()
    obj = peers["object"]
    with serving(home, routes, PROGRAM) as gw:
        moved = dcmtk.run("movescu", "-S", "-aet", "R12FWS", "-aec", "PACSGUARD", "-aem", "WS1",
                          "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={obj.StudyInstanceUID}",
                          GW, str(gw.port("main")), timeout=30)
        assert moved.returncode == 0, moved.stdout + moved.stderr
        (move,) = gw.wait_for("dicom.dimse.c-move")
        (store,) = gw.wait_for("dicom.dimse.c-store", where=lambda e: e.details["route"] == "retrieve")
        (requested,) = gw.wait_for("dicom.association.requested", where=lambda e: e.details["route"] == "retrieve")
    assert peers["received"] == [str(obj.SOPInstanceUID)]
    assert requested.actor.host == peers["source"] and requested.actor.ae_title == "R12FPACS"
    # The C-MOVE's accounting: credited through the Move Originator Message ID, from any address.
    assert move.details["delivered"]["instances"] == 1 and move.patient_ids == ("R12F-MOVE",)
    assert store.details["c_move"]["message_id"] == move.details["message_id"]
    return requested, move
