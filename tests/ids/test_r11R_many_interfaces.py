"""Round 11 R (hostile captures): a pcapng file that describes very many interfaces.

Every Interface Description Block (draft-ietf-opsawg-pcapng 4.2) is 20 bytes and a section may
hold any number of them.  A streamed capture (gzip, zstd, LZ4, a pipe) is scanned once per window
of about a megabyte, and each scan made the handler of every interface described so far again:
time in the square of the file's length (a 290 KB gzip file of 2 million interfaces and 400
frames took 9 s, 8 million a few minutes), and each interface kept its own tuple (~110 bytes of
memory for 20 bytes of file: 240 MB for that file).  Now the handlers are made once per run and
interfaces described alike share one description.

And an obsolete Packet Block (type 2) did not move the capture clock (an Enhanced Packet Block
does), while `ids read --bpf` moves it with every frame kept: a filter keeping every frame changed
which connections closed as idle, and when (found by the fuzzer: event order differed).
"""

from __future__ import annotations

import gzip
import os
import struct
import sys
import tracemalloc
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from capture_craft import ACK, SYN, Flow, Recorder, eth_frames, ether, ng_block, ng_epb, ng_idb, ng_shb, tcp_ip

from pacsguard.ids.capture import CaptureFile, TCPReassembler
from pacsguard.ids.capture.offline_filter import BpfFilter
from pacsguard.ids.capture.reader import make_frame_handler

T0 = 1_700_000_000_000_000  # µs


def _capture(interfaces: int, frames: int, padding: int = 0) -> bytes:
    """A section describing ``interfaces`` Ethernet interfaces, then ``frames`` frames spread over
    them, each after a block of ``padding`` bytes of a type readers skip (4.3: a custom block)."""
    frame = ether(tcp_ip("10.0.0.1", "10.0.0.2", 40000, 104, 1, ACK, b"x" * 100, ack=1))
    pad = ng_block("<", 0x00000BAD, bytes(padding)) if padding else b""
    return ng_shb("<") + ng_idb("<", 1) * interfaces + b"".join(
        pad + ng_epb("<", i % interfaces, T0 + i, frame) for i in range(frames))


def test_streamed_capture_makes_each_handler_once() -> None:
    # 40,000 interfaces, then 8 frames each after a megabyte: as many windows, read in runs of 2
    # frames as `ids read` reads in runs with its progress bar
    data = gzip.compress(_capture(40_000, 8, 1 << 20), 1)
    calls: list[int] = []
    seen: list[int] = []

    def handler_for(lt: int):  # type: ignore[no-untyped-def]
        calls.append(lt)
        return lambda buf, mv, off, caplen, ts: seen.append(caplen)

    python_calls = 0

    def count(frame: object, event: str, arg: object) -> None:
        nonlocal python_calls
        python_calls += event == "call"

    with CaptureFile(data) as cf:
        sys.setprofile(count)
        try:
            while not cf.done:
                cf.run(handler_for, 2)
        finally:
            sys.setprofile(None)
        assert not cf.stats.problems, cf.stats.problems
    assert len(seen) == 8
    # work in proportion to the file: each interface read once (its description), not once more
    # per window (then 9 times: 360,000 calls)
    assert python_calls < 60_000, f"{python_calls:,} Python calls"
    # one link type: one handler for the whole run
    assert calls == [1], f"handler_for called {len(calls):,} times"


def test_interfaces_described_alike_take_little_memory() -> None:
    data = _capture(30_000, 10)  # 600 KB of interface descriptions
    tracemalloc.start()
    try:
        with CaptureFile(data) as cf:
            cf.run(lambda lt: lambda buf, mv, off, caplen, ts: None)
            assert cf.stats.packets == 10 and len(cf.ifaces) == 30_000
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # two pointers an interface (its description and its handler), not a tuple each (2.6 MB)
    assert peak < 1_200_000, f"{peak:,} bytes at the peak"


# ------------------------------------------------------------------ the obsolete Packet Block's time


def _ng_pb(e: str, ticks: int, frame: bytes) -> bytes:
    """An obsolete Packet Block (draft-ietf-opsawg-pcapng, appendix A) on interface 0."""
    head = struct.pack(e + "HHIIII", 0, 0, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), len(frame))
    return ng_block(e, 2, head + frame + bytes(-len(frame) % 4))


def _closes(data: bytes, frame_filter: BpfFilter | None = None) -> list[tuple[Any, ...]]:
    """The opens and closes of a read of ``data``, as `ids read` reads it (through the filter)."""
    rec = Recorder()
    reasm = TCPReassembler(rec, idle_timeout_s=300)
    with CaptureFile(data, reasm.stats, frame_filter=frame_filter) as cf:
        cf.run(lambda lt: make_frame_handler(reasm, lt), -1, reasm.tick)
        reasm.tick(cf.last_ts)
    reasm.finish()
    return rec.events


def test_packet_block_time_moves_the_clock_as_an_enhanced_packet_block_does() -> None:
    # A connection, then a frame stamped 20 minutes later (past the 5-minute idle timeout), then
    # more of the connection: the late frame closes it as idle, whether it is an Enhanced Packet
    # Block or an obsolete Packet Block (as dumpcap wrote before 2012), filtered or not.
    f = Flow()
    first, later = eth_frames(f.handshake()), eth_frames(f.send(True, b"x" * 100))
    late_ts = first[-1][0] + 1200 * 1_000_000
    other = ether(tcp_ip("10.0.0.5", "10.0.0.6", 40000, 104, 1, SYN))
    head = ng_shb("<") + ng_idb("<", 1) + b"".join(ng_epb("<", 0, ts, fr) for ts, fr in first)
    tail = b"".join(ng_epb("<", 0, ts, fr) for ts, fr in later)
    epb = _closes(head + ng_epb("<", 0, late_ts, other) + tail)
    assert ("close", 0, "timeout") in epb, epb
    assert _closes(head + _ng_pb("<", late_ts, other) + tail) == epb
    assert _closes(head + _ng_pb("<", late_ts, other) + tail, BpfFilter("len >= 0")) == epb
