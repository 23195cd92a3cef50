"""The kinds of Event `serve` itself records (docs/events.md)."""

from __future__ import annotations

from pacsguard.events.kinds import INTEGER, NUMBER, STRING, EventKind

KINDS = (
    EventKind("pacsguard.service.started", "`pacsguard serve` started", {"config": STRING}),
    EventKind("pacsguard.service.stopped", "`pacsguard serve` stopped: cleanly, or with `error` when a service "
              "could not start or failed", {"error": STRING}),
    EventKind("pacsguard.recording.failed", "events cannot be made durable (store or journal not writable): "
              "routes refuse or relay unrecorded per `on_record_failure` (docs/store.md)",
              {"error": STRING, "spooled": INTEGER}, required=("error",)),
    EventKind("pacsguard.recording.recovered", "events are durable again; marks the gap: `failed_since`, "
              "`seconds`, and events `dropped` because the spool in memory was full",
              {"error": STRING, "seconds": NUMBER, "dropped": INTEGER, "failed_since": STRING},
              required=("seconds", "dropped")),
)
