"""Debian's rsyslogd as a plain RFC 6587 TCP collector for one test: its configuration is the
test's template and rules, it listens on a free port of ``host``, and it is stopped at the end."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

RSYSLOGD = "/usr/sbin/rsyslogd"
DEADLINE = 20.0


@dataclass
class Collector:
    port: int
    console: Path
    proc: subprocess.Popen[bytes]


@contextmanager
def tcp_collector(base: Path, host: str, template: str, action: str, *,
                  modules: tuple[str, ...] = ()) -> Iterator[Collector]:
    """rsyslogd (under `timeout 60`) receiving on ``host`` by TCP: ``template`` is the body of a
    string template named "t", ``action`` the ruleset's actions (use template="t")."""
    if not Path(RSYSLOGD).exists():
        pytest.fail("rsyslogd is missing: apt-get install rsyslog (Makefile PEERS)")
    (base / "work").mkdir(parents=True)
    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    loads = "".join(f'module(load="{m}")\n' for m in ("imtcp", *modules))
    conf = base / "rsyslog.conf"
    conf.write_text(f'''global(workDirectory="{base / "work"}")
{loads}template(name="t" type="string" string="{template}")
ruleset(name="in") {{ {action} }}
input(type="imtcp" port="{port}" address="{host}" ruleset="in")
''')
    console = base / "console"
    with console.open("wb") as out:
        proc = subprocess.Popen(["timeout", "60", RSYSLOGD, "-n", "-f", str(conf), "-i", str(base / "pid")],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        end = time.monotonic() + DEADLINE
        while True:
            try:
                socket.create_connection((host, port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < end and proc.poll() is None, console.read_text(errors="replace")
                time.sleep(0.05)
        yield Collector(port, console, proc)
    finally:
        proc.terminate()
        proc.wait(DEADLINE)
