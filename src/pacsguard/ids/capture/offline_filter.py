"""``ids read --bpf EXPR``: a pcap-filter(7) expression applied to the frames of a capture file as
``tcpdump -r FILE EXPR`` applies it.

libpcap does both halves, so the semantics are tcpdump's to the bit (``vlan`` on frames that hold
their tags, ``len``, ``greater``, IP fragments...):

* compilation: ``pcap_compile(3PCAP)`` on a handle opened as libpcap opens a savefile of that link
  type and snap length (``pcap_fopen_offline`` of a pcap file header alone, read from memory):
  libpcap turns the file's LINKTYPE_ value into its DLT_ value itself (LINKTYPE_RAW 101 is
  DLT_RAW 12 on Linux; ``pcap_open_dead(101)`` refuses "unknown data link type") and caps the
  snap length as it does for a file;
* matching: ``pcap_offline_filter(3PCAP)`` on each frame, given its captured and original length
  (``len`` and ``greater``/``less`` test the original one).

A pcapng file may describe interfaces of several link types (draft-ietf-opsawg-pcapng 4.2: each
Interface Description Block has its own LinkType); one program is compiled per link type, when
the first interface of that type is read.  libpcap itself refuses such a file, so ``tcpdump -r``
has no answer to compare with there: each frame is matched as tcpdump matches the frames of a
file of its interface's link type.

The original length is read from the 4 bytes just before the frame: where the pcap record header
(tcpdump.org savefile format) and the pcapng Enhanced, Simple and obsolete Packet Blocks all keep
it.  Frames the filter rejects are counted in the summary (``non_tcp``: ``excluded-by-bpf``).
"""

from __future__ import annotations

import ctypes
import os
import struct
from typing import TYPE_CHECKING, Any

from .reader import CaptureError, FrameHandler, _BpfInsn, _BpfProgram, _libpcap, _pcap_compile

if TYPE_CHECKING:
    import mmap

    from .reader import CaptureFile, KeptClock

__all__ = ["EXCLUDED", "BpfFilter"]

EXCLUDED = "excluded-by-bpf"  # the summary's count (capture.non_tcp) of frames the filter rejected
_PCAP_ERRBUF_SIZE = 256
# A pcap file header (tcpdump.org savefile format) in this machine's byte order: magic, version
# 2.4, zone, sigfigs, snap length, link type.
_PCAP_HEADER = struct.Struct("=IHHiIII")
_WIRE_LE = struct.Struct("<I").unpack_from
_WIRE_BE = struct.Struct(">I").unpack_from


class _PktHdr(ctypes.Structure):
    """``struct pcap_pkthdr``: the timestamp (unused by a filter) and the two lengths."""

    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long),
                ("caplen", ctypes.c_uint32), ("len", ctypes.c_uint32)]


class _Program:
    """A compiled filter, owned by Python (no ``pcap_freecode`` needed): the instructions, the
    ``struct bpf_program`` that points at them and a reference to it for the calls."""

    def __init__(self, insns: list[tuple[int, int, int, int]]) -> None:
        self.insns = (_BpfInsn * len(insns))(*[_BpfInsn(*i) for i in insns])
        self.prog = _BpfProgram(len(insns), self.insns)
        self.ref = ctypes.byref(self.prog)


class BpfFilter:
    """One pcap-filter(7) expression, compiled by libpcap for each link type it meets.

    Raises :class:`~.reader.CaptureError` when libpcap is missing; :meth:`wrap` raises it when the
    expression does not compile for a link type, naming the expression, the link type and
    libpcap's message."""

    def __init__(self, expr: str) -> None:
        self.expr = expr
        lib = _libpcap()
        if lib is None:
            raise CaptureError(f"--bpf {expr!r}: filtering a capture file needs libpcap (Debian's libpcap0.8)")
        lib.pcap_fopen_offline.restype = ctypes.c_void_p
        lib.pcap_fopen_offline.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.pcap_datalink.argtypes = [ctypes.c_void_p]
        lib.pcap_datalink_val_to_name.restype = ctypes.c_char_p
        lib.pcap_datalink_val_to_name.argtypes = [ctypes.c_int]
        self._lib = lib
        self._libc: Any = ctypes.CDLL(None, use_errno=True)
        self._libc.fmemopen.restype = ctypes.c_void_p
        self._libc.fmemopen.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p]
        self._libc.fclose.argtypes = [ctypes.c_void_p]
        # No argtypes on purpose: ctypes then passes the prepared references and a bytes object
        # (as char *) without converting them, ~0.6 µs a frame instead of ~1 µs.
        self._match = lib.pcap_offline_filter
        self._programs: dict[tuple[int, int], _Program] = {}

    def program(self, linktype: int, snaplen: int, name: str = "the capture") -> _Program:
        """The program for frames of ``linktype`` (a LINKTYPE_ value, as files hold) captured with
        ``snaplen`` (0: unknown, libpcap's maximum), compiled once; ``name`` for the errors."""
        key = (linktype, snaplen)
        prog = self._programs.get(key)
        if prog is None:
            prog = self._programs[key] = _Program(self._compile(linktype, snaplen, name))
        return prog

    def _compile(self, linktype: int, snaplen: int, name: str) -> list[tuple[int, int, int, int]]:
        lib = self._lib
        header = _PCAP_HEADER.pack(0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype)
        stream = self._libc.fmemopen(header, len(header), b"rb")
        if not stream:
            why = os.strerror(ctypes.get_errno())
            raise CaptureError(f"--bpf {self.expr!r}: cannot compile it (fmemopen: {why})")
        errbuf = ctypes.create_string_buffer(_PCAP_ERRBUF_SIZE)
        handle = lib.pcap_fopen_offline(stream, errbuf)  # closes the stream with the handle
        if not handle:
            self._libc.fclose(stream)
            raise CaptureError(f"--bpf {self.expr!r}: libpcap cannot compile it for {name} (link type "
                               f"{linktype}): {errbuf.value.decode(errors='replace')}")
        try:
            dlt = (lib.pcap_datalink_val_to_name(lib.pcap_datalink(handle)) or b"").decode(errors="replace")
            return _pcap_compile(lib, handle, self.expr, named=f"--bpf {self.expr!r}",
                                 context=f" (compiled for {name}, link type {dlt or linktype})")
        finally:
            lib.pcap_close(handle)

    def wrap(self, handler: FrameHandler, linktype: int, snaplen: int, capture: CaptureFile,
             clock: KeptClock) -> FrameHandler:
        """``handler`` called only for the frames the program for ``linktype`` accepts, then
        ``clock`` with their time; the others counted in ``capture.stats`` as :data:`EXCLUDED`.
        ``capture``'s byte order (that of the pcapng section being read) gives the original length
        in front of each frame."""
        ref = self.program(linktype, snaplen, capture.name).ref
        hdr = _PktHdr()
        hdr_ref = ctypes.byref(hdr)
        match = self._match
        count = capture.stats.count_non_tcp

        def filtered(buf: bytes | mmap.mmap, mv: memoryview, off: int, caplen: int, ts: int) -> None:
            hdr.caplen = caplen
            hdr.len = (_WIRE_LE if capture.endian == "<" else _WIRE_BE)(buf, off - 4)[0]
            if match(ref, hdr_ref, buf[off : off + caplen]):
                handler(buf, mv, off, caplen, ts)
                clock(ts)
            else:
                count(EXCLUDED)

        return filtered
