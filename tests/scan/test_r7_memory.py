"""Outside round 7: the scanner where memory is not overcommitted (vm.overcommit_memory=2 on a
hardened server, a `ulimit -v` in a service unit).

Every file was read with FileIO.read(2 GiB + 1), the limits.max_file_size bound, and FileIO
reserves what it is asked for before it reads: under an address space limit even a 40 KB CT
failed with MemoryError, which ended the whole scan ("internal error", exit 70, no report). A
file is now read by its size, and a file that does not fit in the memory left is reported not
scanned (scan.not-scanned, medium) while the scan goes on.

The limit is set with setrlimit(RLIMIT_AS) in a child process, a margin above what it already
uses once its rules are compiled, so the test does not depend on the machine's memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from scan_samples import ct

CHILD = r"""
import json, resource, sys
from pathlib import Path
from pacsguard.scan.config import ScanSettings
from pacsguard.scan.run import scan_all
from pacsguard.scan.scanner import Scanner
from pacsguard.scan.walk import ArchiveLimits, walk

scanner = Scanner.from_settings(ScanSettings())
limits = ArchiveLimits(100, 4 * 1024**3, 4, 100_000, 2 * 1024**3)
used = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
margin = int(sys.argv[2]) * 1024 * 1024
resource.setrlimit(resource.RLIMIT_AS, (used + margin, used + margin))
out = []
for report in scan_all(walk([Path(sys.argv[1])], limits, []), scanner):
    out.append({"path": report.path, "skipped": report.skipped, "rules": sorted({f.rule for f in report.findings})})
print(json.dumps(out))
"""


def run_child(folder: Path, margin_mib: int) -> list[dict[str, object]]:
    done = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(margin_mib)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    reports: list[dict[str, object]] = json.loads(done.stdout)
    return reports


def test_files_are_read_within_an_address_space_limit(tmp_path: Path) -> None:
    (tmp_path / "IM1").write_bytes(ct())
    (tmp_path / "IM2").write_bytes(ct())
    reports = run_child(tmp_path, 192)
    assert [(Path(str(r["path"])).name, r["skipped"]) for r in reports] == [("IM1", ""), ("IM2", "")]
    assert all("scan.not-scanned" not in r["rules"] for r in reports)  # type: ignore[operator]


def test_a_file_larger_than_the_memory_left_is_not_scanned_and_the_scan_goes_on(tmp_path: Path) -> None:
    with open(tmp_path / "A-huge", "wb") as f:
        f.truncate(320 * 1024 * 1024)  # sparse: no disk, but 320 MiB to hold once read
    (tmp_path / "B-IM1").write_bytes(ct())
    reports = {Path(str(r["path"])).name: r for r in run_child(tmp_path, 192)}
    assert reports["A-huge"]["skipped"] == "out of memory while scanning it"
    assert reports["A-huge"]["rules"] == ["scan.not-scanned"]
    assert reports["B-IM1"]["skipped"] == "" and "scan.not-scanned" not in reports["B-IM1"]["rules"]  # type: ignore[operator]
