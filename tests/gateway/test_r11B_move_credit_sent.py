"""Round 11, helper B: when a C-MOVE's sub-operation is credited to it (`details.delivered`),
on both kinds of return route (docs/gateway.md, "C-MOVE through the gateway").

Real peers on 127.0.112.x: dcmtk's movescu as the requestor, a pynetdicom C-MOVE SCP (PYPACS)
behind the relay route `main`, which sends its CTs to WS1 at the return route. The gateway's
store is made to stall (an exclusive SQLite transaction from the test, `store.journal: none`)
just before the last sub-operation: the return route records that C-STORE, but the response to
PYPACS waits for the record (`record_before_response`), and after the route's `record_timeout`
the association is aborted, so PYPACS counts that sub-operation failed.

- store-and-forward (`ws1-sf`): the gateway is the destination; its Success never left, and the
  object is withdrawn from the spool (never forwarded). Not credited.
- relay (`ws1-relay`, to a pynetdicom Storage SCP WS1 answering 0x0000, 0xB000, 0xB007, 0xA700
  and 0xB006): the Successes and Warnings are credited, the failure is not; the last Warning
  is credited although it never reached PYPACS: WS1 holds that object.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from gateway_under_test import RunningGateway
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelMove,
)

from pacsguard.events import Event
from peers.dcmtk import Dcmtk, free_port, wait_for_port

pytestmark = [pytest.mark.peers, pytest.mark.timeout(120)]

HOST = "127.0.112.1"  # the gateway's routes
PEERS = "127.0.112.3"  # the pynetdicom C-MOVE SCP
REQUESTOR = "MOVER"
STUDY = "1.2.826.0.1.3680043.10.112.11"
PATIENT = "R11B-MOVED-1"
SAF = "ws1-sf"
RELAY = "ws1-relay"
PROGRAM = [sys.executable, "-m", "pacsguard.cli"]
STALL = 3.0  # seconds the store is held: past the return route's record_timeout, short of main's
#: What WS1 answers for each instance the relay route passes on (PS3.4 Table B.2-1): Success,
#: Warnings (Coercion of Data Elements, Data Set does not match SOP Class, Elements Discarded)
#: and a Failure (Out of Resources).
STATUSES = (0x0000, 0xB000, 0xB007, 0xA700, 0xB006)


def ct(n: int) -> Dataset:
    ds = dcmread(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
    ds.PatientID, ds.StudyInstanceUID, ds.SOPInstanceUID = PATIENT, STUDY, f"{STUDY}.{n}"
    return ds


class StoreStall:
    """An exclusive transaction on the gateway's SQLite store: its writer waits (busy_timeout),
    so nothing it publishes meanwhile becomes durable until `STALL` seconds have passed."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.held = threading.Event()
        self.error: BaseException | None = None

    def hold(self) -> None:
        try:
            db = sqlite3.connect(self.store, timeout=5, isolation_level=None, check_same_thread=False)
            db.execute("BEGIN EXCLUSIVE")
        except BaseException as exc:  # told to the test, which fails on it
            self.error = exc
            raise
        self.held.set()

        def release() -> None:
            db.execute("ROLLBACK")
            db.close()
        threading.Timer(STALL, release).start()


class StallingPacs:
    """A pynetdicom C-MOVE SCP (PYPACS) that sends *count* CTs to WS1 at the return route and
    stalls the gateway's store before the last (pynetdicom asks the handler for each data set
    once the sub-operations' association is established and the one before is answered)."""

    def __init__(self, stall: StoreStall, return_port: int, count: int) -> None:
        self.stall, self.return_port, self.count = stall, return_port, count
        self.ae = AE(ae_title="PYPACS")
        self.ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
        self.ae.add_requested_context(CTImageStorage)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 20
        self.port = free_port(PEERS)
        server = self.ae.start_server((PEERS, self.port), block=False, evt_handlers=[(evt.EVT_C_MOVE, self.move)])
        assert server is not None  # not blocking: it runs in its own thread
        self.server = server

    def move(self, event: evt.Event) -> Iterator[Any]:
        yield HOST, self.return_port
        yield self.count
        for n in range(1, self.count + 1):
            if n == self.count:
                self.stall.hold()
            yield 0xFF00, ct(n)

    def stop(self) -> None:
        self.server.shutdown()


