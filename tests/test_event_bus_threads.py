"""The event bus taking events from several threads at once, as a store-and-forward route's
worker threads publish each object's records while the writer thread batches them."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence

from pacsguard.events import Event
from pacsguard.events.bus import EventBus


class Counting:
    """A sink that counts what it is given."""

    def __init__(self) -> None:
        self.count = 0

    def emit(self, batch: Sequence[Event]) -> None:
        self.count += len(batch)


class Yielding(deque):  # type: ignore[type-arg]
    """A queue whose iteration lets other threads run between two items, as a thread switch in
    the middle of the writer's slice would (an outside tester saw one on a busy gateway)."""

    def __iter__(self) -> Iterator[Event]:
        for item in super().__iter__():
            time.sleep(0)
            yield item


def test_events_published_from_many_threads_all_reach_the_sink() -> None:
    """The writer sliced its batch off the queue while publishers could append to it: "deque
    mutated during iteration" ended the writer thread, and every later event reached the journal
    only, never the store."""
    died: list[str] = []
    hook = threading.excepthook
    threading.excepthook = lambda a: died.append(f"{a.thread.name if a.thread else '?'}: {a.exc_value!r}")
    sink = Counting()
    bus = EventBus(sink, max_delay=0.0005, max_batch=64)
    bus._queue = Yielding(bus._queue)  # the writer reads the attribute on each pass
    event = Event("gateway.object.received", "gateway")
    threads, each = 4, 2_000
    try:
        publishers = [threading.Thread(target=lambda: [bus.publish(event) for _ in range(each)])
                      for _ in range(threads)]
        for t in publishers:
            t.start()
        for t in publishers:
            t.join()
        assert bus.flush(30), f"the writer did not catch up: {died}"
        assert died == []
        assert bus.writing
        assert sink.count == threads * each
    finally:
        threading.excepthook = hook
        bus.close(5)
