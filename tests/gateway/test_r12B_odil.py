"""Round 12 B: odil (Debian's odil and python3-odil) in front of and behind the gateway.

odil's CLI is the SCU (echo, store, find, get; dcmtk's movescu asks for the C-MOVE, which odil's
CLI lacks); odil's SCP classes (tests/peers/odil_scp.py) are the archive behind a relayed route,
the destination of a store-and-forward route and the C-MOVE destination behind a return route.
Every listener is on 127.0.122.x. What odil does on its own, seen directly and through the
gateway alike: ``odil get`` asks C-FIND for the study's SOP classes first and closes that
association without A-RELEASE; odil's C-MOVE SCP does the same with its sub-association.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from gateway_under_test import RunningGateway
from peer_routes import gateway_with, relay_route, store_and_forward_route
from test_store_forward import fresh_ct

from peers.dcmtk import free_port
from peers.odil import Archive, Odil, odil_fixture  # noqa: F401  (the fixture `odil`)

pytestmark = [pytest.mark.peers, pytest.mark.filterwarnings("ignore:Invalid value for VR UI")]

GW = "127.0.122.1"
CALLING = "ODILSCU"
PACSGUARD = str(Path(sys.executable).with_name("pacsguard"))


def relay(name: str, archive: Archive, aet: str = "ODILARCH", **policy: object) -> dict:
    return relay_route(name, GW, CALLING, (archive.host, archive.port), aet, **policy)


def store_and_forward(name: str, destination: Archive) -> dict:
    return store_and_forward_route(name, GW, CALLING, (destination.host, destination.port), "ODILDEST")


def at(gw: RunningGateway, route: str, calling: str = CALLING, called: str = "PACSGUARD") -> list[str]:
    return [GW, str(gw.port(route)), calling, called]


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def stored(folder: Path) -> dict[str, bytes]:
    """What odil_scp.py wrote, by file name (<SOP Instance UID>.dcm)."""
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.dcm"))}


def test_odil_scu_through_a_relay_route_to_an_odil_archive(odil: Odil, tmp_path: Path) -> None:
    """Echo, store, find and get (PS3.4 A, B, C.4.3, C.6) from odil's CLI, relayed to odil's SCPs:
    the archive stores what it stores when sent to directly, the C-FIND match names the gateway as
    Retrieve AE Title, the C-GET's sub-operations come back on the same association and every
    request is recorded with its patient and study."""
    files = fresh_ct(tmp_path / "ct", 3, kib=256, patient="ODIL01")
    with odil.archive("127.0.122.2", tmp_path / "direct") as direct, \
            odil.archive("127.0.122.3", tmp_path / "arch") as arch, \
            gateway_with(tmp_path, relay("rl", arch)) as gw:
        ok(odil.run("store", direct.host, str(direct.port), CALLING, "ODILARCH", *files))
        ok(odil.run("echo", *at(gw, "rl")))
        ok(odil.run("store", *at(gw, "rl"), *files))
        found = ok(odil.run("find", *at(gw, "rl"), "study", "QueryRetrieveLevel=STUDY", "PatientID=ODIL01",
                            "StudyInstanceUID", "RetrieveAETitle"))
        got = tmp_path / "got"
        retrieved = ok(odil.run("get", "-d", got, *at(gw, "rl"), "study", "QueryRetrieveLevel=STUDY",
                                "PatientID=ODIL01"))
        # The same files the same way: odil wrote through the gateway what it wrote directly.
        assert stored(arch.folder) == stored(direct.folder) and len(stored(direct.folder)) == 3
        assert "1 answer" in found and "['PACSGUARD']" in found and "ODILARCH" not in found, found
        assert "Completed: 3, remaining: 0, failed: 0" in retrieved, retrieved
        assert {p.name for p in got.iterdir()} == {n.removesuffix(".dcm") for n in stored(direct.folder)}
        study = gw.wait_for("dicom.dimse.c-get")[0].study_uids
        stores = gw.wait_for("dicom.dimse.c-store", count=6)
        finds = gw.wait_for("dicom.dimse.c-find", count=2)
        released = gw.wait_for("dicom.association.released", count=4)
        aborted = gw.wait_for("dicom.association.aborted")
    assert all(e.patient_ids == ("ODIL01",) and e.study_uids == study and e.details["status"] == "0x0000"
               for e in stores), [(e.patient_ids, e.study_uids) for e in stores]
    assert [e.details["status"] for e in finds] == ["0x0000", "0x0000"]
    assert all(e.patient_ids == ("ODIL01",) for e in finds)
    assert finds[0].details["rewritten"] == {"RetrieveAETitle": 1}
    # odil get's C-FIND association ends with a FIN, not an A-RELEASE (odil's own doing).
    assert len(released) == 4 and len(aborted) == 1
    assert aborted[0].message == "client closed the connection without A-RELEASE"
    assert not gw.events("dicom.protocol.violation")
    assert not [e.kind for e in gw.events() if e.kind.startswith("ids.alert.")]
    assert arch.wait_for("C-GET")[0].split()[-1] == "3"


def test_odil_store_through_a_store_and_forward_route_to_an_odil_destination(odil: Odil, tmp_path: Path) -> None:
    """A store-and-forward route between odil's StoreSCU and odil's StoreSCP: what arrives is what
    odil stores when sent to directly; odil's C-FIND there gets no context (a Storage SCP only)
    and odil says so at once."""
    files = fresh_ct(tmp_path / "ct", 3, kib=512, patient="ODIL02")
    with odil.archive("127.0.122.4", tmp_path / "direct") as direct, \
            odil.archive("127.0.122.5", tmp_path / "dest") as dest, \
            gateway_with(tmp_path, store_and_forward("sf", dest)) as gw:
        ok(odil.run("store", direct.host, str(direct.port), CALLING, "ODILDEST", *files))
        ok(odil.run("echo", *at(gw, "sf")))
        ok(odil.run("store", *at(gw, "sf"), *files))
        forwarded = gw.wait_for("gateway.object.forwarded", count=3, timeout=15)
        started = time.monotonic()
        refused = odil.run("find", *at(gw, "sf"), "study", "QueryRetrieveLevel=STUDY", "PatientID=ODIL02")
        assert refused.returncode == 2 and "No transfer syntax for 1.2.840.10008.5.1.4.1.2.2.1" in refused.stderr
        assert time.monotonic() - started < 5
        dest.wait_for("C-STORE", count=3)
        assert stored(dest.folder) == stored(direct.folder) and len(stored(dest.folder)) == 3
        received = gw.wait_for("gateway.object.received", count=3)
        assert "released after 3 objects" in gw.wait_for("dicom.association.released", count=2)[1].message
    assert all(e.patient_ids == ("ODIL02",) and e.details["status"] == "0x0000" for e in forwarded)
    assert {e.details["sop_instance"] for e in received} == \
        {n.removesuffix(".dcm") for n in stored(direct.folder)}
    assert not gw.events("dicom.protocol.violation")
    assert not [e.kind for e in gw.events() if e.kind.startswith("ids.alert.")]


def test_refusals_reach_odil_as_the_docs_promise_and_it_does_not_hang(odil: Odil, tmp_path: Path) -> None:
    """docs/gateway.md "Refusals": a calling or called AE title the route does not know gets an
    A-ASSOCIATE-RJ (odil: "Association rejected"); a service the route does not allow loses its
    presentation context (odil: "No transfer syntax"); a C-GET whose storage class the route does
    not allow gets its sub-operations refused by the archive (no context for them, PS3.4 C.4.3.3),
    the association goes on. Each answer comes at once."""
    files = fresh_ct(tmp_path / "ct", 2, kib=64, patient="ODIL03")
    with odil.archive("127.0.122.6", tmp_path / "arch") as arch:
        ok(odil.run("store", arch.host, str(arch.port), CALLING, "ODILARCH", *files))
        no_find = relay("nofind", arch, services=["C-ECHO", "C-STORE", "C-GET"])
        no_ct = relay("noct", arch, sop_classes=["StudyRootQueryRetrieveInformationModelFind",
                                                 "StudyRootQueryRetrieveInformationModelGet"])
        with gateway_with(tmp_path, no_find, no_ct) as gw:
            answers = {}
            requests = {"calling": ("echo", *at(gw, "nofind", calling="INTRUDER")),
                        "called": ("echo", *at(gw, "nofind", called="SOMEONE")),
                        "find": ("find", *at(gw, "nofind"), "study", "QueryRetrieveLevel=STUDY", "PatientID=ODIL03"),
                        "get": ("get", "-d", tmp_path / "got", *at(gw, "noct"), "study",
                                "QueryRetrieveLevel=STUDY", "PatientID=ODIL03")}
            # odil prints no reason for a rejection: the wire shows the A-ASSOCIATE-RJ it got.
            with tcpdump(tmp_path / "refusals.pcap", [GW]):
                for what, args in requests.items():
                    started = time.monotonic()
                    answers[what] = odil.run(*args, timeout=15)
                    assert time.monotonic() - started < 5, what
            rejected = gw.wait_for("dicom.association.rejected", count=2)
            get = gw.wait_for("dicom.dimse.c-get")[0]
            accepted = gw.events("dicom.association.accepted")
    for what in ("calling", "called"):
        assert answers[what].returncode == 2 and "odil: error: Association rejected" in answers[what].stderr
    assert [e.details["rule"] for e in rejected] == ["policy.calling_ae_titles", "listen.ae_title"]
    config = tmp_path / "ids.yaml"
    config.write_text(yaml.safe_dump({"ids": {"dicom_ports": [no_find["listen"]["port"], no_ct["listen"]["port"]]}}))
    _, seen, _ = ids_read(tmp_path / "refusals.pcap", config)
    # PS3.8 Table 9-21: rejected-permanent, service-user, calling / called AE title not recognized.
    assert [(e["details"]["result"], e["details"]["source"], e["details"]["reason_code"]) for e in seen
            if e["kind"] == "dicom.association.rejected"] == [(1, 1, 3), (1, 1, 7)]
    assert answers["find"].returncode == 2
    assert "No transfer syntax for 1.2.840.10008.5.1.4.1.2.2.1" in answers["find"].stderr
    assert "1.2.840.10008.5.1.4.1.2.2.1" in accepted[0].details["refused_by_policy"]
    # odil's GetSCP finds no context for the CT objects and fails the C-GET; the client ends cleanly.
    assert answers["get"].returncode == 0 and "Completed: 0" in answers["get"].stdout
    assert get.details["status"] == "0xC000" and get.details["route"] == "noct"
    assert "1.2.840.10008.5.1.4.1.1.2" in accepted[-1].details["refused_by_policy"]
    assert not list((tmp_path / "got").glob("*"))
    assert not gw.events("dicom.dimse.c-store")


def test_odil_archive_moves_to_odil_through_a_return_route(odil: Odil, dcmtk, tmp_path: Path) -> None:
    """C-MOVE (PS3.4 C.4.2) with odil's MoveSCP behind a relay route and odil's StoreSCP behind the
    return route: the sub-operations are linked to the C-MOVE by odil's Move Originator fields
    (PS3.7 9.1.1.1) and credited to it; a destination the route does not allow gets 0xA801."""
    files = fresh_ct(tmp_path / "ct", 2, kib=64, patient="ODIL04")
    back_port = free_port(GW)
    with odil.archive("127.0.122.7", tmp_path / "ws") as ws, \
            odil.archive("127.0.122.8", tmp_path / "arch", moves={"WS1": (GW, back_port)}) as arch:
        ok(odil.run("store", arch.host, str(arch.port), CALLING, "ODILARCH", *files))
        rl = relay("rl", arch, move_destinations=["WS1"])
        rl["policy"]["calling_ae_titles"] = ["MOVER"]
        back = relay("back", ws, aet="WS1", services=["C-ECHO", "C-STORE"])
        back["listen"].update(port=back_port, ae_title="WS1")
        back["policy"]["calling_ae_titles"] = ["ODILARCH"]
        with gateway_with(tmp_path, rl, back) as gw:
            move = ["-aet", "MOVER", "-aec", "PACSGUARD", "-S", "-k", "QueryRetrieveLevel=PATIENT",
                    "-k", "PatientID=ODIL04", GW, str(gw.port("rl"))]
            moved = dcmtk.run("movescu", "-aem", "WS1", *move, timeout=20)
            assert moved.returncode == 0, moved.stdout + moved.stderr
            elsewhere = dcmtk.run("movescu", "-v", "-aem", "ELSEWHERE", *move, timeout=20)
            c_moves = gw.wait_for("dicom.dimse.c-move", count=2)
            subs = gw.wait_for("dicom.dimse.c-store", count=2)
            alerts = [e.kind for e in gw.events() if e.kind.startswith("ids.alert.")]
        assert stored(ws.folder) == stored(arch.folder) and len(stored(ws.folder)) == 2
    assert c_moves[0].details["status"] == "0x0000" and c_moves[0].patient_ids == ("ODIL04",)
    assert c_moves[0].details["delivered"]["instances"] == 2
    assert c_moves[0].details["delivered"]["move_originators"] == ["MOVER"]
    assert all(e.details["route"] == "back" and e.details["c_move"]["linked_by"] == "move_originator"
               and e.details["c_move"]["requestor_ae"] == "MOVER" for e in subs)
    assert "Refused: MoveDestinationUnknown" in elsewhere.stdout + elsewhere.stderr
    assert c_moves[1].details["status"] == "0xA801" and c_moves[1].details["rule"] == "policy.move_destinations"
    assert not alerts  # the inline rules see odil's sub-association as the C-MOVE announced it


@contextmanager
def tcpdump(path: Path, hosts: list[str]) -> Iterator[None]:
    """tcpdump on lo for these addresses, for at most 60 s; stopped after the block (and a moment
    for the last packets). ``--immediate-mode``: without it libpcap hands packets over a block at a
    time, and what the last block held when tcpdump was stopped would be lost; ``-B``: a 32 MiB
    buffer, so that a burst of loopback traffic on a busy machine is not dropped."""
    cmd = ["timeout", "60", "tcpdump", "--immediate-mode", "-B", "32768", "-i", "lo", "-U", "-s", "0", "-w", str(path),
           " or ".join(f"host {h}" for h in hosts)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        seen, deadline = "", time.monotonic() + 15
        while "listening on" not in seen and time.monotonic() < deadline and proc.poll() is None:
            seen += proc.stderr.readline()  # type: ignore[union-attr]
        assert "listening on" in seen, f"tcpdump did not start (apt-get install tcpdump): {seen}"
        time.sleep(0.3)
        yield
    finally:
        time.sleep(0.5)
        proc.terminate()
        proc.wait(10)


def ids_read(capture: Path, config: Path) -> tuple[int, list[dict], dict]:
    r = subprocess.run([PACSGUARD, "ids", "read", "-c", str(config), "--format", "json", str(capture)],
                       capture_output=True, text=True, timeout=60, cwd=capture.parent)
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert lines and "summary" in lines[-1], r.stdout[-2000:] + r.stderr[-2000:]
    return r.returncode, lines[:-1], lines[-1]["summary"]


def test_the_passive_ids_reads_odil_traffic_without_alerts(odil: Odil, tmp_path: Path) -> None:
    """odil's echo, store, find and get, to its archive directly and through the gateway, captured
    with tcpdump and read by `pacsguard ids read` (with the ports where DICOM is expected): normal
    traffic raises no alert, and the IDS sees the associations, requests and patient of the
    gateway's own records."""
    files = fresh_ct(tmp_path / "ct", 2, kib=128, patient="ODIL05")

    def session(host: str, port: int, called: str) -> None:
        target = [host, str(port), CALLING, called]
        ok(odil.run("echo", *target))
        ok(odil.run("store", *target, *files))
        ok(odil.run("find", *target, "study", "QueryRetrieveLevel=STUDY", "PatientID=ODIL05"))
        ok(odil.run("get", "-d", tmp_path / f"got-{port}", *target, "study", "QueryRetrieveLevel=STUDY",
                    "PatientID=ODIL05"))

    with odil.archive("127.0.122.9", tmp_path / "arch") as arch:
        with tcpdump(tmp_path / "direct.pcap", [arch.host]):
            session(arch.host, arch.port, "ODILARCH")
        route = relay("rl", arch)
        with gateway_with(tmp_path, route) as gw:
            with tcpdump(tmp_path / "gateway.pcap", [GW]):
                session(GW, gw.port("rl"), "PACSGUARD")
            recorded = [e for e in gw.events() if e.kind.startswith("dicom.")]
    config = tmp_path / "ids.yaml"
    config.write_text(yaml.safe_dump({"ids": {"dicom_ports": [104, 11112, arch.port, route["listen"]["port"]]}}))
    for capture in ("direct.pcap", "gateway.pcap"):
        code, events, summary = ids_read(tmp_path / capture, config)
        assert summary["capture"]["gaps"] == 0, f"tcpdump lost packets of {capture}: {summary['capture']}"
        assert code == 0 and summary["alerts"]["total"] == 0, (capture, summary["alerts"])
        assert summary["sensor"]["results"] == {"released": 4, "incomplete": 1}, summary["sensor"]
        assert summary["sensor"]["commands"] == {"C-ECHO-RQ": 1, "C-ECHO-RSP": 1, "C-STORE-RQ": 4, "C-STORE-RSP": 4,
                                                 "C-FIND-RQ": 2, "C-FIND-RSP": 4, "C-GET-RQ": 1, "C-GET-RSP": 3}
        dimse = [e for e in events if e["kind"].startswith("dicom.dimse.")]
        assert all(e["patient_ids"] == ["ODIL05"] for e in dimse if e["kind"] != "dicom.dimse.c-echo")
        if capture == "gateway.pcap":
            # The same records as the gateway's, kind by kind, patient by patient (the order of the
            # end of one association and the start of the next may differ by a few milliseconds).
            assert sorted((e["kind"], e["patient_ids"], e["study_uids"]) for e in events
                          if e["kind"].startswith("dicom.")) == \
                sorted((e.kind, list(e.patient_ids), list(e.study_uids)) for e in recorded)


