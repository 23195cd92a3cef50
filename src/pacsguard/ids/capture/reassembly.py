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
  data bounded per flow and globally.

Flow table. Every connection has two :class:`_Half` objects, one per direction, stored in one dict
under the raw directional 4-tuple bytes exactly as they appear in the packet (IPv4: source address,
destination address, source port, destination port = 12 bytes, which is one contiguous slice of an
option-less IPv4 header plus the TCP ports; IPv6: 36 bytes).  A packet's own bytes thus find its
direction's half with one dict lookup and no canonicalisation.  ``_Half.next_seq`` is ``-1`` whenever
the fast path must not be taken (direction not started yet, or connection closed), so the reader's
inlined fast path needs just ``seq == half.next_seq``.

Where a receiver and an observer could read different bytes (IDS evasion, RFC 9293 and Ptacek &
Newsham 1998), the reassembler does what the protected host, a Linux PACS, does and reports the
ambiguity as a :class:`StreamAnomaly` (``StreamConsumer.on_anomaly``, optional; counted in
``CaptureStats.anomalies``):

* RST (RFC 9293 section 3.10.7.4, RFC 5961 section 3.2, Linux ``tcp_validate_incoming``): a RST
  resets the connection only when its sequence number is exactly the next expected one (also
  one past a FIN, or what the receiver last acknowledged when that is ahead of it: the capture
  missed bytes the receiver got, reported as a gap).  Any other RST is one Linux drops (out of window) or answers with a
  challenge ACK (in window): the connection goes on and is still inspected; the RST is reported
  as ``tcp-rst-invalid`` and its payload, like Linux, is not taken.
* Overlapping out-of-order data (Linux ``tcp_data_queue_ofo``): data already delivered in order
  wins; among buffered segments the one that starts first wins, and at the same start the longer
  (at the same length, the first to arrive: Linux keeps a segment that covers one from the same
  start and drops one inside another).  Where the bytes of the segment that lost differ from
  those delivered, ``tcp-overlap-different-data`` is reported with the stream offset.  Compared
  are the bytes delivered while the hole was filled (the segment that filled it and the buffered
  ones drained behind it); a plain retransmission of data delivered earlier is not compared.
* IP fragments: reassembled by :mod:`.ipfrag` before TCP sees them.

Consumer contract: ``data`` passed to :meth:`StreamConsumer.on_data` is valid only during the call
(it is usually a zero-copy ``memoryview`` of the capture file's mmap or of a live receive buffer);
copy it (``bytes(data)``) to keep it.  Exceptions raised by the consumer propagate to the caller.
"""

from __future__ import annotations

import socket
from collections import OrderedDict
from dataclasses import dataclass, field
from heapq import heappop, heappush
from typing import Any, Callable, Iterable, Protocol, Sequence

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

_M32 = 0xFFFFFFFF
_HALF32 = 0x80000000
# RFC 7323 section 2.3: the largest window a sender may use (scale 14) is 2**30 bytes; a segment
# further ahead than that cannot be valid data of this stream.
_MAX_AHEAD = 1 << 30

MAX_PROBLEMS = 100


@dataclass(slots=True)
class CaptureProblem:
    """Something wrong with the capture file's structure (not with the traffic in it).

    ``what`` describes the problem; ``offset`` is the byte offset in the file (or ``-1`` for live
    capture) where it was found.
    """

    what: str
    offset: int


@dataclass(slots=True)
class StreamAnomaly:
    """Traffic a receiver and a passive observer may read differently: an IDS evasion technique
    (or a broken stack).  ``what`` is one of :data:`ANOMALIES`.

    ``src``/``sport`` sent it to ``dst``/``dport`` (ports 0 for an IP fragment).  ``offset``: for
    TCP the position in the sender's byte stream (0 = the first byte after the SYN, or the first
    byte seen mid-stream) where the difference starts; for a fragment its offset in the datagram.
    ``length``: the bytes concerned.  ``conn``/``from_client``: the TCP connection and direction
    (None for IP fragments).  ``detail`` says what was kept.
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


