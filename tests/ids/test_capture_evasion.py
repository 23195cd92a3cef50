"""The passive IDS against evasion (outside tester, round 4): RSTs a Linux PACS ignores, overlapping
TCP segments with different bytes, IP fragments, frames cut by the snap length.  The reference is
what the protected host, a Linux PACS, reads: the sensor must decode the same bytes, and report
the ambiguity (``ids.anomaly.*``) with the flow and the offset."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# the helper modules sit next to this file, whether or not tests/ids is a package
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from capture_craft import ACK, FIN, RST, Flow, Recorder, eth_frames, pcap_bytes, tcp_ip
from test_capture_real import _tshark_follow
from test_sensor import FIND, _cli, ac, dataset_bytes, message, rq, rsp

from pacsguard.cli.common import EXIT_FINDINGS, EXIT_INCOMPLETE
from pacsguard.dicom import dimse as D
from pacsguard.dicom import pdu as P
from pacsguard.ids.capture import StreamAnomaly, TCPReassembler, read_capture
from pacsguard.ids.capture.reader import process_file

REQ = bytes(range(256)) * 12  # 3072 bytes client -> server
RSP = b"response-" * 100
WILDCARD = "ids.alert.dicom-find-wildcard-patient-name"


class Anomalies(Recorder):
    """A recording consumer that also keeps the anomalies."""

    def __init__(self) -> None:
        super().__init__()
        self.anomalies: list[StreamAnomaly] = []

    def on_anomaly(self, anomaly: StreamAnomaly) -> None:
        self.anomalies.append(anomaly)


def read(frames_or_pcap: list[tuple[int, bytes]] | bytes, **kw: object) -> tuple[Anomalies, TCPReassembler]:
    rec = Anomalies()
    reasm = TCPReassembler(rec, **kw)  # type: ignore[arg-type]
    data = frames_or_pcap if isinstance(frames_or_pcap, bytes) else pcap_bytes(eth_frames(frames_or_pcap))
    process_file(data, reasm)
    return rec, reasm


def raw(
    f: Flow, from_client: bool, seq: int, flags: int, data: bytes = b"", ack: int | None = None
) -> tuple[int, bytes]:
    """A segment of ``f`` with any sequence number and flags."""
    f.ts += 100
    if from_client:
        return f.ts, tcp_ip(f.client, f.server, f.cport, f.sport, seq, flags, data, f.sseq if ack is None else ack)
    return f.ts, tcp_ip(f.server, f.client, f.sport, f.cport, seq, flags, data, f.cseq if ack is None else ack)


# ------------------------------------------------------------------ RST (RFC 5961 3.2, Linux)


@pytest.mark.parametrize("ahead", [1_000_000_000, 1, -1, 70_000])
def test_a_rst_a_linux_receiver_ignores_does_not_end_inspection(ahead: int) -> None:
    """Out of window (dropped) or in window but not exact (a challenge ACK): the connection goes on."""
    f = Flow()
    pkts = f.handshake() + f.send(True, REQ[:1000], 500)
    pkts.append(raw(f, True, f.cseq + ahead, RST | ACK, b"payload of a rst"))
    pkts += f.send(True, REQ[1000:], 500) + f.send(False, RSP) + f.fin()
    rec, reasm = read(pkts)
    assert rec.closed == {0: "fin"}
    assert rec.data(0, True) == REQ and rec.data(0, False) == RSP  # the RST's payload is not taken either
    assert reasm.stats.anomalies == {"tcp-rst-invalid": 1}
    (a,) = rec.anomalies
    assert (a.what, a.conn, a.from_client, a.offset) == ("tcp-rst-invalid", rec.conns[0], True, 1000)
    assert (a.src, a.sport, a.dst, a.dport) == (f.client, f.cport, f.server, f.sport)
    assert f"{ahead:+,} bytes from the next expected" in a.detail


def test_acceptable_rsts_still_close() -> None:
    # exactly the next sequence number
    f = Flow()
    pkts = f.handshake() + f.send(True, REQ, 1000) + [f.rst(from_client=True)]
    rec, reasm = read(pkts)
    assert rec.closed == {0: "rst"} and rec.data(0, True) == REQ and not rec.anomalies
    # one past the sender's FIN
    f = Flow()
    pkts = f.handshake() + f.send(True, REQ, 1000)
    pkts.append(raw(f, True, f.cseq, FIN | ACK))
    pkts.append(raw(f, True, f.cseq + 1, RST | ACK))
    rec, reasm = read(pkts)
    assert rec.closed == {0: "rst"} and not rec.anomalies
    # the capture lost the client's last segment, which the server acknowledged: the RST carries
    # the server's RCV.NXT, which is all the sensor can check it against
    f = Flow()
    pkts = f.handshake() + f.send(True, REQ, 1000)
    lost = pkts.pop()
    assert lost
    pkts.append(raw(f, False, f.sseq, ACK, ack=f.cseq))
    pkts.append(raw(f, True, f.cseq, RST | ACK))
    rec, reasm = read(pkts)
    assert rec.closed == {0: "rst"} and not rec.anomalies
    assert rec.pieces(0, True) == [REQ[:3000], ("gap", len(REQ) - 3000)]


def test_a_rst_at_a_stale_acknowledgment_is_ignored() -> None:
    """The receiver has not acknowledged the last segment yet: a RST at its last ACK is below
    RCV.NXT for the PACS (it got that segment), so Linux drops it."""
    f = Flow()
    pkts = f.handshake() + f.send(True, REQ[:1000], 500)
    pkts.append(raw(f, False, f.sseq, ACK, ack=f.cseq))
    stale = f.cseq
    pkts += f.send(True, REQ[1000:2000], 500)
    pkts.append(raw(f, True, stale, RST | ACK))
    pkts += f.send(True, REQ[2000:], 500) + f.send(False, RSP) + f.fin()
    rec, reasm = read(pkts)
    assert rec.closed == {0: "fin"} and rec.data(0, True) == REQ
    assert [(a.what, a.offset) for a in rec.anomalies] == [("tcp-rst-invalid", 2000)]


def test_a_rst_answering_a_syn_closes_the_refused_connection() -> None:
    f = Flow()
    syn = f.handshake()[0]
    rec, reasm = read([syn, raw(f, False, 0, RST | ACK, ack=f.cseq)])
    assert rec.closed == {0: "rst"} and not rec.anomalies


# ------------------------------------------------------------------ overlapping segments (tcp_data_queue_ofo)


def _ooo(segments: list[tuple[int, bytes]], filler_end: int, total: bytes) -> tuple[Anomalies, TCPReassembler]:
    """Client segments (offset, bytes) sent ahead of a hole [0, filler_end), then the hole, then what
    of ``total`` none of them covered, in order."""
    f = Flow()
    pkts = f.handshake()
    base = f.cseq
    pkts += [f.segment_at(True, base + off, data) for off, data in segments]
    pkts.append(f.segment_at(True, base, total[:filler_end]))
    done = max([filler_end] + [off + len(data) for off, data in segments])
    f.cseq = base + done
    pkts += f.send(True, total[done:])
    pkts += f.send(False, RSP) + f.fin()
    return read(pkts)


def test_a_longer_segment_from_the_same_start_wins_and_the_conflict_is_reported() -> None:
    """The tester's attack: a 1-byte decoy, then the real bytes from the same start, then the hole.
    Linux replaces the decoy by the segment that covers it, so the PACS reads the real bytes."""
    j = 1500
    rec, reasm = _ooo([(j, b"A"), (j, REQ[j:])], j, REQ)
    assert rec.data(0, True) == REQ
    assert reasm.stats.anomalies == {"tcp-overlap-different-data": 1}
    (a,) = rec.anomalies
    assert (a.what, a.from_client, a.offset, a.length) == ("tcp-overlap-different-data", True, j, 1)
    assert a.conn is rec.conns[0] and f"kept {REQ[j:j + 1].hex()}" in a.detail and "dropped 41" in a.detail


def test_the_segment_starting_first_wins_whatever_the_arrival_order() -> None:
    fake = b"X" * 400
    rec, reasm = _ooo([(1200, fake), (1000, REQ[1000:1300])], 1000, REQ)  # [1000,1300) covers fake's start
    expected = REQ[:1300] + fake[100:] + REQ[1600:]
    assert rec.data(0, True) == expected
    (a,) = rec.anomalies
    assert (a.offset, a.length) == (1200, 100)


def test_same_start_same_length_keeps_the_first_and_reports() -> None:
    rec, reasm = _ooo([(2000, REQ[2000:2100]), (2000, b"Z" * 100)], 2000, REQ)
    assert rec.data(0, True) == REQ
    assert [(a.what, a.offset, a.length) for a in rec.anomalies] == [("tcp-overlap-different-data", 2000, 100)]


def test_the_hole_filler_wins_over_buffered_data_and_is_compared() -> None:
    # the in-order segment reaches into buffered data (Linux trims the out-of-order queue)
    rec, reasm = _ooo([(1000, b"Q" * 500)], 1200, REQ)
    assert rec.data(0, True) == REQ[:1200] + b"Q" * 300 + REQ[1500:]
    assert [(a.offset, a.length) for a in rec.anomalies] == [(1000, 200)]


def test_identical_overlaps_are_not_reported() -> None:
    rec, reasm = _ooo([(1000, REQ[1000:1600]), (1000, REQ[1000:1100]), (1300, REQ[1300:2000])], 1200, REQ)
    assert rec.data(0, True) == REQ
    assert rec.anomalies == [] and reasm.stats.anomalies == {} and reasm.stats.overlaps >= 2


# ------------------------------------------------------------------ IP fragments (RFC 791, RFC 8200 4.5)


def _csum(b: bytes) -> int:
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF


def frags_v4(packet: bytes, size: int, ident: int) -> list[bytes]:
    """RFC 791 fragments of an option-less IPv4 packet, ``size`` payload bytes each (a multiple of 8)."""
    hdr, payload = packet[:20], packet[20:]
    out = []
    for off in range(0, len(payload), size):
        part = payload[off : off + size]
        h = bytearray(hdr)
        struct.pack_into("!HHH", h, 2, 20 + len(part), ident, (0x2000 if off + size < len(payload) else 0) | off // 8)
        h[10:12] = b"\0\0"
        struct.pack_into("!H", h, 10, _csum(bytes(h)))
        out.append(bytes(h) + part)
    return out


def frags_v6(packet: bytes, size: int, ident: int, headers: bytes = b"", first: int = 6) -> list[bytes]:
    """RFC 8200 4.5 fragments of an IPv6/TCP packet; its fragmentable part may start with extension
    *headers*, the first of type *first* (without them: TCP, 6)."""
    hdr, payload = packet[:40], headers + packet[40:]
    out = []
    for off in range(0, len(payload), size):
        part = payload[off : off + size]
        more = 1 if off + size < len(payload) else 0
        h = bytearray(hdr)
        struct.pack_into("!HB", h, 4, 8 + len(part), 44)
        out.append(bytes(h) + struct.pack("!BBHI", first, 0, off | more, ident) + part)
    return out


def _fragmented(client: str = "10.1.2.3", server: str = "10.9.8.7", order=lambda fs: fs[::-1],
                alter=None) -> tuple[list[tuple[int, bytes]], bytes]:
    """A conversation whose client segments are sent as IP fragments (72 bytes each, last first)."""
    f = Flow(client=client, server=server)
    pkts = f.handshake()
    for i, (ts, p) in enumerate(f.send(True, REQ, 1000)):
        fs = frags_v6(p, 72, 7 + i) if ":" in client else frags_v4(p, 72, 7 + i)
        fs = alter(i, fs) if alter else fs
        pkts += [(ts + k, x) for k, x in enumerate(order(fs))]
    pkts += f.send(False, RSP) + f.fin()
    return pkts, REQ


@pytest.mark.parametrize("client,server", [("10.1.2.3", "10.9.8.7"), ("fd00::3", "fd00::7")])
def test_fragments_are_reassembled(client: str, server: str) -> None:
    pkts, req = _fragmented(client, server)
    rec, reasm = read(pkts)
    st = reasm.stats
    assert rec.data(0, True) == req and rec.data(0, False) == RSP and rec.closed == {0: "fin"}
    assert st.ip_reassembled == 4 and st.ip_fragments == sum(-(-(20 + min(1000, len(req) - k)) // 72)
                                                             for k in range(0, len(req), 1000))
    assert st.gaps == 0 and st.ip_fragments_dropped == st.ip_fragments_expired == 0
    assert not rec.anomalies and st.lost_problems == 0


def test_overlapping_fragments_discard_the_datagram_and_are_reported() -> None:
    def alter(i: int, fs: list[bytes]) -> list[bytes]:
        if i != 1:
            return fs
        bad = bytearray(fs[2])  # fragment at offset 144, moved to overlap the one at 72 by 8 bytes
        struct.pack_into("!H", bad, 6, 0x2000 | (136 // 8))
        return fs[:2] + [bytes(bad)] + fs[3:]

    pkts, req = _fragmented(alter=alter, order=lambda fs: fs)
    rec, reasm = read(pkts)
    # Linux drops the whole datagram: the PACS never got segment 1, neither did the sensor
    assert rec.pieces(0, True) == [req[:1000], ("gap", 1000), req[2000:]]
    (a,) = rec.anomalies
    assert (a.what, a.src, a.dst, a.offset, a.conn) == ("ip-fragment-overlap", "10.1.2.3", "10.9.8.7", 136, None)
    assert "IPv4 id 0x8" in a.detail and reasm.stats.ip_reassembled == 3


def test_a_duplicate_fragment_with_other_bytes_keeps_the_first() -> None:
    def alter(i: int, fs: list[bytes]) -> list[bytes]:
        if i != 2:
            return fs
        dup = bytearray(fs[3])
        dup[-10:] = b"!" * 10
        return fs[:4] + [bytes(dup)] + fs[4:]

    pkts, req = _fragmented(alter=alter, order=lambda fs: fs)
    rec, reasm = read(pkts)
    assert rec.data(0, True) == req
    (a,) = rec.anomalies
    assert (a.what, a.offset, a.length) == ("ip-fragment-different-data", 4 * 72 - 10, 10)


def test_an_incomplete_datagram_expires_and_tcp_reports_the_gap() -> None:
    pkts, req = _fragmented(alter=lambda i, fs: fs[:5] + fs[6:] if i == 1 else fs)
    rec, reasm = read(pkts)
    assert rec.pieces(0, True) == [req[:1000], ("gap", 1000), req[2000:]]
    assert reasm.stats.ip_fragments_expired == 1 and reasm.stats.lost_problems == 0  # lost on the wire


def test_fragments_beyond_the_limits_make_the_run_incomplete() -> None:
    # every datagram misses its last fragment until the end: more than 2 wait at a time
    pkts, req = _fragmented(alter=lambda i, fs: fs[:-1], order=lambda fs: fs)
    rec = Anomalies()
    reasm = TCPReassembler(rec)
    reasm.defrag.max_datagrams = 2
    st = process_file(pcap_bytes(eth_frames(pkts)), reasm)
    assert st.lost_problems == 2 and st.ip_fragments_expired == 2
    assert st.problems[0].what.startswith("IP fragments dropped: more than 2 datagrams in reassembly")
    assert len(reasm.defrag.pending) == 0 and reasm.defrag.nbytes == 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 140), st.integers(0, 200), st.booleans(), st.integers(0, 2)), max_size=30),
       st.booleans())
def test_hostile_fragments_never_raise_and_leave_nothing_behind(specs: list[tuple[int, int, bool, int]],
                                                                 v6: bool) -> None:
    """Overlapping, duplicate, oversized, zero-length and contradictory fragments, in any order."""
    f = Flow(client="fd00::3", server="fd00::7") if v6 else Flow()
    packet = tcp_ip(f.client, f.server, f.cport, f.sport, f.cseq, ACK, REQ[:1200], f.sseq)
    body = packet[40:] if v6 else packet[20:]
    pkts = f.handshake()
    for unit, length, more, ident in specs:
        off = unit * 8
        part = (body[off : off + length] or b"x" * length) if off < len(body) else b"y" * length
        if v6:
            hdr = bytearray(packet[:40])
            struct.pack_into("!HB", hdr, 4, 8 + len(part), 44)
            frag = bytes(hdr) + struct.pack("!BBHI", 6, 0, off | more, ident) + part
        else:
            hdr = bytearray(packet[:20])
            struct.pack_into("!HHH", hdr, 2, 20 + len(part), ident, (0x2000 if more else 0) | unit)
            frag = bytes(hdr) + part
        f.ts += 10
        pkts.append((f.ts, frag))
    rec, reasm = read(pkts)
    st_ = reasm.stats
    assert reasm.defrag.pending == {} and reasm.defrag.nbytes == 0 and reasm.defrag.ready == []
    # an IPv4 packet at offset 0 without MF is no fragment; an IPv6 one with a Fragment header is
    assert st_.ip_fragments == sum(1 for unit, _, more, _ in specs if v6 or unit or more)
    assert all(a.what.startswith("ip-fragment-") for a in rec.anomalies)


@pytest.mark.peers
def test_tshark_follows_the_same_stream_out_of_a_fragmented_capture(tmp_path: Path) -> None:
    """tshark (IPv4 defragmentation on by default) rewrites the capture as pcapng and follows the
    stream: the same bytes as the sensor's."""
    assert shutil.which("tshark"), "tshark is needed (apt-get install tshark)"
    pkts, req = _fragmented()
    src = tmp_path / "frag.pcap"
    src.write_bytes(pcap_bytes(eth_frames(pkts)))
    ng = tmp_path / "frag.pcapng"
    subprocess.run(["tshark", "-r", str(src), "-w", str(ng)], check=True, capture_output=True, timeout=60)
    node0, c2s, s2c = _tshark_follow(ng, 0)
    assert node0 == "10.1.2.3:40001" and c2s == req and s2c == RSP
    rec = Anomalies()
    st = read_capture(ng, rec)
    assert rec.data(0, True) == c2s and rec.data(0, False) == s2c and st.ip_reassembled == 4


