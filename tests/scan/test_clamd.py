"""ClamAV as the optional second engine, through a real clamd (Debian's clamav-daemon) started in
the test with a signature file the test writes: MD5 hashes (.hdb) of two of Debian's
clamav-testfiles and of a hostile DICOM sample. No signature database is downloaded."""

from __future__ import annotations

import hashlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scan_samples import pe_in_preamble, stop_process
from typer.testing import CliRunner

from pacsguard.cli import main
from pacsguard.scan.clamd import Clamd
from pacsguard.scan.model import Level
from pacsguard.scan.scanner import Scanner

CLAMD = Path("/usr/sbin/clamd")
TESTFILES = Path("/usr/share/clamav-testfiles")


def hdb_line(data: bytes, name: str) -> str:
    return f"{hashlib.md5(data, usedforsecurity=False).hexdigest()}:{len(data)}:{name}\n"


@pytest.fixture(scope="module")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clamd]:
    assert CLAMD.exists(), "install Debian's clamav-daemon package: apt-get install clamav-daemon"
    assert (TESTFILES / "clam.exe").exists(), "install Debian's clamav-testfiles package"
    tmp = tmp_path_factory.mktemp("clamd")
    db = tmp / "db"
    db.mkdir()
    (db / "pacsguard-test.hdb").write_text(
        hdb_line((TESTFILES / "clam.exe").read_bytes(), "PacsguardTest.ClamExe")
        + hdb_line((TESTFILES / "clam.zip").read_bytes(), "PacsguardTest.ClamZip")
        + hdb_line(pe_in_preamble(), "PacsguardTest.PeDicom"))
    sock = tmp / "clamd.sock"
    conf = tmp / "clamd.conf"
    conf.write_text(f"LocalSocket {sock}\nDatabaseDirectory {db}\nForeground yes\nLogFile {tmp / 'clamd.log'}\n"
                    f"PidFile {tmp / 'clamd.pid'}\nTemporaryDirectory {tmp}\nMaxThreads 2\n")
    proc = subprocess.Popen([str(CLAMD), "--config-file", str(conf)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    client = Clamd(str(sock), timeout=30)
    try:
        deadline = time.monotonic() + 120
        while not client.ping():
            assert proc.poll() is None, (proc.stdout.read() if proc.stdout else b"").decode()
            assert time.monotonic() < deadline, "clamd did not answer PING within 120 s"
            time.sleep(0.2)
        yield client
    finally:
        stop_process(proc)


def test_instream_finds_the_signatures_it_was_given(clamd: Clamd) -> None:
    assert clamd.instream((TESTFILES / "clam.exe").read_bytes()) == "PacsguardTest.ClamExe.UNOFFICIAL"
    assert clamd.instream(b"nothing to see" * 1000) is None


def test_the_scanner_reports_clamav_findings(clamd: Clamd, tmp_path: Path) -> None:
    report = Scanner(clamd=clamd).scan_bytes(pe_in_preamble(), "pe.dcm")
    found = [f for f in report.findings if f.rule == "clamav.found"]
    assert found and found[0].level == Level.HIGH and "PacsguardTest.PeDicom" in found[0].explanation


def test_the_command_uses_clamd_and_says_when_it_is_gone(clamd: Clamd, tmp_path: Path) -> None:
    sample = tmp_path / "clam.exe"
    sample.write_bytes((TESTFILES / "clam.exe").read_bytes())
    result = CliRunner().invoke(main.app, ["scan", "--format", "json", "--clamd", clamd.address, str(sample)])
    assert result.exit_code == 1 and "PacsguardTest.ClamExe" in result.output
    gone = Scanner(clamd=Clamd(str(tmp_path / "no.sock"), timeout=2)).scan_bytes(b"x" * 64, "x")
    assert [(f.rule, f.level) for f in gone.findings if f.rule.startswith("clamav")] == [("clamav.error", Level.LOW)]
