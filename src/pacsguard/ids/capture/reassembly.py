"""TCP stream reassembly for the passive sensor: segments in, ordered per-direction byte streams out.

The model follows RFC 9293 (TCP): each direction of a connection is a byte stream numbered by 32-bit
sequence numbers (section 3.4) that wrap modulo 2**32; a SYN and a FIN each occupy one sequence number;
the receiver delivers bytes in sequence order however the segments arrived (section 3.10.7.4).
A passive observer sees what the receiver saw plus what got lost on the way to the capture point, so
beyond what a receiver does this module also:

* starts a direction at the first segment it sees when the handshake was missed (``midstream``);
* skips a hole that will never fill (the per-flow or global out-of-order buffer is full, or the
  connection ended) and tells the consumer how many bytes are missing (:meth:`StreamConsumer.on_gap`);
* bounds memory: at most ``max_flows`` open connections (least recently used evicted, CLOCK
  approximation), idle connections closed after ``idle_timeout_us`` of *capture* time, out-of-order
  data bounded per flow and globally.  A connection *in use* (payload delivered in both
  directions, no FIN or RST seen) is closed only after ``established_timeout_us``: Linux keeps an
  ESTABLISHED socket without traffic for ever (RFC 9293 has no idle timeout; 2 h is when a peer
  with SO_KEEPALIVE would first probe, ``tcp_keepalive_time``), so a DICOM association a PACS holds
  open while its user reads images must not be forgotten after minutes: its later commands would
  be decoded mid-stream, without the AE titles rules match on (an evasion by waiting).

Flow table. Every connection has two :class:`_Half` objects, one per direction, stored in one dict
under the raw directional 4-tuple bytes exactly as they appear in the packet (IPv4: source address,
destination address, source port, destination port = 12 bytes, which is one contiguous slice of an
option-less IPv4 header plus the TCP ports; IPv6: 36 bytes; a frame with IEEE 802.1Q/802.1ad tags
adds its outer and inner VLAN ids, 2 bytes each, since two VLANs may use the same addresses).
A packet's own bytes thus find its direction's half with one dict lookup and no canonicalisation.
``_Half.next_seq`` is ``-1`` whenever the fast path must not be taken (direction not started yet,
or connection closed), so the reader's inlined fast path needs just ``seq == half.next_seq``.

Where a receiver and an observer could read different bytes (IDS evasion, RFC 9293 and Ptacek &
Newsham 1998), the reassembler does what the protected host, a Linux PACS, does (the target
policy, like Suricata's host-os policy "linux") and reports the attempt as a
:class:`StreamAnomaly` (``StreamConsumer.on_anomaly``, optional; counted in
``CaptureStats.anomalies``; the names are :data:`ANOMALIES`):

* A segment with none of ACK, SYN, RST (Linux: "if (!th->ack && !th->rst && !th->syn) goto
  discard") is not stream data (``tcp-no-ack``), nor is data on a SYN without ACK: no TCP Fast
  Open on the listener (``tcp-syn-data``).
* PAWS (RFC 7323 5, Linux ``tcp_paws_discard``): when both SYNs carried timestamps, a segment whose
  TSval is older than TS.Recent (the newest accepted at or before RCV.NXT) by more than one is
  dropped (``tcp-paws-old-timestamp``).  TCP options are parsed on SYNs and, once timestamps are
  in use, on segments the reader's fast path cannot check itself.
* RST (RFC 9293 section 3.10.7.4, RFC 5961 section 3.2, Linux ``tcp_validate_incoming``): a RST
  resets the connection only when its sequence number is exactly the next expected one (or one
  past a FIN).  One at what the receiver acknowledged beyond that (bytes the capture lacks, or a
  forged acknowledgment sent in the receiver's name, which the receiver never sees) waits: data on
  the connection afterwards refutes it, the end of the connection confirms it.  Any other RST is
  one Linux drops (out of window) or answers with a challenge ACK (in window): the connection goes
  on and is still inspected; the RST is reported as ``tcp-rst-invalid`` and its payload, like
  Linux, is not taken.
* A SYN with another ISN in a connection that carried data and saw no FIN or RST gets a challenge
  ACK from Linux (RFC 5961 4.2): the connection goes on (``tcp-syn-in-connection``); only a SYN-ACK
  answering that SYN (the server's socket was gone) starts a new connection (``"reused"``).
* Urgent data (Linux ``tcp_check_urg``/``tcp_recvmsg`` without ``SO_OOBINLINE``): the byte before
  the urgent pointer is taken out of the stream (``tcp-urgent-data``; stream offsets count it).
* Receive window (RFC 9293 3.10.7.4, RFC 7323 2): data starting at or beyond the next expected
  byte (or the receiver's acknowledgment, when it acknowledged bytes the capture lacks) plus the
  largest window the receiver ever advertised (scaled if both SYNs carried the option) is dropped
  (``tcp-beyond-window``); only when the handshake was seen.
* Overlapping out-of-order data (Linux ``tcp_data_queue_ofo``): data already delivered in order
  wins; among buffered segments the one that starts first wins, and at the same start the longer
  (at the same length, the first to arrive: Linux keeps a segment that covers one from the same
  start and drops one inside another).  Where the bytes of the segment that lost differ from
  those delivered, ``tcp-overlap-different-data`` is reported with the stream offset.  Compared
  are the bytes delivered while the hole was filled (the segment that filled it and the buffered
  ones drained behind it).  A retransmission of data delivered earlier is compared with the last
  :data:`RECENT_SEGMENTS` segments delivered in its direction (``tcp-retransmission-different-data``).
* IP: fragments are reassembled by :mod:`.ipfrag` before TCP sees them; a whole frame shorter than
  its IP length is dropped by :mod:`.decode` (``ip-length-exceeds-frame``).

Consumer contract: ``data`` passed to :meth:`StreamConsumer.on_data` is valid only during the call
(it is usually a zero-copy ``memoryview`` of the capture file's mmap or of a live receive buffer);
copy it (``bytes(data)``) to keep it.  Exceptions raised by the consumer propagate to the caller.
"""

from __future__ import annotations

import socket
import struct
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from heapq import heappop, heappush
from typing import Any, Callable, Final, Iterable, Protocol, Sequence

from .ipfrag import IPDefragmenter

__all__ = [
    "CaptureProblem",
    "StreamAnomaly",
    "CaptureStats",
    "Connection",
    "StreamConsumer",
    "NullConsumer",
    "TCPReassembler",
    "FIN",
    "SYN",
    "RST",
    "ACK",
]

# TCP control bits, RFC 9293 section 3.1 (low byte of the data-offset/flags word).
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20

# _Half.gate bits
_GATE_PAWS = 1
_GATE_URG = 2
_GATE_RST = 4

_U16 = struct.Struct("!H").unpack_from
_U32 = struct.Struct("!I").unpack_from

_M32 = 0xFFFFFFFF
_HALF32 = 0x80000000
# RFC 7323 section 2.3: the largest window a sender may use (scale 14) is 2**30 bytes; a segment
# further ahead than that cannot be valid data of this stream.
_MAX_AHEAD = 1 << 30

MAX_PROBLEMS = 100
#: delivered segments remembered per direction to compare retransmissions with
RECENT_SEGMENTS = 8


