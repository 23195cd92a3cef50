"""The dcmjs-dimse peer: the JavaScript DIMSE implementation (npm ``dcmjs-dimse``) that web viewers'
Node.js back ends and Node.js PACS tools use, run by Debian's Node.js.

``dcmjs`` (session fixture)
    A :class:`Dcmjs`: ``scu(host, port, calling, called, *requests)`` runs tests/peers/dcmjs/scu.js
    (dcmjs-dimse's Client: one association, its requests, one JSON line per response) and
    ``archive(host, folder, moves=...)`` runs tests/peers/dcmjs/scp.js (dcmjs-dimse's Server:
    C-ECHO, C-STORE, C-FIND, C-GET and C-MOVE SCP) as a context manager.

Installation: dcmjs-dimse is not packaged by Debian. The fixture installs the pinned version
with npm into ``.peers/dcmjs-dimse-<version>`` of the checkout (git-ignored) the first time, and
fails with the command to run when npm cannot. ``DCMJS_BIND`` makes every outgoing connection of
the drivers leave from the test's own loopback address (a C-MOVE's sub-association included).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from peers.dcmtk import free_port, read_log, stop_process_group

VERSION = "0.3.3"
HERE = Path(__file__).with_name("dcmjs")
CHECKOUT = Path(__file__).resolve().parents[2]
PREFIX = CHECKOUT / ".peers" / f"dcmjs-dimse-{VERSION}"
MODULE = PREFIX / "node_modules" / "dcmjs-dimse"
INSTALL = f"npm install --no-audit --no-fund --prefix {PREFIX} dcmjs-dimse@{VERSION}"
HINT = "Debian's nodejs and npm are needed (apt-get install nodejs npm), then: " + INSTALL


class Answer(NamedTuple):
    """What scu.js printed: its exit code and its JSON lines."""

    code: int
    lines: list[dict[str, Any]]
    stderr: str

    def responses(self, op: str) -> list[dict[str, Any]]:
        return [r for r in self.lines if r["event"] == "response" and r["op"] == op]

    def statuses(self, op: str) -> list[int]:
        return [r["status"] for r in self.responses(op)]

    def events(self, event: str) -> list[dict[str, Any]]:
        return [r for r in self.lines if r["event"] == event]


class Archive(NamedTuple):
    """A running scp.js: where it listens, the folder it keeps objects in, its log."""

    host: str
    port: int
    folder: Path
    log: Path

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in read_log(self.log, limit=1_000_000).splitlines() if x.startswith("{")]

    def wait_for(self, event: str, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        found: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            found = [x for x in self.lines() if x["event"] == event]
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"dcmjs archive printed {len(found)} {event!r} lines, expected {count}:\n"
                             + read_log(self.log))

    def objects(self) -> dict[str, bytes]:
        """SOP Instance UID -> the dataset bytes as they arrived."""
        return {p.stem: p.read_bytes() for p in sorted(self.folder.glob("*.raw"))}


class Dcmjs:
    def __init__(self) -> None:
        node = shutil.which("node") or shutil.which("nodejs")
        if node is None:
            pytest.fail(f"node is missing: {HINT}")
        self.node = node
        if not (MODULE / "package.json").is_file():
            npm = shutil.which("npm")
            if npm is None:
                pytest.fail(f"npm is missing: {HINT}")
            PREFIX.mkdir(parents=True, exist_ok=True)
            done = subprocess.run(INSTALL.split(), capture_output=True, text=True, timeout=300, check=False)
            if done.returncode != 0 or not (MODULE / "package.json").is_file():
                pytest.fail(f"installing dcmjs-dimse failed ({done.stderr.strip()[-500:]}); run: {INSTALL}")
        installed = json.loads((MODULE / "package.json").read_text())["version"]
        if installed != VERSION:
            pytest.fail(f"{MODULE} holds dcmjs-dimse {installed}, not {VERSION}: rm -rf {PREFIX}; {INSTALL}")

    def env(self, bind: str) -> dict[str, str]:
        return {**os.environ, "DCMJS_DIMSE_PATH": str(MODULE), "DCMJS_BIND": bind}

    def scu(self, host: str, port: int, calling: str, called: str, *requests: dict[str, Any],
            bind: str | None = None, get_folder: Path | None = None, timeout: float = 15.0,
            options: dict[str, Any] | None = None, max_pdu: int | None = None,
            abort_after: int | None = None) -> Answer:
        """One association of dcmjs-dimse's Client with these requests ({"op": "echo"},
        {"op": "store", "files": [...]}, {"op": "find", "keys": {...}}, {"op": "move",
        "destination": AE, "study": uid}, {"op": "get", "study": uid}), leaving from ``bind``."""
        spec = {"host": host, "port": port, "calling": calling, "called": called, "requests": list(requests),
                "timeout_ms": int(timeout * 1000), "get_folder": str(get_folder) if get_folder else None,
                "options": options or {}, "abort_after": abort_after}
        if max_pdu is not None:
            spec["max_pdu"] = max_pdu
        for r in spec["requests"]:
            if "files" in r:
                r["files"] = [str(f) for f in r["files"]]
        cmd = [self.node, str(HERE / "scu.js"), json.dumps(spec)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 10, check=False,
                                  env=self.env(bind or host), stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"scu.js did not finish in {timeout + 10} s: {exc.stdout!r} {exc.stderr!r}")
        lines = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
        assert any(x["event"] == "exit" for x in lines), done.stdout + done.stderr[-3000:]
        return Answer(done.returncode, lines, done.stderr)

    @contextmanager
    def archive(self, host: str, folder: Path, moves: dict[str, tuple[str, int]] | None = None,
                sub_delay: float = 0.0) -> Iterator[Archive]:
        folder.mkdir(parents=True, exist_ok=True)
        port = free_port(host)
        log = folder.parent / f"dcmjs_scp_{host}_{port}.log"
        spec = {"host": host, "port": port, "folder": str(folder), "moves": moves or {},
                "sub_delay_ms": int(sub_delay * 1000)}
        with log.open("w") as out:
            proc = subprocess.Popen([self.node, str(HERE / "scp.js"), json.dumps(spec)], env=self.env(host),
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        try:
            running = Archive(host, port, folder, log)
            deadline = time.monotonic() + 15
            while not any(x["event"] == "listening" for x in running.lines()):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the dcmjs archive did not listen on {host}:{port}:\n{read_log(log)}")
                time.sleep(0.05)
            yield running
        finally:
            stop_process_group(proc, grace=3)


@pytest.fixture(scope="session", name="dcmjs")
def dcmjs_fixture() -> Dcmjs:
    """The ``dcmjs`` fixture (a test module imports ``dcmjs_fixture``; the parameter is ``dcmjs``)."""
    return Dcmjs()
