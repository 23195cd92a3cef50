"""Capture files and interfaces to frames, and frames to the reassembler, without per-packet objects.

File formats:

* pcap (tcpdump.org "pcap savefile format"; draft-ietf-opsawg-pcap): 24-byte file header whose
  magic 0xA1B2C3D4 (microsecond timestamps) or 0xA1B23C4D (nanosecond) tells the byte order by how
  it reads; LinkType in the low 16 bits of the last header field (the upper bits carry FCS
  information, ignored: IP lengths bound every payload); 16-byte record headers
  (seconds, sub-second, captured length, original length).
* pcapng (draft-ietf-opsawg-pcapng): Section Header Block (type 0x0A0D0D0A, byte-order magic
  0x1A2B3C4D read in either order sets the section's byte order, major version 1); Interface
  Description Block (type 1; link type, snap length, options ``if_tsresol`` (9) and
  ``if_tsoffset`` (14)); Enhanced Packet Block (type 6), Simple Packet Block (type 3), the obsolete
  Packet Block (type 2); every other block is skipped by its total length.  A new section resets
  the interface list.

Input: a regular file is ``mmap``-ed; standard input, a FIFO and a compressed capture are
streamed through a window of about a megabyte, each frame copied out (:class:`CaptureFile`).
Compression is recognised by its magic number, as Wireshark does, not by the file's name: gzip
(RFC 1952, magic 1F 8B), Zstandard (RFC 8878 3.1.1, frame magic 28 B5 2F FD, or a skippable
frame's 5x 2A 4D 18 as pzstd writes first) and LZ4 (the LZ4 frame format, magic 04 22 4D 18, and
its legacy frame, ``lz4 -l``, magic 02 21 4C 18: :mod:`.lz4legacy`); zstd and LZ4 need the Python
packages ``zstandard`` and ``lz4``.

Speed: the capture is read with precompiled ``struct`` unpackers at fixed offsets.
:func:`make_frame_handler` returns a closure that, for Ethernet + IPv4 (no options) + TCP, decodes
Ethernet, IP and TCP in one ``unpack_from``, finds the direction's stream with one dict lookup of a
12-byte slice of the packet, and hands an in-order payload to the consumer as a zero-copy
``memoryview`` slice; every other frame goes through :func:`.decode.decode_tcp` and
:meth:`.reassembly.TCPReassembler.segment`.  The scanning loops call that closure directly (no
generator).  :func:`iter_frames` exists for other uses and is slower.

Filtering (``ids read --bpf``): a :class:`CaptureFile` given a :class:`FrameFilter` (or a path that
carries one) puts it in front of each link type's handler, and capture time then follows the frames
it keeps (:class:`KeptClock`); without one the scans get the handlers themselves, nothing added per
frame.  The filter itself is libpcap's: :mod:`.offline_filter`.

Damage: a truncated file, a record or block length that cannot be right, an undefined interface,
a bad option: each becomes a :class:`~.reassembly.CaptureProblem` (what, file offset, and the frame
as Wireshark numbers frames: 1-based, every packet record or block counted) in the stats;
the reader stops at damage it cannot step over (a record or block length it cannot trust) and skips
what it can.  It raises :class:`CaptureError` only when the input is not a capture file at all (or
cannot be opened); the message names the file and the magic seen.

Live capture (:func:`live_loop`): a Linux ``AF_PACKET`` raw socket, not a libpcap binding.  The
choice: no Debian package provides a libpcap binding for a virtualenv (``python3-pcapy`` installs
into the system interpreter only), and PyPI's ``pcapy-ng`` (a manylinux wheel exists) would be a
new compiled dependency for a loop this module already has.  What libpcap still does for us is
compile the BPF filter: :func:`compile_bpf` calls ``pcap_compile`` of the system ``libpcap.so``
through ``ctypes`` (Debian's ``libpcap0.8``, present wherever ``dumpcap``/``tshark`` are), falling
back to ``tcpdump -ddd``; the program is attached with ``SO_ATTACH_FILTER`` before the socket is
bound, so no unfiltered packet gets through.  Loopback's duplicate outgoing copies are dropped as
libpcap does.  Kernel timestamps come from ``SO_TIMESTAMPNS``.  Linux takes the outer 802.1Q/802.1ad
tag out of every frame it receives and reports it in ``PACKET_AUXDATA`` (packet(7)); on Ethernet the
tag is put back in front of the EtherType, as libpcap does, so live VLANs are seen as in a file.  The
socket's filter runs before that, on the frame without the tag: a filter with a ``vlan`` term is
compiled as libpcap compiles it for a live Linux handle, with the kernel's VLAN ancillary data
(:func:`compile_live_bpf`), so that it matches what tcpdump matches on the same interface.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gzip
import importlib
import io
import math
import mmap
import os
import shutil
import socket
import stat
import struct
import subprocess
import threading
import time
import zlib
from collections import deque
from typing import Any, Callable, Iterator, Protocol, cast

from .decode import LINKTYPE_ETHERNET, LINKTYPE_RAW, decode_tcp
from .lz4legacy import LegacyLZ4Reader
from .reassembly import RECENT_SEGMENTS, CaptureStats, TCPReassembler
from .zstdframes import FrameWalker

__all__ = [
    "CaptureError",
    "CaptureFile",
    "FrameFilter",
    "FrameHandler",
    "make_frame_handler",
    "iter_frames",
    "compile_bpf",
    "compile_live_bpf",
    "live_loop",
]


class CaptureError(Exception):
    """The input is not a capture file (or cannot be read at all)."""


class FrameHandler(Protocol):
    """``handler(buf, mv, off, caplen, ts_us)``: one frame at ``buf[off:off+caplen]``."""

    def __call__(self, buf: bytes | mmap.mmap, mv: memoryview, off: int, caplen: int, ts: int) -> None: ...


class FrameFilter(Protocol):
    """Which frames of a capture file reach the handlers (``ids read --bpf``: :mod:`.offline_filter`).

    ``wrap`` gets the handler for ``linktype``, the file's snap length (0: unknown), the
    :class:`CaptureFile` it is called from (the frame is at ``buf[off:off+caplen]`` of the file or
    of its streaming window, its record or block header just before it) and the clock to call
    with the timestamp of each frame it hands on (after the handler)."""

    def wrap(self, handler: FrameHandler, linktype: int, snaplen: int, capture: CaptureFile,
             clock: KeptClock) -> FrameHandler: ...


class KeptClock:
    """Capture time as the frames a filter keeps tell it, not the frames it drops: the reassembler
    closes connections and times some events on its ticks, so a filtered read ticks as
    :meth:`CaptureFile.run` ticks over a file holding only the kept frames, read whole (the first
    frame alone, then the rest from the first one's time on, once per second of capture time and
    every 4096 frames).  :attr:`last_ts` is the last kept frame's time."""

    __slots__ = ("tick", "tick_at", "kept", "last_ts")

    def __init__(self) -> None:
        self.tick: Callable[[int], None] = _noop_tick
        self.tick_at = 0
        self.kept = 0
        self.last_ts = 0

    def __call__(self, ts: int) -> None:
        n = self.kept  # frames kept before this one
        self.kept = n + 1
        self.last_ts = ts
        if ts >= self.tick_at or (n and not n & 4095):
            self.tick(ts)
            self.tick_at = ts if n == 0 else ts + _TICK_US


# Ethernet type, IPv4 version/IHL, total length, flags/fragment offset, protocol, then (for a
# 20-byte IPv4 header) TCP sequence, acknowledgment, data offset/flags: one unpack for the
# common frame.  Offsets: ethertype 12, IPv4 at 14, TCP at 34 (window at 48).
_FAST = struct.Struct("!12xHBxHxxHxB10x4xIIHH")  # ... data offset/flags, window
_MIN_FAST = 54  # 14 + 20 + 20
# The same and the first TCP option word with the TSval after it, where Linux puts its timestamps
# (NOP, NOP, kind 8, length 10: RFC 7323 Appendix A) in every segment once they are in use.
_FAST_TS = struct.Struct("!12xHBxHxxHxB10x4xIIHH4xII")  # checksum, urgent pointer skipped
_MIN_FAST_TS = 62
_TSOPT = struct.Struct("!II")
_U16 = struct.Struct("!H").unpack_from

