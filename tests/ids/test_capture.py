"""pacsguard.ids.capture on crafted captures: formats, link types, reassembly cases, damage, fuzz."""

from __future__ import annotations

import gzip
import os
import random
import struct
import sys
from pathlib import Path

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# the helper module sits next to this file, whether or not tests/ids is a package
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from capture_craft import (
    ACK,
    PSH,
    SYN,
    Flow,
    Recorder,
    arp_frame,
    eth_frames,
    ether,
    loop_hdr,
    ng_epb,
    ng_idb,
    ng_shb,
    ng_spb,
    null_hdr,
    pcap_bytes,
    pcapng_bytes,
    sll,
    sll2,
    tcp_ip,
    udp_ip,
)

from pacsguard.ids.capture import (
    CaptureError,
    CaptureStats,
    NullConsumer,
    TCPReassembler,
    iter_frames,
    read_capture,
)
from pacsguard.ids.capture.reader import process_file

REQ = bytes(range(256)) * 40  # 10240 bytes client -> server
RSP = b"response-" * 500  # 4500 bytes server -> client


def conversation(flow: Flow | None = None, mss: int = 1000) -> tuple[Flow, list[tuple[int, bytes]]]:
    """Handshake, request, response, FIN/FIN/ACK."""
    f = flow or Flow()
    pkts = f.handshake() + f.send(True, REQ, mss) + f.send(False, RSP, mss) + f.fin()
    return f, pkts


def read(data: bytes, **kw: object) -> tuple[Recorder, CaptureStats]:
    rec = Recorder()
    stats = read_capture(data, rec, **kw)  # type: ignore[arg-type]
    return rec, stats


def assert_clean_conversation(rec: Recorder, stats: CaptureStats, *, reason: str = "fin") -> None:
    assert len(rec.conns) == 1, rec.events
    conn = rec.conns[0]
    assert rec.pieces(0, True) == [REQ]
    assert rec.pieces(0, False) == [RSP]
    assert rec.closed == {0: reason}
    assert stats.gaps == 0 and stats.problem_count == 0, (stats.gaps, stats.problems)
    assert conn.client_bytes == len(REQ) and conn.server_bytes == len(RSP)
    assert not conn.midstream


# ------------------------------------------------------------------ formats and link types


def test_in_order_ipv4_pcap() -> None:
    f, pkts = conversation()
    rec, stats = read(pcap_bytes(eth_frames(pkts)))
    assert_clean_conversation(rec, stats)
    conn = rec.conns[0]
    assert (conn.client_ip, conn.client_port, conn.server_ip, conn.server_port) == ("10.1.2.3", 40001, "10.9.8.7", 104)
    assert conn.ip_version == 4
    # SYN, ACK, 11 data, FIN; the last ACK comes after the close and counts as a late packet
    assert conn.client_packets == 2 + 11 + 1 and conn.server_packets == 1 + 5 + 1
    assert stats.late_packets == 1
    assert conn.first_ts_us == pkts[0][0] and conn.last_ts_us == pkts[-2][0]
    assert stats.packets == len(pkts) and stats.flows == 1
    assert stats.first_ts_us == pkts[0][0] and stats.last_ts_us == pkts[-1][0]
    assert stats.payload_bytes == len(REQ) + len(RSP)
    assert stats.retransmissions == stats.out_of_order == stats.overlaps == 0
    # data is delivered with the timestamp of the packet that carried it, in capture order
    assert rec.data_ts == sorted(rec.data_ts) and rec.data_ts[0] == pkts[3][0]


def test_consumer_receives_zero_copy_views_of_the_file(tmp_path: Path) -> None:
    _, pkts = conversation()
    p = tmp_path / "c.pcap"
    p.write_bytes(pcap_bytes(eth_frames(pkts)))
    kinds: set[type] = set()

    class Kinds(NullConsumer):
        def on_data(self, conn, from_client, data, ts_us):  # type: ignore[no-untyped-def]
            kinds.add(type(data))

    read_capture(p, Kinds())
    assert kinds == {memoryview}


def test_consumer_may_keep_views_past_the_call(tmp_path: Path) -> None:
    """Views kept against the contract still read correctly; closing the mapping must not fail."""
    _, pkts = conversation()
    p = tmp_path / "c.pcap"
    p.write_bytes(pcap_bytes(eth_frames(pkts)))
    kept: list[memoryview] = []

    class Keeper(NullConsumer):
        def on_data(self, conn, from_client, data, ts_us):  # type: ignore[no-untyped-def]
            if from_client:
                kept.append(data)

    read_capture(p, Keeper())
    assert b"".join(bytes(v) for v in kept) == REQ