@dataclass(slots=True)
class CaptureProblem:
    """Something wrong with the capture file's structure (not with the traffic in it).

    ``what`` describes the problem; ``offset`` is the byte offset in the file (or ``-1`` for live
    capture) where it was found.  ``frame`` is the number of the frame whose record holds it, as
    Wireshark numbers frames (1-based, every packet record or block of the file counted, damaged
    ones too); ``0`` when the problem is not in a frame, and then ``after_frame`` is the number of
    frames before it (``-1``: unknown, as in IP reassembly or live capture).
    """

    what: str
    offset: int
    frame: int = 0
    after_frame: int = -1

    def where(self) -> str:
        """Where it is, for people: ``frame 12, offset 1,234`` (empty when nothing is known)."""
        parts = []
        if self.frame > 0:
            parts.append(f"frame {self.frame:,}")
        elif self.after_frame > 0:
            parts.append(f"after frame {self.after_frame:,}")
        elif self.after_frame == 0:
            parts.append("before the first frame")
        if self.offset >= 0:
            parts.append(f"offset {self.offset:,}")
        return ", ".join(parts)


@dataclass(slots=True)
class StreamAnomaly:
    """Traffic a receiver and a passive observer may read differently: an IDS evasion technique
    (or a broken stack).  ``what`` is one of :data:`ANOMALIES`.

    ``src``/``sport`` sent it to ``dst``/``dport`` (ports 0 for an IP fragment).  ``offset``: for
    TCP the position in the sender's byte stream (0 = the first byte after the SYN, or the first
    byte seen mid-stream) where the difference starts; for a fragment its offset in the datagram.
    ``length``: the bytes concerned.  ``conn``/``from_client``: the TCP connection and direction
    (None for IP fragments).  ``detail`` says what was kept.  ``vlan``: the outer and inner VLAN
    ids of a tagged frame (IEEE 802.1Q/802.1ad), empty when untagged or VLAN tracking is off.
    """

    what: str
    ts_us: int
    src: str
    sport: int
    dst: str
    dport: int
    offset: int
    length: int
    detail: str
    conn: Connection | None = None
    from_client: bool | None = None
    vlan: tuple[int, ...] = ()


#: anomaly -> what it is (docs/ids.md, "Evasion and ambiguity").
ANOMALIES = {
    "tcp-rst-invalid": "a RST whose sequence number a Linux receiver does not accept (RFC 5961 3.2)",
    "tcp-overlap-different-data": "overlapping TCP segments carry different bytes for the same position",
    "tcp-retransmission-different-data": "a retransmission carries other bytes than those delivered at its position",
    "tcp-no-ack": "a segment without the ACK flag carries data or a FIN: Linux discards it (RFC 9293 3.10.7.4)",
    "tcp-syn-data": "data on a SYN: a Linux PACS (no TCP Fast Open) discards it, the client sends it again",
    "tcp-paws-old-timestamp": "a segment with a TCP timestamp older than the last one accepted: discarded "
    "(PAWS, RFC 7323 5)",
    "tcp-urgent-data": "an urgent byte (URG): Linux without SO_OOBINLINE takes it out of the stream (RFC 9293 3.8.5)",
    "tcp-beyond-window": "data beyond any receive window the receiver advertised: Linux discards it "
    "(RFC 9293 3.10.7.4)",
    "tcp-syn-in-connection": "a SYN with another ISN in an open connection: Linux answers with a challenge ACK "
    "and keeps the connection (RFC 5961 4)",
    "ip-length-exceeds-frame": "the IP header claims more bytes than the whole captured frame holds: Linux "
    "discards the packet",
    "ip-fragment-overlap": "IP fragments overlap: the datagram is discarded (RFC 5722, Linux)",
    "ip-fragment-different-data": "a duplicate IP fragment carries different bytes (the first is kept)",
}


_Bytes = bytes  # CaptureStats has a field named bytes


@dataclass(slots=True)
class CaptureStats:
    """Counters for one capture run.  Packet and byte counts are frames read from the capture."""

    packets: int = 0
    bytes: int = 0
    payload_bytes: int = 0  # TCP payload delivered in order to the consumer (filled when flows close)
    # frames given to no connection, by protocol or reason ("ipv4-udp", "arp", "truncated-tcp",
    # "tcp-rst-without-connection", ...)
    non_tcp: dict[str, int] = field(default_factory=dict)
    ip_fragments: int = 0  # IP fragments seen (any protocol)
    ip_reassembled: int = 0  # TCP datagrams reassembled from fragments
    ip_fragments_expired: int = 0  # incomplete datagrams given up after the reassembly timeout
    ip_fragments_dropped: int = 0  # fragments dropped: overlapping, malformed, or over a limit
    snap_truncated: int = 0  # frames the capture cut short (captured length < what IP declares)
    snap_missing_bytes: int = 0  # TCP payload bytes those frames did not keep
    # frames whose IP length was 0 (IPv4 total length, IPv6 payload length without a Jumbo Payload
    # option) and was taken from the frame: captured on the sending host before segmentation offload
    ip_length_from_frame: int = 0
    # offset in the reader's buffer of the frame being decoded when its record says the capture cut
    # it (captured length below the original length; 0 for such a live frame), else -1: set by the
    # reader, with cut_frame: that frame's number (Wireshark's) and file offset, for the problem
    cut_at: int = -1
    cut_frame: tuple[int, int] = (0, -1)
    # VLAN tracking off: the VLAN ids (2 bytes each, outer first) of the Ethernet frame being
    # decoded, which are not in its key; the reader names its connection's VLAN with them
    frame_vlan: _Bytes = b""
    anomalies: dict[str, int] = field(default_factory=dict)  # StreamAnomaly.what -> count
    retransmissions: int = 0  # segments wholly inside already-delivered data (incl. SYN repeats)
    overlaps: int = 0  # segments partly inside delivered data, trimmed
    out_of_order: int = 0  # segments that arrived ahead of a hole and were buffered
    out_of_window: int = 0  # segments beyond the receiver's window (or 2**30 bytes ahead): dropped
    gaps: int = 0
    gap_bytes: int = 0
    flows: int = 0  # connections opened
    evicted: int = 0  # connections closed because max_flows was reached
    timed_out: int = 0  # connections closed after idle_timeout
    close_reasons: dict[str, int] = field(default_factory=dict)
    late_packets: int = 0  # packets for a connection already closed (final ACKs, late retransmits)
    max_concurrent_flows: int = 0
    max_buffered_bytes: int = 0
    skipped_blocks: int = 0  # pcapng blocks of types this reader does not use
    first_ts_us: int | None = None
    last_ts_us: int | None = None
    problems: list[CaptureProblem] = field(default_factory=list)  # the first MAX_PROBLEMS
    problem_count: int = 0
    lost_problems: int = 0  # problems that cost frames (all but those read past, e.g. an odd version)
    stopped: CaptureProblem | None = None  # the damage that ended reading before the end of the file

    def add_problem(self, what: str, offset: int, *, lost: bool = True, stopped: bool = False, frame: int = 0,
                    after_frame: int = -1) -> None:
        """Record a problem (kept if fewer than MAX_PROBLEMS are stored, always counted). *lost*: frames
        were lost to it; *stopped*: reading ended there, the rest of the file is lost; *frame* and
        *after_frame*: see :class:`CaptureProblem`."""
        self.problem_count += 1
        problem = CaptureProblem(what, offset, frame, after_frame)
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)
        if lost or stopped:
            self.lost_problems += 1
        if stopped and self.stopped is None:
            self.stopped = problem

    def count_non_tcp(self, what: str) -> None:
        d = self.non_tcp
        d[what] = d.get(what, 0) + 1

    @property
    def non_tcp_packets(self) -> int:
        return sum(self.non_tcp.values())


