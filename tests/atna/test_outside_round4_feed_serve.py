"""`pacsguard serve` with an outbound feed (issue #18, outside tester round 4): its own start and
stop reach the repository as Application Start and Stop (PS3.15 A.5.3.1, 110120/110121); a
repository whose certificate does not verify is a WARNING and an Event, not an INFO line; a spool
that cannot be used is a configuration error naming atna.outbound.spool. Real peers: serve and
`pacsguard atna listen` as processes of their own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
from receiver import Repository, free_port
from test_outbound import pki  # noqa: F401 - pki is a fixture

from pacsguard.events.model import Event
from pacsguard.store import EventQuery, EventStore
from pacsguard.tls import make_ca, make_cert
from peers.dcmtk import wait_for_port

CLI = [sys.executable, "-m", "pacsguard.cli"]
DEADLINE = 60.0


def site(base: Path, outbound: str) -> tuple[Path, int]:
    """A configuration with an ATNA TCP listener (how the test knows serve runs) and ``outbound``."""
    base.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = base / "pacsguard.yaml"
    config.write_text(f"""
store: {{url: {base}/pacsguard.db, signing_key: {base}/keys/sign.key}}
atna:
  enabled: true
  tcp: {{host: 127.0.0.1, port: {port}}}
  outbound: {{{outbound}}}
""")
    done = subprocess.run([*CLI, "init", "-c", str(config), "--no-demo"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return config, port


def outbound_to(port: int, pki: dict[str, Path], spool: Path) -> str:  # noqa: F811
    return (f"host: 127.0.0.1, port: {port}, server_name: localhost, ca_file: {pki['ca']}, "
            f"cert_file: {pki['client']}, key_file: {pki['client_key']}, source_id: GW-A, spool: {spool}, retry: 0.5")


def serve(config: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*CLI, "serve", "-c", str(config), *args], stdout=log.open("ab"),
                            stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(DEADLINE) == 0


def events(path: Path, kind: str) -> list[Event]:
    if not path.exists():
        return []
    store = EventStore.open(str(path))
    try:
        return [s.event for s in store.search(EventQuery(kind=kind, limit=None))]
    finally:
        store.close()


def until(what: Callable[[], object], message: str) -> None:
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        if what():
            return
        time.sleep(0.2)
    raise AssertionError(message)


def test_serve_sends_its_start_and_stop(tmp_path: Path, pki: dict[str, Path]) -> None:  # noqa: F811
    """Once, serve published its start before the feed subscribed and its stop after the feed was
    gone: neither ever left. Now the start is read back from the store, and the stop is spooled as
    the event stream closes and sent at the next start."""
    repo_port = free_port()
    (tmp_path / "repo").mkdir()
    repo = Repository(tmp_path / "repo", repo_port, pki)
    repo.start()
    config, port = site(tmp_path / "site", outbound_to(repo_port, pki, tmp_path / "site" / "spool.db"))
    log = tmp_path / "serve.log"

    def activity() -> list[str]:
        return [e.details["event_types"][0]["code"] for e in events(repo.store, "atna.audit.application-activity")]

    def arrived(n: int) -> bool:
        return len(activity()) == n

    try:
        for run in (1, 2):
            proc = serve(config, log)
            try:
                assert wait_for_port("127.0.0.1", port, 30, proc), log.read_text()
                # This run's start, after the stop and the start of the run before it.
                until(partial(arrived, 2 * run - 1), f"run {run}: {activity()}; {log.read_text()}")
            finally:
                stop(proc)
    finally:
        repo.stop()
    assert activity() == ["110120", "110121", "110120"]  # Application Start, Stop, Start
    own = [e.kind for e in events(tmp_path / "site" / "pacsguard.db", "pacsguard.service.*")]
    assert own == ["pacsguard.service.started", "pacsguard.service.stopped"] * 2


def test_a_repository_certificate_that_does_not_verify_is_a_warning_and_an_event(
        tmp_path: Path, pki: dict[str, Path]) -> None:  # noqa: F811
    """A repository presenting a certificate from another CA (a man in the middle, or a mistake):
    once, serve logged it at INFO only, so `--log-level warning` showed nothing while the messages
    piled up in the spool. Now a WARNING, and one atna.outbound.failed Event however many retries."""
    other = tmp_path / "other-pki"
    ca, ca_key = make_ca(other, "Another CA", 2)
    cert, key = make_cert(other, "localhost", ca, ca_key, hosts=["localhost", "127.0.0.1"], server=True, days=1)
    repo_port = free_port()
    (tmp_path / "repo").mkdir()
    repo = Repository(tmp_path / "repo", repo_port, {"ca": pki["ca"], "cert": cert, "key": key})
    repo.start()
    config, port = site(tmp_path / "site", outbound_to(repo_port, pki, tmp_path / "site" / "spool.db"))
    log = tmp_path / "serve.log"
    store = tmp_path / "site" / "pacsguard.db"
    try:
        proc = serve(config, log, "--log-level", "warning")
        try:
            assert wait_for_port("127.0.0.1", port, 30, proc), log.read_text()
            until(lambda: events(store, "atna.outbound.failed"), log.read_text())
            time.sleep(2.0)  # a few more retries (every 0.5 s), for the same reason
        finally:
            stop(proc)
    finally:
        repo.stop()
    warnings = [line for line in log.read_text().splitlines() if " WARNING " in line]
    assert warnings and "certificate verify failed" in warnings[0] and f"127.0.0.1:{repo_port}" in warnings[0]
    (failed,) = events(store, "atna.outbound.failed")
    assert failed.details["certificate"] is True and failed.details["repository"] == f"127.0.0.1:{repo_port}"
    # pending: what waited at the first failure; the start event may not be spooled yet by then
    assert "certificate verify failed" in failed.details["error"] and failed.details["pending"] >= 0


@pytest.mark.parametrize("damage", ["not-sqlite", "folder"])
def test_a_spool_that_cannot_be_used_names_its_key_and_file(tmp_path: Path, pki: dict[str, Path],  # noqa: F811
                                                           damage: str) -> None:
    """Once: "internal error: DatabaseError: file is not a database (a bug in pacsguard ...)",
    naming neither the file nor the key. Now a configuration error (exit 2) naming both."""
    spool = tmp_path / "site" / "spool.db"
    config, _ = site(tmp_path / "site", outbound_to(free_port(), pki, spool))
    if damage == "folder":
        spool.mkdir()
    else:
        spool.write_bytes(b"this is not sqlite, but long enough to be read as a header" * 4)
    done = subprocess.run([*CLI, "serve", "-c", str(config)], capture_output=True, text=True, timeout=DEADLINE,
                          env={**os.environ, "COLUMNS": "300"})
    said = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2, said
    assert f"{spool}: atna.outbound.spool: " in said and "a bug in pacsguard" not in said
    assert ("is a folder" if damage == "folder" else "not a usable SQLite spool") in said
