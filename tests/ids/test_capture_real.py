"""pacsguard.ids.capture on real traffic: dcmtk's storescu -> storescp in a throwaway network
namespace whose loopback looks like a LAN (MTU 1500, TSO/GSO/GRO off: 1514-byte frames), captured
by dumpcap and, at the same time, by our own live capture; the reassembled streams must equal what
tshark's "follow tcp raw" reports, byte for byte, in both directions, with no gap.

Needs root, iproute2, ethtool, wireshark's dumpcap and tshark, and Debian's dcmtk (called by its
full path: pynetdicom installs same-named apps in the virtualenv)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

# the helper module sits next to this file, whether or not tests/ids is a package
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from capture_craft import Recorder
from lan_netns import lan_netns, require_peers

from pacsguard.ids.capture import read_capture

pytestmark = pytest.mark.peers

STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
PORT = 11112
PROBE_PORT = 9
TEST_FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtdose.dcm", "rtstruct.dcm"]


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    require_peers(["ip", "ethtool", "dumpcap", "tshark", "tc"], [STORESCU, STORESCP])
    with lan_netns("pg") as name:
        yield name


def _ns(name: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", name, *args]


class _StderrLines:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stderr is not None
        self._t = threading.Thread(target=self._read, args=(proc.stderr,), daemon=True)
        self._t.start()

    def _read(self, f) -> None:  # type: ignore[no-untyped-def]
        for line in f:
            self.lines.append(line)


def _probe(name: str) -> subprocess.Popen[bytes]:
    """UDP datagrams to port 9 inside the namespace, every 20 ms, until killed."""
    code = (
        "import socket,time\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        f"for i in range(3000): s.sendto(b'probe',('127.0.0.1',{PROBE_PORT})); time.sleep(0.02)"
    )
    return subprocess.Popen(_ns(name, sys.executable, "-c", code))


LIVE_HELPER = r"""
import hashlib, json, signal, sys, threading
from pacsguard.ids.capture import live_capture

class C:
    def __init__(self):
        self.out = {}
    def on_open(self, conn):
        conn.state = {"c": hashlib.sha256(), "s": hashlib.sha256(), "cn": 0, "sn": 0, "gaps": 0}
    def on_data(self, conn, from_client, data, ts):
        k = "c" if from_client else "s"
        conn.state[k].update(data)
        conn.state[k + "n"] += len(data)
    def on_gap(self, conn, from_client, n):
        conn.state["gaps"] += 1
    def on_close(self, conn, reason):
        st = conn.state
        self.out[f"{conn.client_port}->{conn.server_port}"] = {
            "client_sha": st["c"].hexdigest(), "server_sha": st["s"].hexdigest(),
            "client_len": st["cn"], "server_len": st["sn"], "gaps": st["gaps"],
            "reason": reason, "midstream": conn.midstream,
        }

stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: stop.set())
c = C()
stats = live_capture("lo", c, sys.argv[1], stop, ready=lambda: print("READY", flush=True))
print(json.dumps({"conns": c.out, "packets": stats.packets, "problems": [p.what for p in stats.problems]}), flush=True)
"""


def _start_live(name: str, bpf: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        _ns(name, sys.executable, "-c", LIVE_HELPER, bpf),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "READY":
        proc.kill()
        raise AssertionError(f"live capture did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    return proc


def _start_dumpcap(name: str, path: Path, bpf: str) -> tuple[subprocess.Popen[str], _StderrLines]:
    """dumpcap, proven to be capturing: it announces "Capturing on" long (~0.7 s) before the
    kernel hands it packets, so probes run until its progress line counts one."""
    proc = subprocess.Popen(
        _ns(name, "dumpcap", "-i", "lo", "-B", "64", "-f", f"({bpf}) or udp port {PROBE_PORT}", "-w", str(path)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    err = _StderrLines(proc)
    probe = _probe(name)
    try:
        deadline = time.monotonic() + 30
        while not any(line.startswith("Packets:") for line in err.lines):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"dumpcap not capturing: {''.join(err.lines)}")
            time.sleep(0.02)
    finally:
        probe.kill()
        probe.wait()
    return proc, err


def _wait_port(name: str, port: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        r = subprocess.run(_ns(name, "ss", "-ltnH", f"sport = :{port}"), capture_output=True, text=True)
        if r.stdout.strip():
            return
        time.sleep(0.05)
    raise AssertionError(f"storescp not listening on {port}")


def _dicom_files(tmp: Path) -> list[Path]:
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    files = []
    for n in TEST_FILES:
        p = get_testdata_file(n)
        assert p is not None, n
        files.append(Path(p))
    # one object of ~2 MB, so the association has long runs of full-size segments
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Rows = ds.Columns = 1024
    ds.PixelData = os.urandom(1024 * 1024 * 2)
    big = tmp / "big.dcm"
    ds.save_as(big)
    files.append(big)
    return files


def _tshark_follow(path: Path, stream: int) -> tuple[str, bytes, bytes]:
    """(node 0 "ip:port", node 0's bytes, node 1's bytes) from tshark's follow,tcp,raw."""
    r = subprocess.run(
        ["tshark", "-r", str(path), "-q", "-z", f"follow,tcp,raw,{stream}"],
        capture_output=True,
        text=True,
        check=True,
    )
    node0 = ""
    a, b = [], []
    in_body = False
    for line in r.stdout.splitlines():
        if line.startswith("Node 0:"):
            node0 = line.split(":", 1)[1].strip()
        elif line.startswith("Node 1:"):
            in_body = True
        elif line.startswith("====="):
            in_body = False
        elif in_body and line.strip():
            (b if line.startswith("\t") else a).append(bytes.fromhex(line.strip()))
    return node0, b"".join(a), b"".join(b)


