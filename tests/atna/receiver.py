"""A repository under test: the atna service on a loop of its own thread, its Events in a list; or a second
pacsguard, `pacsguard atna listen`, in a process of its own."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pacsguard.atna.config import AtnaConfig
from pacsguard.atna.service import AtnaService
from pacsguard.events.model import Event
from peers.dcmtk import free_port  # noqa: F401 - the ATNA tests take it from here

DEADLINE = 20.0


class Received:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.service: AtnaService | None = None

    def publish(self, event: Event) -> None:
        self.events.append(event)  # list.append is atomic: safe from the loop's thread

    def address(self, name: str) -> tuple[str, int]:
        assert self.service is not None
        return self.service.addresses[name]

    def wait(self, what: Callable[[list[Event]], bool], message: str, deadline: float = DEADLINE) -> list[Event]:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            snapshot = list(self.events)
            if what(snapshot):
                return snapshot
            time.sleep(0.05)
        raise AssertionError(f"{message}; got {[(e.kind, e.details.get('problem')) for e in self.events]}")

    def audits(self) -> list[Event]:
        return [e for e in self.events if e.kind.startswith("atna.audit.")]


@contextmanager
def running(section: dict[str, Any], store: Any = None,
            setup: Callable[[AtnaService], None] = lambda service: None, *,
            bus: Any = None, backlog: Callable[[], int] | None = None) -> Iterator[Received]:
    """The service configured by ``section`` (enabled), prepared by ``setup``, started on a background loop.
    ``bus``: an EventBus that also gets every Event, and whose backlog holds the senders back (else
    ``backlog``, if given)."""
    received = Received()
    config = AtnaConfig.model_validate({"enabled": True, **section})
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    publish = received.publish
    if bus is not None:
        def publish(event: Event) -> None:
            received.publish(event)
            bus.publish(event)

        backlog = backlog or (lambda: bus.backlog)
    service = AtnaService(config, publish, store, backlog=backlog)
    setup(service)
    asyncio.run_coroutine_threadsafe(service.start(), loop).result(DEADLINE)
    received.service = service
    try:
        yield received
    finally:
        asyncio.run_coroutine_threadsafe(service.stop(), loop).result(DEADLINE)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(DEADLINE)
        loop.close()


class Repository:
    """A second pacsguard: `pacsguard atna listen --tls ... --tls-ca` (mutual TLS) into its own store."""

    def __init__(self, base: Path, port: int, pki: dict[str, Path], deadline: float = 60.0, readers: int = 0) -> None:
        self.base, self.port, self.pki, self.deadline, self.readers = base, port, pki, deadline, readers
        self.proc: subprocess.Popen[str] | None = None
        self.store = base / "repository.db"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pacsguard.cli", "atna", "listen", "--tls", f"127.0.0.1:{self.port}",
             "--tls-cert", str(self.pki["cert"]), "--tls-key", str(self.pki["key"]), "--tls-ca", str(self.pki["ca"]),
             "--store", str(self.store), "--readers", str(self.readers)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "200"})
        assert self.proc.stdout is not None
        end = time.monotonic() + self.deadline
        for line in self.proc.stdout:
            if "ATNA syslog" in line:
                return
            assert time.monotonic() < end
        raise AssertionError(f"the repository did not start: exit {self.proc.wait()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(self.deadline)
        self.proc = None


def curl_fhir(token: str, *args: str) -> tuple[int, Any]:
    """curl's answer (status, JSON body) to a request of the RESTful ATNA endpoint with ``token``."""
    curl = shutil.which("curl")
    assert curl, "curl is needed (Debian package curl)"
    done = subprocess.run([curl, "-sS", "-m", "15", "-w", "\n%{http_code}", "-H", f"Authorization: Bearer {token}",
                           "-H", "Content-Type: application/fhir+json", *args],
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    body, _, status = done.stdout.rpartition("\n")
    return int(status), json.loads(body)


def logger_send(host: str, port: int, message: str, msgid: str = "IHE+RFC-3881") -> None:
    """``message`` sent to ``host``:``port`` by util-linux's logger: RFC 5424 over TCP, octet counted."""
    logger = shutil.which("logger") or "/usr/bin/logger"
    assert Path(logger).exists(), "logger (util-linux) is missing"
    subprocess.run([logger, "--rfc5424", "--msgid", msgid, "--size", "300000", "-n", host, "-T",
                    "--octet-count", "-P", str(port), message], check=True, timeout=15)


def three_received(rx: Any, tcp: int, base: str, token: str, posted: dict[str, Any], sent: dict[str, Any],
                   a5: str) -> tuple[dict[str, Any], list[Event], Event]:
    """A repository running (``rx`` of `running`) receives three audit messages: ``posted`` by curl
    to ``base`` (a FHIR AuditEvent; answered 201 with a valid resource), ``sent`` (FHIR) and ``a5``
    by logger to port ``tcp``. Returns the resource the POST answered, the three Events, and the
    posted one's."""
    from fhir.resources.R4B.auditevent import AuditEvent

    status, created = curl_fhir(token, "--data-binary", json.dumps(posted), base)
    assert status == 201, created
    AuditEvent.model_validate(created)
    host = base.split("//", 1)[1].rsplit(":", 1)[0]
    logger_send(host, tcp, json.dumps(sent), "IHE+FHIR")
    logger_send(host, tcp, a5)
    audits = [e for e in rx.wait(lambda evs: len([e for e in evs if e.kind.startswith("atna.audit.")]) == 3,
                                 "the three audit messages received") if e.kind.startswith("atna.audit.")]
    return created, audits, next(e for e in audits if e.id == created["id"])
