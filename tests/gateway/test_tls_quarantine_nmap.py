"""TLS on both legs (dcmtk +tls in front, Orthanc's DICOM TLS behind), mutual TLS, quarantine of a
live device, and nmap's dicom-ping as the attacker."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from gateway_under_test import route
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from dicom_corpus import read_dataset
from pacsguard.tls import make_ca, make_cert

pytestmark = [pytest.mark.peers, pytest.mark.filterwarnings("ignore:Invalid value for VR UI")]

CALLING = "MODALITY"
NMAP_PORT = 2762  # nmap's dicom scripts only run on DICOM's registered ports


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "pki"
    ca_cert, ca_key = make_ca(d, "Test Hospital CA", 30)
    out = {"ca": ca_cert}
    for name, kw in (("gateway", {"server": True, "client": True}), ("orthanc", {"server": True, "client": True}),
                     ("modality", {"client": True})):
        cert, key = make_cert(d, name, ca_cert, ca_key, hosts=["127.0.0.1", "localhost"], days=30, **kw)
        out[f"{name}_cert"], out[f"{name}_key"] = cert, key
    return out


def test_tls_on_both_legs_and_mutual_tls(dcmtk, orthanc, gateway, pki, tmp_path):
    pacs = orthanc(tls=(pki["orthanc_cert"], pki["orthanc_key"], pki["ca"]),
                   DicomModalities={"modality": [CALLING, "127.0.0.1", 1]})
    gw = gateway(route("main", pacs.dicom_port, upstream_ae=pacs.aet,
                       policy={"calling_ae_titles": [CALLING], "cert_subjects": ["modality"]},
                       listen_tls={"cert_file": str(pki["gateway_cert"]), "key_file": str(pki["gateway_key"]),
                                   "ca_file": str(pki["ca"]), "require_client_cert": True},
                       upstream_tls={"ca_file": str(pki["ca"]), "cert_file": str(pki["gateway_cert"]),
                                     "key_file": str(pki["gateway_key"])}))
    tls = ["+tls", str(pki["modality_key"]), str(pki["modality_cert"]), "+cf", str(pki["ca"])]
    target = ["-aet", CALLING, "-aec", "PACSGUARD", "127.0.0.1", str(gw.port())]
    result = dcmtk.run("echoscu", *tls, *target)
    assert result.returncode == 0, result.stdout + result.stderr
    ct = Path(get_testdata_file("CT_small.dcm"))
    result = dcmtk.run("storescu", "-R", *tls, *target, str(ct))
    assert result.returncode == 0, result.stdout + result.stderr
    ids = pacs.wait_for_instances(1)
    stored = tmp_path / "stored.dcm"
    stored.write_bytes(pacs.instance_file(ids[0]))
    assert read_dataset(stored) == read_dataset(ct)
    requested = gw.wait_for("dicom.association.requested", count=2)
    assert all(e.details["tls"] and e.details["certificate"]["subject_cn"] == "modality" for e in requested)
    assert all(e.actor.user and "CN=modality" in e.actor.user for e in requested)

    # Mutual TLS: a client without a certificate never gets past the handshake.
    result = dcmtk.run("echoscu", "+tla", "+cf", str(pki["ca"]), *target)
    assert result.returncode != 0
    gw.wait_for("tls.handshake.failed")
    s_client = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{gw.port()}", "-CAfile", str(pki["ca"])],
                              input="", capture_output=True, text=True, timeout=30)
    failed = gw.wait_for("tls.handshake.failed", count=2)
    assert all(e.actor.host == "127.0.0.1" and e.outcome == "serious-failure" for e in failed)
    assert "certificate" in failed[1].message.lower(), (failed[1].message, s_client.stdout[-500:])
    # And plain TCP to a TLS route is not DICOM at all for the gateway.
    result = dcmtk.run("echoscu", *target)
    assert result.returncode != 0


def test_quarantine_cuts_off_a_live_association_within_a_second(dcmtk, orthanc, gateway):
    pacs = orthanc()
    gw = gateway(route("main", pacs.dicom_port, upstream_ae=pacs.aet))
    ae = AE(ae_title=CALLING)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", gw.port(), ae_title="PACSGUARD")
    try:
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        gw.cli("gateway", "quarantine", "add", "127.0.0.1", "--for", "10m", "--reason", "worm suspected")
        started = time.monotonic()
        while assoc.is_alive() and time.monotonic() - started < 5:
            time.sleep(0.02)
        elapsed = time.monotonic() - started
        assert assoc.is_aborted, "the live association was not aborted"
        assert elapsed < 1.0, f"cut off after {elapsed:.2f} s"
    finally:
        if assoc.is_alive():
            assoc.abort()
    enforced = gw.wait_for("gateway.quarantine.enforced")
    assert enforced[0].target.host == "127.0.0.1" and "worm suspected" in enforced[0].details["reason"]
    gw.wait_for("dicom.association.aborted", where=lambda e: e.details.get("cause") == "quarantine")
    # New associations are refused while it lasts; the list shows it; removal lets the device back.
    assert dcmtk.run("echoscu", "-aet", CALLING, "-aec", "PACSGUARD", "127.0.0.1", str(gw.port())).returncode != 0
    rejected = gw.wait_for("dicom.association.rejected")
    assert rejected[0].details["rule"] == "quarantine"
    listing = gw.cli("gateway", "quarantine", "list").stdout
    assert "127.0.0.1" in listing and "worm suspected" in listing
    gw.cli("gateway", "quarantine", "remove", "127.0.0.1")
    deadline = time.monotonic() + 5
    while dcmtk.run("echoscu", "-aet", CALLING, "-aec", "PACSGUARD", "127.0.0.1", str(gw.port())).returncode != 0:
        assert time.monotonic() < deadline, "the device was not let back in after removal"
        time.sleep(0.2)
    # An AE title can be quarantined too, wherever it connects from.
    gw.cli("gateway", "quarantine", "add", CALLING)
    time.sleep(0.5)
    assert dcmtk.run("echoscu", "-aet", CALLING, "-aec", "PACSGUARD", "127.0.0.1", str(gw.port())).returncode != 0
    assert dcmtk.run("echoscu", "-aet", "OTHER", "-aec", "PACSGUARD", "127.0.0.1", str(gw.port())).returncode == 0
    assert "not quarantined" in gw.cli("gateway", "quarantine", "remove", "NOBODY", check=1).stderr


def nmap_dicom_ping(port: int) -> str:
    proc = subprocess.run(["nmap", "-Pn", "-n", "-p", str(port), "--script", "dicom-ping", "127.0.0.1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_nmap_dicom_ping_sees_the_allow_list(orthanc, gateway):
    pacs = orthanc()
    gw = gateway(route("main", pacs.dicom_port, upstream_ae=pacs.aet, port=NMAP_PORT,
                       policy={"calling_ae_titles": [CALLING]}))
    out = nmap_dicom_ping(NMAP_PORT)
    assert "DICOM Service Provider discovered" in out and "Called AET check enabled" in out, out
    assert "Any AET is accepted" not in out
    probe = gw.wait_for("dicom.association.rejected")[0]
    # nmap calls as ECHOSCU -> ANY-SCP; the gateway names what it refused.
    assert probe.actor.ae_title == "ECHOSCU" and probe.details["called_ae"] == "ANY-SCP"


def test_nmap_sees_an_open_gateway_as_insecure(orthanc, gateway):
    """The same probe against a route with no allow-list and the called AE nmap guesses: the
    finding an administrator must not leave in place (and what the allow-list fixes)."""
    pacs = orthanc()
    gw = gateway(route("main", pacs.dicom_port, upstream_ae=pacs.aet, port=NMAP_PORT, ae_title="ANY-SCP"))
    out = nmap_dicom_ping(NMAP_PORT)
    assert "Any AET is accepted (Insecure)" in out, out
    assert gw.wait_for("dicom.association.accepted")[0].actor.ae_title == "ECHOSCU"


def test_inline_ips_blocks_nmap_dicom_brute_and_quarantines_the_attacker(dcmtk, orthanc, gateway, tmp_path):
    """nmap's dicom-brute guesses called AE titles; the gateway rejects each one, the inline rule
    dicom-ae-brute-force sees the pattern and quarantines the source (its built-in action), here the
    whole host: gateway.quarantine_scope is set to host deliberately (the default is the pair)."""
    pacs = orthanc()
    main = route("main", pacs.dicom_port, upstream_ae=pacs.aet, port=NMAP_PORT)
    gw = gateway(main, extra={"gateway": {"routes": [main], "quarantine_poll_interval": 0.2,
                                          "quarantine_scope": "host"}})
    guesses = tmp_path / "aets.txt"
    guesses.write_text("\n".join(["PACS", "ARCHIVE", "ORTHANC", "STORESCP", "DCM4CHEE", "CONQUESTSRV1",
                                  "SERVER", "ANY-SCP", "AE_TITLE", "PACSGUARD"]) + "\n")
    proc = subprocess.run(["nmap", "-Pn", "-n", "-p", str(NMAP_PORT), "--script", "dicom-brute",
                           "--script-args", f"passdb={guesses}", "127.0.0.1"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    # The guesses were rejected by the gateway and none reached Orthanc; then the rule fired.
    alert = gw.wait_for("ids.alert.dicom-ae-brute-force")[0]
    assert alert.actor.host == "127.0.0.1" and alert.details["action"] == "quarantine"
    added = gw.wait_for("gateway.quarantine.added")[0]
    assert added.target.host == "127.0.0.1" and added.component == "ids" and added.details["until"]
    assert "dicom-ae-brute-force" in added.details["reason"]
    # The attacker's host is now cut off, even with the right AE title.
    result = dcmtk.run("echoscu", "-aet", "ANYONE", "-aec", "PACSGUARD", "127.0.0.1", str(NMAP_PORT))
    assert result.returncode != 0
    assert gw.wait_for("dicom.association.rejected", where=lambda e: e.details.get("rule") == "quarantine")
    assert "PACSGUARD" not in proc.stdout.split("dicom-brute", 1)[-1] or "Valid credentials" not in proc.stdout


def test_serve_refuses_to_start_on_a_broken_rule(tmp_path):
    import sys

    import yaml

    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "site.yaml").write_text("- id: site-bad\n  title: broken\n  severity: loud\n  protocol: dicom\n"
                                     "  on: association-request\n  action: alert\n")
    (tmp_path / "pacsguard.yaml").write_text(yaml.safe_dump({
        "ids": {"rules_dirs": ["rules"]},
        "gateway": {"routes": [route("main", 9, upstream_ae="X")]}}))
    cli = [sys.executable, "-m", "pacsguard.cli"]
    assert subprocess.run([*cli, "init", "--no-demo"], cwd=tmp_path, capture_output=True, timeout=60).returncode == 0
    proc = subprocess.run([*cli, "serve"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "site.yaml" in proc.stderr and "site-bad" in proc.stderr and "severity" in proc.stderr
    assert "Traceback" not in proc.stderr
