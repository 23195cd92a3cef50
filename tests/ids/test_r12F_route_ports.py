"""Outside round 12, helper F: the passive IDS read with the gateway's own configuration.

An administrator who captures at the gateway and reads the capture with `pacsguard ids read -c
pacsguard.yaml` (or watches with `ids live -c`) must get what the inline IDS gets: a route's listen
port and its upstream's port are DICOM ports by definition (PS3.8 9.1: any TCP port may be
configured; docs/ids.md, "Inline, every route's listen port ..."), so associations to a route on a
non-standard port raise no `dicom-unexpected-port`. Before the fix the passive commands took
`$dicom_ports` from `ids.dicom_ports` only and flagged every association of the capture.

Peers: dcmtk's echoscu (from /usr/bin) as the modality, a pynetdicom Verification SCP as the
PACS, `pacsguard serve` in between, tcpdump on lo (tests/peers/ctn.py's `capture`). Everything
listens on 127.0.126.x (this helper's addresses), on ports the kernel picks: never 104 or 11112.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pacsguard.ids.defaults import default_dicom_ports
from peers.ctn import capture
from peers.dcmtk import Dcmtk, free_port, stop_process_group

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gateway"))

from gateway_under_test import RunningGateway, serving  # noqa: E402

pytestmark = [pytest.mark.peers, pytest.mark.timeout(90)]

GW = "127.0.126.10"  # the route listens here
PACS = "127.0.126.1"  # the upstream Verification SCP
PROGRAM = [sys.executable, "-m", "pacsguard.cli"]


@pytest.fixture
def gateway_to_pacs(tmp_path: Path) -> Iterator[RunningGateway]:
    """A relay route on GW in front of a pynetdicom Verification SCP on PACS, both on ports outside
    the default ids.dicom_ports; `pacsguard serve` runs in ``tmp_path/gw``."""
    pacs_port = free_port(PACS)
    ae = AE(ae_title="R12FPACS")
    ae.add_supported_context(Verification)
    server = ae.start_server((PACS, pacs_port), block=False)
    route = {"name": "rl", "listen": {"host": GW, "port": free_port(GW), "ae_title": "PACSGUARD"},
             "upstream": {"host": PACS, "port": pacs_port, "ae_title": "R12FPACS", "connect_timeout": 5}}
    assert not {route["listen"]["port"], pacs_port} & set(default_dicom_ports())
    home = tmp_path / "gw"
    home.mkdir()
    try:
        with serving(home, [route], PROGRAM) as gw:
            yield gw
    finally:
        server.shutdown()


def echo(dcmtk: Dcmtk, gw: RunningGateway) -> None:
    said = dcmtk.run("echoscu", "-aet", "R12FMOD", "-aec", "PACSGUARD", GW, str(gw.port("rl")), timeout=20)
    assert said.returncode == 0, said.stdout + said.stderr


def json_lines(text: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    lines = [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]
    summary = next(line["summary"] for line in lines if "summary" in line)
    return [line for line in lines if "kind" in line], summary


def alerts_of(events: list[dict[str, Any]]) -> list[str]:
    return [e["kind"] for e in events if e["kind"].startswith("ids.alert.")]


def test_ids_read_with_the_gateways_config_raises_no_unexpected_port_on_its_routes(
        dcmtk: Dcmtk, gateway_to_pacs: RunningGateway, tmp_path: Path) -> None:
    """A C-ECHO through the route, captured at the gateway (both legs: modality to route, gateway
    to PACS) and read with the gateway's pacsguard.yaml: two associations, no alert, exit 0."""
    gw = gateway_to_pacs
    pcap = tmp_path / "gw.pcap"
    with capture(pcap, f"host {GW} or host {PACS}", limit=30):
        echo(dcmtk, gw)
        gw.wait_for("dicom.dimse.c-echo")
    proc = subprocess.run([*PROGRAM, "ids", "read", "-c", str(gw.home / "pacsguard.yaml"), "--format", "json",
                           str(pcap)], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    events, summary = json_lines(proc.stdout)
    assert alerts_of(events) == [], summary["alerts"]
    assert proc.returncode == 0, proc.stderr
    assert summary["sensor"]["associations"] == 2 and summary["sensor"]["commands"].get("C-ECHO-RQ") == 2, summary
    assert summary["capture"]["complete"] is True


def test_ids_live_with_the_gateways_config_raises_no_unexpected_port_on_its_routes(
        dcmtk: Dcmtk, gateway_to_pacs: RunningGateway, tmp_path: Path) -> None:
    """The same C-ECHO watched live on lo (`ids live -c`, a few seconds): no alert, exit 0."""
    gw = gateway_to_pacs
    cmd = [*PROGRAM, "ids", "live", "-i", "lo", "--no-promisc", "--bpf", f"host {GW} or host {PACS}",
           "--duration", "6", "-c", str(gw.home / "pacsguard.yaml"), "--format", "json"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 15
        said = ""
        while "capturing on" not in said and time.monotonic() < deadline and proc.poll() is None:
            said += proc.stderr.readline()
        assert "capturing on" in said, said
        echo(dcmtk, gw)
        out, err = proc.communicate(timeout=20)
    finally:
        stop_process_group(proc)  # type: ignore[arg-type]
    events, summary = json_lines(out)
    assert alerts_of(events) == [], summary["alerts"]
    assert proc.returncode == 0, said + err
    assert summary["sensor"]["associations"] == 2, summary
