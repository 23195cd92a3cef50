"""A stop during a store outage: the events the bus still holds are counted in one error line, and
whether they are lost (no journal) is said, instead of the shutdown dropping them in silence
(outside round 9, found by the store's tester)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest

from pacsguard.events.bus import EventBus
from pacsguard.events.model import Event


class Refusing:
    """A sink whose database refuses every write (PostgreSQL read-only, a full disk)."""

    def emit(self, batch: Sequence[Event]) -> None:
        raise RuntimeError("cannot execute INSERT in a read-only transaction")

    def close(self) -> None:
        pass


def test_events_not_written_at_shutdown_are_counted_and_called_lost(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus(Refusing(), max_delay=0.001)
    for n in range(3):
        bus.publish(Event(kind="test.kind", component="test", message=f"event {n}"))
    with caplog.at_level(logging.ERROR, logger="pacsguard.events"):
        bus.close(timeout=0.3)
    lines = [r.getMessage() for r in caplog.records if "at shutdown" in r.getMessage()]
    assert len(lines) == 1, caplog.text
    assert "3 events not written to the store at shutdown (it kept failing" in lines[0]
    assert "lost: no journal holds them" in lines[0]


def test_a_clean_shutdown_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    class Taking:
        def __init__(self) -> None:
            self.got: list[Event] = []

        def emit(self, batch: Sequence[Event]) -> None:
            self.got.extend(batch)

        def close(self) -> None:
            pass

    sink = Taking()
    bus = EventBus(sink, max_delay=0.001)
    bus.publish(Event(kind="test.kind", component="test", message="one"))
    with caplog.at_level(logging.ERROR, logger="pacsguard.events"):
        bus.close(timeout=5)
    assert len(sink.got) == 1 and "at shutdown" not in caplog.text
