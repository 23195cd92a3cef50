"""Round 10, helper B2: what a C-MOVE delivered through the destination's return route is named by
the C-MOVE's own record (docs/gateway.md, "C-MOVE through the gateway").

Real peers on 127.0.103.x: dcmtk's dcmqrscp as the archive behind route `main`, dcmtk's storescp
as the workstation WS1 behind the return route `retrieve-to-ws1`, dcmtk's movescu as the requestor
(a STUDY-level C-MOVE, whose identifier names no patient). Then a pynetdicom C-MOVE SCP, which
writes its own AE title as Move Originator AE Title (PS3.7 9.1.1.1 asks for the invoker's): the
sub-operations are still linked by Move Originator Message ID and destination, and the mismatch
is flagged, never rewritten.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_under_test import RunningGateway, serving
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelMove,
)

from pacsguard.events import Event
from peers.dcmtk import Dcmtk, free_port, run_storescp, stop_process_group, wait_for_port

pytestmark = [pytest.mark.peers, pytest.mark.timeout(180)]

HOST = "127.0.103.1"  # the gateway's routes
PEERS = "127.0.103.2"  # dcmqrscp, storescp and pynetdicom (dcmtk's tools listen on every address)
REQUESTOR = "MOVER"
STUDY = "1.2.826.0.1.3680043.10.103.1"
PATIENT = "B2-MOVED-1"
ROOT = "1.2.826.0.1.3680043.10.103.9"
PROGRAM = [sys.executable, "-m", "pacsguard.cli"]


def cts(folder: Path, count: int) -> list[Path]:
    """*count* CTs of PATIENT in STUDY, each its own instance."""
    paths = []
    for n in range(count):
        ds = dcmread(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
        ds.PatientID, ds.StudyInstanceUID = PATIENT, STUDY
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{ROOT}.{n + 1}"
        paths.append(folder / f"ct{n}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def routes(pacs_port: int, pacs_ae: str, ws_port: int) -> list[dict[str, Any]]:
    """`main` in front of the archive, `retrieve-to-ws1` in front of the workstation (the return
    route: the archive calls WS1 at the gateway)."""
    return [{"name": "main", "listen": {"host": HOST, "port": free_port(HOST), "ae_title": "PACSGUARD"},
             "upstream": {"host": PEERS, "port": pacs_port, "ae_title": pacs_ae, "connect_timeout": 5},
             "policy": {"move_destinations": ["WS1"]}},
            {"name": "retrieve-to-ws1", "listen": {"host": HOST, "port": free_port(HOST), "ae_title": "WS1"},
             "upstream": {"host": PEERS, "port": ws_port, "ae_title": "WS1", "connect_timeout": 5},
             "policy": {"calling_ae_titles": [pacs_ae], "services": ["C-ECHO", "C-STORE"]}}]


@pytest.fixture
def workstation(dcmtk: Dcmtk, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """storescp WS1, writing what it receives."""
    with run_storescp(dcmtk, tmp_path / "ws1", write=True, aet="WS1") as scp:
        yield scp.port, scp.output_dir


def linked_stores(gw: RunningGateway, count: int) -> list[Event]:
    return gw.wait_for("dicom.dimse.c-store", count=count, where=lambda e: e.details["route"] == "retrieve-to-ws1")


def test_a_study_level_c_move_names_the_patient_its_sub_operations_delivered_through_the_return_route(
        dcmtk: Dcmtk, workstation: tuple[int, Path], tmp_path: Path) -> None:
    """dcmqrscp moves a study of two CTs to WS1 through the return route. The C-MOVE's record
    names the patient and study delivered, counts the two instances and names the return route;
    each sub-operation's C-STORE names the C-MOVE's requestor and route, with no mismatch
    (dcmqrscp writes the invoker's AE title as Move Originator)."""
    ws_port, received = workstation
    archive_port = free_port("0.0.0.0")
    gw_routes = routes(archive_port, "ARCHIVE", ws_port)
    db = tmp_path / "db"
    db.mkdir()
    config = tmp_path / "dcmqrscp.cfg"
    config.write_text(f"NetworkTCPPort = {archive_port}\nMaxPDUSize = 16384\nMaxAssociations = 8\n"
                      f"HostTable BEGIN\nws1 = (WS1, {HOST}, {gw_routes[1]['listen']['port']})\nHostTable END\n"
                      "VendorTable BEGIN\nVendorTable END\n"
                      f"AETable BEGIN\nARCHIVE {db} RW (20, 64mb) ANY\nAETable END\n")
    log = tmp_path / "dcmqrscp.log"
    archive = subprocess.Popen([dcmtk.path("dcmqrscp"), "-c", str(config), "-d"], stdout=log.open("w"),
                               stderr=subprocess.STDOUT, env=dcmtk.env, start_new_session=True)
    home = tmp_path / "gw"
    home.mkdir()
    try:
        assert wait_for_port(PEERS, archive_port, 15, archive), log.read_text()
        stored = dcmtk.run("storescu", "-aet", "MODALITY", "-aec", "ARCHIVE", PEERS, str(archive_port),
                           *cts(tmp_path, 2))
        assert stored.returncode == 0, stored.stdout + stored.stderr
        with serving(home, gw_routes, PROGRAM) as gw:
            moved = dcmtk.run("movescu", "-S", "-aet", REQUESTOR, "-aec", "PACSGUARD", "-aem", "WS1",
                              "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY}",
                              HOST, str(gw.port("main")))
            assert moved.returncode == 0, moved.stdout + moved.stderr + log.read_text()[-3000:]
            (move,) = gw.wait_for("dicom.dimse.c-move")
            stores = linked_stores(gw, 2)
    finally:
        stop_process_group(archive)
    assert len(list(received.iterdir())) == 2
    assert move.details["suboperations"]["completed"] == 2, move.details
    assert move.actor.ae_title == REQUESTOR and move.details["query"] == {"StudyInstanceUID": STUDY}
    # Before: the STUDY-level identifier named nobody, so the C-MOVE's record named no patient.
    assert move.patient_ids == (PATIENT,), move
    assert move.study_uids == (STUDY,), move
    assert move.details["delivered"] == {"instances": 2, "routes": ["retrieve-to-ws1"],
                                         "move_originators": [REQUESTOR]}, move.details
    for store in stores:
        assert store.patient_ids == (PATIENT,)
        assert store.details["move_originator"] == {"ae_title": REQUESTOR, "message_id": move.details["message_id"]}
        assert store.details["c_move"] == {"route": "main", "requestor_ae": REQUESTOR,
                                           "message_id": move.details["message_id"],
                                           "linked_by": "move_originator", "originator_mismatch": False}, store.details


class PynetdicomPacs:
    """A pynetdicom C-MOVE SCP (AE PYPACS) that sends its CTs to WS1 at the return route. pynetdicom
    3 writes its own AE title, not the requestor's, as Move Originator AE Title."""

    def __init__(self, datasets: list[Dataset], return_port: int) -> None:
        self.datasets = datasets
        self.return_port = return_port
        self.ae = AE(ae_title="PYPACS")
        self.ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
        self.ae.add_requested_context(CTImageStorage)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 20
        self.port = free_port(PEERS)
        self.server = self.ae.start_server((PEERS, self.port), block=False,
                                           evt_handlers=[(evt.EVT_C_MOVE, self.move)])

    def move(self, event: evt.Event) -> Iterator[Any]:
        yield HOST, self.return_port
        yield len(self.datasets)
        for ds in self.datasets:
            yield 0xFF00, ds

    def stop(self) -> None:
        self.server.shutdown()


def test_a_move_originator_naming_the_scp_instead_of_the_requestor_is_flagged_not_changed(
        dcmtk: Dcmtk, workstation: tuple[int, Path], tmp_path: Path) -> None:
    """pynetdicom as the C-MOVE SCP: its sub-operations name PYPACS as Move Originator. They are
    recorded as sent (ae_title PYPACS), linked to the C-MOVE by Message ID, and flagged
    (`details.c_move.originator_mismatch`); the C-MOVE's record counts them in `delivered.originator_mismatch`."""
    ws_port, received = workstation
    datasets = [dcmread(path) for path in cts(tmp_path, 3)]
    gw_routes = routes(0, "PYPACS", ws_port)
    pacs = PynetdicomPacs(datasets, gw_routes[1]["listen"]["port"])
    gw_routes[0]["upstream"]["port"] = pacs.port
    home = tmp_path / "gw"
    home.mkdir()
    try:
        with serving(home, gw_routes, PROGRAM) as gw:
            moved = dcmtk.run("movescu", "-S", "-aet", REQUESTOR, "-aec", "PACSGUARD", "-aem", "WS1",
                              "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY}",
                              HOST, str(gw.port("main")))
            assert moved.returncode == 0, moved.stdout + moved.stderr
            (move,) = gw.wait_for("dicom.dimse.c-move")
            stores = linked_stores(gw, 3)
    finally:
        pacs.stop()
    assert len(list(received.iterdir())) == 3
    assert move.patient_ids == (PATIENT,) and move.study_uids == (STUDY,), move
    assert move.details["delivered"] == {"instances": 3, "routes": ["retrieve-to-ws1"],
                                         "move_originators": ["PYPACS"], "originator_mismatch": 3}, move.details
    for store in stores:
        # recorded as sent: the SCP's own AE title
        assert store.details["move_originator"] == {"ae_title": "PYPACS", "message_id": move.details["message_id"]}
        assert store.details["c_move"] == {"route": "main", "requestor_ae": REQUESTOR,
                                           "message_id": move.details["message_id"],
                                           "linked_by": "message_id", "originator_mismatch": True}, store.details
