"""Round 7b: a failing secondary sink logged a warning for every failed batch (one per group commit,
up to ~20 a second). Now, as the EventBus does for the store: the first failure at once, then a
line with the count at most every REPEAT_LOG_S seconds, and a line when the sink recovers.

The failing sink is a real JSON-lines file whose folder was removed (the path cannot be opened
again); recreating the folder lets it recover."""

from __future__ import annotations

import logging
import shutil
from contextlib import ExitStack
from pathlib import Path

from pacsguard.events import FanOut
from pacsguard.events.bus import REPEAT_LOG_S
from pacsguard.runtime.outputs import open_outputs
from pacsguard.sinks.jsonl import JsonLinesSink
from pacsguard.store import EventStore
from store_helpers import make_events


class Lines(logging.Handler):
    """The messages logged to a logger, kept in order."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> Lines:
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)


def _failing_jsonl(tmp: Path) -> tuple[JsonLinesSink, Path]:
    folder = tmp / "siem"
    folder.mkdir()
    sink = JsonLinesSink(folder / "events.jsonl")
    shutil.rmtree(folder)  # as a full or unmounted disk would: the path cannot be opened again
    return sink, folder


def test_a_failing_sink_is_logged_once_and_its_recovery_too(tmp_path: Path) -> None:
    sink, folder = _failing_jsonl(tmp_path)
    store = EventStore.open(str(tmp_path / "site.db"), create=True)
    events = make_events(21)
    with Lines(logging.getLogger("pacsguard")) as lines, ExitStack() as stack:
        bus = open_outputs(stack, store, [sink]).bus
        for event in events[:20]:  # twenty batches, each failing in the sink
            bus.publish(event)
            assert bus.flush(10)
        folder.mkdir()
        bus.publish(events[20])
        assert bus.flush(10)
    about = [m for m in lines.messages if "JsonLinesSink" in m]
    assert len(about) == 2, about
    assert about[0].startswith("sink JsonLinesSink failed: ") and "moved or removed" in about[0]
    assert about[1].startswith("sink JsonLinesSink recovered: it takes events again after 20 failed batches")
    assert len((folder / "events.jsonl").read_text().splitlines()) == 1
    reopened = EventStore.open(str(tmp_path / "site.db"))
    try:
        assert reopened.size() == 21  # the store recorded every event all along
    finally:
        reopened.close()


def test_a_lasting_failure_is_summed_up_once_per_interval(tmp_path: Path) -> None:
    from pacsguard.events.sink import SinkFailureLog  # here: the test above runs on the code before it too

    sink, folder = _failing_jsonl(tmp_path)
    store = EventStore.open(str(tmp_path / "site.db"), create=True)
    now = [0.0]
    logger = logging.getLogger("pacsguard.test_r7b_witread")
    failures = SinkFailureLog(logger, clock=lambda: now[0])
    assert failures.interval == REPEAT_LOG_S
    fan = FanOut(store, [sink], on_error=failures.failed, on_recovered=failures.recovered)
    events = iter(make_events(12))
    try:
        with Lines(logger) as lines:
            for at in (0, 1, 2, 3, 4, 5, REPEAT_LOG_S + 1, REPEAT_LOG_S + 2):
                now[0] = at
                fan.emit([next(events)])
            assert len(lines.messages) == 2, lines.messages
            assert lines.messages[1].startswith("sink JsonLinesSink still failing: 6 more failed batches since "
                                                f"the last line, 7 since {REPEAT_LOG_S + 1:.0f} s ago; latest: ")
            folder.mkdir()
            now[0] = REPEAT_LOG_S + 10
            fan.emit([next(events)])
            fan.emit([next(events)])  # working again: no more lines
        assert len(lines.messages) == 3, lines.messages
        assert lines.messages[2].startswith(f"sink JsonLinesSink recovered: it takes events again after 8 failed "
                                            f"batches over {REPEAT_LOG_S + 10:.0f} s")
        assert store.size() == 10
    finally:
        fan.close()


def test_each_outage_starts_with_a_line_of_its_own(tmp_path: Path) -> None:
    from pacsguard.events.sink import SinkFailureLog

    sink, folder = _failing_jsonl(tmp_path)
    store = EventStore.open(str(tmp_path / "site.db"), create=True)
    logger = logging.getLogger("pacsguard.test_r7b_witread")
    # Interval 0: a line per failure would be due; only a recovery in between makes it a first line.
    fan = FanOut(store, [sink], on_error=(failures := SinkFailureLog(logger, 0.0)).failed,
                 on_recovered=failures.recovered)
    events = iter(make_events(3))
    try:
        with Lines(logger) as lines:
            fan.emit([next(events)])
            folder.mkdir()
            fan.emit([next(events)])
            shutil.rmtree(folder)
            fan.emit([next(events)])
        assert [m.split(":")[0] for m in lines.messages] == ["sink JsonLinesSink failed", "sink JsonLinesSink "
                                                             "recovered", "sink JsonLinesSink failed"], lines.messages
    finally:
        fan.close()
