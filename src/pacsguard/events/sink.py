"""Where Events go. A part hands Events to an `EventSink`; it never knows which sinks are behind it."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable, Protocol, Sequence

from pacsguard.events.model import Event


class EventSink(Protocol):
    """Anything that takes batches of Events: the store, a JSON-lines file, syslog, a test list."""

    def emit(self, events: Sequence[Event]) -> None: ...

    def close(self) -> None: ...


class FanOut:
    """Hands every batch to each sink in turn. A failing secondary sink (syslog down) must not stop
    the store from recording, so errors of sinks after the first are reported, not raised.

    A failing primary (the store's disk full) must not silence the others either: they get the
    batch at once, and the primary's error is raised afterwards so the bus retries it. The ids of
    events the others already have are kept until the primary takes them, so a retried batch
    reaches each secondary sink once."""

    def __init__(self, primary: EventSink, others: Iterable[EventSink] = (),
                 on_error: Callable[[EventSink, Exception], None] | None = None,
                 on_recovered: Callable[[EventSink], None] | None = None) -> None:
        self.primary = primary
        self.others = list(others)
        self.on_error = on_error
        self.on_recovered = on_recovered  # a secondary sink took a batch again after failing
        self._ahead: set[str] = set()  # given to the others, not yet taken by the primary
        self._failing: set[int] = set()  # id() of the secondary sinks whose latest batch failed

    def emit(self, events: Sequence[Event]) -> None:
        if not self.others:
            self.primary.emit(events)
            return
        fresh = [e for e in events if e.id not in self._ahead] if self._ahead else events
        try:
            self.primary.emit(events)
        except Exception:
            self._secondary(fresh)
            self._ahead.update(e.id for e in fresh)
            raise
        if self._ahead:
            self._ahead.difference_update(e.id for e in events)
        self._secondary(fresh)

    def _secondary(self, events: Sequence[Event]) -> None:
        if not events:
            return
        for sink in self.others:
            try:
                sink.emit(events)
            except Exception as exc:  # noqa: BLE001 - a SIEM outage must not lose the stored record
                self._failing.add(id(sink))
                if self.on_error is not None:
                    self.on_error(sink, exc)
                continue
            if self._failing and id(sink) in self._failing:
                self._failing.discard(id(sink))
                if self.on_recovered is not None:
                    self.on_recovered(sink)

    def close(self) -> None:
        for sink in [self.primary, *self.others]:
            sink.close()


class SinkFailureLog:
    """The log lines of failing secondary sinks, as the EventBus words the store's (its
    REPEAT_LOG_S): the first failure at once, then while the sink keeps failing at most one line
    per ``interval`` seconds with the count of failed batches since and the latest error, and one
    line when it takes a batch again. A line per failed batch (up to ~20 a second, one per group
    commit) fills the log of a long outage, and with a full disk the disk the outage is about."""

    def __init__(self, log: logging.Logger, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if interval is None:
            from pacsguard.events.bus import REPEAT_LOG_S  # bus imports this module: not at its top

            interval = REPEAT_LOG_S
        self.log = log
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        # id(sink) -> (when it began failing, when the last line was logged, failed batches in all,
        # failed batches since that line)
        self._state: dict[int, tuple[float, float, int, int]] = {}

    def failed(self, sink: EventSink, exc: Exception) -> None:
        now = self.clock()
        with self._lock:
            began, last, total, unlogged = self._state.get(id(sink), (now, -1.0, 0, 0))
            total += 1
            first = last < 0
            due = first or now - last >= self.interval
            self._state[id(sink)] = (began, now if due else last, total, 0 if due else unlogged + 1)
        if first:
            self.log.warning("sink %s failed: %s (while it keeps failing, a line sums up its failures at most "
                             "every %.0f s)", _name(sink), exc, self.interval)
        elif due:
            self.log.warning("sink %s still failing: %d more failed batches since the last line, %d since %.0f s "
                             "ago; latest: %s", _name(sink), unlogged + 1, total, now - began, exc)

    def recovered(self, sink: EventSink) -> None:
        with self._lock:
            state = self._state.pop(id(sink), None)
        if state is not None:
            began, _, total, _ = state
            self.log.warning("sink %s recovered: it takes events again after %d failed batches over %.0f s "
                             "(the events of those batches did not reach it)", _name(sink), total,
                             self.clock() - began)


def _name(sink: EventSink) -> str:
    return type(sink).__name__
