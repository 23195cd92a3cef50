"""A capture taken on the sending host itself, with segmentation offload on (outside round 9, W7).

A PACS administrator captures on the gateway or PACS host: Linux hands the capture the packet
before TSO/GSO cuts it, and with BIG TCP (gso_ipv4_max_size above 64 KiB) such an IPv4 packet
carries a total length of 0 (RFC 791 cannot say more than 65,535).  Wireshark takes the length
from the frame ("reported as 0, presumed to be because of TCP segmentation offload"); so must the
sensor, and its summary says how many frames were read so.  Real dcmtk storescu -> storescp in a
throwaway network namespace whose loopback has TSO, GSO and BIG TCP on, captured by dumpcap.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from capture_craft import Flow, Recorder, eth_frames, pcap_bytes
from lan_netns import require_peers

from pacsguard.ids.capture import TCPReassembler, process_file, read_capture

pytestmark = pytest.mark.peers

STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
ADDR = "127.0.117.1"
PORT = 11112
BIG = 180_000  # above 65,535: BIG TCP

# rtnetlink RTM_NEWLINK on lo: IFLA_GSO_MAX_SIZE (41), IFLA_GRO_MAX_SIZE (58),
# IFLA_GSO_IPV4_MAX_SIZE (63), IFLA_GRO_IPV4_MAX_SIZE (64) (iproute2 6.1 has no words for the last two)
_BIG_TCP = f"""
import socket, struct
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
attrs = b"".join(struct.pack("=HHI", 8, t, {BIG}) for t in (41, 58, 63, 64))
body = struct.pack("=BxHiII", 0, 0, socket.if_nametoindex("lo"), 0, 0) + attrs
s.sendto(struct.pack("=IHHII", 16 + len(body), 16, 5, 1, 0) + body, (0, 0))
err = struct.unpack_from("=i", s.recv(4096), 16)[0]
raise SystemExit(f"netlink error {{err}}" if err else 0)
"""


def _ns(name: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", name, *args]


@pytest.fixture(scope="module")
def offload_netns() -> Iterator[str]:
    require_peers(["ip", "ethtool", "dumpcap", "tshark"], [STORESCU, STORESCP])
    name = f"pg-w7-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(_ns(name, "ip", "link", "set", "lo", "up"), check=True)
        subprocess.run(_ns(name, "ethtool", "-K", "lo", "tso", "on", "gso", "on"), check=True, capture_output=True)
        subprocess.run(_ns(name, sys.executable, "-c", _BIG_TCP), check=True, timeout=10)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _big_object(tmp: Path) -> Path:
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Rows = ds.Columns = 1024
    ds.PixelData = os.urandom(1024 * 1024 * 2)
    path = tmp / "big.dcm"
    ds.save_as(path)
    return path


def _wait_port(name: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        r = subprocess.run(_ns(name, "ss", "-ltnH", f"sport = :{PORT}"), capture_output=True, text=True)
        if r.stdout.strip():
            return
        time.sleep(0.1)
    raise AssertionError("storescp did not listen")


@pytest.fixture(scope="module")
def offload_capture(offload_netns: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("w7")
    obj = _big_object(tmp)
    out = tmp / "scp"
    out.mkdir()
    cap = tmp / "offload.pcapng"
    scp = subprocess.Popen(_ns(offload_netns, STORESCP, "--max-pdu", "131072", "-od", str(out), str(PORT)),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dump = subprocess.Popen(_ns(offload_netns, "timeout", "60", "dumpcap", "-q", "-i", "lo", "-B", "128",
                                "-f", f"tcp port {PORT}", "-w", str(cap)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_port(offload_netns)
        time.sleep(2.0)  # dumpcap announces itself well before the kernel hands it packets
        scu = [STORESCU, "--max-pdu", "131072", "-aet", "CT01", "-aec", "ARCHIVE", ADDR, str(PORT), str(obj)]
        r = subprocess.run(_ns(offload_netns, *scu), capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        time.sleep(1.0)
    finally:
        dump.terminate()
        _, err = dump.communicate(timeout=15)
        scp.terminate()
        scp.wait(timeout=15)
    assert "dropped" not in err or "/0 " in err, f"dumpcap lost frames: {err}"
    return cap


def _tso_frames(cap: Path) -> int:
    """Frames tshark reads as IPv4 "reported as 0, presumed to be because of TSO"."""
    out = subprocess.run(["tshark", "-r", str(cap), "-V"], capture_output=True, text=True, timeout=60).stdout
    return out.count("reported as 0, presumed to be because of")


def test_ipv4_length_zero_read_from_the_frame(offload_capture: Path) -> None:
    n = _tso_frames(offload_capture)
    assert n > 0, "the kernel produced no BIG TCP frame with total length 0"
    sizes = subprocess.run(["tshark", "-r", str(offload_capture), "-T", "fields", "-e", "frame.len"],
                           capture_output=True, text=True, timeout=60).stdout.split()
    assert max(int(x) for x in sizes) > 65_535  # packets above what an IPv4 length can say
    rec = Recorder()
    stats = read_capture(offload_capture, rec)
    assert "malformed-ipv4" not in stats.non_tcp
    assert stats.ip_length_from_frame == n
    assert stats.gaps == 0
    client = b"".join(b for b in rec.streams[(rec.conns[0].conn_id, True)] if isinstance(b, bytes))
    assert len(client) > 2 * 1024 * 1024  # the whole object reached the reassembled stream


def test_summary_says_how_many_and_the_association_is_whole(offload_capture: Path) -> None:
    exe = Path(sys.executable).parent / "pacsguard"
    r = subprocess.run([str(exe), "ids", "read", "--format", "json", str(offload_capture)],
                       capture_output=True, text=True, timeout=60, cwd=offload_capture.parent)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    summary = next(json.loads(line)["summary"] for line in r.stdout.splitlines() if '"summary"' in line)
    cap = summary["capture"]
    assert cap["ip_length_from_frame"] == _tso_frames(offload_capture)
    assert cap["complete"] and cap["gaps"] == 0
    sensor = summary["sensor"]
    assert sensor["associations"] == 1, sensor
    table = subprocess.run([str(exe), "ids", "read", str(offload_capture)], capture_output=True, text=True,
                           timeout=60, cwd=offload_capture.parent, env={**os.environ, "COLUMNS": "200"})
    assert "frames read with the length of the frame" in table.stdout



# ------------------------------------------------------------------ the edges, crafted


def _zero_length(pkts: list[tuple[int, bytes]], from_index: int) -> list[tuple[int, bytes]]:
    """*pkts* with the IP length of every packet from *from_index* on set to 0, as a capture on the
    sender shows it (IPv4 total length, RFC 791 3.1; IPv6 payload length, RFC 8200 3)."""
    out = pkts[:from_index]
    for ts, p in pkts[from_index:]:
        at = 2 if p[0] >> 4 == 4 else 4
        q = bytearray(p)
        q[at : at + 2] = b"\0\0"
        out.append((ts, bytes(q)))
    return out


@pytest.mark.parametrize("client", ["10.1.2.3", "fd00::3"])
def test_zero_length_data_segments_are_read_and_counted(client: str) -> None:
    f = Flow(client=client, server="10.1.2.4" if ":" not in client else "fd00::7")
    data = bytes(range(256)) * 40
    pkts = f.handshake() + _zero_length(f.send(True, data, mss=4000), 0) + f.send(False, b"ok") + f.fin()
    rec = Recorder()
    reasm = TCPReassembler(rec)
    process_file(pcap_bytes(eth_frames(pkts)), reasm)
    assert rec.data(0, True) == data and reasm.stats.gaps == 0
    assert reasm.stats.ip_length_from_frame == 3 and reasm.stats.non_tcp == {}


def test_a_zero_length_minimum_frame_is_not_read_from_its_padding() -> None:
    """A 60-byte Ethernet frame (the minimum, IEEE 802.3 4.2.3.3) ends in padding: with a total
    length of 0 its six padding bytes are no payload; it stays malformed-ipv4."""
    f = Flow()
    pkts = f.handshake()
    ack = pkts[-1]
    pkts += _zero_length([ack], 0)  # a bare ACK (54 bytes, padded to 60) with total length 0
    rec = Recorder()
    reasm = TCPReassembler(rec)
    process_file(pcap_bytes(eth_frames(pkts)), reasm)
    assert reasm.stats.non_tcp == {"malformed-ipv4": 1} and reasm.stats.ip_length_from_frame == 0