_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", False),
    b"\xa1\xb2\xc3\xd4": (">", False),
    b"\x4d\x3c\xb2\xa1": ("<", True),
    b"\xa1\xb2\x3c\x4d": (">", True),
}
_PCAPNG_SHB = 0x0A0D0D0A
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
_BOM_LE = b"\x4d\x3c\x2b\x1a"
_BOM_BE = b"\x1a\x2b\x3c\x4d"
_GZIP_MAGIC = b"\x1f\x8b"
_KNOWN_OTHER_MAGICS = {
    b"\x34\xcd\xb2\xa1": "a modified (Kuznetzov) pcap file, not supported",
    b"\xa1\xb2\xcd\x34": "a modified (Kuznetzov) pcap file, not supported",
    b"\x28\xb5\x2f\xfd": "zstd-compressed data inside compressed data (decompress it first)",
    b"\x04\x22\x4d\x18": "LZ4-compressed data inside compressed data (decompress it first)",
    b"\x02\x21\x4c\x18": "legacy LZ4 data (lz4 -l) inside compressed data (decompress it first)",
}
# Compressed captures, by the magic number that starts them: the codec's name in messages.
_COMPRESSED = {
    _GZIP_MAGIC: "gzip",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\x04\x22\x4d\x18": "LZ4",
    b"\x02\x21\x4c\x18": "LZ4 legacy",
}
# Per codec: the Python package it needs, the module that reads it, and how to do without it.
_CODECS = {"zstd": ("zstandard", "zstandard", "zstd -d"), "LZ4": ("lz4", "lz4.frame", "lz4 -d"),
           "LZ4 legacy": ("lz4", "lz4.block", "lz4 -d")}
_MAX_RECORD = 1 << 18  # 262144: libpcap's maximum snap length
_MAX_RECORD_LIMIT = 1 << 26  # never trust a larger record/block length than this
# pcapng timestamps are 64-bit ticks (with a resolution and an offset): a frame stamped before 1970
# or after the year 9000 cannot be a capture time and would overflow the date arithmetic downstream
# (a window of an hour past year 9999), so it is skipped as damage.
_MAX_TS_US = 221_845_392_000_000_000  # 9000-01-01T00:00:00Z in microseconds since the epoch
_TICK_US = 1_000_000  # the reassembler's clock is advanced once per second of capture time
# A pipe, a FIFO or a compressed capture is read in windows of this size (more when one record or
# block is larger), never whole: memory stays bounded however long the capture.
_STREAM_CHUNK = 1 << 20
# A compressed capture that expands more than this (once past _GZIP_RATIO_AFTER bytes) is a
# decompression bomb, not traffic: deflate reaches ~1000:1 only on runs of one byte (zstd and LZ4
# far more), real captures stay far below.  Each read asks for a bounded amount of output, so
# memory stays bounded between two checks whatever the codec.
_GZIP_MAX_RATIO = 256
_GZIP_RATIO_AFTER = 64 << 20
_PACKET_BLOCKS = (6, 3, 2)  # pcapng blocks holding a frame: enhanced, simple, obsolete packet block


def make_frame_handler(reasm: TCPReassembler, linktype: int) -> FrameHandler:
    """A frame handler feeding ``reasm`` from frames of ``linktype`` (see the module docstring).

    ``buf`` must slice to ``bytes`` (``bytes`` or ``mmap``); ``mv`` is a memoryview of the same
    buffer (payload slices handed to the consumer come from it).

    The in-order fast path takes a segment only when the reassembler would do nothing else with
    it: the next expected sequence number, ACK set and none of SYN, FIN, RST, URG (a segment
    without ACK is one Linux discards), and, if it carries data, the direction's ``gate`` clear or
    set only for PAWS with the timestamp in the usual place (NOP, NOP, timestamps: a 32-byte TCP
    header) and not below the last one accepted.  Everything else goes to ``reasm.segment``.
    """
    flows_get = reasm.flows.get
    segment = reasm.segment
    drain = reasm._drain
    on_data = reasm.on_data
    stats = reasm.stats
    defrag = reasm.defrag
    tsopt = _TSOPT.unpack_from
    vlans = reasm.vlan_tracking

    def generic(buf: bytes | mmap.mmap, mv: memoryview, off: int, caplen: int, ts: int) -> None:
        if not vlans:
            stats.frame_vlan = b""  # set by decode_tcp for a tagged Ethernet frame
        seg = decode_tcp(buf, off, caplen, linktype, stats, defrag, ts, vlans)
        if seg is None:
            if defrag.ready:
                _reassembled(reasm, ts)
            return
        key, _ver, seq, ack, flags, start, end, missing, tcp = seg
        half = flows_get(key)
        if half is not None and seq == half.next_seq and flags & 0x37 == 0x10 and not missing:
            if end > start:
                g = half.gate
                if g:
                    # the PAWS check of the Ethernet fast path below, for any link type
                    if g != 1 or start != tcp + 32:
                        segment(half, key, seq, ack, flags, mv, start, end, missing, ts, tcp)
                        return
                    o, tsv = tsopt(buf, tcp + 20)
                    if o != 0x0101080A or tsv < half.ts_recent:
                        segment(half, key, seq, ack, flags, mv, start, end, missing, ts, tcp)
                        return
                    half.ts_recent = tsv
                v = mv[start:end]
                half.next_seq = (seq + end - start) & 0xFFFFFFFF
                half.bytes += end - start
                on_data(half.conn, half.from_client, v, ts)
                rc = half.recent
                if rc is None:
                    rc = half.recent = deque((), RECENT_SEGMENTS)
                rc.append(v)
                if half.ooo:
                    drain(half, ts, v)
            half.packets += 1
            half.last_ts = ts
            win = _U16(buf, tcp + 14)[0]
            if win > half.max_win:
                half.max_win = win
            half.last_ack = ack
            return
        segment(half, key, seq, ack, flags, mv, start, end, missing, ts, tcp)

    if linktype != LINKTYPE_ETHERNET:
        return generic

    unpack = _FAST.unpack_from
    unpack_ts = _FAST_TS.unpack_from

    # The in-order branch below repeats generic()'s on purpose: one function call less per frame
    # is a measurable share of the ~1.6 µs a frame costs here (bench/capture.py).
    def ethernet(buf: bytes | mmap.mmap, mv: memoryview, off: int, caplen: int, ts: int) -> None:
        if caplen >= _MIN_FAST_TS:
            et, vihl, totlen, frag, proto, seq, ack, offflags, win, o, tsv = unpack_ts(buf, off)
        elif caplen >= _MIN_FAST:
            et, vihl, totlen, frag, proto, seq, ack, offflags, win = unpack(buf, off)
            o = tsv = 0
        else:
            generic(buf, mv, off, caplen, ts)
            return
        if et == 0x0800 and vihl == 0x45 and proto == 6 and not frag & 0x3FFF:
            ipo = off + 14
            end = ipo + totlen
            start = ipo + 20 + ((offflags >> 10) & 0x3C)
            if start <= end <= off + caplen and offflags >= 0x5000:
                key = buf[ipo + 12 : ipo + 24]
                half = flows_get(key)
                # ACK and none of FIN, SYN, RST, URG (docstring)
                if half is not None and seq == half.next_seq and offflags & 0x37 == 0x10:
                    if end > start:
                        g = half.gate
                        if g:
                            # PAWS (RFC 7323 5): the TSval at its usual place and not below TS.Recent
                            # (below: older, or the clock wrapped; segment() tells them apart)
                            if g != 1 or o != 0x0101080A or start != ipo + 52 or tsv < half.ts_recent:
                                segment(half, key, seq, ack, offflags & 0x3F, mv, start, end, 0, ts, ipo + 20)
                                return
                            half.ts_recent = tsv
                        v = mv[start:end]
                        half.next_seq = (seq + end - start) & 0xFFFFFFFF
                        half.bytes += end - start
                        on_data(half.conn, half.from_client, v, ts)
                        # remembered to compare retransmissions with (reassembly._pass)
                        rc = half.recent
                        if rc is None:
                            rc = half.recent = deque((), RECENT_SEGMENTS)
                        rc.append(v)
                        if half.ooo:
                            drain(half, ts, v)
                    half.packets += 1
                    half.last_ts = ts
                    if win > half.max_win:  # the receive window bound (reassembly._beyond_window)
                        half.max_win = win
                    half.last_ack = ack  # what the RST check compares with (reassembly)
                    return
                segment(half, key, seq, ack, offflags & 0x3F, mv, start, end, 0, ts, ipo + 20)
                return
        generic(buf, mv, off, caplen, ts)

    return ethernet


def _reassembled(reasm: TCPReassembler, ts: int) -> None:
    """Feed the datagrams the last fragment completed (:mod:`.ipfrag`) to the reassembler."""
    ready = reasm.defrag.ready
    stats = reasm.stats
    while ready:
        dg, vlan = ready.pop(0)
        seg = decode_tcp(dg, 0, len(dg), LINKTYPE_RAW, stats)
        if seg is not None:
            key, _ver, seq, ack, flags, start, end, missing, tcp = seg
            key += vlan
            reasm.segment(reasm.flows.get(key), key, seq, ack, flags, memoryview(dg), start, end, missing, ts, tcp)


