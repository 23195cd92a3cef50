"""IP fragment reassembly for the passive sensor (RFC 791 section 3.2, RFC 815, RFC 8200 section 4.5).

A PACS's IP stack reassembles fragmented datagrams before TCP sees them, so the sensor must too,
or a client that fragments its DICOM requests is answered by the PACS and unseen by the IDS.
:func:`.decode.decode_tcp` hands every fragment to :class:`IPDefragmenter`; a completed datagram
is appended to :attr:`IPDefragmenter.ready` as a plain IPv4 or IPv6 packet (no fragmentation, no
extension headers: those of an IPv6 datagram's fragmentable part, a destination options header say,
are walked to its TCP header, RFC 8200 4.1) that the reader decodes like any other.

Policy (that of Linux since 4.19, ``inet_frag_queue_insert``, the protected PACS's): a datagram
is identified by source, destination, protocol and identification (IPv4; only TCP datagrams are
kept) or source, destination and identification (IPv6: the next header of the first fragment
counts, RFC 8200; an atomic fragment, offset 0 and no more to come, stands alone: RFC 6946).
A fragment wholly inside data already received is a duplicate and dropped,
the first copy kept (``ip-fragment-different-data`` is reported if its bytes differ); any other
overlap discards the whole datagram, as RFC 5722 requires for IPv6 (``ip-fragment-overlap``);
so does a last fragment that contradicts the length already known.  A non-last IPv4 fragment's
length is cut to a multiple of 8 (Linux); an IPv6 one that is not a multiple of 8 is dropped.

Limits: a datagram not complete ``timeout_s`` (Linux ``ipfrag_time``, 30 s) of capture time after
its first fragment is given up (``ip_fragments_expired``; the receiver gave it up too, or the
capture lost a fragment: TCP then reports a gap); at most ``max_datagrams`` datagrams and
``max_bytes`` fragment bytes are held, beyond which the oldest datagram is dropped and recorded as
a capture problem that makes the run incomplete (the IDS, not the network, lost it).  A fragment
cut short by the capture's snap length cannot be reassembled: counted like any truncated frame.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import mmap

    from .reassembly import CaptureStats, StreamAnomaly

__all__ = ["IPDefragmenter"]

#: Extension headers a Linux receiver walks past (RFC 8200 4.8 format: length in 8-octet units, not
#: counting the first 8): routing (43) and destination options (60).  Mobility (135), HIP (139),
#: shim6 (140) and the experimental 253/254 are unknown protocols to it (the datagram is dropped
#: with an ICMPv6 parameter problem), so the walk ends there, as in :mod:`.decode`.
_EXT_GENERIC = frozenset({43, 60})
_MAX_DATAGRAM = 65535  # IPv4 total length / IPv6 payload length (no fragmented jumbograms)
_DUP, _OVERLAP = 1, 2

_U16 = struct.Struct("!H").unpack_from
_U32 = struct.Struct("!I").unpack_from
_V4 = struct.Struct("!BBHHHBBH4s4s").pack
_V6 = struct.Struct("!IHBB").pack


class _Datagram:
    """One datagram being reassembled: received runs (Linux "frag runs") and their bytes."""

    __slots__ = ("first_ts", "starts", "ends", "offs", "parts", "have", "total", "first_in", "nh", "nbytes")

    def __init__(self, ts: int) -> None:
        self.first_ts = ts
        self.starts: list[int] = []  # runs of contiguous fragments, sorted, disjoint
        self.ends: list[int] = []
        self.offs: list[int] = []  # offsets of the accepted fragments, sorted (they never overlap)
        self.parts: list[bytes] = []  # their bytes, in the same order
        self.have = 0  # bytes accepted (fragments never overlap)
        self.total = -1  # datagram payload length, once the last fragment is in
        self.first_in = False
        self.nh = -1  # IPv6: next header of the first fragment
        self.nbytes = 0

    def insert(self, off: int, end: int) -> int:
        """Linux ``inet_frag_queue_insert``: 0 inserted, ``_DUP`` inside one run, ``_OVERLAP``."""
        starts, ends = self.starts, self.ends
        if not starts or end > ends[-1]:
            if starts and off < ends[-1]:
                return _OVERLAP
            if starts and off == ends[-1]:
                ends[-1] = end  # appended to the last run
            else:
                starts.append(off)
                ends.append(end)
            return 0
        i = bisect_right(starts, off) - 1
        for j in (i, i + 1):
            if 0 <= j < len(starts) and off < ends[j] and end > starts[j]:
                return _DUP if starts[j] <= off and end <= ends[j] else _OVERLAP
        starts.insert(i + 1, off)
        ends.insert(i + 1, end)
        return 0

    def add(self, off: int, data: bytes) -> None:
        i = bisect_right(self.offs, off)
        self.offs.insert(i, off)
        self.parts.insert(i, data)
        self.have += len(data)

    def differs(self, off: int, data: bytes) -> int:
        """Offset of the first byte of ``data`` (at ``off``, a duplicate: inside received data) that
        differs from what was received, or -1."""
        end = off + len(data)
        offs, parts = self.offs, self.parts
        k = max(bisect_right(offs, off) - 1, 0)
        while k < len(offs) and offs[k] < end:
            poff, pdata = offs[k], parts[k]
            lo, hi = max(off, poff), min(end, poff + len(pdata))
            if lo < hi:
                mine, kept = data[lo - off : hi - off], pdata[lo - poff : hi - poff]
                if mine != kept:
                    return lo + next(i for i in range(hi - lo) if mine[i] != kept[i])
            k += 1
        return -1

    def payload(self) -> bytes:
        return b"".join(self.parts)


class IPDefragmenter:
    """Reassembles IPv4 and IPv6 fragments; see the module docstring for policy and limits."""

    def __init__(
        self,
        stats: CaptureStats,
        report: Callable[[StreamAnomaly], None],
        *,
        timeout_s: float = 30.0,
        max_datagrams: int = 4096,
        max_bytes: int = 16 << 20,
    ) -> None:
        self.stats = stats
        self.report = report
        self.timeout_us = int(timeout_s * 1_000_000)
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.pending: dict[bytes, _Datagram] = {}  # key -> datagram, oldest first
        self.nbytes = 0
        #: completed datagrams, rebuilt as unfragmented IP packets, for the reader to decode, each
        #: with the VLAN ids of its fragments (they join the connection key)
        self.ready: list[tuple[bytes, bytes]] = []

    # ------------------------------------------------------------------ fragments in

    def add_v4(self, buf: bytes | mmap.mmap | memoryview, p: int, ihl: int, totlen: int, end: int, frag: int,
               ts: int, vlan: bytes = b"") -> None:
        """The IPv4 fragment whose header is at ``buf[p:]`` (captured up to ``end``); RFC 791 3.2.
        ``vlan``: the frame's VLAN ids (:mod:`.decode`), part of the datagram's identity."""
        if p + totlen > end:
            self._truncated(p + totlen - end)
            return
        off = (frag & 0x1FFF) << 3
        more = bool(frag & 0x2000)
        data = bytes(buf[p + ihl : p + totlen])
        if more:
            data = data[: len(data) & ~7]  # Linux: a non-last fragment's end is rounded down to 8
        key = bytes(buf[p + 12 : p + 20]) + bytes(buf[p + 4 : p + 6]) + vlan  # src, dst, identification
        self._add(key, 4, off, data, more, -1, ts)

    def add_v6(self, buf: bytes | mmap.mmap | memoryview, p: int, fh: int, ip_end: int, end: int, ts: int,
               vlan: bytes = b"") -> None:
        """The IPv6 fragment whose Fragment header is at ``buf[fh:]`` (RFC 8200 4.5)."""
        if fh + 8 > ip_end:
            self._drop()
            return
        if ip_end > end:
            self._truncated(ip_end - end)
            return
        nh = buf[fh]
        offm = _U16(buf, fh + 2)[0]
        off = offm & 0xFFF8
        more = bool(offm & 1)
        data = bytes(buf[fh + 8 : ip_end])
        if more and len(data) & 7:
            self._drop()  # RFC 8200 4.5: not a multiple of 8 octets, discarded
            return
        key = bytes(buf[p + 8 : p + 40]) + bytes(buf[fh + 4 : fh + 8]) + vlan  # src, dst, identification
        if not off and not more:
            # an atomic fragment: processed on its own, whatever waits under its id (RFC 6946)
            atomic = _Datagram(ts)
            atomic.add(0, data)
            atomic.nh = nh
            self._complete(key, 6, atomic)
            return
        self._add(key, 6, off, data, more, nh, ts)

    def _add(self, key: bytes, ver: int, off: int, data: bytes, more: bool, nh: int, ts: int) -> None:
        end = off + len(data)
        if end > _MAX_DATAGRAM or (more and end == off):
            self._drop()
            return
        dg = self.pending.get(key)
        if dg is None:
            if len(self.pending) >= self.max_datagrams:
                self._evict(f"more than {self.max_datagrams:,} datagrams in reassembly")
            dg = self.pending[key] = _Datagram(ts)
        # Linux ip_frag_queue: a last fragment that contradicts the known length, or data beyond
        # a known end, discards the datagram.
        if not more:
            if end < (dg.ends[-1] if dg.ends else 0) or (dg.total >= 0 and end != dg.total):
                self._discard(key, dg)
                return
        elif dg.total >= 0 and end > dg.total:
            self._discard(key, dg)
            return
        status = dg.insert(off, end)
        if status == _DUP:
            self.stats.ip_fragments_dropped += 1
            at = dg.differs(off, data)
            if at >= 0:
                self._anomaly(key, ver, "ip-fragment-different-data", at, end - at, ts,
                              f"a duplicate fragment at offset {off} carries different bytes from offset {at}: "
                              "the first copy is kept (Linux)")
            return
        if status == _OVERLAP:
            self._anomaly(key, ver, "ip-fragment-overlap", off, len(data), ts,
                          f"the fragment at offset {off} ({len(data)} bytes) overlaps another: the datagram is "
                          "discarded (RFC 5722, Linux)")
            self._discard(key, dg)
            return
        dg.add(off, data)
        dg.nbytes += len(data)
        self.nbytes += len(data)
        if off == 0:
            dg.first_in = True
            dg.nh = nh
        if not more:
            dg.total = end
        if dg.first_in and dg.total >= 0 and dg.have == dg.total:
            del self.pending[key]
            self.nbytes -= dg.nbytes
            self._complete(key, ver, dg)
            return
        while self.nbytes > self.max_bytes and self.pending:
            self._evict(f"more than {self.max_bytes:,} bytes of fragments in reassembly")

    def _complete(self, key: bytes, ver: int, dg: _Datagram) -> None:
        payload = dg.payload()
        if ver == 4:
            if 20 + len(payload) > _MAX_DATAGRAM:  # Linux ip_frag_reasm: "Oversized IP packet"
                self.stats.ip_fragments_dropped += len(dg.parts)
                return
            hdr = _V4(0x45, 0, 20 + len(payload), _U16(key, 8)[0], 0, 64, 6, 0, key[0:4], key[4:8])
        else:
            nh, start = _upper_layer(dg.nh, payload)
            if nh != 6:
                self.stats.count_non_tcp("truncated-ipv6" if nh < 0 else f"ipv6-fragmented-proto-{nh}")
                return
            payload = payload[start:]
            hdr = _V6(0x60000000, len(payload), 6, 64) + key[0:32]
        self.stats.ip_reassembled += 1
        self.ready.append((hdr + payload, key[10:] if ver == 4 else key[36:]))

    # ------------------------------------------------------------------ losses

    def _truncated(self, missing: int) -> None:
        """A fragment the capture cut short: what it lacks is lost to the capture (snap length)."""
        st = self.stats
        st.ip_fragments_dropped += 1
        note_truncated(st, missing)

    def _drop(self) -> None:
        self.stats.ip_fragments_dropped += 1

    def _discard(self, key: bytes, dg: _Datagram) -> None:
        self.stats.ip_fragments_dropped += 1 + len(dg.parts)
        self.pending.pop(key, None)
        self.nbytes -= dg.nbytes

    def _evict(self, why: str) -> None:
        key, dg = next(iter(self.pending.items()))
        self._discard(key, dg)
        self.stats.add_problem(f"IP fragments dropped: {why} (ids capture limits); that datagram was not "
                               "inspected", -1)

    def expire(self, now: int) -> None:
        """Give up datagrams whose first fragment is older than the timeout (capture time)."""
        cutoff = now - self.timeout_us
        old = [k for k, dg in self.pending.items() if dg.first_ts < cutoff]
        for key in old:
            self.stats.ip_fragments_expired += 1
            self._discard(key, self.pending[key])

    def finish(self) -> None:
        """The end of the capture: every incomplete datagram is given up."""
        self.stats.ip_fragments_expired += len(self.pending)
        for key, dg in list(self.pending.items()):
            self._discard(key, dg)

    def _anomaly(self, key: bytes, ver: int, what: str, offset: int, length: int, ts: int, detail: str) -> None:
        import socket

        from .reassembly import StreamAnomaly

        fam, n = (socket.AF_INET, 4) if ver == 4 else (socket.AF_INET6, 16)
        ident = int.from_bytes(key[2 * n : 2 * n + (2 if ver == 4 else 4)], "big")  # VLAN ids follow
        src, dst = socket.inet_ntop(fam, key[0:n]), socket.inet_ntop(fam, key[n : 2 * n])
        tail = key[2 * n + (2 if ver == 4 else 4) :]
        vlan = tuple(int.from_bytes(tail[i : i + 2], "big") for i in range(0, len(tail) - 1, 2))
        self.report(StreamAnomaly(what, ts, src, 0, dst, 0, offset, length, f"IPv{ver} id {ident:#x}: {detail}",
                                  vlan=vlan))


def _upper_layer(nh: int, payload: bytes) -> tuple[int, int]:
    """The upper-layer header of a reassembled IPv6 datagram whose fragmentable part starts with next
    header *nh*: ``(protocol, offset)`` past the extension headers, or ``(-1, 0)`` if they run past
    its end (RFC 8200 4, 4.5: routing and destination options may follow the Fragment header). AH
    (RFC 4302) ends the walk: Linux reads past it only with an IPsec security association (decode).
    Hop-by-hop (0) may only follow the IPv6 header itself (RFC 8200 4.3): Linux discards a datagram
    that has it here (unknown next header), so it ends the walk too."""
    pos, size = 0, len(payload)
    while nh in _EXT_GENERIC:
        if pos + 2 > size:
            return -1, 0
        # Every header is at least 8 octets: the walk ends.
        step = (payload[pos + 1] + 1) << 3
        nh, pos = payload[pos], pos + step
    if pos > size:
        return -1, 0
    return nh, pos


def note_truncated(stats: CaptureStats, missing: int) -> None:
    """A frame the capture cut short (snap length): counted, and the first one recorded as a
    problem that makes the run incomplete (the file does not hold what was on the wire); where it
    is comes from ``stats.cut_frame``, which the reader set for this frame."""
    if not stats.snap_truncated:
        from .reassembly import CaptureProblem  # here: reassembly imports this module

        frame, offset = stats.cut_frame
        where = CaptureProblem("", offset, frame).where()
        stats.add_problem("frames cut short by the capture's snap length: their TCP payload is missing"
                          f"{f' (the first: {where})' if where else ''}; capture with a larger snap length "
                          "(tcpdump -s 0)", offset, frame=frame)
    stats.snap_truncated += 1
    stats.snap_missing_bytes += missing
