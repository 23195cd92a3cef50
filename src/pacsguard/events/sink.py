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
    the store from recording, so errors of sinks after the first are reported, not raised.

    A failing primary (the store's disk full) must not silence the others either: they get the
    batch at once, and the primary's error is raised afterwards so the bus retries it. The ids of
    events the others already have are kept until the primary takes them, so a retried batch
    reaches each secondary sink once."""

    def __init__(self, primary: EventSink, others: Iterable[EventSink] = (),
                 on_error: Callable[[EventSink, Exception], None] | None = None) -> None:
        self.primary = primary
        self.others = list(others)
        self.on_error = on_error
        self._ahead: set[str] = set()  # given to the others, not yet taken by the primary

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
                if self.on_error is not None:
                    self.on_error(sink, exc)

    def close(self) -> None:
        for sink in [self.primary, *self.others]:
            sink.close()