def test_a_retrieve_only_route_refuses_odils_storage_contexts_and_keeps_its_c_get(odil: Odil, tmp_path: Path) -> None:
    """A route allowing C-GET but not C-STORE (a workstation that may retrieve, never store) takes a
    storage context only where the requestor offers the SCP role for it (PS3.7 D.3.3.4), as a C-GET's
    sub-operations need (PS3.4 C.4.3). `odil store` proposes CT Image Storage with no role selection
    (SCU only): that context is refused in the A-ASSOCIATE-AC (docs/gateway.md: the modality sees no
    acceptable presentation context and never sends the object). Before the fix it was accepted and
    each C-STORE answered 0x0124, which odil's StoreSCU does not look at: `odil store` said nothing
    and exited 0, as if the archive held the objects. `odil get` on the same route still retrieves."""
    files = fresh_ct(tmp_path / "ct", 2, kib=64, patient="ODIL06")
    with odil.archive("127.0.122.10", tmp_path / "arch") as arch:
        ok(odil.run("store", arch.host, str(arch.port), CALLING, "ODILARCH", *files))
        held = stored(arch.folder)
        route = relay("getonly", arch, services=["C-ECHO", "C-FIND", "C-GET"])
        with gateway_with(tmp_path, route) as gw:
            sent = odil.run("store", *at(gw, "getonly"), *(tmp_path / "ct").glob("*.dcm"))
            got = tmp_path / "got"
            retrieved = ok(odil.run("get", "-d", got, *at(gw, "getonly"), "study", "QueryRetrieveLevel=STUDY",
                                    "PatientID=ODIL06"))
            gw.wait_for("dicom.dimse.c-get")
            accepted = gw.wait_for("dicom.association.accepted", count=3)
            refused_stores = [e for e in gw.events("dicom.dimse.c-store") if e.details["status"] != "0x0000"]
        assert stored(arch.folder) == held
    # odil tells its user, for each file, that the object could not be stored.
    assert sent.stdout.count("Could not store") == 2, sent.stdout + sent.stderr
    assert accepted[0].details["refused_by_policy"] == ["1.2.840.10008.5.1.4.1.1.2"]
    assert not refused_stores
    assert "Completed: 2, remaining: 0, failed: 0" in retrieved
    assert accepted[2].details["refused_by_policy"] == []
    assert len(list(got.iterdir())) == 2
