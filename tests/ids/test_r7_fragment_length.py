"""An IP fragment whose header claims more bytes than its whole frame holds (coordinator, round 7):
Linux drops such a packet before reassembly (ip_rcv_core / ip6_rcv_core), so the sensor must drop
it too and report it as ``ip-length-exceeds-frame``, not read it as a frame the capture's snap
length cut (which would mark the run incomplete and hide the lie)."""

from __future__ import annotations

import os
import socket
import struct
import sys

import dpkt
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from capture_craft import ether
from test_round6_stream import ACK, PSH, REAL, Conv, only, read, tcp_packet


def _v4_first_fragment(c: Conv, claimed_extra: int) -> bytes:
    """The first fragment (MF set) of a segment from the client, claiming bytes it does not carry."""
    packet = bytearray(tcp_packet(c.c, c.s, c.cseq, ACK | PSH, REAL[:64], c.sseq))
    struct.pack_into("!H", packet, 6, 0x2000)  # more fragments, offset 0
    struct.pack_into("!H", packet, 2, len(packet) + claimed_extra)
    return bytes(packet)


def _v6_first_fragment(src: str, dst: str, sport: int, dport: int, claimed_extra: int) -> bytes:
    """An IPv6 first fragment (M set) carrying a TCP header, with a payload length beyond the frame."""
    seg = bytes(dpkt.tcp.TCP(sport=sport, dport=dport, seq=1, ack=1, flags=ACK | PSH, data=REAL[:64]))
    frag = struct.pack("!BBHI", 6, 0, 0x0001, 0x1234)  # next header TCP, offset 0, M, identification
    payload = frag + seg
    header = struct.pack("!IHBB", 6 << 28, len(payload) + claimed_extra, 44, 64)
    return header + socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst) + payload


def test_an_ipv4_fragment_longer_than_its_whole_frame_is_dropped_not_a_snap_cut() -> None:
    c = Conv()
    c.handshake()
    c.t += 100
    c.frames.append((c.t, ether(_v4_first_fragment(c, 1200))))
    c.send(True, REAL)
    c.fin()
    rec, reasm = read(c.pcap())
    st = reasm.stats
    assert rec.data(0, True) == REAL and rec.closed == {0: "fin"}
    assert st.snap_truncated == 0 and not st.problems, st.problems
    assert st.non_tcp == {"ip-length-exceeds-frame": 1} and st.ip_fragments == 1
    a = only(rec, "ip-length-exceeds-frame")
    assert (a.src, a.sport, a.dst, a.dport) == ("10.1.2.3", 40001, "10.9.8.7", 104)


@pytest.mark.parametrize("claimed_extra", [8, 4000])
def test_an_ipv6_fragment_longer_than_its_whole_frame_is_dropped_not_a_snap_cut(claimed_extra: int) -> None:
    c = Conv()
    c.handshake()
    c.t += 100
    lie = _v6_first_fragment("2001:db8::1", "2001:db8::2", 40002, 104, claimed_extra)
    c.frames.append((c.t, ether(lie, ethertype=0x86DD)))
    c.send(True, REAL)
    c.fin()
    rec, reasm = read(c.pcap())
    st = reasm.stats
    assert rec.data(0, True) == REAL
    assert st.snap_truncated == 0 and not st.problems, st.problems
    assert st.non_tcp == {"ip-length-exceeds-frame": 1} and st.ip_fragments == 1
    a = only(rec, "ip-length-exceeds-frame")
    assert (a.src, a.sport, a.dst, a.dport) == ("2001:db8::1", 40002, "2001:db8::2", 104)
