"""Outside tester, round 9: the passive IDS over captures the way real networks give them.

* IPv6 extension headers (RFC 8200 4): Linux walks any number of routing and destination options
  headers to reach TCP, reads hop-by-hop only right after the fixed header, and drops a packet
  whose next header is anything else it does not know (mobility, HIP, shim6).  The sensor reads
  the same segments: it stopped after 8 headers (the PACS read what the sensor lost: an evasion)
  and skipped headers Linux refuses (the sensor read what the PACS never did).  The reference is
  a real Linux kernel, asked in a network namespace of its own.
* Duplicate frames (a capture on two interfaces, a SPAN port copying both directions, mergecap of
  two capture points whose clocks differ): a copy of delivered data arriving after newer segments
  carries an older TCP timestamp.  It is a retransmission the receiver already read, not a
  PAWS evasion (RFC 7323 5): no ``tcp-paws-old-timestamp`` anomaly for it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from capture_craft import Flow, eth_frames, pcap_bytes
from test_capture_evasion import read
from test_round6_stream import ACK, PSH, REAL, Conv
from test_sensor import rq

PACSGUARD = str(Path(sys.executable).with_name("pacsguard"))
HOST = "127.0.102.7"  # this tester's loopback range (127.0.102.x)
TOOL_AE = "ids.alert.dicom-tool-default-ae-title"


def ids_read(path: Path) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    """`pacsguard ids read --format json`: exit code, events, summary."""
    r = subprocess.run([PACSGUARD, "ids", "read", "--format", "json", str(path)], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert "Traceback" not in r.stderr, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert lines and "summary" in lines[-1], r.stdout[-2000:] + r.stderr
    return r.returncode, lines[:-1], lines[-1]["summary"]


# ------------------------------------------------------------------ IPv6 extension headers


def with_headers(packet: bytes, chain: list[int]) -> bytes:
    """``packet`` (IPv6 + TCP) with extension headers of the given types between the fixed header
    and TCP, each 8 octets long (a PadN option inside)."""
    fixed, tcp = packet[:40], packet[40:]
    ext = b""
    for i, _nh in enumerate(chain):
        following = chain[i + 1] if i + 1 < len(chain) else 6
        ext += bytes([following, 0]) + b"\x01\x04\x00\x00\x00\x00"
    first = chain[0] if chain else 6
    return struct.pack("!IHBB", 0x60000000, len(ext) + len(tcp), first, 64) + fixed[8:40] + ext + tcp


_KERNEL_CHECK = r"""
import socket, struct, sys, time, dpkt
chain = [int(x) for x in sys.argv[1].split(",")]
lst = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
lst.bind(("::1", 5555)); lst.listen(5)
a = socket.inet_pton(socket.AF_INET6, "::1")
seg = dpkt.tcp.TCP(sport=40000, dport=5555, seq=1000, flags=dpkt.tcp.TH_SYN, win=65535)
tcp = bytes(dpkt.ip6.IP6(src=a, dst=a, nxt=6, hlim=64, plen=len(bytes(seg)), data=seg))[40:]
ext = b""
for i, _ in enumerate(chain):
    ext += bytes([chain[i + 1] if i + 1 < len(chain) else 6, 0]) + b"\x01\x04\x00\x00\x00\x00"
pkt = struct.pack("!IHBB", 0x60000000, len(ext) + len(tcp), chain[0], 64) + a + a + ext + tcp
def in_segs():
    lines = [l.split() for l in open("/proc/net/snmp") if l.startswith("Tcp:")]
    return int(lines[1][lines[0].index("InSegs")])
