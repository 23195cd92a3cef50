"""Outside round 12, helper A: the RSNA Central Test Node (Debian's ``ctn``) in front of and
behind `pacsguard serve`, as a PACS administrator would put this 1990s DICOM stack there.

CTN's ways (tests/peers/ctn.py): one association per SOP class, an SCP/SCU Role Selection item
on every proposed context (PS3.7 D.3.3.4), the PDU header written apart from its body, 16 KiB
PDUs, Implicit VR for CT and Explicit VR Big Endian (PS3.5 A.3, retired) when asked for, files
without a Part-10 header. Peers: CTN's send_image, dicom_echo and mwlQuery as clients, CTN's
simple_storage as the PACS behind a relay route, the destination of a store-and-forward route
and the C-MOVE destination behind a return route; a pynetdicom worklist SCP and dcmtk's
dcmqrscp where CTN's own SCPs need its MySQL database.

Routes listen on 127.0.121.10; CTN's SCPs listen on every address (no bind option) and are
reached at 127.0.121.1; CTN's clients connect from the kernel's choice, 127.0.0.1.

Defect found and fixed (pacsguard.gateway.relay): a client that sent its A-ASSOCIATE-RQ and left
at once (an A-ABORT with it, or a close) while the gateway was opening the upstream leg made the
gateway close that leg with no PDU at all; CTN's simple_storage exits on such a connection, so
one such client stopped the PACS for every later one (last test).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from gateway_under_test import RunningGateway, serving
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from peers.dcmtk import free_port, stop_process_group, wait_for_port

if TYPE_CHECKING:
    from peers.ctn import Ctn, StorageSCP


pytestmark = [pytest.mark.peers, pytest.mark.timeout(120),
              pytest.mark.filterwarnings("ignore:Invalid value for VR UI")]

GW = "127.0.121.10"  # the gateway's routes
SCP = "127.0.121.1"  # where the SCPs (CTN's listen on every address) are reached
PROGRAM = [sys.executable, "-m", "pacsguard.cli"]
CALLING = "CTNMOD"
MR, SC = "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.7"
VERIFICATION = "1.2.840.10008.1.1"
BIG_ENDIAN = "1.2.840.10008.1.2.2"


def relay(name: str, scp: tuple[int, str], **policy: Any) -> dict[str, Any]:
    return {"name": name, "listen": {"host": GW, "port": free_port(GW), "ae_title": "PACSGUARD"},
            "upstream": {"host": SCP, "port": scp[0], "ae_title": scp[1], "connect_timeout": 5},
            "policy": {"calling_ae_titles": [CALLING], **policy}}


def store_and_forward(name: str, scp: StorageSCP) -> dict[str, Any]:
    return {"name": name, "mode": "store-and-forward",
            "listen": {"host": GW, "port": free_port(GW), "ae_title": "PACSGUARD"},
            "policy": {"calling_ae_titles": [CALLING]},
            "destinations": [{"name": "d0", "host": SCP, "port": scp.port, "ae_title": scp.aet, "connect_timeout": 5}],
            "spool": {"min_free_mib": 1}, "retry": {"initial_delay": 0.2, "max_delay": 1.0}}


def objects(folder: Path, ctn: Ctn) -> dict[str, tuple[Path, str, str]]:
    """A 1 MiB CT and an MR (Part-10 files, Explicit VR) and a Secondary Capture that CTN's own
    dcm_create_object writes in CTN format (a bare Implicit VR data set, odd-length values padded
    by CTN): SOP Instance UID -> (file, patient, study)."""
    folder.mkdir()
    made: dict[str, tuple[Path, str, str]] = {}
    for n, (name, patient) in enumerate([("CT_small.dcm", "CTNA-CT"), ("MR_small.dcm", "CTNA-MR")]):
        ds = dcmread(get_testdata_file(name))  # type: ignore[arg-type]
        ds.PatientID, ds.StudyInstanceUID = patient, generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if n == 0:
            ds.Rows = ds.Columns = 724
            ds.PixelData = bytes(i % 251 for i in range(724 * 724 * 2))
        made[ds.SOPInstanceUID] = (folder / name, patient, ds.StudyInstanceUID)
        ds.save_as(folder / name, enforce_file_format=True)
    uid, study = generate_uid(), generate_uid()
    text = folder / "sc.txt"
    text.write_text(f"0008 0016 {SC}\n0008 0018 {uid}\n0008 0060 OT\n0010 0010 CTN^ODD\n"
                    f"0010 0020 CTNA-SC\n0020 000d {study}\n0020 000e {generate_uid()}\n")
    result = ctn.run("dcm_create_object", "-i", text, folder / "sc.ctn")
    assert result.returncode == 0, result.stdout + result.stderr
    made[uid] = (folder / "sc.ctn", "CTNA-SC", study)
    return made


def ids_read(capture_file: Path, ports: list[int], home: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """`pacsguard ids read` as the site would run it (its DICOM ports listed): events, summary."""
    config = home / "ids.yaml"
    config.write_text(yaml.safe_dump({"ids": {"dicom_ports": [104, 11112, *ports]}}))
    proc = subprocess.run([*PROGRAM, "ids", "read", "-c", str(config), "--format", "json", str(capture_file)],
                          capture_output=True, text=True, timeout=60)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    summary = next(line["summary"] for line in lines if "summary" in line)
    assert proc.returncode in (0, 1), proc.stderr  # 1: an alert fired (asserted below, with its name)
    return [line for line in lines if "kind" in line], summary


def sent(ctn: Ctn, port: int, called: str, files: list[Path], *options: str, calling: str = CALLING,
         host: str = GW) -> subprocess.CompletedProcess[str]:
    return ctn.run("send_image", "-q", *options, "-a", calling, "-c", called, host, str(port), *files)


def spool_empty(gw: RunningGateway, route: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not list((gw.home / "var" / "spool" / route / "objects").glob("*.dcm")):
            return
        time.sleep(0.1)
    # Name what held it (the forwarder's recorded delays), so a failure under load can be read.
    delays = [(e.details.get("sop_instance"), e.details.get("error") or e.details.get("reason"))
              for e in gw.events() if e.kind.startswith("gateway.") and "delay" in e.kind]
    raise AssertionError(f"the spool of {route} did not empty within {timeout} s; delays: {delays}")


@pytest.mark.parametrize("syntax", ["ctn-default", "big-endian"])
def test_send_image_through_relay_and_store_and_forward_arrives_as_sent_directly(
        syntax: str, ctn: Ctn, simple_storage: Any, ctn_capture: Any, tmp_path: Path) -> None:
    """send_image sends a CT, an MR and a CTN-format SC to a simple_storage directly, through a
    relay route and through a store-and-forward route to two more: the peer says success, each
    simple_storage holds the same bytes as the direct one, the gateway records each C-STORE
    (0x0000, patient, study) and its released associations. Captured on loopback, the same
    traffic (both legs, and the forwarder's) raises no IDS alert and the sensor counts the
    associations and C-STOREs that happened, with the patients they carried. ``big-endian``:
    send_image converts every object to Explicit VR Big Endian, which the gateway decodes."""
    options = ["-X", BIG_ENDIAN] if syntax == "big-endian" else []
    direct, behind_relay, behind_saf = simple_storage(), simple_storage(), simple_storage()
    made = objects(tmp_path / "objects", ctn)
    files = [path for path, _, _ in made.values()]
    routes = [relay("rl", (behind_relay.port, behind_relay.aet)), store_and_forward("sf", behind_saf)]
    home = tmp_path / "gw"
    home.mkdir()
    pcap = tmp_path / "ctn.pcap"
    with ctn_capture(pcap, f"host {GW} or host {SCP}"):
        done = sent(ctn, direct.port, direct.aet, files, *options, host=SCP)
        assert done.returncode == 0, done.stdout + done.stderr
        with serving(home, routes, PROGRAM) as gw:
            for route in ("rl", "sf"):
                done = sent(ctn, gw.port(route), "PACSGUARD", files, *options)
                assert done.returncode == 0, done.stdout + done.stderr
                assert done.stdout.count("Successful operation") == len(files), done.stdout
            spool_empty(gw, "sf")
            stores = gw.wait_for("dicom.dimse.c-store", count=2 * len(files))
            released = gw.wait_for("dicom.association.released", count=6)
            forwarded = gw.wait_for("gateway.object.forwarded", count=len(files))
            received = gw.events("gateway.object.received")
            violations = gw.events("dicom.protocol.violation")
    expected = direct.received()
    assert set(expected) == set(made)
    assert behind_relay.received() == expected
    assert behind_saf.received() == expected
    for route in ("rl", "sf"):
        mine = [e for e in stores if e.details["route"] == route]
        assert sorted((e.details["sop_instance"], e.details["status"], e.patient_ids, e.study_uids) for e in mine) == \
            sorted((uid, "0x0000", (patient,), (study,)) for uid, (_, patient, study) in made.items())
    # One association per SOP class, as CTN does it, each released.
    assert Counter(e.details["route"] for e in released) == {"rl": 3, "sf": 3}
    assert sorted(e.details["sop_instance"] for e in forwarded) == sorted(made)
    if syntax == "big-endian":
        assert {e.details["transfer_syntax"] for e in received} == {BIG_ENDIAN}
    assert not violations

    events, summary = ids_read(pcap, [direct.port, behind_relay.port, behind_saf.port,
                                      *(r["listen"]["port"] for r in routes)], tmp_path)
    assert summary["alerts"]["total"] == 0, [e["message"] for e in events if e["kind"].startswith("ids.alert")]
    sensor = summary["sensor"]
    assert sensor["gaps"] == 0, f"tcpdump lost frames: {summary['capture']}"  # else the sensor misses PDUs
    # direct 3, relay 3 + 3 upstream, store-and-forward 3 + the forwarder's (one or more): all released
    assert sensor["associations"] >= 13 and sensor["results"] == {"released": sensor["associations"]}, sensor
    assert sensor["commands"]["C-STORE-RQ"] == 5 * len(files) == sensor["commands"]["C-STORE-RSP"], sensor
    assert not sensor["decode_errors"] and not sensor["violations"], sensor
    seen = Counter(p for e in events if e["kind"] == "dicom.dimse.c-store" for p in e["patient_ids"])
    assert seen == {patient: 5 for _, patient, _ in made.values()}, seen


def worklist_scp(port: int) -> Any:
    """A pynetdicom Modality Worklist SCP (CTN's own needs its database): one match, WL-CTN-1."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

    def on_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        match = Dataset()
        match.SpecificCharacterSet = "ISO_IR 100"
        match.PatientName, match.PatientID, match.AccessionNumber = "CTN^WORKLIST", "WL-CTN-1", "ACC121"
        yield 0xFF00, match

    ae = AE("WORKLIST")
    ae.add_supported_context(ModalityWorklistInformationFind)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae.start_server((SCP, port), block=False, evt_handlers=[(evt.EVT_C_FIND, on_find)])


def test_echo_worklist_and_the_refusals_ctn_gets(ctn: Ctn, simple_storage: Any, tmp_path: Path) -> None:
    """dicom_echo (proposing both roles) and mwlQuery through relay routes succeed and are recorded;
    each refusal of docs/gateway.md ("Refusals and their DICOM answers") reaches CTN as promised
    and CTN ends at once: a calling AE title not allowed is an A-ASSOCIATE-RJ (1, 1, 3); an MR
    on a CT-only route gets its context rejected and send_image gives up on it, nothing reaching
    the PACS; a route without C-ECHO rejects Verification, which dicom_echo reports."""
    pacs = simple_storage()
    wl_port = free_port(SCP)
    worklist = worklist_scp(wl_port)
    routes = [relay("rl", (pacs.port, pacs.aet)),
              relay("ct-only", (pacs.port, pacs.aet), sop_classes=["CTImageStorage"]),
              relay("wl", (wl_port, "WORKLIST"), services=["C-FIND"])]
    made = objects(tmp_path / "objects", ctn)
    mr = next(path for path, patient, _ in made.values() if patient == "CTNA-MR")
    home = tmp_path / "gw"
    home.mkdir()
    try:
        with serving(home, routes, PROGRAM) as gw:
            echo = ctn.run("dicom_echo", "-m", "SCUSCP", "-a", CALLING, "-c", "PACSGUARD", GW, str(gw.port("rl")))
            assert echo.returncode == 0 and "Verification Status:     0000" in echo.stdout, echo.stdout + echo.stderr
            query = ctn.run("mwlQuery", "-a", CALLING, "-c", "PACSGUARD", GW, str(gw.port("wl")))
            said = query.stdout
            assert "WL-CTN-1" in said and "Match continuing" in said and "Successful operation" in said, said

            began = time.monotonic()
            wrong = sent(ctn, gw.port("rl"), "PACSGUARD", [mr], calling="INTRUDER")
            said = wrong.stdout + wrong.stderr
            assert wrong.returncode != 0 and "Result:  1 Source  1 Reason  3" in said, said
            refused = sent(ctn, gw.port("ct-only"), "PACSGUARD", [mr])
            said = refused.stdout + refused.stderr
            assert refused.returncode != 0 and "rejected the SOP class" in said and MR in said, said
            no_echo = ctn.run("dicom_echo", "-a", CALLING, "-c", "PACSGUARD", GW, str(gw.port("wl")))
            # CTN reports the refusal in words and still exits 0.
            assert "Verification Request unsuccessful" in no_echo.stdout + no_echo.stderr, no_echo.stdout
            assert time.monotonic() - began < 10  # no refusal leaves CTN waiting

            (echoed,) = gw.wait_for("dicom.dimse.c-echo")
            (found,) = gw.wait_for("dicom.dimse.c-find")
            (rejected,) = gw.wait_for("dicom.association.rejected")
            accepted = gw.wait_for("dicom.association.accepted", count=4)
    finally:
        worklist.shutdown()
    assert echoed.details["status"] == "0x0000" and echoed.details["route"] == "rl"
    assert found.details["status"] == "0x0000" and found.patient_ids == ("WL-CTN-1",)
    assert rejected.actor.ae_title == "INTRUDER" and rejected.details["rule"] == "policy.calling_ae_titles"
    assert (rejected.details["result"], rejected.details["source"], rejected.details["reason_code"]) == (1, 1, 3)
    by_route = {e.details["route"]: e.details for e in accepted if e.details["refused_by_policy"]}
    assert by_route["ct-only"]["refused_by_policy"] == [MR] and by_route["ct-only"]["accepted"] == []
    assert by_route["wl"]["refused_by_policy"] == [VERIFICATION]
    assert pacs.received() == {}  # the refused MR never reached the PACS


def test_simple_storage_is_the_c_move_destination_behind_a_return_route(ctn: Ctn, simple_storage: Any,
                                                                        tmp_path: Path) -> None:
    """dcmqrscp (the archive, behind route `main`) moves a study of two CTs to WS1, a CTN
    simple_storage behind the return route: WS1 holds both, the C-MOVE's record counts them
    delivered through the return route, each sub-operation's C-STORE is linked to it."""
    ws1 = simple_storage("WS1")
    study, patient = generate_uid(), "CTNA-MOVED"
    cts = []
    for n in range(2):
        ds = dcmread(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
        ds.PatientID, ds.StudyInstanceUID = patient, study
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        cts.append(tmp_path / f"ct{n}.dcm")
        ds.save_as(cts[-1], enforce_file_format=True)
    archive_port = free_port("0.0.0.0")
    routes = [relay("main", (archive_port, "ARCHIVE"), move_destinations=["WS1"]),
              relay("retrieve-to-ws1", (ws1.port, "WS1"), services=["C-ECHO", "C-STORE"])]
    routes[0]["policy"]["calling_ae_titles"] = ["MOVER"]
    routes[1]["policy"]["calling_ae_titles"] = ["ARCHIVE"]  # the archive calls WS1 at the gateway
    routes[1]["listen"]["ae_title"] = "WS1"
    db = tmp_path / "db"
    db.mkdir()
    config = tmp_path / "dcmqrscp.cfg"
    config.write_text(f"NetworkTCPPort = {archive_port}\nMaxPDUSize = 16384\nMaxAssociations = 8\n"
                      f"HostTable BEGIN\nws1 = (WS1, {GW}, {routes[1]['listen']['port']})\nHostTable END\n"
                      "VendorTable BEGIN\nVendorTable END\n"
                      f"AETable BEGIN\nARCHIVE {db} RW (20, 64mb) ANY\nAETable END\n")
    log = tmp_path / "dcmqrscp.log"
    archive = subprocess.Popen(["/usr/bin/dcmqrscp", "-c", str(config)], stdout=log.open("w"),
                               stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "TCP_NODELAY": "1"})
    home = tmp_path / "gw"
    home.mkdir()
    try:
        assert wait_for_port(SCP, archive_port, 10, archive), log.read_text()
        stored = subprocess.run(["/usr/bin/storescu", "-aet", "MODALITY", "-aec", "ARCHIVE", SCP, str(archive_port),
                                 *map(str, cts)], capture_output=True, text=True, timeout=30)
        assert stored.returncode == 0, stored.stdout + stored.stderr
        with serving(home, routes, PROGRAM) as gw:
            moved = subprocess.run(["/usr/bin/movescu", "-S", "-aet", "MOVER", "-aec", "PACSGUARD", "-aem", "WS1",
                                    "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                                    GW, str(gw.port("main"))], capture_output=True, text=True, timeout=30)
            assert moved.returncode == 0, moved.stdout + moved.stderr
            (move,) = gw.wait_for("dicom.dimse.c-move")
            stores = gw.wait_for("dicom.dimse.c-store", count=2)
    finally:
        stop_process_group(archive)
    uids = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in cts}
    assert set(ws1.received()) == uids
    assert move.details["status"] == "0x0000" and move.details["suboperations"]["completed"] == 2
    assert move.details["delivered"] == {"instances": 2, "routes": ["retrieve-to-ws1"],
                                         "move_originators": ["MOVER"]}, move.details
    assert move.patient_ids == (patient,) and move.study_uids == (study,)
    for store in stores:
        assert store.details["route"] == "retrieve-to-ws1" and store.details["status"] == "0x0000"
        assert store.details["c_move"]["requestor_ae"] == "MOVER" and not store.details["c_move"]["originator_mismatch"]


def test_a_destination_that_aborts_after_every_object_still_gets_each_once(ctn: Ctn, simple_storage: Any,
                                                                           tmp_path: Path) -> None:
    """simple_storage -a aborts its association after each object it receives. The forwarder of a
    store-and-forward route opens a new association for the next object, asks (C-FIND) about
    one whose answer went missing, and in the end the destination holds every object, each
    recorded forwarded exactly once, the spool empty."""
    aborting = simple_storage("CTNSCP", "-a")
    made = objects(tmp_path / "objects", ctn)
    files = [path for path, _, _ in made.values()]
    home = tmp_path / "gw"
    home.mkdir()
    with serving(home, [store_and_forward("sf", aborting)], PROGRAM) as gw:
        done = sent(ctn, gw.port("sf"), "PACSGUARD", files)
        assert done.returncode == 0, done.stdout + done.stderr
        spool_empty(gw, "sf", timeout=45)  # ~4 s alone; CI shares 2 cores
        forwarded = gw.wait_for("gateway.object.forwarded", count=len(files))
    assert set(aborting.received()) == set(made)
    assert Counter(e.details["sop_instance"] for e in forwarded) == {uid: 1 for uid in made}
    assert {e.details["status"] for e in forwarded} == {"0x0000"}


def associate_rq(calling: str) -> bytes:
    """An A-ASSOCIATE-RQ (PS3.8 9.3.2) for Verification, as CTN's dicom_echo would send it."""
    from pacsguard.dicom import pdu as P

    info = P.UserInformation.build(max_length=16384, implementation_class_uid="1.2.840.113654.2.3.1995.3.0.6",
                                   implementation_version_name="MIRCTN11MAR2003")
    return P.encode_associate_rq(P.AssociateRQ(called_ae_title="PACSGUARD", calling_ae_title=calling,
                                               user_information=info, presentation_contexts=[
                                                   P.PresentationContextRQ(1, VERIFICATION, ["1.2.840.10008.1.2"])]))


def test_a_client_gone_before_the_upstream_leg_is_open_leaves_simple_storage_running(
        ctn: Ctn, simple_storage: Any, tmp_path: Path) -> None:
    """A client sends its A-ASSOCIATE-RQ and, at once, an A-ABORT (one write), or closes its
    connection: the gateway has started opening the upstream leg. That leg must not be closed
    with no PDU at all: CTN's simple_storage, like a 1990s PACS, exits (status 0) on a connection
    closed before its A-ASSOCIATE-RQ, so one such client took the PACS down for everyone after it.
    The gateway now finishes opening the leg and sends the PACS an A-ABORT (PS3.8 Table 9-10,
    Sta2 + Evt16: AA-2), which simple_storage survives: send_image through the route still works."""
    import socket

    from pacsguard.dicom import pdu as P

    pacs = simple_storage()
    made = objects(tmp_path / "objects", ctn)
    ct = next(path for path, patient, _ in made.values() if patient == "CTNA-CT")
    home = tmp_path / "gw"
    home.mkdir()
    with serving(home, [relay("rl", (pacs.port, pacs.aet))], PROGRAM) as gw:
        for n, ending in enumerate((P.encode_abort(), b"")):  # A-ABORT at once; or just the close
            with socket.create_connection((GW, gw.port("rl")), timeout=5,
                                          source_address=("127.0.121.11", 0)) as gone:
                gone.sendall(associate_rq(CALLING) + ending)
            gw.wait_for("dicom.association.aborted", count=n + 1)
        time.sleep(0.5)  # what the PACS does with the upstream legs, it has done by now
        done = sent(ctn, gw.port("rl"), "PACSGUARD", [ct])
        said = done.stdout + done.stderr
        assert done.returncode == 0 and "Successful operation" in said, said  # before: rejected (2, 3, 1)
        (store,) = gw.wait_for("dicom.dimse.c-store")
        assert not gw.events("gateway.upstream.unreachable")
    assert store.details["status"] == "0x0000" and store.patient_ids == ("CTNA-CT",)
    assert set(pacs.received()) == {str(dcmread(ct, stop_before_pixels=True).SOPInstanceUID)}
