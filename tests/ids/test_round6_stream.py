"""The passive IDS against TCP/IP insertion and evasion (outside tester, round 6; Ptacek and Newsham
1998): segments a Linux PACS discards (no ACK, data on a SYN, an old timestamp, beyond the window, a
lying IP length), an urgent byte, a RST at a forged acknowledgment, a SYN inside an open
connection, and retransmissions with other bytes.  The reference is what a Linux receiver reads
(each scenario was checked against a real Linux socket by the tester): the sensor must decode the
same bytes and report the attempt as an ``ids.anomaly.*``."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from capture_craft import ether, pcap_bytes
from test_capture_evasion import Anomalies, read
from test_sensor import FIND, ac, dataset_bytes, message, rq

from pacsguard.dicom import dimse as D
from pacsguard.ids.capture import StreamAnomaly

FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
M32 = 0xFFFFFFFF
REAL = bytes(range(256)) * 4  # what the PACS reads
DECOY = bytes(255 - (i % 256) for i in range(len(REAL)))  # what an attacker wants the IDS to read
WILDCARD = "ids.alert.dicom-find-wildcard-patient-name"
PACSGUARD = str(Path(sys.executable).with_name("pacsguard"))


def tcp_packet(src: tuple[str, int], dst: tuple[str, int], seq: int, flags: int, data: bytes = b"", ack: int = 0,
               *, win: int = 65535, opts: bytes = b"", urp: int = 0) -> bytes:
    """An IPv4 packet with one TCP segment (options padded to 32 bits by the caller)."""
    seg = dpkt.tcp.TCP(sport=src[1], dport=dst[1], seq=seq & M32, ack=ack & M32, flags=flags, win=win, urp=urp,
                       data=data)
    if opts:
        seg.opts = opts
        seg.off = 5 + len(opts) // 4
    ip = dpkt.ip.IP(src=socket.inet_aton(src[0]), dst=socket.inet_aton(dst[0]), p=6, ttl=64, data=seg)
    ip.len = len(bytes(ip))
    return bytes(ip)


def ts_option(tsval: int) -> bytes:
    """NOP, NOP, timestamps (RFC 7323 Appendix A layout, as Linux sends it)."""
    return b"\x01\x01\x08\x0a" + struct.pack("!II", tsval & M32, 0)


class Conv:
    """One client -> PACS conversation with free control over every segment."""

    def __init__(self, *, timestamps: bool = False, vlan: bool = False) -> None:
        self.c, self.s = ("10.1.2.3", 40001), ("10.9.8.7", 104)
        self.cseq, self.sseq = 1001, 5_000_001
        self.t = 1_700_000_000_000_000
        self.tsval = 1_000
        self.timestamps = timestamps
        self.vlan = vlan
        self.frames: list[tuple[int, bytes]] = []

    def put(self, from_client: bool, seq: int, flags: int, data: bytes = b"", ack: int | None = None, *,
            tsval: int | None = None, opts: bytes = b"", **kw: int) -> None:
        if self.timestamps:
            self.tsval += 1
            opts = ts_option(self.tsval if tsval is None else tsval) + opts
        if from_client:
            p = tcp_packet(self.c, self.s, seq, flags, data, self.sseq if ack is None else ack, opts=opts, **kw)
        else:
            p = tcp_packet(self.s, self.c, seq, flags, data, self.cseq if ack is None else ack, opts=opts, **kw)
        self.t += 100
        self.frames.append((self.t, ether(p, vlans=(7,) if self.vlan else ())))

    def handshake(self, *, syn_data: bytes = b"", syn_opts: bytes = b"", synack_opts: bytes = b"",
                  server_win: int = 65535) -> None:
        self.put(True, self.cseq - 1, SYN, syn_data, 0, opts=syn_opts)
        self.put(False, self.sseq - 1, SYN | ACK, ack=self.cseq, opts=synack_opts, win=server_win)
        self.put(True, self.cseq, ACK)

    def send(self, from_client: bool, data: bytes, mss: int = 1000) -> None:
        for i in range(0, len(data), mss):
            chunk = data[i : i + mss]
            if from_client:
                self.put(True, self.cseq, ACK | PSH, chunk)
                self.cseq = (self.cseq + len(chunk)) & M32
            else:
                self.put(False, self.sseq, ACK | PSH, chunk)
                self.sseq = (self.sseq + len(chunk)) & M32

    def fin(self) -> None:
        self.put(True, self.cseq, FIN | ACK)
        self.put(False, self.sseq, FIN | ACK, ack=self.cseq + 1)
        self.put(True, self.cseq + 1, ACK, ack=self.sseq + 1)

    def pcap(self) -> bytes:
        return pcap_bytes(self.frames)


def only(rec: Anomalies, what: str) -> StreamAnomaly:
    assert [a.what for a in rec.anomalies] == [what], [(a.what, a.detail) for a in rec.anomalies]
    return rec.anomalies[0]


# ------------------------------------------------------------------ 1. no ACK flag


@pytest.mark.parametrize("vlan", [False, True])  # the reader's fast path and its general path
def test_data_without_ack_is_not_stream_data(vlan: bool) -> None:
    c = Conv(vlan=vlan)
    c.handshake()
    s0 = c.cseq
    c.put(True, s0, PSH, DECOY)  # Linux: "if (!th->ack && !th->rst && !th->syn) goto discard"
    c.send(True, REAL)
    c.fin()
    rec, reasm = read(c.pcap())
    assert rec.data(0, True) == REAL and rec.closed == {0: "fin"}
    a = only(rec, "tcp-no-ack")
    assert (a.offset, a.length, a.from_client) == (0, len(DECOY), True)
    assert reasm.stats.anomalies == {"tcp-no-ack": 1}


def test_a_segment_without_ack_opens_no_connection() -> None:
    c = Conv()
    c.put(True, 77, PSH | FIN, b"null scan")
    rec, reasm = read(c.pcap())
    assert not rec.conns and reasm.stats.non_tcp == {"tcp-without-ack": 1}


# ------------------------------------------------------------------ 2. data on a SYN


def test_data_on_a_syn_is_not_stream_data() -> None:
    c = Conv()
    c.handshake(syn_data=DECOY)  # no TCP Fast Open: Linux drops it, the client sends it again
    c.send(True, REAL)
    c.fin()
    rec, _ = read(c.pcap())
    assert rec.data(0, True) == REAL
    a = only(rec, "tcp-syn-data")
    assert (a.offset, a.length) == (0, len(DECOY))


# ------------------------------------------------------------------ 3. PAWS


@pytest.mark.parametrize("vlan", [False, True])
def test_a_segment_with_an_old_timestamp_is_discarded(vlan: bool) -> None:
    c = Conv(timestamps=True, vlan=vlan)
    c.handshake()
    c.send(True, REAL[:500])  # fast path with timestamps
    s = c.cseq
    c.put(True, s, ACK | PSH, DECOY[500:], tsval=5)  # older than TS.Recent: PAWS (RFC 7323 5)
    c.send(True, REAL[500:])
    c.fin()
    rec, _ = read(c.pcap())
    assert rec.data(0, True) == REAL
    a = only(rec, "tcp-paws-old-timestamp")
    assert (a.offset, a.length) == (500, len(REAL) - 500)


def test_timestamps_that_wrap_around_are_newer_not_older() -> None:
    """TSvals compare modulo 2**32 (RFC 7323 5.2): 10 after 0xFFFFFFF0 is newer."""
    c = Conv(timestamps=True)
    c.tsval = 0xFFFFFFF0 - 8
    c.handshake()
    for i in range(0, len(REAL), 100):
        c.put(True, c.cseq, ACK | PSH, REAL[i : i + 100], tsval=(0xFFFFFFF0 + i // 10) & M32)
        c.cseq += len(REAL[i : i + 100])
    rec, _ = read(c.pcap())
    assert rec.data(0, True) == REAL and not rec.anomalies


def test_old_timestamps_count_only_when_both_syns_carried_them() -> None:
    """Without the option on the SYN-ACK, timestamps are not in use (RFC 7323 3.2): nothing to check."""
    c = Conv()
    c.put(True, c.cseq - 1, SYN, opts=ts_option(1000))
    c.put(False, c.sseq - 1, SYN | ACK, ack=c.cseq)
    c.put(True, c.cseq, ACK)
    c.put(True, c.cseq, ACK | PSH, REAL[:100], opts=ts_option(2000))
    c.cseq += 100
    c.put(True, c.cseq, ACK | PSH, REAL[100:], opts=ts_option(5))
    rec, _ = read(c.pcap())
    assert rec.data(0, True) == REAL and not rec.anomalies


# ------------------------------------------------------------------ 5. RST (RFC 5961 3.2)


def test_a_rst_at_a_forged_acknowledgment_does_not_end_inspection() -> None:
    c = Conv()
    c.handshake()
    s0 = c.cseq
    c.put(False, c.sseq, ACK, ack=s0 + 5000)  # sent in the PACS's name to the client: the PACS never sees it
    c.put(True, s0 + 5000, RST)  # not RCV.NXT for the PACS: a challenge ACK, the connection goes on
    c.send(True, REAL)
    c.fin()
    rec, reasm = read(c.pcap())
    assert rec.data(0, True) == REAL and rec.closed == {0: "fin"}
    a = only(rec, "tcp-rst-invalid")
    assert a.offset == 0 and "+5,000 bytes from the next expected" in a.detail


def test_a_rst_at_the_acknowledgment_closes_when_nothing_follows() -> None:
    """The capture lost bytes the receiver acknowledged: the RST there was the end after all."""
    c = Conv()
    c.handshake()
    c.send(True, REAL[:500])
    c.put(False, c.sseq, ACK, ack=c.cseq + 500)
    c.put(True, c.cseq + 500, RST)
    rec, _ = read(c.pcap())
    assert rec.closed == {0: "rst"} and not rec.anomalies
    assert rec.pieces(0, True) == [REAL[:500], ("gap", 500)]


# ------------------------------------------------------------------ 6. URG


def test_the_urgent_byte_is_taken_out_of_the_stream() -> None:
    c = Conv()
    c.handshake()
    s0, j = c.cseq, 300
    c.put(True, s0, ACK | PSH, REAL[:j])
    c.put(True, s0 + j, ACK | PSH | URG, b"X" + REAL[j : j + 100], urp=1)  # urgent pointer one past "X"
    c.put(True, s0 + j + 101, ACK | PSH, REAL[j + 100 :])
    c.cseq = s0 + len(REAL) + 1
    c.fin()
    rec, _ = read(c.pcap())
    assert rec.data(0, True) == REAL and rec.closed == {0: "fin"}
    a = only(rec, "tcp-urgent-data")
    assert (a.offset, a.length) == (j, 1) and "0x58" in a.detail


def test_an_urgent_pointer_into_a_later_segment_removes_that_byte() -> None:
    c = Conv()
    c.handshake()
    s0 = c.cseq
    c.put(True, s0, ACK | PSH | URG, REAL[:100], urp=151)  # urgent byte at offset 150, not here yet
    c.put(True, s0 + 100, ACK | PSH, REAL[100:150] + b"!" + REAL[150:])
    rec, _ = read(c.pcap())
    assert rec.data(0, True) == REAL
    assert only(rec, "tcp-urgent-data").offset == 150


# ------------------------------------------------------------------ 7. receive window


def _window_conv(server_win: int, *, ws: int | None = None, vlan: bool = False) -> tuple[Conv, int]:
    c = Conv(vlan=vlan)  # every frame tagged or none: a VLAN id is part of the connection's key
    syn_opts = b"\x01\x03\x03\x07" if ws is not None else b""  # NOP, window scale 7
    synack_opts = b"\x01\x03\x03" + bytes([ws]) if ws is not None else b""
    c.handshake(syn_opts=syn_opts, synack_opts=synack_opts, server_win=min(server_win, 65535))
    return c, c.cseq


@pytest.mark.parametrize("vlan", [False, True])
def test_data_beyond_the_advertised_window_is_discarded(vlan: bool) -> None:
    c, s0 = _window_conv(65535, vlan=vlan)
    c.put(False, c.sseq, ACK, ack=s0)  # the PACS's window after the handshake: 65,535, not scaled
    filler = bytes(70_000)
    c.put(True, s0 + len(filler), ACK | PSH, DECOY)  # 70,000 ahead of RCV.NXT: past the window
    c.send(True, filler)
    c.put(True, s0 + len(filler), ACK | PSH, REAL)
    c.cseq = s0 + len(filler) + len(REAL)
    c.fin()
    rec, reasm = read(c.pcap())
    assert rec.data(0, True) == filler + REAL
    a = only(rec, "tcp-beyond-window")
    assert (a.offset, a.length) == (70_000, len(DECOY)) and "65,535 bytes" in a.detail


def test_a_scaled_window_takes_data_further_ahead() -> None:
    """Window scale 7 on both SYNs (RFC 7323 2): the server's 1,000 is 128,000 bytes."""
    c, s0 = _window_conv(65535, ws=7)
    c.put(False, c.sseq, ACK, ack=s0, win=1000)
    filler = bytes(70_000)
    c.put(True, s0 + len(filler), ACK | PSH, REAL)  # within 128,000: buffered, as Linux does
    c.send(True, filler)
    c.cseq = s0 + len(filler) + len(REAL)
    c.fin()
    rec, _ = read(c.pcap())
    assert rec.data(0, True) == filler + REAL and not rec.anomalies


