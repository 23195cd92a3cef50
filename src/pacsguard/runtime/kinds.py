"""The kinds of Event `serve` itself records (docs/events.md)."""

from __future__ import annotations

from pacsguard.events.kinds import STRING, EventKind

KINDS = (
    EventKind("pacsguard.service.started", "`pacsguard serve` started", {"config": STRING}),
    EventKind("pacsguard.service.stopped", "`pacsguard serve` stopped: cleanly, or with `error` when a service "
              "could not start or failed", {"error": STRING}),
)