def _noop_tick(ts: int) -> None:
    pass


def _source_name(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return "standard input" if os.fspath(source) == "-" else os.fspath(source)
    return f"<{type(source).__name__} of {len(source)} bytes>"  # type: ignore[arg-type]


def _codec(head: bytes) -> str | None:
    """The compression (``gzip``, ``zstd``, ``LZ4``, ``LZ4 legacy``) whose magic number starts ``head``,
    if any.

    A skippable frame (RFC 8878 3.1.2, magic 0x184D2A50-0x184D2A5F) first is zstd: pzstd starts
    its files with one (the sizes of the frames that follow)."""
    if head[1:4] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50:
        return "zstd"
    return _COMPRESSED.get(head[:4]) or _COMPRESSED.get(head[:2])


_Errors = tuple[type[BaseException], ...]


def _decompressor(codec: str, compressed: io.BufferedIOBase, name: str) -> tuple[io.BufferedIOBase, _Errors]:
    """A reader of the decompressed bytes of ``compressed`` and the exceptions damaged data raises.
    zstd: every frame one after the other (RFC 8878 3.1: a file may hold several, pzstd writes
    them), skippable frames skipped, each frame's window bounded by the zstandard package's default (128 MiB, zstd's own
    limit without --long).  LZ4's legacy frames (``lz4 -l``): :mod:`.lz4legacy`.  Raises :class:`CaptureError`
    when the codec's package is missing."""
    errors: _Errors = (OSError, EOFError, zlib.error)
    if codec == "gzip":
        return gzip.GzipFile(fileobj=compressed, mode="rb"), errors
    package, module_name, tool = _CODECS[codec]
    try:
        module: Any = importlib.import_module(module_name)
    except ImportError:
        raise CaptureError(f"{name}: a {codec}-compressed capture, and the Python package {package!r} that reads "
                           f"it is not installed (pip install {package}); or decompress it first ({tool})") from None
    if codec == "zstd":
        reader = module.ZstdDecompressor().stream_reader(compressed, read_across_frames=True)
        return cast(io.BufferedIOBase, reader), (*errors, module.ZstdError)
    if codec == "LZ4 legacy":
        return LegacyLZ4Reader(compressed, module), (*errors, module.LZ4BlockError)
    # lz4.frame raises RuntimeError for a damaged frame (LZ4F_decompress's error code)
    return cast(io.BufferedIOBase, module.LZ4FrameFile(compressed, mode="rb")), (*errors, RuntimeError)


class _Prefixed(io.RawIOBase):
    """``head`` (bytes already read to recognise the format), then the rest of ``raw``; counts the
    bytes it hands out (the compressed side of a compressed stream)."""

    def __init__(self, head: bytes, raw: io.BufferedIOBase, frames: FrameWalker | None = None) -> None:
        self.head = head
        self.raw = raw
        self.count = 0
        self.frames = frames  # zstd: follows the frames, to tell a file cut short (zstdframes)

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self.head:
            n = min(len(b), len(self.head))
            b[:n] = self.head[:n]
            self.head = self.head[n:]
        else:
            data = self.raw.read1(len(b))
            n = len(data)
            b[:n] = data
        if self.frames is not None:
            self.frames.feed(b[:n])
        self.count += n
        return n

    def cut_short(self) -> str | None:
        """At the end of the compressed bytes: why they are cut short, or None.  zstd's reader ends
        silently inside a frame (its walker tells); gzip and LZ4 raise EOFError themselves."""
        if self.frames is not None and self.frames.inside:
            return "Compressed file ended inside a zstd frame (RFC 8878 3.1.1)"
        return None


class CaptureFile:
    """An opened pcap or pcapng capture, scanned by :meth:`run` in one or more calls.

    ``source`` is a path (``-``: standard input) or the capture's bytes.  A regular file is
    ``mmap``-ed; a pipe, a FIFO, a character device and a compressed capture (gzip, zstd or LZ4, as
    Wireshark reads ``.pcap.gz``/``.pcapng.zst``/``.lz4``, or LZ4's legacy format of ``lz4 -l``;
    recognised by its magic, not its name,
    see the module docstring) are streamed: read in
    windows of about a megabyte, each frame copied out of its window, so memory stays bounded
    however long the capture (the reassembler keeps a few frames per connection, as in live
    capture).  Raises :class:`CaptureError` if it is not a capture file.  Use as a context manager
    or call :meth:`close`.
    """

    def __init__(
        self, source: str | os.PathLike[str] | bytes | bytearray | memoryview, stats: CaptureStats | None = None,
        frame_filter: FrameFilter | None = None,
    ) -> None:
        self.name = _source_name(source)
        self.frame_filter = frame_filter
        self._clock = KeptClock()
        self.stats = stats if stats is not None else CaptureStats()
        self._mm: mmap.mmap | None = None
        self._file: io.BufferedIOBase | None = None
        # streaming: where more bytes come from (None: the whole capture is in buf), the compressed
        # side (its byte count and size when known), its codec and the exceptions its damage
        # raises, whether the source has ended
        self._src: io.BufferedIOBase | None = None
        self._gz: _Prefixed | None = None
        self._gz_size: int | None = None
        self._codec = ""
        self._errors: tuple[type[BaseException], ...] = (OSError,)
        self.eof = True
        self.base = 0  # file offset of buf[0] (streaming: buf is a window)
        self._need = 0  # buf offset the scan must see before it can go on (streaming)
        self._seen = 0  # frames (packet records or blocks, damaged ones too) before the current scan
        self.buf: bytes | mmap.mmap
        try:
            if isinstance(source, (str, os.PathLike)):
                self.buf = self._open(os.fspath(source))
            elif (codec := _codec(bytes(source[:4]))) is not None:
                self.buf = self._stream(io.BufferedReader(io.BytesIO(bytes(source))), b"", len(source), codec)
            else:
                self.buf = bytes(source)
        except BaseException:
            self.close()
            raise
        self.end = len(self.buf)  # the scans' limit in buf
        self.size = self.end  # bytes of capture read so far (the file's size when mapped)
        self.mv = memoryview(self.buf)
        self.off = 0
        self.done = False
        self.format = ""
        self.last_ts = 0
        # pcap state
        self.linktype = -1
        self.nsec = False
        self.snaplen = 0
        # pcapng state
        self.endian = "<"
        # per interface: linktype, snaplen, timestamp mode, multiplier, divisor, offset (µs); one
        # tuple for interfaces described alike (a file may describe millions of them, 20 bytes each)
        self.ifaces: list[tuple[int, int, int, int, int, int]] = []
        self._iface_kinds: dict[tuple[int, int, int, int, int, int], tuple[int, int, int, int, int, int]] = {}
        # Kept from one scan to the next (a streamed capture is scanned once per window): the
        # function the scans call for a run's handler_for (_scanner), and the handlers made by the
        # one the pcapng scan was last given, per link type and per interface of the section
        # (_interface_handlers).  Made again at every scan, they cost a file of many interfaces
        # time in the square of its length.
        self._scan_of: tuple[Callable[[int], FrameHandler], Callable[[int], FrameHandler]] | None = None
        self._handlers_of: Callable[[int], FrameHandler] | None = None
        self._lt_handlers: dict[int, FrameHandler] = {}
        self._iface_handlers: list[FrameHandler] = []
        try:
            self._detect()
        except BaseException:
            self.close()
            raise

    # -------------------------------------------------------------- opening

    def _open(self, path: str) -> bytes | mmap.mmap:
        try:
            f: io.BufferedIOBase = os.fdopen(os.dup(0), "rb") if path == "-" else open(path, "rb")
            self._file = f
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
                # a pipe, a FIFO or a device (they report size 0): streamed, compressed or not
                head = self._read_at_least(f, 28)
                if not head:
                    raise CaptureError(f"{self.name}: not a capture file (empty)")
                codec = _codec(head)
                if codec is not None:
                    return self._stream(f, head, None, codec)
                self._src = f
                self.eof = len(head) < 28
                return head
            codec = _codec(os.pread(f.fileno(), 4, 0))
            if codec is not None:
                return self._stream(f, b"", st.st_size, codec)
            try:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):
                return f.read()
        except OSError as e:
            raise CaptureError(f"{self.name}: cannot read: {e.strerror or e}") from e
        try:
            mm.madvise(mmap.MADV_SEQUENTIAL)
        except (AttributeError, OSError):
            pass
        self._mm = mm
        return mm

    @staticmethod
    def _read_at_least(src: io.BufferedIOBase, n: int) -> bytes:
        """``n`` bytes of ``src``, fewer only at its end (a pipe hands out what it has)."""
        parts: list[bytes] = []
        have = 0
        while have < n:
            b = src.read1(max(n - have, _STREAM_CHUNK))
            if not b:
                break
            parts.append(b)
            have += len(b)
        return b"".join(parts)

    def _stream(self, raw: io.BufferedIOBase, head: bytes, compressed_size: int | None, codec: str) -> bytes:
        """Start streaming the ``codec``-compressed capture ``head`` + ``raw``: its first decompressed
        bytes."""
        self._gz = _Prefixed(head, raw, FrameWalker() if codec == "zstd" else None)
        self._gz_size = compressed_size
        self._codec = codec
        self._src, self._errors = _decompressor(codec, io.BufferedReader(self._gz), self.name)
        self.eof = False
        try:
            first = self._read_at_least(self._src, 28)
        except self._errors as e:
            raise CaptureError(f"{self.name}: {codec}-compressed data that cannot be decompressed: "
                               f"{self._cut(str(e), isinstance(e, EOFError))}") from e
        if not first:
            # zstd ends silently where its data ends: a file cut inside its first block reads empty
            why = self._gz.cut_short()
            if why is not None:
                raise CaptureError(f"{self.name}: {codec}-compressed data that cannot be decompressed: "
                                   f"{self._cut(why, True)}")
            raise CaptureError(f"{self.name}: not a capture file ({codec}-compressed, empty)")
        self.eof = len(first) < 28
        return first

    def _cut(self, why: str, cut: bool) -> str:
        """``why`` the first bytes could not be decompressed; where, when the file is cut short."""
        if not cut or self._gz is None:
            return why
        return (f"{why}, after {self._gz.count:,} compressed bytes, before any of the capture could be "
                "decompressed (cut short)")

    def progress(self) -> tuple[int, int | None]:
        """(bytes done, bytes in all) for a progress bar: of the compressed file for a compressed one,
        ``None`` in all for a pipe or FIFO (its length is not known before its end)."""
        if self._gz is not None:
            return self._gz.count, self._gz_size
        if self._src is not None:
            return self.base + self.off, None
        return min(self.off, self.size), self.size

    def _refill(self) -> None:
        """Streaming: a new window, the unread tail of this one and at least a chunk more (or what the
        scan asked for); at the source's end :attr:`eof`, so the next scan reports a cut record."""
        src = self._src
        assert src is not None
        tail = bytes(self.buf[self.off : self.end])
        goal = max(self._need - self.off, len(tail) + 1)
        parts = [tail]
        have = len(tail)
        gz = self._gz
        try:
            while have < goal:
                if gz is not None and self.size > _GZIP_RATIO_AFTER and self.size > _GZIP_MAX_RATIO * gz.count:
                    self._stop(f"{self._codec} data expands more than {_GZIP_MAX_RATIO} times ({gz.count:,} "
                               f"compressed bytes gave {self.size:,}): not a capture (a {self._codec} bomb?); "
                               "reading stopped",
                               self.off, self._seen, frame=False)
                    return
                b = src.read1(max(goal - have, _STREAM_CHUNK))
                if not b:
                    if gz is not None and (why := gz.cut_short()) is not None:
                        # named as gzip's and LZ4's EOFError are, below
                        self._stop(f"{self._codec} data damaged after {gz.count:,} compressed bytes: {why}; "
                                   "reading stopped", self.off, self._seen, frame=False)
                        return
                    self.eof = True
                    break
                parts.append(b)
                have += len(b)
                self.size += len(b)
        except self._errors as e:
            # what was decompressed before the damage has been read; the record it cuts is lost
            what = f"{self._codec} data damaged after {gz.count:,} compressed bytes" if gz is not None else "read error"
            self._stop(f"{what}: {e}; reading stopped", self.off, self._seen, frame=False)
            return
        self.base += self.off
        self.off = 0
        self._need = 0
        self.buf = b"".join(parts)
        self.end = len(self.buf)
        self.mv = memoryview(self.buf)

    def close(self) -> None:
        """Release the mapping.  If the consumer still holds payload views it stays until GC."""
        for f in (self._src, self._file):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        self._src = self._file = None
        mv = getattr(self, "mv", None)
        if mv is not None:
            try:
                mv.release()
            except BufferError:
                pass
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass
            self._mm = None

    def __enter__(self) -> CaptureFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _problem(self, what: str, offset: int, before: int, *, frame: bool = True, lost: bool = True) -> None:
        """A problem at buffer offset ``offset``, ``before`` frames into the file; ``frame``: it is in
        a frame's record (that frame is number ``before + 1``, as Wireshark numbers them)."""
        self.stats.add_problem(what, self.base + offset, lost=lost, frame=before + 1 if frame else 0,
                               after_frame=-1 if frame else before)

    def _stop(self, what: str, offset: int, before: int, *, frame: bool = True) -> None:
        """Damage reading cannot step over: recorded as where and why reading stopped."""
        self.stats.add_problem(what, self.base + offset, stopped=True, frame=before + 1 if frame else 0,
                               after_frame=-1 if frame else before)
        self.done = True

    def _detect(self) -> None:
        buf, size = self.buf, self.end
        magic = bytes(buf[0:4])
        if magic in _PCAP_MAGICS:
            self.format = "pcap"
            self.endian, self.nsec = _PCAP_MAGICS[magic]
            if size < 24:
                self._stop(f"truncated pcap file header ({size} of 24 bytes)", 0, 0, frame=False)
                return
            major, _minor, _zone, _sigfigs, snaplen, ltfield = struct.unpack_from(
                self.endian + "HHiIII", buf, 4
            )
            if major != 2:
                self._problem(f"pcap version {major}.{_minor} (expected 2.4); reading anyway", 4, 0, frame=False,
                              lost=False)
            self.snaplen = snaplen
            self.linktype = ltfield & 0xFFFF
            self.off = 24
            return
        if magic == _PCAPNG_MAGIC:
            self.format = "pcapng"
            bom = bytes(buf[8:12])
            if bom not in (_BOM_LE, _BOM_BE):
                raise CaptureError(
                    f"{self.name}: pcapng section header with an invalid byte-order magic "
                    f"{bom.hex() or '(none)'} (magic {magic.hex()})"
                )
            return
        gz = f"{self._codec}-compressed, its content's " if self._gz is not None else ""
        for prefix, what in _KNOWN_OTHER_MAGICS.items():
            if magic.startswith(prefix):
                raise CaptureError(f"{self.name}: not a capture file: {what} ({gz}magic {magic.hex()})")
        raise CaptureError(
            f"{self.name}: not a pcap or pcapng capture file ({gz}magic {magic.hex() or '(empty)'})"
        )

    # -------------------------------------------------------------- scanning

    def run(
        self,
        handler_for: Callable[[int], FrameHandler],
        limit: int = -1,
        tick: Callable[[int], None] | None = None,
    ) -> int:
        """Call ``handler_for(linktype)(buf, mv, off, caplen, ts_us)`` for up to ``limit`` frames
        (``-1``: all), and ``tick(ts_us)`` once per second of capture time (and every 4096 frames).  Returns the
        frames handled; sets :attr:`done` at the end of the file or at damage that ends the scan."""
        if self.done or limit == 0:
            return 0
        if self.frame_filter is not None:
            return self._run_filtered(handler_for, limit, tick)
        if self._src is None:
            return self._run(handler_for, limit, tick)
        return self._run_streamed(handler_for, limit, tick)

    def _run_streamed(
        self, handler_for: Callable[[int], FrameHandler], limit: int, tick: Callable[[int], None] | None
    ) -> int:
        """:meth:`run` over a stream: window after window, each frame copied out of its window."""
        n = 0
        scan_for = self._scanner(handler_for)
        while not self.done:
            k = self._run(scan_for, limit, tick)
            n += k
            if limit > 0:
                limit -= k
                if limit == 0:
                    break
            if not self.done:
                self._refill()  # the scan stopped at the window's end
        return n

    def _scanner(self, handler_for: Callable[[int], FrameHandler]) -> Callable[[int], FrameHandler]:
        """``handler_for`` as the scans call it: behind :attr:`frame_filter` if any, and, for a
        stream, copying each frame out of its window (the filter sees the window, with the record
        headers); made once for a given ``handler_for``, so that the scans keep their handlers."""
        cached = self._scan_of
        if cached is not None and cached[0] is handler_for:
            return cached[1]
        scan_for = self._filtered(self._copying(handler_for) if self._src is not None else handler_for)
        self._scan_of = (handler_for, scan_for)
        return scan_for

    def _copying(self, handler_for: Callable[[int], FrameHandler]) -> Callable[[int], FrameHandler]:
        """``handler_for``'s handlers given a copy of each frame instead of a view of the window."""
        stats = self.stats
        copying: dict[int, FrameHandler] = {}

        def copied(lt: int) -> FrameHandler:
            h = copying.get(lt)
            if h is None:
                inner = handler_for(lt)

                def h(buf: bytes | mmap.mmap, mv: memoryview, off: int, caplen: int, ts: int) -> None:
                    # The frame's own bytes: the reassembler keeps views of recent segments, which
                    # must not hold a whole window (nor see it replaced).
                    frame = bytes(buf[off : off + caplen])
                    stats.cut_at = 0 if stats.cut_at == off else -1
                    inner(frame, memoryview(frame), 0, caplen, ts)

                copying[lt] = h
            return h

        return copied

    def _run_filtered(
        self, handler_for: Callable[[int], FrameHandler], limit: int, tick: Callable[[int], None] | None
    ) -> int:
        """:meth:`run` with :attr:`frame_filter` in front of the handlers; capture time is that of
        the kept frames (:class:`KeptClock`), so at the end :attr:`last_ts` is the last kept one's."""
        self._clock.tick = tick or _noop_tick
        try:
            if self._src is not None:
                return self._run_streamed(handler_for, limit, None)
            return self._run(self._scanner(handler_for), limit, None)
        finally:
            if self.done:
                self.last_ts = self._clock.last_ts

    def _filtered(self, handler_for: Callable[[int], FrameHandler]) -> Callable[[int], FrameHandler]:
        """``handler_for`` behind :attr:`frame_filter`: the same function without one, else one
        filtered handler per link type."""
        flt = self.frame_filter
        if flt is None:
            return handler_for
        made: dict[int, FrameHandler] = {}
        # pcapng: each interface's snap length is its own; a program depends on it only for the
        # value it returns on a match (never 0), so libpcap's maximum serves them all
        snaplen = self.snaplen if self.format == "pcap" else 0

        def filtered_for(lt: int) -> FrameHandler:
            h = made.get(lt)
            if h is None:
                h = made[lt] = flt.wrap(handler_for(lt), lt, snaplen, self, self._clock)
            return h

        return filtered_for

    def _run(
        self,
        handler_for: Callable[[int], FrameHandler],
        limit: int,
        tick: Callable[[int], None] | None,
    ) -> int:
        scan = self._run_pcap if self.format == "pcap" else self._run_pcapng
        tick = tick or _noop_tick
        n = 0
        if self.stats.first_ts_us is None:
            # the first frame alone, to note its timestamp outside the loop
            n = scan(handler_for, 1, tick)
            if n:
                self.stats.first_ts_us = self.last_ts
                if limit > 0:
                    limit -= 1
                if self.done or limit == 0:
                    return n
        return n + scan(handler_for, limit, tick)

    def _run_pcap(
        self, handler_for: Callable[[int], FrameHandler], limit: int, tick: Callable[[int], None]
    ) -> int:
        buf, mv, size = self.buf, self.mv, self.end
        stats = self.stats
        seen = self._seen
        handler = handler_for(self.linktype)
        rec = struct.Struct(self.endian + "IIII").unpack_from
        nsec = self.nsec
        maxlen = min(max(self.snaplen, _MAX_RECORD), _MAX_RECORD_LIMIT)
        off = self.off
        ts = self.last_ts
        npk = 0
        nbytes = 0
        stop = size - 16
        tick_at = ts
        try:
            while off <= stop:
                if npk == limit:
                    break
                sec, frac, incl, _orig = rec(buf, off)
                nxt = off + 16 + incl
                if nxt > size or incl > maxlen:
                    if incl > maxlen:
                        self._stop(
                            f"pcap record claims {incl} captured bytes (more than {maxlen}); "
                            "file damaged, reading stopped",
                            off, seen + npk,
                        )
                    elif not self.eof:
                        self._need = nxt  # streaming: the rest of the record is still to come
                    else:
                        self._stop(
                            f"truncated pcap record: {incl} bytes announced, {size - off - 16} present",
                            off, seen + npk,
                        )
                    break
                ts = sec * 1000000 + (frac // 1000 if nsec else frac)
                if incl < _orig:
                    stats.cut_at = off + 16  # cut by the snap length (decode: a gap, not a lie)
                    stats.cut_frame = (seen + npk + 1, self.base + off)
                handler(buf, mv, off + 16, incl, ts)
                off = nxt
                npk += 1
                nbytes += incl
                if ts >= tick_at or not npk & 4095:
                    tick(ts)
                    tick_at = ts + _TICK_US
            else:
                if not self.eof:
                    self._need = off + 16
                else:
                    if off < size:
                        self._stop(f"truncated pcap record header ({size - off} of 16 bytes)", off, seen + npk)
                    self.done = True
        finally:
            self.off = off
            self.last_ts = ts
            self._seen = seen + npk
            self._account(npk, nbytes, ts)
        return npk

    def _account(self, npk: int, nbytes: int, ts: int) -> None:
        st = self.stats
        st.packets += npk
        st.bytes += nbytes
        if npk:
            st.last_ts_us = ts

    def _run_pcapng(
        self, handler_for: Callable[[int], FrameHandler], limit: int, tick: Callable[[int], None]
    ) -> int:
        buf, mv, size = self.buf, self.mv, self.end
        stats = self.stats
        problem = self._problem
        seen = self._seen
        skipped = 0  # packet blocks skipped as damaged: frames too, in Wireshark's numbering
        streaming = not self.eof  # a local: looked at for every block
        off = self.off
        ts = self.last_ts
        npk = 0
        nbytes = 0
        tick_at = ts
        e = self.endian
        hdr7 = struct.Struct(e + "7I").unpack_from
        hdr2 = struct.Struct(e + "2I").unpack_from
        ifaces = self.ifaces
        handlers, ifhandlers = self._interface_handlers(handler_for)
        try:
            while True:
                if off + 12 > size:
                    if streaming:
                        self._need = off + 12  # streaming: the next block is still to come
                        break
                    if off < size:
                        self._stop(f"truncated pcapng block header ({size - off} bytes left)", off,
                                   seen + npk + skipped, frame=False)
                    self.done = True
                    break
                if npk == limit:
                    break
                if off + 28 <= size:
                    btype, blen, ifid, th, tl, cl, _ol = hdr7(buf, off)
                else:
                    btype, blen = hdr2(buf, off)
                    ifid = th = tl = cl = 0
                if streaming:
                    # wait for the whole block (a section header's length in its own byte
                    # order); a length no block may have is left to the checks below
                    want = off + 28
                    if want <= size:
                        bl = blen
                        if btype == _PCAPNG_SHB:
                            order = "<I" if buf[off + 8 : off + 12] == _BOM_LE else ">I"
                            bl = struct.unpack_from(order, buf, off + 4)[0]
                        want = off + bl if bl <= _MAX_RECORD_LIMIT else 0
                    if want > size:
                        self._need = want
                        break
                if btype == 6:  # Enhanced Packet Block
                    if blen < 32 or blen & 3 or off + blen > size:
                        self._bad_block_length(btype, blen, off, seen + npk + skipped)
                        break
                    if cl > blen - 32:
                        problem(f"EPB captured length {cl} exceeds its block ({blen} bytes)", off, seen + npk + skipped)
                        off += blen
                        skipped += 1
                        continue
                    if ifid >= len(ifaces):
                        problem(f"EPB for undefined interface {ifid}", off, seen + npk + skipped)
                        off += blen
                        skipped += 1
                        continue
                    _lt, _snap, mode, mul, div, tsoff = ifaces[ifid]
                    if mode == 0:  # microseconds
                        ts = (th << 32) | tl
                    elif mode == 1:  # a whole multiple of microseconds per tick, e.g. ns
                        ts = ((th << 32) | tl) // div
                    else:
                        ts = ((th << 32) | tl) * mul // div + tsoff
                    if not 0 <= ts <= _MAX_TS_US:
                        problem(f"EPB timestamp {ts} µs since 1970 is out of range; frame skipped", off,
                                seen + npk + skipped)
                        ts = self.last_ts
                        off += blen
                        skipped += 1
                        continue
                    if cl < _ol:
                        stats.cut_at = off + 28
                        stats.cut_frame = (seen + npk + skipped + 1, self.base + off)
                    ifhandlers[ifid](buf, mv, off + 28, cl, ts)
                    off += blen
                    npk += 1
                    nbytes += cl
                    if ts >= tick_at or not npk & 4095:
                        tick(ts)
                        tick_at = ts + _TICK_US
                    continue
                if btype == _PCAPNG_SHB:
                    bom = bytes(buf[off + 8 : off + 12])
                    if bom == _BOM_LE:
                        e = "<"
                    elif bom == _BOM_BE:
                        e = ">"
                    else:
                        self._stop(f"section header with invalid byte-order magic {bom.hex()}", off,
                                   seen + npk + skipped, frame=False)
                        break
                    if off + 16 > size:
                        self._stop("truncated section header block", off, seen + npk + skipped, frame=False)
                        break
                    blen, _bom, major, minor = struct.unpack_from(e + "IIHH", buf, off + 4)
                    if blen < 28 or blen & 3 or off + blen > size:
                        self._bad_block_length(btype, blen, off, seen + npk + skipped)
                        break
                    if major != 1:
                        self._stop(f"pcapng section version {major}.{minor} not supported", off,
                                   seen + npk + skipped, frame=False)
                        break
                    self.endian = e
                    hdr7 = struct.Struct(e + "7I").unpack_from
                    hdr2 = struct.Struct(e + "2I").unpack_from
                    ifaces = self.ifaces = []
                    ifhandlers = self._iface_handlers = []
                    off += blen
                    continue
                if blen < 12 or blen & 3 or off + blen > size:
                    self._bad_block_length(btype, blen, off, seen + npk + skipped)
                    break
                if struct.unpack_from(e + "I", buf, off + blen - 4)[0] != blen:
                    self._stop(f"pcapng block type 0x{btype:08x}: trailing length differs from {blen}", off,
                               seen + npk + skipped, frame=btype in _PACKET_BLOCKS)
                    break
                if btype == 1:  # Interface Description Block
                    iface = self._parse_idb(off, blen, e, seen + npk + skipped)
                    if iface is not None:
                        ifaces.append(iface)
                        h = handlers.get(iface[0])
                        if h is None:
                            h = handlers[iface[0]] = handler_for(iface[0])
                        ifhandlers.append(h)
                elif btype == 3:  # Simple Packet Block: no interface id, no timestamp
                    if not ifaces:
                        problem("simple packet block before any interface description", off, seen + npk + skipped)
                        skipped += 1
                    elif blen < 16:
                        problem(f"simple packet block too short ({blen} bytes)", off, seen + npk + skipped)
                        skipped += 1
                    else:
                        olen = struct.unpack_from(e + "I", buf, off + 8)[0]
                        snap = ifaces[0][1]
                        cl = min(olen, blen - 16, snap) if snap else min(olen, blen - 16)
                        if cl < olen:
                            stats.cut_at = off + 12
                            stats.cut_frame = (seen + npk + skipped + 1, self.base + off)
                        ifhandlers[0](buf, mv, off + 12, cl, ts)
                        npk += 1
                        nbytes += cl
                        if not npk & 4095:  # no time of its own: the count only, as for any frame
                            tick(ts)
                            tick_at = ts + _TICK_US
                elif btype == 2:  # obsolete Packet Block
                    if blen < 32:
                        problem(f"packet block too short ({blen} bytes)", off, seen + npk + skipped)
                        skipped += 1
                    else:
                        ifid, _drops, th, tl, cl, _ol = struct.unpack_from(e + "HHIIII", buf, off + 8)
                        if ifid >= len(ifaces):
                            problem(f"packet block for undefined interface {ifid}", off, seen + npk + skipped)
                            skipped += 1
                        elif cl > blen - 32:
                            problem(f"packet block captured length {cl} exceeds its block", off, seen + npk + skipped)
                            skipped += 1
                        else:
                            _lt, _snap, mode, mul, div, tsoff = ifaces[ifid]
                            stamp = ((th << 32) | tl) * mul // div + tsoff
                            if 0 <= stamp <= _MAX_TS_US:
                                ts = stamp
                                if cl < _ol:
                                    stats.cut_at = off + 28
                                    stats.cut_frame = (seen + npk + skipped + 1, self.base + off)
                                ifhandlers[ifid](buf, mv, off + 28, cl, ts)
                                npk += 1
                                nbytes += cl
                                # its time moves the capture clock as an EPB's does (and as
                                # KeptClock's, which sees every frame kept by a filter)
                                if ts >= tick_at or not npk & 4095:
                                    tick(ts)
                                    tick_at = ts + _TICK_US
                            else:
                                problem(f"packet block timestamp {stamp} µs since 1970 is out of range; "
                                        "frame skipped", off, seen + npk + skipped)
                                skipped += 1
                else:
                    self.stats.skipped_blocks += 1
                off += blen
        finally:
            self.off = off
            self.last_ts = ts
            self._seen = seen + npk + skipped
            self._account(npk, nbytes, ts)
        return npk

    def _interface_handlers(
        self, handler_for: Callable[[int], FrameHandler]
    ) -> tuple[dict[int, FrameHandler], list[FrameHandler]]:
        """The handlers ``handler_for`` made, per link type and per interface of the section (the
        lists the pcapng scan extends), made only for the interfaces described since the last scan
        with the same ``handler_for``."""
        if self._handlers_of is not handler_for:
            self._handlers_of = handler_for
            self._lt_handlers = {}
            self._iface_handlers = []
        handlers, ifhandlers = self._lt_handlers, self._iface_handlers
        for lt, *_rest in self.ifaces[len(ifhandlers):]:
            h = handlers.get(lt)
            if h is None:
                h = handlers[lt] = handler_for(lt)
            ifhandlers.append(h)
        return handlers, ifhandlers

    def _bad_block_length(self, btype: int, blen: int, off: int, before: int) -> None:
        if off + blen > self.end and blen >= 12 and not blen & 3 and blen <= _MAX_RECORD_LIMIT:
            what = f"truncated pcapng block type 0x{btype:08x}: {blen} bytes announced, {self.end - off} present"
        else:
            what = f"pcapng block type 0x{btype:08x} with invalid length {blen}; file damaged, reading stopped"
        self._stop(what, off, before, frame=btype in _PACKET_BLOCKS)

    def _parse_idb(self, off: int, blen: int, e: str, before: int) -> tuple[int, int, int, int, int, int] | None:
        """Interface Description Block -> (linktype, snaplen, ts mode, ts mul, ts div, offset µs)."""
        buf = self.buf
        if blen < 20:
            self._problem(f"interface description block too short ({blen} bytes)", off, before, frame=False)
            return None
        linktype, _res, snaplen = struct.unpack_from(e + "HHI", buf, off + 8)
        per_s = 1_000_000
        tsoff_us = 0
        q = off + 16
        oend = off + blen - 4
        while q + 4 <= oend:
            code, olen = struct.unpack_from(e + "HH", buf, q)
            if code == 0:
                break
            if q + 4 + olen > oend:
                self._problem(f"interface option {code} runs past its block", q, before, frame=False, lost=False)
                break
            if code == 9 and olen >= 1:  # if_tsresol
                v = buf[q + 4]
                exp = v & 0x7F
                if exp > 30 if v & 0x80 else exp > 18:
                    self._problem(f"if_tsresol {v:#x} out of range; using microseconds", q, before, frame=False,
                                  lost=False)
                else:
                    per_s = (1 << exp) if v & 0x80 else 10**exp
            elif code == 14 and olen >= 8:  # if_tsoffset, seconds
                tsoff_us = struct.unpack_from(e + "q", buf, q + 4)[0] * 1_000_000
            q += 4 + ((olen + 3) & ~3)
        # ticks -> µs as ticks * mul // div + offset, with the fraction reduced
        g = math.gcd(1_000_000, per_s)
        mul, div = 1_000_000 // g, per_s // g
        if mul == 1 and div == 1 and tsoff_us == 0:
            mode = 0
        elif mul == 1 and tsoff_us == 0:
            mode = 1
        else:
            mode = 2
        iface = (linktype, snaplen, mode, mul, div, tsoff_us)
        return self._iface_kinds.setdefault(iface, iface)


def iter_frames(
    source: str | os.PathLike[str] | bytes | bytearray | memoryview,
    stats: CaptureStats | None = None,
) -> Iterator[tuple[int, int, memoryview]]:
    """Yield ``(timestamp_us, linktype, frame)`` for every frame; ``frame`` is a memoryview into
    the capture, valid until the iteration ends.  Slower than :func:`.read_capture`'s loop."""
    with CaptureFile(source, stats) as cf:
        batch: list[tuple[int, int, memoryview]] = []
        handlers: dict[int, FrameHandler] = {}

        def handler_for(lt: int) -> FrameHandler:
            h = handlers.get(lt)
            if h is None:
                def h(buf: object, mv: memoryview, off: int, caplen: int, ts: int) -> None:
                    batch.append((ts, lt, mv[off : off + caplen]))

                handlers[lt] = h
            return h

        while not cf.done:
            cf.run(handler_for, 4096)
            yield from batch
            batch.clear()


def process_file(
    source: str | os.PathLike[str] | bytes | bytearray | memoryview, reasm: TCPReassembler
) -> CaptureStats:
    """Read a whole capture into ``reasm`` and finish it.  See :func:`pacsguard.ids.capture.read_capture`."""
    handlers: dict[int, FrameHandler] = {}

    def handler_for(lt: int) -> FrameHandler:
        h = handlers.get(lt)
        if h is None:
            h = handlers[lt] = make_frame_handler(reasm, lt)
        return h

    with CaptureFile(source, reasm.stats) as cf:
        cf.run(handler_for, -1, reasm.tick)
        reasm.tick(cf.last_ts)
        reasm.finish()
    return reasm.stats


# ====================================================================== live capture

_ARPHRD_TO_LINKTYPE = {1: LINKTYPE_ETHERNET, 772: LINKTYPE_ETHERNET, 65534: LINKTYPE_RAW, 519: LINKTYPE_RAW}
_SOL_PACKET = 263
_PACKET_ADD_MEMBERSHIP = 1
_PACKET_MR_PROMISC = 1
_PACKET_STATISTICS = 6
_PACKET_OUTGOING = 4
_SO_ATTACH_FILTER = 26
_SO_RCVBUFFORCE = 33
_SO_TIMESTAMPNS = 35
_ETH_P_ALL = 0x0003
# packet(7) PACKET_AUXDATA: struct tpacket_auxdata (status, len, snaplen, mac, net, vlan_tci,
# vlan_tpid).  Linux takes the 802.1Q tag out of every received frame (skb_vlan_untag, or the
# NIC's VLAN offload) and hands it over here; libpcap puts it back into the frame, and so do we.
_PACKET_AUXDATA = 8
_AUXDATA = struct.Struct("IIIHHHH")
_TP_STATUS_VLAN_VALID = 1 << 4
_TP_STATUS_VLAN_TPID_VALID = 1 << 6


class _BpfInsn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_BpfInsn))]