# ------------------------------------------------------------------ 8. SYN in an open connection


def test_a_syn_with_another_isn_does_not_end_the_connection() -> None:
    c = Conv()
    c.handshake()
    c.send(True, REAL[:500])
    c.put(True, 0x80001234, SYN, ack=0)  # Linux: challenge ACK (RFC 5961 4.2), nothing else
    c.send(True, REAL[500:])
    c.fin()
    rec, reasm = read(c.pcap())
    assert rec.data(0, True) == REAL and rec.closed == {0: "fin"} and reasm.stats.flows == 1
    assert only(rec, "tcp-syn-in-connection").offset == 500


# ------------------------------------------------------------------ 9. IP length beyond the frame


def test_an_ip_length_beyond_a_whole_frame_drops_the_packet() -> None:
    c = Conv()
    c.handshake()
    lie = bytearray(tcp_packet(c.c, c.s, c.cseq, ACK | PSH, b"", c.sseq))
    struct.pack_into("!H", lie, 2, len(lie) + len(REAL))  # claims bytes the frame does not carry
    c.t += 100
    c.frames.append((c.t, ether(bytes(lie))))  # padded to 60 bytes: padding is no payload
    c.send(True, REAL)
    c.fin()
    rec, reasm = read(c.pcap())
    st = reasm.stats
    assert rec.data(0, True) == REAL and rec.closed == {0: "fin"}
    assert st.snap_truncated == 0 and not st.problems and st.non_tcp == {"ip-length-exceeds-frame": 1}
    a = only(rec, "ip-length-exceeds-frame")
    assert a.conn is None and (a.src, a.sport, a.dst, a.dport) == ("10.1.2.3", 40001, "10.9.8.7", 104)


