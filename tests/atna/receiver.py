"""A repository under test: the atna service on a loop of its own thread, its Events in a list."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pacsguard.atna.config import AtnaConfig
from pacsguard.atna.service import AtnaService
from pacsguard.events.model import Event

DEADLINE = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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
            setup: Callable[[AtnaService], None] = lambda service: None) -> Iterator[Received]:
    """The service configured by ``section`` (enabled), prepared by ``setup``, started on a background loop."""
    received = Received()
    config = AtnaConfig.model_validate({"enabled": True, **section})
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    service = AtnaService(config, received.publish, store)
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