_Program = list[tuple[int, int, int, int]]
_DLT_RAW = 12  # libpcap's DLT_RAW on Linux (pcap/dlt.h)
_PCAP_ERRBUF_SIZE = 256
# A classic BPF "jeq #k" (BPF_JMP | BPF_JEQ | BPF_K) and the tag protocol identifiers libpcap's
# `vlan` compares the EtherType with when the tag is in the frame: 802.1Q, 802.1ad and the
# pre-standard QinQ 0x9100 (IEEE 802.1Q 9.5).
_BPF_JEQ_K = 0x15
_VLAN_TPIDS = frozenset((0x8100, 0x88A8, 0x9100))


def _libpcap() -> Any:
    """The system libpcap (``libpcap.so``) with the prototypes used here, or None."""
    name = ctypes.util.find_library("pcap")
    for candidate in (name, "libpcap.so.1", "libpcap.so.0.8"):
        if not candidate:
            continue
        try:
            lib = ctypes.CDLL(candidate)
            break
        except OSError:
            continue
    else:
        return None
    handle = ctypes.c_void_p
    lib.pcap_open_dead.restype = handle
    lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.pcap_create.restype = handle
    lib.pcap_create.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    lib.pcap_set_snaplen.argtypes = [handle, ctypes.c_int]
    lib.pcap_activate.argtypes = [handle]
    lib.pcap_compile.argtypes = [handle, ctypes.POINTER(_BpfProgram), ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32]
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_geterr.argtypes = [handle]
    lib.pcap_statustostr.restype = ctypes.c_char_p
    lib.pcap_statustostr.argtypes = [ctypes.c_int]
    lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
    lib.pcap_close.argtypes = [handle]
    return lib


