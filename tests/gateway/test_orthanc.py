"""The gateway in front of a real Orthanc, driven by dcmtk: what a modality and a workstation do
every day must work through it unchanged, and every association and request must be recorded
with its patient context."""

from __future__ import annotations

from pathlib import Path

import pytest
from gateway_under_test import route
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from dicom_corpus import TEST_FILES, read_dataset, send_in_own_syntax
from peers.dcmtk import free_port

pytestmark = [pytest.mark.peers, pytest.mark.filterwarnings("ignore:Invalid value for VR UI")]

CALLING = "MODALITY"


def large_ct(path: Path, megabytes: int = 8) -> Path:
    """An uncompressed CT of realistic size, fresh UIDs, from pydicom's CT_small."""
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    side = int((megabytes * 1024 * 1024 / 2) ** 0.5)
    ds.Rows = ds.Columns = side
    ds.PixelData = (bytes(range(256)) * (side * side * 2 // 256 + 1))[: side * side * 2]
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "LARGE01"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def pacs(orthanc):
    """Orthanc that knows the modality (C-FIND/C-MOVE/C-GET need a known modality)."""
    return orthanc(DicomModalities={"modality": [CALLING, "127.0.0.1", 1]})


def gw_target(gw, route_name: str = "main", calling: str = CALLING, called: str = "PACSGUARD") -> list[str]:
    return ["-aet", calling, "-aec", called, "127.0.0.1", str(gw.port(route_name))]


def test_store_find_through_the_gateway(dcmtk, pacs, gateway, tmp_path):
    gw = gateway(route("main", pacs.dicom_port, upstream_ae=pacs.aet,
                       policy={"calling_ae_titles": [CALLING], "hosts": ["127.0.0.0/8"]}))
    result = dcmtk.run("echoscu", *gw_target(gw))
    assert result.returncode == 0, result.stderr

    files = [Path(get_testdata_file(name)) for name in TEST_FILES] + [large_ct(tmp_path / "large.dcm")]
    send_in_own_syntax(dcmtk, gw_target(gw), files)
    ids = pacs.wait_for_instances(len(files))
    # What arrived in Orthanc is the same dataset that left the modality.
    sent = {str(read_dataset(f).SOPInstanceUID): read_dataset(f) for f in files}
    for instance in ids:
        path = tmp_path / f"{instance}.dcm"
        path.write_bytes(pacs.instance_file(instance))
        got = read_dataset(path)
        assert got == sent[str(got.SOPInstanceUID)], f"{got.SOPInstanceUID} changed on the way"

    # Every C-STORE is recorded with its patient, study and SOP instance.
    stores = gw.wait_for("dicom.dimse.c-store", count=len(files))
    assert {e.details["sop_instance"] for e in stores} == set(sent)
    assert all(e.outcome == "success" and e.actor.ae_title == CALLING for e in stores)
    large = [e for e in stores if e.patient_ids == ("LARGE01",)]
    assert len(large) == 1 and large[0].details["bytes"] > 8_000_000
    ct = dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    by_patient = gw.events(patient=str(ct.PatientID))
    assert any(e.kind == "dicom.dimse.c-store" and str(ct.StudyInstanceUID) in e.study_uids for e in by_patient)

    # C-FIND at patient and study level.
    out = tmp_path / "find"
    out.mkdir()
    result = dcmtk.run("findscu", "-P", "-k", "QueryRetrieveLevel=PATIENT", "-k", f"PatientID={ct.PatientID}",
                       "-k", "PatientName", "-X", "-od", str(out), *gw_target(gw))
    assert result.returncode == 0, result.stderr
    answers = [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    assert [str(a.PatientID) for a in answers] == [str(ct.PatientID)]
    for p in out.glob("rsp*.dcm"):
        p.unlink()
    result = dcmtk.run("findscu", "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID",
                       "-k", "PatientID", "-X", "-od", str(out), *gw_target(gw))
    assert result.returncode == 0, result.stderr
    studies = {str(dcmread(p).StudyInstanceUID) for p in out.glob("rsp*.dcm")}
    assert studies == {str(d.StudyInstanceUID) for d in sent.values()}
    finds = gw.wait_for("dicom.dimse.c-find", count=2)
    study_find = [e for e in finds if e.details.get("level") == "STUDY"][0]
    assert study_find.details["responses"] == len(studies)
    assert set(study_find.patient_ids) == {str(d.PatientID) for d in sent.values() if d.PatientID}
    patient_find = [e for e in finds if e.details.get("level") == "PATIENT"][0]
    assert patient_find.details["query"]["PatientID"] == str(ct.PatientID)

    # Association records carry byte counts and durations.
    released = gw.wait_for("dicom.association.released", count=3)
    assert all(e.details["bytes_from_client"] > 0 and e.details["duration_ms"] >= 0 for e in released)


def move_routes(pacs, dest_port: int, reverse_port: int) -> tuple[dict, dict]:
    """The route to Orthanc, and the route its C-MOVE sub-operations come back through: Orthanc knows
    WORKSTATION at that route's port."""
    return (route("main", pacs.dicom_port, upstream_ae=pacs.aet,
                  policy={"calling_ae_titles": [CALLING], "move_destinations": ["WORKSTATION"]}),
            route("retrieve", dest_port, upstream_ae="WORKSTATION", ae_title="WORKSTATION", port=reverse_port,
                  policy={"calling_ae_titles": [pacs.aet], "services": ["C-ECHO", "C-STORE"]}))


def test_move_and_get_through_the_gateway(dcmtk, pacs_factory_move, gateway, tmp_path):
    pacs, dest_port, reverse_port = pacs_factory_move
    gw = gateway(*move_routes(pacs, dest_port, reverse_port))
    ct = Path(get_testdata_file("CT_small.dcm"))
    mr = Path(get_testdata_file("MR_small.dcm"))
    send_in_own_syntax(dcmtk, gw_target(gw), [ct, mr])
    pacs.wait_for_instances(2)

    study = str(dcmread(ct, stop_before_pixels=True).StudyInstanceUID)
    moved = tmp_path / "moved"
    moved.mkdir()
    result = dcmtk.run("movescu", "-S", "-aem", "WORKSTATION", "+P", str(dest_port), "-od", str(moved),
                       "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", *gw_target(gw))
    assert result.returncode == 0, result.stdout + result.stderr
    received = list(moved.iterdir())
    assert len(received) == 1 and read_dataset(received[0]) == read_dataset(ct)
    move = gw.wait_for("dicom.dimse.c-move")[0]
    assert move.details["move_destination"] == "WORKSTATION" and move.details["suboperations"]["completed"] == 1
    # The sub-operation itself was relayed and recorded on the retrieve route.
    sub = gw.wait_for("dicom.dimse.c-store", where=lambda e: e.details["route"] == "retrieve")[0]
    assert sub.actor.ae_title == pacs.aet and sub.target.ae_title == "WORKSTATION"
    # ... on an association the inline IDS knew to expect: its record names the C-MOVE (PS3.4 C.4.2.2)
    (requested,) = gw.wait_for("dicom.association.requested", where=lambda e: e.details["route"] == "retrieve")
    assert requested.details["expected_by"]["message_id"] == move.details["message_id"]
    assert requested.details["expected_by"]["flow"].startswith(f"main/127.0.0.1:{move.actor.port}/")
    assert not gw.events("ids.alert.dicom-unexpected-port")

    got = tmp_path / "got"
    got.mkdir()
    mr_study = str(dcmread(mr, stop_before_pixels=True).StudyInstanceUID)
    result = dcmtk.run("getscu", "-S", "-od", str(got), "-k", "QueryRetrieveLevel=STUDY",
                       "-k", f"StudyInstanceUID={mr_study}", *gw_target(gw))
    assert result.returncode == 0, result.stdout + result.stderr
    files = list(got.iterdir())
    assert len(files) == 1 and read_dataset(files[0]) == read_dataset(mr)
    get = gw.wait_for("dicom.dimse.c-get")[0]
    assert get.outcome == "success" and get.details["suboperations"]["completed"] == 1


@pytest.fixture
def pacs_factory_move(orthanc):
    """Orthanc whose move destination WORKSTATION is the gateway's retrieve route."""
    dest_port, reverse_port = free_port(), free_port()
    pacs = orthanc(DicomModalities={"modality": [CALLING, "127.0.0.1", 1],
                                    "workstation": ["WORKSTATION", "127.0.0.1", reverse_port]})
    return pacs, dest_port, reverse_port


def test_policy_refusals_give_the_right_dicom_answers(dcmtk, pacs, gateway, tmp_path):
    gw = gateway(
        route("main", pacs.dicom_port, upstream_ae=pacs.aet,
              policy={"calling_ae_titles": [CALLING], "services": ["C-ECHO", "C-STORE", "C-MOVE"],
                      "sop_classes": ["CTImageStorage", "StudyRootQueryRetrieveInformationModelMove"],
                      "move_destinations": ["WORKSTATION"]}),
        route("lan-only", pacs.dicom_port, upstream_ae=pacs.aet, policy={"hosts": ["10.0.0.0/8"]}),
    )
    # Calling AE title not on the allow-list: A-ASSOCIATE-RJ, reason 3.
    result = dcmtk.run("echoscu", *gw_target(gw, calling="INTRUDER"))
    assert result.returncode != 0 and "Calling AE Title Not Recognized" in result.stderr
    # Source host not allowed: A-ASSOCIATE-RJ, permanent, by the service user.
    result = dcmtk.run("echoscu", *gw_target(gw, "lan-only"))
    assert result.returncode != 0 and "Rejected Permanent" in result.stderr
    rejected = gw.wait_for("dicom.association.rejected", count=2)
    assert {e.details["rule"] for e in rejected} == {"policy.calling_ae_titles", "policy.hosts"}
    assert {e.actor.host for e in rejected} == {"127.0.0.1"}

    # SOP class not allowed: the context is rejected, nothing reaches Orthanc.
    mr = Path(get_testdata_file("MR_small.dcm"))
    result = dcmtk.run("storescu", "-R", *gw_target(gw), str(mr))
    assert result.returncode != 0 and "No Acceptable Presentation Contexts" in result.stdout + result.stderr
    accepted = gw.wait_for("dicom.association.accepted")
    assert any("1.2.840.10008.5.1.4.1.1.4" in e.details["refused_by_policy"] for e in accepted)
    # Service not allowed (C-FIND): its contexts are rejected too.
    result = dcmtk.run("findscu", "-S", "-k", "QueryRetrieveLevel=STUDY", *gw_target(gw))
    assert result.returncode != 0
    # The allowed SOP class still goes through.
    ct = Path(get_testdata_file("CT_small.dcm"))
    assert dcmtk.run("storescu", "-R", *gw_target(gw), str(ct)).returncode == 0
    assert len(pacs.wait_for_instances(1)) == 1

    # C-MOVE to a destination not on the allow-list: refused by the gateway with 0xA801.
    study = str(dcmread(ct, stop_before_pixels=True).StudyInstanceUID)
    result = dcmtk.run("movescu", "-S", "-aem", "ELSEWHERE", "-k", "QueryRetrieveLevel=STUDY",
                       "-k", f"StudyInstanceUID={study}", *gw_target(gw))
    assert result.returncode != 0 and "Refused: MoveDestinationUnknown" in result.stdout + result.stderr
    refused = gw.wait_for("dicom.dimse.c-move")[0]
    assert refused.details["decision"] == "refused" and refused.details["status"] == "0xA801"
    assert refused.details["rule"] == "policy.move_destinations"
    assert "ELSEWHERE" in refused.message


def _associate_with_unknown_item(port: int, called: str) -> bytes:
    """Send an A-ASSOCIATE-RQ carrying an item of type 0x7F after the user information item, then an
    A-RELEASE-RQ once accepted; return the type bytes of the PDUs answered."""
    import socket

    from pacsguard.dicom import pdu as P

    rq = P.encode_associate_rq(P.AssociateRQ(
        called, CALLING, [P.PresentationContextRQ(1, "1.2.840.10008.1.1", ["1.2.840.10008.1.2"])],
        P.UserInformation.build(max_length=16384, implementation_class_uid="1.2.3.4")))
    body = rq[6:] + b"\x7f\x00\x00\x04ABCD"
    answers = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(bytes((1, 0)) + len(body).to_bytes(4, "big") + body)
        for follow_up in (P.encode_release_rq(), None):
            header = sock.recv(6, socket.MSG_WAITALL)
            if len(header) < 6:
                break
            sock.recv(int.from_bytes(header[2:6], "big"), socket.MSG_WAITALL)
            answers.append(header[0])
            if header[0] != P.PDU_ASSOCIATE_AC or follow_up is None:
                break
            sock.sendall(follow_up)
    return bytes(answers)


def test_an_unrecognised_item_is_ignored_as_orthanc_does(pacs, gateway):
    # PS3.8 9.3.1: Orthanc ignores the item; so does the gateway, which does not pass it on.
    assert _associate_with_unknown_item(pacs.dicom_port, pacs.aet) == b"\x02\x06"
    gw = gateway(route("main", pacs.dicom_port, upstream_ae=pacs.aet))
    assert _associate_with_unknown_item(gw.port(), "PACSGUARD") == b"\x02\x06"
    assert gw.wait_for("dicom.association.released")
    assert gw.events("dicom.protocol.violation") == [] and gw.events("dicom.association.aborted") == []


def test_retrieve_ae_title_in_find_responses_leads_a_move_through_the_gateway(dcmtk, pacs_factory_move, gateway,
                                                                              tmp_path):
    pacs, dest_port, reverse_port = pacs_factory_move
    gw = gateway(*move_routes(pacs, dest_port, reverse_port))
    ct = Path(get_testdata_file("CT_small.dcm"))
    send_in_own_syntax(dcmtk, gw_target(gw), [ct])
    pacs.wait_for_instances(1)

    found = tmp_path / "found"
    found.mkdir()
    result = dcmtk.run("findscu", "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID",
                       "-k", "RetrieveAETitle", "-X", "-od", str(found), *gw_target(gw))
    assert result.returncode == 0, result.stderr
    (answer,) = [dcmread(p) for p in found.glob("rsp*.dcm")]
    # Orthanc names itself; the workstation is told to retrieve from the gateway instead.
    assert answer.RetrieveAETitle == "PACSGUARD" != pacs.aet
    find = gw.wait_for("dicom.dimse.c-find")[0]
    assert find.details["rewritten"] == {"RetrieveAETitle": 1}

    moved = tmp_path / "moved"
    moved.mkdir()
    result = dcmtk.run("movescu", "-S", "-aem", "WORKSTATION", "+P", str(dest_port), "-od", str(moved),
                       "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={answer.StudyInstanceUID}",
                       *gw_target(gw, called=str(answer.RetrieveAETitle)))
    assert result.returncode == 0, result.stdout + result.stderr
    (received,) = list(moved.iterdir())
    # Only query responses are rewritten: the retrieved object is the one the modality sent.
    assert read_dataset(received) == read_dataset(ct)
