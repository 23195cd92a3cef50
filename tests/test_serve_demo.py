"""`make run`: `pacsguard init` writes the demo configuration and `pacsguard serve` runs the gateway
in front of the embedded demo PACS. Driven here by dcmtk, on free ports, as a new user would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from pacsguard.store import EventQuery, EventStore
from pacsguard.store.keys import load_public_key
from pacsguard.store.verify import verify_store
from peers.dcmtk import free_port, wait_for_port

pytestmark = pytest.mark.peers


def test_demo_configuration_serves_and_records(dcmtk, tmp_path: Path):
    cli = [sys.executable, "-m", "pacsguard.cli"]
    assert subprocess.run([*cli, "init"], cwd=tmp_path, capture_output=True, timeout=60).returncode == 0
    config = tmp_path / "pacsguard.yaml"
    gw_port, demo_port = free_port(), free_port()
    config.write_text(config.read_text().replace("11112", str(gw_port)).replace("11113", str(demo_port)))
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([*cli, "serve"], cwd=tmp_path, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "COLUMNS": "200"})
    try:
        assert wait_for_port("127.0.0.1", gw_port, 30, proc), log.read_text()
        target = ["-aet", "MODALITY", "-aec", "PACSGUARD", "127.0.0.1", str(gw_port)]
        result = dcmtk.run("storescu", *target, get_testdata_file("CT_small.dcm"))
        assert result.returncode == 0, result.stderr
        # The demo PACS is seeded at its first start (pacsguard.demo.seed): look for this very object.
        sent = dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True).SOPInstanceUID
        assert list((tmp_path / "var/demo-pacs").rglob(f"{sent}.dcm")), "the demo PACS stored nothing"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    text = log.read_text()
    assert proc.returncode == 0 and "Traceback" not in text, text
    assert "gateway route demo" in text and "demo upstream" in text
    es = EventStore.open(str(tmp_path / "var/pacsguard.db"))
    kinds = [s.event.kind for s in es.search(EventQuery(limit=None))]
    assert kinds[0] == "pacsguard.service.started" and kinds[-1] == "pacsguard.service.stopped"
    assert "dicom.dimse.c-store" in kinds
    # Ctrl-C signed a final checkpoint over everything.
    report = verify_store(es, load_public_key(tmp_path / "var/keys/store-signing.key"))
    assert report.ok and report.newest_checkpoint == len(kinds)


def test_a_port_in_use_names_the_service_and_is_recorded_as_a_failed_start(tmp_path: Path):
    """A second `serve` on a busy port: one line naming the service and the address, exit 2, and
    the store says the run failed instead of recording a clean stop."""
    import socket

    cli = [sys.executable, "-m", "pacsguard.cli"]
    assert subprocess.run([*cli, "init"], cwd=tmp_path, capture_output=True, timeout=60).returncode == 0
    config = tmp_path / "pacsguard.yaml"
    gw_port, demo_port = free_port(), free_port()
    config.write_text(config.read_text().replace("11112", str(gw_port)).replace("11113", str(demo_port)))
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", demo_port))
        busy.listen(1)
        result = subprocess.run([*cli, "serve"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"demo upstream DEMOPACS: cannot listen on 127.0.0.1:{demo_port}" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    es = EventStore.open(str(tmp_path / "var/pacsguard.db"))
    try:
        stopped = [s.event for s in es.search(EventQuery(kind="pacsguard.service.stopped", limit=None))]
    finally:
        es.close()
    assert [e.outcome for e in stopped] == ["major-failure"]
    assert str(demo_port) in stopped[0].details["error"]