def _pcap_compile(lib: Any, handle: int, expr: str, *, named: str = "", context: str = "") -> _Program:
    """``pcap_compile`` on ``handle`` (optimized, netmask unknown): the program's instructions.
    Refused: CaptureError "NAMED: libpcap's message CONTEXT" (NAMED: ``BPF filter 'EXPR'`` unless given)."""
    prog = _BpfProgram()
    if lib.pcap_compile(handle, ctypes.byref(prog), expr.encode(), 1, 0xFFFFFFFF) != 0:
        err = (lib.pcap_geterr(handle) or b"").decode(errors="replace")
        raise CaptureError(f"{named or f'BPF filter {expr!r}'}: {err}{context}")
    out = [(i.code, i.jt, i.jf, i.k) for i in prog.bf_insns[: prog.bf_len]]
    lib.pcap_freecode(ctypes.byref(prog))
    return out


def _compile_with_libpcap(expr: str, linktype: int, snaplen: int) -> _Program | None:
    lib = _libpcap()
    if lib is None:
        return None
    # pcap_open_dead takes libpcap's DLT_ number, not the LINKTYPE_ of files and of live_loop: the
    # two differ for raw IP (LINKTYPE_RAW 101 is DLT_RAW 12 on Linux; 101 is refused as "unknown
    # data link type"), the same for the others used here.
    handle = lib.pcap_open_dead(_DLT_RAW if linktype == LINKTYPE_RAW else linktype, snaplen)
    if not handle:
        return None
    try:
        return _pcap_compile(lib, handle, expr)
    finally:
        lib.pcap_close(handle)


