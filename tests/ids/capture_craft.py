"""Helpers for the capture tests: packets built with dpkt, and capture files written by hand
(pcap in both byte orders and resolutions, pcapng with options and odd blocks), plus a recording
consumer."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

import dpkt

from pacsguard.ids.capture import Connection

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

# ------------------------------------------------------------------ packets (network layer up)


def tcp_ip(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    seq: int,
    flags: int,
    data: bytes = b"",
    ack: int = 0,
    *,
    ipv6_ext: bool = False,
    ip_options: bytes = b"",
) -> bytes:
    """An IPv4 or IPv6 (by the address syntax) packet carrying one TCP segment."""
    seg = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq & 0xFFFFFFFF, ack=ack & 0xFFFFFFFF, flags=flags, win=65535,
                       data=data)
    if ":" in src:
        s6, d6 = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
        # dpkt computes the TCP checksum over the plain packet
        plain = bytes(dpkt.ip6.IP6(src=s6, dst=d6, nxt=6, hlim=64, plen=len(bytes(seg)), data=seg))
        if not ipv6_ext:
            return plain
        # insert a hop-by-hop options header (next header TCP, length 0, PadN of 4) before TCP
        hbh = bytes([6, 0, 1, 4, 0, 0, 0, 0])
        tcp_part = plain[40:]
        return struct.pack("!IHBB", 0x60000000, len(hbh) + len(tcp_part), 0, 64) + s6 + d6 + hbh + tcp_part
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, ttl=64, data=seg)
    if ip_options:
        ip.opts = ip_options
        ip.hl = 5 + len(ip_options) // 4
    ip.len = len(bytes(ip))
    return bytes(ip)


def udp_ip(src: str, dst: str, sport: int, dport: int, data: bytes = b"x") -> bytes:
    u = dpkt.udp.UDP(sport=sport, dport=dport, data=data)
    u.ulen = 8 + len(data)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=17, data=u)
    ip.len = len(bytes(ip))
    return bytes(ip)


def ether(l3: bytes, *, vlans: tuple[int, ...] = (), ethertype: int | None = None, pad_to: int = 60) -> bytes:
    """Ethernet II frame around ``l3`` with optional 802.1Q tags (outer first), padded to 60 bytes."""
    if ethertype is None:
        ethertype = 0x86DD if l3[0] >> 4 == 6 else 0x0800
    hdr = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01"
    for i, vid in enumerate(vlans):
        tpid = 0x88A8 if i == 0 and len(vlans) > 1 else 0x8100
        hdr += struct.pack("!HH", tpid, vid & 0x0FFF)  # TPID, then tag control (VLAN id)
    frame = hdr + struct.pack("!H", ethertype) + l3
    return frame + b"\x00" * max(0, pad_to - len(frame))


def arp_frame() -> bytes:
    return ether(b"\x00\x01\x08\x00\x06\x04\x00\x01" + b"\x00" * 20, ethertype=0x0806)


def sll(l3: bytes) -> bytes:
    proto = 0x86DD if l3[0] >> 4 == 6 else 0x0800
    return struct.pack("!HHH8sH", 0, 1, 6, b"\x02\x00\x00\x00\x00\x01\x00\x00", proto) + l3


def sll2(l3: bytes) -> bytes:
    proto = 0x86DD if l3[0] >> 4 == 6 else 0x0800
    return struct.pack("!HHIHBB8s", proto, 0, 1, 1, 0, 6, b"\x02\x00\x00\x00\x00\x01\x00\x00") + l3


def null_hdr(l3: bytes, *, big_endian: bool = False) -> bytes:
    fam = 30 if l3[0] >> 4 == 6 else 2
    return struct.pack(">I" if big_endian else "<I", fam) + l3


def loop_hdr(l3: bytes) -> bytes:
    fam = 30 if l3[0] >> 4 == 6 else 2
    return struct.pack(">I", fam) + l3


# ------------------------------------------------------------------ capture files

Frame = tuple[int, bytes]  # (timestamp in microseconds, frame bytes)


def pcap_bytes(
    frames: list[Frame], linktype: int = 1, *, nano: bool = False, big_endian: bool = False, snaplen: int = 262144,
    caplens: dict[int, int] | None = None,
) -> bytes:
    """A pcap file (tcpdump.org format); ``caplens`` cuts frame i to that many captured bytes."""
    e = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for i, (ts_us, frame) in enumerate(frames):
        sec, usec = divmod(ts_us, 1_000_000)
        frac = usec * 1000 + 7 if nano else usec  # +7 ns: must be dropped when converting
        cap = frame[: caplens[i]] if caplens and i in caplens else frame
        out.append(struct.pack(e + "IIII", sec, frac, len(cap), len(frame)) + cap)
    return b"".join(out)


def _pad4(b: bytes) -> bytes:
    return b + b"\x00" * (-len(b) % 4)


def _opt(e: str, code: int, value: bytes) -> bytes:
    return struct.pack(e + "HH", code, len(value)) + _pad4(value)


def ng_block(e: str, btype: int, body: bytes) -> bytes:
    body = _pad4(body)
    n = 12 + len(body)
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def ng_shb(e: str = "<") -> bytes:
    return ng_block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def ng_idb(e: str, linktype: int, *, tsresol: int | None = None, tsoffset: int | None = None,
           snaplen: int = 0) -> bytes:
    opts = b""
    if tsresol is not None:
        opts += _opt(e, 9, bytes([tsresol]))
    if tsoffset is not None:
        opts += _opt(e, 14, struct.pack(e + "q", tsoffset))
    if opts:
        opts += struct.pack(e + "HH", 0, 0)
    return ng_block(e, 1, struct.pack(e + "HHI", linktype, 0, snaplen) + opts)


def ng_epb(e: str, ifid: int, ticks: int, frame: bytes, caplen: int | None = None) -> bytes:
    cap = frame if caplen is None else frame[:caplen]
    return ng_block(e, 6,
                    struct.pack(e + "IIIII", ifid, ticks >> 32, ticks & 0xFFFFFFFF, len(cap), len(frame)) + _pad4(cap))


def ng_spb(e: str, frame: bytes) -> bytes:
    return ng_block(e, 3, struct.pack(e + "I", len(frame)) + _pad4(frame))


def pcapng_bytes(
    frames: list[Frame], linktype: int = 1, *, tsresol: int | None = None, big_endian: bool = False,
    extra_blocks: bool = False,
) -> bytes:
    """One-section pcapng; ``tsresol`` as in if_tsresol (9: ns, 0x86: 2**-6 s); ``extra_blocks``
    adds a name-resolution block, a custom block and an interface statistics block."""
    e = ">" if big_endian else "<"
    out = [ng_shb(e), ng_idb(e, linktype, tsresol=tsresol)]
    if extra_blocks:
        out.append(ng_block(e, 4, struct.pack(e + "HH", 0, 0)))  # NRB, empty
        out.append(ng_block(e, 0x00000BAD, struct.pack(e + "I", 32473) + b"custom"))
    for ts_us, frame in frames:
        if tsresol is None:
            ticks = ts_us
        elif tsresol & 0x80:
            ticks = ts_us * (1 << (tsresol & 0x7F)) // 1_000_000
        else:
            ticks = ts_us * 10 ** (tsresol) // 1_000_000
        out.append(ng_epb(e, 0, ticks, frame))
    if extra_blocks:
        out.append(ng_block(e, 5, struct.pack(e + "III", 0, 0, 0)))  # ISB, no options
    return b"".join(out)


# ------------------------------------------------------------------ conversations


@dataclass
class Flow:
    """Builds one TCP conversation's segments with correct sequence numbers."""

    client: str = "10.1.2.3"
    server: str = "10.9.8.7"
    cport: int = 40001
    sport: int = 104
    cisn: int = 1000
    sisn: int = 5000_000
    ts: int = 1_700_000_000_000_000
    cseq: int = field(init=False)
    sseq: int = field(init=False)

    def __post_init__(self) -> None:
        self.cseq = (self.cisn + 1) & 0xFFFFFFFF
        self.sseq = (self.sisn + 1) & 0xFFFFFFFF

    def _tick(self) -> int:
        self.ts += 100
        return self.ts

    def handshake(self) -> list[tuple[int, bytes]]:
        return [
            (self._tick(), tcp_ip(self.client, self.server, self.cport, self.sport, self.cisn, SYN)),
            (self._tick(),
             tcp_ip(self.server, self.client, self.sport, self.cport, self.sisn, SYN | ACK, ack=self.cseq)),
            (self._tick(), tcp_ip(self.client, self.server, self.cport, self.sport, self.cseq, ACK, ack=self.sseq)),
        ]

    def send(self, from_client: bool, data: bytes, mss: int = 1460, flags: int = ACK | PSH) -> list[tuple[int, bytes]]:
        """Segments carrying ``data`` (sequence numbers advance)."""
        out = []
        for i in range(0, len(data), mss):
            chunk = data[i : i + mss]
            if from_client:
                out.append((self._tick(), tcp_ip(self.client, self.server, self.cport, self.sport, self.cseq, flags,
                                                 chunk, self.sseq)))
                self.cseq = (self.cseq + len(chunk)) & 0xFFFFFFFF
            else:
                out.append((self._tick(), tcp_ip(self.server, self.client, self.sport, self.cport, self.sseq, flags,
                                                 chunk, self.cseq)))
                self.sseq = (self.sseq + len(chunk)) & 0xFFFFFFFF
        return out

    def segment_at(self, from_client: bool, seq: int, data: bytes, flags: int = ACK) -> tuple[int, bytes]:
        if from_client:
            return self._tick(), tcp_ip(self.client, self.server, self.cport, self.sport, seq, flags, data, self.sseq)
        return self._tick(), tcp_ip(self.server, self.client, self.sport, self.cport, seq, flags, data, self.cseq)

    def fin(self) -> list[tuple[int, bytes]]:
        c = tcp_ip(self.client, self.server, self.cport, self.sport, self.cseq, FIN | ACK, ack=self.sseq)
        s = tcp_ip(self.server, self.client, self.sport, self.cport, self.sseq, FIN | ACK, ack=(self.cseq + 1))
        a = tcp_ip(self.client, self.server, self.cport, self.sport, self.cseq + 1, ACK, ack=(self.sseq + 1))
        return [(self._tick(), c), (self._tick(), s), (self._tick(), a)]

    def rst(self, from_client: bool = True) -> tuple[int, bytes]:
        if from_client:
            return self._tick(), tcp_ip(self.client, self.server, self.cport, self.sport, self.cseq, RST | ACK,
                                        ack=self.sseq)
        return self._tick(), tcp_ip(self.server, self.client, self.sport, self.cport, self.sseq, RST | ACK,
                                    ack=self.cseq)


