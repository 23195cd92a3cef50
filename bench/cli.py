"""CLI start-up: whole-process wall time of `pacsguard` commands against `python -c "import typer"`,
and `pacsguard ids read` against `tshark -r` with the DICOM dissector on the same ~200 KB capture.

    .venv/bin/python bench/cli.py [--runs 15] [--capture FILE --port 11112]

Without --capture (and as root) the capture is made with bench/capture.py's capture_storescu().
Prints the medians, the spread (min-max) and whether each target of docs/PERFORMANCE.md holds, and
`pacsguard ids read --store` into an SQLite store (made by the warm-up run) for reference.

The commands run with Python's bytecode cache allowed (PYTHONDONTWRITEBYTECODE removed from their
environment): an installed pacsguard has its modules compiled, and the warm-up run writes the cache
for an editable one, so no timed run compiles source.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE.parent / ".venv" / "bin"
PACSGUARD = str(VENV / "pacsguard")
PYTHON = str(VENV / "python")
TSHARK = "/usr/bin/tshark"
GROUPS = ("init", "serve", "config", "events", "audit", "store", "tls", "gateway", "ids", "scan", "deid", "atna",
          "witness")


ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}, "COLUMNS": "120"}


def timed(cmd: list[str], runs: int) -> list[float]:
    """Wall seconds of ``runs`` whole-process runs (after one untimed warm-up)."""
    subprocess.run(cmd, capture_output=True, env=ENV)
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, env=ENV)
        out.append(time.perf_counter() - start)
    return out


def make_capture(folder: Path, port: int) -> Path:
    sys.path.insert(0, str(HERE))
    from pydicom.data import get_testdata_file

    from capture import capture_storescu  # bench/capture.py

    ct = Path(str(get_testdata_file("CT_small.dcm")))
    cap = folder / "cli-bench.pcapng"
    capture_storescu(cap, port, [], [ct] * 5, 1, 5, None)
    return cap


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15, help="timed runs per command (median reported; at least 15)")
    ap.add_argument("--capture", type=Path, help="a ~200 KB DICOM capture (default: make one, needs root)")
    ap.add_argument("--port", type=int, default=11112, help="the DICOM port in the capture")
    args = ap.parse_args()
    runs = max(15, args.runs)
    work = Path(tempfile.mkdtemp(prefix="pacsguard-bench-cli-"))
    try:
        capture = args.capture or make_capture(work, args.port)
        typer_times = timed([PYTHON, "-c", "import typer"], runs)
        rows: list[tuple[str, list[float]]] = [("python -c 'import typer'", typer_times)]
        rows.append(("pacsguard --version", timed([PACSGUARD, "--version"], runs)))
        rows.append(("pacsguard --help", timed([PACSGUARD, "--help"], runs)))
        for group in GROUPS:
            rows.append((f"pacsguard {group} --help", timed([PACSGUARD, group, "--help"], runs)))
        tshark = timed([TSHARK, "-r", str(capture), "-d", f"tcp.port=={args.port},dicom", "-Y", "dicom"], runs)
        read = timed([PACSGUARD, "ids", "read", str(capture)], runs)
        stored = timed([PACSGUARD, "ids", "read", "--store", str(work / "store.db"), str(capture)], runs)
        size = capture.stat().st_size
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(rows[0][1])
    print(f"{time.strftime('%Y-%m-%d %H:%M')}  load average {os.getloadavg()[0]:.2f}  runs {runs}  "
          f"capture {size / 1000:.0f} kB")
    print(f"{'command':<32} {'median s':>9} {'min-max s':>13} {'ratio':>6}  target")
    for name, times in rows:
        med = statistics.median(times)
        target = "" if name.startswith("python") else ("met" if med <= 2 * base else "MISSED") + " (<= 2x typer)"
        print(f"{name:<32} {med:>9.3f} {min(times):>6.3f}-{max(times):<6.3f} {med / base:>6.2f}  {target}")
    t_med, r_med = statistics.median(tshark), statistics.median(read)
    print(f"{'tshark -r (DICOM dissector)':<32} {t_med:>9.3f} {min(tshark):>6.3f}-{max(tshark):<6.3f} {1:>6.2f}")
    print(f"{'pacsguard ids read':<32} {r_med:>9.3f} {min(read):>6.3f}-{max(read):<6.3f} {r_med / t_med:>6.2f}  "
          + ("met" if r_med <= t_med else "MISSED") + " (<= tshark)")
    s_med = statistics.median(stored)
    print(f"{'pacsguard ids read --store':<32} {s_med:>9.3f} {min(stored):>6.3f}-{max(stored):<6.3f} "
          f"{s_med / t_med:>6.2f}  (SQLite store; no target)")


if __name__ == "__main__":
    main()