#: anomaly -> what it is (docs/ids.md, "Evasion and ambiguity").
ANOMALIES = {
    "tcp-rst-invalid": "a RST whose sequence number a Linux receiver does not accept (RFC 5961 3.2)",
    "tcp-overlap-different-data": "overlapping TCP segments carry different bytes for the same position",
    "ip-fragment-overlap": "IP fragments overlap: the datagram is discarded (RFC 5722, Linux)",
    "ip-fragment-different-data": "a duplicate IP fragment carries different bytes (the first is kept)",
}


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
    anomalies: dict[str, int] = field(default_factory=dict)  # StreamAnomaly.what -> count
    retransmissions: int = 0  # segments wholly inside already-delivered data (incl. SYN repeats)
    overlaps: int = 0  # segments partly inside delivered data, trimmed
    out_of_order: int = 0  # segments that arrived ahead of a hole and were buffered
    out_of_window: int = 0  # segments more than 2**30 bytes ahead: dropped
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

    def add_problem(self, what: str, offset: int, *, lost: bool = True, stopped: bool = False) -> None:
        """Record a problem (kept if fewer than MAX_PROBLEMS are stored, always counted). *lost*: frames
        were lost to it; *stopped*: reading ended there, the rest of the file is lost."""
        self.problem_count += 1
        problem = CaptureProblem(what, offset)
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


def reverse_key(key: bytes) -> bytes:
    """The 4-tuple key of the opposite direction (12-byte IPv4 or 36-byte IPv6 key)."""
    if len(key) == 12:
        return key[4:8] + key[0:4] + key[10:12] + key[8:10]
    return key[16:32] + key[0:16] + key[34:36] + key[32:34]


