"""The scanner (`scan`) and de-identification (`deidentify`) as the object checks of a real
store-and-forward route: dcmtk's storescu as the modality, `pacsguard serve` as the gateway, a
real Orthanc behind it (issues #19 and #20; the route itself: test_store_forward.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread
from test_store_forward import fresh_ct, sf_route, target

pytestmark = [pytest.mark.peers, pytest.mark.filterwarnings("ignore:Invalid value for VR UI")]


def _with_elf_in_private(path: Path) -> Path:
    """The CT with an ELF executable hidden in a private OB element (issue #19, item 3)."""
    ds = dcmread(path)
    ds.private_block(0x0009, "PACSGUARD TEST", create=True).add_new(0x01, "OB", b"\x7fELF\x02\x01\x01" + bytes(57))
    out = path.with_name("elf-" + path.name)
    ds.save_as(out, enforce_file_format=True)
    return out


def _tags(pacs, instance: str) -> dict:
    return pacs.rest(f"/instances/{instance}/simplified-tags")


def test_a_scanning_route_forwards_clean_objects_and_quarantines_an_infected_one(dcmtk, orthanc, gateway, tmp_path):
    pacs = orthanc()
    gw = gateway(sf_route("sf", (pacs.dicom_port, pacs.aet), object_checks=["scan"]))
    clean, = fresh_ct(tmp_path / "clean", 1, patient="CLEAN01")
    infected = _with_elf_in_private(fresh_ct(tmp_path / "bad", 1, patient="INFECT01")[0])

    ok = dcmtk.run("storescu", "-d", "-xe", *target(gw), clean)
    bad = dcmtk.run("storescu", "-d", "-xe", *target(gw), infected)
    assert "0x0000: Success" in ok.stdout + ok.stderr, ok.stdout + ok.stderr
    assert "0xc000" in (bad.stdout + bad.stderr).lower(), bad.stdout + bad.stderr  # PS3.4 B.2.3 "cannot understand"

    finding = gw.wait_for("scan.finding", where=lambda e: e.details["rule"] == "embedded.elf")[0]
    assert finding.patient_ids == ("INFECT01",) and finding.details["route"] == "sf"
    quarantined = gw.wait_for("gateway.object.quarantined")[0]
    assert quarantined.details["check"] == "scan" and quarantined.patient_ids == ("INFECT01",)
    assert Path(quarantined.details["quarantine"]).exists()

    instance, = pacs.wait_for_instances(1)
    gw.wait_for("gateway.object.forwarded")
    assert _tags(pacs, instance)["PatientID"] == "CLEAN01"
    assert [_tags(pacs, i)["PatientID"] for i in pacs.instances()] == ["CLEAN01"]  # the infected one never arrived


def test_a_deidentifying_route_sends_only_pseudonymous_objects_and_links_them_in_the_store(
        dcmtk, orthanc, gateway, tmp_path):
    pacs = orthanc()

    def keygen(home: Path) -> None:
        subprocess.run([sys.executable, "-m", "pacsguard.cli", "deid", "keygen", str(home / "deid.key")],
                       check=True, capture_output=True, timeout=60)

    gw = gateway(sf_route("sf", (pacs.dicom_port, pacs.aet), object_checks=["deidentify"]),
                 extra={"deid": {"key_file": "deid.key"}}, prepare=keygen)
    ct, = fresh_ct(tmp_path / "ct", 1, patient="REALID42")
    original = dcmread(ct)
    sent = dcmtk.run("storescu", "-d", "-xe", *target(gw), ct)
    assert "0x0000: Success" in sent.stdout + sent.stderr, sent.stdout + sent.stderr

    instance, = pacs.wait_for_instances(1)
    tags = _tags(pacs, instance)
    assert tags["PatientID"] != "REALID42" and "REALID42" not in str(tags)
    assert tags["PatientName"] != str(original.PatientName)
    assert tags["SOPInstanceUID"].startswith("2.25.") and tags["SOPInstanceUID"] != original.SOPInstanceUID
    assert tags["StudyInstanceUID"] != original.StudyInstanceUID
    # Without the Clean Pixel Data option nobody looked at the pixels: Patient Identity Removed
    # stays NO (PS3.15 E.1.1), while the method says what was done.
    assert tags["PatientIdentityRemoved"] == "NO" and tags["DeidentificationMethod"]

    # The store links original and new identifiers only sealed under the key (docs/deid.md):
    # nothing in the Event names the patient or the pseudonyms; the key holder opens the link.
    linked = gw.wait_for("deid.object.deidentified")[0]
    for value in ("REALID42", original.SOPInstanceUID, tags["SOPInstanceUID"], tags["PatientID"]):
        assert value not in linked.to_json()
    exported = gw.cli("events", "search", "--kind", "deid.object.deidentified", "--format", "json").stdout
    (gw.home / "deid.jsonl").write_text(exported)
    opened = json.loads(gw.cli("deid", "reidentify", "deid.jsonl").stdout)  # deid.key_file of pacsguard.yaml
    assert opened["original"]["sop_instance_uid"] == original.SOPInstanceUID
    assert opened["new"]["sop_instance_uid"] == tags["SOPInstanceUID"]
    assert opened["new"]["patient_id"] == tags["PatientID"]
    assert linked.details["key_fingerprint"].startswith("sha256:")
    assert (gw.home / "deid.key").read_bytes().hex() not in (gw.home / "serve.log").read_text()
