"""Round 10, helper P: a capture of a C-MOVE through the gateway, both legs on the wire, read by the
passive sensor (`pacsguard.ids.passive.read`). Each sub-operation's C-STORE names its C-MOVE
(`details.c_move`, records.moves): it matched two C-MOVEs there (the requestor's leg and the
gateway's leg to the PACS) and named none before.

Real peers in a network namespace of our own (r10p-*), whose loopback gives each party its own
source address, as separate hosts would (the Move SCP opens the sub-operation association from its
own host, PS3.4 C.4.2.2): movescu MOVER on CLIENT calls the gateway's route `main` on GW; the
gateway (source GW) calls dcmtk's dcmqrscp ARCHIVE on PACS; dcmqrscp (source PACS) stores to WS1 at
the gateway's return route on GW_RETURN, relayed (source GW) to dcmtk's storescp WS1 on WS. dumpcap
on the namespace's lo writes the capture.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import UID

from pacsguard.events import Event
from pacsguard.ids import IdsSettings
from pacsguard.ids.passive import build_engine, read
from pacsguard.records.moves import MoveLedger

pytestmark = [pytest.mark.timeout(240)]

CLIENT, GW, PACS, WS, GW_RETURN = "127.0.116.10", "127.0.116.1", "127.0.116.2", "127.0.116.4", "127.0.116.5"
# the source address each destination is called from (the caller's host), in the namespace only
SOURCES = {GW: CLIENT, GW_RETURN: PACS, PACS: GW, WS: GW}
PACS_PORT, WS_PORT, MAIN_PORT, RETURN_PORT = 11112, 11113, 11114, 11115
STUDY = "1.2.826.0.1.3680043.10.116.1"
PATIENT = "R10P-MOVED-1"
PROGRAM = [sys.executable, "-m", "pacsguard.cli"]
TOOLS = ("ip", "ss", "dumpcap", "dcmqrscp", "storescp", "storescu", "movescu")


def _need() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    # fail loudly, never skip
    assert not missing and os.geteuid() == 0, f"needs root and {missing} (dcmtk, wireshark-common, iproute2)"


class Namespace:
    """A network namespace r10p-*, its loopback with our addresses and source routes."""

    def __init__(self) -> None:
        self.name = f"r10p-{secrets.token_hex(3)}"
        self.procs: list[subprocess.Popen[Any]] = []
        subprocess.run(["ip", "netns", "add", self.name], check=True, timeout=30)
        self.sh("ip link set lo up")
        for addr in {CLIENT, GW, PACS, WS, GW_RETURN}:
            self.sh(f"ip addr add {addr}/32 dev lo")
        for dst, src in SOURCES.items():
            self.sh(f"ip route replace local {dst}/32 dev lo src {src} table local")

    def cmd(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def sh(self, line: str) -> None:
        subprocess.run(self.cmd(*line.split()), check=True, timeout=30)

    def start(self, *args: str, log: Path, cwd: Path | None = None) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(self.cmd(*args), stdout=log.open("a"), stderr=subprocess.STDOUT, cwd=cwd,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def wait_listening(self, port: int, proc: subprocess.Popen[Any], log: Path) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            out = subprocess.run(self.cmd("ss", "-Hltn", f"sport = :{port}"), capture_output=True, text=True,
                                 timeout=30).stdout
            if out.strip():
                return
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        raise AssertionError(f"nothing listens on {port}: {log.read_text()[-3000:]}")

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=15)
        subprocess.run(["ip", "netns", "del", self.name], check=False, timeout=30)


def _cts(folder: Path) -> list[Path]:
    paths = []
    for n in (1, 2):
        ds = dcmread(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
        ds.PatientID, ds.StudyInstanceUID = PATIENT, STUDY
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(f"{STUDY}.{n}")
        paths.append(folder / f"ct{n}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def _gateway_config(home: Path) -> None:
    routes = [{"name": "main", "listen": {"host": GW, "port": MAIN_PORT, "ae_title": "PACSGUARD"},
               "upstream": {"host": PACS, "port": PACS_PORT, "ae_title": "ARCHIVE", "connect_timeout": 5},
               "policy": {"move_destinations": ["WS1"]}},
              {"name": "retrieve-to-ws1", "listen": {"host": GW_RETURN, "port": RETURN_PORT, "ae_title": "WS1"},
               "upstream": {"host": WS, "port": WS_PORT, "ae_title": "WS1", "connect_timeout": 5},
               "policy": {"calling_ae_titles": ["ARCHIVE"], "services": ["C-ECHO", "C-STORE"]}}]
    config = {"store": {"url": "var/pacsguard.db"}, "gateway": {"routes": routes}}
    (home / "pacsguard.yaml").write_text(yaml.safe_dump(config))


def _start_dumpcap(ns: Namespace, path: Path) -> subprocess.Popen[str]:
    """dumpcap on the namespace's lo, proven to capture: probes until its progress line counts one."""
    proc = subprocess.Popen(ns.cmd("dumpcap", "-i", "lo", "-B", "64", "-f", "net 127.0.116.0/24", "-w", str(path)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ns.procs.append(proc)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")),  # type: ignore[union-attr]
                     daemon=True).start()
    deadline = time.monotonic() + 30
    while not any(line.startswith("Packets:") for line in lines):
        assert proc.poll() is None and time.monotonic() < deadline, f"dumpcap not capturing: {''.join(lines)}"
        subprocess.run(ns.cmd("bash", "-c", f"echo probe > /dev/udp/{GW}/9"), check=False, timeout=30)
        time.sleep(0.3)
    return proc


def capture_move(folder: Path) -> Path:
    """The capture (pcapng) of one STUDY-level C-MOVE of two CTs through the gateway."""
    _need()
    cap = folder / "move.pcapng"
    ns = Namespace()
    try:
        db = folder / "db"
        db.mkdir()
        qr_cfg = folder / "dcmqrscp.cfg"
        qr_cfg.write_text(f"NetworkTCPPort = {PACS_PORT}\nMaxPDUSize = 16384\nMaxAssociations = 8\n"
                          f"HostTable BEGIN\nws1 = (WS1, {GW_RETURN}, {RETURN_PORT})\nHostTable END\n"
                          "VendorTable BEGIN\nVendorTable END\n"
                          f"AETable BEGIN\nARCHIVE {db} RW (20, 64mb) ANY\nAETable END\n")
        log = folder / "peers.log"
        archive = ns.start("dcmqrscp", "-c", str(qr_cfg), log=log)
        ns.wait_listening(PACS_PORT, archive, log)
        received = folder / "ws1"
        received.mkdir()
        ws = ns.start("storescp", "-aet", "WS1", "-od", str(received), str(WS_PORT), log=log)
        ns.wait_listening(WS_PORT, ws, log)
        loaded = subprocess.run(ns.cmd("storescu", "-aet", "MODALITY", "-aec", "ARCHIVE", PACS, str(PACS_PORT),
                                       *map(str, _cts(folder))), capture_output=True, text=True, timeout=60)
        assert loaded.returncode == 0, loaded.stdout + loaded.stderr
        home = folder / "gw"
        home.mkdir()
        _gateway_config(home)
        init = subprocess.run(ns.cmd(*PROGRAM, "init", "--no-demo"), cwd=home, capture_output=True, text=True,
                              timeout=60)
        assert init.returncode == 0, init.stdout + init.stderr
        gw_log = home / "serve.log"
        gateway = ns.start(*PROGRAM, "serve", log=gw_log, cwd=home)
        ns.wait_listening(MAIN_PORT, gateway, gw_log)
        ns.wait_listening(RETURN_PORT, gateway, gw_log)
        dumpcap = _start_dumpcap(ns, cap)
        moved = subprocess.run(ns.cmd("movescu", "-S", "-aet", "MOVER", "-aec", "PACSGUARD", "-aem", "WS1",
                                      "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY}",
                                      GW, str(MAIN_PORT)), capture_output=True, text=True, timeout=60)
        assert moved.returncode == 0, moved.stdout + moved.stderr + log.read_text()[-3000:]
        time.sleep(1.0)  # let dumpcap drain its buffer
        dumpcap.send_signal(signal.SIGINT)
        dumpcap.wait(timeout=30)
        assert len(list(received.iterdir())) == 2, gw_log.read_text()[-3000:]
    finally:
        ns.close()
    return cap


@pytest.fixture(scope="module")
def move_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return capture_move(tmp_path_factory.mktemp("r10p"))


def _passive(cap: Path) -> list[Event]:
    events: list[Event] = []
    stats = read(cap, engine=build_engine(settings=IdsSettings()), publish=events.append,
                 dicom_ports=[PACS_PORT, WS_PORT, MAIN_PORT, RETURN_PORT])
    assert stats.capture.problem_count == 0, stats.capture.problems
    return events


def test_each_passive_c_store_of_a_move_through_the_gateway_names_its_c_move(move_capture: Path) -> None:
    """Both legs of the C-MOVE and of its two sub-operations are in the capture: the C-MOVEs are
    credited (as before), and every C-STORE names the C-MOVE whose SCP's host opened its
    association: the one to the PACS for the PACS's leg, the one to the gateway for the
    gateway's leg (before: it matched both and named none)."""
    events = _passive(move_capture)
    moves = [e for e in events if e.kind == "dicom.dimse.c-move"]
    stores = [e for e in events if e.kind == "dicom.dimse.c-store"]
    assert {m.target.host for m in moves} == {GW, PACS} and len(moves) == 2, moves
    assert len(stores) == 4 and {s.actor.host for s in stores} == {PACS, GW}, stores
    for move in moves:
        assert move.details["delivered"]["instances"] == 2, move.details
        assert move.patient_ids == (PATIENT,), move
    by_host = {m.target.host: m for m in moves}
    for store in stores:
        assert store.patient_ids == (PATIENT,), store
        linked = store.details.get("c_move")
        assert linked is not None, store.details
        move = by_host[store.actor.host]  # the Move SCP's host opened the sub-operation's association
        assert linked["message_id"] == move.details["message_id"], (linked, move.details)
        assert linked["requestor_ae"] == move.actor.ae_title == "MOVER", (linked, move.actor)
        assert linked["linked_by"] == "move_originator" and not linked["originator_mismatch"], linked


def _ledger_with_two_legs() -> MoveLedger:
    ledger = MoveLedger()
    ledger.open(requestor_ae="MOVER", message_id=1, destination="WS1", scp_ae="PACSGUARD", route=None, scp_host=GW)
    ledger.open(requestor_ae="MOVER", message_id=1, destination="WS1", scp_ae="ARCHIVE", route=None, scp_host=PACS)
    return ledger


def test_the_c_store_names_the_c_move_of_its_callers_host_else_of_its_callers_ae_title_else_none() -> None:
    ledger = _ledger_with_two_legs()
    moves, how = ledger.sub_operation(destination="WS1", caller_ae="ARCHIVE", originator_ae="MOVER",
                                      originator_message_id=1)
    assert len(moves) == 2 and how == "move_originator"

    def scp(host: str | None, ae: str | None) -> str | None:
        named = MoveLedger.named(moves, caller_host=host, caller_ae=ae)
        return named.scp_ae if named is not None else None

    assert scp(PACS, "ARCHIVE") == "ARCHIVE"
    assert scp(GW, "ARCHIVE") == "PACSGUARD"
    assert scp(CLIENT, "ARCHIVE") == "ARCHIVE"  # a caller on neither host: its AE title tells
    # neither tells: none named (both still credited by the record)
    assert scp(CLIENT, "OTHER") is None and scp(None, None) is None
    assert MoveLedger.named(moves[:1], caller_host=None, caller_ae=None) is moves[0]  # one match: named, as before


def test_every_leg_of_the_passive_c_stores_credits_the_c_moves_once_per_instance(move_capture: Path) -> None:
    """The four C-STOREs (two instances, two legs) count two instances for each C-MOVE."""
    events = _passive(move_capture)
    for move in (e for e in events if e.kind == "dicom.dimse.c-move"):
        assert move.details["delivered"]["instances"] == 2 and move.details["suboperations"]["completed"] == 2