def test_a_frame_the_snap_length_cut_is_still_a_gap() -> None:
    c = Conv()
    c.handshake()
    c.send(True, REAL[:500])
    c.send(True, REAL[500:])
    cut = len(c.frames) - 1
    rec, reasm = read(pcap_bytes(c.frames, caplens={cut: 100}))
    assert rec.pieces(0, True) == [REAL[:546], ("gap", len(REAL) - 546)]  # 100 - 54 header bytes kept
    assert reasm.stats.snap_truncated == 1 and not rec.anomalies


# ------------------------------------------------------------------ retransmissions


def test_a_retransmission_with_other_bytes_is_reported() -> None:
    c = Conv()
    c.handshake()
    s0 = c.cseq
    c.send(True, DECOY[:600], mss=300)  # say with a bad checksum: the PACS drops it, the sensor cannot tell
    c.put(True, s0, ACK | PSH, REAL[:600])  # the retransmission the PACS reads
    c.put(True, s0, ACK | PSH, DECOY[:600])  # identical to what was delivered: silent
    rec, _ = read(c.pcap())
    assert rec.data(0, True) == DECOY[:600]  # the first copy stays (Linux keeps it too)
    a = only(rec, "tcp-retransmission-different-data")
    assert (a.offset, a.length) == (300, 300) and DECOY[300:316].hex() in a.detail