@pytest.mark.parametrize("nano", [False, True])
@pytest.mark.parametrize("big_endian", [False, True])
def test_pcap_byte_orders_and_resolutions(nano: bool, big_endian: bool) -> None:
    _, pkts = conversation()
    rec, stats = read(pcap_bytes(eth_frames(pkts), nano=nano, big_endian=big_endian))
    assert_clean_conversation(rec, stats)
    assert stats.first_ts_us == pkts[0][0]  # ns -> µs, extra nanoseconds dropped


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("tsresol", [None, 6, 9, 3 | 0x80 | 7])
def test_pcapng_endians_and_tsresol(big_endian: bool, tsresol: int | None) -> None:
    _, pkts = conversation()
    data = pcapng_bytes(eth_frames(pkts), tsresol=tsresol, big_endian=big_endian, extra_blocks=True)
    rec, stats = read(data)
    assert_clean_conversation(rec, stats)
    assert stats.skipped_blocks == 3  # NRB, custom, ISB
    if tsresol in (None, 6, 9):
        assert stats.first_ts_us == pkts[0][0] and stats.last_ts_us == pkts[-1][0]
    else:  # 2**-10 s ticks: within one tick
        assert abs(stats.first_ts_us - pkts[0][0]) <= 1000


def test_pcapng_written_by_hand_reads_like_dpkt() -> None:
    """The test writer itself is sound: dpkt reads the same frames and timestamps."""
    _, pkts = conversation()
    frames = eth_frames(pkts)
    data = pcapng_bytes(frames, tsresol=9)
    import io

    theirs = [(round(ts * 1e6), bytes(b)) for ts, b in dpkt.pcapng.Reader(io.BytesIO(data))]
    ours = [(ts, bytes(fr)) for ts, lt, fr in iter_frames(data)]
    assert ours == theirs == [(ts, fr) for ts, fr in frames]


def test_pcapng_ns_timestamps_and_tsoffset() -> None:
    e = "<"
    _, pkts = conversation()
    blocks = [ng_shb(e), ng_idb(e, 1, tsresol=9, tsoffset=10)]
    for ts, p in pkts:
        blocks.append(ng_epb(e, 0, ts * 1000 + 999, ether(p)))
    stats = read_capture(b"".join(blocks), NullConsumer())
    assert stats.first_ts_us == pkts[0][0] + 10_000_000


def test_pcapng_two_sections_two_interfaces_spb() -> None:
    """Section 1 (big-endian): Ethernet; section 2 (little-endian): interface 0 raw IP (EPBs and
    SPBs), interface 1 SLL2; interface ids restart in each section."""
    f1, pkts1 = conversation(Flow(cport=40001))
    f2, pkts2 = conversation(Flow(cport=40002))
    f3, pkts3 = conversation(Flow(cport=40003))
    out = [ng_shb(">"), ng_idb(">", 1)]
    out += [ng_epb(">", 0, ts, ether(p)) for ts, p in pkts1]
    out += [ng_shb("<"), ng_idb("<", 101), ng_idb("<", 276)]
    out += [ng_epb("<", 1, ts, sll2(p)) for ts, p in pkts2]
    # a simple packet block belongs to interface 0 and has no timestamp
    out += [ng_spb("<", p) if i % 2 else ng_epb("<", 0, ts, p) for i, (ts, p) in enumerate(pkts3)]
    rec, stats = read(b"".join(out))
    assert [c.client_port for c in rec.conns] == [40001, 40002, 40003]
    for i in range(3):
        assert rec.pieces(i, True) == [REQ] and rec.pieces(i, False) == [RSP]
    assert stats.gaps == 0 and stats.problem_count == 0


