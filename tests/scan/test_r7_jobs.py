"""Outside round 7: `--jobs N` when a worker process ends in the middle of a scan (the system's
OOM killer on a large multi-frame image, a signal, a crash in native code).

The pool was broken from then on and the scan ended with "internal error: BrokenProcessPool"
(exit 70) and no report at all: every finding of the files already scanned lost, nothing
quarantined. Now the items in flight are scanned again, each alone, and the scan goes on with a
new pool: every file has its report, the same as with one process."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

from scan_samples import ct, pe_in_preamble, rules

from pacsguard.scan.config import ScanSettings
from pacsguard.scan.run import scan_all
from pacsguard.scan.scanner import Scanner
from pacsguard.scan.walk import ArchiveLimits, walk


def media(tmp_path: Path) -> Path:
    folder = tmp_path / "usb"
    folder.mkdir()
    for n in range(40):
        (folder / f"IM{n:04d}").write_bytes(pe_in_preamble() if n % 7 == 3 else ct())
    return folder


def test_a_worker_killed_mid_scan_loses_no_report(tmp_path: Path) -> None:
    folder = media(tmp_path)
    settings = ScanSettings()
    scanner = Scanner.from_settings(settings)
    limits = ArchiveLimits(100, 4 * 1024**3, 4, 100_000, 2 * 1024**3)
    alone = {r.path: rules(r) for r in scan_all(walk([folder], limits, []), scanner)}

    reports = []
    killed: list[int] = []
    for report in scan_all(walk([folder], limits, []), scanner, jobs=2, settings=settings):
        reports.append(report)
        if not killed:  # the first result is in: the other items are in flight or still to come
            for child in multiprocessing.active_children():
                if child.pid is not None:
                    os.kill(child.pid, signal.SIGKILL)
                    killed.append(child.pid)
    assert killed, "the pool had no worker to kill"
    assert [r.path for r in reports] == list(alone), "every file has its report, in the walk's order"
    assert not [r.path for r in reports if r.skipped]
    assert {r.path: rules(r) for r in reports} == alone  # the same findings as one process gives
    assert sum(1 for found in alone.values() if "preamble.pe" in found) == 6


def test_a_parallel_scan_ends_without_noise(tmp_path: Path) -> None:
    """The pool is shut down and waited for: a pool left to the interpreter's exit wrote a
    traceback ("Exception ignored ... Bad file descriptor") after the report."""
    folder = media(tmp_path)
    command = Path(sys.executable).parent / "pacsguard"  # the installed script, as an administrator runs it
    done = subprocess.run([str(command), "scan", "--jobs", "2", "--format", "json", str(folder)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert done.stderr == ""
    assert '"scanned": 40' in done.stdout
