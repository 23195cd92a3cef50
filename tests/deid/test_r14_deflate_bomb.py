"""Outside round 14 (D2): `pacsguard deid` had no bound on how far a deflated data set (PS3.5 A.5)
inflates: 1.5 MB that inflate to 1.5 GiB peaked at 3.7 GB of memory, and 306 KB that inflate to
300 MiB were written. The limit `pacsguard scan` calls structure.deflate-bomb at
(scan.limits.max_inflated) now withholds such a file, named in the reason, measured as a stream
before pydicom inflates anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

INFLATED = 200 * 1024 * 1024  # what the bomb inflates to
LIMIT = 8 * 1024 * 1024  # the configured scan.limits.max_inflated


def _bomb(path: Path) -> None:
    """A Part 10 file whose deflated data set is a few elements then 200 MiB of zeros."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.99.3.9"
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    head = Dataset()
    head.file_meta = meta
    head.preamble = b"\0" * 128
    pydicom.dcmwrite(path, head, enforce_file_format=True)
    written = path.read_bytes()
    # preamble, DICM, (0002,0000) and the group it gives the length of; the empty data set after it goes
    meta_bytes = written[:132 + 12 + int.from_bytes(written[140:144], "little")]
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunk = bytes(1024 * 1024)
    body = b"".join(packer.compress(chunk) for _ in range(INFLATED // len(chunk))) + packer.flush()
    if len(body) % 2:
        body += b"\0"
    path.write_bytes(meta_bytes + body)


# VmHWM, this process's own peak: getrusage's ru_maxrss is kept across fork and exec on Linux, so
# it held the size of the (large, late in a run) pytest worker that started the process.
_MEASURED = """
import re, runpy, sys
sys.argv = ["pacsguard", *sys.argv[2:]]
try:
    runpy.run_module("pacsguard.cli", run_name="__main__")
finally:
    with open("/proc/self/status") as status, open(__import__("os").environ["RSS_FILE"], "w") as f:
        f.write(re.search(r"VmHWM:\\s+([0-9]+) kB", status.read()).group(1))
"""


def test_a_deflate_bomb_is_withheld_at_the_scan_limit_in_bounded_memory(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.dcm"
    _bomb(bomb)
    assert bomb.stat().st_size < 2 * 1024 * 1024
    config = tmp_path / "pacsguard.yaml"
    config.write_text(f"scan:\n  limits:\n    max_inflated: {LIMIT}\n")
    key = tmp_path / "deid.key"
    made = subprocess.run([sys.executable, "-m", "pacsguard.cli", "deid", "keygen", str(key)],
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    rss = tmp_path / "rss"
    run = subprocess.run([sys.executable, "-c", _MEASURED, "-", "deid", str(bomb), "--out", str(tmp_path / "out"),
                          "--key-file", str(key), "-c", str(config)],
                         capture_output=True, text=True, timeout=240,
                         env={**os.environ, "COLUMNS": "300", "RSS_FILE": str(rss)})
    assert run.returncode == 1, run.stderr
    assert f"inflates past {LIMIT:,} bytes" in run.stderr and "scan.limits.max_inflated" in run.stderr
    assert not list((tmp_path / "out").glob("*.dcm"))
    [record] = json.loads((tmp_path / "out.manifest.json").read_text())
    assert record["status"] == "withheld" and "scan.limits.max_inflated" in record["reason"]
    peak_kib = int(rss.read_text())  # Linux: KiB
    assert peak_kib < 180 * 1024, f"peak {peak_kib} KiB: the bomb was inflated"


def test_explain_says_so_too(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.dcm"
    _bomb(bomb)
    config = tmp_path / "pacsguard.yaml"
    config.write_text(f"scan:\n  limits:\n    max_inflated: {LIMIT}\n")
    shown = subprocess.run([sys.executable, "-m", "pacsguard.cli", "deid", "explain", str(bomb), "-c", str(config)],
                           capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "300"})
    assert shown.returncode == 2
    assert f"inflates past {LIMIT:,} bytes" in shown.stderr
