"""Raising a recording failure loudly: when the bus cannot make events durable (the store's disk
is full, its database is down, the journal cannot be written), every process that publishes says
so in its log at once and records `pacsguard.recording.failed`; when writing works again it
records `pacsguard.recording.recovered`, which marks the gap: since when, for how long, and how
many events were dropped because the spool in memory was full (docs/store.md).

A failure that lasts is raised once, then again every `REMIND_EVERY_S` while it lasts (the bus
reports every failed retry, up to one every two seconds); "recovered" is said only when the bus has
recovered, that is when the store and the journal both take writes again.

The alert events take the bus's ordinary path: the store gets them once it writes again, and the
secondary sinks (syslog, JSON lines) at the next retry, since a failing store no longer stops
them (pacsguard.events.sink.FanOut). /healthz reports the same state (pacsguard.metrics).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone

from pacsguard.events.bus import EventBus, WriteHealth
from pacsguard.events.model import Event, Outcome, Severity

log = logging.getLogger("pacsguard")

FAILED = "pacsguard.recording.failed"
RECOVERED = "pacsguard.recording.recovered"

#: While recording keeps failing, RECORDING FAILED is raised again (log line and event) this often
#: (seconds): an operator who missed the first alert learns that the outage goes on, at a rate
#: that neither floods the log nor fills a nearly full disk with alerts.
REMIND_EVERY_S = 900.0


class RecordingAlarm:
    """A bus WriteListener that turns the bus's failing and recovering into log lines and Events."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self._raised_at: float | None = None  # monotonic time of the latest alert of this outage
        # The bus's writer and journal threads both report failures: one alert between them.
        self._lock = threading.Lock()

    def durable(self, count: int) -> None:
        """Nothing to say while events are written."""

    def failed(self, health: WriteHealth) -> None:
        now = time.monotonic()
        with self._lock:
            if self._raised_at is not None and now - self._raised_at < REMIND_EVERY_S:
                return
            first = self._raised_at is None
            self._raised_at = now
        if first:
            log.critical("RECORDING FAILED: events cannot be made durable (%s); routes with on_record_failure: "
                         "refuse refuse new associations and requests until it recovers, routes with relay go on "
                         "unrecorded (events held in memory: %d)", health.error, health.spooled)
            message = f"events cannot be made durable: {health.error}"
        else:
            lasted = _lasted(health)
            log.critical("RECORDING STILL FAILING for %.0f s: events cannot be made durable (%s; events held in "
                         "memory: %d)", lasted, health.error, health.spooled)
            message = f"events still cannot be made durable, for {lasted:.0f} s now: {health.error}"
        self.bus.publish(Event(kind=FAILED, component="serve", severity=Severity.ALERT,
                               outcome=Outcome.MAJOR_FAILURE, message=message,
                               details={"error": health.error, "spooled": health.spooled}))

    def recovered(self, health: WriteHealth, until: float) -> None:
        with self._lock:
            self._raised_at = None
        since = health.failing_since if health.failing_since is not None else until
        seconds = round(health.failing_for(), 3)
        lost = f"; {health.dropped} events were dropped (the spool was full)" if health.dropped else ""
        log.warning("recording recovered after %.1f s (%s)%s", seconds, health.error, lost)
        self.bus.publish(Event(kind=RECOVERED, component="serve",
                               severity=Severity.ALERT if health.dropped else Severity.WARNING,
                               outcome=Outcome.MAJOR_FAILURE if health.dropped else Outcome.SUCCESS,
                               message=f"events are durable again after {seconds:g} s{lost}",
                               details={"error": health.error, "seconds": seconds, "dropped": health.dropped,
                                        "failed_since": datetime.fromtimestamp(since, timezone.utc).isoformat()}))


def _lasted(health: WriteHealth) -> float:
    """Seconds since the bus began failing."""
    return health.failing_for()