def _tcpdump_ddd(expr: str, *options: str) -> _Program:
    """``tcpdump -ddd``: the program tcpdump would compile for ``expr`` (with ``options``)."""
    tcpdump = shutil.which("tcpdump")
    if tcpdump is None:
        raise CaptureError("no BPF compiler: neither libpcap (libpcap0.8) nor tcpdump is installed")
    r = subprocess.run([tcpdump, *options, "-ddd", expr], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise CaptureError(f"BPF filter {expr!r}: {r.stderr.strip()}")
    lines = r.stdout.split("\n")
    n = int(lines[0])
    return [tuple(int(x) for x in line.split()) for line in lines[1 : n + 1]]  # type: ignore[misc]


def compile_bpf(expr: str, linktype: int = LINKTYPE_ETHERNET, snaplen: int = _MAX_RECORD) -> _Program:
    """Compile a pcap-filter(7) expression to classic BPF ``(code, jt, jf, k)`` instructions, for
    frames as a capture file holds them (VLAN tags in the frame; :func:`compile_live_bpf` for a
    Linux interface).

    Uses libpcap's ``pcap_compile`` through ctypes; falls back to ``tcpdump -ddd`` (Ethernet only).
    Raises :class:`CaptureError` if the expression is invalid or no compiler is available.
    """
    prog = _compile_with_libpcap(expr, linktype, snaplen)
    if prog is not None:
        return prog
    if linktype != LINKTYPE_ETHERNET:
        raise CaptureError("no BPF compiler: neither libpcap (libpcap0.8) nor tcpdump is installed")
    return _tcpdump_ddd(expr)


def _tests_vlan_tags(prog: _Program) -> bool:
    """Does the program compare a value with an 802.1Q/802.1ad tag protocol identifier?  (How a
    ``vlan`` term compiled for a file looks; a ``port 33024`` alike only costs a second compile.)"""
    return any(code == _BPF_JEQ_K and k in _VLAN_TPIDS for code, _jt, _jf, k in prog)


def compile_live_bpf(expr: str, interface: str, linktype: int = LINKTYPE_ETHERNET,
                     snaplen: int = _MAX_RECORD) -> _Program:
    """:func:`compile_bpf` for a Linux packet socket on ``interface``: the program tcpdump would
    attach there.

    Linux takes the outer 802.1Q/802.1ad tag out of a frame before a packet socket's filter runs
    (packet(7)), so a ``vlan`` term compiled as for a file (:func:`compile_bpf`: the EtherType at
    offset 12 compared with 0x8100) matches no frame that carried the tag.  libpcap compiles it for
    a live Linux handle with the BPF ancillary loads instead (``SKF_AD_VLAN_TAG_PRESENT``,
    ``SKF_AD_VLAN_TAG``; the offsets after the tag then depend on where the tag was); it knows to
    only for a handle opened on an interface (``BPF_SPECIAL_VLAN_HANDLING``, the one code generation
    choice a live Linux handle changes in libpcap 1.10).  So a program that tests VLAN tags is
    compiled again, on a libpcap handle opened on ``interface`` for the time of the compile (or
    ``tcpdump -i``), which needs the interface up; any other program is the file's.
    """
    prog = compile_bpf(expr, linktype, snaplen)
    if linktype != LINKTYPE_ETHERNET or not _tests_vlan_tags(prog):
        return prog
    lib = _libpcap()
    if lib is None:
        return _tcpdump_ddd(expr, "-i", interface, "-s", str(snaplen))
    errbuf = ctypes.create_string_buffer(_PCAP_ERRBUF_SIZE)
    handle = lib.pcap_create(interface.encode(), errbuf)
    if not handle:
        raise CaptureError(f"interface {interface!r}: {errbuf.value.decode(errors='replace')}")
    try:
        lib.pcap_set_snaplen(handle, snaplen)
        status = lib.pcap_activate(handle)
        if status < 0:
            why = lib.pcap_geterr(handle) or lib.pcap_statustostr(status) or b""
            raise CaptureError(f"BPF filter {_clip(expr)}: its VLAN terms are compiled for the interface, and "
                               f"libpcap could not open interface {interface!r}: {why.decode(errors='replace')}")
        return _pcap_compile(lib, handle, expr)
    finally:
        lib.pcap_close(handle)


def _compile_until_stopped(expr: str, interface: str, linktype: int, snaplen: int, stop_event: _StopEvent,
                           poll_s: float) -> _Program:
    """:func:`compile_live_bpf`, given up when ``stop_event`` is set first (Ctrl-C, SIGTERM, --duration).

    libpcap's optimizer takes time and memory that grow much faster than the filter: a few hundred
    ``host`` or ``port`` terms take seconds, a thousand minutes and gigabytes.  ``pcap_compile``
    cannot be interrupted and a signal handler only runs between bytecodes, so the call runs in a
    daemon thread (ctypes releases the GIL) while this one keeps answering the stop event; a
    compile left behind ends with the process."""
    result: list[_Program | BaseException] = []

    def run() -> None:
        try:
            result.append(compile_live_bpf(expr, interface, linktype, snaplen))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            result.append(exc)

    worker = threading.Thread(target=run, name="bpf-compile", daemon=True)
    started = time.monotonic()
    worker.start()
    while worker.is_alive() and not stop_event.is_set():
        worker.join(poll_s)
    if not result:
        raise CaptureError(f"BPF filter {_clip(expr)}: stopped after {time.monotonic() - started:.0f} s, before "
                           "libpcap finished compiling it (nothing was captured); a filter this long takes "
                           "libpcap minutes and gigabytes: use fewer terms (a net instead of many hosts, "
                           "a port range instead of many ports)")
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def _clip(expr: str, most: int = 120) -> str:
    return repr(expr) if len(expr) <= most else repr(expr[: most - 3] + "...")


def _attach_filter(sock: socket.socket, prog: list[tuple[int, int, int, int]]) -> None:
    arr = (_BpfInsn * len(prog))(*[_BpfInsn(*i) for i in prog])
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; } with native padding
    fprog = struct.pack("HL", len(prog), ctypes.addressof(arr))
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)


