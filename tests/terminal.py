"""Running `pacsguard` under a pseudo-terminal of a given width, as an administrator's SSH session does."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

PACSGUARD = [sys.executable, "-m", "pacsguard.cli"]


def in_terminal(*args: str, cwd: Path, columns: int = 80, until: str | None = None, timeout: float = 60,
                env: dict[str, str] | None = None) -> str:
    """The output of ``pacsguard ARGS`` on a ``columns``-wide pty. With ``until``, the process is sent
    SIGINT once that text has appeared (a service or a follow); otherwise it runs to its end."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    environ = {**os.environ, "COLUMNS": str(columns), "TERM": "dumb", "NO_COLOR": "1", **(env or {})}
    proc = subprocess.Popen([*PACSGUARD, *args], cwd=cwd, stdin=slave, stdout=slave, stderr=slave, env=environ,
                            start_new_session=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    interrupted = False
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            if until is not None and not interrupted and until.encode() in out:
                proc.send_signal(signal.SIGINT)
                interrupted = True
            if not ready and proc.poll() is not None:
                break
        else:
            raise AssertionError(f"pacsguard {' '.join(args)} did not finish in {timeout} s:\n{out.decode()}")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        proc.wait(30)
        os.close(master)
    return out.decode().replace("\r\n", "\n")


def piped(*args: str, cwd: Path) -> str:
    """The output of ``pacsguard ARGS`` into a pipe (a script, ``| grep``, ``| less``)."""
    proc = subprocess.run([*PACSGUARD, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "COLUMNS"})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, (proc.stdout, proc.stderr)
    return proc.stdout