LINK = {
    "ethernet": (1, ether),
    "ethernet-vlan": (1, lambda p: ether(p, vlans=(100,))),
    "ethernet-qinq": (1, lambda p: ether(p, vlans=(7, 100))),
    "raw": (101, lambda p: p),
    "ipv4/ipv6 (228/229)": (228, lambda p: p),
    "sll": (113, sll),
    "sll2": (276, sll2),
    "null-le": (0, null_hdr),
    "null-be": (0, lambda p: null_hdr(p, big_endian=True)),
    "loop": (108, loop_hdr),
}


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("link", sorted(LINK))
def test_link_types(link: str, ipv6: bool) -> None:
    lt, wrap = LINK[link]
    flow = Flow(client="2001:db8::1", server="2001:db8::2") if ipv6 else Flow()
    _, pkts = conversation(flow)
    frames = [(ts, wrap(p)) for ts, p in pkts]
    rec, stats = read(pcap_bytes(frames, linktype=lt if not (ipv6 and lt == 228) else 229))
    assert_clean_conversation(rec, stats)
    assert rec.conns[0].ip_version == (6 if ipv6 else 4)
    if ipv6:
        assert rec.conns[0].client_ip == "2001:db8::1"


def test_ipv6_extension_header_vlan_pcapng_ns() -> None:
    f = Flow(client="fd00::10", server="fd00::20")
    pkts = f.handshake()
    body = f.send(True, REQ, 1200)
    # the request segments carry a hop-by-hop options header
    ext = []
    seq = f.cisn + 1
    for ts, _p in body:
        chunk = REQ[seq - f.cisn - 1 : seq - f.cisn - 1 + 1200]
        ext.append((ts, tcp_ip(f.client, f.server, f.cport, f.sport, seq, ACK | PSH, chunk, f.sseq, ipv6_ext=True)))
        seq += len(chunk)
    pkts += ext + f.send(False, RSP, 1200) + f.fin()
    data = pcapng_bytes(eth_frames(pkts, vlans=(42,)), tsresol=9)
    rec, stats = read(data)
    assert_clean_conversation(rec, stats)


def test_ipv4_options_header() -> None:
    f = Flow()
    pkts = f.handshake()
    opts = b"\x01\x01\x01\x00"  # NOP NOP NOP EOL
    seq = f.cseq
    for i in range(0, len(REQ), 1000):
        pkts.append((f.ts + i, tcp_ip(f.client, f.server, f.cport, f.sport, seq, ACK, REQ[i : i + 1000], f.sseq,
                                      ip_options=opts)))
        seq += len(REQ[i : i + 1000])
    f.cseq = seq
    pkts += f.send(False, RSP) + f.fin()
    rec, stats = read(pcap_bytes(eth_frames(pkts)))
    assert_clean_conversation(rec, stats)


def icmp_ip(frag: int) -> bytes:
    ip = dpkt.ip.IP(src=b"\x0a\x00\x00\x01", dst=b"\x0a\x00\x00\x02", p=1,
                    data=dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo(id=1, seq=1, data=b"ping")))
    ip.len = len(bytes(ip))
    raw = bytearray(bytes(ip))
    struct.pack_into("!H", raw, 6, frag)  # flags / fragment offset
    return bytes(raw)


def test_non_tcp_counted_and_skipped() -> None:
    f, pkts = conversation()
    frames = eth_frames(pkts)
    extra = [
        ether(udp_ip("10.0.0.1", "10.0.0.2", 5353, 5353)),
        ether(udp_ip("10.0.0.1", "10.0.0.2", 5353, 5353)),
        arp_frame(),
        ether(icmp_ip(frag=0x2000)),  # an ICMP first fragment (MF)
        ether(icmp_ip(frag=0x4000)),  # an ICMP echo, DF
        ether(b"\x00" * 40, ethertype=0x88CC),  # LLDP
    ]
    # IPv4 fragment (MF set) carrying TCP, and an IPv6 fragment
    frag = bytearray(tcp_ip("10.0.0.1", "10.0.0.2", 1, 2, 0, ACK, b"x" * 16))
    frag[6] |= 0x20
    extra.append(ether(bytes(frag)))
    v6 = bytearray(tcp_ip("fd00::1", "fd00::2", 1, 2, 0, ACK, b"y" * 8))
    fraghdr = bytes([6, 0, 0, 1, 0, 0, 0, 1])
    v6frag = bytes(v6[:6]) + bytes([44]) + bytes(v6[7:40]) + fraghdr + bytes(v6[40:])
    v6frag = v6frag[:4] + struct.pack("!H", len(v6frag) - 40) + v6frag[6:]
    extra.append(ether(v6frag))
    ts0 = frames[0][0]
    mixed = frames[:3] + [(ts0 + 1, x) for x in extra] + frames[3:]
    rec, stats = read(pcap_bytes(mixed))
    assert_clean_conversation(rec, stats)
    assert stats.non_tcp["ipv4-udp"] == 2
    assert stats.non_tcp["arp"] == 1
    assert stats.non_tcp["lldp"] == 1
    assert stats.non_tcp["ipv4-icmp"] == 1
    assert stats.ip_fragments == 3
    assert stats.packets == len(mixed)