#: Capture time a connection in use (payload both ways, no FIN or RST) may stay silent before it
#: is closed as ``"timeout"``: Linux's ``tcp_keepalive_time`` (module docstring).
ESTABLISHED_TIMEOUT_S: Final = 7200.0


class _Half:
    """One direction of a connection (sender's view): where its byte stream stands."""

    __slots__ = (
        "conn",
        "from_client",
        "key",
        "next_seq",  # next expected sequence number, or -1 (not started / closed)
        "started",
        "syn_next",  # ISN + 1 if a SYN was seen, else -1 (to recognise a repeated SYN)
        "packets",
        "bytes",  # payload bytes delivered to the consumer
        "gap_bytes",  # bytes skipped as missing
        "last_ts",
        "ooo",  # heap of (stream position, tiebreak, data, missing) ahead of a hole
        "ooo_bytes",
        "fin_seq",  # sequence number of the FIN, or -1
        "last_ack",  # acknowledgment number of the last segment this side sent (peer's stream), or -1
        # What the fast path must look at before taking an in-order segment (bits): _GATE_PAWS
        # (check the TCP timestamp), _GATE_URG (an urgent byte is pending), _GATE_RST (a RST
        # waits to be confirmed).  0: nothing, the plain fast path.
        "gate",
        "ts_recent",  # RFC 7323 5.3 TS.Recent: the newest TSval accepted from this sender, or -1
        "syn_ts",  # TSval on this side's SYN, -1 without the option
        "ws",  # window scale shift on this side's SYN: -1 without the option, -2 SYN options unknown
        "scale",  # shift of the windows this side advertises, -1 unknown (handshake not seen)
        "syn_win",  # window on this side's SYN (never scaled, RFC 7323 2.2)
        "max_win",  # largest window field this side advertised after its SYN
        "urg_seq",  # sequence number of the pending urgent byte, or -1
        # the last segments delivered (bytes or views of the capture), contiguous and ending at
        # next_seq, to compare retransmissions with; None until the first one
        "recent",
        "syn_cand",  # (ISN + 1, window, ws, TSval) of a SYN ignored in the open connection, or None
        "rst_pending",  # sequence number of a RST at the receiver's acknowledgment, or -1
    )

    def __init__(self, conn: Connection, from_client: bool, key: bytes, ts: int) -> None:
        self.conn = conn
        self.from_client = from_client
        self.key = key
        self.next_seq = -1
        self.started = False
        self.syn_next = -1
        self.packets = 0
        self.bytes = 0
        self.gap_bytes = 0
        self.last_ts = ts
        # (stream position, -length, arrival, data, missing): the heap pops the segment that wins
        # an overlap first (lowest start, then the longest, then the first to arrive: Linux)
        self.ooo: list[tuple[int, int, int, bytes, int]] = []
        self.ooo_bytes = 0
        self.fin_seq = -1
        self.last_ack = -1
        self.gate = 0
        self.ts_recent = -1
        self.syn_ts = -1
        self.ws = -2
        self.scale = -1
        self.syn_win = 0
        self.max_win = 0
        self.urg_seq = -1
        self.recent: deque[bytes | memoryview] | None = None
        self.syn_cand: tuple[int, int, int, int] | None = None
        self.rst_pending = -1

    def pos(self, seq: int) -> int:
        """Stream position (0 = the first byte) of sequence number ``seq`` of this started direction."""
        return self.bytes + self.gap_bytes + ((((seq - self.next_seq) + _HALF32) & _M32) - _HALF32)

    def start(self, seq: int) -> None:
        self.next_seq = seq & _M32
        self.started = True


@dataclass(slots=True, eq=False)
class Connection:
    """A TCP connection as the sensor sees it.  ``state`` is free for the consumer's use.

    Per-direction counters are properties read from the live halves: ``client_*`` is what the client
    sent, ``server_*`` what the server sent.  ``*_bytes`` counts payload delivered in order,
    ``*_gap_bytes`` payload reported missing through ``on_gap``.
    """

    client_ip: str
    client_port: int
    server_ip: str
    server_port: int
    ip_version: int
    first_ts_us: int
    midstream: bool = False
    conn_id: int = 0
    state: Any = None
    close_reason: str | None = None
    #: which side sent the first FIN or RST (True: the client), None until one was seen
    closed_first_by_client: bool | None = None
    #: the outer and inner VLAN ids of its frames (IEEE 802.1Q 9.6, 802.1ad), () when untagged;
    #: with VLAN tracking off (not part of the connection then), those of the first tagged frame
    #: the reassembler's slow path saw (a handshake's, usually)
    vlan: tuple[int, ...] = ()
    _c2s: _Half | None = field(default=None, repr=False)
    _s2c: _Half | None = field(default=None, repr=False)
    _mark: int = field(default=0, repr=False)  # CLOCK reference mark (capture time)

    @property
    def closed(self) -> bool:
        return self.close_reason is not None

    @property
    def last_ts_us(self) -> int:
        assert self._c2s is not None and self._s2c is not None
        a = self._c2s.last_ts
        b = self._s2c.last_ts
        return a if a > b else b

    @property
    def client_bytes(self) -> int:
        assert self._c2s is not None
        return self._c2s.bytes

    @property
    def server_bytes(self) -> int:
        assert self._s2c is not None
        return self._s2c.bytes

    @property
    def client_packets(self) -> int:
        assert self._c2s is not None
        return self._c2s.packets

    @property
    def server_packets(self) -> int:
        assert self._s2c is not None
        return self._s2c.packets

    @property
    def client_gap_bytes(self) -> int:
        assert self._c2s is not None
        return self._c2s.gap_bytes

    @property
    def server_gap_bytes(self) -> int:
        assert self._s2c is not None
        return self._s2c.gap_bytes


class StreamConsumer(Protocol):
    """What the reassembler calls.  ``from_client`` tells the direction of data and gaps."""

    def on_open(self, conn: Connection) -> None: ...

    def on_data(
        self, conn: Connection, from_client: bool, data: memoryview | bytes, ts_us: int
    ) -> None: ...

    def on_gap(self, conn: Connection, from_client: bool, nbytes: int) -> None: ...

    def on_close(self, conn: Connection, reason: str) -> None: ...

    # Optional (looked up with getattr): ``on_anomaly(anomaly: StreamAnomaly) -> None``.


class NullConsumer:
    """A consumer that ignores everything; subclass it and override what you need."""

    def on_open(self, conn: Connection) -> None:
        pass

    def on_data(
        self, conn: Connection, from_client: bool, data: memoryview | bytes, ts_us: int
    ) -> None:
        pass

    def on_gap(self, conn: Connection, from_client: bool, nbytes: int) -> None:
        pass

    def on_close(self, conn: Connection, reason: str) -> None:
        pass

    def on_anomaly(self, anomaly: StreamAnomaly) -> None:
        pass


