"""Outbound (round 8), with real peers: `pacsguard serve` SIGKILLed while dcmtk's storescu streams
images through its gateway, then started again. The external repository (a second pacsguard,
`atna listen` over mutual TLS) ends up with one Instances Transferred message for every C-STORE
serve's store took, naming its patient, each once."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from test_outbound import pki  # noqa: F401 - pki is a fixture
from test_outside_round4_feed_serve import events
from test_round6_outbound import _stop as stop

from pacsguard.atna.dedupe import delivery_of
from peers.dcmtk import wait_for_port

pytestmark = pytest.mark.peers

CLI = [sys.executable, "-m", "pacsguard.cli"]
DEADLINE = 60.0
IMAGES = 120
TRANSFERRED = "atna.audit.instances-transferred"


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def patients(path: Path, kind: str) -> Counter[str]:
    """How many events of ``kind`` in the store at ``path`` name each patient."""
    return Counter(p for e in events(path, kind) for p in e.patient_ids)


def images(base: Path) -> list[Path]:
    """IMAGES CT images, each of a patient of its own (PID-i), so that each message is named."""
    base.mkdir()
    source = get_testdata_file("CT_small.dcm")
    assert isinstance(source, str), "pydicom's test data is missing"
    ct = dcmread(source)
    out = []
    for i in range(IMAGES):
        ct.PatientID = f"PID-{i}"
        ct.SOPInstanceUID = ct.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = base / f"ct{i}.dcm"
        ct.save_as(path)
        out.append(path)
    return out


def test_serve_killed_mid_stream_sends_each_stored_c_store_once(dcmtk: Any, tmp_path: Path,
                                                                 pki: dict[str, Path]) -> None:  # noqa: F811
    repo_host, gw_host = "127.0.85.1", "127.0.85.2"
    repo_port, gw_port, pacs_port = free_port(repo_host), free_port(gw_host), free_port(gw_host)
    files = images(tmp_path / "images")
    repo_store = tmp_path / "repository.db"
    repo_log = tmp_path / "repository.log"
    repo = subprocess.Popen(
        [*CLI, "atna", "listen", "--tls", f"{repo_host}:{repo_port}", "--tls-cert", str(pki["cert"]),
         "--tls-key", str(pki["key"]), "--tls-ca", str(pki["ca"]), "--store", str(repo_store)],
        stdout=repo_log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})
    site = tmp_path / "site"
    site.mkdir()
    done = subprocess.run([*CLI, "init"], cwd=site, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    config = site / "pacsguard.yaml"
    config.write_text(config.read_text().replace("127.0.0.1", gw_host).replace("11112", str(gw_port))
                      .replace("11113", str(pacs_port)) + f"""
atna:
  enabled: true
  outbound:
    host: {repo_host}
    port: {repo_port}
    server_name: localhost
    ca_file: {pki["ca"]}
    cert_file: {pki["client"]}
    key_file: {pki["client_key"]}
    source_id: SITE-A
    retry: 0.5
""")
    serve_log = tmp_path / "serve.log"
    own = site / "var" / "pacsguard.db"

    def serve() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([*CLI, "serve"], cwd=site, stdout=serve_log.open("ab"), stderr=subprocess.STDOUT,
                                env={**os.environ, "COLUMNS": "200"})
        assert wait_for_port(gw_host, gw_port, 30, proc), serve_log.read_text()
        return proc

    proc = serve()
    sender: subprocess.Popen[bytes] | None = None
    try:
        assert wait_for_port(repo_host, repo_port, 30, repo), repo_log.read_text()
        sender = subprocess.Popen([dcmtk.path("storescu"), "-aet", "MODALITY", "-aec", "PACSGUARD", gw_host,
                                   str(gw_port), *map(str, files)], env=dcmtk.env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        end = time.monotonic() + DEADLINE
        while len(events(own, "dicom.dimse.c-store")) < IMAGES // 3:
            assert time.monotonic() < end and sender.poll() is None, serve_log.read_text()
            time.sleep(0.02)
        proc.kill()  # mid-stream: storescu is still sending
        proc.wait(DEADLINE)
        sender.wait(DEADLINE)
        assert IMAGES // 3 <= len(events(own, "dicom.dimse.c-store")) < IMAGES
        proc = serve()  # it stores what its journal held at the kill too
        end = time.monotonic() + 20  # once sending, the lot takes about a second
        while (want := patients(own, "dicom.dimse.c-store")) != (have := patients(repo_store, TRANSFERRED)):
            assert time.monotonic() < end, f"the repository lacks {sorted(want - have)}, has {sorted(have - want)}"
            time.sleep(0.3)
        time.sleep(1.5)  # what a duplicate would need to arrive
    finally:
        if sender is not None and sender.poll() is None:
            sender.kill()
            sender.wait(DEADLINE)
        stop(proc)
        stop(repo)
    assert patients(repo_store, TRANSFERRED) == patients(own, "dicom.dimse.c-store") == want
    # Each patient's first image had its Begin Transferring (PS3.15 A.5.3.5), spooled with it.
    assert patients(repo_store, "atna.audit.begin-transferring-instances") == want
    assert len(want) >= IMAGES // 3 and set(want.values()) == {1}  # each stored C-STORE once, none lost
    got = events(repo_store, "atna.audit.instances-transferred")
    numbers = [delivery_of(e.details["syslog"].get("structured_data")) for e in got]
    assert len(set(numbers)) == len(numbers)
    assert "Traceback" not in serve_log.read_text()
