"""The one event stream: parts `publish()` Events without blocking; a writer thread batches them
into the sink (the store, fanned out to JSON lines and syslog).

Publishing is a deque append, so the gateway's hot path never waits on SQLite or a SIEM. If the
sink fails (database down, disk full), the batch stays queued and is retried; `flush()` tells a
caller when everything published so far is durable. `subscribe()` follows the stream live (see
pacsguard.events.subscription for the delivery guarantee).

Durability per event: `publish_ticket()` returns the event's ticket, its place in the stream; the
event is durable once `durable_count` reaches it: it is in the sink, or in the write-ahead journal
(pacsguard.events.journal) when the bus has one. A publisher that must not go on before its record
is durable (the gateway holding a C-STORE-RSP) calls `hurry()` and waits for a `WriteListener` to
report that count (pacsguard.events.durable bridges it to asyncio). Group commit: whatever was
published while one append (or one batch) was being written goes into the next, so waiters on many
associations share one fdatasync (or one commit).

While the sink fails, at most ``max_spool`` events are held in memory; later ones are dropped and
counted (`WriteHealth.dropped`), and the listeners are told when writing fails and recovers, so
the gap is recorded once the sink takes events again.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from pacsguard.events.journal import Journal, JournalWriter
from pacsguard.events.model import Event
from pacsguard.events.sink import EventSink
from pacsguard.events.subscription import Subscription

log = logging.getLogger("pacsguard.events")

#: While one part keeps failing, its error line (with the latest error) is repeated at most this
#: often (seconds), with the count of attempts since: a line per retry (every 2 s) fills the log of
#: a long outage, and with a full disk the disk that the outage is about.
REPEAT_LOG_S = 60.0


@dataclass(frozen=True, slots=True)
class WriteStats:
    """What the writer has done so far (read by the metrics part): batches the sink accepted, the
    events in them, the seconds its emit() took in total, failed attempts, and whether the latest
    attempt failed (the events are then held for retry)."""

    batches: int
    events: int
    seconds: float
    failures: int
    failing: bool


@dataclass(frozen=True, slots=True)
class WriteHealth:
    """Whether the sink takes events: since when it fails (epoch seconds, None while it writes), the
    latest error, events held for retry and events dropped because the spool was full.
    ``failing_since_monotonic`` is the same start on the monotonic clock: how long it has failed is
    measured on that one, so an NTP step or a date set by hand during an outage does not make it
    negative or a day long."""

    failing_since: float | None
    error: str
    spooled: int
    dropped: int
    failing_since_monotonic: float | None = None

    def failing_for(self) -> float:
        """Seconds the sink has failed so far (0 while it writes)."""
        if self.failing_since_monotonic is None:
            return 0.0
        return max(0.0, time.monotonic() - self.failing_since_monotonic)


class WriteListener(Protocol):
    """Told by the writer thread what happened to the stream; must return quickly (hand work to
    another thread or loop), since the writer waits for it."""

    def durable(self, count: int) -> None:
        """Every event up to ticket ``count`` is durable (in the sink or the journal)."""

    def failed(self, health: WriteHealth) -> None:
        """A write failed; called on every failed attempt (``health.failing_since`` is the first)."""

    def recovered(self, health: WriteHealth, until: float) -> None:
        """The sink took a batch again after failing from ``health.failing_since`` to ``until``."""


class EventBus:
    MAX_BATCH = 65_536
    MAX_SPOOL = 200_000

    # Group commit: a quiet system writes every max_delay what came in (a few events); under load
    # batches grow up to max_batch, a store bucket's worth: the store's commit rewrites the pages of
    # the current bucket that the batch's patients fall in, so it is paid per batch (bench/store.py,
    # 1M events on SQLite, every event another patient: 56k events/s in batches of 65,536, 43k in 20,000).
    def __init__(self, sink: EventSink, *, max_batch: int = MAX_BATCH, max_delay: float = 0.05,
                 on_error: Callable[[Exception], None] | None = None, max_spool: int = MAX_SPOOL,
                 journal: Journal | None = None, backlog: Sequence[Event] = ()) -> None:
        """``journal``: where events become durable before the sink takes them; ``backlog``: events
        of an earlier run that the journal holds and the sink does not (written first)."""
        self.sink = sink
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.max_spool = max_spool
        self.on_error = on_error
        self._queue: deque[Event] = deque(backlog)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Condition()
        # A ticket is the event's place in the queue's order, so the two are taken under one lock.
        self._publish_lock = threading.Lock()
        self._published = len(self._queue)
        self._dropped = 0
        self._failing_since: float | None = None
        self._failing_since_monotonic: float | None = None
        self._errors: dict[str, str] = {}  # what fails ("sink", "journal") -> its latest error
        # what fails -> (when its error line was logged, failed attempts not logged since)
        self._logged: dict[str, tuple[float, int]] = {}
        self._error = ""
        self._failure_lock = threading.Lock()
        self._listeners: tuple[WriteListener, ...] = ()
        self._written = 0
        self._batches = 0
        self._write_seconds = 0.0
        self._failures = 0
        self._failing = False
        self._subscribers: tuple[Subscription, ...] = ()
        self._subscribers_lock = threading.Lock()
        # The backlog is in the journal already: durable, not yet in the sink.
        self._journal = JournalWriter(journal, self, journaled=self._published) if journal is not None else None
        self._thread = threading.Thread(target=self._run, name="pacsguard-event-writer", daemon=True)
        self._thread.start()

    def publish(self, event: Event) -> None:
        """Queue ``event`` for the sink (see `publish_ticket`)."""
        self.publish_ticket(event)

    def publish_ticket(self, event: Event) -> int | None:
        """Queue ``event``; returns its ticket (durable once `durable_count` reaches it), or None when the
        sink fails and the spool is full, so the event is dropped (counted for the gap record)."""
        with self._publish_lock:
            if self._failing and len(self._queue) >= self.max_spool:
                self._dropped += 1
                return None
            self._queue.append(event)
            self._published = ticket = self._published + 1
            if self._journal is not None:
                self._journal.pending.append((ticket, event))
        if len(self._queue) >= self.max_batch:
            self._wake.set()
        return ticket

    def hurry(self) -> None:
        """Someone waits for the events published so far: make them durable now, not after max_delay."""
        if self._journal is not None:
            self._journal.wake.set()
        else:
            self._wake.set()

    @property
    def published(self) -> int:
        """The ticket of the last event published (every one up to it queued or written)."""
        return self._published

    @property
    def backlog(self) -> int:
        """Events published and not yet in the sink (queued, or kept while it fails)."""
        return len(self._queue)

    @property
    def written(self) -> int:
        """The ticket up to which every event is in the sink."""
        return self._written

    @property
    def durable_count(self) -> int:
        """The ticket up to which every event is durable: in the sink, or in the journal."""
        if self._journal is None:
            return self._written
        return max(self._written, self._journal.journaled)

    def report_durable(self) -> None:
        """Tell the listeners how far the stream is durable (the writing threads call it)."""
        count = self.durable_count
        for listener in self._listeners:
            listener.durable(count)

    def listen(self, listener: WriteListener) -> None:
        """Tell ``listener`` about every write, failure and recovery from now on."""
        self._listeners = (*self._listeners, listener)

    def health(self) -> WriteHealth:
        return WriteHealth(self._failing_since, self._error, len(self._queue), self._dropped,
                           self._failing_since_monotonic)

    def subscribe(self, callback: Callable[[Event], None], *, max_pending: int = 100_000) -> Subscription:
        """Call ``callback`` with every Event written from now on, on its own thread; thread-safe.
        Call ``unsubscribe()`` on the returned Subscription to stop."""
        subscription = Subscription(callback, max_pending=max_pending)
        with self._subscribers_lock:
            self._subscribers = (*self._subscribers, subscription)
        return subscription

    def _deliver(self, batch: list[Event]) -> None:
        # The tuple is replaced, never changed in place, so the writer reads it without the lock.
        live = tuple(s for s in self._subscribers if s.active)
        if len(live) != len(self._subscribers):
            with self._subscribers_lock:
                self._subscribers = tuple(s for s in self._subscribers if s.active)
        for subscription in live:
            subscription.offer(batch)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every event published before this call is in the sink."""
        target = self._published
        self._wake.set()
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._written < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.1))
        return True

    def close(self, timeout: float = 30.0) -> None:
        if not self.flush(timeout):
            # Said once, with the count: a stop during an outage must not lose events silently.
            kept = "journaled, replayed at the next start" if self._journal is not None else \
                "lost: no journal holds them (store.journal)"
            log.error("event writer: %d events not written to the store at shutdown (it %s within %.0f s): %s",
                      len(self._queue), "kept failing" if self._failing else "did not finish", timeout, kept)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        if self._journal is not None:
            self._journal.stop(timeout)
        for subscription in self._subscribers:
            subscription.unsubscribe(timeout)

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def oldest_pending_time_us(self) -> int | None:
        """The time of the oldest event not yet in the sink, or None when all are written."""
        try:
            return self._queue[0].time_us
        except IndexError:  # emptied by the writer between a check and the read: nothing pending
            return None

    @property
    def failing(self) -> bool:
        """True from a failed write to the sink until the next successful one."""
        return self._failing

    @property
    def writing(self) -> bool:
        """True while the writer thread runs and its latest write to the sink succeeded."""
        return self._thread.is_alive() and not self._failing

    def stats(self) -> WriteStats:
        return WriteStats(self._batches, self._written, self._write_seconds, self._failures, self._failing)

    def _run(self) -> None:
        backoff = 0.1
        while True:
            self._wake.wait(self.max_delay)
            self._wake.clear()
            while self._queue:
                # Under the publishers' lock: a deque appended to while it is iterated raises
                # RuntimeError, which ended this thread (events then reached the journal only).
                with self._publish_lock:
                    batch = list(itertools.islice(self._queue, self.max_batch))
                began = time.perf_counter()
                try:
                    self.sink.emit(batch)
                except Exception as exc:  # noqa: BLE001 - keep the events and retry; report the cause
                    self._failed(exc)
                    # Retry soon while the outage is young (a busy database), less often later.
                    if self._stop.wait(backoff):
                        return
                    backoff = min(backoff * 2, 2.0)
                    continue
                backoff = 0.1
                self._write_seconds += time.perf_counter() - began
                self._batches += 1
                for _ in batch:
                    self._queue.popleft()
                with self._idle:
                    self._written += len(batch)
                    self._idle.notify_all()
                try:
                    self.succeeded("sink")
                    self.report_durable()
                    self._deliver(batch)
                except Exception:  # a listener's or subscriber's fault must not end the writer
                    log.exception("event writer: telling listeners of %d written events failed", len(batch))
            if self._stop.is_set():
                return

    def _failed(self, exc: Exception) -> None:
        if self.on_error:
            self.on_error(exc)
        self.failed("sink", exc)

    def failed(self, what: str, exc: BaseException) -> None:
        """``what`` ("sink", "journal") could not be written; the bus is failing until every one is
        written again. Called by the thread that writes it."""
        with self._failure_lock:
            self._failures += 1
            if self._failing_since is None:
                self._failing_since = time.time()  # shown as a date; durations use the monotonic one
                self._failing_since_monotonic = time.monotonic()
            self._error = self._errors[what] = f"{what}: {exc or type(exc).__name__}"
            self._failing = True
            unlogged = self._unlogged(what)
        if unlogged is not None:
            again = f" ({unlogged} more failed attempts since the last line)" if unlogged else ""
            log.error("event %s failed, %d events kept for retry: %s%s", what, len(self._queue), exc, again)
        health = self.health()
        for listener in self._listeners:
            listener.failed(health)

    def _unlogged(self, what: str) -> int | None:
        """When this failure of ``what`` is to be logged (its first, or REPEAT_LOG_S after the last
        line), the failed attempts not logged since; None to stay quiet. Under the failure lock."""
        now = time.monotonic()
        last = self._logged.get(what)
        if last is None or now - last[0] >= REPEAT_LOG_S:
            self._logged[what] = (now, 0)
            return 0 if last is None else last[1]
        self._logged[what] = (last[0], last[1] + 1)
        return None

    def succeeded(self, what: str) -> None:
        """``what`` was written; when nothing else fails, the bus has recovered."""
        if what not in self._errors:
            return
        with self._failure_lock:
            self._errors.pop(what, None)
            self._logged.pop(what, None)
            if self._errors or not self._failing:
                return
            health = self.health()
            with self._publish_lock:
                self._failing = False
                self._failing_since = self._failing_since_monotonic = None
                self._dropped = 0
        for listener in self._listeners:
            listener.recovered(health, time.time())
