"""Round 8, area H1, with real peers: dcmtk's storescu stores two CT images of one patient through
`pacsguard serve`'s gateway into serve's demo PACS; getscu then retrieves the study with a
STUDY-level C-GET, and movescu asks for it with a STUDY-level C-MOVE to another AE (VIEWER). The
outbound feed sends serve's audit messages over mutual TLS to a second pacsguard (`atna listen`).

The C-GET's Instances Transferred (PS3.15 A.5.3.7) names the patient its C-STORE sub-operations
carried (PS3.4 C.4.3.3), not an empty one; the demo PACS (Source, 110153) sent, the workstation
that asked (Destination, 110152) received. The C-MOVE's names the PACS the Source, VIEWER the
Destination, and the workstation that asked a third participant, the requestor, with no role.
The demo PACS of serve knows no move destination, so it answers the C-MOVE with 0xA801 (PS3.4
C.4.2.1.5): a failed transfer is audited all the same (A.5.3.7), with the same participants."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from test_outbound import pki  # noqa: F401 - pki is a fixture
from test_r8_outbound_begin_serve import BEGIN, DEADLINE, MOVED, DemoSite, audits
from test_round6_outbound import _stop as stop

from pacsguard.events.model import Event
from pacsguard.store import EventQuery, EventStore

pytestmark = pytest.mark.peers


def roles(audit: Event) -> list[tuple[str | None, bool, list[str]]]:
    """(alternative user ID, UserIsRequestor, Role ID codes) of each active participant."""
    return [(p.get("alternative_user_id"), bool(p.get("requestor")), [r["code"] for r in p.get("roles", ())])
            for p in audit.details["participants"]]


def gateway_events(db: Path, kind: str) -> list[Event]:
    store = EventStore.open(str(db))
    try:
        return [s.event for s in store.search(EventQuery(kind=kind, limit=None))]
    finally:
        store.close()


def test_a_c_get_and_a_c_move_name_who_sent_and_who_received(dcmtk: Any, tmp_path: Path,
                                                            pki: dict[str, Path]) -> None:  # noqa: F811
    site = DemoSite(tmp_path, "127.0.95.1", "127.0.95.2", "PID-H1", "[C-ECHO, C-STORE, C-GET, C-MOVE]", pki,
                    ", move_destinations: [VIEWER]")
    repo_store, serve_log, base, study, stored = site.repo_store, site.serve_log, site.base, site.study, site.stored
    gw_host, gw_port = site.gateway
    repo, serve = site.start()
    keys = ["-S", "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
    target = ["-aec", "PACSGUARD", gw_host, str(gw_port)]
    try:
        done = subprocess.run([dcmtk.path("storescu"), "-aet", "MOD", *target, *map(str, stored)], env=dcmtk.env,
                              capture_output=True, text=True, timeout=DEADLINE)
        assert done.returncode == 0, done.stdout + done.stderr
        got_dir = tmp_path / "got"
        got_dir.mkdir()
        done = subprocess.run([dcmtk.path("getscu"), "-aet", "WS", *keys, "-od", str(got_dir), *target],
                              env=dcmtk.env, capture_output=True, text=True, timeout=DEADLINE)
        assert done.returncode == 0 and len(list(got_dir.iterdir())) == 2, done.stdout + done.stderr
        moved = subprocess.run([dcmtk.path("movescu"), "-aet", "WS", "-aem", "VIEWER", *keys, *target],
                               env=dcmtk.env, capture_output=True, text=True, timeout=DEADLINE)
        # store: begin + 2; C-GET: begin + 2 sub-operations + itself; C-MOVE: begin (unknown) + itself
        end = time.monotonic() + DEADLINE
        while len(got := audits(repo_store)) < 3 + 4 + 2:
            assert time.monotonic() < end, f"{[e.kind for e in got]}\n{moved.stdout}{moved.stderr}\n" \
                                           f"{serve_log.read_text()}"
            time.sleep(0.2)
        time.sleep(1.5)  # what one message too many would need to arrive
    finally:
        stop(serve)
        stop(repo)
    (get,) = gateway_events(base / "pacsguard.db", "dicom.dimse.c-get")
    assert get.patient_ids == ("PID-H1",) and get.study_uids == (study,), get
    (move,) = gateway_events(base / "pacsguard.db", "dicom.dimse.c-move")
    assert move.details["move_destination"] == "VIEWER" and move.details["status"] == "0xA801", move
    got = audits(repo_store)
    assert [(e.kind, e.patient_ids) for e in got] == [
        (BEGIN, ("PID-H1",)), (MOVED, ("PID-H1",)), (MOVED, ("PID-H1",)),
        (BEGIN, ("PID-H1",)), (MOVED, ("PID-H1",)), (MOVED, ("PID-H1",)), (MOVED, ("PID-H1",)),
        (BEGIN, ()), (MOVED, ())]  # the repository stores an empty Patient ID as none
    store_roles = [("AETITLES=MOD", True, ["110153"]), ("AETITLES=DEMOPACS", False, ["110152"])]
    pacs_sends = [("AETITLES=DEMOPACS", False, ["110153"]), ("AETITLES=WS", True, ["110152"])]
    moves = [("AETITLES=DEMOPACS", False, ["110153"]), ("AETITLES=VIEWER", False, ["110152"]),
             ("AETITLES=WS", True, [])]
    # The sub-operations (C-STOREs the PACS requests, PS3.4 C.4.3.3, and the Begin Transferring of
    # the first) and the C-GET agree on the roles: the PACS sent, WS received.
    sub_operations = [("AETITLES=DEMOPACS", True, ["110153"]), ("AETITLES=WS", False, ["110152"])]
    assert [roles(e) for e in got] == [store_roles] * 3 + [sub_operations] * 3 + [pacs_sends] + [moves] * 2
