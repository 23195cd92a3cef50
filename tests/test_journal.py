"""The spine's side of "nothing acknowledged without its record": tickets and the write-ahead
journal of the bus, what a restart recovers from the journal, the secondary sinks while the store
fails, the bounded spool and the gap record (docs/store.md, "Durability")."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

import pytest

from pacsguard.events import Event, EventBus, FanOut
from pacsguard.events.journal import Journal, read
from pacsguard.runtime.outputs import journal_path, open_journal, open_outputs, open_store
from store_helpers import make_events


class Sink:
    """A sink that takes events, or raises while ``failing``."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.failing = False

    def emit(self, events: Sequence[Event]) -> None:
        if self.failing:
            raise OSError(28, "No space left on device")
        self.events.extend(events)

    def close(self) -> None: ...


def until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met within the timeout"
        time.sleep(0.01)


def test_an_event_is_durable_once_journaled_before_the_store_takes_it(tmp_path: Path) -> None:
    sink = Sink()
    sink.failing = True  # the store takes nothing: only the journal can make the event durable
    bus = EventBus(sink, max_delay=30, journal=Journal(tmp_path / "j"))
    try:
        event = make_events(1)[0]
        ticket = bus.publish_ticket(event)
        assert ticket == 1 and bus.durable_count == 0
        bus.hurry()
        until(lambda: bus.durable_count >= 1)
        assert [e.id for e in read(tmp_path / "j")] == [event.id]
        assert bus.written == 0, "the store took it: the journal was not what made it durable"
    finally:
        sink.failing = False
        bus.close(5)
    assert len(sink.events) == 1
    assert read(tmp_path / "j") == [] and not (tmp_path / "j").read_bytes().strip(b"\0"), \
        "the journal is emptied (overwritten) once the store holds it all"
    assert (tmp_path / "j").stat().st_mode & 0o777 == 0o600


def test_a_failed_append_leaves_whole_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = Journal(tmp_path / "j")
    first, second = make_events(2)
    journal.append([first])
    size = journal.size

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fdatasync", full)
    with pytest.raises(OSError):
        journal.append([second])
    monkeypatch.undo()
    raw = (tmp_path / "j").read_bytes()
    assert raw[size - 1:size] == b"\n" and not raw[size:].strip(b"\0"), "the failed write was blanked"
    journal.append([second])
    journal.close()
    assert [e.id for e in read(tmp_path / "j")] == [first.id, second.id]


def test_a_reopened_journal_appends_after_its_lines_into_room_allocated_ahead(tmp_path: Path) -> None:
    first, second, third = make_events(3)
    journal = Journal(tmp_path / "j")
    journal.append([first, second])
    used = journal.size
    journal.close()
    assert (tmp_path / "j").stat().st_size > used, "room is allocated ahead of the lines"
    journal = Journal(tmp_path / "j")
    assert journal.size == used
    journal.append([third])
    journal.close()
    assert [e.id for e in read(tmp_path / "j")] == [first.id, second.id, third.id]


def test_a_restart_writes_what_the_journal_holds_and_the_store_lacks(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "s.db"), create=True)
    events = make_events(6)
    store.append(events[:3])  # committed before the crash
    path = journal_path(store)
    assert path == tmp_path / "s.db.journal"
    journal = Journal(path)
    journal.append(events)  # journaled, the last three never committed
    journal.append(events[4:])  # and an entry journaled twice
    journal.close()
    with ExitStack() as stack:
        stack.callback(store.close)
        wal, backlog = open_journal(store)
        assert wal is not None
        wal.close()
        assert [e.id for e in backlog] == [e.id for e in events[3:]]
    store = open_store(str(tmp_path / "s.db"))
    with ExitStack() as stack:
        open_outputs(stack, store, journal=True)
    store = open_store(str(tmp_path / "s.db"))
    try:
        assert store.size() == 6
    finally:
        store.close()
    assert read(path) == []


def test_a_second_process_on_the_store_does_without_the_journal(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "s.db"), create=True)
    held = Journal(tmp_path / "s.db.journal")
    try:
        assert open_journal(store) == (None, [])
    finally:
        held.close()
        store.close()


def test_secondary_sinks_get_events_while_the_store_fails_and_once(tmp_path: Path) -> None:
    store, syslog = Sink(), Sink()
    fan = FanOut(store, [syslog])
    store.failing = True
    batch = make_events(3)
    for _ in range(2):
        with pytest.raises(OSError):
            fan.emit(batch)
    assert [e.id for e in syslog.events] == [e.id for e in batch]
    store.failing = False
    more = make_events(1, 3)
    fan.emit([*batch, *more])
    assert [e.id for e in syslog.events] == [e.id for e in [*batch, *more]]
    assert len(store.events) == 4


def test_a_full_spool_drops_and_the_recovery_records_the_gap() -> None:
    sink = Sink()
    sink.failing = True
    stack = ExitStack()
    with stack:
        bus = open_outputs(stack, None, [sink]).bus
        bus.max_spool = 5
        bus.publish(make_events(1)[0])
        bus.hurry()
        until(lambda: bus.failing)
        tickets = [bus.publish_ticket(e) for e in make_events(10, 1)]
        assert None in tickets, "nothing was dropped past max_spool"
        dropped = bus.health().dropped
        assert dropped > 0
        sink.failing = False
        until(lambda: any(e.kind == "pacsguard.recording.recovered" for e in sink.events))
    failed = [e for e in sink.events if e.kind == "pacsguard.recording.failed"]
    recovered = [e for e in sink.events if e.kind == "pacsguard.recording.recovered"]
    assert failed and "No space left on device" in failed[0].details["error"]
    assert recovered[0].details["dropped"] == dropped and recovered[0].severity.name == "ALERT"
    assert not bus.failing