def test_unsupported_link_type_counted() -> None:
    _, pkts = conversation()
    stats = read_capture(pcap_bytes(eth_frames(pkts), linktype=147), NullConsumer())
    assert stats.non_tcp == {"linktype-147": len(pkts)} and stats.flows == 0


# ------------------------------------------------------------------ reassembly cases


def test_out_of_order() -> None:
    f = Flow()
    pkts = f.handshake()
    data = f.send(True, REQ, 500)
    rng = random.Random(4)
    shuffled = data[:]
    rng.shuffle(shuffled)
    pkts += shuffled + f.send(False, RSP) + f.fin()
    rec, stats = read(pcap_bytes(eth_frames(pkts)))
    assert_clean_conversation(rec, stats)
    assert stats.out_of_order > 0


def test_retransmissions_dropped() -> None:
    f = Flow()
    pkts = f.handshake()
    data = f.send(True, REQ, 1000)
    with_dups = []
    for i, p in enumerate(data):
        with_dups.append(p)
        if i % 3 == 0:
            with_dups.append(p)
    pkts += [pkts[0]]  # a repeated SYN
    pkts += with_dups + data[:2] + f.send(False, RSP) + f.fin()
    rec, stats = read(pcap_bytes(eth_frames(pkts)))
    assert_clean_conversation(rec, stats)
    assert stats.retransmissions == len(range(0, len(data), 3)) + 2 + 1


def test_partial_overlaps_trimmed() -> None:
    f = Flow()
    pkts = f.handshake()
    base = f.cseq
    # segments with shifting boundaries that overlap what came before, some arriving early
    cuts = [(0, 700), (500, 1800), (1800, 2600), (3000, 4000), (2400, 3200), (3900, 6000), (5000, len(REQ))]
    for a, b in cuts:
        pkts.append(f.segment_at(True, base + a, REQ[a:b]))
    f.cseq = base + len(REQ)
    pkts += f.send(False, RSP) + f.fin()
    rec, stats = read(pcap_bytes(eth_frames(pkts)))
    assert_clean_conversation(rec, stats)
    assert stats.overlaps >= 3 and stats.out_of_order >= 1


def test_lost_segment_reported_as_gap_at_fin() -> None:
    f = Flow()
    pkts = f.handshake()
    data = f.send(True, REQ, 1000)
    lost = data.pop(4)  # bytes 4000..4999
    assert lost
    pkts += data + f.send(False, RSP) + f.fin()
    rec, stats = read(pcap_bytes(eth_frames(pkts)))
    assert rec.pieces(0, True) == [REQ[:4000], ("gap", 1000), REQ[5000:]]
    assert rec.pieces(0, False) == [RSP]
    assert stats.gaps == 1 and stats.gap_bytes == 1000
    assert rec.conns[0].client_gap_bytes == 1000 and rec.conns[0].client_bytes == len(REQ) - 1000
    assert rec.closed == {0: "fin"}
    # the gap is reported before the close
    assert rec.events.index(("gap", 0, True, 1000)) < rec.events.index(("close", 0, "fin"))


def test_gap_skipped_when_flow_buffer_full() -> None:
    f = Flow()
    pkts = f.handshake()
    data = f.send(True, REQ * 10, 1000)  # 102400 bytes
    del data[2]
    pkts += data  # no FIN: the buffer limit must trigger the skip
    rec = Recorder()
    reasm = TCPReassembler(rec, max_buffer_per_flow=8000)
    process_file(pcap_bytes(eth_frames(pkts)), reasm)
    events = [e for e in rec.events if e[0] == "gap"]
    assert events == [("gap", 0, True, 1000)]
    assert rec.pieces(0, True) == [(REQ * 10)[:2000], ("gap", 1000), (REQ * 10)[3000:]]
    assert reasm.stats.max_buffered_bytes <= 9000


