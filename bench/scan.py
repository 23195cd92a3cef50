"""Benchmark `pacsguard scan` against Debian's `yara` CLI with the same built-in rules, and `cat`
as the I/O floor, over the same corpus from page cache (issue #19).

Usage:

    .venv/bin/python bench/scan.py --large-mb 512 --small 2000

The corpus, built in a temporary folder: one large uncompressed multi-frame CT (pydicom's
CT_small.dcm, its 128x128 16-bit frame tiled to 512x512 and repeated to ``--large-mb``), and
``--small`` small objects (CT_small.dcm with fresh UIDs, ~39 KB each). Every file is read once
first so that every tool reads from page cache. Then, in the same run, for each corpus part:

  (a) ``pacsguard scan --format json DIR`` - the real command, one process, one core
      (``--jobs 1``), every rule family and the built-in YARA rules on; wall time, start-up
      included (with compiled bytecode, as an installed pacsguard has it: compiled_env), and the
      same scan in this process without start-up;
  (b) ``yara -p 1 -w -r RULES DIR`` - Debian's yara with pacsguard's built-in rules
      (src/pacsguard/scan/yara/*.yar), one thread;
  (c) ``cat FILES > /dev/null`` - reading the bytes and nothing else.

Figures are MB/s (10^6 bytes of files per second of wall time) and files/s, with ratios to
yara and to cat. Measured on a shared machine they are noisy: re-measure on a quiet one before
quoting them (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

YARA = "/usr/bin/yara"


def build_large(folder: Path, megabytes: int) -> Path:
    """One uncompressed multi-frame CT of about ``megabytes`` MB."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    tile = ds.PixelData  # 128 x 128 x 16 bits
    row_tiles = [tile[r * 256:(r + 1) * 256] * 4 for r in range(128)]
    frame = b"".join(row_tiles) * 4  # 512 x 512
    frames = max(1, megabytes * 1_000_000 // len(frame))
    ds.Rows = ds.Columns = 512
    ds.NumberOfFrames = frames
    ds.PixelData = frame * frames
    ds.SOPInstanceUID = generate_uid()
    path = folder / "large" / "ct-multiframe.dcm"
    path.parent.mkdir(parents=True)
    ds.save_as(path, enforce_file_format=True)
    return path.parent


def build_small(folder: Path, count: int) -> Path:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    out = folder / "small"
    out.mkdir()
    for i in range(count):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(out / f"ct{i:05d}.dcm", enforce_file_format=True)
    return out


def files_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def timed(argv: list[str], *, stdout: int | None = subprocess.DEVNULL, env: dict[str, str] | None = None,
          ) -> tuple[float, float, subprocess.CompletedProcess[bytes]]:
    """Wall seconds, CPU seconds (user + system of the child) and the finished process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(argv, stdout=stdout, stderr=subprocess.PIPE, check=False, env=env)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), proc


def compiled_env(cache: Path) -> dict[str, str]:
    """The environment of the `pacsguard` runs: Python's bytecode written to and read from a cache
    of this run (PYTHONPYCACHEPREFIX), as an installed wheel has it (pip compiles on install). A
    machine with PYTHONDONTWRITEBYTECODE set (this one) otherwise compiles every pacsguard module
    from source at each start: ~0.1-0.2 s that no installed pacsguard pays. `start_up` prints both."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(cache)
    return env


def start_up(folder: Path, env: dict[str, str], repeat: int) -> dict[str, object]:
    """`pacsguard scan` of one small file, best of ``repeat``: with the bytecode cache (warmed by a
    first run) and as this machine's environment has it."""
    one = str(files_of(folder)[0])
    argv = [*pacsguard_argv(), "scan", "--format", "json", "--fail-on", "critical", one]
    timed(argv, env=env)  # writes the cache
    return {"start_up": {"compiled_s": round(min(timed(argv, env=env)[0] for _ in range(repeat)), 3),
                         "as_this_machine_s": round(min(timed(argv)[0] for _ in range(repeat)), 3)}}


def pacsguard_argv() -> list[str]:
    exe = Path(sys.executable).with_name("pacsguard")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "pacsguard.cli"]


def in_process(folder: Path) -> tuple[float, float]:
    """The scan without process start-up (wall and CPU seconds): the Scanner over every file, rules
    compiled first."""
    from pacsguard.scan.scanner import Scanner
    from pacsguard.scan.yara_engine import YaraEngine

    scanner = Scanner(yara=YaraEngine.compile())
    started, cpu = time.perf_counter(), time.process_time()
    for path in files_of(folder):
        scanner.scan_file(path)
    return time.perf_counter() - started, time.process_time() - cpu


def measure(name: str, folder: Path, repeat: int, env: dict[str, str]) -> dict[str, object]:
    from pacsguard.scan.yara_engine import builtin_rule_files

    files = files_of(folder)
    size = sum(p.stat().st_size for p in files)
    subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)  # into page cache
    rules = [str(p) for p in builtin_rule_files()]
    best: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for _ in range(repeat):
        runs = {
            "pacsguard": timed([*pacsguard_argv(), "scan", "--format", "json", "--jobs", "1", "--fail-on", "critical",
                                str(folder)], stdout=subprocess.PIPE, env=env),
            "yara": timed([YARA, "-p", "1", "-w", "-r", *rules, str(folder)]),
            "cat": timed(["cat", *map(str, files)]),
        }
        for tool, (seconds, cpu_seconds, proc) in runs.items():
            if proc.returncode not in (0, 1):
                raise SystemExit(f"{tool} failed: {proc.stderr.decode(errors='replace')[-2000:]}")
            best[tool] = min(best.get(tool, seconds), seconds)
            cpu[tool] = min(cpu.get(tool, cpu_seconds), cpu_seconds)
        wall, cpu_seconds = in_process(folder)
        best["pacsguard_in_process"] = min(best.get("pacsguard_in_process", wall), wall)
        cpu["pacsguard_in_process"] = min(cpu.get("pacsguard_in_process", cpu_seconds), cpu_seconds)
    mb = size / 1e6
    out: dict[str, object] = {"corpus": name, "files": len(files), "mb": round(mb, 1)}
    for tool, seconds in best.items():
        # CPU time is what one core spends; on a shared machine wall time also counts waiting.
        out[tool] = {"seconds": round(seconds, 3), "mb_per_s": round(mb / seconds, 1),
                     "files_per_s": round(len(files) / seconds, 1), "cpu_seconds": round(cpu[tool], 3),
                     "mb_per_cpu_s": round(mb / max(cpu[tool], 1e-6), 1)}
    out["pacsguard_vs_yara"] = round(best["yara"] / best["pacsguard"], 2)
    out["pacsguard_vs_cat"] = round(best["cat"] / best["pacsguard"], 3)
    out["in_process_vs_yara"] = round(best["yara"] / best["pacsguard_in_process"], 2)
    out["cpu_in_process_vs_yara"] = round(cpu["yara"] / max(cpu["pacsguard_in_process"], 1e-6), 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large-mb", type=int, default=512, help="size of the large CT (MB)")
    parser.add_argument("--small", type=int, default=2000, help="number of small objects")
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool; the best is kept")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory(prefix="pacsguard-bench-scan-") as tmp:
        root = Path(tmp)
        corpora = {"large CT": build_large(root, args.large_mb), "small objects": build_small(root, args.small)}
        env = compiled_env(root / "pycache")
        print(json.dumps(start_up(corpora["small objects"], env, args.repeat)), flush=True)
        for name, folder in corpora.items():
            print(json.dumps(measure(name, folder, args.repeat, env)), flush=True)


if __name__ == "__main__":
    main()
