"""sd_notify client: datagrams to a real AF_UNIX socket (path and abstract), the watchdog interval."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Iterator

import pytest

from pacsguard.sdnotify import Notifier, Watchdog, watchdog_interval


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, str(path)
    sock.close()


def test_notifications_reach_the_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("serving 2 routes")
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving 2 routes"
    assert notifier.status("12 associations")
    assert sock.recv(4096) == b"STATUS=12 associations"
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    with pytest.raises(ValueError, match="one line"):
        notifier.status("two\nREADY=1")


def test_abstract_namespace_socket() -> None:
    name = f"pacsguard-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(4096) == b"READY=1"


def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    assert notifier.ready() is False and notifier.watchdog() is False
    assert not Notifier({"NOTIFY_SOCKET": "relative/path"}).enabled


def test_watchdog_interval() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "123"}, pid=123) == 1.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "124"}, pid=123) is None
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}) == 1.0


def test_watchdog_pings_only_while_healthy(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    interval = watchdog_interval({"WATCHDOG_USEC": "100000"})
    assert interval == 0.05
    healthy = [True]
    dog = Watchdog(Notifier({"NOTIFY_SOCKET": path}), interval, lambda: healthy[0]).start()
    try:
        assert [sock.recv(64) for _ in range(3)] == [b"WATCHDOG=1"] * 3
        healthy[0] = False
        time.sleep(0.2)
        sock.setblocking(False)
        while True:  # drain what was sent before the check turned false
            try:
                sock.recv(64)
            except BlockingIOError:
                break
        time.sleep(0.3)
        with pytest.raises(BlockingIOError):
            sock.recv(64)  # an unhealthy service sends no keep-alive
    finally:
        dog.stop()
    with pytest.raises(ValueError):
        Watchdog(Notifier({}), 0)


def test_serve_tells_systemd_ready_watchdog_and_stopping(listener: tuple[socket.socket, str], tmp_path: Path) -> None:
    """`pacsguard serve` as systemd runs it (Type=notify, WatchdogSec=): READY=1 once every listener
    is bound, WATCHDOG=1 while the loop answers, STOPPING=1 on SIGTERM."""
    import signal
    import subprocess
    import sys

    from peers.dcmtk import free_port, wait_for_port

    sock, path = listener
    cli = [sys.executable, "-m", "pacsguard.cli"]
    assert subprocess.run([*cli, "init"], cwd=tmp_path, capture_output=True, timeout=60).returncode == 0
    config = tmp_path / "pacsguard.yaml"
    gw_port, demo_port = free_port(), free_port()
    config.write_text(config.read_text().replace("11112", str(gw_port)).replace("11113", str(demo_port)))
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000", "COLUMNS": "200"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([*cli, "serve"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        first = sock.recv(4096)
        assert first.startswith(b"READY=1\nSTATUS=serving"), first
        assert wait_for_port("127.0.0.1", gw_port, 5, proc), "READY=1 came before the gateway listened"
        assert sock.recv(4096) == b"WATCHDOG=1"
        proc.send_signal(signal.SIGTERM)
        seen = [sock.recv(4096)]
        while not seen[-1].startswith(b"STOPPING=1") and len(seen) < 100:  # pings queued before it
            seen.append(sock.recv(4096))
        assert seen[-1].startswith(b"STOPPING=1") and set(seen[:-1]) <= {b"WATCHDOG=1"}, seen
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0 and "Traceback" not in out, out