def test_global_buffer_limit() -> None:
    flows = [Flow(cport=41000 + i) for i in range(4)]
    pkts: list[tuple[int, bytes]] = []
    per_flow: list[list[tuple[int, bytes]]] = []
    for f in flows:
        pkts += f.handshake()
        d = f.send(True, REQ, 1000)
        del d[0]
        per_flow.append(d)
    for group in zip(*per_flow, strict=True):  # every flow sends the same request in the same segments
        pkts += list(group)
    rec = Recorder()
    reasm = TCPReassembler(rec, max_buffer_total=20000, max_buffer_per_flow=1 << 20)
    process_file(pcap_bytes(eth_frames(pkts)), reasm)
    assert reasm.stats.max_buffered_bytes <= 21000
    for i in range(4):
        assert rec.pieces(i, True) == [("gap", 1000), REQ[1000:]]


def test_lost_last_segment_before_fin() -> None:
    f = Flow()
    pkts = f.handshake()
    data = f.send(True, REQ, 1000)
    data.pop()  # the last 240 bytes never seen, the FIN tells they existed
    pkts += data + f.send(False, RSP) + f.fin()
    rec, stats = read(pcap_bytes(eth_frames(pkts)))
    tail = len(REQ) % 1000
    assert rec.pieces(0, True) == [REQ[:-tail], ("gap", tail)]
    assert stats.gap_bytes == tail


def test_snaplen_cut_payload_becomes_gap() -> None:
    f = Flow()
    pkts = f.handshake() + f.send(True, REQ, 1000) + f.send(False, RSP) + f.fin()
    frames = eth_frames(pkts)
    cut = {5: 14 + 20 + 20 + 100}  # third request segment: only 100 payload bytes captured
    rec, stats = read(pcap_bytes(frames, caplens=cut, snaplen=4000))
    assert rec.pieces(0, True) == [REQ[:2100], ("gap", 900), REQ[3000:]]


def test_midstream_start() -> None:
    f = Flow()
    f.handshake()  # not captured
    pkts = f.send(True, REQ, 1000)[3:] + f.send(False, RSP) + f.fin()
    rec, stats = read(pcap_bytes(eth_frames(pkts)))
    conn = rec.conns[0]
    assert conn.midstream
    assert conn.client_port == 40001
    assert rec.pieces(0, True) == [REQ[3000:]]
    assert rec.pieces(0, False) == [RSP]
    assert rec.closed == {0: "fin"} and stats.gaps == 0


def test_midstream_server_first_and_server_ports() -> None:
    f = Flow()
    f.handshake()
    f.send(True, REQ)
    pkts = f.send(False, RSP, 1000)[1:] + f.fin()
    rec, _ = read(pcap_bytes(eth_frames(pkts)))
    assert rec.conns[0].client_port == 104  # no hint: the first sender is taken as client
    rec, _ = read(pcap_bytes(eth_frames(pkts)), server_ports={104})
    assert rec.conns[0].client_port == 40001 and rec.conns[0].server_port == 104
    assert rec.pieces(0, False) == [RSP[1000:]]


def test_syn_ack_first_when_syn_missed() -> None:
    f = Flow()
    pkts = f.handshake()[1:] + f.send(True, REQ) + f.send(False, RSP) + f.fin()
    rec, stats = read(pcap_bytes(eth_frames(pkts)))
    assert_clean_conversation(rec, stats)


@pytest.mark.parametrize("isn_back", [1, 700, 5000])
def test_sequence_wraparound(isn_back: int) -> None:
    f = Flow(cisn=(1 << 32) - isn_back, sisn=(1 << 32) - 2)
    pkts = f.handshake()
    data = f.send(True, REQ, 600)
    rng = random.Random(isn_back)
    for i in range(0, len(data) - 1, 2):  # swap neighbours: out of order across the wrap
        if rng.random() < 0.5:
            data[i], data[i + 1] = data[i + 1], data[i]
    pkts += data + data[3:5] + f.send(False, RSP, 700) + f.fin()
    rec, stats = read(pcap_bytes(eth_frames(pkts)))
    assert_clean_conversation(rec, stats)
    assert stats.retransmissions == 2


def test_rst_closes_and_late_packets_absorbed() -> None:
    f = Flow()
    pkts = f.handshake() + f.send(True, REQ, 1000)
    late = pkts[-1]
    pkts += [f.rst(from_client=False), late, f.segment_at(False, f.sseq, b"")]
    rec, stats = read(pcap_bytes(eth_frames(pkts)))
    assert rec.closed == {0: "rst"}
    assert rec.pieces(0, True) == [REQ]
    assert stats.late_packets == 2 and stats.flows == 1


