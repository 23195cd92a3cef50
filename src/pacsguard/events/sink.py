"""Where Events go. A part hands Events to an `EventSink`; it never knows which sinks are behind it."""

from __future__ import annotations

from typing import Callable, Iterable, Protocol, Sequence

from pacsguard.events.model import Event


class EventSink(Protocol):
    """Anything that takes batches of Events: the store, a JSON-lines file, syslog, a test list."""

    def emit(self, events: Sequence[Event]) -> None: ...

    def close(self) -> None: ...


class FanOut:
    """Hands every batch to each sink in turn. A failing secondary sink (syslog down) must not stop
    the store from recording, so errors of sinks after the first are reported, not raised."""

    def __init__(self, primary: EventSink, others: Iterable[EventSink] = (),
                 on_error: Callable[[EventSink, Exception], None] | None = None) -> None:
        self.primary = primary
        self.others = list(others)
        self.on_error = on_error

    def emit(self, events: Sequence[Event]) -> None:
        self.primary.emit(events)
        for sink in self.others:
            try:
                sink.emit(events)
            except Exception as exc:  # noqa: BLE001 - a SIEM outage must not lose the stored record
                if self.on_error is not None:
                    self.on_error(sink, exc)

    def close(self) -> None:
        for sink in [self.primary, *self.others]:
            sink.close()


class ListSink:
    """Keeps events in memory: for tests and for `ids rules test`."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, events: Sequence[Event]) -> None:
        self.events.extend(events)

    def close(self) -> None:
        pass
