"""Round 12 G: dcmjs-dimse (npm, run by Debian's Node.js) in front of and behind the gateway.

dcmjs-dimse's Client (tests/peers/dcmjs/scu.js) is the SCU of C-ECHO, C-STORE, C-FIND, C-MOVE and
C-GET; its Server (tests/peers/dcmjs/scp.js) is the archive behind a relay route, the destination
of a store-and-forward route and the C-MOVE destination behind a return route. Every listener is
on 127.0.127.x. What dcmjs-dimse (0.3.3) does on its own, seen directly and through the gateway
alike: a C-GET association proposes a presentation context for every storage class it knows, with
the SCP role (PS3.7 D.3.3.4); its C-MOVE SCP's sub-operations carry no Move Originator fields; a
request its association has no context for is skipped without a word (the Client still exits as
if all went well); and a Deflated Explicit VR Little Endian data set is sent undeflated.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from gateway_under_test import RunningGateway
from peer_routes import gateway_with, relay_route, store_and_forward_route
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from test_r12B_odil import ids_read, tcpdump
from test_store_forward import fresh_ct

from peers.dcmjs import Answer, Archive, Dcmjs, dcmjs_fixture  # noqa: F401  (the fixture `dcmjs`)
from peers.dcmtk import free_port

pytestmark = [pytest.mark.peers]

GW = "127.0.127.1"
CLIENT = "127.0.127.20"
CALLING = "DCMJSSCU"
SUCCESS, PENDING = 0x0000, 0xFF00


def relay(name: str, archive: Archive, aet: str = "DCMJSARCH", **policy: object) -> dict:
    return relay_route(name, GW, CALLING, (archive.host, archive.port), aet, **policy)


def store_and_forward(name: str, destination: Archive) -> dict:
    return store_and_forward_route(name, GW, CALLING, (destination.host, destination.port), "DCMJSDEST")


def through(dcmjs: Dcmjs, gw: RunningGateway, route: str, *requests: dict, calling: str = CALLING,
            **kw: object) -> Answer:
    return dcmjs.scu(GW, gw.port(route), calling, "PACSGUARD", *requests, bind=CLIENT, **kw)  # type: ignore[arg-type]


def ok(answer: Answer) -> Answer:
    assert answer.code == 0, answer.lines
    return answer


def test_dcmjs_scu_through_a_relay_route_to_a_dcmjs_archive(dcmjs: Dcmjs, tmp_path: Path) -> None:
    """Echo, store and find on one association, then C-GET (PS3.4 A, B, C.4.3, C.6) from dcmjs-dimse,
    relayed to its Server: the archive holds the bytes it holds when sent to directly, the C-FIND
    match names the gateway as Retrieve AE Title, the C-GET's sub-operations come back on the same
    association, a C-GET that dcmjs-dimse cancels (C-CANCEL, PS3.7 9.3.3.3) at its first pending
    response ends with 0xFE00, and every request is recorded with its patient and study."""
    files = fresh_ct(tmp_path / "ct", 3, kib=256, patient="DCMJS01")
    with dcmjs.archive("127.0.127.2", tmp_path / "direct") as direct, \
            dcmjs.archive("127.0.127.3", tmp_path / "arch", sub_delay=0.2) as arch, \
            gateway_with(tmp_path, relay("rl", arch)) as gw:
        ok(dcmjs.scu(direct.host, direct.port, CALLING, "DCMJSARCH", {"op": "store", "files": files}, bind=CLIENT))
        first = ok(through(dcmjs, gw, "rl", {"op": "echo"}, {"op": "store", "files": files},
                           {"op": "find", "keys": {"PatientID": "DCMJS01", "StudyInstanceUID": "",
                                                   "RetrieveAETitle": ""}}))
        match = first.responses("C-FIND")[0]["dataset"]
        got = ok(through(dcmjs, gw, "rl", {"op": "get", "study": match["StudyInstanceUID"]},
                         get_folder=tmp_path / "got"))
        cancelled = ok(through(dcmjs, gw, "rl", {"op": "get", "study": match["StudyInstanceUID"], "cancel": True}))
        stores = gw.wait_for("dicom.dimse.c-store", count=7)
        finds = gw.wait_for("dicom.dimse.c-find")
        gets = gw.wait_for("dicom.dimse.c-get", count=2)
        released = gw.wait_for("dicom.association.released", count=3)
        assert arch.objects() == direct.objects() and len(arch.objects()) == 3
        accepted = gw.events("dicom.association.accepted")
        recorded = gw.events()
    assert first.statuses("C-ECHO") == [SUCCESS] and first.statuses("C-STORE") == [SUCCESS] * 3
    assert first.statuses("C-FIND") == [PENDING, SUCCESS]
    assert match["RetrieveAETitle"] == "PACSGUARD" and match["PatientID"] == "DCMJS01"
    assert got.statuses("C-GET")[-1] == SUCCESS and got.responses("C-GET")[-1]["completed"] == 3
    assert {s["sop"] for s in got.events("sub-store")} == set(direct.objects())
    study = (match["StudyInstanceUID"],)
    assert all(e.patient_ids == ("DCMJS01",) and e.study_uids == study and e.details["status"] == "0x0000"
               for e in stores), [(e.patient_ids, e.study_uids, e.details["status"]) for e in stores]
    assert finds[0].details["status"] == "0x0000" and finds[0].patient_ids == ("DCMJS01",)
    assert finds[0].details["rewritten"] == {"RetrieveAETitle": 1}
    assert gets[0].details["status"] == "0x0000" and gets[0].study_uids == study
    assert cancelled.statuses("C-GET") == [PENDING, 0xFE00] and len(cancelled.events("sub-store")) == 1
    assert gets[1].details["status"] == "0xFE00" and gets[1].patient_ids == ("DCMJS01",)
    assert gets[1].details["suboperations"] == {"completed": 1, "failed": 0, "remaining": 2, "warning": None}
    assert len(released) == 3 and len(accepted) == 3
    assert not [e.kind for e in recorded if e.kind.startswith("ids.alert.") or e.kind == "dicom.protocol.violation"]
    assert not [e for e in recorded if e.kind == "dicom.association.aborted"]


def test_dcmjs_store_through_a_store_and_forward_route_to_a_dcmjs_destination(dcmjs: Dcmjs, tmp_path: Path) -> None:
    """A store-and-forward route between dcmjs-dimse's Client and its Server: what arrives is the
    bytes that arrive when sent directly; a C-FIND there has no context (a Storage SCP only) and
    dcmjs-dimse ends the association at once."""
    files = fresh_ct(tmp_path / "ct", 3, kib=512, patient="DCMJS02")
    with dcmjs.archive("127.0.127.4", tmp_path / "direct") as direct, \
            dcmjs.archive("127.0.127.5", tmp_path / "dest") as dest, \
            gateway_with(tmp_path, store_and_forward("sf", dest)) as gw:
        ok(dcmjs.scu(direct.host, direct.port, CALLING, "DCMJSDEST", {"op": "store", "files": files}, bind=CLIENT))
        sent = ok(through(dcmjs, gw, "sf", {"op": "echo"}, {"op": "store", "files": files}))
        forwarded = gw.wait_for("gateway.object.forwarded", count=3, timeout=15)
        started = time.monotonic()
        find = through(dcmjs, gw, "sf", {"op": "find", "keys": {"PatientID": "DCMJS02"}})
        elapsed = time.monotonic() - started
        dest.wait_for("C-STORE", count=3)
        assert dest.objects() == direct.objects() and len(dest.objects()) == 3
        received = gw.wait_for("gateway.object.received", count=3)
        recorded = gw.events()
    assert sent.statuses("C-ECHO") == [SUCCESS] and sent.statuses("C-STORE") == [SUCCESS] * 3
    assert all(e.patient_ids == ("DCMJS02",) and e.details["status"] == "0x0000" for e in forwarded)
    assert {e.details["sop_instance"] for e in received} == set(direct.objects())
    assert elapsed < 5, find.lines
    assert find.code == 0 and not find.responses("C-FIND"), find.lines
    assert not [e.kind for e in recorded if e.kind.startswith("ids.alert.") or e.kind == "dicom.protocol.violation"]


def test_refusals_reach_dcmjs_as_the_docs_promise_and_it_does_not_hang(dcmjs: Dcmjs, tmp_path: Path) -> None:
    """docs/gateway.md "Refusals": a calling or called AE title the route does not know gets an
    A-ASSOCIATE-RJ (PS3.8 Table 9-21: rejected-permanent, service-user, reason 3 or 7); a service or
    SOP class the route does not allow loses its presentation context, and dcmjs-dimse, which then
    has no context for the request, sends nothing and releases. Each answer comes at once."""
    files = fresh_ct(tmp_path / "ct", 2, kib=64, patient="DCMJS03")
    with dcmjs.archive("127.0.127.6", tmp_path / "arch") as arch:
        ok(dcmjs.scu(arch.host, arch.port, CALLING, "DCMJSARCH", {"op": "store", "files": files}, bind=CLIENT))
        study = next(iter(arch.wait_for("C-STORE")))["study"]
        no_find = relay("nofind", arch, services=["C-ECHO", "C-STORE", "C-GET"])
        no_ct = relay("noct", arch, sop_classes=["StudyRootQueryRetrieveInformationModelFind",
                                                 "StudyRootQueryRetrieveInformationModelGet", "Verification"])
        with gateway_with(tmp_path, no_find, no_ct) as gw:
            answers: dict[str, Answer] = {}
            requests = {
                "calling": ("nofind", [{"op": "echo"}], {"calling": "INTRUDER"}),
                "find": ("nofind", [{"op": "find", "keys": {"PatientID": "DCMJS03"}}], {}),
                "store": ("noct", [{"op": "echo"}, {"op": "store", "files": files}], {}),
                "get": ("noct", [{"op": "get", "study": study}], {"get_folder": tmp_path / "got"}),
            }
            with tcpdump(tmp_path / "refusals.pcap", [GW]):
                for what, (route, reqs, kw) in requests.items():
                    started = time.monotonic()
                    answers[what] = through(dcmjs, gw, route, *reqs, **kw)
                    assert time.monotonic() - started < 5, (what, answers[what].lines)
                called = dcmjs.scu(GW, gw.port("nofind"), CALLING, "SOMEONE", {"op": "echo"}, bind=CLIENT)
            rejected = gw.wait_for("dicom.association.rejected", count=2)
            recorded = gw.events()
    for answer in (answers["calling"], called):
        assert answer.code == 2 and answer.events("rejected")[0] == {"event": "rejected", "result": 1, "source": 1,
                                                                  "reason": answer.events("rejected")[0]["reason"]}
    assert [answers["calling"].events("rejected")[0]["reason"], called.events("rejected")[0]["reason"]] == [3, 7]
    assert [e.details["rule"] for e in rejected] == ["policy.calling_ae_titles", "listen.ae_title"]
    accepted = [e for e in recorded if e.kind == "dicom.association.accepted"]
    # dcmjs-dimse skips a request its association has no context for and releases: no hang.
    assert answers["find"].code == 0 and not answers["find"].responses("C-FIND")
    assert accepted[0].details["refused_by_policy"] == ["1.2.840.10008.5.1.4.1.2.2.1"]
    assert answers["store"].code == 0 and answers["store"].statuses("C-ECHO") == [SUCCESS]
    assert not answers["store"].responses("C-STORE")
    assert "1.2.840.10008.5.1.4.1.1.2" in accepted[1].details["refused_by_policy"]
    # The archive finds no context for the CT sub-operations (refused by the route) and fails them.
    assert answers["get"].code == 0 and answers["get"].statuses("C-GET") == [0xB000]
    assert answers["get"].responses("C-GET")[0]["failures"] == 2 and not answers["get"].events("sub-store")
    assert [e.details["status"] for e in recorded if e.kind == "dicom.dimse.c-get"] == ["0xB000"]
    assert not [e for e in recorded if e.kind == "dicom.dimse.c-store"]
    # Three AE title pairs from one host within minutes is what a scanner does: the one alert.
    assert [e.kind for e in recorded if e.kind.startswith("ids.alert.")] == ["ids.alert.dicom-scan-echo-probe"]
    config = tmp_path / "ids.yaml"
    config.write_text(yaml.safe_dump({"ids": {"dicom_ports": [no_find["listen"]["port"], no_ct["listen"]["port"]]}}))
    _, seen, summary = ids_read(tmp_path / "refusals.pcap", config)
    assert [(e["details"]["result"], e["details"]["source"], e["details"]["reason_code"]) for e in seen
            if e["kind"] == "dicom.association.rejected"] == [(1, 1, 3), (1, 1, 7)]
    assert summary["sensor"]["results"] == {"rejected": 2, "released": 3}, summary["sensor"]


def test_dcmjs_archive_moves_to_dcmjs_through_a_return_route(dcmjs: Dcmjs, tmp_path: Path) -> None:
    """C-MOVE (PS3.4 C.4.2) from dcmjs-dimse's Client, through a relay route to its Server, whose
    sub-operations come back through a relayed return route (WS1) or a store-and-forward one (WS2)
    to dcmjs-dimse workstations: the objects arrive byte for byte, and the C-MOVE and its
    sub-operations are recorded and linked although dcmjs-dimse sends no Move Originator (PS3.7
    9.1.1.1 makes it optional: linked by destination and the archive's AE title); a destination
    the route does not allow gets 0xA801 from the gateway, and dcmjs-dimse ends cleanly."""
    files = fresh_ct(tmp_path / "ct", 2, kib=64, patient="DCMJS04")
    back_port, saf_port = free_port(GW), free_port(GW)
    moves = {"WS1": (GW, back_port), "WS2": (GW, saf_port)}
    with dcmjs.archive("127.0.127.7", tmp_path / "ws") as ws, dcmjs.archive("127.0.127.15", tmp_path / "ws2") as ws2, \
            dcmjs.archive("127.0.127.8", tmp_path / "arch", moves=moves) as arch:
        ok(dcmjs.scu(arch.host, arch.port, CALLING, "DCMJSARCH", {"op": "store", "files": files}, bind=CLIENT))
        study = arch.wait_for("C-STORE")[0]["study"]
        rl = relay("rl", arch, move_destinations=["WS1", "WS2"])
        back = relay("back", ws, aet="WS1", services=["C-ECHO", "C-STORE"])
        back["listen"].update(port=back_port, ae_title="WS1")
        saf = store_and_forward("sfback", ws2)
        saf["listen"].update(port=saf_port, ae_title="WS2")
        for r in (back, saf):
            r["policy"]["calling_ae_titles"] = ["DCMJSARCH"]
        with gateway_with(tmp_path, rl, back, saf) as gw:
            moved = through(dcmjs, gw, "rl", {"op": "move", "destination": "WS1", "study": study})
            spooled = through(dcmjs, gw, "rl", {"op": "move", "destination": "WS2", "study": study})
            elsewhere = through(dcmjs, gw, "rl", {"op": "move", "destination": "ELSEWHERE", "study": study})
            c_moves = gw.wait_for("dicom.dimse.c-move", count=3)
            subs = gw.wait_for("dicom.dimse.c-store", count=4)
            ws2.wait_for("C-STORE", count=2, timeout=15)
            recorded = gw.events()
        assert ws.objects() == arch.objects() == ws2.objects() and len(ws.objects()) == 2
    for answer in (moved, spooled):
        assert ok(answer).statuses("C-MOVE") == [SUCCESS] and answer.responses("C-MOVE")[0]["completed"] == 2
    assert elsewhere.statuses("C-MOVE") == [0xA801] and elsewhere.code == 0
    # A study-level move names no patient: the gateway credits it with the delivered objects'.
    for move, route in zip(c_moves[:2], ("back", "sfback"), strict=True):
        assert move.details["status"] == "0x0000" and move.patient_ids == ("DCMJS04",)
        assert move.study_uids == (study,) and move.details["delivered"] == {"instances": 2, "routes": [route]}
    assert sorted(e.details["route"] for e in subs) == ["back", "back", "sfback", "sfback"]
    assert all(e.patient_ids == ("DCMJS04",) and e.study_uids == (study,)
               and e.details["c_move"]["linked_by"] == "destination"
               and e.details["c_move"]["requestor_ae"] == CALLING for e in subs)
    assert c_moves[2].details["status"] == "0xA801" and c_moves[2].details["rule"] == "policy.move_destinations"
    assert not [e.kind for e in recorded if e.kind.startswith("ids.alert.") or e.kind == "dicom.protocol.violation"]


def test_the_passive_ids_reads_dcmjs_traffic_without_alerts(dcmjs: Dcmjs, tmp_path: Path) -> None:
    """dcmjs-dimse's echo, store and find, C-GET and C-MOVE, to its archive directly and through the
    gateway, captured with tcpdump and read by `pacsguard ids read`: normal traffic raises no alert,
    and the IDS sees the associations, requests and patient of the gateway's own records."""
    files = fresh_ct(tmp_path / "ct", 2, kib=128, patient="DCMJS05")
    back_port = free_port(GW)
    with dcmjs.archive("127.0.127.9", tmp_path / "ws") as ws, \
            dcmjs.archive("127.0.127.10", tmp_path / "arch", moves={"WS1": (ws.host, ws.port)}) as direct_arch, \
            dcmjs.archive("127.0.127.11", tmp_path / "arch2", moves={"WS1": (GW, back_port)}) as arch:

        def session(host: str, port: int, called: str) -> None:
            first = ok(dcmjs.scu(host, port, CALLING, called, {"op": "echo"}, {"op": "store", "files": files},
                                 {"op": "find", "keys": {"PatientID": "DCMJS05", "StudyInstanceUID": ""}},
                                 bind=CLIENT))
            study = first.responses("C-FIND")[0]["dataset"]["StudyInstanceUID"]
            ok(dcmjs.scu(host, port, CALLING, called, {"op": "get", "study": study}, bind=CLIENT))
            moved = ok(dcmjs.scu(host, port, CALLING, called, {"op": "move", "destination": "WS1", "study": study},
                                 bind=CLIENT))
            assert moved.responses("C-MOVE")[-1]["completed"] == 2

        with tcpdump(tmp_path / "direct.pcap", [CLIENT, direct_arch.host, ws.host]):
            session(direct_arch.host, direct_arch.port, "DCMJSARCH")
            ws.wait_for("C-STORE", count=2)
        route = relay("rl", arch, move_destinations=["WS1"])
        back = relay("back", ws, aet="WS1", services=["C-ECHO", "C-STORE"])
        back["listen"].update(port=back_port, ae_title="WS1")
        back["policy"]["calling_ae_titles"] = ["DCMJSARCH"]
        with gateway_with(tmp_path, route, back) as gw:
            with tcpdump(tmp_path / "gateway.pcap", [GW, arch.host, ws.host]):
                session(GW, gw.port("rl"), "PACSGUARD")
                gw.wait_for("dicom.dimse.c-store", count=4)
            recorded = [e for e in gw.events() if e.kind.startswith("dicom.")]
            alerts = [e.kind for e in gw.events() if e.kind.startswith("ids.alert.")]
    assert not alerts
    config = tmp_path / "ids.yaml"
    ports = [direct_arch.port, ws.port, arch.port, route["listen"]["port"], back_port]
    config.write_text(yaml.safe_dump({"ids": {"dicom_ports": ports}}))
    for capture in ("direct.pcap", "gateway.pcap"):
        code, events, summary = ids_read(tmp_path / capture, config)
        assert summary["capture"]["gaps"] == 0, f"tcpdump lost packets of {capture}: {summary['capture']}"
        assert code == 0 and summary["alerts"]["total"] == 0, (capture, summary["alerts"])
        legs = 1 if capture == "direct.pcap" else 2  # through the gateway each exchange is on the wire twice
        assert summary["sensor"]["results"] == {"released": 4 * legs}, summary["sensor"]
        assert summary["sensor"]["commands"] == {
            "C-ECHO-RQ": legs, "C-ECHO-RSP": legs, "C-STORE-RQ": 6 * legs, "C-STORE-RSP": 6 * legs,
            "C-FIND-RQ": legs, "C-FIND-RSP": 2 * legs, "C-GET-RQ": legs, "C-GET-RSP": 2 * legs,
            "C-MOVE-RQ": legs, "C-MOVE-RSP": legs}, summary["sensor"]
        dimse = [e for e in events if e["kind"].startswith("dicom.dimse.")]
        assert all(e["patient_ids"] == ["DCMJS05"] for e in dimse if e["kind"] not in ("dicom.dimse.c-echo",
                                                                                    "dicom.dimse.c-move"))
        # The sub-operations carry no Move Originator: they are linked by their destination and the
        # caller's AE title (the archive's), and the archive's C-MOVE is credited with them.
        subs = [e for e in dimse if e["kind"] == "dicom.dimse.c-store" and e["details"].get("c_move")]
        assert len(subs) == 2 * legs and {e["details"]["c_move"]["linked_by"] for e in subs} == {"destination"}
        credited = [e for e in dimse if e["kind"] == "dicom.dimse.c-move" and e["details"].get("delivered")]
        assert [(e["patient_ids"], e["details"]["delivered"]["instances"]) for e in credited] == [(["DCMJS05"], 2)]
        if capture == "gateway.pcap":
            # The IDS's records match the gateway's own, kind by kind, patient by patient, each twice
            # (both legs; the C-MOVE's patient aside: see credited above).
            def seen(records: list[tuple[str, list[str], list[str]]]) -> list[tuple[str, list[str], list[str]]]:
                return sorted(r if r[0] != "dicom.dimse.c-move" else (r[0], [], r[2]) for r in records)

            ids = seen([(e["kind"], e["patient_ids"], e["study_uids"]) for e in events
                        if e["kind"].startswith("dicom.")])
            own = seen([(e.kind, list(e.patient_ids), list(e.study_uids)) for e in recorded])
            assert ids == sorted(own + own)


def encoded(folder: Path, patient: str, *names: str) -> list[Path]:
    """pydicom's test files ``names``, each with a fresh SOP Instance UID and ``patient``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, name in enumerate(names):
        ds = dcmread(get_testdata_file(name))
        ds.PatientID = patient
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(folder / f"f{i}.dcm")
        paths.append(folder / f"f{i}.dcm")
    return paths


def test_dcmjs_encodings_through_both_route_kinds_and_its_undeflated_deflate(dcmjs: Dcmjs, tmp_path: Path) -> None:
    """dcmjs-dimse proposes a file's own transfer syntax in a context of its own next to the
    uncompressed ones: JPEG Baseline, JPEG 2000, RLE and Explicit VR Big Endian objects reach the
    archive through a relay route and the destination through a store-and-forward route as they
    reach it directly, byte for byte (docs/gateway.md: objects arrive as sent). dcmjs-dimse 0.3.3
    sends a Deflated Explicit VR Little Endian context's data set without deflating it (PS3.5 A.5
    asks for the deflated bytes): the gateway cannot read its identifiers and refuses it, an abort on
    the relay route, 0xC000 on the store-and-forward route, each recorded with why; nothing of it
    reaches the archive or the destination, and dcmjs-dimse is answered at once."""
    files = encoded(tmp_path / "enc", "DCMJS06", "SC_rgb_jpeg_dcmtk.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm",
                    "MR_small_bigendian.dcm")
    deflated = encoded(tmp_path / "dfl", "DCMJS07", "image_dfl.dcm")
    with dcmjs.archive("127.0.127.12", tmp_path / "direct") as direct, \
            dcmjs.archive("127.0.127.13", tmp_path / "arch") as arch, \
            dcmjs.archive("127.0.127.14", tmp_path / "dest") as dest, \
            gateway_with(tmp_path, relay("rl", arch), store_and_forward("sf", dest)) as gw:
        ok(dcmjs.scu(direct.host, direct.port, CALLING, "DCMJSARCH", {"op": "store", "files": files}, bind=CLIENT))
        assert ok(through(dcmjs, gw, "rl", {"op": "store", "files": files})).statuses("C-STORE") == [SUCCESS] * 4
        assert ok(through(dcmjs, gw, "sf", {"op": "store", "files": files})).statuses("C-STORE") == [SUCCESS] * 4
        gw.wait_for("gateway.object.forwarded", count=4, timeout=15)
        dest.wait_for("C-STORE", count=4)
        started = time.monotonic()
        relayed = through(dcmjs, gw, "rl", {"op": "store", "files": deflated})
        spooled = through(dcmjs, gw, "sf", {"op": "store", "files": deflated})
        elapsed = time.monotonic() - started
        refused = gw.wait_for("dicom.dimse.c-store", count=2, where=lambda e: "decision" in e.details)
        aborted = gw.wait_for("dicom.association.aborted")
        assert arch.objects() == direct.objects() == dest.objects() and len(direct.objects()) == 4
        transfer_syntaxes = {m["ts"] for m in direct.wait_for("C-STORE", count=4)}
    assert transfer_syntaxes == {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5",
                                 "1.2.840.10008.1.2.2"}
    assert elapsed < 5
    assert relayed.code == 3 and not relayed.responses("C-STORE")  # the gateway's A-ABORT
    assert spooled.code == 0 and spooled.statuses("C-STORE") == [0xC000]
    assert [(e.details["route"], e.details.get("decision")) for e in refused] == [("rl", "aborted"), ("sf", "refused")]
    assert all("not read: the walk stopped at byte 0 (inflate-failed)" in e.message for e in refused)
    assert aborted[0].details["by"] == "gateway" and "inflate-failed" in aborted[0].message
