"""Benchmark the passive IDS (`pacsguard ids read`) against tshark's DICOM dissector.

Usage (as root; Debian's dcmtk, wireshark's dumpcap/tshark, ethtool and tc installed):

    .venv/bin/python bench/ids.py --size-mb 1100

It makes a LAN-like capture as bench/capture.py does (shared BENCHMARKING.md): a network
namespace whose loopback has MTU 1500, TSO/GSO/GRO off and a 1 Gbit/s token-bucket shaper,
``/usr/bin/storescp --ignore`` receiving from ``/usr/bin/storescu`` (both with ``TCP_NODELAY=1``)
objects built from pydicom's CT_small.dcm with fresh UIDs (8 MiB objects, ``--large-per-assoc``
per association, plus small ones, ``--small-per-assoc`` per association), captured by
``dumpcap -i lo`` in the namespace.  Then, in the same run, on the same file, it times:

  (a) ``pacsguard ids read FILE --store TMP/ids.db --format json`` - the real command, as a
      subprocess, with the built-in rules, writing its events to a fresh store (wall time of
      the whole process, start-up included);
  (b) ``tshark -r FILE -d tcp.port==P,dicom -Y dicom`` with its output to /dev/null.

MB/s and Gbit/s are capture-file bytes per second of wall time.  tshark's DICOM dissector grows
faster than linearly with the length of an association (BENCHMARKING.md), so the association
lengths are printed with the figures: compare runs only at equal association lengths.

``--profile`` also runs the same read in this process under cProfile and prints where the time
goes.  ``--capture FILE --port P`` skips making a capture.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from capture import STORESCP, STORESCU, capture_storescu, make_objects

PORT = 11112
READ_HELPER = r"""
import sys, typer
from pacsguard.cli.ids_read import read_command
sys.argv = ["ids-read", *sys.argv[1:]]
typer.run(read_command)
"""


def ids_read_command() -> tuple[list[str], str]:
    """``pacsguard ids read`` when the CLI registers it; else the same typer command function
    (``pacsguard.cli.ids_read.read_command``) in a two-line wrapper."""
    exe = Path(sys.executable).with_name("pacsguard")
    if exe.exists():
        r = subprocess.run([str(exe), "ids", "read", "--help"], capture_output=True, text=True)
        if r.returncode == 0:
            return [str(exe), "ids", "read"], "pacsguard ids read"
    return [sys.executable, "-c", READ_HELPER], "read_command via python -c (pacsguard.cli.ids not registered yet)"


def make_capture(work: Path, size_mb: int, large_per_assoc: int, n_small: int, small_per_assoc: int,
                 rate: str | None) -> tuple[Path, list[str]]:
    n_large = max(1, round((size_mb / 1.06 - n_small * 0.04) / 8.39))
    objdir = work / "objects"
    objdir.mkdir()
    t0 = time.perf_counter()
    large, small = make_objects(objdir, n_large, n_small)
    print(f"built {len(large)} x 8 MiB + {len(small)} small objects in {time.perf_counter() - t0:.1f} s", flush=True)
    cap = work / "ids-bench.pcapng"
    assocs = capture_storescu(cap, PORT, large, small, large_per_assoc, small_per_assoc, rate)
    shutil.rmtree(objdir)
    return cap, assocs


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def frame_stats(path: Path) -> tuple[int, int, int, int]:
    """Frames, frame bytes, largest frame, frames of exactly 1514 bytes (full Ethernet MTU)."""
    from pacsguard.ids.capture import iter_frames

    n = total = largest = full = 0
    for _ts, _lt, frame in iter_frames(path):
        ln = len(frame)
        n += 1
        total += ln
        largest = max(largest, ln)
        if ln == 1514:
            full += 1
    return n, total, largest, full


def summarise_assocs(assocs: list[str]) -> str:
    counts: dict[str, int] = {}
    for a in assocs:
        counts[a] = counts.get(a, 0) + 1
    return "; ".join(f"{n} x [{a}]" for a, n in counts.items())


def time_ids_read(cap: Path, work: Path) -> tuple[float, float, dict, list[str]]:
    base, how = ids_read_command()
    store = work / "ids.db"
    if store.exists():
        store.unlink()
    cmd = [*base, str(cap), "--store", str(store), "--format", "json"]
    c0 = children_cpu()
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    t = time.perf_counter() - t0
    cpu = children_cpu() - c0
    if r.returncode not in (0, 1):
        raise SystemExit(f"ids read exited {r.returncode}: {r.stderr[-2000:]}")
    summary = json.loads(r.stdout.strip().splitlines()[-1])["summary"]
    if base[0].endswith("pacsguard"):
        shown = " ".join(cmd)
    else:
        shown = " ".join([sys.executable, "-c '<read_command wrapper>'", *cmd[3:]])
    return t, cpu, summary, [how, shown]


def time_tshark(cap: Path) -> tuple[float, float, str]:
    cmd = ["tshark", "-r", str(cap), "-d", f"tcp.port=={PORT},dicom", "-Y", "dicom"]
    c0 = children_cpu()
    t0 = time.perf_counter()
    with open(os.devnull, "w") as devnull:
        r = subprocess.run(cmd, stdout=devnull, stderr=subprocess.PIPE, text=True)
    t = time.perf_counter() - t0
    cpu = children_cpu() - c0
    if r.returncode != 0:
        print(f"tshark exit {r.returncode}: {r.stderr.strip()[-300:]}")
    return t, cpu, " ".join(cmd) + " > /dev/null"


def profile_read(cap: Path, top: int = 25) -> None:
    from pacsguard.events import Event
    from pacsguard.ids.passive import build_engine, read
    from pacsguard.ids.sensor import CaptureClock

    clock = CaptureClock()
    engine = build_engine(clock=clock)
    out: list[Event] = []
    prof = cProfile.Profile()
    prof.enable()
    stats = read(cap, engine=engine, publish=out.append, clock=clock)
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(top)
    print(f"\nprofile of read() in-process ({stats.seconds:.2f} s under cProfile), by own time:")
    print(s.getvalue())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1100, help="approximate capture size (default 1100)")
    ap.add_argument("--large-per-assoc", type=int, default=4, help="8 MiB objects per association (default 4)")
    ap.add_argument("--small", type=int, default=300, help="small (CT_small, 39 kB) objects (default 300)")
    ap.add_argument("--small-per-assoc", type=int, default=100, help="small objects per association (default 100)")
    ap.add_argument("--rate", default="1gbit", help="tc tbf rate on the namespace's lo ('none': unshaped)")
    ap.add_argument("--capture", type=Path, help="use this capture instead of making one")
    ap.add_argument("--port", type=int, default=PORT, help="DICOM port of --capture")
    ap.add_argument("--keep", type=Path, help="copy the capture here")
    ap.add_argument("--no-tshark", action="store_true")
    ap.add_argument("--profile", action="store_true", help="also profile the read in-process")
    args = ap.parse_args()
    if args.capture is None:
        missing = [t for t in (STORESCU, STORESCP, "/usr/bin/dumpcap", "/usr/sbin/ethtool") if not os.path.exists(t)]
        if missing:
            print(f"missing {missing}", file=sys.stderr)
            return 2
        if os.geteuid() != 0:
            print("needs root (network namespace)", file=sys.stderr)
            return 2
    globals()["PORT"] = args.port

    with tempfile.TemporaryDirectory(prefix="pg-ids-bench-") as tmp:
        work = Path(tmp)
        assocs: list[str] = []
        if args.capture is None:
            cap, assocs = make_capture(work, args.size_mb, args.large_per_assoc, args.small, args.small_per_assoc,
                                       None if args.rate == "none" else args.rate)
        else:
            cap = args.capture
        if args.keep:
            shutil.copy(cap, args.keep)
        size = cap.stat().st_size
        frames, frame_bytes, largest, full = frame_stats(cap)
        print(f"\ncapture: {size / 1e6:,.1f} MB, {frames:,} frames, average frame {frame_bytes / frames:,.0f} bytes, "
              f"largest {largest:,}, {full / frames:.0%} of frames at 1514 bytes")
        if assocs:
            print(f"associations ({len(assocs)}): {summarise_assocs(assocs)}")
        print(f"load average before timing: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)

        t_pg, cpu_pg, summary, (how, shown) = time_ids_read(cap, work)
        sen = summary["sensor"]
        print(f"(a) {how}: {t_pg:.2f} s wall, {cpu_pg:.2f} s CPU ({summary['seconds']:.2f} s wall inside read()); "
              f"{sen['associations']} associations, results {sen['results']}, {sen['events_published']} events, "
              f"{sen['alerts']} alerts "
              f"{sen['alerts_by_rule']}, commands {sen['commands']}", flush=True)
        t_ts = cpu_ts = None
        if not args.no_tshark:
            t_ts, cpu_ts, ts_cmd = time_tshark(cap)
            print(f"(b) {t_ts:.2f} s wall, {cpu_ts:.2f} s CPU", flush=True)

        def row(name: str, t: float, cpu: float | None) -> None:
            mbs = size / t / 1e6
            extra = f"   CPU {cpu:7.2f} s = {size * 8 / cpu / 1e9:6.3f} Gbit/s" if cpu else ""
            print(f"  {name:<38} {t:8.2f} s  {mbs:8.1f} MB/s  {mbs * 8 / 1000:6.3f} Gbit/s{extra}")

        print("\nresults (capture-file bytes / wall time; and per CPU second of the process):")
        row("(a) pacsguard ids read (subprocess)", t_pg, cpu_pg)
        row("    the same, read() only", summary["seconds"], None)
        if t_ts is not None:
            row("(b) tshark -d dicom -Y dicom", t_ts, cpu_ts)
            print(f"\nratio: pacsguard is {t_ts / t_pg:.1f}x tshark by wall time, {cpu_ts / cpu_pg:.1f}x by CPU time")
        print("\ncommands:")
        print(f"  (a) {shown}")
        if t_ts is not None:
            print(f"  (b) {ts_cmd}")
        if args.profile:
            profile_read(cap)
    return 0


if __name__ == "__main__":
    sys.exit(main())