def test_port_reuse_after_close_is_a_new_connection() -> None:
    _, pkts1 = conversation(Flow(cisn=1000))
    f2 = Flow(cisn=900_000, ts=pkts1[-1][0] + 1000)
    _, pkts2 = conversation(f2)
    rec, stats = read(pcap_bytes(eth_frames(pkts1 + pkts2)))
    assert stats.flows == 2
    assert rec.closed == {0: "fin", 1: "fin"}
    for i in range(2):
        assert rec.pieces(i, True) == [REQ] and rec.pieces(i, False) == [RSP]


def test_new_syn_on_open_connection_replaces_it() -> None:
    f1 = Flow(cisn=1000)
    pkts = f1.handshake() + f1.send(True, b"abc")
    f2 = Flow(cisn=777_777, ts=f1.ts + 10)
    pkts += f2.handshake() + f2.send(True, b"xyz") + f2.fin()
    rec, _ = read(pcap_bytes(eth_frames(pkts)))
    assert rec.closed == {0: "reused", 1: "fin"}
    assert rec.data(0, True) == b"abc" and rec.data(1, True) == b"xyz"


def test_many_short_flows_evicted_memory_bounded() -> None:
    n = 600
    flows = [Flow(cport=20000 + i, ts=1_000_000_000 + i) for i in range(n)]
    pkts: list[tuple[int, bytes]] = []
    # no FIN: connections stay open until evicted; interleave two packets per flow
    for f in flows:
        pkts += f.send(True, f"hello {f.cport}".encode())
    for f in flows:
        pkts += f.send(False, f"bye {f.cport}".encode())
    pkts.sort(key=lambda x: x[0])
    rec = Recorder()
    # server_ports: a flow evicted and seen again from its server side keeps its direction
    reasm = TCPReassembler(rec, max_flows=16, server_ports={104})
    peak_keys = 0

    orig_open = rec.on_open

    def on_open(conn):  # type: ignore[no-untyped-def]
        nonlocal peak_keys
        peak_keys = max(peak_keys, len(reasm.flows))
        orig_open(conn)

    rec.on_open = on_open  # type: ignore[method-assign]
    stats = process_file(pcap_bytes(eth_frames(pkts)), reasm)
    assert stats.max_concurrent_flows <= 16
    assert stats.evicted >= n - 16
    assert peak_keys <= 2 * 2 * 16 + 2
    assert stats.close_reasons.get("evicted", 0) == stats.evicted
    assert sum(stats.close_reasons.values()) == stats.flows == len(rec.conns)
    # every byte was still delivered to some connection with the right direction
    got = {c.client_port: rec.data(c.conn_id, True) for c in rec.conns if rec.data(c.conn_id, True)}
    assert len(got) == n and all(v == f"hello {p}".encode() for p, v in got.items())


def test_idle_timeout_by_capture_time() -> None:
    a = Flow(cport=30001, ts=1_000_000_000_000)
    b = Flow(cport=30002, ts=1_000_000_000_000)
    pkts = a.handshake() + a.send(True, b"early")
    b.ts = a.ts + 600 * 1_000_000  # ten minutes later
    for i in range(2048):  # enough packets for the periodic tick
        pkts += b.send(True, b"x") if i % 2 else b.send(False, b"y")
    rec, stats = read(pcap_bytes(eth_frames(pkts)), idle_timeout_s=120)
    assert rec.closed[0] == "timeout"
    assert stats.timed_out == 1
    assert rec.events.index(("close", 0, "timeout")) < len(rec.events) - 1


def test_close_at_end_of_capture_flushes_ooo() -> None:
    f = Flow()
    pkts = f.handshake()
    data = f.send(True, REQ, 1000)
    pkts += data[:2] + data[3:]  # no FIN, a hole
    rec, stats = read(pcap_bytes(eth_frames(pkts)))
    assert rec.closed == {0: "end"}
    assert rec.pieces(0, True) == [REQ[:2000], ("gap", 1000), REQ[3000:]]


def test_feed_api() -> None:
    rec = Recorder()
    r = TCPReassembler(rec)
    r.feed(1, "192.0.2.1", 5000, "192.0.2.2", 104, 10, SYN)
    r.feed(2, "192.0.2.2", 104, "192.0.2.1", 5000, 99, SYN | ACK, ack=11)
    r.feed(3, "192.0.2.1", 5000, "192.0.2.2", 104, 14, ACK, b"def")
    r.feed(4, "192.0.2.1", 5000, "192.0.2.2", 104, 11, ACK, b"abc")
    r.finish()
    assert rec.data(0, True) == b"abcdef" and rec.closed == {0: "end"}


