"""After round 7: a file that cannot be held in memory ended the scan in its actions. The scan
itself reported such a file not scanned (scan.not-scanned) and went on; then --quarantine moved
it, reading it whole to hash it (quarantine.py), and --sanitize read it whole to clean it: the
MemoryError ended the command ("internal error", exit 70, no report for any file).

The quarantine now hashes the file in pieces (it is moved whatever its size) and a MemoryError
while cleaning is the file's sanitize.failed note; the other files are scanned, moved and
cleaned. The address space limit is set in a child process as in test_r7_memory."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

from scan_samples import base, ct, encode, mz_header, pe_header, pe_in_preamble

CHILD = r"""
import resource, sys
import pacsguard.cli.main as cli
import pacsguard.cli.scan, pacsguard.scan.scanner, pacsguard.scan.quarantine, pacsguard.scan.sanitize
from pacsguard.scan.config import ScanSettings
from pacsguard.scan.scanner import Scanner
Scanner.from_settings(ScanSettings())  # yara and its rules loaded before the limit is measured
used = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
margin = int(sys.argv[1]) * 1024 * 1024
resource.setrlimit(resource.RLIMIT_AS, (used + margin, used + margin))
sys.argv = ["pacsguard", "scan", "--format", "json", *sys.argv[2:]]
cli.main()
"""


def run_scan(margin_mib: int, *args: str) -> tuple[int, dict[str, dict[str, object]], str]:
    done = subprocess.run([sys.executable, "-c", CHILD, str(margin_mib), *args], capture_output=True, text=True,
                          timeout=300)
    assert done.stdout, (done.returncode, done.stderr[-2000:])
    files = {Path(f["path"]).name: f for f in json.loads(done.stdout)["files"]}
    return done.returncode, files, done.stderr


def big_pe(mib: int) -> bytes:
    """The CT with a PE header in its preamble (preamble.pe: quarantined, or cleaned by zeroing
    the preamble) and a private OB value of ``mib`` MiB of zeros: one copy fits in the memory
    left, the copies cleaning or an unchunked move make do not."""
    ds = base()
    ds.private_block(0x0009, "PACSGUARD TEST", create=True).add_new(0x01, "OB", bytes(mib * 1024 * 1024))
    pre = bytearray(mz_header(0x40))
    pre[0x40:0x40 + 24] = pe_header()
    return encode(ds, bytes(pre))


def rules(report: dict[str, object]) -> set[str]:
    return {str(f["rule"]) for f in report["findings"]}  # type: ignore[attr-defined]


def export_zip(folder: Path) -> Path:
    """A stored zip of 80 MiB: a PE/DICOM polyglot member (quarantined: the zip is moved) and
    eight members of 10 MiB of zeros. The walk holds the zip while its members are scanned and
    while it is moved; reading it whole again to hash it held it twice."""
    path = folder / "A-export.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("EVIL.DCM", pe_in_preamble())
        for k in range(8):
            archive.writestr(f"PAD{k}", bytes(10 * 1024 * 1024))
    return path


def test_quarantine_moves_an_archive_it_could_not_hold_twice_and_the_scan_goes_on(tmp_path: Path) -> None:
    media, jail = tmp_path / "media", tmp_path / "jail"
    media.mkdir()
    size = export_zip(media).stat().st_size
    (media / "B-evil").write_bytes(pe_in_preamble())
    (media / "C-IM1").write_bytes(ct())
    code, files, stderr = run_scan(128, "--quarantine", str(jail), str(media))
    assert code == 1, stderr[-2000:]
    assert {"A-export.zip", "B-evil", "C-IM1"} <= set(files)
    assert "quarantine.failed" not in rules(files["A-export.zip"]), files["A-export.zip"]
    assert not (media / "A-export.zip").exists() and not (media / "B-evil").exists()
    manifests = [json.loads(p.read_text()) for p in jail.glob("*.json")]
    assert sorted(m["size"] for m in manifests) == [len(pe_in_preamble()), size]
    assert (media / "C-IM1").exists()


def test_an_archive_member_that_does_not_fit_in_memory_is_noted_and_the_scan_goes_on(tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    export_zip(media)
    (media / "C-IM1").write_bytes(ct())
    code, files, stderr = run_scan(108, str(media))
    assert code == 1, stderr[-2000:]
    own = files["A-export.zip"]
    unread = [f for f in own["findings"] if f["rule"] == "archive.member-unreadable"]  # type: ignore[attr-defined]
    assert unread and all("out of memory" in f["explanation"] for f in unread), own
    assert not files["C-IM1"].get("skipped") and "scan.not-scanned" not in rules(files["C-IM1"])


def test_sanitize_of_a_file_too_large_for_memory_is_that_file_s_failure(tmp_path: Path) -> None:
    media, out = tmp_path / "media", tmp_path / "out"
    media.mkdir()
    (media / "A-big").write_bytes(big_pe(48))
    (media / "B-evil").write_bytes(pe_in_preamble())
    code, files, stderr = run_scan(128, "--sanitize", "--out", str(out), str(media))
    assert code == 1, stderr[-2000:]
    assert "sanitize.failed" in rules(files["A-big"]), files["A-big"]
    assert "A-big: cleaned copy not written: out of memory while cleaning it" in stderr
    assert "sanitize.written" in rules(files["B-evil"]), files["B-evil"]
    assert (out / "media" / "B-evil").exists() and not (out / "media" / "A-big").exists()