def _tcp_options(mv: memoryview, p: int, end: int) -> tuple[int, int]:
    """(window scale shift, TSval) from the TCP options ``mv[p:end]``, -1 for each one absent.

    RFC 9293 3.1 (end of list 0, no-operation 1, others kind/length), RFC 7323 2.2 (window scale,
    kind 3 length 3; a shift above 14 is taken as 14, as Linux does) and 3.2 (timestamps, kind 8
    length 10).  A malformed option ends the parse, as in Linux tcp_parse_options."""
    ws = ts = -1
    while p < end:
        kind = mv[p]
        if kind == 0:
            break
        if kind == 1:
            p += 1
            continue
        if p + 1 >= end:
            break
        ln = mv[p + 1]
        if ln < 2 or p + ln > end:
            break
        if kind == 3 and ln == 3:
            ws = min(mv[p + 2], 14)
        elif kind == 8 and ln == 10:
            ts = _U32(mv, p + 2)[0]
        p += ln
    return ws, ts


def _negotiate(synack: _Half, syn: _Half) -> None:
    """After the SYN-ACK: window scaling is in effect when both SYNs carried the option (RFC 7323
    2.2, else both shifts are 0); PAWS when both carried timestamps (RFC 7323 5.3, Linux
    tstamp_ok).  Nothing is decided when either SYN's options are unknown."""
    if synack.ws == -2 or syn.ws == -2 or syn.syn_next < 0:
        return
    both = synack.ws >= 0 and syn.ws >= 0
    synack.scale = synack.ws if both else 0
    syn.scale = syn.ws if both else 0
    if synack.syn_ts >= 0 and syn.syn_ts >= 0:
        for h in (synack, syn):
            if h.ts_recent < 0:
                h.ts_recent = h.syn_ts
            h.gate |= _GATE_PAWS


def reverse_key(key: bytes) -> bytes:
    """The 4-tuple key of the opposite direction (12-byte IPv4 or 36-byte IPv6 key, each followed
    by the 2-byte outer and inner VLAN ids of a tagged frame: 14 or 16, 38 or 40 bytes)."""
    if len(key) < 36:
        return key[4:8] + key[0:4] + key[10:12] + key[8:10] + key[12:]
    return key[16:32] + key[0:16] + key[34:36] + key[32:34] + key[36:]


def key_vlans(key: bytes) -> tuple[int, ...]:
    """The VLAN ids that follow the addresses and ports of a directional key (outer first)."""
    tail = key[12:] if len(key) < 36 else key[36:]
    return tuple(int.from_bytes(tail[i : i + 2], "big") for i in range(0, len(tail) - 1, 2))


def _endpoints(key: bytes) -> tuple[int, str, int, str, int]:
    """(ip_version, src ip, src port, dst ip, dst port) from a directional key (VLAN ids ignored)."""
    if len(key) < 36:
        return (
            4,
            socket.inet_ntop(socket.AF_INET, key[0:4]),
            int.from_bytes(key[8:10], "big"),
            socket.inet_ntop(socket.AF_INET, key[4:8]),
            int.from_bytes(key[10:12], "big"),
        )
    return (
        6,
        socket.inet_ntop(socket.AF_INET6, key[0:16]),
        int.from_bytes(key[32:34], "big"),
        socket.inet_ntop(socket.AF_INET6, key[16:32]),
        int.from_bytes(key[34:36], "big"),
    )


