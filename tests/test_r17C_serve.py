"""Round 17, area C: `pacsguard serve` as systemd runs it (no terminal), probed with signals.

SIGHUP stopped serve cleanly with exit code 0 even without a terminal. There no hang-up can come:
a SIGHUP is what an administrator or a logrotate `postrotate` sends a daemon to reload or reopen
its logs (rsyslog, nginx, Suricata), and after exit code 0 `Restart=on-failure` does not start the
gateway again: it stayed down. Without a terminal serve now ignores SIGHUP and says so; on a
terminal a hang-up still stops it (tests/test_r7_admin_serve.py). The readiness notification
reaches a real NOTIFY_SOCKET listener throughout.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from terminal import PACSGUARD

CONFIG = "store:\n  url: var/pacsguard.db\n  checkpoint_interval: 3600\n"
DEADLINE = 60.0


def _pacsguard(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("PACSGUARD_CONFIG", None)
    return subprocess.run([*PACSGUARD, *args], cwd=home, capture_output=True, text=True, timeout=120, env=env)


def _kinds(home: Path) -> list[str]:
    done = _pacsguard(home, "events", "tail", "-n", "10", "--format", "json")
    assert done.returncode == 0, done.stderr
    return [json.loads(line)["kind"] for line in done.stdout.splitlines()]


def test_without_a_terminal_a_sighup_does_not_stop_serve(tmp_path: Path) -> None:
    (tmp_path / "pacsguard.yaml").write_text(CONFIG)
    assert _pacsguard(tmp_path, "init").returncode == 0
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(DEADLINE)
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
    env.pop("PACSGUARD_CONFIG", None)
    # As systemd starts it: stdin /dev/null, output to pipes (the journal), no controlling terminal.
    proc = subprocess.Popen([*PACSGUARD, "serve"], cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, start_new_session=True, text=True)
    try:
        assert notify.recv(4096).startswith(b"READY=1")
        os.kill(proc.pid, signal.SIGHUP)
        time.sleep(2)  # room for a stop that must not happen
        assert proc.poll() is None, "serve stopped on SIGHUP"
        os.kill(proc.pid, signal.SIGTERM)
        assert notify.recv(4096).startswith(b"STOPPING=1")
        out, err = proc.communicate(timeout=DEADLINE)
        assert proc.returncode == 0, err
    finally:
        notify.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert "SIGHUP ignored: pacsguard has no terminal to hang up and nothing to reload" in err
    assert "Traceback" not in err
    assert _kinds(tmp_path)[-2:] == ["pacsguard.service.started", "pacsguard.service.stopped"]


# A $NOTIFY_SOCKET that cannot be reached (inherited from another service, passed into a container
# without its socket, a socket whose listener is gone) ended serve right after its banner with
# "error: [Errno 111] Connection refused" (exit 2), naming neither the variable nor the socket.
# sd_notify(3) reports such an error to its caller and the service goes on: so does serve now,
# with one warning that names $NOTIFY_SOCKET.

def test_an_unreachable_notify_socket_is_a_warning_not_the_end_of_serve(tmp_path: Path) -> None:
    (tmp_path / "pacsguard.yaml").write_text(CONFIG)
    assert _pacsguard(tmp_path, "init").returncode == 0
    gone = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(gone))  # bound, then closed: the path stays, nobody receives
    env = {**os.environ, "NOTIFY_SOCKET": str(gone), "WATCHDOG_USEC": "400000"}
    env.pop("PACSGUARD_CONFIG", None)
    proc = subprocess.Popen([*PACSGUARD, "serve"], cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, start_new_session=True, text=True)
    try:
        end = time.monotonic() + DEADLINE
        while "pacsguard.service.started" not in _kinds(tmp_path):
            assert proc.poll() is None and time.monotonic() < end, proc.communicate()
            time.sleep(0.2)
        time.sleep(1.5)  # the watchdog pings every 0.2 s meanwhile, each failing
        assert proc.poll() is None, proc.communicate()
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == 0, err
    warnings = [line for line in err.splitlines() if "$NOTIFY_SOCKET" in line]
    assert len(warnings) == 1 and f"$NOTIFY_SOCKET {gone} cannot be reached (Connection refused)" in warnings[0]
    assert "Traceback" not in err and "Exception in thread" not in err
    assert _kinds(tmp_path)[-1] == "pacsguard.service.stopped"
