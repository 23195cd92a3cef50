"""Quarantine: cut a device (host or AE title) off the PACS at once — the "disconnect the
infected modality" action — and the hook the IPS calls.

The quarantine list is not a table of its own: it is the fold of the `gateway.quarantine.added`
and `gateway.quarantine.removed` events in the store. So every change is audited and sealed like
any other event, and every gateway that reports to the same store (PostgreSQL) enforces it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from ipaddress import ip_address

from pacsguard.events import Event, Party, Severity
from pacsguard.events.model import utc_now

ADDED = "gateway.quarantine.added"
REMOVED = "gateway.quarantine.removed"
ENFORCED = "gateway.quarantine.enforced"


def is_host(target: str) -> bool:
    try:
        ip_address(target)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Entry:
    target: str
    until: datetime | None
    reason: str
    by: str

    def active(self, now: datetime) -> bool:
        return self.until is None or now < self.until


def change_event(action: str, target: str, *, duration: timedelta | None = None, reason: str = "",
                 user: str | None = None, component: str = "gateway") -> Event:
    """The event that adds or removes a quarantine entry."""
    party = Party(host=target) if is_host(target) else Party(ae_title=target)
    until = utc_now() + duration if duration else None
    added = action == "add"
    return Event(kind=ADDED if added else REMOVED, component=component,
                 severity=Severity.WARNING if added else Severity.NOTICE,
                 actor=Party(user=user), target=party,
                 message=(f"quarantined {target}" + (f" until {until:%Y-%m-%d %H:%M:%SZ}" if until else "")
                          + (f": {reason}" if reason else "")) if added else f"released {target} from quarantine",
                 details={"target": target, "until": until.isoformat() if until else None, "reason": reason})


class QuarantineList:
    """The current quarantine, folded from change events in store order."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}

    def apply(self, event: Event) -> None:
        target = str(event.details.get("target", ""))
        if not target:
            return
        if event.kind == ADDED:
            until = event.details.get("until")
            self._entries[target] = Entry(target, datetime.fromisoformat(until) if until else None,
                                          str(event.details.get("reason", "")), event.actor.user or event.component)
        elif event.kind == REMOVED:
            self._entries.pop(target, None)

    def match(self, host: str | None, ae_title: str | None, now: datetime | None = None) -> Entry | None:
        now = now or datetime.now(timezone.utc)
        for key in (host, ae_title):
            entry = self._entries.get(key) if key else None
            if entry is not None and entry.active(now):
                return entry
        return None

    def active(self, now: datetime | None = None) -> list[Entry]:
        now = now or datetime.now(timezone.utc)
        return sorted((e for e in self._entries.values() if e.active(now)), key=lambda e: e.target)
