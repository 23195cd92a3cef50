"""The RESTful endpoint answered 201 Created as soon as it had published the AuditEvent, before the
store had written it: a GET of the Location right after answered 404, and an event the sender
believes delivered was lost if pacsguard stopped in between. A POST is now answered once what it
published is durable (events/durable.py, as the gateway holds its answers), and 503 with
Retry-After when the store is not writing within RestfulAtna's SETTLE_SECONDS (what was received is
still written when the store comes back)."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from test_r11A_source_observer import OBSERVERS, TOKEN, _posted, _wait, curl

from pacsguard.atna.config import AtnaConfig
from pacsguard.atna.service import AtnaService
from pacsguard.events import Event, EventBus
from pacsguard.events.durable import Durability
from peers.dcmtk import free_port

HOST = "127.0.111.41"


def test_a_201_comes_once_the_event_is_stored_and_its_location_is_found_at_once(tmp_path: Path) -> None:
    """Another process holds the store's database locked (as a backup or a long `audit verify` on a
    busy disk can): the POST waits; once the lock goes, 201, and its Location answers 200."""
    http = free_port(HOST)
    env = {**os.environ, "R11M_TOKEN": TOKEN, "PACSGUARD_KEY_DIR": str(tmp_path)}
    store = tmp_path / "store.db"
    with open(tmp_path / "listen.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pacsguard.cli", "atna", "listen", "--http", f"{HOST}:{http}",
                                 "--http-token-env", "R11M_TOKEN", "--store", str(store)],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://{HOST}:{http}"
    try:
        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "listen.log").read_text()
            return subprocess.run(["curl", "-s", "-o", "/dev/null", "-m", "2", base + "/metadata"],
                                  timeout=5).returncode == 0
        _wait(up, "pacsguard atna listen did not start")
        lock = sqlite3.connect(store, timeout=10, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        answered: list[tuple[float, int, object]] = []
        body = json.dumps(_posted(OBSERVERS["reference"], 1))

        def post() -> None:
            status, created = curl(f"{base}/AuditEvent", "--data-binary", body)
            answered.append((time.monotonic(), status, created))
        poster = threading.Thread(target=post)
        try:
            poster.start()
            time.sleep(1.5)
            assert not answered, f"answered while nothing could be stored: {answered}"
        finally:
            released = time.monotonic()
            lock.execute("ROLLBACK")
            lock.close()
        poster.join(15)
        assert answered and answered[0][1] == 201, answered
        assert answered[0][0] >= released
        created = answered[0][2]
        assert isinstance(created, dict)
        status, read = curl(f"{base}/AuditEvent/{created['id']}")
        assert status == 200 and read["id"] == created["id"], read
    finally:
        proc.terminate()
        proc.wait(20)


class _Shut:
    """A sink that does not write until opened."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.events: list[Event] = []

    def emit(self, events: Sequence[Event]) -> None:
        self.open.wait(10)
        self.events.extend(events)

    def close(self) -> None:
        self.open.set()


def test_settled_says_no_until_the_store_writes() -> None:
    sink = _Shut()
    bus = EventBus(sink, max_delay=0.05)
    service = AtnaService(AtnaConfig(), bus.publish, durability=Durability(bus))

    async def main() -> None:
        bus.publish(Event(kind="pacsguard.service.started", component="atna"))
        assert not await service.settled(0.3)  # the POST would be 503, Retry-After
        sink.open.set()
        assert await service.settled(5)
        assert await service.settled(0)  # nothing new: at once

    try:
        asyncio.run(main())
    finally:
        sink.close()
        bus.close(5)
    assert [e.kind for e in sink.events] == ["pacsguard.service.started"]
