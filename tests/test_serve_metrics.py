"""Issue 17 item 7, done when: `pacsguard serve` with metrics enabled is scraped (prometheus_client's
parser) and its counters move with real dcmtk traffic; /healthz answers 200; --log-format json
writes log lines that parse."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom.data import get_testdata_file

from peers.dcmtk import free_port, wait_for_port

pytestmark = pytest.mark.peers


def _scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_serve_metrics_move_with_dcmtk_traffic(dcmtk, tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "pacsguard.cli"]
    assert subprocess.run([*cli, "init"], cwd=tmp_path, capture_output=True, timeout=60).returncode == 0
    config = tmp_path / "pacsguard.yaml"
    gw_port, demo_port, metrics_port = free_port(), free_port(), free_port()
    text = config.read_text().replace("11112", str(gw_port)).replace("11113", str(demo_port))
    config.write_text(text + f"\nmetrics:\n  enabled: true\n  port: {metrics_port}\n")
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([*cli, "serve", "--log-format", "json"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=log.open("w"), env={**os.environ, "COLUMNS": "200"})
    try:
        assert wait_for_port("127.0.0.1", metrics_port, 30, proc), log.read_text()
        assert wait_for_port("127.0.0.1", gw_port, 30, proc), log.read_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=10) as answer:
            assert answer.status == 200 and json.loads(answer.read())["status"] == "ok"
        before = _scrape(metrics_port)

        target = ["-aet", "MODALITY", "-aec", "PACSGUARD", "127.0.0.1", str(gw_port)]
        assert dcmtk.run("echoscu", *target).returncode == 0
        files = [get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm")]
        result = dcmtk.run("storescu", *target, *files)
        assert result.returncode == 0, result.stderr

        def moved(name: str, **labels: str) -> float:
            return _value(after, name, **labels) - _value(before, name, **labels)

        def settled() -> bool:
            nonlocal after
            after = _scrape(metrics_port)
            return moved("pacsguard_associations_total", route="demo", event="released") >= 2

        after = before
        assert _until(settled), after
        # One association for echoscu, one for storescu (both objects on it).
        for event in ("requested", "accepted", "released"):
            assert moved("pacsguard_associations_total", route="demo", event=event) == 2, event
        assert moved("pacsguard_dimse_requests_total", route="demo", service="C-STORE", status="success") == 2
        assert moved("pacsguard_dimse_requests_total", route="demo", service="C-ECHO", status="success") == 1
        assert moved("pacsguard_bytes_total", route="demo", direction="from_client") > sum(
            Path(f).stat().st_size for f in files) * 0.9
        assert moved("pacsguard_bytes_total", route="demo", direction="from_upstream") > 0
        assert _value(after, "pacsguard_upstream_up", route="demo") == 1
        assert _value(after, "pacsguard_store_commit_seconds_count") >= 1
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert proc.returncode == 0, log.read_text()
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert lines, "serve logged nothing"
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
