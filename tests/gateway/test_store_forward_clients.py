"""A store-and-forward route with the clients a modality may be: dcmtk's storescu over TLS and with
large and small PDUs, dcmtk's dcmsend, pynetdicom, GDCM's gdcmscu and an Orthanc as the Storage
SCU; a real Orthanc behind the gateway. What each sends arrives byte for byte (issue #19)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from test_store_forward import (
    CALLING,
    dataset_bytes,
    fresh_ct,
    orthanc_bytes,
    sent_bytes,
    sf_route,
    spooled,
    target,
    wait_until,
)

from pacsguard.tls import make_ca, make_cert

pytestmark = [pytest.mark.peers, pytest.mark.filterwarnings("ignore:Invalid value for VR UI")]


def _uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_a_tls_route_delivers_byte_identical_objects(dcmtk, orthanc, gateway, tmp_path):
    d = tmp_path / "pki"
    ca, ca_key = make_ca(d, "Test Hospital CA", 30)
    cert, key = make_cert(d, "gateway", ca, ca_key, hosts=["127.0.0.1", "localhost"], days=30, server=True)
    modality, modality_key = make_cert(d, "modality", ca, ca_key, hosts=["127.0.0.1"], days=30, client=True)
    pacs = orthanc()
    r = sf_route("sf", (pacs.dicom_port, pacs.aet))
    r["listen"]["tls"] = {"cert_file": str(cert), "key_file": str(key), "ca_file": str(ca),
                          "require_client_cert": True}
    gw = gateway(r)
    files = fresh_ct(tmp_path / "ct", 3, kib=512, patient="TLS001")
    tls = ["+tls", str(modality_key), str(modality), "+cf", str(ca)]
    result = dcmtk.run("storescu", "-xe", *tls, *target(gw), *files)
    assert result.returncode == 0, result.stdout + result.stderr
    pacs.wait_for_instances(len(files))
    stored = orthanc_bytes(pacs)
    assert all(dataset_bytes(stored[_uid(p)]) == sent_bytes(p) for p in files)
    requested = gw.wait_for("dicom.association.requested")
    assert requested[0].details["tls"] and requested[0].details["certificate"]["subject_cn"] == "modality"
    # Without TLS the route is not reachable: the handshake fails and is recorded.
    plain = dcmtk.run("echoscu", *target(gw))
    assert plain.returncode != 0
    assert gw.wait_for("tls.handshake.failed")[0].details["route"] == "sf"


@pytest.mark.parametrize("pdu", [16384, 131072])
def test_storescu_with_small_and_large_pdus(pdu, dcmtk, orthanc, gateway, tmp_path):
    pacs = orthanc()
    gw = gateway(sf_route("sf", (pacs.dicom_port, pacs.aet)))
    files = fresh_ct(tmp_path / "ct", 4, kib=1024, patient=f"PDU{pdu}")
    result = dcmtk.run("storescu", "-xe", "-pdu", str(pdu), *target(gw), *files)
    assert result.returncode == 0, result.stdout + result.stderr
    pacs.wait_for_instances(len(files))
    stored = orthanc_bytes(pacs)
    assert all(dataset_bytes(stored[_uid(p)]) == sent_bytes(p) for p in files)
    accepted = gw.wait_for("dicom.association.accepted")[0]
    assert accepted.details["max_pdu"] == pdu
    wait_until(lambda: not spooled(gw), 20, "the spool empties")


def test_pynetdicom_as_the_storage_scu(orthanc, gateway, tmp_path):
    from pynetdicom import AE
    from pynetdicom.dsutils import encode
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    pacs = orthanc()
    gw = gateway(sf_route("sf", (pacs.dicom_port, pacs.aet)))
    files = fresh_ct(tmp_path / "ct", 3, kib=256, patient="PYNET01")
    ae = AE(ae_title=CALLING)
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", gw.port("sf"), ae_title="PACSGUARD")
    assert assoc.is_established
    try:
        statuses = [assoc.send_c_store(dcmread(p)).Status for p in files]
    finally:
        assoc.release()
    assert statuses == [0x0000] * len(files)
    pacs.wait_for_instances(len(files))
    stored = orthanc_bytes(pacs)
    # pynetdicom sends the data set as pydicom encodes it, which is what must arrive.
    sent = {_uid(p): bytes(encode(dcmread(p), False, True)) for p in files}
    assert all(dataset_bytes(stored[uid]) == data for uid, data in sent.items())
    released = gw.wait_for("dicom.association.released")[0]
    assert f"released after {len(files)} objects" in released.message


def test_nmap_dicom_brute_against_a_store_and_forward_route(orthanc, gateway, tmp_path):
    """The route's own Storage SCP faces nmap as a relayed route does: dicom-ping sees the
    allow-list, every dicom-brute guess is rejected and recorded, the inline rules raise a handful
    of alerts (thresholded), quarantine the attacker's host, and nothing is logged with a
    traceback."""
    import subprocess

    port = 2762  # nmap's dicom scripts only run on DICOM's registered ports
    pacs = orthanc()
    sf = sf_route("sf", (pacs.dicom_port, pacs.aet))
    sf["listen"]["port"] = port
    gw = gateway(sf, extra={"gateway": {"routes": [sf], "quarantine_poll_interval": 0.2,
                                        "quarantine_scope": "host"}})
    ping = subprocess.run(["nmap", "-Pn", "-n", "-p", str(port), "--script", "dicom-ping", "127.0.0.1"],
                          capture_output=True, text=True, timeout=120)
    assert ping.returncode == 0 and "dicom-ping" in ping.stdout, ping.stdout + ping.stderr
    assert "Called AET check enabled" in ping.stdout, ping.stdout
    guesses = tmp_path / "aets.txt"
    guesses.write_text("\n".join(["PACS", "ARCHIVE", "ORTHANC", "STORESCP", "DCM4CHEE", "SERVER", "ANY-SCP"]) + "\n")
    brute = subprocess.run(["nmap", "-Pn", "-n", "-p", str(port), "--script", "dicom-brute",
                            "--script-args", f"passdb={guesses}", "127.0.0.1"],
                           capture_output=True, text=True, timeout=240)
    assert brute.returncode == 0, brute.stderr
    assert "Valid credentials" not in brute.stdout, brute.stdout
    rejected = gw.wait_for("dicom.association.rejected", count=5)
    assert all(e.details["route"] == "sf" for e in rejected)
    alert = gw.wait_for("ids.alert.dicom-ae-brute-force")[0]
    assert alert.actor.host == "127.0.0.1"
    assert gw.wait_for("gateway.quarantine.added")[0].target.host == "127.0.0.1"
    alerts = [e for e in gw.events() if e.kind.startswith("ids.alert.")]
    assert 1 <= len(alerts) <= 10, [e.kind for e in alerts]  # a handful, not one per guess
    assert not gw.events("dicom.dimse.c-store") and not pacs.instances()  # nothing got through
    assert "Traceback" not in gw.log.read_text()



def _gdcmscu(port: int, files: list[Path]) -> subprocess.CompletedProcess[str]:
    import shutil

    tool = shutil.which("gdcmscu")
    assert tool, "GDCM's gdcmscu is missing (apt-get install libgdcm-tools; `make peers` does it as root)"
    result = subprocess.run([tool, "--store", "--aetitle", CALLING, "--call", "PACSGUARD", "-p", str(port),
                             "127.0.0.1", *[arg for p in files for arg in ("-i", str(p))]],
                            capture_output=True, text=True, timeout=120)
    # gdcm 3.0.21's gdcmscu ends with an uncaught "ProtocolStream as nullptr" (SIGABRT) after its
    # release, whoever the SCP is (dcmtk's storescp too): what it sent is what counts.
    assert result.returncode == 0 or "ProtocolStream as nullptr" in result.stderr, result.stdout + result.stderr
    return result


def _same_as_direct(through: object, direct: object, count: int) -> None:
    """The destination behind the route holds what the same client sent to another one directly,
    byte for byte (data sets, by SOP Instance UID): the client may encode as it likes, the route
    changes nothing."""
    through.wait_for_instances(count)  # type: ignore[attr-defined]
    direct.wait_for_instances(count)  # type: ignore[attr-defined]
    via = {uid: dataset_bytes(data) for uid, data in orthanc_bytes(through).items()}
    assert len(via) == count
    assert via == {uid: dataset_bytes(data) for uid, data in orthanc_bytes(direct).items()}


def test_gdcmscu_as_the_storage_scu(orthanc, gateway, tmp_path):
    """GDCM's gdcmscu (a third Storage SCU after dcmtk's and pynetdicom's) through the route."""
    pacs, direct = orthanc(), orthanc()
    gw = gateway(sf_route("sf", (pacs.dicom_port, pacs.aet)))
    files = fresh_ct(tmp_path / "ct", 3, kib=256, patient="GDCM01")
    _gdcmscu(gw.port("sf"), files)
    _gdcmscu(direct.dicom_port, files)
    _same_as_direct(pacs, direct, len(files))
    statuses = [e.details["status"] for e in gw.wait_for("dicom.dimse.c-store", count=len(files))]
    assert statuses == ["0x0000"] * len(files)
    assert not gw.events("dicom.protocol.violation")
    wait_until(lambda: not spooled(gw), 20, "the spool empties")