class TCPReassembler:
    """Reassembles TCP segments into per-direction byte streams and drives a :class:`StreamConsumer`.

    The reader (:mod:`.reader`) inlines the in-order fast path and calls :meth:`segment` for
    everything else; other producers can call :meth:`feed` with addresses and a payload.
    Call :meth:`tick` now and then with the capture time (idle timeouts) and :meth:`finish` at the
    end (closes everything still open with reason ``"end"``).

    Close reasons: ``"fin"`` (FIN seen in both directions), ``"rst"``, ``"timeout"`` (idle),
    ``"evicted"`` (flow table full), ``"reused"`` (a new SYN with another ISN on the same 4-tuple
    before any data, or answered by a SYN-ACK),
    ``"end"`` (end of capture).
    """

    def __init__(
        self,
        consumer: StreamConsumer,
        *,
        max_flows: int = 65536,
        idle_timeout_s: float = 300.0,
        established_timeout_s: float = ESTABLISHED_TIMEOUT_S,
        timewait_s: float = 30.0,
        max_buffer_per_flow: int = 1 << 20,
        max_buffer_total: int = 64 << 20,
        server_ports: Iterable[int] | None = None,
        stats: CaptureStats | None = None,
        vlan_tracking: bool = True,
    ) -> None:
        if max_flows < 1:
            raise ValueError("max_flows must be >= 1")
        self.consumer = consumer
        self.stats = stats if stats is not None else CaptureStats()
        self.max_flows = max_flows
        self.idle_timeout_us = int(idle_timeout_s * 1_000_000)
        self.established_timeout_us = max(self.idle_timeout_us, int(established_timeout_s * 1_000_000))
        self.timewait_us = int(timewait_s * 1_000_000)
        self.max_buffer_per_flow = max_buffer_per_flow
        self.max_buffer_total = max_buffer_total
        self.server_ports = frozenset(server_ports or ())
        #: the frames' VLAN ids are part of the connection (the readers put them in the key);
        #: off, a connection whose one direction is tagged and the other not stays one connection
        self.vlan_tracking = vlan_tracking
        self.flows: dict[bytes, _Half] = {}  # directional key -> half (open and time-wait)
        self._open: OrderedDict[Connection, None] = OrderedDict()  # CLOCK queue of open conns
        self._timewait: OrderedDict[Connection, int] = OrderedDict()  # closed conn -> expiry
        self._buffering: set[_Half] = set()
        self._buffered = 0
        self._next_id = 0
        self._sweep_interval_us = max(1_000_000, min(self.idle_timeout_us, self.timewait_us) // 4)
        self._next_sweep: int | None = None
        self._now = 0
        self.on_data = consumer.on_data
        self._on_gap = consumer.on_gap
        self._on_open = consumer.on_open
        self._on_close = consumer.on_close
        self._on_anomaly: Callable[[StreamAnomaly], None] | None = getattr(consumer, "on_anomaly", None)
        #: IP fragments of TCP datagrams, reassembled for :mod:`.reader` (see :mod:`.ipfrag`)
        self.defrag = IPDefragmenter(self.stats, self.anomaly)

    # ------------------------------------------------------------------ public entry points

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def feed(
        self,
        ts_us: int,
        src: str,
        sport: int,
        dst: str,
        dport: int,
        seq: int,
        flags: int,
        payload: bytes | memoryview = b"",
        ack: int = 0,
    ) -> None:
        """Process one TCP segment given by addresses (slow but convenient; for tests and tools)."""
        fam = socket.AF_INET6 if ":" in src else socket.AF_INET
        key = (
            socket.inet_pton(fam, src)
            + socket.inet_pton(fam, dst)
            + sport.to_bytes(2, "big")
            + dport.to_bytes(2, "big")
        )
        mv = memoryview(payload)
        self.segment(self.flows.get(key), key, seq, ack, flags, mv, 0, len(mv), 0, ts_us)

    def tick(self, ts_us: int) -> None:
        """Advance capture time: close idle connections, forget expired time-wait entries."""
        self._now = ts_us
        nxt = self._next_sweep
        if nxt is None or ts_us >= nxt:
            self._next_sweep = ts_us + self._sweep_interval_us
            self._sweep(ts_us)

    def finish(self) -> CaptureStats:
        """Close every open connection (reason ``"end"``), flushing buffered data and gaps."""
        while self._open:
            conn, _ = self._open.popitem(last=False)
            self._close(conn, "end", self._now, from_queue=False)
        for conn in self._timewait:
            self._forget(conn)
        self._timewait.clear()
        self.defrag.finish()
        return self.stats

    def anomaly(self, anomaly: StreamAnomaly) -> None:
        """Count ``anomaly`` and hand it to the consumer's ``on_anomaly`` (if it has one)."""
        counts = self.stats.anomalies
        counts[anomaly.what] = counts.get(anomaly.what, 0) + 1
        if self._on_anomaly is not None:
            self._on_anomaly(anomaly)

    # ------------------------------------------------------------------ slow path

    def segment(
        self,
        half: _Half | None,
        key: bytes,
        seq: int,
        ack: int,
        flags: int,
        mv: memoryview,
        start: int,
        end: int,
        missing: int,
        ts: int,
        hdr: int = -1,
    ) -> None:
        """Process one TCP segment whose payload is ``mv[start:end]``.

        ``half`` is ``self.flows.get(key)`` (the reader has looked it up already); ``missing`` is
        payload the IP header declares but the capture cut off (snap length): it becomes a gap.
        ``hdr``: offset of the TCP header in ``mv`` (window, urgent pointer and options are read
        from it), or -1 when there is none (:meth:`feed`).
        """
        self._now = ts
        if not flags & (ACK | RST | SYN):
            # RFC 9293 3.10.7.4 (fifth check), Linux tcp_rcv_established / tcp_rcv_state_process:
            # "if (!th->ack && !th->rst && !th->syn) goto discard"
            self._no_ack(half, seq, flags, end - start + missing, ts)
            return
        if half is None:
            if flags & RST:
                self.stats.count_non_tcp("tcp-rst-without-connection")
                return
            half = self._create(key, seq, ack, flags, ts)
        elif half.conn.close_reason is not None:
            if flags & SYN and not flags & ACK and (seq + 1) & _M32 != half.syn_next:
                # A new connection on a 4-tuple in time-wait.
                self._timewait.pop(half.conn, None)
                self._forget(half.conn)
                half = self._create(key, seq, ack, flags, ts)
            else:
                self.stats.late_packets += 1
                if end > start or missing:
                    self.stats.retransmissions += 1
                return
        elif flags & SYN:
            seq1 = (seq + 1) & _M32
            if not flags & ACK:
                fresh = half.bytes == 0 and half.gap_bytes == 0 and not half.ooo
                if half.syn_next != seq1 and not (half.started and half.next_seq == seq1 and fresh):
                    if self._established(half):
                        self._syn_in_connection(half, seq1, mv, start, end, hdr, ts)
                        return
                    # The same 4-tuple with another ISN before any data: a new connection.
                    self._close(half.conn, "reused", ts)
                    self._timewait.pop(half.conn, None)
                    self._forget(half.conn)
                    half = self._create(key, seq, ack, flags, ts)
            else:
                cand = self._peer(half).syn_cand
                if cand is not None and ack == cand[0]:
                    # the server accepted the SYN the open connection ignored: its socket was gone
                    # (the capture missed the end), so this is a new connection after all
                    half = self._reuse(half, key, ts)

        conn = half.conn
        if not conn.vlan and self.stats.frame_vlan and not self.vlan_tracking:
            # the VLAN its frames carry, though not part of its key: its events still name it
            conn.vlan = key_vlans(bytes(12) + self.stats.frame_vlan)
        n = end - start + missing
        if half.gate & _GATE_RST and not flags & RST and (n or flags & (SYN | FIN)):
            self._rst_refuted(half, ts)
        tsval = ws = -1
        if hdr >= 0 and start - hdr > 20 and (flags & SYN or half.gate & _GATE_PAWS):
            ws, tsval = _tcp_options(mv, hdr + 20, start)
        if tsval >= 0 and half.gate & _GATE_PAWS and not flags & RST:
            # RFC 7323 5.3, Linux tcp_paws_discard: older than TS.Recent by more than one tick
            dd = (half.ts_recent - tsval) & _M32
            if 1 < dd < _HALF32:
                half.packets += 1
                if n and not flags & FIN and ((half.next_seq - seq - n + _HALF32) & _M32) >= _HALF32:
                    # Wholly before RCV.NXT: a duplicate of delivered data (a capture on two
                    # interfaces, a SPAN port copying both ways), which the receiver already
                    # read; PAWS discarding it changes nothing, so it is no evasion to report.
                    self.stats.retransmissions += 1
                    return
                if n or flags & FIN:
                    self._report(half, "tcp-paws-old-timestamp", half.pos(seq), n, ts,
                                 f"segment with TCP timestamp {tsval}, older than the last accepted "
                                 f"{half.ts_recent}: a Linux receiver discards it (PAWS, RFC 7323 5); "
                                 f"its {n} bytes are not inspected")
                return
            if dd > 1 and ((seq - half.next_seq + _HALF32) & _M32) <= _HALF32:
                half.ts_recent = tsval  # RFC 7323 4.3: only from a segment at or before RCV.NXT

        half.packets += 1
        half.last_ts = ts
        if flags & ACK:
            half.last_ack = ack
            if hdr >= 0 and not flags & SYN:
                win = _U16(mv, hdr + 14)[0]
                if win > half.max_win:
                    half.max_win = win

        if flags & RST:
            # RFC 9293 3.10.7.4 / RFC 5961 3.2: checked before the data, whose payload a receiver
            # never takes from a RST segment, acceptable or not.
            if self._rst_acceptable(half, seq):
                self._rst_close(half, seq, ts)
            elif self._rst_at_ack(half, seq):
                # Where the receiver acknowledged bytes the capture lacks: the RST is right if the
                # capture lost them, forged if the acknowledgment was (a segment sent in the
                # receiver's name to the attacker, which the receiver never sees).  Decided by what
                # follows: data on the connection refutes it, silence until the end confirms it.
                half.rst_pending = seq
                half.gate |= _GATE_RST
                self._peer(half).gate |= _GATE_RST
            else:
                self._rst_invalid(half, seq, ts)
            return

        if flags & SYN:
            seq1 = (seq + 1) & _M32
            if not flags & ACK and n:
                # Linux discards a SYN's data unless TCP Fast Open is on for the listener
                # (net.ipv4.tcp_fastopen bit 2, off by default): the client sends it again.
                self._report(half, "tcp-syn-data", 0, n, ts,
                             f"{n} bytes of data on a SYN: a Linux PACS without TCP Fast Open discards them; "
                             "not taken as stream data")
                end = start
                missing = n = 0
            if half.syn_next == seq1:
                # retransmitted SYN / SYN-ACK
                if not n:
                    self.stats.retransmissions += 1
                    return
            else:
                half.syn_next = seq1
                if hdr >= 0:
                    half.syn_win = _U16(mv, hdr + 14)[0]
                    half.ws = ws
                    half.syn_ts = tsval
                if not half.started or (half.bytes == 0 and half.gap_bytes == 0 and not half.ooo):
                    half.start(seq1)
                if flags & ACK:
                    peer = self._peer(half)
                    if not peer.started:
                        peer.start(ack)
                    _negotiate(half, peer)
            seq = seq1
        elif not half.started:
            half.start(seq)

        d = ((seq - half.next_seq + _HALF32) & _M32) - _HALF32
        if d > 0 and n:
            if d > _MAX_AHEAD:
                self.stats.out_of_window += 1
                return
            if self._beyond_window(half, d, n, ts):
                return
        if flags & URG and hdr >= 0:
            self._urgent_pointer(half, seq, _U16(mv, hdr + 18)[0])
        if n:
            if d == 0:
                self._deliver(half, mv[start:end], missing, ts)
                if half.ooo:
                    self._drain(half, ts, None if missing else mv[start:end])
            elif d > 0:
                self._buffer(half, d, mv, start, end, missing, ts)
            elif d + n <= 0:
                self.stats.retransmissions += 1
                if half.recent:
                    self._recheck(half, seq, mv[start:end], ts)
            else:
                # partial overlap with delivered data: deliver only the new tail
                self.stats.overlaps += 1
                cut = -d
                captured = end - start
                if half.recent:
                    self._recheck(half, seq, mv[start : start + min(cut, captured)], ts)
                if cut < captured:
                    self._deliver(half, mv[start + cut : end], missing, ts)
                else:
                    self._deliver(half, mv[0:0], missing - (cut - captured), ts)
                if half.ooo:
                    self._drain(half, ts, None if missing or cut >= captured else mv[start + cut : end])

        if flags & FIN:
            if conn.closed_first_by_client is None:
                conn.closed_first_by_client = half.from_client
            half.fin_seq = (seq + n) & _M32
            peer = self._peer(half)
            if peer.fin_seq >= 0:
                self._close(conn, "fin", ts)

    # ------------------------------------------------------------------ evasion checks

    def _no_ack(self, half: _Half | None, seq: int, flags: int, n: int, ts: int) -> None:
        """A segment with neither ACK, RST nor SYN: Linux discards it in every state but LISTEN and
        SYN-SENT, where it is answered or ignored; it never becomes stream data."""
        if half is None:
            self.stats.count_non_tcp("tcp-without-ack")
            return
        if half.conn.close_reason is not None:
            self.stats.late_packets += 1
            return
        half.packets += 1
        half.last_ts = ts
        if n or flags & FIN:
            what = f"{n} bytes" + (" and a FIN" if flags & FIN else "") if n else "a FIN"
            self._report(half, "tcp-no-ack", half.pos(seq) if half.started else 0, n, ts,
                         f"segment without the ACK flag carrying {what}: a Linux receiver discards it "
                         "(RFC 9293 3.10.7.4); not taken as stream data")

    def _established(self, half: _Half) -> bool:
        """Both directions started, data seen, and neither FIN nor RST: a Linux receiver is in
        ESTABLISHED (or CLOSE-WAIT), where a SYN gets a challenge ACK (RFC 5961 4.2)."""
        peer = self._peer(half)
        if half.fin_seq >= 0 or peer.fin_seq >= 0 or not (half.started and peer.started):
            return False
        return bool(half.bytes or half.gap_bytes or half.ooo or peer.bytes or peer.gap_bytes or peer.ooo)

    def _syn_in_connection(
        self, half: _Half, seq1: int, mv: memoryview, start: int, end: int, hdr: int, ts: int
    ) -> None:
        """RFC 5961 4.2 (Linux tcp_validate_incoming "syn_challenge"): the SYN is answered with a
        challenge ACK and dropped, the connection goes on.  Kept as a candidate: if the other side
        answers it with a SYN-ACK, its socket was gone and a new connection starts (:meth:`_reuse`)."""
        half.packets += 1
        half.last_ts = ts
        if hdr >= 0:
            ws, tsval = _tcp_options(mv, hdr + 20, start) if start - hdr > 20 else (-1, -1)
            half.syn_cand = (seq1, _U16(mv, hdr + 14)[0], ws, tsval)
        else:
            half.syn_cand = (seq1, 0, -2, -1)
        isn = (seq1 - 1) & _M32
        self._report(half, "tcp-syn-in-connection", half.bytes + half.gap_bytes, end - start, ts,
                     f"SYN with ISN {isn} in an open connection (next expected {half.next_seq}): a Linux "
                     "receiver answers with a challenge ACK and keeps the connection (RFC 5961 4), "
                     "so the sensor keeps inspecting it")

    def _reuse(self, half: _Half, key: bytes, ts: int) -> _Half:
        """The peer's SYN that the open connection ignored was answered by this SYN-ACK: close the
        old connection ("reused") and start the new one with that SYN; returns this side's half."""
        peer = self._peer(half)
        assert peer.syn_cand is not None
        seq1, win, ws, tsval = peer.syn_cand
        conn = half.conn
        self._close(conn, "reused", ts)
        self._timewait.pop(conn, None)
        self._forget(conn)
        syn = self._create(peer.key, (seq1 - 1) & _M32, 0, SYN, ts)
        syn.syn_next = seq1
        syn.syn_win, syn.ws, syn.syn_ts = win, ws, tsval
        syn.start(seq1)
        syn.packets = 1
        return self.flows[key]

    def _beyond_window(self, half: _Half, d: int, n: int, ts: int) -> bool:
        """RFC 9293 3.10.7.4 (first check), Linux tcp_sequence / tcp_data_queue: a segment starting
        at or beyond RCV.NXT + RCV.WND is dropped.  The window is the largest the receiver ever
        advertised (scaled, RFC 7323 2.3): a window it never offered cannot be in force, and a
        forged smaller one cannot make the sensor drop what the receiver takes.  Not checked while
        unknown: the handshake was not seen, or the receiver sent nothing after its SYN yet (a
        capture of one direction only would otherwise freeze the window at the SYN's)."""
        peer = self._peer(half)
        if peer.scale < 0 or not peer.max_win:
            return False
        wnd = peer.max_win << peer.scale
        if peer.syn_win > wnd:
            wnd = peer.syn_win
        if d < wnd:
            return False
        # RCV.NXT is what the receiver acknowledged: past a hole the capture lost (the receiver
        # acknowledged bytes the sensor never saw) its window starts there, not at the hole.
        if peer.last_ack >= 0:
            acked = (peer.last_ack - half.next_seq) & _M32
            if 0 < acked < _MAX_AHEAD and d < acked + wnd:
                return False
        self.stats.out_of_window += 1
        self._report(half, "tcp-beyond-window", half.bytes + half.gap_bytes + d, n, ts,
                     f"{n} bytes {d:,} bytes ahead of the next expected, beyond the largest receive window "
                     f"the receiver advertised ({wnd:,} bytes): a Linux receiver discards them; not inspected")
        return True

    def _urgent_pointer(self, half: _Half, seq: int, urp: int) -> None:
        """Linux tcp_check_urg (BSD urgent pointer: it points one past the urgent byte): note the
        urgent byte unless it was already passed or a later one is pending."""
        if not half.started:
            return
        ptr = (seq + urp - 1 if urp else seq) & _M32
        if ((ptr - half.next_seq) & _M32) >= _HALF32:
            return  # before RCV.NXT: "do not replay urg ptr"
        if half.urg_seq >= 0 and not 0 < ((ptr - half.urg_seq) & _M32) < _HALF32:
            return  # a newer (or the same) urgent pointer is pending
        half.urg_seq = ptr
        half.gate |= _GATE_URG

    def _take_urgent(self, half: _Half, data: memoryview | bytes, i: int, ts: int) -> None:
        """Deliver ``data`` without its byte ``i``, the urgent byte: Linux without SO_OOBINLINE
        (which DICOM toolkits do not set) skips it in tcp_recvmsg; it is read only with MSG_OOB."""
        pos = half.bytes + half.gap_bytes + i
        urgent = data[i]
        if i:
            self._pass(half, data[:i], ts)
        half.next_seq = (half.next_seq + 1) & _M32
        half.bytes += 1  # a position in the stream, though the consumer does not get it
        half.recent = None  # what is remembered must end at next_seq
        half.urg_seq = -1
        half.gate &= ~_GATE_URG
        self._report(half, "tcp-urgent-data", pos, 1, ts,
                     f"urgent byte 0x{urgent:02x} (URG) at stream offset {pos}: a Linux receiver without "
                     "SO_OOBINLINE takes it out of the stream; the sensor does the same")
        if i + 1 < len(data):
            self._pass(half, data[i + 1 :], ts)

    def _recheck(self, half: _Half, seq: int, data: memoryview | bytes, ts: int) -> None:
        """A retransmission of delivered data: compare it with the recently delivered segments it
        overlaps and report the first difference (the delivered bytes stay: Linux keeps them)."""
        n = len(data)
        assert half.recent is not None
        cend = half.next_seq
        for chunk in reversed(half.recent):
            cseq = (cend - len(chunk)) & _M32
            cend = cseq
            off = ((seq - cseq + _HALF32) & _M32) - _HALF32  # position of data in chunk
            lo = off if off > 0 else 0
            hi = min(len(chunk), off + n)
            if lo >= hi:
                continue
            mine, kept = bytes(data[lo - off : hi - off]), bytes(chunk[lo:hi])
            if mine != kept:
                i = next(k for k in range(hi - lo) if mine[k] != kept[k])
                pos = half.pos((cseq + lo + i) & _M32)
                self._report(half, "tcp-retransmission-different-data", pos, hi - lo - i, ts,
                             f"retransmitted TCP segment differs in {hi - lo - i} bytes from stream offset {pos}: "
                             f"kept {kept[i : i + 16].hex()} (delivered first, what a Linux receiver keeps), "
                             f"dropped {mine[i : i + 16].hex()}")
                return

    def _rst_close(self, half: _Half, seq: int, ts: int) -> None:
        conn = half.conn
        if conn.closed_first_by_client is None:
            conn.closed_first_by_client = half.from_client
        if half.started and half.fin_seq < 0:
            half.fin_seq = seq  # the stream ended there: bytes before it the capture lacks are a gap
        self._close(conn, "rst", ts)

    def _rst_refuted(self, half: _Half, ts: int) -> None:
        """The connection went on after a RST at the receiver's acknowledgment: that RST did not
        reset it (the acknowledgment was forged or stale), as a challenge ACK would show."""
        peer = self._peer(half)
        sender = half if half.rst_pending >= 0 else peer
        seq = sender.rst_pending
        half.gate &= ~_GATE_RST
        peer.gate &= ~_GATE_RST
        half.rst_pending = peer.rst_pending = -1
        if seq >= 0:
            self._rst_invalid(sender, seq, ts, " (where the other side had acknowledged, but the connection "
                              "went on: that acknowledgment never reached the sender or was forged)")

    def _rst_at_ack(self, half: _Half, seq: int) -> bool:
        """A RST at what the receiver acknowledged ahead of the sensor's next expected byte."""
        acked = self._peer(half).last_ack
        return acked == seq and 0 < ((acked - half.next_seq) & _M32) < _MAX_AHEAD

    # ------------------------------------------------------------------ internals

    def _rst_acceptable(self, half: _Half, seq: int) -> bool:
        """RFC 5961 3.2 as Linux applies it: a RST resets only at exactly RCV.NXT, which for the
        observer is the next sequence number it expects or one past the sender's FIN.  A direction
        that sent nothing yet (a refused SYN, a mid-stream start) has nothing to check against.
        (A RST at what the receiver acknowledged beyond that waits to be confirmed: segment().)"""
        if not half.started or seq == half.next_seq:
            return True
        return half.fin_seq >= 0 and seq == (half.fin_seq + 1) & _M32

    def _rst_invalid(self, half: _Half, seq: int, ts: int, why: str = "") -> None:
        d = ((seq - half.next_seq + _HALF32) & _M32) - _HALF32
        self._report(half, "tcp-rst-invalid", half.bytes + half.gap_bytes, 0, ts,
                     f"RST with sequence number {seq}, {d:+,} bytes from the next expected {half.next_seq}{why}: a "
                     "Linux receiver does not reset the connection (RFC 5961 3.2); it is still inspected")

    def _report(self, half: _Half, what: str, offset: int, length: int, ts: int, detail: str) -> None:
        c = half.conn
        if half.from_client:
            ends = (c.client_ip, c.client_port, c.server_ip, c.server_port)
        else:
            ends = (c.server_ip, c.server_port, c.client_ip, c.client_port)
        self.anomaly(StreamAnomaly(what, ts, *ends, offset, length, detail, c, half.from_client, c.vlan))

    def _compare(
        self, half: _Half, recent: Sequence[tuple[int, bytes | memoryview]], spos: int, data: bytes, n: int, ts: int
    ) -> None:
        """Compare the first ``n`` bytes of a segment at stream position ``spos`` that lost an overlap
        with the ``recent`` chunks (position, bytes) delivered in its place; report a difference."""
        end = spos + min(n, len(data))
        for cpos, chunk in reversed(recent):
            cend = cpos + len(chunk)
            if cend <= spos:
                break
            lo, hi = max(spos, cpos), min(end, cend)
            if lo >= hi:
                continue
            mine, kept = data[lo - spos : hi - spos], bytes(chunk[lo - cpos : hi - cpos])
            if mine != kept:
                i = next(k for k in range(hi - lo) if mine[k] != kept[k])
                self._report(half, "tcp-overlap-different-data", lo + i, hi - lo - i, ts,
                             f"overlapping TCP segments differ in {hi - lo - i} bytes from stream offset "
                             f"{lo + i}: kept {kept[i : i + 16].hex()} (what a Linux receiver reads), "
                             f"dropped {mine[i : i + 16].hex()}")
                return

    @staticmethod
    def _peer(half: _Half) -> _Half:
        c = half.conn
        p = c._s2c if half.from_client else c._c2s
        assert p is not None
        return p

    def _create(self, key: bytes, seq: int, ack: int, flags: int, ts: int) -> _Half:
        if len(self._open) >= self.max_flows:
            self._evict_one()
        ver, sip, sport, dip, dport = _endpoints(key)
        midstream = not flags & SYN
        if flags & SYN:
            src_is_client = not flags & ACK
        elif sport in self.server_ports and dport not in self.server_ports:
            src_is_client = False
        else:
            src_is_client = True
        if src_is_client:
            conn = Connection(sip, sport, dip, dport, ver, ts, midstream, self._next_id)
        else:
            conn = Connection(dip, dport, sip, sport, ver, ts, midstream, self._next_id)
        if len(key) not in (12, 36):
            conn.vlan = key_vlans(key)
        self._next_id += 1
        rkey = reverse_key(key)
        mine = _Half(conn, src_is_client, key, ts)
        other = _Half(conn, not src_is_client, rkey, ts)
        if src_is_client:
            conn._c2s, conn._s2c = mine, other
        else:
            conn._c2s, conn._s2c = other, mine
        conn._mark = ts
        self.flows[key] = mine
        self.flows[rkey] = other
        self._open[conn] = None
        st = self.stats
        st.flows += 1
        if len(self._open) > st.max_concurrent_flows:
            st.max_concurrent_flows = len(self._open)
        self._on_open(conn)
        return mine

    def _deliver(self, half: _Half, data: memoryview | bytes, missing: int, ts: int) -> None:
        """Deliver in-order ``data``, then ``missing`` bytes as a gap."""
        k = len(data)
        if k:
            if half.gate & _GATE_URG and (half.urg_seq - half.next_seq) & _M32 < k:
                self._take_urgent(half, data, (half.urg_seq - half.next_seq) & _M32, ts)
            else:
                self._pass(half, data, ts)
        if missing > 0:
            self._gap(half, missing)

    def _pass(self, half: _Half, data: memoryview | bytes, ts: int) -> None:
        """Hand in-order ``data`` (non-empty) to the consumer and remember it for retransmission
        checks (the reader's fast path does the same inline)."""
        k = len(data)
        half.next_seq = (half.next_seq + k) & _M32
        half.bytes += k
        self.on_data(half.conn, half.from_client, data, ts)
        rc = half.recent
        if rc is None:
            rc = half.recent = deque((), RECENT_SEGMENTS)
        rc.append(data)

    def _gap(self, half: _Half, nbytes: int) -> None:
        half.recent = None  # what is remembered must end at next_seq
        if half.gate & _GATE_URG and (half.urg_seq - half.next_seq) & _M32 < nbytes:
            half.urg_seq = -1  # the urgent byte is in what the capture lacks
            half.gate &= ~_GATE_URG
        half.next_seq = (half.next_seq + nbytes) & _M32
        half.gap_bytes += nbytes
        st = self.stats
        st.gaps += 1
        st.gap_bytes += nbytes
        self._on_gap(half.conn, half.from_client, nbytes)

    def _buffer(
        self, half: _Half, d: int, mv: memoryview, start: int, end: int, missing: int, ts: int
    ) -> None:
        data = bytes(mv[start:end])
        pos = half.bytes + half.gap_bytes + d
        st = self.stats
        st.out_of_order += 1
        ln = len(data)
        heappush(half.ooo, (pos, -(ln + missing), st.out_of_order, data, missing))
        half.ooo_bytes += ln
        self._buffered += ln
        self._buffering.add(half)
        if self._buffered > st.max_buffered_bytes:
            st.max_buffered_bytes = self._buffered
        while half.ooo and half.ooo_bytes > self.max_buffer_per_flow:
            self._skip_hole(half, ts)
        while self._buffered > self.max_buffer_total and self._buffering:
            victim = max(self._buffering, key=lambda h: h.ooo_bytes)
            self._skip_hole(victim, ts)

    def _skip_hole(self, half: _Half, ts: int) -> None:
        """Give up waiting for the hole before the first buffered segment: report it as a gap."""
        pos = half.bytes + half.gap_bytes
        first = half.ooo[0][0]
        if first > pos:
            self._gap(half, first - pos)
        self._drain(half, ts)

    def _drain(self, half: _Half, ts: int, filler: bytes | memoryview | None = None) -> None:
        """Deliver buffered segments that have become contiguous with the delivered stream.

        ``filler``: the bytes just delivered in order that ended at the current position (the
        segment that filled the hole), to compare overlapping buffered data with."""
        ooo = half.ooo
        pos = half.bytes + half.gap_bytes
        # what was delivered while the hole filled: (stream position, bytes) in stream order
        recent: list[tuple[int, bytes | memoryview]] = [] if filler is None else [(pos - len(filler), filler)]
        while ooo and ooo[0][0] <= pos:
            spos, _, _, data, missing = heappop(ooo)
            ln = len(data)
            half.ooo_bytes -= ln
            self._buffered -= ln
            skip = pos - spos
            if skip and recent:
                self._compare(half, recent, spos, data, skip, ts)
            if spos + ln + missing <= pos:
                self.stats.retransmissions += 1
                continue
            if skip:
                self.stats.overlaps += 1
            if skip < ln:
                chunk = memoryview(data)[skip:] if skip else data
                recent.append((pos, chunk))
                self._deliver(half, chunk, 0, ts)
                skip = 0
            else:
                skip -= ln
            if missing > skip:
                self._gap(half, missing - skip)
            pos = half.bytes + half.gap_bytes
        if not ooo:
            self._buffering.discard(half)

    def _flush(self, half: _Half, ts: int) -> None:
        """At close: skip every remaining hole, and report data missing before a seen FIN."""
        while half.ooo:
            self._skip_hole(half, ts)
        if half.fin_seq >= 0 and half.started:
            d = ((half.fin_seq - half.next_seq + _HALF32) & _M32) - _HALF32
            if d > 0:
                self._gap(half, d)

    def _close(self, conn: Connection, reason: str, ts: int, from_queue: bool = True) -> None:
        c2s, s2c = conn._c2s, conn._s2c
        assert c2s is not None and s2c is not None
        if reason in ("end", "timeout", "evicted", "reused"):
            for h in (c2s, s2c):
                if h.rst_pending >= 0:
                    # nothing refuted the RST at the receiver's acknowledgment: it was the end
                    if conn.closed_first_by_client is None:
                        conn.closed_first_by_client = h.from_client
                    if h.started and h.fin_seq < 0:
                        h.fin_seq = h.rst_pending
                    if reason != "evicted":
                        reason = "rst"
        self._flush(c2s, ts)
        self._flush(s2c, ts)
        conn.close_reason = reason
        c2s.next_seq = -1
        s2c.next_seq = -1
        c2s.recent = s2c.recent = None  # views of the capture: let it go
        st = self.stats
        st.payload_bytes += c2s.bytes + s2c.bytes
        st.close_reasons[reason] = st.close_reasons.get(reason, 0) + 1
        if from_queue:
            self._open.pop(conn, None)
        if reason in ("evicted", "end"):
            self._forget(conn)
        else:
            self._timewait[conn] = conn.last_ts_us + self.timewait_us
            if len(self._timewait) > self.max_flows:
                old, _ = self._timewait.popitem(last=False)
                self._forget(old)
        self._on_close(conn, reason)

    def _forget(self, conn: Connection) -> None:
        flows = self.flows
        for h in (conn._c2s, conn._s2c):
            if h is not None and flows.get(h.key) is h:
                del flows[h.key]

    def _evict_one(self) -> None:
        """CLOCK: skip (and re-queue) connections used since they were last queued."""
        q = self._open
        while q:
            conn = next(iter(q))
            last = conn.last_ts_us
            if last > conn._mark:
                conn._mark = last
                q.move_to_end(conn)
                continue
            del q[conn]
            self.stats.evicted += 1
            self._close(conn, "evicted", self._now, from_queue=False)
            return

    def _sweep(self, now: int) -> None:
        cutoff = now - self.idle_timeout_us
        long_cutoff = now - self.established_timeout_us
        self.defrag.expire(now)
        idle = [c for c in self._open if c.last_ts_us < cutoff and (c.last_ts_us < long_cutoff or not _in_use(c))]
        for conn in idle:
            self.stats.timed_out += 1
            self._close(conn, "timeout", now)
        tw = self._timewait
        expired = [c for c, exp in tw.items() if exp <= now]
        for conn in expired:
            del tw[conn]
            self._forget(conn)


def _in_use(conn: Connection) -> bool:
    """Did both directions deliver payload, and neither send a FIN or a RST (not even one
    waiting to be confirmed)?  Such a connection gets the long ``established_timeout_us``."""
    if conn.closed_first_by_client is not None:
        return False
    for h in (conn._c2s, conn._s2c):
        if h is None or h.bytes == 0 or h.fin_seq >= 0 or h.rst_pending >= 0:
            return False
    return True
