"""Quarantine: cut a device (host, AE title, or one AE title on one host) off the PACS at once —
the "disconnect the infected modality" action — and the hook the IPS calls.

A target is a host address, an AE title, or a pair ``AE@host``. An inline rule quarantines the pair
it caught unless `gateway.quarantine_scope` is ``host``, and never a host in `gateway.admin_hosts`
(`QuarantinePolicy`): one misconfigured device behind a NAT or on a shared workstation must not cut
off every AE title of that host by default.

The quarantine list is not a table of its own: it is the fold of the `gateway.quarantine.added`
and `gateway.quarantine.removed` events in the store. So every change is audited and sealed like
any other event, and every gateway that reports to the same store (PostgreSQL) enforces it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from typing import Literal

from pacsguard.events import Event, Party, Severity
from pacsguard.events.model import utc_now

ADDED = "gateway.quarantine.added"
REMOVED = "gateway.quarantine.removed"
ENFORCED = "gateway.quarantine.enforced"
SPARED = "gateway.quarantine.spared"


def is_host(target: str) -> bool:
    try:
        ip_address(target)
    except ValueError:
        return False
    return True


def check_target(target: str) -> str:
    """``target`` as a quarantine can match it: an IP address, an AE title (PS3.5 Table 6.2-1 AE:
    1-16 characters, no backslash) or AE@address; ValueError naming what is wrong otherwise. A
    network (`10.30.1.0/24`), an address with an octet past 255 or a 17-character title would be
    stored and match no device, while the administrator reads "quarantined"."""
    from pacsguard.config.schema import check_ae_title

    target = target.strip()  # pasted with a space: "127.0.0.1 " would be an AE title
    if is_host(target):
        return canonical(target)
    ae_title, sep, host = target.rpartition("@")
    if sep and ae_title:
        if not is_host(host.strip()):
            raise ValueError(f"{target!r}: {host!r} after the @ is not an IP address")
        # An AE title's leading and trailing spaces are not significant (PS3.5 Table 6.2-1 AE).
        return pair(check_ae_title(ae_title), canonical(host.strip()))
    try:
        ip_network(target, strict=False)
    except ValueError:
        pass
    else:  # "/" and digits: a network
        raise ValueError(f"{target!r} is a network: quarantine takes one address (or an AE title, AE@address)")
    if all(part.isdigit() for part in target.split(".")) and "." in target:
        raise ValueError(f"{target!r} is not an IP address (each IPv4 part is 0-255)")
    return check_ae_title(target)


def canonical(host: str) -> str:
    """One spelling per address, as connections report theirs: an IPv4-mapped IPv6 address
    (::ffff:10.0.0.1, what a dual-stack socket reports for an IPv4 client) is its IPv4 address, an
    IPv6 address its compressed lower-case form (RFC 5952). Anything else is returned as it is."""
    try:
        address = ip_address(host)
    except ValueError:
        return host
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped if mapped is not None else address)


def pair(ae_title: str, host: str) -> str:
    """The target naming one calling AE title on one host."""
    return f"{ae_title}@{host}"


def split_pair(target: str) -> tuple[str, str] | None:
    """``(AE title, host)`` of a pair target, or None for a host or an AE title alone."""
    ae_title, sep, host = target.rpartition("@")  # an AE title may hold "@", an address never does
    return (ae_title, host) if sep and ae_title and is_host(host) else None


def party_of(target: str) -> Party:
    """The device a target names, as an event's party."""
    both = split_pair(target)
    if both is not None:
        return Party(ae_title=both[0], host=both[1])
    return Party(host=target) if is_host(target) else Party(ae_title=target)


@dataclass(frozen=True, slots=True)
class QuarantinePolicy:
    """What an inline rule's quarantine takes (`gateway.quarantine_scope`, `gateway.admin_hosts`)."""

    scope: Literal["pair", "host"] = "pair"
    admin_hosts: tuple[IPv4Network | IPv6Network, ...] = field(default=())

    def target(self, host: str, calling_ae: str | None) -> tuple[str | None, str]:
        """The target to quarantine for a source, or None and why nothing is quarantined."""
        try:
            address = ip_address(host.split("%", 1)[0])
        except ValueError:
            return None, f"source {host!r} is not an IP address"
        if any(address in net for net in self.admin_hosts):
            return None, f"{host} is listed in gateway.admin_hosts"
        if self.scope == "host":
            return host, ""
        if not calling_ae:
            return None, (f"no calling AE title is known on this connection from {host}, and "
                          "gateway.quarantine_scope is pair")
        return pair(calling_ae, host), ""


