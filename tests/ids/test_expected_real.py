"""Expected associations on real traffic (docs/ids.md, "Expected associations"), captured by
dumpcap in a throwaway network namespace: dcmtk's movescu asks a real Orthanc (port 104) for a
study with a C-MOVE (PS3.4 C.4.2.1.4.1); Orthanc, as the C-MOVE SCP, opens its own association to
the Move Destination WORKSTATION, a dcmtk storescp on the NON-standard port 11500 (PS3.4
C.4.2.2).  Read passively, that sub-association is linked to the C-MOVE (``expected_by`` on its
``dicom.association.requested`` record) and raises no "DICOM on an unexpected port"; associations
to the same storescp that no C-MOVE announced (one before the C-MOVE, one to another AE title
after it) still do.

Needs root, iproute2, ethtool, tc, dumpcap, Debian's dcmtk (by full path) and Orthanc; missing
any of these is a failure, not a skip."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lan_netns import lan_netns, ns_cmd, require_peers
from test_capture_real import _start_dumpcap
from test_passive_real import NsOrthanc, _listening, _run, _stop_dumpcap, alerts_of, all_rules_on, run_sensor

from pacsguard.events import Event
from pacsguard.ids import IdsSettings

pytestmark = pytest.mark.peers

STORESCU, MOVESCU, STORESCP = "/usr/bin/storescu", "/usr/bin/movescu", "/usr/bin/storescp"
ORTHANC = "/usr/sbin/Orthanc"
PACS_PORT = 104
DEST_PORT = 11500  # in no default ids.dicom_ports: only the C-MOVE makes DICOM there expected
CALLING, DEST = "MODALITY1", "WORKSTATION"


@pytest.fixture(scope="module")
def move_capture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    require_peers(["ip", "ethtool", "tc", "ss", "dumpcap"], [STORESCU, MOVESCU, STORESCP, ORTHANC])
    ct = get_testdata_file("CT_small.dcm")
    assert ct is not None
    study = str(dcmread(ct, stop_before_pixels=True).StudyInstanceUID)
    tmp = tmp_path_factory.mktemp("move")
    received = tmp / "received"
    received.mkdir()
    with lan_netns("pg-mv") as ns:
        pacs = NsOrthanc(ns, tmp / "orthanc", PACS_PORT, 18020,
                         DicomModalities={"modality": [CALLING, "127.0.0.1", 1], "ws": [DEST, "127.0.0.1", DEST_PORT]})
        scp = subprocess.Popen(ns_cmd(ns, STORESCP, "-aet", DEST, "-od", str(received), str(DEST_PORT)),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        cap = tmp / "move.pcapng"
        try:
            deadline = time.monotonic() + 15
            while not _listening(ns, DEST_PORT):
                assert scp.poll() is None and time.monotonic() < deadline, "storescp did not listen"
                time.sleep(0.05)
            dumpcap, _err = _start_dumpcap(ns, cap, f"tcp port {PACS_PORT} or tcp port {DEST_PORT}")
            try:
                _run(ns, STORESCU, "-aet", CALLING, "-aec", "ORTHANC", "127.0.0.1", str(PACS_PORT), ct)
                # unannounced: no C-MOVE has named WORKSTATION yet
                _run(ns, STORESCU, "-aet", CALLING, "-aec", DEST, "127.0.0.1", str(DEST_PORT), ct)
                _run(ns, MOVESCU, "-S", "-aet", CALLING, "-aec", "ORTHANC", "-aem", DEST,
                     "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(PACS_PORT))
                # unannounced: right after the C-MOVE, but to an AE title it did not name
                _run(ns, STORESCU, "-aet", CALLING, "-aec", "OTHERWS", "127.0.0.1", str(DEST_PORT), ct)
            finally:
                _stop_dumpcap(dumpcap)
        finally:
            scp.kill()
            scp.wait(timeout=30)
            pacs.stop()
    # storescp got the instance (from storescu and from Orthanc's C-MOVE sub-operation; the same
    # SOP instance each time, so one file)
    assert len(list(received.iterdir())) >= 1
    yield {"capture": cap, "study": study}


def _requests_to_dest(events: list[Event]) -> list[Event]:
    return [e for e in events if e.kind == "dicom.association.requested" and e.target.port == DEST_PORT]


@pytest.mark.parametrize("site", [False, True], ids=["defaults", "site-ae-titles"])
def test_move_sub_association_is_expected_and_linked(move_capture: dict[str, Any], site: bool) -> None:
    settings = (all_rules_on(known_ae_titles=[CALLING, DEST, "ORTHANC"], move_destinations=[DEST])
                if site else IdsSettings())
    events, stats, _ = run_sensor(move_capture["capture"], settings)
    (move,) = [e for e in events if e.kind == "dicom.dimse.c-move"]
    assert move.details["move_destination"] == DEST and move.details["suboperations"]["completed"] == 1
    requests = _requests_to_dest(events)
    assert len(requests) == 3 and stats.sensor.gaps == 0
    by_caller = Counter((r.actor.ae_title, r.details["called_ae"]) for r in requests)
    assert by_caller == {(CALLING, DEST): 1, ("ORTHANC", DEST): 1, (CALLING, "OTHERWS"): 1}
    (sub,) = [r for r in requests if r.actor.ae_title == "ORTHANC"]
    assert sub.details["expected_by"] == {"flow": move.details["flow"], "message_id": move.details["message_id"]}
    assert all("expected_by" not in r.details for r in requests if r is not sub)

    unexpected = [a for a in alerts_of(events) if a.kind == "ids.alert.dicom-unexpected-port"]
    # the sub-association raises nothing; the two nobody announced still alert
    assert sorted(a.target.ae_title for a in unexpected) == sorted([DEST, "OTHERWS"])
    assert all(a.target.port == DEST_PORT and a.actor.ae_title == CALLING for a in unexpected)
    others = {a.kind for a in alerts_of(events)} - {"ids.alert.dicom-unexpected-port"}
    assert others == ({"ids.alert.dicom-unknown-called-ae"} if site else set()), others  # OTHERWS


def test_ids_read_command_agrees(move_capture: dict[str, Any], tmp_path: Path) -> None:
    """The command an administrator runs: `pacsguard ids read` gives the same two alerts."""
    jsonl = tmp_path / "events.jsonl"
    r = subprocess.run([sys.executable, "-m", "pacsguard.cli", "ids", "read", str(move_capture["capture"]),
                        "--jsonl", str(jsonl), "--format", "json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr  # alerts fired
    events = [Event.from_json(line) for line in jsonl.read_text().splitlines()]
    fired = Counter(e.kind for e in alerts_of(events))
    assert fired == {"ids.alert.dicom-unexpected-port": 2}
    (sub,) = [r for r in _requests_to_dest(events) if r.actor.ae_title == "ORTHANC"]
    assert sub.details["expected_by"]["message_id"] is not None