def _interface_linktype(interface: str) -> tuple[int, int]:
    try:
        with open(f"/sys/class/net/{interface}/type") as f:
            arphrd = int(f.read().strip())
    except (OSError, ValueError) as e:
        raise CaptureError(f"interface {interface!r}: not found ({e})") from e
    lt = _ARPHRD_TO_LINKTYPE.get(arphrd)
    if lt is None:
        raise CaptureError(f"interface {interface!r}: hardware type {arphrd} not supported")
    return arphrd, lt


class _StopEvent(Protocol):
    def is_set(self) -> bool: ...


def _vlan_tag(auxdata: bytes) -> bytes:
    """The 802.1Q tag (TPID, TCI: IEEE 802.1Q 9.6) a ``tpacket_auxdata`` says the kernel removed
    from the frame, or ``b""``; the TPID is 0x8100 unless the kernel names another (802.1ad)."""
    status, _len, _snap, _mac, _net, tci, tpid = _AUXDATA.unpack_from(auxdata)
    if not (status & _TP_STATUS_VLAN_VALID or tci):
        return b""
    return struct.pack("!HH", tpid if status & _TP_STATUS_VLAN_TPID_VALID and tpid else 0x8100, tci)


def live_loop(
    interface: str,
    reasm: TCPReassembler,
    bpf: str | None,
    stop_event: _StopEvent,
    *,
    promisc: bool = True,
    snaplen: int = _MAX_RECORD,
    rcvbuf: int = 64 << 20,
    poll_s: float = 0.2,
    ready: Callable[[], None] | None = None,
) -> CaptureStats:
    """Capture from ``interface`` into ``reasm`` until ``stop_event.is_set()``; Linux only.

    ``ready`` is called once the socket is bound with its filter attached: from then on every
    packet matching the filter is captured."""
    if not hasattr(socket, "AF_PACKET"):
        raise CaptureError("live capture needs Linux AF_PACKET sockets")
    arphrd, linktype = _interface_linktype(interface)
    stats = reasm.stats
    prog = _compile_until_stopped(bpf, interface, linktype, snaplen, stop_event, poll_s) if bpf else None
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: nothing yet
    except PermissionError as e:
        raise CaptureError(f"interface {interface!r}: raw sockets need CAP_NET_RAW ({e})") from e
    try:
        if prog is not None:
            try:
                _attach_filter(sock, prog)
            except OSError as e:
                # Linux takes at most 4096 classic BPF instructions (BPF_MAXINSNS); a filter
                # libpcap compiled longer than that is refused with EINVAL.
                raise CaptureError(f"BPF filter {_clip(bpf or '')}: the kernel refused its {len(prog):,} "
                                   f"instructions ({e.strerror or e}; a socket filter holds at most 4,096): "
                                   "use fewer terms") from e
        for opt in (_SO_RCVBUFFORCE, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, rcvbuf)
                break
            except OSError:
                continue
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        ethernet = linktype == LINKTYPE_ETHERNET
        if ethernet:
            sock.setsockopt(_SOL_PACKET, _PACKET_AUXDATA, 1)
        sock.bind((interface, _ETH_P_ALL))
        if promisc and arphrd == 1:
            ifindex = socket.if_nametoindex(interface)
            mreq = struct.pack("iHH8s", ifindex, _PACKET_MR_PROMISC, 0, b"")
            sock.setsockopt(_SOL_PACKET, _PACKET_ADD_MEMBERSHIP, mreq)
        sock.settimeout(poll_s)
        handler = make_frame_handler(reasm, linktype)
        loopback = arphrd == 772
        buf = bytearray(snaplen)
        view = memoryview(buf)
        recvmsg_into = sock.recvmsg_into
        ancsize = socket.CMSG_SPACE(16) + socket.CMSG_SPACE(_AUXDATA.size)
        trunc = socket.MSG_TRUNC
        ts = time.time_ns() // 1000
        reasm.tick(ts)
        npk = nbytes = 0
        if ready is not None:
            ready()
        while not stop_event.is_set():
            try:
                n, anc, _flags, addr = recvmsg_into([view], ancsize, trunc)
            except (socket.timeout, InterruptedError):
                reasm.tick(time.time_ns() // 1000)
                continue
            if loopback and addr[2] == _PACKET_OUTGOING:
                continue
            ts = 0
            tag = b""
            for level, typ, data in anc:
                if level == socket.SOL_SOCKET and typ == _SO_TIMESTAMPNS and len(data) >= 16:
                    sec, nsec = struct.unpack_from("qq", data)
                    ts = sec * 1000000 + nsec // 1000
                elif level == _SOL_PACKET and typ == _PACKET_AUXDATA and ethernet and len(data) >= _AUXDATA.size:
                    tag = _vlan_tag(data)
            if not ts:
                ts = time.time_ns() // 1000
            caplen = n if n <= snaplen else snaplen
            stats.cut_at = 0 if n > caplen else -1  # MSG_TRUNC: n is the frame's real length
            if tag and caplen >= 12:
                # the tag the kernel took out, back in its place: the frame as it was on the wire
                frame = bytes(view[:12]) + tag + bytes(view[12:caplen])
                caplen += 4
            else:
                frame = bytes(view[:caplen])
            handler(frame, memoryview(frame), 0, caplen, ts)
            npk += 1
            nbytes += caplen
            if not npk & 255:
                reasm.tick(ts)
        try:
            raw = sock.getsockopt(_SOL_PACKET, _PACKET_STATISTICS, 8)
            _seen, drops = struct.unpack("II", raw)
            if drops:
                stats.add_problem(f"kernel dropped {drops} packets (socket buffer full)", -1)
        except OSError:
            pass
        stats.packets += npk
        stats.bytes += nbytes
        stats.last_ts_us = ts or stats.last_ts_us
        reasm.tick(time.time_ns() // 1000)
        reasm.finish()
        return stats
    finally:
        sock.close()