def _endpoints(key: bytes) -> tuple[int, str, int, str, int]:
    """(ip_version, src ip, src port, dst ip, dst port) from a directional key."""
    if len(key) == 12:
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
    ``"evicted"`` (flow table full), ``"reused"`` (a new SYN with another ISN on the same 4-tuple),
    ``"end"`` (end of capture).
    """

    def __init__(
        self,
        consumer: StreamConsumer,
        *,
        max_flows: int = 65536,
        idle_timeout_s: float = 300.0,
        timewait_s: float = 30.0,
        max_buffer_per_flow: int = 1 << 20,
        max_buffer_total: int = 64 << 20,
        server_ports: Iterable[int] | None = None,
        stats: CaptureStats | None = None,
    ) -> None:
        if max_flows < 1:
            raise ValueError("max_flows must be >= 1")
        self.consumer = consumer
        self.stats = stats if stats is not None else CaptureStats()
        self.max_flows = max_flows
        self.idle_timeout_us = int(idle_timeout_s * 1_000_000)
        self.timewait_us = int(timewait_s * 1_000_000)
        self.max_buffer_per_flow = max_buffer_per_flow
        self.max_buffer_total = max_buffer_total
        self.server_ports = frozenset(server_ports or ())
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
    ) -> None:
        """Process one TCP segment whose payload is ``mv[start:end]``.

        ``half`` is ``self.flows.get(key)`` (the reader has looked it up already); ``missing`` is
        payload the IP header declares but the capture cut off (snap length): it becomes a gap.
        """
        self._now = ts
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
        elif flags & SYN and not flags & ACK:
            seq1 = (seq + 1) & _M32
            fresh = half.bytes == 0 and half.gap_bytes == 0 and not half.ooo
            if half.syn_next != seq1 and not (half.started and half.next_seq == seq1 and fresh):
                # The same 4-tuple with another ISN: a new connection replaces the old one.
                self._close(half.conn, "reused", ts)
                self._timewait.pop(half.conn, None)
                self._forget(half.conn)
                half = self._create(key, seq, ack, flags, ts)

        half.packets += 1
        half.last_ts = ts
        conn = half.conn
        if flags & ACK:
            half.last_ack = ack

        if flags & RST:
            # RFC 9293 3.10.7.4 / RFC 5961 3.2: checked before the data, whose payload a receiver
            # never takes from a RST segment, acceptable or not.
            if not self._rst_acceptable(half, seq):
                self._rst_invalid(half, seq, ts)
                return
            if conn.closed_first_by_client is None:
                conn.closed_first_by_client = half.from_client
            if half.started and half.fin_seq < 0:
                half.fin_seq = seq  # the stream ended there: bytes before it the capture lacks are a gap
            self._close(conn, "rst", ts)
            return

        if flags & SYN:
            seq1 = (seq + 1) & _M32
            if half.syn_next == seq1:
                # retransmitted SYN / SYN-ACK
                if not (end > start or missing):
                    self.stats.retransmissions += 1
                    return
            else:
                half.syn_next = seq1
                if not half.started or (half.bytes == 0 and half.gap_bytes == 0 and not half.ooo):
                    half.start(seq1)
                if flags & ACK:
                    peer = self._peer(half)
                    if not peer.started:
                        peer.start(ack)
            seq = seq1
        elif not half.started:
            half.start(seq)

        n = end - start + missing
        if n:
            d = ((seq - half.next_seq + _HALF32) & _M32) - _HALF32
            if d == 0:
                self._deliver(half, mv[start:end], missing, ts)
                if half.ooo:
                    self._drain(half, ts, None if missing else mv[start:end])
            elif d > 0:
                if d > _MAX_AHEAD:
                    self.stats.out_of_window += 1
                else:
                    self._buffer(half, d, mv, start, end, missing, ts)
            elif d + n <= 0:
                self.stats.retransmissions += 1
            else:
                # partial overlap with delivered data: deliver only the new tail
                self.stats.overlaps += 1
                cut = -d
                captured = end - start
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

    # ------------------------------------------------------------------ internals

    def _rst_acceptable(self, half: _Half, seq: int) -> bool:
        """RFC 5961 3.2 as Linux applies it: a RST resets only at exactly RCV.NXT.  The observer's
        RCV.NXT is the next sequence number it expects, one past the sender's FIN, or what the
        receiver last acknowledged when that is ahead of it (the capture lacks bytes the receiver
        got; an acknowledgment behind it is stale: the receiver has had those bytes since, and a RST
        sent there before the ACK caught up is dropped).  A direction that sent nothing yet (a
        refused SYN, a mid-stream start) has nothing to check against."""
        nxt = half.next_seq
        if not half.started or seq == nxt:
            return True
        if half.fin_seq >= 0 and seq == (half.fin_seq + 1) & _M32:
            return True
        acked = self._peer(half).last_ack
        return acked == seq and 0 < ((acked - nxt) & _M32) < _MAX_AHEAD

    def _rst_invalid(self, half: _Half, seq: int, ts: int) -> None:
        d = ((seq - half.next_seq + _HALF32) & _M32) - _HALF32
        self._report(half, "tcp-rst-invalid", half.bytes + half.gap_bytes, 0, ts,
                     f"RST with sequence number {seq}, {d:+,} bytes from the next expected {half.next_seq}: a "
                     "Linux receiver does not reset the connection (RFC 5961 3.2); it is still inspected")

    def _report(self, half: _Half, what: str, offset: int, length: int, ts: int, detail: str) -> None:
        c = half.conn
        if half.from_client:
            ends = (c.client_ip, c.client_port, c.server_ip, c.server_port)
        else:
            ends = (c.server_ip, c.server_port, c.client_ip, c.client_port)
        self.anomaly(StreamAnomaly(what, ts, *ends, offset, length, detail, c, half.from_client))

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
        k = len(data)
        if k:
            half.next_seq = (half.next_seq + k) & _M32
            half.bytes += k
            self.on_data(half.conn, half.from_client, data, ts)
        if missing > 0:
            self._gap(half, missing)

    def _gap(self, half: _Half, nbytes: int) -> None:
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
        self._flush(c2s, ts)
        self._flush(s2c, ts)
        conn.close_reason = reason
        c2s.next_seq = -1
        s2c.next_seq = -1
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
        self.defrag.expire(now)
        idle = [c for c in self._open if c.last_ts_us < cutoff]
        for conn in idle:
            self.stats.timed_out += 1
            self._close(conn, "timeout", now)
        tw = self._timewait
        expired = [c for c, exp in tw.items() if exp <= now]
        for conn in expired:
            del tw[conn]
            self._forget(conn)
