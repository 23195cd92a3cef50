"""PixelMed (Clunie's Java toolkit) in front of and behind the gateway, as a site would put it: its
Storage, Verification, Query and Retrieve SCUs as the workstation, its Storage SCP as the archive
behind a route and as a C-MOVE destination. What PixelMed concludes, what arrives, what the gateway
records and what the passive IDS reads of the same traffic must agree."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from gateway_under_test import serving
from pydicom import dcmread
from pydicom.data import get_testdata_file
from test_store_forward import dataset_bytes

from pacsguard.tls import make_ca, make_cert
from peers.dcmtk import free_port

pytestmark = [pytest.mark.peers, pytest.mark.filterwarnings("ignore:Invalid value for VR UI")]

PROGRAM = [sys.executable, "-m", "pacsguard.cli"]
CALLING = "PMSCU"
FILES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")


@contextmanager
def captured(path: Path, host: str) -> Iterator[Path]:
    """tcpdump on lo of the traffic to and from ``host`` into ``path`` while the block runs."""
    assert shutil.which("tcpdump"), "tcpdump is missing: apt-get install tcpdump"
    # A 64 MiB buffer and immediate mode: lo carries 64 KiB frames faster than tcpdump's defaults keep.
    proc = subprocess.Popen(["tcpdump", "-i", "lo", "--immediate-mode", "-U", "-s", "0", "-B", "65536",
                             "-w", str(path), "host", host],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stderr is not None
        said = proc.stderr.readline()  # "listening on lo, ..." once the socket takes packets
        assert "listening on" in said, said
        time.sleep(0.2)
        yield path
    finally:
        # tcpdump reads its (large, lossless) buffer behind the traffic and drops what is unread
        # when stopped: stop once the file has not grown for half a second.
        deadline, size = time.monotonic() + 15, -1
        while time.monotonic() < deadline and path.exists() and path.stat().st_size != size:
            size = path.stat().st_size
            time.sleep(0.5)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def ids_read(capture: Path, cwd: Path, ports: Iterable[int]) -> tuple[int, list[dict]]:
    """`pacsguard ids read --format json` with the site's DICOM ports (docs/ids.md, Settings): exit
    status and the events (JSON lines with a "kind")."""
    config = cwd / "ids.yaml"
    config.write_text(yaml.safe_dump({"ids": {"dicom_ports": sorted(set(ports))}}))
    done = subprocess.run([*PROGRAM, "ids", "read", "--format", "json", "-c", str(config), str(capture)], cwd=cwd,
                          capture_output=True, text=True, timeout=60)
    events = []
    for line in done.stdout.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict) and "kind" in item:
            events.append(item)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    return done.returncode, events


def relay(name: str, host: str, upstream: tuple[str, int, str], policy: dict | None = None,
          ae_title: str = "PACSGUARD") -> dict:
    return {"name": name, "listen": {"host": host, "port": free_port(host), "ae_title": ae_title},
            "upstream": {"host": upstream[0], "port": upstream[1], "ae_title": upstream[2], "connect_timeout": 5},
            "policy": policy or {"calling_ae_titles": [CALLING]}}


def store_forward(name: str, host: str, upstream: tuple[str, int, str]) -> dict:
    return {"name": name, "mode": "store-and-forward",
            "listen": {"host": host, "port": free_port(host), "ae_title": "PACSGUARD"},
            "policy": {"calling_ae_titles": [CALLING]},
            "destinations": [{"name": "d0", "host": upstream[0], "port": upstream[1], "ae_title": upstream[2],
                              "connect_timeout": 3}],
            "spool": {"min_free_mib": 1}, "retry": {"initial_delay": 0.2, "max_delay": 1.0}}


def files(tmp_path: Path) -> list[Path]:
    out = tmp_path / "in"
    out.mkdir(exist_ok=True)
    return [Path(shutil.copy(get_testdata_file(n), out / n)) for n in FILES]


def at(gw, route: str, host: str, called: str = "PACSGUARD", calling: str = CALLING) -> tuple[str, int, str, str]:
    return (host, gw.port(route), calling, called)


def same_objects(scp, sent: list[Path]) -> None:
    """What PixelMed's SCP stored is, data set for data set, what PixelMed's SCU read from its files:
    PixelMed streams a file's data set as it is, Data Set Trailing Padding included (PS3.10 7.2)."""
    got = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p, _, _ in scp.wait_for(len(sent))}
    for path in sent:
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        if dcmread(got[uid]).file_meta.TransferSyntaxUID == dcmread(path).file_meta.TransferSyntaxUID:
            assert dataset_bytes(got[uid].read_bytes()) == dataset_bytes(path.read_bytes()), f"{path.name} changed"
        else:  # PixelMed's SCU converts an Implicit VR file to the Explicit VR its SCP prefers
            assert dcmread(got[uid]) == dcmread(path), f"{path.name} changed on the way"


