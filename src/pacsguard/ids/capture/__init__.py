"""The passive sensor's packet layer: capture bytes in, ordered per-connection byte streams out.

Two entry points drive a :class:`StreamConsumer` (``on_open``, ``on_data``, ``on_gap``,
``on_close``, and ``on_anomaly`` if it has one: :class:`StreamAnomaly`) through a :class:`TCPReassembler`:

* :func:`read_capture` reads a pcap or pcapng file (formats: :mod:`.reader`; link, IP and TCP
  decoding: :mod:`.decode`; reassembly, per RFC 9293: :mod:`.reassembly`);
* :func:`live_capture` reads a network interface through a Linux ``AF_PACKET`` socket with an
  optional BPF filter compiled by libpcap as tcpdump compiles it for that interface (why not a
  libpcap binding: :mod:`.reader`).

Payload handed to ``on_data`` is valid only during the call (a zero-copy view of the capture);
copy it to keep it.  Damage in a capture file never raises: it is described in
``CaptureStats.problems``; only input that is not a capture at all raises :class:`CaptureError`.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable

from .decode import SUPPORTED_LINKTYPES, decode_tcp
from .reader import CaptureError, CaptureFile, compile_bpf, compile_live_bpf, iter_frames, live_loop, process_file
from .reassembly import (
    ANOMALIES,
    CaptureProblem,
    CaptureStats,
    Connection,
    NullConsumer,
    StreamAnomaly,
    StreamConsumer,
    TCPReassembler,
)

__all__ = [
    "ANOMALIES",
    "CaptureError",
    "CaptureFile",
    "CaptureProblem",
    "CaptureStats",
    "Connection",
    "NullConsumer",
    "StreamAnomaly",
    "StreamConsumer",
    "SUPPORTED_LINKTYPES",
    "TCPReassembler",
    "compile_bpf",
    "compile_live_bpf",
    "decode_tcp",
    "iter_frames",
    "live_capture",
    "read_capture",
]

DEFAULT_MAX_FLOWS = 65536


def read_capture(
    path: str | os.PathLike[str] | bytes | bytearray | memoryview,
    consumer: StreamConsumer,
    *,
    max_flows: int = DEFAULT_MAX_FLOWS,
    idle_timeout_s: float = 300.0,
    max_buffer_per_flow: int = 1 << 20,
    max_buffer_total: int = 64 << 20,
    server_ports: Iterable[int] | None = None,
    vlan_tracking: bool = True,
) -> CaptureStats:
    """Read the pcap/pcapng capture ``path`` (or its bytes) and reassemble every TCP connection
    into ``consumer``; returns the run's :class:`CaptureStats`.

    ``max_flows`` bounds open connections (the least recently used is closed with reason
    ``"evicted"``); connections idle for ``idle_timeout_s`` of capture time close with
    ``"timeout"``; out-of-order data is buffered up to ``max_buffer_per_flow`` per connection and
    ``max_buffer_total`` overall, beyond which the hole is reported through ``on_gap``.
    ``server_ports`` decides the direction of connections whose handshake was not captured (a
    port in the set is the server's); otherwise the first packet's sender is taken as the client.
    Everything still open at the end closes with reason ``"end"``.  ``vlan_tracking``: a frame's
    IEEE 802.1Q/802.1ad VLAN ids are part of its connection (False: they are not, so a connection
    tagged in one direction only is one connection; Suricata's ``vlan.use-for-tracking``).
    """
    reasm = TCPReassembler(
        consumer,
        max_flows=max_flows,
        idle_timeout_s=idle_timeout_s,
        max_buffer_per_flow=max_buffer_per_flow,
        max_buffer_total=max_buffer_total,
        server_ports=server_ports,
        vlan_tracking=vlan_tracking,
    )
    return process_file(path, reasm)


def live_capture(
    interface: str,
    consumer: StreamConsumer,
    bpf: str | None = None,
    stop_event: object = None,
    *,
    max_flows: int = DEFAULT_MAX_FLOWS,
    idle_timeout_s: float = 300.0,
    max_buffer_per_flow: int = 1 << 20,
    max_buffer_total: int = 64 << 20,
    server_ports: Iterable[int] | None = None,
    promisc: bool = True,
    ready: Callable[[], None] | None = None,
    vlan_tracking: bool = True,
) -> CaptureStats:
    """Capture from ``interface`` (Linux, needs CAP_NET_RAW) until ``stop_event.is_set()``.

    ``bpf`` is a pcap-filter(7) expression applied in the kernel.  ``stop_event`` is anything with
    ``is_set()`` (``threading.Event``); it is polled every 0.2 s.  ``ready()``, if given, is called
    once capturing has begun.  ``promisc`` puts an Ethernet interface in promiscuous mode for the
    socket's lifetime.  ``vlan_tracking`` as for :func:`read_capture`.  Returns the stats after
    closing every connection with reason ``"end"``.
    Raises :class:`CaptureError` for an unknown interface, an invalid filter or missing privileges.
    """
    if stop_event is None or not hasattr(stop_event, "is_set"):
        raise TypeError("stop_event must have an is_set() method (e.g. threading.Event)")
    reasm = TCPReassembler(
        consumer,
        max_flows=max_flows,
        idle_timeout_s=idle_timeout_s,
        max_buffer_per_flow=max_buffer_per_flow,
        max_buffer_total=max_buffer_total,
        server_ports=server_ports,
        vlan_tracking=vlan_tracking,
    )
    return live_loop(interface, reasm, bpf, stop_event, promisc=promisc, ready=ready)