# ------------------------------------------------------------------ damaged input


def test_truncated_pcap_delivers_what_precedes(tmp_path: Path) -> None:
    _, pkts = conversation()
    data = pcap_bytes(eth_frames(pkts))
    # cut inside record 8 (the 6th request segment)
    offs = [24]
    for _, fr in eth_frames(pkts):
        offs.append(offs[-1] + 16 + len(fr))
    cut = offs[8] + 16 + 30
    p = tmp_path / "cut.pcap"
    p.write_bytes(data[:cut])
    rec = Recorder()
    stats = read_capture(p, rec)
    assert stats.packets == 8
    assert stats.problem_count == 1
    prob = stats.problems[0]
    assert prob.offset == offs[8] and "truncated" in prob.what
    assert rec.data(0, True) == REQ[:5000]
    assert rec.closed == {0: "end"}


def test_truncated_pcapng_reports_offset() -> None:
    _, pkts = conversation()
    data = pcapng_bytes(eth_frames(pkts))
    shb_idb = len(pcapng_bytes([]))
    offs = [shb_idb]
    for ts, fr in eth_frames(pkts):
        offs.append(offs[-1] + len(ng_epb("<", 0, ts, fr)))
    rec, stats = read(data[: offs[6] + 20])
    assert stats.packets == 6
    assert [(p.offset, "truncated" in p.what) for p in stats.problems] == [(offs[6], True)]
    rec, stats = read(data[: offs[6] + 5])  # cut inside the block header
    assert stats.problems[0].offset == offs[6] and stats.packets == 6


def test_truncated_pcap_header_is_a_problem_not_an_error() -> None:
    stats = read_capture(pcap_bytes([])[:10], NullConsumer())
    assert stats.packets == 0 and stats.problems[0].offset == 0


def test_pcapng_bad_block_length_stops_with_problem() -> None:
    _, pkts = conversation()
    data = bytearray(pcapng_bytes(eth_frames(pkts)))
    off = len(pcapng_bytes([]))
    first = len(ng_epb("<", 0, 0, ether(pkts[0][1])))
    struct.pack_into("<I", data, off + first + 4, 13)  # second EPB: length not a multiple of 4
    stats = read_capture(bytes(data), NullConsumer())
    assert stats.packets == 1
    assert stats.problems[0].offset == off + first and "invalid length" in stats.problems[0].what


def test_pcapng_undefined_interface_skipped() -> None:
    e = "<"
    f, pkts = conversation()
    blocks = [ng_shb(e), ng_idb(e, 1)] + [ng_epb(e, 0, ts, ether(p)) for ts, p in pkts]
    blocks.insert(3, ng_epb(e, 5, 0, b"\x00" * 60))
    rec, stats = read(b"".join(blocks))
    assert_clean_conversation(rec, stats_without_problems(stats))
    assert stats.problem_count == 1 and "undefined interface 5" in stats.problems[0].what


def stats_without_problems(stats: CaptureStats) -> CaptureStats:
    s = CaptureStats(**{k: getattr(stats, k) for k in CaptureStats.__dataclass_fields__})
    s.problems, s.problem_count = [], 0
    return s


def test_problems_list_bounded() -> None:
    e = "<"
    blocks = [ng_shb(e), ng_idb(e, 1)] + [ng_epb(e, 9, 0, b"\x00" * 60) for _ in range(250)]
    stats = read_capture(b"".join(blocks), NullConsumer())
    assert stats.problem_count == 250 and len(stats.problems) == 100


@pytest.mark.parametrize(
    "content, magic_hex",
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "47455420"),
        # gzip'd captures are read (docs/ids.md); gzip'd garbage is named by its content's magic
        (gzip.compress(b"GET / HTTP/1.1\r\n\r\n", mtime=0), "47455420"),
        (b"\x00\x01", "0001"),
        (b"\x13\x37\xbe\xef" + b"\x00" * 400, "1337beef"),
    ],
)
def test_not_a_capture_raises_capture_error(tmp_path: Path, content: bytes, magic_hex: str) -> None:
    p = tmp_path / "garbage.bin"
    p.write_bytes(content)
    with pytest.raises(CaptureError) as ei:
        read_capture(p, NullConsumer())
    msg = str(ei.value)
    assert str(p) in msg and magic_hex in msg


