"""Outside round 7: `make run` or `serve` in an SSH session that goes away. The terminal's hang-up
(SIGHUP) ended serve on the spot (exit 129): no `pacsguard.service.stopped` event, no final
checkpoint, a start without a stop in the audit trail. It now stops as Ctrl-C and SIGTERM do,
unless SIGHUP was ignored on purpose (`nohup`)."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import time
from pathlib import Path

from terminal import PACSGUARD

CONFIG = "store:\n  url: var/pacsguard.db\n  checkpoint_interval: 3600\n"


def pacsguard(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("PACSGUARD_CONFIG", None)
    return subprocess.run([*PACSGUARD, *args], cwd=home, capture_output=True, text=True, timeout=120, env=env)


def start_in_terminal(home: Path, *, ignore_hangup: bool = False) -> tuple[subprocess.Popen[bytes], int]:
    """`pacsguard serve` on a pseudo-terminal, as in an SSH session; returns once its banner is out."""
    (home / "pacsguard.yaml").write_text(CONFIG)
    assert pacsguard(home, "init").returncode == 0
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "dumb", "NO_COLOR": "1"}
    env.pop("PACSGUARD_CONFIG", None)
    # As nohup does it (nohup itself would move the output to nohup.out, away from the terminal).
    ignore = (lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN)) if ignore_hangup else None
    proc = subprocess.Popen([*PACSGUARD, "serve"], cwd=home, stdin=slave, stdout=slave, stderr=slave, env=env,
                            start_new_session=True, preexec_fn=ignore)  # noqa: PLW1509 - one signal, no threads
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 60
    quiet_since = None
    # The banner, whole: the terminal is the session's while the session lasts.
    while time.monotonic() < deadline and proc.poll() is None:
        if select.select([master], [], [], 0.2)[0]:
            try:
                out += os.read(master, 65536)
            except OSError:
                break
            quiet_since = time.monotonic()
        elif b"is running" in out and quiet_since is not None and time.monotonic() - quiet_since > 1:
            break
    assert b"is running" in out, out.decode(errors="replace")
    return proc, master


def newest_event(home: Path) -> dict[str, object]:
    done = pacsguard(home, "events", "tail", "-n", "1", "--format", "json")
    assert done.returncode == 0, done.stderr
    event: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return event


def test_a_hang_up_stops_serve_cleanly_with_its_stop_recorded_and_signed(tmp_path: Path) -> None:
    proc, master = start_in_terminal(tmp_path)
    try:
        os.close(master)  # the SSH session is gone: its terminal with it
        os.kill(proc.pid, signal.SIGHUP)  # what the kernel sends the session on that hang-up
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    event = newest_event(tmp_path)
    assert event["kind"] == "pacsguard.service.stopped" and event["outcome"] == "success", event
    verify = pacsguard(tmp_path, "audit", "verify", "--format", "json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = json.loads(verify.stdout)
    # The final checkpoint covers the stop itself (the hour-long interval signed none before it).
    assert report["ok"] and report["newest_checkpoint_valid"], report
    assert report["events"] == report["newest_checkpoint"] == 2, report  # started, stopped: both signed


def test_a_hang_up_ignored_on_purpose_stays_ignored(tmp_path: Path) -> None:
    """`nohup pacsguard serve &`: SIGHUP is ignored before serve starts, and serve keeps it so."""
    proc, master = start_in_terminal(tmp_path, ignore_hangup=True)
    try:
        os.kill(proc.pid, signal.SIGHUP)
        time.sleep(2)  # room for a stop that must not happen
        assert proc.poll() is None
        assert newest_event(tmp_path)["kind"] == "pacsguard.service.started"
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert newest_event(tmp_path)["kind"] == "pacsguard.service.stopped"