def test_dcmsend_as_the_storage_scu(dcmtk, orthanc, gateway, tmp_path):
    """dcmtk's dcmsend, a Storage SCU with its own negotiation and batching (not storescu's),
    through the route, against the same files sent directly."""
    pacs, direct = orthanc(), orthanc()
    gw = gateway(sf_route("sf", (pacs.dicom_port, pacs.aet)))
    files = fresh_ct(tmp_path / "ct", 3, kib=512, patient="DCMSEND1")
    for port in (gw.port("sf"), direct.dicom_port):
        result = dcmtk.run("dcmsend", "-aet", CALLING, "-aec", "PACSGUARD", "127.0.0.1", str(port), *files)
        assert result.returncode == 0, result.stdout + result.stderr
    _same_as_direct(pacs, direct, len(files))
    statuses = [e.details["status"] for e in gw.wait_for("dicom.dimse.c-store", count=len(files))]
    assert statuses == ["0x0000"] * len(files)
    assert "released after 3 objects" in gw.wait_for("dicom.association.released")[0].message
    wait_until(lambda: not spooled(gw), 20, "the spool empties")


def test_orthanc_as_the_storage_scu(orthanc, gateway, tmp_path):
    """An Orthanc that sends to the route (its REST /modalities/{id}/store, as a PACS forwarding
    to an archive would), and the same instances to another Orthanc directly."""
    pacs, direct = orthanc(), orthanc()
    gw = gateway(sf_route("sf", (pacs.dicom_port, pacs.aet)))
    sender = orthanc(DicomAet=CALLING, DicomModalities={"gw": ["PACSGUARD", "127.0.0.1", gw.port("sf")],
                                                        "direct": [direct.aet, "127.0.0.1", direct.dicom_port]})
    files = fresh_ct(tmp_path / "ct", 4, kib=512, patient="ORTHSCU1")
    ids = [sender.rest("/instances", "POST", p.read_bytes())["ID"] for p in files]
    for modality in ("gw", "direct"):
        answer = sender.rest(f"/modalities/{modality}/store", "POST", {"Resources": ids, "Synchronous": True})
        assert answer["FailedInstancesCount"] == 0 and answer["InstancesCount"] == len(files), answer
    _same_as_direct(pacs, direct, len(files))
    requested = gw.wait_for("dicom.association.requested")[0]
    assert requested.actor.ae_title == CALLING
    assert not gw.events("dicom.protocol.violation")
    wait_until(lambda: not spooled(gw), 20, "the spool empties")


