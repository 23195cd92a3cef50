"""After round 7: a clamd that accepts connections and never answers cost every file two socket
timeouts (the stream sent, then the answer awaited: two minutes a file with the 60-second
default), for the whole scan; a clamd that is down cost a refused connection per file, each an
error of its own.

One `pacsguard scan` now stops asking clamd after GIVE_UP_AFTER failures in a row: the failure
that gives up says so, each file after it carries clamav.not-checked (not judged by ClamAV, so
never passed as clean by it), and the scan ends with a warning naming how many files went
without ClamAV. A gateway's long-lived scanner keeps asking (give_up_after 0).

The stalling clamd is a TCP server on this helper's loopback address that accepts and reads
nothing; the timeouts are short through Clamd's own ``timeout``."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scan_samples import ct
from typer.testing import CliRunner

from pacsguard.cli import main
from pacsguard.scan.config import ScanSettings
from pacsguard.scan.model import Level
from pacsguard.scan.scanner import Scanner

HOST = "127.0.69.1"
#: As docs/scan.md says them (pacsguard.scan.clamd.GIVE_UP_AFTER, NOT_CHECKED).
GIVE_UP_AFTER = 3
NOT_CHECKED = "clamav.not-checked"


def test_the_documented_bound_is_the_code_s() -> None:
    from pacsguard.scan import clamd

    assert (clamd.GIVE_UP_AFTER, clamd.NOT_CHECKED) == (GIVE_UP_AFTER, NOT_CHECKED)


@contextmanager
def stalling_clamd() -> Iterator[tuple[str, list[socket.socket]]]:
    """A server that accepts every connection, reads nothing and never answers; its address and
    the connections it took (kept open until the test ends)."""
    server = socket.create_server((HOST, 0))
    server.settimeout(0.2)
    taken: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            taken.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"tcp://{HOST}:{server.getsockname()[1]}", taken
    finally:
        stop.set()
        thread.join(timeout=10)
        server.close()
        for conn in taken:
            conn.close()


def closed_port() -> str:
    """An address on HOST where nothing listens: connections are refused at once."""
    with socket.create_server((HOST, 0)) as probe:
        port = probe.getsockname()[1]
    return f"tcp://{HOST}:{port}"


def one_scan(address: str, timeout: float) -> Scanner:
    """The scanner `pacsguard scan` builds for ``address``, with a short clamd timeout."""
    scanner = Scanner.from_settings(ScanSettings(clamd=address), one_scan=True)
    assert scanner.clamd is not None
    return dataclasses.replace(scanner, clamd=dataclasses.replace(scanner.clamd, timeout=timeout))


def clamav_rules(scanner: Scanner, files: int) -> list[list[tuple[str, Level, str]]]:
    return [[(f.rule, f.level, f.explanation) for f in scanner.scan_bytes(ct(), f"IM{k}").findings
             if f.rule.startswith("clamav")] for k in range(files)]


def test_a_stalling_clamd_is_given_up_after_a_run_of_timeouts() -> None:
    with stalling_clamd() as (address, taken):
        found = clamav_rules(one_scan(address, 0.5), GIVE_UP_AFTER + 3)
        connections = len(taken)
    assert connections == GIVE_UP_AFTER  # no connection once given up
    assert [[(rule, level) for rule, level, _ in per] for per in found] == \
        [[("clamav.error", Level.LOW)]] * GIVE_UP_AFTER + [[(NOT_CHECKED, Level.LOW)]] * 3
    assert "no longer asked" in found[GIVE_UP_AFTER - 1][0][2]
    assert "no longer asked" not in found[0][0][2]
    last = [per[0][2] for per in found[GIVE_UP_AFTER:]]
    assert all("not checked by ClamAV" in text and address in text for text in last)
    assert [text.rsplit("file ", 1)[1] for text in last] == ["1 scanned without it", "2 scanned without it",
                                                             "3 scanned without it"]


def test_an_answer_between_failures_starts_the_count_again() -> None:
    scanner = one_scan(closed_port(), 0.5)
    assert scanner.clamd is not None
    clamav_rules(scanner, GIVE_UP_AFTER - 1)
    server = socket.create_server((HOST, 0))
    try:
        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(5)
                while not conn.recv(65536).endswith(b"\0\0\0\0"):
                    pass
                conn.sendall(b"stream: OK\0")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        up = dataclasses.replace(scanner, clamd=dataclasses.replace(
            scanner.clamd, address=f"tcp://{HOST}:{server.getsockname()[1]}"))
        assert clamav_rules(up, 1) == [[]]  # clean, and the run of failures broken
        thread.join(timeout=10)
    finally:
        server.close()
    found = clamav_rules(scanner, GIVE_UP_AFTER - 1)  # the shared count: below the bound again
    assert all(per and per[0][0] == "clamav.error" for per in found), found


def test_a_gateway_scanner_keeps_asking() -> None:
    scanner = Scanner.from_settings(ScanSettings(clamd=closed_port()))
    found = clamav_rules(scanner, GIVE_UP_AFTER + 2)
    assert all([rule for rule, _, _ in per] == ["clamav.error"] for per in found), found


def test_the_scan_names_how_many_files_went_without_clamav(tmp_path: Path) -> None:
    for k in range(GIVE_UP_AFTER + 2):
        (tmp_path / f"IM{k}").write_bytes(ct())
    result = CliRunner().invoke(main.app, ["scan", "--format", "json", "--clamd", closed_port(), str(tmp_path)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    rules = [[f["rule"] for f in report["findings"] if f["rule"].startswith("clamav")] for report in doc["files"]]
    assert rules == [["clamav.error"]] * GIVE_UP_AFTER + [[NOT_CHECKED]] * 2
    assert f"failed {GIVE_UP_AFTER} times in a row" in result.stderr
    assert f"2 files scanned without ClamAV ({NOT_CHECKED})" in result.stderr