# ------------------------------------------------------------------ `pacsguard ids read` end to end


def find_association(evade: str = "") -> list[tuple[int, bytes]]:
    """A wildcard C-FIND association (the built-in rule dicom-find-wildcard-patient-name fires),
    its C-FIND request sent plainly or the way ``evade`` names."""
    f = Flow()
    pkts = f.handshake() + f.send(True, rq()) + f.send(False, ac())
    req = D.CommandSet(command_field=D.C_FIND_RQ, message_id=1, affected_sop_class_uid=FIND, priority=0,
                       command_data_set_type=1)
    data = message(5, req, dataset_bytes(QueryRetrieveLevel="PATIENT", PatientName="*", PatientID=""))
    base = f.cseq
    if evade == "rst":
        pkts.append(raw(f, True, base + 1_000_000_000, RST))
        pkts += f.send(True, data)
    elif evade == "overlap":
        j = data.index(b"*")
        pkts += [f.segment_at(True, base + j, b"A"), f.segment_at(True, base + j, data[j:]),
                 f.segment_at(True, base, data[:j])]
        f.cseq = base + len(data)
    elif evade == "fragments":
        for ts, p in f.send(True, data):
            pkts += [(ts, x) for x in frags_v4(p, 64, 99)]
    elif evade == "fragment-overlap":
        # a decoy fragment overlapping the second one: Linux discards the datagram, and the
        # client's retransmission, plain, is what the PACS reads
        (ts, p), = f.send(True, data)
        fs = frags_v4(p, 64, 98)
        decoy = bytearray(fs[2])
        struct.pack_into("!H", decoy, 6, 0x2000 | (120 // 8))
        pkts += [(ts, x) for x in fs[:2] + [bytes(decoy)] + fs[3:]] + [(ts + 200_000, p)]
    else:
        pkts += f.send(True, data)
    pkts += f.send(False, rsp(5, req))
    pkts += f.send(True, P.encode_release_rq()) + f.send(False, P.encode_release_rp()) + f.fin()
    return pkts


def _ids_read(tmp_path: Path, name: str, data: bytes) -> tuple[int, list[dict], dict]:
    path = tmp_path / name
    path.write_bytes(data)
    r = _cli("read", str(path), "--format", "json", "--alerts-only")
    lines = [json.loads(line) for line in r.output.splitlines() if line.startswith("{")]
    return r.exit_code, [e for e in lines if "kind" in e], lines[-1]["summary"]


@pytest.mark.parametrize("evade,anomaly", [("", None), ("rst", "tcp-rst-invalid"),
                                           ("overlap", "tcp-overlap-different-data"), ("fragments", None),
                                           ("fragment-overlap", "ip-fragment-overlap")])
def test_the_wildcard_find_is_seen_however_it_is_sent(tmp_path: Path, evade: str, anomaly: str | None) -> None:
    capture = pcap_bytes(eth_frames(find_association(evade)))
    code, events, summary = _ids_read(tmp_path, f"{evade or 'plain'}.pcap", capture)
    kinds = sorted(e["kind"] for e in events)
    assert code == EXIT_FINDINGS, events
    assert WILDCARD in kinds
    assert summary["capture"]["complete"] is True
    assert (summary["capture"]["ip_reassembled"] > 0) == (evade == "fragments")
    if anomaly is None:
        assert not [k for k in kinds if k.startswith("ids.anomaly.")]
        return
    (ev,) = [e for e in events if e["kind"] == f"ids.anomaly.{anomaly}"]
    assert summary["capture"]["anomalies"] == {anomaly: 1}
    assert ev["details"]["anomaly"] == anomaly and ev["severity"] in ("notice", "warning")
    if evade == "fragment-overlap":  # below TCP: hosts, no connection
        assert ev["details"]["flow_id"] is None and ev["details"]["offset"] == 120
        assert ev["actor"] == {"host": "10.1.2.3"} and ev["target"] == {"host": "10.9.8.7"}
        return
    assert ev["details"]["flow_id"] == "C0" and ev["details"]["from_client"] is True
    assert ev["actor"] == {"host": "10.1.2.3", "port": 40001} and ev["target"] == {"host": "10.9.8.7", "port": 104}


def test_a_capture_cut_to_a_short_snap_length_exits_7(tmp_path: Path) -> None:
    """editcap -s 100 keeps 100 bytes of each frame: most of the DICOM bytes are not in the file."""
    assert shutil.which("editcap"), "editcap is needed (apt-get install tshark)"
    full = tmp_path / "full.pcap"
    full.write_bytes(pcap_bytes(eth_frames(find_association())))
    cut = tmp_path / "cut.pcap"
    subprocess.run(["editcap", "-s", "100", str(full), str(cut)], check=True, capture_output=True, timeout=60)
    code, events, summary = _ids_read(tmp_path, "cut2.pcap", cut.read_bytes())
    capture = summary["capture"]
    assert code == EXIT_INCOMPLETE, summary
    assert capture["complete"] is False and capture["snap_truncated"] >= 2 and capture["snap_missing_bytes"] > 0
    assert f"{capture['snap_truncated']} frames cut short by the snap length" in capture["lost"]
    assert "damaged" not in capture["lost"]
    assert capture["problems"][0]["what"].startswith("frames cut short by the capture's snap length")