def test_a_route_accepting_only_implicit_vr_gets_storescu_to_send_it_so(dcmtk, orthanc, gateway, tmp_path):
    """`accepted_transfer_syntaxes`: storescu proposes its uncompressed syntaxes, explicit VR first;
    the route takes Implicit VR Little Endian, storescu converts, and Orthanc stores that. A
    JPEG-compressed file, which storescu cannot decompress, has no syntax the route takes: storescu
    fails it and nothing reaches the spool."""
    from io import BytesIO

    from pydicom.data import get_testdata_file

    pacs = orthanc()
    gw = gateway(sf_route("sf", (pacs.dicom_port, pacs.aet), accepted_transfer_syntaxes=["ImplicitVRLittleEndian"]))
    files = fresh_ct(tmp_path / "ct", 2, kib=64, patient="TSX001")
    result = dcmtk.run("storescu", *target(gw), *files)
    assert result.returncode == 0, result.stdout + result.stderr
    pacs.wait_for_instances(len(files))
    stored = orthanc_bytes(pacs)
    assert {str(dcmread(BytesIO(stored[_uid(p)])).file_meta.TransferSyntaxUID) for p in files} == \
        {"1.2.840.10008.1.2"}
    jpeg = Path(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    refused = dcmtk.run("storescu", "-R", *target(gw), str(jpeg))
    said = (refused.stdout + refused.stderr).lower()
    assert refused.returncode != 0 and ("unable to convert" in said or "no presentation context" in said), said
    wait_until(lambda: not spooled(gw), 20, "the spool empties")
    assert _uid(jpeg) not in orthanc_bytes(pacs)
