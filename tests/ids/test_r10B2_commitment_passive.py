"""Round 10, helper B2: one decoder, one record for storage commitment (PS3.4 J.3). The passive
sensor's records of an N-ACTION (Storage Commitment Request) and of its N-EVENT-REPORT name the
same instances, failures and patients as the gateway's records of the same bytes.

Real peers on 127.0.103.16/28: a pynetdicom modality stores two CTs (two patients) through a
`pacsguard serve` in front of a pynetdicom PACS, then asks for commitment of those two and one
instance nobody stored; the PACS reports on the same association (two committed, one failed).
dumpcap captures both legs on lo; the capture is read by the passive sensor (`ids read`'s API).
Needs root (dumpcap on lo) and dumpcap: missing either is a failure, not a skip."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gateway"))

from gateway_under_test import serving  # noqa: E402

from pacsguard.events import Event  # noqa: E402
from pacsguard.ids import IdsSettings  # noqa: E402
from pacsguard.ids.passive import build_engine, read  # noqa: E402
from peers.commitment import CommitmentPacs, stored_then_asked  # noqa: E402
from peers.dcmtk import free_port  # noqa: E402

pytestmark = [pytest.mark.peers, pytest.mark.timeout(180)]

NET = "127.0.103.16/28"
GATEWAY_HOST, PACS_HOST, MODALITY_HOST, PROBE_HOST = "127.0.103.17", "127.0.103.18", "127.0.103.20", "127.0.103.30"
PROBE_PORT = 9  # UDP probes to learn that dumpcap captures (the sensor reads TCP only)
ROOT = "1.2.826.0.1.3680043.10.103.20"
UNKNOWN = f"{ROOT}.99"  # never stored


def start_dumpcap(path: Path) -> subprocess.Popen[str]:
    """dumpcap on lo for NET, proven to capture: probes go out until its progress line counts one."""
    exe = shutil.which("dumpcap")
    assert exe is not None and os.geteuid() == 0, "needs root and dumpcap (Debian's wireshark-common)"
    proc = subprocess.Popen([exe, "-i", "lo", "-B", "64", "-f", f"net {NET}", "-w", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    deadline = time.monotonic() + 30
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        while not any(line.startswith("Packets:") for line in lines):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"dumpcap not capturing: {''.join(lines)}")
            probe.sendto(b"probe", (PROBE_HOST, PROBE_PORT))
            time.sleep(0.05)
    return proc


def stop_dumpcap(proc: subprocess.Popen[str]) -> None:
    time.sleep(1.0)  # let it drain its buffer
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)


def commit_through(gateway_port: int) -> list[str]:
    """The modality's traffic: two CTs stored, then commitment of those two and UNKNOWN."""
    assoc, stored = stored_then_asked("B2MOD", GATEWAY_HOST, gateway_port, MODALITY_HOST,
                                      [(f"{ROOT}.{n}", f"B2-COMMIT-{n}", f"{ROOT}.5{n}") for n in (1, 2)],
                                      f"{ROOT}.7", UNKNOWN)
    assoc.release()
    return stored


def only(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e.kind == kind]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The gateway's events and the passive sensor's, of the same traffic."""
    tmp = tmp_path_factory.mktemp("commit")
    pacs = CommitmentPacs(PACS_HOST)
    cap = tmp / "commit.pcapng"
    route = {"name": "main", "listen": {"host": GATEWAY_HOST, "port": free_port(GATEWAY_HOST), "ae_title": "GW"},
             "upstream": {"host": PACS_HOST, "port": pacs.port, "ae_title": "UPSTREAM", "connect_timeout": 5},
             "policy": {"sop_classes": ["CTImageStorage", "StorageCommitmentPushModel"],
                        "services": ["C-STORE", "storage-commitment"]}}
    home = tmp / "gw"
    home.mkdir()
    try:
        with serving(home, [route], [sys.executable, "-m", "pacsguard.cli"]) as gw:
            dumpcap = start_dumpcap(cap)
            try:
                stored = commit_through(route["listen"]["port"])
            finally:
                stop_dumpcap(dumpcap)
            relayed = [*gw.wait_for("dicom.dimse.n-action"), *gw.wait_for("dicom.dimse.n-event-report")]
    finally:
        pacs.ae.shutdown()
    passive: list[Event] = []
    stats = read(cap, engine=build_engine(settings=IdsSettings()), publish=passive.append,
                 dicom_ports=[route["listen"]["port"], pacs.port])
    assert stats.capture.problem_count == 0, stats.capture.problems
    return {"stored": stored, "relayed": relayed, "passive": passive}


@pytest.mark.parametrize("kind", ["dicom.dimse.n-action", "dicom.dimse.n-event-report"])
def test_the_passive_sensor_records_storage_commitment_as_the_gateway_does(recorded: dict[str, Any],
                                                                           kind: str) -> None:
    """Both legs the capture holds (modality -> gateway, gateway -> PACS) are recorded with the
    gateway's `details.commitment`, patients, studies and message."""
    (relayed,) = only(recorded["relayed"], kind)
    stored = recorded["stored"]
    commitment = relayed.details["commitment"]
    # what the gateway recorded (round 9)
    assert commitment["sop_instances"] == (stored + [UNKNOWN] if kind.endswith("action") else stored), commitment
    assert set(relayed.patient_ids) == {"B2-COMMIT-1", "B2-COMMIT-2"}
    seen = only(recorded["passive"], kind)
    assert len(seen) == 2, [e.details for e in seen]  # modality -> gateway and gateway -> PACS
    for event in seen:
        # Before: the passive records had no details.commitment and no patient.
        assert event.details.get("commitment") == commitment, event.details
        assert set(event.patient_ids) == set(relayed.patient_ids), event
        assert set(event.study_uids) == set(relayed.study_uids), event
        assert event.message == relayed.message, (event.message, relayed.message)
