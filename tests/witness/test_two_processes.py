"""A pacsguard witness service and a gateway as two real processes on loopback: `serve` relays a
C-STORE from dcmtk's storescu to the demo PACS and sends every checkpoint to the witness; verify
then checks the store against what the witness holds, before and after a checkpoint is deleted."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from peers.dcmtk import free_port, stop_process_group, wait_for_port

pytestmark = pytest.mark.peers

CLI = [sys.executable, "-m", "pacsguard.cli"]
ENV = {**os.environ, "COLUMNS": "200"}


def _cli(*args: str, cwd: Path, code: int = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


def test_serve_delivers_to_a_witness_process_and_verify_uses_it(dcmtk, tmp_path: Path) -> None:
    site, other = tmp_path / "site", tmp_path / "witness"
    site.mkdir()
    other.mkdir()
    (tmp_path / "token").write_text("token-of-site-a\n")
    _cli("init", cwd=site)
    gw_port, demo_port, witness_port = free_port(), free_port(), free_port()
    config = site / "pacsguard.yaml"
    text = config.read_text().replace("11112", str(gw_port)).replace("11113", str(demo_port))
    text = text.replace("  checkpoint_interval: 60 ", "  checkpoint_interval: 1\n  witnesses:\n"
                        f"    - url: http://127.0.0.1:{witness_port}\n      token: {{file: ../token}}\n#")
    config.write_text(text)
    (other / "witness.yaml").write_text(f"""\
store: {{url: var/witness-events.db, signing_key: var/keys/own.key}}
witness:
  enabled: true
  port: {witness_port}
  logs:
    - name: site-a
      public_key: ../site/var/keys/store-signing.key.pub
      token: {{file: ../token}}
""")
    _cli("init", "-c", "witness.yaml", cwd=other)
    witness_log = tmp_path / "witness.log"
    witness = subprocess.Popen([*CLI, "witness", "serve", "-c", "witness.yaml"], cwd=other, env=ENV,
                               stdout=witness_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert wait_for_port("127.0.0.1", witness_port, 30, witness), witness_log.read_text()
        serve_log = tmp_path / "serve.log"
        gateway = subprocess.Popen([*CLI, "serve"], cwd=site, env=ENV, stdout=serve_log.open("w"),
                                   stderr=subprocess.STDOUT)
        try:
            assert wait_for_port("127.0.0.1", gw_port, 30, gateway), serve_log.read_text()
            result = dcmtk.run("storescu", "-aet", "MODALITY", "-aec", "PACSGUARD", "127.0.0.1", str(gw_port),
                               get_testdata_file("CT_small.dcm"))
            assert result.returncode == 0, result.stderr
            time.sleep(2.5)  # a timed checkpoint (interval 1 s) is sent while serve runs
        finally:
            gateway.send_signal(signal.SIGINT)
            gateway.wait(30)
        out = serve_log.read_text()
        assert gateway.returncode == 0 and "Traceback" not in out, out
        assert f"http://127.0.0.1:{witness_port}" in out  # the banner names the witness
        url = f"http://127.0.0.1:{witness_port}"
        report = json.loads(_cli("audit", "verify", "--witness", url, "--format", "json", cwd=site).stdout)
        held = report["witnesses"][0]
        # The final checkpoint, signed as serve stopped, reached the witness too.
        assert report["ok"] and held["checkpoints"] >= 2 and held["newest"] == report["events"]
        with sqlite3.connect(site / "var/pacsguard.db") as conn:
            conn.execute("DELETE FROM checkpoints WHERE tree_size = ?", (report["events"],))
        proc = _cli("audit", "verify", "--witness", url, "--format", "json", cwd=site, code=3)
        assert [f["kind"] for f in json.loads(proc.stdout)["findings"]] == ["deleted checkpoint"]
    finally:
        stop_process_group(witness, signal.SIGINT)
    assert "Traceback" not in witness_log.read_text()
