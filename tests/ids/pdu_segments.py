"""A copy of a capture whose TCP payload is re-cut so that every DICOM PDU (PS3.8 9.3.1: type,
reserved, 4-byte length) starts a segment of its own.

tshark is the tests' second opinion on a capture, but its DICOM dissector (4.0) loses PDUs under
some segmentations that TCP produces when a PDU ends mid-segment on a 1500-byte MTU: a C-STORE-RSP
or C-FIND-RSP goes missing, or a whole association (random re-cuts of one capture showed both,
2 in 70). The byte streams are kept exactly; only the cuts move. The tests also check that
pacsguard reads the copy as it reads the original."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dpkt

_PDU_HEADER = 6
_FIN_RST = dpkt.tcp.TH_FIN | dpkt.tcp.TH_RST


@dataclass
class _Direction:
    next_seq: int  # the first sequence number not yet seen in this direction
    header: bytes = b""  # the part of the next PDU's header seen so far
    left: int = 0  # bytes of the current PDU not yet seen


def _frames(src: Path) -> tuple[int, list[tuple[float, bytes]]]:
    with src.open("rb") as f:
        head = f.read(4)
        f.seek(0)
        reader = dpkt.pcapng.Reader(f) if head == b"\x0a\x0d\x0d\x0a" else dpkt.pcap.Reader(f)
        return reader.datalink(), list(reader)


def pdu_aligned_copy(src: Path, dst: Path) -> Path:
    """Each data segment is written as it came (so ACKs stay behind the data they acknowledge),
    cut where a PDU ends; bytes seen before (a retransmission) are left out."""
    linktype, frames = _frames(src)
    assert linktype == dpkt.pcap.DLT_EN10MB, f"{src}: link type {linktype}, only Ethernet is re-cut"
    directions: dict[tuple[bytes, int, bytes, int], _Direction] = {}
    with dst.open("wb") as f:
        out = dpkt.pcap.Writer(f, linktype=linktype)
        for ts, buf in frames:
            eth = dpkt.ethernet.Ethernet(buf)
            ip, tcp = eth.data, getattr(eth.data, "data", None)
            if not isinstance(ip, dpkt.ip.IP) or not isinstance(tcp, dpkt.tcp.TCP):
                out.writepkt(buf, ts)
                continue
            key = (ip.src, tcp.sport, ip.dst, tcp.dport)
            if tcp.flags & dpkt.tcp.TH_SYN:
                directions[key] = _Direction(tcp.seq + 1)
            d = directions.get(key)
            if d is None or not tcp.data:
                out.writepkt(buf, ts)
                continue
            ahead = (tcp.seq - d.next_seq) & 0xFFFFFFFF
            assert ahead == 0 or ahead > 0x7FFFFFFF, f"{src}: a hole of {ahead} bytes in the capture"
            behind = (d.next_seq - tcp.seq) & 0xFFFFFFFF
            fresh = bytes(tcp.data)[behind:]
            seq = d.next_seq
            d.next_seq = (d.next_seq + len(fresh)) & 0xFFFFFFFF
            for piece in _cut(d, fresh):
                out.writepkt(_segment(eth, tcp, seq, piece, tcp.flags & ~_FIN_RST), ts)
                seq += len(piece)
            if tcp.flags & _FIN_RST:
                out.writepkt(_segment(eth, tcp, seq, b"", tcp.flags), ts)
    return dst


def _cut(d: _Direction, data: bytes) -> list[bytes]:
    """``data`` in pieces that each end where a PDU ends or where ``data`` ends."""
    pieces: list[bytes] = []
    start = i = 0
    while i < len(data):
        if d.left:
            step = min(d.left, len(data) - i)
            d.left -= step
            i += step
            if d.left == 0:
                pieces.append(data[start:i])
                start = i
            continue
        take = min(_PDU_HEADER - len(d.header), len(data) - i)
        d.header += data[i:i + take]
        i += take
        if len(d.header) == _PDU_HEADER:
            d.left = int.from_bytes(d.header[2:6], "big")
            d.header = b""
            if d.left == 0:
                pieces.append(data[start:i])
                start = i
    if start < len(data):
        pieces.append(data[start:])
    return pieces


def _segment(eth: dpkt.ethernet.Ethernet, tcp: dpkt.tcp.TCP, seq: int, data: bytes, flags: int) -> bytes:
    """One segment like ``tcp`` (ports, ACK, window) with ``seq``, ``data`` and ``flags``."""
    ip = eth.data
    seg = dpkt.tcp.TCP(sport=tcp.sport, dport=tcp.dport, seq=seq & 0xFFFFFFFF, ack=tcp.ack, win=tcp.win,
                       flags=flags, data=data)
    ip2 = dpkt.ip.IP(src=ip.src, dst=ip.dst, p=dpkt.ip.IP_PROTO_TCP, ttl=ip.ttl, id=ip.id, data=seg)
    ip2.len = len(ip2.pack_hdr()) + len(bytes(seg))
    return bytes(dpkt.ethernet.Ethernet(src=eth.src, dst=eth.dst, type=eth.type, data=ip2))