@pytest.mark.parametrize("kind", ["relay", "store-and-forward"])
def test_pixelmed_scu_to_pixelmed_scp_through_a_route(kind, pixelmed, pixelmed_scp, tmp_path):
    """Echo, three C-STOREs and a stranger's echo in one PixelMed JVM. pydicom's rtplan.dcm names one
    SOP Instance UID in its file meta and another in its data set; PixelMed's SCU takes the file
    meta's as the Affected SOP Instance UID. A relay passes that on as it is (PixelMed's SCP stores
    it); a store-and-forward route refuses it at reception with 0xC000 (docs/gateway.md, "What is
    refused at reception"), and PixelMed counts it failed and goes on."""
    host = "127.0.123.10" if kind == "relay" else "127.0.123.11"
    scp = pixelmed_scp(host)
    make = relay if kind == "relay" else store_forward
    sent = files(tmp_path)
    delivered = sent if kind == "relay" else sent[:2]
    with serving(tmp_path, [make("r", host, (host, scp.port, scp.aet))], PROGRAM) as gw:
        run = pixelmed.run([("echo", *at(gw, "r", host)),
                            ("store", *at(gw, "r", host), *sent),
                            ("echo", *at(gw, "r", host, calling="STRANGER"))], tmp_path)
        echo, store, stranger = run.outcomes
        assert echo.ok, run
        failed = len(sent) - len(delivered)
        assert store.ok and store.field("remaining") == "0" and store.field("failed") == str(failed), run
        assert not stranger.ok and "calling AE Title not recognized" in stranger.detail, run
        same_objects(scp, delivered)
        stores = gw.wait_for("dicom.dimse.c-store", count=len(sent))
        assert sorted(e.details["status"] for e in stores) == ["0x0000"] * len(delivered) + ["0xC000"] * failed
        assert sorted(p for e in stores for p in e.patient_ids) == sorted(
            str(dcmread(p, stop_before_pixels=True).PatientID) for p in sent)
        assert {u for e in stores for u in e.study_uids} == {
            str(dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in sent}
        if failed:
            (refused,) = gw.wait_for("gateway.object.refused")
            assert refused.details["rule"] == "c-store.sop-instance-mismatch", refused.details
        (rejected,) = gw.wait_for("dicom.association.rejected")
        assert rejected.details["rule"] == "policy.calling_ae_titles" and rejected.actor.ae_title == "STRANGER"
        gw.wait_for("dicom.association.released", count=2)
        assert not gw.events("dicom.association.aborted") and not gw.events("dicom.protocol.violation")
        assert not [e.kind for e in gw.events() if e.kind.startswith("ids.alert.")]
    assert "Traceback" not in gw.log.read_text()


def test_pixelmed_query_and_retrieve_through_a_relay(pixelmed, pixelmed_scp, orthanc, tmp_path):
    """PixelMed as the workstation in front of an Orthanc archive: its Storage, Find, Move and Get
    SCUs through the relay, its Storage SCP as the C-MOVE destination behind the return route
    (PS3.4 C.4.2), a C-MOVE to a destination the route does not allow answered 0xA801."""
    host = "127.0.123.20"
    scp = pixelmed_scp(host, aet="PMSCP")
    baseline = pixelmed_scp("127.0.123.21", aet="PMDIRECT")  # what Orthanc sends PixelMed directly
    reverse = free_port(host)
    pacs = orthanc(DicomModalities={"ws": [CALLING, host, 1], "pm": ["PMSCP", host, reverse],
                                    "direct": ["PMDIRECT", baseline.host, baseline.port]})
    main = relay("main", host, (host, pacs.dicom_port, pacs.aet),
                 policy={"calling_ae_titles": [CALLING], "move_destinations": ["PMSCP"]})
    back = relay("back", host, (host, scp.port, scp.aet), ae_title="PMSCP",
                 policy={"calling_ae_titles": [pacs.aet], "services": ["C-ECHO", "C-STORE"]})
    back["listen"]["port"] = reverse
    ct, mr = files(tmp_path)[:2]
    ct_study, mr_study = (str(dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in (ct, mr))
    got = tmp_path / "got"
    got.mkdir()
    with serving(tmp_path, [main, back], PROGRAM) as gw, captured(tmp_path / "qr.pcap", host) as pcap:
        target = at(gw, "main", host)
        run = pixelmed.run([("store", *target, ct, mr),
                            ("find", *target, "STUDY", "StudyInstanceUID=", "PatientID=", "RetrieveAETitle="),
                            ("move", *target, "PMSCP", "STUDY", f"StudyInstanceUID={ct_study}"),
                            ("get", *target, got, "STUDY", f"StudyInstanceUID={mr_study}"),
                            ("move", *target, "ELSEWHERE", "STUDY", f"StudyInstanceUID={ct_study}")], tmp_path)
        store, find, move, get, elsewhere = run.outcomes
        assert store.ok and store.field("failed") == "0", run
        assert find.ok, run
        answers = sorted(a.split("|") for a in find.field("answers").split(","))
        assert [a[0] for a in answers] == sorted([ct_study, mr_study]), run
        assert {a[2] for a in answers} == {"PACSGUARD"}, run  # Orthanc's own AE title is rewritten
        assert move.ok, run
        (moved,) = scp.wait_for(1)
        # The sub-operation brings what Orthanc sends PixelMed's SCP directly, byte for byte.
        answer = pacs.rest("/modalities/direct/store", "POST", {"Resources": pacs.instances(), "Synchronous": True})
        assert answer["FailedInstancesCount"] == 0, answer
        direct = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p, _, _ in baseline.wait_for(2)}
        uid = str(dcmread(ct, stop_before_pixels=True).SOPInstanceUID)
        assert dataset_bytes(moved[0].read_bytes()) == dataset_bytes(direct[uid].read_bytes())
        assert get.ok and len(get.field("received").split(",")) == 1, run
        mr_uid = str(dcmread(mr, stop_before_pixels=True).SOPInstanceUID)
        assert dataset_bytes(Path(get.field("received")).read_bytes()) == dataset_bytes(direct[mr_uid].read_bytes())
        assert not elsewhere.ok and "a801" in elsewhere.detail.lower(), run

        moves = gw.wait_for("dicom.dimse.c-move", count=2)
        done = [e for e in moves if e.details.get("move_destination") == "PMSCP"]
        assert len(done) == 1 and done[0].details["suboperations"]["completed"] == 1, [e.details for e in moves]
        # credited with what its sub-operation delivered through the return route (docs/ids.md)
        assert done[0].details["delivered"]["routes"] == ["back"] and done[0].details["delivered"]["instances"] == 1
        refused = [e for e in moves if e.details.get("decision") == "refused"]
        assert len(refused) == 1 and refused[0].details["status"] == "0xA801"
        (get_event,) = gw.wait_for("dicom.dimse.c-get")
        assert get_event.outcome == "success" and get_event.details["suboperations"]["completed"] == 1
        assert ct_study in get_event.study_uids or mr_study in get_event.study_uids
        (find_event,) = gw.wait_for("dicom.dimse.c-find")
        assert find_event.details["responses"] == 2
        sub = gw.wait_for("dicom.dimse.c-store", where=lambda e: e.details["route"] == "back")
        assert sub[0].actor.ae_title == pacs.aet and ct_study in sub[0].study_uids
        assert not gw.events("dicom.association.aborted") and not gw.events("dicom.protocol.violation")
        assert not [e.kind for e in gw.events() if e.kind.startswith("ids.alert.")]
    assert "Traceback" not in gw.log.read_text()
    # The passive IDS reads the same: both legs of each association, no alert (PixelMed's own
    # traffic and Orthanc's sub-association to the return route are normal traffic).
    status, events = ids_read(pcap, tmp_path, [*gw.ports.values(), pacs.dicom_port, scp.port])
    kinds = Counter(e["kind"] for e in events)
    assert status == 0 and not [k for k in kinds if k.startswith("ids.")], kinds
    # 5 associations of PixelMed's and 1 of Orthanc's to PMSCP, each on two legs
    assert kinds["dicom.association.released"] == 12 and not kinds["dicom.association.aborted"], kinds
    assert (kinds["dicom.dimse.c-find"], kinds["dicom.dimse.c-get"], kinds["dicom.dimse.c-move"]) == (2, 2, 3), kinds
    patients = Counter(p for e in events if e["kind"] == "dicom.dimse.c-store" for p in e["patient_ids"])
    ct_patient, mr_patient = (str(dcmread(p, stop_before_pixels=True).PatientID) for p in (ct, mr))
    assert patients == {ct_patient: 4, mr_patient: 4}, patients  # stored, then moved or got, two legs



def test_pixelmed_gets_the_refusals_docs_gateway_md_promises(pixelmed, pixelmed_scp, tmp_path):
    """docs/gateway.md, "Refusals and their DICOM answers", as PixelMed meets them: a SOP class and
    a service the route does not allow (contexts rejected, PS3.8 9.3.3.2), a wrong called AE title
    (A-ASSOCIATE-RJ reason 7), an unreachable PACS (A-ASSOCIATE-RJ transient), a C-FIND to a
    store-and-forward route, and PixelMed's TLS ("SECURE": TLS_RSA_WITH_AES_128_CBC_SHA or 3DES
    only, no ECDHE, no AEAD) at a TLS route, which BCP 195 (RFC 9325 4.1, 4.2) makes refuse it,
    recorded with that reason. PixelMed reports each as a failure, promptly; nothing reaches the
    SCP but the allowed CT."""
    host = "127.0.123.40"
    scp = pixelmed_scp(host)
    ct, mr = files(tmp_path)[:2]
    strict = relay("strict", host, (host, scp.port, scp.aet),
                   policy={"calling_ae_titles": [CALLING], "services": ["C-ECHO", "C-STORE"],
                           "sop_classes": ["CTImageStorage"]})
    nowhere = relay("nowhere", host, (host, free_port(host), "NOBODY"))
    nowhere["upstream"]["connect_timeout"] = 2
    ca, ca_key = make_ca(tmp_path / "pki", "Test Hospital CA", 30)
    cert, key = make_cert(tmp_path / "pki", "gateway", ca, ca_key, hosts=[host], days=30, server=True)
    tls = relay("tls", host, (host, scp.port, scp.aet))
    tls["listen"]["tls"] = {"cert_file": str(cert), "key_file": str(key), "ca_file": str(ca),
                            "require_client_cert": False}
    routes = [strict, nowhere, store_forward("sf", host, (host, scp.port, scp.aet)), tls]
    with serving(tmp_path, routes, PROGRAM) as gw:
        run = pixelmed.run([("store", *at(gw, "strict", host), mr),
                            ("find", *at(gw, "strict", host), "STUDY", "StudyInstanceUID="),
                            ("echo", *at(gw, "strict", host, called="WRONG")),
                            ("store", *at(gw, "strict", host), ct),
                            ("echo", *at(gw, "nowhere", host)),
                            ("find", *at(gw, "sf", host), "STUDY", "StudyInstanceUID="),
                            ("echo-tls", *at(gw, "tls", host))], tmp_path, timeout=40)
        mr_store, find, wrong, ct_store, unreachable, sf_find, secure = run.outcomes
        assert not mr_store.ok or mr_store.field("failed") == "1", run
        assert not find.ok, run
        assert not wrong.ok and "called AE Title not recognized" in wrong.detail, run
        assert ct_store.ok and ct_store.field("failed") == "0", run
        assert not unreachable.ok and "rejected-transient" in unreachable.detail, run
        assert not sf_find.ok, run
        assert not secure.ok and "handshake_failure" in secure.detail, run
        ((received, _, _),) = scp.wait_for(1)
        assert dataset_bytes(received.read_bytes()) == dataset_bytes(ct.read_bytes())
        accepted = gw.wait_for("dicom.association.accepted", count=2,
                               where=lambda e: e.details["route"] == "strict")
        refused = {uid for e in accepted for uid in e.details.get("refused_by_policy", [])}
        assert {"1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.2.2.1"} <= refused, refused
        rules = {e.details["route"]: e.details["rule"] for e in gw.wait_for("dicom.association.rejected", count=2)}
        assert rules["strict"] == "listen.ae_title", rules
        assert gw.wait_for("gateway.upstream.unreachable")[0].details["route"] == "nowhere"
        # (serving()'s readiness probe, a bare TCP connection, is a failed handshake too)
        gw.wait_for("tls.handshake.failed", where=lambda e: "no shared cipher" in e.details["error"])
        assert not gw.events("dicom.protocol.violation")
    assert "Traceback" not in gw.log.read_text()



def without_frame(capture: Path, out: Path, port: int, nth: int = 10) -> Path:
    """``capture`` (pcap, Ethernet, as tcpdump -i lo writes it) without the ``nth`` full-size data
    frame sent to ``port``: the frame a busy capture point drops while the receiver got it."""
    data = capture.read_bytes()
    assert struct.unpack_from("<I", data, 20)[0] == 1, "expected an Ethernet pcap"
    kept, off, seen = bytearray(data[:24]), 24, 0
    while off < len(data):
        caplen = struct.unpack_from("<I", data, off + 8)[0]
        frame = data[off + 16: off + 16 + caplen]
        tcp = 14 + (frame[14] & 15) * 4 if len(frame) > 34 and frame[12:14] == b"\x08\x00" else 0
        if tcp and frame[23] == 6 and struct.unpack_from(">H", frame, tcp + 2)[0] == port and caplen > 16384:
            seen += 1
            if seen == nth:
                off += 16 + caplen
                continue
        kept += data[off: off + 16 + caplen]
        off += 16 + caplen
    assert seen > nth + 20, f"only {seen} large frames to port {port}"
    out.write_bytes(bytes(kept))
    return out


def test_ids_reads_pixelmed_traffic_and_a_frame_the_capture_lost(pixelmed, pixelmed_scp, tmp_path):
    """A 4 MiB CT from PixelMed's SCU to its SCP, directly and through a relay, captured on lo. Read
    whole: no alert, no anomaly, every association released. Read again without one data frame of
    the direct connection (the receiver acknowledged it, the capture lacks it): the receiver's
    window starts at what it acknowledged (RFC 9293 3.10.7.4), so the rest of the transfer is data
    within it, a gap and then inspected, not hundreds of `tcp-beyond-window` discards that leave
    the association unreleased."""
    from test_orthanc import large_ct

    host = "127.0.123.50"
    scp = pixelmed_scp(host)
    big = large_ct(tmp_path / "large.dcm", 4)
    with serving(tmp_path, [relay("r", host, (host, scp.port, scp.aet))], PROGRAM) as gw, \
            captured(tmp_path / "lo.pcap", host) as pcap:
        run = pixelmed.run([("store", host, scp.port, CALLING, scp.aet, big),
                            ("store", *at(gw, "r", host), big)], tmp_path)
        assert all(o.ok and o.field("failed") == "0" for o in run.outcomes), run
        scp.wait_for(2)
        gw.wait_for("dicom.association.released")
    ports = [gw.port("r"), scp.port]
    for capture in (pcap, without_frame(pcap, tmp_path / "lossy.pcap", scp.port)):
        status, events = ids_read(capture, tmp_path, ports)
        kinds = Counter(e["kind"] for e in events)
        assert status == 0 and not [k for k in kinds if k.startswith("ids.")], (capture.name, kinds)
        # three associations: PixelMed to its SCP, PixelMed to the gateway, the gateway to the SCP
        assert kinds["dicom.association.released"] == 3 and not kinds["dicom.association.aborted"], kinds
        stores = [e for e in events if e["kind"] == "dicom.dimse.c-store"]
        assert len(stores) == 3 and all(e["patient_ids"] == ["LARGE01"] for e in stores), stores