def eth_frames(pkts: list[tuple[int, bytes]], **kw: object) -> list[Frame]:
    return [(ts, ether(p, **kw)) for ts, p in pkts]  # type: ignore[arg-type]


# ------------------------------------------------------------------ recording consumer


class Recorder:
    """Keeps every stream (gaps as ``("gap", n)`` markers) and the call sequence."""

    def __init__(self) -> None:
        self.conns: list[Connection] = []
        self.streams: dict[tuple[int, bool], list[bytes | tuple[str, int]]] = {}
        self.closed: dict[int, str] = {}
        self.events: list[tuple] = []
        self.data_ts: list[int] = []

    def on_open(self, conn: Connection) -> None:
        assert conn.conn_id not in self.closed
        self.conns.append(conn)
        self.events.append(("open", conn.conn_id))

    def on_data(self, conn: Connection, from_client: bool, data: memoryview | bytes, ts_us: int) -> None:
        assert len(data) > 0
        assert conn.conn_id not in self.closed
        self.streams.setdefault((conn.conn_id, from_client), []).append(bytes(data))
        self.data_ts.append(ts_us)

    def on_gap(self, conn: Connection, from_client: bool, nbytes: int) -> None:
        assert nbytes > 0
        self.streams.setdefault((conn.conn_id, from_client), []).append(("gap", nbytes))
        self.events.append(("gap", conn.conn_id, from_client, nbytes))

    def on_close(self, conn: Connection, reason: str) -> None:
        assert conn.conn_id not in self.closed
        self.closed[conn.conn_id] = reason
        self.events.append(("close", conn.conn_id, reason))

    def data(self, conn_id: int, from_client: bool) -> bytes:
        """The stream without gap markers."""
        return b"".join(x for x in self.streams.get((conn_id, from_client), []) if isinstance(x, bytes))

    def pieces(self, conn_id: int, from_client: bool) -> list[bytes | tuple[str, int]]:
        """The stream with adjacent data pieces merged, gaps kept in place."""
        out: list[bytes | tuple[str, int]] = []
        for x in self.streams.get((conn_id, from_client), []):
            if isinstance(x, bytes) and out and isinstance(out[-1], bytes):
                out[-1] = out[-1] + x
            else:
                out.append(x)
        return out