before = in_segs()
socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW).sendto(pkt, ("::1", 0))
time.sleep(0.2)
print("delivered" if in_segs() > before else "dropped")
"""


def linux_delivers(chain: list[int]) -> bool:
    """Does a real Linux kernel hand a SYN behind these extension headers to TCP?  Asked in a
    network namespace of its own (its own ::1), so nothing outside sees the packet."""
    unshare = shutil.which("unshare")
    assert unshare is not None, "unshare (util-linux) is needed for the kernel reference"
    r = subprocess.run([unshare, "-n", "sh", "-c", 'ip link set lo up && exec "$0" -c "$1" "$2"', sys.executable,
                        _KERNEL_CHECK, ",".join(map(str, chain))], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0 and r.stdout.strip() in ("delivered", "dropped"), r.stdout + r.stderr
    return r.stdout.strip() == "delivered"


def v6_association(chain: list[int]) -> list[tuple[int, bytes]]:
    """An IPv6 connection to a PACS whose A-ASSOCIATE-RQ (calling AE ANY-SCP, nmap's) travels
    behind the extension headers ``chain``."""
    f = Flow(client="2001:db8::10", server="2001:db8::20", sport=104)
    pkts = f.handshake()
    (ts, seg), = f.send(True, rq("ANY-SCP", "PACS"), mss=4000)
    pkts.append((ts, with_headers(seg, chain)))
    return pkts + f.fin()


#: The longest chain of extension headers every Linux delivers. Linux through 6.x walked any
#: number; a newer kernel (seen: 6.18) drops a packet with more than 12. The sensor walks any
#: number, as the older kernels do: an attack behind a long chain to an older PACS is read, and a
#: decoy behind one that a newer PACS drops is answered by the real bytes, which the sensor
#: reports as a retransmission with different data (test below).
EVERY_LINUX_READS = 12


@pytest.mark.parametrize("chain", [[60] * 9, [60] * 20, [0] + [60] * 12], ids=["9-dstopts", "20-dstopts",
                                                                         "hbh-then-12"])
def test_tcp_behind_more_than_eight_extension_headers_is_read_as_linux_reads_it(tmp_path: Path,
                                                                                chain: list[int]) -> None:
    if len(chain) <= EVERY_LINUX_READS:
        assert linux_delivers(chain), "the kernel reference changed: Linux no longer reads this packet"
    rec, reasm = read(v6_association(chain))
    assert rec.data(0, True) == rq("ANY-SCP", "PACS") and reasm.stats.non_tcp == {}
    cap = tmp_path / "v6.pcap"
    cap.write_bytes(pcap_bytes(eth_frames(v6_association(chain))))
    code, events, summary = ids_read(cap)
    assert TOOL_AE in [e["kind"] for e in events]  # (and cleartext-from-external: 2001:db8::/32)
    assert code == 1 and summary["capture"]["complete"] and summary["capture"]["gaps"] == 0


def test_a_decoy_behind_a_chain_a_newer_linux_drops_is_reported_when_the_real_bytes_follow() -> None:
    """13 extension headers: Linux 6.18 drops the packet, older kernels read it. The sensor reads
    it, so the real bytes sent after it at the same sequence number are a retransmission whose
    data differs: reported, never silent."""
    chain = [60] * (EVERY_LINUX_READS + 1)
    f = Flow(client="2001:db8::10", server="2001:db8::20", sport=104)
    real, decoy = rq("WS1", "PACS"), rq("ANY-SCP", "PACS")
    pkts = f.handshake()
    seq = f.cseq
    (ts, seg), = f.send(True, decoy, mss=4000)
    pkts.append((ts, with_headers(seg, chain)))
    f.cseq = seq
    pkts += f.send(True, real, mss=4000) + f.fin()
    rec, reasm = read(pkts)
    assert reasm.stats.non_tcp == {}
    assert "tcp-retransmission-different-data" in [a.what for a in rec.anomalies], rec.anomalies


@pytest.mark.parametrize("chain", [[60, 0], [60, 135], [60, 139], [60, 140]],
                         ids=["late-hop-by-hop", "mobility", "hip", "shim6"])
def test_a_segment_linux_drops_for_its_extension_headers_is_not_read(chain: list[int]) -> None:
    """A decoy behind headers Linux refuses, then the real bytes: the sensor reads the real ones."""
    assert not linux_delivers(chain), "the kernel reference changed: Linux now reads this packet"
    f = Flow(client="2001:db8::10", server="2001:db8::20", sport=104)
    real = rq("WS1", "PACS")
    decoy = rq("ANY-SCP", "PACS")
    assert len(real) == len(decoy)
    pkts = f.handshake()
    seq = f.cseq
    (ts, seg), = f.send(True, decoy, mss=4000)
    pkts.append((ts, with_headers(seg, chain)))  # what the PACS never sees
    f.cseq = seq
    pkts += f.send(True, real, mss=4000) + f.fin()
    rec, reasm = read(pkts)
    assert rec.data(0, True) == real
    assert reasm.stats.non_tcp == {f"ipv6-proto-{chain[-1]}": 1}
    assert not rec.anomalies  # no retransmission either: the decoy never reached TCP


def test_a_fragmented_datagram_behind_a_mobility_header_is_not_tcp() -> None:
    """The same rule after reassembly (RFC 8200 4.5): Linux resubmits the reassembled datagram
    to the same protocol table, which does not know 135."""
    f = Flow(client="2001:db8::10", server="2001:db8::20", sport=104)
    pkts = f.handshake()
    (ts, seg), = f.send(True, rq("ANY-SCP", "PACS"), mss=4000)
    fixed, tcp = seg[:40], seg[40:]
    mobility = bytes([6, 0]) + bytes(6)  # a "mobility header" whose next header is TCP
    payload = mobility + tcp
    cut = 48  # first fragment: 48 octets (a multiple of 8)
    frags = []
    for off, part, more in ((0, payload[:cut], 1), (cut, payload[cut:], 0)):
        fh = struct.pack("!BBHI", 135, 0, off | more, 0xABCD)
        frags.append((ts, struct.pack("!IHBB", 0x60000000, len(fh) + len(part), 44, 64) + fixed[8:40] + fh + part))
    rec, reasm = read(pkts + frags + f.fin())
    assert rec.data(0, True) == b"" and reasm.stats.non_tcp == {"ipv6-fragmented-proto-135": 1}


# ------------------------------------------------------------------ duplicates and PAWS


def test_a_late_duplicate_of_delivered_data_is_a_retransmission_not_a_paws_evasion() -> None:
    c = Conv(timestamps=True)
    c.handshake()
    first = c.cseq
    c.send(True, REAL[:500], mss=500)  # tsval 1004
    c.send(True, REAL[500:], mss=100)  # six newer timestamps
    c.put(True, first, ACK | PSH, REAL[:500], tsval=1004)  # the same frame, seen again later
    c.fin()
    rec, reasm = read(c.pcap())
    assert rec.data(0, True) == REAL
    assert not rec.anomalies, [(a.what, a.detail) for a in rec.anomalies]
    assert reasm.stats.retransmissions >= 1


def test_old_timestamps_on_new_data_are_still_discarded_and_reported() -> None:
    """What the PAWS check is for stays: new data under an old timestamp (RFC 7323 5)."""
    c = Conv(timestamps=True)
    c.handshake()
    c.send(True, REAL[:500], mss=500)
    c.put(True, c.cseq - 100, ACK | PSH, b"X" * 100 + REAL[500:600], tsval=5)  # half old, half new
    c.send(True, REAL[500:], mss=1000)
    c.fin()
    rec, _ = read(c.pcap())
    assert rec.data(0, True) == REAL
    assert [a.what for a in rec.anomalies] == ["tcp-paws-old-timestamp"]


def _echo_traffic(port: int, echoes: int, gap: float) -> None:
    """One pynetdicom association to a pynetdicom SCP: ``echoes`` C-ECHOs ``gap`` seconds apart."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    scp = AE(ae_title="PACS")
    scp.add_supported_context(Verification)
    server = scp.start_server((HOST, port), block=False)
    try:
        scu = AE(ae_title="WS1")
        scu.add_requested_context(Verification)
        assoc = scu.associate(HOST, port, ae_title="PACS")
        assert assoc.is_established
        for _ in range(echoes):
            assert assoc.send_c_echo().Status == 0
            time.sleep(gap)
        assoc.release()
    finally:
        server.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def test_a_capture_merged_from_two_capture_points_gives_no_evasion_anomaly(tmp_path: Path) -> None:
    """A real capture (dumpcap on lo around pynetdicom), merged with mergecap with a copy of itself
    whose clock is 100 ms late, as two capture points give: the same associations and alerts as
    the capture alone, every copy a retransmission, no anomaly."""
    for tool in ("dumpcap", "editcap", "mergecap"):
        assert shutil.which(tool), f"{tool} (wireshark-common) is needed"
    port = _free_port()
    cap = tmp_path / "lo.pcapng"
    dumpcap = subprocess.Popen(["dumpcap", "-i", "lo", "-f", f"host {HOST} and tcp port {port}", "-a", "duration:40",
                                "-w", str(cap)], stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert dumpcap.stderr is not None
        line = dumpcap.stderr.readline()
        assert "Capturing on" in line, line
        time.sleep(0.5)  # dumpcap says so before its socket takes packets; on a busy machine it is late
        _echo_traffic(port, echoes=10, gap=0.03)
        time.sleep(1.0)  # and it writes what it took a little after
    finally:
        os.killpg(dumpcap.pid, signal.SIGINT)
        dumpcap.wait(timeout=10)
    late = tmp_path / "late.pcapng"
    merged = tmp_path / "merged.pcapng"
    subprocess.run(["editcap", "-t", "0.1", str(cap), str(late)], check=True, capture_output=True, timeout=30)
    subprocess.run(["mergecap", "-w", str(merged), str(cap), str(late)], check=True, capture_output=True, timeout=30)

    code, events, summary = ids_read(cap)
    assert summary["capture"]["anomalies"] == {} and summary["sensor"]["commands"]["C-ECHO-RQ"] == 10
    code2, events2, summary2 = ids_read(merged)
    assert summary2["capture"]["anomalies"] == {}, [e["message"] for e in events2 if "anomaly" in e["kind"]][:3]
    assert code2 == code and summary2["capture"]["complete"]
    assert summary2["sensor"]["commands"] == summary["sensor"]["commands"]
    assert summary2["sensor"]["results"] == summary["sensor"]["results"] == {"released": 1}
    assert summary2["capture"]["retransmissions"] >= summary["capture"]["packets"] // 2
    assert sorted(e["kind"] for e in events2) == sorted(e["kind"] for e in events)

