"""Issue 17, item 3: the README's quick start, followed literally on a fresh clone, finds what it promises.

The clone runs `make run` in the background on the README's own fixed ports (11112 and 11113): the
test edits nothing. Two runs of it on one machine would collide, so it holds a lock for its whole
run, and a port already taken by something else fails it loudly rather than skipping it.

`make run` needs the venv: the clone reuses this checkout's .venv through a symlink (installing
again would take minutes and reach the network). ``-o .venv/.installed-run`` tells make not to
reinstall into it because the clone's pyproject.toml is newer than the stamp; that is the only
word added to the README's commands.
"""

from __future__ import annotations

import fcntl
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from peers.dcmtk import wait_for_port

pytestmark = pytest.mark.peers

ROOT = Path(__file__).resolve().parents[1]
PORTS = (11112, 11113)
LOCK = Path("/tmp/pacsguard-quickstart.lock")


def _shell_blocks(readme: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", readme, re.S)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def clone(tmp_path: Path) -> Iterator[Path]:
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one quick start at a time: the ports are fixed
        busy = [p for p in PORTS if not _port_free(p)]
        assert not busy, f"the README's demo ports {busy} are taken by another process; free them to run this test"
        target = tmp_path / "pacsguard"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(target)], check=True, timeout=120)
        (target / ".venv").symlink_to(Path(sys.prefix))
        yield target


def test_readme_quick_start(clone: Path) -> None:
    blocks = _shell_blocks((clone / "README.md").read_text())
    setup, dcmtk, queries = blocks[0], blocks[1], blocks[2]
    assert "make run" in setup
    log = (clone / "make-run.log").open("w")
    env = {k: v for k, v in os.environ.items() if k not in ("PACSGUARD_CONFIG", "COLUMNS")}
    make = subprocess.Popen(["make", "-o", ".venv/.installed-run", "run"], cwd=clone, stdout=log,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        assert wait_for_port("127.0.0.1", PORTS[0], 60, make), (clone / "make-run.log").read_text()
        steps = subprocess.run(["bash", "-e", "-c", dcmtk], cwd=clone, capture_output=True, text=True, timeout=120,
                               env=env)
        assert steps.returncode == 0, steps.stdout + steps.stderr
        assert "DEMO001" in steps.stdout + steps.stderr  # the C-FIND answered with the seeded study
        found: dict[str, str] = {}
        for line in queries.splitlines():
            command = line.split("#", 1)[0].strip()
            if not command or "tail -f" in command:  # -f follows until Ctrl-C
                continue
            result = subprocess.run(shlex.split(command), cwd=clone, capture_output=True, text=True, timeout=120,
                                    env=env)
            assert result.returncode == 0, (command, result.stdout, result.stderr)
            found[command] = result.stdout
    finally:
        os.killpg(make.pid, signal.SIGINT)
        make.wait(60)
        log.close()
    searches = {c.rsplit(" ", 1)[1]: out for c, out in found.items() if "events search --patient" in c}
    assert set(searches) == {"1CT1", "DEMO001"}
    assert "dicom.dimse.c-store" in searches["1CT1"] and "MODALITY@127.0.0.1" in searches["1CT1"]
    assert "dicom.dimse.c-find" in searches["DEMO001"]
    assert any("config show" in c and str(clone / "pacsguard.yaml") in out for c, out in found.items())
