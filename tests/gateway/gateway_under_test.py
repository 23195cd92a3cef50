"""The gateway under test: a real `pacsguard serve` process, configured by a YAML file the test
writes, recording into its own SQLite store. Tests read what it recorded from that store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from event_schema import check_event
from pacsguard.events import Event
from pacsguard.store import EventQuery, EventStore
from peers.dcmtk import free_port, wait_for_port


@dataclass
class RunningGateway:
    home: Path
    ports: dict[str, int]
    proc: subprocess.Popen
    log: Path
    routes: list[dict] = field(default_factory=list)
    #: How `pacsguard` is run: ``python -m pacsguard.cli`` unless a test adds parts through a runner.
    program: list[str] = field(default_factory=lambda: [sys.executable, "-m", "pacsguard.cli"])

    @property
    def store(self) -> Path:
        return self.home / "var" / "pacsguard.db"

    def port(self, route: str = "main") -> int:
        return self.ports[route]

    def events(self, kind: str | None = None, **filters: Any) -> list[Event]:
        es = EventStore.open(str(self.store))
        try:
            found = [s.event for s in es.search(EventQuery(kind=kind, limit=None, **filters))]
        finally:
            es.close()
        for event in found:
            check_event(event, "the gateway under test")
        return found

    def wait_for(self, kind: str, count: int = 1, timeout: float = 10.0,
                 where: Callable[[Event], bool] = lambda e: True) -> list[Event]:
        deadline = time.monotonic() + timeout
        found: list[Event] = []
        while time.monotonic() < deadline:
            found = [e for e in self.events(kind) if where(e)]
            if len(found) >= count:
                return found
            time.sleep(0.1)
        raise AssertionError(f"expected {count} {kind} events within {timeout} s, found {len(found)}: "
                             f"{[e.message for e in found]}\n--- gateway log ---\n{self.log.read_text()[-4000:]}")

    def cli(self, *args: str, check: int | None = 0) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self.program, *args], cwd=self.home, capture_output=True,
                              text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
        if check is not None:
            assert proc.returncode == check, (proc.stdout, proc.stderr)
        return proc

    def serve(self) -> subprocess.Popen:
        """Start (or start again, after a stop or a kill) `pacsguard serve` in this home."""
        self.proc = serve(self.home, self.log, self.routes, self.program)
        return self.proc

    def restart(self) -> None:
        """Start `pacsguard serve` again in the same folder (after stop() or a kill)."""
        self.serve()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush; what the gateway had not written is lost."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def route(name: str, upstream_port: int, *, upstream_ae: str = "ORTHANC", ae_title: str = "PACSGUARD",
          policy: dict | None = None, limits: dict | None = None, listen_tls: dict | None = None,
          upstream_tls: dict | None = None, port: int | None = None) -> dict:
    r: dict = {"name": name, "listen": {"host": "127.0.0.1", "port": port or free_port(), "ae_title": ae_title},
               "upstream": {"host": "127.0.0.1", "port": upstream_port, "ae_title": upstream_ae, "connect_timeout": 5},
               "policy": policy or {}, "limits": limits or {}}
    if listen_tls:
        r["listen"]["tls"] = listen_tls
    if upstream_tls:
        r["upstream"]["tls"] = upstream_tls
    return r


def dead_end_routes(host: str) -> list[dict]:
    """A relay route ``rl`` and a store-and-forward route ``sf`` listening on ``host``, both towards a
    port where nothing listens: for what a client's first bytes do, no PACS is ever reached."""
    nowhere = free_port(host)
    relay = {"name": "rl", "listen": {"host": host, "port": free_port(host), "ae_title": "PACSGUARD"},
             "upstream": {"host": host, "port": nowhere, "ae_title": "NOBODY", "connect_timeout": 3}}
    saf = {"name": "sf", "mode": "store-and-forward",
           "listen": {"host": host, "port": free_port(host), "ae_title": "PACSGUARD"},
           "destinations": [{"name": "d0", "host": host, "port": nowhere, "ae_title": "NOBODY",
                             "connect_timeout": 3}]}
    return [relay, saf]


@contextmanager
def serving(home: Path, routes: list[dict], program: list[str]) -> Iterator[RunningGateway]:
    """`pacsguard init --no-demo` then `serve` in ``home`` with ``routes`` (their own listen hosts),
    stopped at the end."""
    config = {"store": {"url": "var/pacsguard.db", "checkpoint_interval": 5}, "gateway": {"routes": routes}}
    (home / "pacsguard.yaml").write_text(yaml.safe_dump(config))
    init = subprocess.run([*program, "init", "--no-demo"], cwd=home, capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stdout + init.stderr
    log = home / "serve.log"
    proc = subprocess.Popen([*program, "serve"], cwd=home, stdout=log.open("a"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    running = RunningGateway(home, {r["name"]: r["listen"]["port"] for r in routes}, proc, log, routes, program)
    try:
        for r in routes:
            assert wait_for_port(r["listen"]["host"], r["listen"]["port"], timeout=30, proc=proc), log.read_text()
        yield running
    finally:
        running.stop()


def serve(home: Path, log: Path, routes: list[dict], program: list[str] | None = None) -> subprocess.Popen:
    """`pacsguard serve` in ``home``, its output appended to ``log``; returns once every route listens."""
    program = program or [sys.executable, "-m", "pacsguard.cli"]
    proc = subprocess.Popen([*program, "serve", "--log-level", "debug"], cwd=home,
                            stdout=log.open("a"), stderr=subprocess.STDOUT,
                            env={**os.environ, "COLUMNS": "200"}, start_new_session=True)
    for r in routes:
        if not wait_for_port("127.0.0.1", r["listen"]["port"], timeout=30, proc=proc):
            proc.kill()
            raise AssertionError(f"gateway did not listen on {r['listen']['port']}:\n{log.read_text()}")
    return proc


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Callable[..., RunningGateway]]:
    """`gateway(route(...), route(...))` starts `pacsguard serve` with those routes; ``prepare(home)``
    runs before `pacsguard init` (e.g. to mount a small file system on home/var)."""
    started: list[RunningGateway] = []

    def start(*routes: dict, extra: dict | None = None, prepare: Callable[[Path], None] | None = None,
              program: list[str] | None = None) -> RunningGateway:
        home = tmp_path / f"gw{len(started)}"
        home.mkdir()
        if prepare is not None:
            prepare(home)
        config = {"store": {"url": "var/pacsguard.db", "checkpoint_interval": 5},
                  "gateway": {"routes": list(routes), "quarantine_poll_interval": 0.2}, **(extra or {})}
        (home / "pacsguard.yaml").write_text(yaml.safe_dump(config))
        program = program or [sys.executable, "-m", "pacsguard.cli"]
        init = subprocess.run([*program, "init", "--no-demo"], cwd=home,
                              capture_output=True, text=True, timeout=60)
        assert init.returncode == 0, f"pacsguard init failed:\n{init.stdout}\n{init.stderr}"
        log = home / "serve.log"
        log.write_text("")
        gw = RunningGateway(home, {r["name"]: r["listen"]["port"] for r in routes}, None,  # type: ignore[arg-type]
                            log, list(routes), program)
        started.append(gw)
        gw.serve()
        return gw

    yield start
    for gw in started:
        gw.stop()