@pytest.fixture(scope="module")
def storescu_run(netns: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("real")
    files = _dicom_files(tmp)
    cap = tmp / "storescu.pcapng"
    env = dict(os.environ, TCP_NODELAY="1")
    scp = subprocess.Popen(_ns(netns, STORESCP, "--ignore", "+xa", str(PORT)), env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    live = dumpcap = None
    dc_err: _StderrLines | None = None
    try:
        _wait_port(netns, PORT)
        dumpcap, dc_err = _start_dumpcap(netns, cap, f"tcp port {PORT}")
        live = _start_live(netns, f"tcp port {PORT}")
        r = subprocess.run(_ns(netns, STORESCU, "127.0.0.1", str(PORT), *map(str, files)),
                           env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        time.sleep(1.0)  # let both capturers drain their buffers
        dumpcap.send_signal(signal.SIGINT)
        dumpcap.wait(timeout=30)
        live.send_signal(signal.SIGTERM)
        out, err = live.communicate(timeout=30)
        assert live.returncode == 0, err
        live_result = json.loads(out.strip().splitlines()[-1])
    finally:
        for p in (live, dumpcap, scp):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert dc_err is not None
    report = " ".join("".join(dc_err.lines).split())
    return {"capture": cap, "files": files, "dumpcap": report, "live": live_result}


def test_capture_is_lan_like(storescu_run: dict) -> None:
    assert "dropped on interface 'Loopback: lo': " in storescu_run["dumpcap"]
    assert "/0 (pcap:0" in storescu_run["dumpcap"], storescu_run["dumpcap"]  # no drops
    sizes = []
    from pacsguard.ids.capture import iter_frames

    for _ts, lt, frame in iter_frames(storescu_run["capture"]):
        assert lt == 1
        sizes.append(len(frame))
    assert max(sizes) == 1514  # MTU-sized frames, no segmentation offload


def test_reassembled_streams_equal_tshark_follow(storescu_run: dict) -> None:
    cap = storescu_run["capture"]
    rec = Recorder()
    stats = read_capture(cap, rec)
    assert stats.problem_count == 0, stats.problems
    dicom = [c for c in rec.conns if c.server_port == PORT]
    assert len(dicom) == 1, rec.conns
    conn = dicom[0]
    assert not conn.midstream
    assert rec.closed[conn.conn_id] == "fin"
    assert stats.gaps == 0 and conn.client_gap_bytes == conn.server_gap_bytes == 0
    assert stats.non_tcp.get("ipv4-udp", 0) >= 1  # the readiness probes, skipped
    node0, c2s, s2c = _tshark_follow(cap, 0)
    assert node0 == f"127.0.0.1:{conn.client_port}"
    client = rec.pieces(conn.conn_id, True)
    server = rec.pieces(conn.conn_id, False)
    assert len(client) == 1 and len(server) == 1  # one contiguous stream each way, no gap marker
    assert client[0] == c2s, (len(client[0]), len(c2s))
    assert server[0] == s2c, (len(server[0]), len(s2c))
    # sanity: it is DICOM upper layer, A-ASSOCIATE-RQ (0x01) answered by A-ASSOCIATE-AC (0x02),
    # ending with A-RELEASE-RQ (0x05) / A-RELEASE-RP (0x06), and every object went across
    assert c2s[0] == 0x01 and s2c[0] == 0x02
    assert c2s[-10] == 0x05 and s2c[-10] == 0x06
    payload = sum(f.stat().st_size for f in storescu_run["files"])
    assert len(c2s) > 0.9 * payload


def test_live_capture_saw_the_same_streams(storescu_run: dict) -> None:
    cap = storescu_run["capture"]
    node0, c2s, s2c = _tshark_follow(cap, 0)
    live = storescu_run["live"]
    assert live["problems"] == []
    port = node0.rsplit(":", 1)[1]
    got = live["conns"][f"{port}->{PORT}"]
    assert got["gaps"] == 0 and not got["midstream"]
    assert got["reason"] in ("fin", "end")
    assert (got["client_len"], got["server_len"]) == (len(c2s), len(s2c))
    assert got["client_sha"] == hashlib.sha256(c2s).hexdigest()
    assert got["server_sha"] == hashlib.sha256(s2c).hexdigest()