class Workstation:
    """A pynetdicom Storage SCP WS1 answering each CT with STATUSES[its number - 1]."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.ae = AE(ae_title="WS1")
        self.ae.add_supported_context(CTImageStorage)
        self.port = free_port(PEERS)
        server = self.ae.start_server((PEERS, self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self.store)])
        assert server is not None
        self.server = server

    def store(self, event: evt.Event) -> int:
        uid = str(event.dataset.SOPInstanceUID)
        self.received.append(uid)
        return STATUSES[int(uid.rsplit(".", 1)[1]) - 1]

    def stop(self) -> None:
        self.server.shutdown()


def routes(pacs_port: int, ws_port: int) -> list[dict[str, Any]]:
    """`main` relays to PYPACS; WS1 is reached through `ws1-sf` (store-and-forward, towards
    nobody) or `ws1-relay` (to the Workstation), each aborting an answer its record holds past 1 s."""
    def listen() -> dict[str, Any]:
        return {"host": HOST, "port": free_port(HOST), "ae_title": "WS1"}
    allowed = {"calling_ae_titles": ["PYPACS"], "services": ["C-ECHO", "C-STORE"]}
    return [{"name": "main", "listen": {"host": HOST, "port": free_port(HOST), "ae_title": "PACSGUARD"},
             "upstream": {"host": PEERS, "port": pacs_port, "ae_title": "PYPACS", "connect_timeout": 5},
             "policy": {"move_destinations": ["WS1"]}, "record_timeout": 15},
            {"name": SAF, "mode": "store-and-forward", "record_timeout": 1, "listen": listen(), "policy": allowed,
             "destinations": [{"name": "ws1", "host": PEERS, "port": free_port("0.0.0.0"), "ae_title": "WS1",
                               "connect_timeout": 3}],
             "spool": {"min_free_mib": 1}, "retry": {"initial_delay": 5, "max_delay": 5}},
            {"name": RELAY, "record_timeout": 1, "listen": listen(), "policy": allowed,
             "upstream": {"host": PEERS, "port": ws_port, "ae_title": "WS1", "connect_timeout": 5}}]


def start_gateway(home: Path, gw_routes: list[dict[str, Any]]) -> RunningGateway:
    """`pacsguard serve` whose answers wait for the store's own commit (no journal to make them
    durable first): the store is what the test stalls."""
    config = {"store": {"url": "var/pacsguard.db", "journal": "none", "checkpoint_interval": 600},
              "gateway": {"routes": gw_routes}}
    (home / "pacsguard.yaml").write_text(yaml.safe_dump(config))
    init = subprocess.run([*PROGRAM, "init", "--no-demo"], cwd=home, capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stdout + init.stderr
    log = home / "serve.log"
    proc = subprocess.Popen([*PROGRAM, "serve"], cwd=home, stdout=log.open("a"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    gw = RunningGateway(home, {r["name"]: r["listen"]["port"] for r in gw_routes}, proc, log, gw_routes, PROGRAM)
    try:
        for r in gw_routes:
            assert wait_for_port(HOST, r["listen"]["port"], timeout=30, proc=proc), log.read_text()
    except BaseException:
        gw.stop()
        raise
    return gw


def moved(dcmtk: Dcmtk, tmp_path: Path, via: str, count: int, ws_port: int = 0) -> tuple[Event, RunningGateway]:
    """movescu's STUDY-level C-MOVE to WS1 through `main`, PYPACS sending *count* CTs through the
    return route *via*; the C-MOVE's record and the gateway (stopped: its store stays readable)."""
    gw_routes = routes(0, ws_port or free_port(PEERS))  # nobody listens there
    home = tmp_path / "gw"
    home.mkdir()
    stall = StoreStall(home / "var" / "pacsguard.db")
    pacs = StallingPacs(stall, next(r for r in gw_routes if r["name"] == via)["listen"]["port"], count)
    gw_routes[0]["upstream"]["port"] = pacs.port
    try:
        gw = start_gateway(home, gw_routes)
        try:
            done = dcmtk.run("movescu", "-S", "-aet", REQUESTOR, "-aec", "PACSGUARD", "-aem", "WS1",
                             "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY}",
                             HOST, str(gw.port("main")))
            assert stall.held.is_set() and stall.error is None, (stall.error, done.stdout + done.stderr)
            (move,) = gw.wait_for("dicom.dimse.c-move", timeout=15)
            aborted = gw.wait_for("dicom.association.aborted", where=lambda e: e.details["route"] == via)
            assert aborted[0].details["cause"] == "record-failure", aborted[0].details
        finally:
            gw.stop()
    finally:
        pacs.stop()
    return move, gw