def test_empty_and_missing_files(tmp_path: Path) -> None:
    p = tmp_path / "empty.pcap"
    p.write_bytes(b"")
    with pytest.raises(CaptureError, match="empty"):
        read_capture(p, NullConsumer())
    with pytest.raises(CaptureError, match="nope.pcap"):
        read_capture(tmp_path / "nope.pcap", NullConsumer())


def test_pcapng_with_bad_byte_order_magic_is_not_a_capture() -> None:
    data = bytearray(pcapng_bytes([]))
    data[8:12] = b"XXXX"
    with pytest.raises(CaptureError, match="byte-order"):
        read_capture(bytes(data), NullConsumer())


def test_iter_frames() -> None:
    _, pkts = conversation()
    frames = eth_frames(pkts, vlans=(5,))
    got = [(ts, lt, bytes(fr)) for ts, lt, fr in iter_frames(pcap_bytes(frames, nano=True))]
    assert got == [(ts, 1, fr) for ts, fr in frames]


# ------------------------------------------------------------------ properties and fuzzing


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(min_size=1, max_size=6000),
    mss=st.integers(min_value=1, max_value=1500),
    isn=st.integers(min_value=0, max_value=(1 << 32) - 1),
    seed=st.integers(min_value=0, max_value=2**32),
    dup_rate=st.floats(min_value=0, max_value=0.5),
)
def test_reassembly_property_any_order_any_duplicates(data: bytes, mss: int, isn: int, seed: int,
                                                      dup_rate: float) -> None:
    """Whatever the segmentation, reordering (within the buffer) and duplication, the stream
    comes out exactly once, in order, with no gap."""
    rng = random.Random(seed)
    f = Flow(cisn=isn)
    hs = f.handshake()
    segs = f.send(True, data, mss)
    # re-cut some segments to overlap their neighbours
    base = (isn + 1) & 0xFFFFFFFF
    extra = []
    for _ in range(rng.randrange(0, 4)):
        a = rng.randrange(0, len(data))
        b = min(len(data), a + rng.randrange(1, 2 * mss + 2))
        extra.append(f.segment_at(True, (base + a) & 0xFFFFFFFF, data[a:b]))
    body = segs + extra + [s for s in segs if rng.random() < dup_rate]
    rng.shuffle(body)
    pkts = hs + body + f.send(False, b"ok") + f.fin()
    rec, stats = read(pcap_bytes(eth_frames(pkts)))
    assert rec.pieces(0, True) == [data]
    assert stats.gaps == 0 and rec.closed == {0: "fin"}


def _base_captures() -> list[bytes]:
    f1, p1 = conversation(Flow(), mss=700)
    f2 = Flow(client="fd00::1", server="fd00::2", cport=50000)
    _, p2 = conversation(f2, mss=900)
    frames = eth_frames(p1, vlans=(3,)) + [(ts, sll(p)) for ts, p in p2]
    return [
        pcap_bytes(eth_frames(p1 + p2), nano=True),
        pcap_bytes([(ts, sll(p)) for ts, p in p1], linktype=113, big_endian=True),
        pcapng_bytes(eth_frames(p1 + p2), tsresol=9, extra_blocks=True),
        pcapng_bytes(frames[: len(p1)], big_endian=True),
    ]


BASES = _base_captures()


class _StrictConsumer(NullConsumer):
    def on_data(self, conn, from_client, data, ts_us):  # type: ignore[no-untyped-def]
        assert len(data) > 0

    def on_gap(self, conn, from_client, nbytes):  # type: ignore[no-untyped-def]
        assert nbytes > 0


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(min_value=0, max_value=len(BASES) - 1),
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=7)), max_size=12),
    overwrites=st.lists(st.tuples(st.integers(min_value=0), st.binary(min_size=1, max_size=8)), max_size=4),
    cut=st.one_of(st.none(), st.integers(min_value=0)),
)
def test_fuzz_mutated_captures_never_raise_but_capture_error(
    which: int, flips: list[tuple[int, int]], overwrites: list[tuple[int, bytes]], cut: int | None
) -> None:
    data = bytearray(BASES[which])
    for pos, bit in flips:
        data[pos % len(data)] ^= 1 << bit
    for pos, chunk in overwrites:
        p = pos % len(data)
        data[p : p + len(chunk)] = chunk
    if cut is not None:
        del data[cut % (len(data) + 1) :]
    try:
        stats = read_capture(bytes(data), _StrictConsumer(), max_flows=4)
    except CaptureError:
        return
    assert stats.packets >= 0 and len(stats.problems) <= 100