# ------------------------------------------------------------------ `pacsguard ids read` end to end


def _find_request() -> bytes:
    req = D.CommandSet(command_field=D.C_FIND_RQ, message_id=1, affected_sop_class_uid=FIND, priority=0,
                       command_data_set_type=1)
    return message(5, req, dataset_bytes(QueryRetrieveLevel="PATIENT", PatientName="*", PatientID=""))


def _evasive_find(evade: str) -> bytes:
    host = _find_request()
    c = Conv(timestamps=evade == "paws")
    c.handshake()
    c.send(True, rq())
    c.send(False, ac())
    s0 = c.cseq
    if evade == "no-ack":
        c.put(True, s0, PSH, bytes(len(host)))
    elif evade == "paws":
        c.put(True, s0, ACK | PSH, bytes(len(host)), tsval=3)
    elif evade == "syn-in-connection":
        c.put(True, 0x80001234, SYN, ack=0)
    c.send(True, host)
    c.fin()
    return c.pcap()


@pytest.mark.parametrize("evade,anomaly", [("no-ack", "tcp-no-ack"), ("paws", "tcp-paws-old-timestamp"),
                                           ("syn-in-connection", "tcp-syn-in-connection")])
def test_the_wildcard_find_behind_an_insertion_is_alerted(tmp_path: Path, evade: str, anomaly: str) -> None:
    path = tmp_path / f"{evade}.pcap"
    path.write_bytes(_evasive_find(evade))
    r = subprocess.run([PACSGUARD, "ids", "read", str(path), "--format", "json"], capture_output=True, text=True,
                       timeout=120)
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    events = [e for e in lines if "kind" in e]
    kinds = {e["kind"] for e in events}
    assert WILDCARD in kinds, (r.returncode, sorted(kinds), r.stderr[-2000:])
    (ev,) = [e for e in events if e["kind"] == f"ids.anomaly.{anomaly}"]
    assert ev["details"]["flow_id"] == "C0" and ev["details"]["from_client"] is True
    assert lines[-1]["summary"]["capture"]["anomalies"] == {anomaly: 1}