def test_a_sub_operation_whose_success_never_left_the_gateway_is_not_credited(
        dcmtk: Dcmtk, tmp_path: Path) -> None:
    """`ws1-sf` committed the CT and recorded its C-STORE with status 0x0000, but the Success was
    still waiting for that record when the association was aborted: the object is withdrawn
    (`gateway.object.discarded`), PYPACS counts the sub-operation failed, and the C-MOVE names no
    patient and has no `details.delivered`."""
    move, gw = moved(dcmtk, tmp_path, SAF, 1)
    (store,) = gw.wait_for("dicom.dimse.c-store", where=lambda e: e.details["route"] == SAF)
    (discarded,) = gw.wait_for("gateway.object.discarded")
    # The object was committed and its C-STORE recorded, then its Success never left.
    assert store.details["status"] == "0x0000" and store.details["c_move"]["route"] == "main", store.details
    assert discarded.details["sop_instance"] == f"{STUDY}.1", discarded.details
    assert move.details["suboperations"]["failed"] == 1, move.details
    assert move.details["suboperations"]["completed"] == 0, move.details
    # Before: credited when the C-STORE was recorded, so the C-MOVE named the patient of an
    # object nobody acknowledged and the workstation never gets.
    assert "delivered" not in move.details, move.details
    assert move.patient_ids == () and move.study_uids == (STUDY,), move


def test_on_a_relay_route_the_destinations_success_and_warnings_are_credited_its_failure_not(
        dcmtk: Dcmtk, tmp_path: Path) -> None:
    """WS1 answers Success, three Warnings and one Failure through `ws1-relay`; the last Warning
    (0xB006) waits for its record when the association is aborted, so PYPACS counts it failed.
    The C-MOVE is credited with the four objects WS1 holds, the last one included."""
    ws = Workstation()
    try:
        move, gw = moved(dcmtk, tmp_path, RELAY, len(STATUSES), ws.port)
    finally:
        ws.stop()
    assert ws.received == [f"{STUDY}.{n}" for n in range(1, 6)], ws.received
    stores = gw.wait_for("dicom.dimse.c-store", count=5, where=lambda e: e.details["route"] == RELAY)
    assert sorted(e.details["status"] for e in stores) == ["0x0000", "0xA700", "0xB000", "0xB006", "0xB007"]
    # PYPACS: 0x0000 completed, 0xB000 and 0xB007 warnings, 0xA700 and the 0xB006 it never got failed
    assert move.details["suboperations"] == {"completed": 1, "warning": 2, "failed": 2, "remaining": 0}, \
        move.details
    assert move.details["delivered"] == {"instances": 4, "routes": [RELAY], "move_originators": ["PYPACS"],
                                         "originator_mismatch": 4}, move.details
    assert move.patient_ids == (PATIENT,), move