@dataclass(frozen=True, slots=True)
class Entry:
    """One quarantined target. ``until`` is the wall-clock end as recorded (what is shown);
    ``deadline`` the same end on this process's monotonic clock, fixed when the entry was folded in,
    which is what a running gateway enforces: an NTP step or a date set by hand moves the first,
    not the second, so a 1 h quarantine neither ends at once when the date jumps a day forward nor
    lasts an hour more when it steps an hour back."""

    target: str
    until: datetime | None
    reason: str
    by: str
    deadline: float | None = field(default=None, compare=False)
    event_id: str = field(default="", compare=False)

    def active(self, now: datetime | None = None) -> bool:
        """In force at wall-clock ``now`` (as given), or, without one, on the monotonic clock."""
        if self.until is None:
            return True
        if now is not None or self.deadline is None:
            return (now or datetime.now(timezone.utc)) < self.until
        return time.monotonic() < self.deadline


def _deadline(until: datetime, recorded: datetime, now: datetime) -> float:
    """``until`` on the monotonic clock: the time left of the recorded duration, counting the time
    since the event was recorded by the wall clock, but never less than none of it (the clock went
    back since) nor more than all of it."""
    duration = max(0.0, (until - recorded).total_seconds())
    elapsed = min(max(0.0, (now - recorded).total_seconds()), duration)
    return time.monotonic() + duration - elapsed


def change_event(action: str, target: str, *, duration: timedelta | None = None, reason: str = "",
                 user: str | None = None, component: str = "gateway") -> Event:
    """The event that adds or removes a quarantine entry."""
    party = party_of(target)
    until = utc_now() + duration if duration else None
    added = action == "add"
    return Event(kind=ADDED if added else REMOVED, component=component,
                 severity=Severity.WARNING if added else Severity.NOTICE,
                 actor=Party(user=user), target=party,
                 message=(f"quarantined {target}" + (f" until {until:%Y-%m-%d %H:%M:%SZ}" if until else "")
                          + (f": {reason}" if reason else "")) if added else f"released {target} from quarantine",
                 details={"target": target, "until": until.isoformat() if until else None, "reason": reason})


#: QuarantineList drops expired entries once it holds this many (and again each time it doubles).
PRUNE_AT = 1024


class QuarantineList:
    """The current quarantine, folded from change events in store order.

    Expired entries are dropped as new ones arrive (once the list has doubled since the last sweep),
    so it holds about twice the active quarantine at most, however many a flood of sources caused.
    """

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._prune_at = PRUNE_AT

    def __len__(self) -> int:
        """Entries held, expired ones not yet dropped included."""
        return len(self._entries)

    def apply(self, event: Event) -> None:
        target = _canonical_target(str(event.details.get("target", "")))
        if not target:
            return
        if event.kind == ADDED:
            held = self._entries.get(target)
            if held is not None and held.event_id == event.id:
                return  # applied as published, read back from the store: keep its deadline
            self._entries[target] = _entry(target, event)
            if len(self._entries) > self._prune_at:
                self._entries = {k: e for k, e in self._entries.items() if e.active()}
                self._prune_at = max(PRUNE_AT, 2 * len(self._entries))
        elif event.kind == REMOVED:
            self._entries.pop(target, None)

    def match(self, host: str | None, ae_title: str | None, now: datetime | None = None) -> Entry | None:
        host = canonical(host) if host else host
        both = pair(ae_title, host) if host and ae_title else None
        for key in (host, ae_title, both):
            entry = self._entries.get(key) if key else None
            if entry is not None and entry.active(now):
                return entry
        return None

    def active(self, now: datetime | None = None) -> list[Entry]:
        return sorted((e for e in self._entries.values() if e.active(now)), key=lambda e: e.target)


def _entry(target: str, event: Event) -> Entry:
    """The entry an added event makes, its deadline counted from now on the monotonic clock."""
    text = event.details.get("until")
    until = _aware(datetime.fromisoformat(text)) if text else None
    deadline = _deadline(until, _aware(event.time), datetime.now(timezone.utc)) if until else None
    return Entry(target, until, str(event.details.get("reason", "")), event.actor.user or event.component,
                 deadline, event.id)


def _aware(moment: datetime) -> datetime:
    """A recorded time without a zone is UTC (as pacsguard records them)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _canonical_target(target: str) -> str:
    """A recorded target in the spelling `match` compares (events recorded before `check_target`
    canonicalised them, or by another tool, may spell an address otherwise)."""
    try:
        return check_target(target)
    except ValueError:  # recorded by an older pacsguard or another tool: kept as it is
        return target.strip()
