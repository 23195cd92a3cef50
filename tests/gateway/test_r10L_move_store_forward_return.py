"""Round 10, helper L: a C-MOVE whose Move Destination is served by a store-and-forward route of
the same gateway (its return route) is credited with what that route acknowledged, as through a
relay route (docs/gateway.md, "C-MOVE through the gateway").

Real peers on 127.0.112.x: dcmtk's dcmqrscp as the archive behind the relay route `main`, dcmtk's
movescu as the requestor (a STUDY-level C-MOVE, whose identifier names no patient), the return
route `ws1-sf` in store-and-forward mode delivering to dcmtk's storescp WS1. Then the same with
WS1 down (the objects are spooled and acknowledged: credited) and with a spool that refuses every
object (0xA700: nothing acknowledged, nothing credited).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_under_test import RunningGateway, serving
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import UID

from pacsguard.dicom.dimse import C_MOVE_RQ, C_STORE_RQ, RESPONSE_BIT, CommandSet
from pacsguard.dicom.events import DimseCommand
from pacsguard.events import Event, Party
from pacsguard.records.dicom import AssociationRecord
from pacsguard.records.moves import MoveLedger
from peers.dcmtk import Dcmtk, free_port, run_storescp, stop_process_group, wait_for_port

pytestmark = [pytest.mark.peers, pytest.mark.timeout(180)]

HOST = "127.0.112.1"  # the gateway's routes
PEERS = "127.0.112.2"  # dcmqrscp and storescp (dcmtk's tools listen on every address)
REQUESTOR = "MOVER"
STUDY = "1.2.826.0.1.3680043.10.112.1"
PATIENT = "L-MOVED-1"
ROOT = "1.2.826.0.1.3680043.10.112.9"
RETURN = "ws1-sf"
PROGRAM = [sys.executable, "-m", "pacsguard.cli"]
NEVER_ENOUGH_MIB = 1 << 40  # a floor of free space no file system has: every object is refused


def cts(folder: Path, count: int) -> list[Path]:
    """*count* CTs of PATIENT in STUDY, each its own instance."""
    paths = []
    for n in range(count):
        ds = dcmread(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
        ds.PatientID, ds.StudyInstanceUID = PATIENT, STUDY
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(f"{ROOT}.{n + 1}")
        paths.append(folder / f"ct{n}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def routes(archive_port: int, ws_port: int, spool: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """`main` relays to the archive; `ws1-sf`, where the archive sends WS1's objects, is a
    store-and-forward route to the workstation."""
    return [{"name": "main", "listen": {"host": HOST, "port": free_port(HOST), "ae_title": "PACSGUARD"},
             "upstream": {"host": PEERS, "port": archive_port, "ae_title": "ARCHIVE", "connect_timeout": 5},
             "policy": {"move_destinations": ["WS1"]}},
            {"name": RETURN, "mode": "store-and-forward",
             "listen": {"host": HOST, "port": free_port(HOST), "ae_title": "WS1"},
             "policy": {"calling_ae_titles": ["ARCHIVE"], "services": ["C-ECHO", "C-STORE"]},
             "destinations": [{"name": "ws1", "host": PEERS, "port": ws_port, "ae_title": "WS1",
                               "connect_timeout": 3}],
             "spool": {"min_free_mib": 1, **(spool or {})}, "retry": {"initial_delay": 1, "max_delay": 2}}]


class Archive:
    """dcmqrscp ARCHIVE holding two CTs of PATIENT, which knows WS1 at the return route."""

    def __init__(self, dcmtk: Dcmtk, folder: Path, return_port: int, port: int) -> None:
        db = folder / "db"
        db.mkdir()
        config = folder / "dcmqrscp.cfg"
        config.write_text(f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 8\n"
                          f"HostTable BEGIN\nws1 = (WS1, {HOST}, {return_port})\nHostTable END\n"
                          "VendorTable BEGIN\nVendorTable END\n"
                          f"AETable BEGIN\nARCHIVE {db} RW (20, 64mb) ANY\nAETable END\n")
        self.log = folder / "dcmqrscp.log"
        self.proc = subprocess.Popen([dcmtk.path("dcmqrscp"), "-c", str(config), "-d"], stdout=self.log.open("w"),
                                     stderr=subprocess.STDOUT, env=dcmtk.env, start_new_session=True)
        try:
            assert wait_for_port(PEERS, port, 15, self.proc), self.log.read_text()
            stored = dcmtk.run("storescu", "-aet", "MODALITY", "-aec", "ARCHIVE", PEERS, str(port), *cts(folder, 2))
            assert stored.returncode == 0, stored.stdout + stored.stderr
        except BaseException:
            self.stop()
            raise

    def tail(self) -> str:
        return self.log.read_text()[-3000:]

    def stop(self) -> None:
        stop_process_group(self.proc)


def move_study(dcmtk: Dcmtk, gw: RunningGateway) -> subprocess.CompletedProcess[str]:
    """movescu MOVER: the study to WS1, through the relay route `main`."""
    moved: subprocess.CompletedProcess[str] = dcmtk.run(
        "movescu", "-S", "-aet", REQUESTOR, "-aec", "PACSGUARD", "-aem", "WS1", "-k", "QueryRetrieveLevel=STUDY",
        "-k", f"StudyInstanceUID={STUDY}", HOST, str(gw.port("main")))
    return moved


def wait_for_files(folder: Path, count: int, timeout: float = 20) -> None:
    """The route forwards an object after its Success to the archive: wait for the destination."""
    deadline = time.monotonic() + timeout
    while len(list(folder.iterdir())) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(list(folder.iterdir())) == count, list(folder.iterdir())


def sub_operations(gw: RunningGateway, count: int) -> list[Event]:
    return gw.wait_for("dicom.dimse.c-store", count=count, where=lambda e: e.details["route"] == RETURN)


def moved_through_store_and_forward(dcmtk: Dcmtk, tmp_path: Path, ws_port: int, *,
                                    spool: dict[str, Any] | None = None, refused: bool = False,
                                    received: Path | None = None) -> tuple[Event, list[Event], RunningGateway]:
    """Run the STUDY-level C-MOVE (movescu fails when the archive's sub-operations were *refused*)
    and wait for the two objects to reach *received*, if given; returns the C-MOVE's record, its
    two sub-operations' C-STORE records, and the gateway (stopped)."""
    archive_port = free_port("0.0.0.0")
    gw_routes = routes(archive_port, ws_port, spool)
    archive = Archive(dcmtk, tmp_path, gw_routes[1]["listen"]["port"], archive_port)
    home = tmp_path / "gw"
    home.mkdir()
    try:
        with serving(home, gw_routes, PROGRAM) as gw:
            moved = move_study(dcmtk, gw)
            assert (moved.returncode != 0) == refused, moved.stdout + moved.stderr + archive.tail()
            (move,) = gw.wait_for("dicom.dimse.c-move")
            stores = sub_operations(gw, 2)
            if received is not None:
                wait_for_files(received, 2)
    finally:
        archive.stop()
    return move, stores, gw


@pytest.fixture
def workstation(dcmtk: Dcmtk, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """storescp WS1, writing what it receives."""
    with run_storescp(dcmtk, tmp_path / "ws1", write=True, aet="WS1") as scp:
        yield scp.port, scp.output_dir


def assert_linked(move: Event, stores: list[Event]) -> None:
    """Each C-STORE names the C-MOVE, as a relay route's sub-operation does."""
    for store in stores:
        assert store.details["status"] == "0x0000" and store.patient_ids == (PATIENT,), store
        assert store.details["move_originator"] == {"ae_title": REQUESTOR, "message_id": move.details["message_id"]}
        assert store.details["c_move"] == {"route": "main", "requestor_ae": REQUESTOR,
                                           "message_id": move.details["message_id"],
                                           "linked_by": "move_originator", "originator_mismatch": False}, store.details


def test_a_study_level_c_move_is_credited_with_what_a_store_and_forward_return_route_delivered(
        dcmtk: Dcmtk, workstation: tuple[int, Path], tmp_path: Path) -> None:
    """dcmqrscp moves a study of two CTs to WS1 through the store-and-forward route `ws1-sf`,
    which forwards them to storescp. The C-MOVE's record names the patient and study delivered,
    counts two instances through `ws1-sf`; each C-STORE names the C-MOVE."""
    ws_port, received = workstation
    move, stores, _ = moved_through_store_and_forward(dcmtk, tmp_path, ws_port, received=received)
    assert move.details["suboperations"]["completed"] == 2, move.details
    assert move.actor.ae_title == REQUESTOR and move.details["query"] == {"StudyInstanceUID": STUDY}
    # Before: the store-and-forward route's records had no ledger, so the STUDY-level C-MOVE
    # named no patient and had no `delivered`.
    assert move.patient_ids == (PATIENT,), move
    assert move.study_uids == (STUDY,), move
    assert move.details["delivered"] == {"instances": 2, "routes": [RETURN], "move_originators": [REQUESTOR]}, \
        move.details
    assert_linked(move, stores)


def test_objects_spooled_while_the_destination_is_down_are_credited_as_acknowledged(
        dcmtk: Dcmtk, tmp_path: Path) -> None:
    """WS1 is down: `ws1-sf` acknowledges both objects once spooled (the archive sees Success) and
    keeps them. The C-MOVE is credited with both: the gateway, which holds them for WS1, has them."""
    nobody = free_port("0.0.0.0")  # nothing listens there
    move, stores, gw = moved_through_store_and_forward(dcmtk, tmp_path, nobody)
    assert move.details["suboperations"]["completed"] == 2, move.details
    assert move.patient_ids == (PATIENT,) and move.study_uids == (STUDY,), move
    assert move.details["delivered"] == {"instances": 2, "routes": [RETURN], "move_originators": [REQUESTOR]}, \
        move.details
    assert_linked(move, stores)
    spooled = sorted((gw.home / "var" / "spool" / RETURN / "objects").glob("*.json"))
    assert len(spooled) == 2, spooled  # still waiting for WS1


def test_objects_the_store_and_forward_route_refuses_are_not_credited(
        dcmtk: Dcmtk, tmp_path: Path) -> None:
    """A spool that may not take any object answers each C-STORE 0xA700 (Out of Resources): the
    archive counts the sub-operations failed, and the C-MOVE names nobody delivered."""
    nobody = free_port("0.0.0.0")
    move, stores, _ = moved_through_store_and_forward(dcmtk, tmp_path, nobody,
                                                      spool={"min_free_mib": NEVER_ENOUGH_MIB}, refused=True)
    assert move.details["suboperations"]["failed"] == 2, move.details
    assert move.patient_ids == () and "delivered" not in move.details, move
    for store in stores:
        assert store.details["status"] == "0xA700" and "c_move" not in store.details, store.details


def _command(command: CommandSet, *, from_requestor: bool = True) -> DimseCommand:
    return DimseCommand(from_requestor, 1, None, None, command)


def test_a_c_move_sent_to_a_store_and_forward_route_opens_no_entry_of_the_ledger() -> None:
    """A C-MOVE-RQ on a store-and-forward route (refused there) must not join the gateway's open
    C-MOVEs: it would share the credit of the relayed C-MOVE with the same destination and Message
    ID, and that one's sub-operations would no longer name it alone (`details.c_move`)."""
    from pacsguard.records.moves import SubOperationsOnly  # here: the peer tests run on old code too

    ledger = MoveLedger()
    relay = AssociationRecord(lambda e: None, component="gateway", client=Party(ae_title=REQUESTOR),
                              server=Party(ae_title="ARCHIVE"), route="main", called_ae="PACSGUARD", moves=ledger)
    relay.command(_command(CommandSet(C_MOVE_RQ, message_id=7, move_destination="WS1")))
    published: list[Event] = []
    stored = AssociationRecord(published.append, component="gateway", client=Party(ae_title="ARCHIVE"),
                               server=Party(ae_title="WS1"), route=RETURN, called_ae="WS1",
                               moves=SubOperationsOnly(ledger))
    stored.command(_command(CommandSet(C_MOVE_RQ, message_id=7, move_destination="WS1")))
    assert len(ledger) == 1  # the relay's C-MOVE only
    store = stored.request(_command(CommandSet(C_STORE_RQ, message_id=1, affected_sop_instance_uid=f"{ROOT}.1",
                                               move_originator_ae=REQUESTOR, move_originator_message_id=7)))
    stored.track(store)
    stored.answered(store, CommandSet(C_STORE_RQ | RESPONSE_BIT, message_id_being_responded_to=1, status=0))
    assert published[-1].details["c_move"]["route"] == "main", published[-1].details
