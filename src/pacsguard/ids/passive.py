"""Run the passive sensor over a capture file or a live interface.

:func:`read` and :func:`live` wire :class:`~pacsguard.ids.sensor.PassiveSensor` to the capture
layer (:mod:`pacsguard.ids.capture`) and return a :class:`PassiveStats`.  The caller brings the
rule engine and ``publish`` (usually ``EventBus.publish``); :func:`build_engine` makes an engine
with the built-in rules plus rule directories, on capture time.

Capture time: the sensor hands every event to the engine with ``now`` = the capture timestamp
(seconds) of the segment that completed it, and the engine built by :func:`build_engine` uses the
same :class:`~pacsguard.ids.sensor.CaptureClock` as its clock, so thresholds such as "10
rejected associations in 60 s" are evaluated on the traffic's own time, however fast the file is
read.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pacsguard.events import Event
from pacsguard.ids.capture import (
    DEFAULT_MAX_FLOWS,
    CaptureFile,
    CaptureProblem,
    CaptureStats,
    TCPReassembler,
    live_capture,
)
from pacsguard.ids.capture.reader import FrameFilter, FrameHandler, make_frame_handler
from pacsguard.ids.sensor import CaptureClock, PassiveSensor, SensorStats

if TYPE_CHECKING:
    from pacsguard.ids.dicom.adapter import DicomAdapter
    from pacsguard.ids.engine import Engine
    from pacsguard.ids.settings import IdsSettings

__all__ = ["PassiveStats", "build_engine", "live", "read"]

#: Frames read between two progress reports.
PROGRESS_FRAMES = 32768


@dataclass
class PassiveStats:
    """One run of the sensor: what the capture layer and the sensor counted, and how fast."""

    source: str  # capture file or interface
    capture: CaptureStats
    sensor: SensorStats
    seconds: float  # wall time of the run
    size: int  # capture bytes read (a whole file's size; gzip'd: decompressed; live: frame bytes captured)

    @property
    def mb_per_s(self) -> float:
        return self.size / self.seconds / 1e6 if self.seconds > 0 else 0.0

    @property
    def gbit_per_s(self) -> float:
        return self.size * 8 / self.seconds / 1e9 if self.seconds > 0 else 0.0

    @property
    def alerts(self) -> int:
        return self.sensor.alerts

    @property
    def unreadable_frames(self) -> int:
        """Frames of a link type the decoder cannot read."""
        return sum(n for what, n in self.capture.non_tcp.items() if what.startswith("linktype-"))

    @property
    def incomplete(self) -> bool:
        """The capture could not be read completely: reading stopped at damage, frames were
        skipped as damaged (or dropped by the kernel, or IP fragments over the reassembly limits),
        frames were cut short by the snap length, or their link type cannot be read."""
        return bool(self.capture.lost_problems or self.unreadable_frames)

    def lost(self) -> str:
        """What was not read, in one sentence ("" when the capture was read completely)."""
        if not self.incomplete:
            return ""
        cap = self.capture
        parts = [f"{cap.packets:,} frames read"]
        if cap.stopped is not None:
            where = cap.stopped.where()  # "frame 4, offset 1,234", "after frame 12, offset 2,088"
            if where:
                at = " " if where.startswith(("after", "before")) else " at "
                where = at + where + (f" of {self.size:,} bytes" if cap.stopped.offset >= 0 else "")
            parts.append(f"reading stopped{where}: {cap.stopped.what}")
        skipped = cap.lost_problems - (cap.stopped is not None) - (cap.snap_truncated > 0)
        if skipped:
            parts.append(f"{skipped:,} damaged frames or blocks skipped")
        if cap.snap_truncated:
            parts.append(f"{cap.snap_truncated:,} frames cut short by the snap length "
                         f"({cap.snap_missing_bytes:,} TCP payload bytes not captured)")
        if self.unreadable_frames:
            kinds = ", ".join(sorted(k for k in cap.non_tcp if k.startswith("linktype-")))
            parts.append(f"{self.unreadable_frames:,} frames of a link type that cannot be read ({kinds})")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        cap = self.capture
        return {
            "source": self.source,
            "seconds": round(self.seconds, 3),
            "bytes": self.size,
            "mb_per_s": round(self.mb_per_s, 1),
            "gbit_per_s": round(self.gbit_per_s, 3),
            "capture": {
                "packets": cap.packets,
                "frame_bytes": cap.bytes,
                "tcp_connections": cap.flows,
                "non_tcp": dict(cap.non_tcp),
                "gaps": cap.gaps,
                "gap_bytes": cap.gap_bytes,
                "retransmissions": cap.retransmissions,
                "out_of_order": cap.out_of_order,
                "ip_fragments": cap.ip_fragments,
                "ip_reassembled": cap.ip_reassembled,
                "ip_fragments_expired": cap.ip_fragments_expired,
                "ip_fragments_dropped": cap.ip_fragments_dropped,
                "snap_truncated": cap.snap_truncated,
                "snap_missing_bytes": cap.snap_missing_bytes,
                "ip_length_from_frame": cap.ip_length_from_frame,
                "anomalies": dict(cap.anomalies),
                "evicted": cap.evicted,
                "timed_out": cap.timed_out,
                "close_reasons": dict(cap.close_reasons),
                "problem_count": cap.problem_count,
                "problems": [_problem_dict(p) for p in cap.problems],
                "complete": not self.incomplete,
                "lost": self.lost(),
                "stopped": _problem_dict(cap.stopped) if cap.stopped else None,
                "first_ts_us": cap.first_ts_us,
                "last_ts_us": cap.last_ts_us,
            },
            "sensor": self.sensor.to_dict(),
        }


def _problem_dict(p: CaptureProblem) -> dict[str, Any]:
    """A capture problem for JSON: ``frame`` is Wireshark's frame number (0: not in a frame, then
    ``after_frame`` frames precede it; -1: unknown)."""
    return {"what": p.what, "offset": p.offset, "frame": p.frame, "after_frame": p.after_frame}


def _settings_of(engine: Any) -> Any:
    return getattr(engine, "settings", None)


def _ports(engine: Any, dicom_ports: Iterable[int] | None) -> frozenset[int]:
    """``dicom_ports`` if given, else ``$dicom_ports`` as the engine's rules test it: the settings
    plus what was added to it (a configuration's route ports, ``Engine.extend_setting``), so the
    sensor finds a connection's server side on the same ports the rules call expected."""
    if dicom_ports is not None:
        return frozenset(int(p) for p in dicom_ports)
    values = getattr(engine, "setting_values", None)
    if callable(values):
        return frozenset(int(p) for p in values("dicom_ports"))
    return frozenset(int(p) for p in (getattr(_settings_of(engine), "dicom_ports", None) or ()))


def _vlan_tracking(engine: Any, vlan_tracking: bool | None) -> bool:
    """``vlan_tracking`` if given, else the ``ids.vlan_tracking`` setting (default true)."""
    if vlan_tracking is not None:
        return vlan_tracking
    return bool(getattr(_settings_of(engine), "vlan_tracking", True))


def read(
    path: str | os.PathLike[str] | bytes,
    *,
    engine: Engine,
    publish: Callable[[Event], None],
    dicom_ports: Iterable[int] | None = None,
    clock: CaptureClock | None = None,
    max_flows: int = DEFAULT_MAX_FLOWS,
    idle_timeout_s: float = 300.0,
    max_buffer_per_flow: int = 1 << 20,
    max_buffer_total: int = 64 << 20,
    log_associations: bool = True,
    progress: Callable[[int, int | None], None] | None = None,
    sensor_name: str = "passive",
    adapter: DicomAdapter | None = None,
    vlan_tracking: bool | None = None,
    frame_filter: FrameFilter | None = None,
) -> PassiveStats:
    """Run the rules over the pcap/pcapng file ``path`` (``-``: standard input; a pipe, a FIFO or a
    gzip'd capture is streamed in bounded memory, :class:`~pacsguard.ids.capture.CaptureFile`), or
    a capture's bytes; every Event goes to ``publish``.

    ``dicom_ports`` defaults to the engine's ``$dicom_ports`` (settings plus added ports); it also
    tells the capture layer which side is the server of a connection whose handshake is not in the file.
    ``max_flows``, ``idle_timeout_s``, ``max_buffer_per_flow`` and ``max_buffer_total`` are the
    capture layer's bounds (:func:`~pacsguard.ids.capture.read_capture`); a hole in a stream is
    reported (and the sensor resynchronises) once that much data waits behind it, or at close.
    ``progress(done_bytes, total_bytes)`` is called every :data:`PROGRESS_FRAMES` frames and at
    the end (of the compressed file for a gzip'd one; total ``None`` for a pipe or FIFO).
    ``adapter`` replaces the sensor's ``DicomAdapter(engine)`` (a test double).
    ``vlan_tracking`` (default: ``engine.settings.vlan_tracking``, true when unset): a frame's VLAN
    ids are part of its connection; False joins the two directions of a connection that only one
    direction's frames carry a tag for (a SPAN port or trunk tagging one way).
    Raises :class:`~pacsguard.ids.capture.CaptureError` if ``path`` is not a capture.
    """
    ports = _ports(engine, dicom_ports)
    sensor = PassiveSensor(
        engine, publish, dicom_ports=ports, clock=clock, sensor=sensor_name, log_associations=log_associations,
        adapter=adapter,
    )
    reasm = TCPReassembler(
        sensor,
        max_flows=max_flows,
        idle_timeout_s=idle_timeout_s,
        max_buffer_per_flow=max_buffer_per_flow,
        max_buffer_total=max_buffer_total,
        server_ports=ports,
        vlan_tracking=_vlan_tracking(engine, vlan_tracking),
    )
    handlers: dict[int, FrameHandler] = {}

    def handler_for(linktype: int) -> FrameHandler:
        h = handlers.get(linktype)
        if h is None:
            h = handlers[linktype] = make_frame_handler(reasm, linktype)
        return h

    t0 = time.perf_counter()
    with CaptureFile(path, reasm.stats, frame_filter=frame_filter) as cf:
        step = PROGRESS_FRAMES if progress is not None else -1
        while not cf.done:
            n = cf.run(handler_for, step, reasm.tick)
            if progress is not None:
                progress(*cf.progress())
            if n == 0 and not cf.done:
                break  # nothing consumed: never spin
        reasm.tick(cf.last_ts)
        reasm.finish()
        sensor.flush()
        name, size = cf.name, cf.size  # at the end: a stream's size is known only now
        done, total = cf.progress()
    seconds = time.perf_counter() - t0
    if progress is not None:
        progress(total or done, total or done)
    return PassiveStats(name, reasm.stats, sensor.stats, seconds, size)


def live(
    interface: str,
    bpf: str | None = None,
    *,
    engine: Engine,
    publish: Callable[[Event], None],
    stop_event: Any,
    ready: Callable[[], None] | None = None,
    dicom_ports: Iterable[int] | None = None,
    clock: CaptureClock | None = None,
    max_flows: int = DEFAULT_MAX_FLOWS,
    idle_timeout_s: float = 300.0,
    promisc: bool = True,
    log_associations: bool = True,
    sensor_name: str = "passive",
    adapter: DicomAdapter | None = None,
    vlan_tracking: bool | None = None,
) -> PassiveStats:
    """Run the rules over ``interface`` (Linux, CAP_NET_RAW) until ``stop_event.is_set()``.

    ``bpf`` is a pcap-filter(7) expression applied in the kernel (e.g. ``"tcp"``).  Raises
    :class:`~pacsguard.ids.capture.CaptureError` for an unknown interface, a bad filter or
    missing privileges.  Connections still open at the stop are closed and logged.
    ``vlan_tracking`` as for :func:`read`.
    """
    ports = _ports(engine, dicom_ports)
    sensor = PassiveSensor(
        engine, publish, dicom_ports=ports, clock=clock, sensor=sensor_name, log_associations=log_associations,
        adapter=adapter,
    )
    t0 = time.perf_counter()
    stats = live_capture(
        interface,
        sensor,
        bpf,
        stop_event,
        max_flows=max_flows,
        idle_timeout_s=idle_timeout_s,
        server_ports=ports,
        promisc=promisc,
        ready=ready,
        vlan_tracking=_vlan_tracking(engine, vlan_tracking),
    )
    sensor.flush()
    return PassiveStats(interface, stats, sensor.stats, time.perf_counter() - t0, stats.bytes)


def build_engine(
    rules_dirs: Iterable[str | os.PathLike[str]] = (),
    settings: IdsSettings | None = None,
    *,
    builtin: bool = True,
    clock: CaptureClock | None = None,
) -> Engine:
    """An engine with the built-in rules (unless ``builtin`` or ``settings.builtin_rules`` is
    False) plus the rule files of ``settings.rules_dirs`` and ``rules_dirs``, whose clock is
    ``clock`` (capture time).  Raises the engine's ``RuleError`` for a bad rule."""
    from pacsguard.ids.defaults import IdsDefaults
    from pacsguard.ids.engine import Engine
    from pacsguard.ids.rules import load_rules

    # Without a configuration, the plain defaults: no pydantic on `ids read`'s path (ids/defaults.py).
    current = settings if settings is not None else IdsDefaults()
    dirs = [Path(d) for d in current.rules_dirs] + [Path(d) for d in rules_dirs]
    rules = load_rules(dirs, builtin=builtin and current.builtin_rules)
    kwargs: dict[str, Any] = {}
    if clock is not None:
        kwargs["clock"] = clock
    return Engine(rules, current, **kwargs)
