"""What the SIEM formats share: severity on a 0-10 scale, addresses split from host names, the
decision an event records, and list values joined the DICOM way."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from ipaddress import ip_address
from typing import Iterable, Iterator

import orjson

from pacsguard import __version__
from pacsguard.events.model import NOBODY, Event, Party, Severity

VENDOR = "pacsguard"
PRODUCT = "pacsguard"
PRODUCT_VERSION = __version__

# DICOM's value delimiter (PS3.5 6.4): no Patient ID (LO) or UID (UI) may contain it (PS3.5 6.2),
# so the values of a multi-valued field stay separable after joining.
VALUE_DELIMITER = "\\"

# RFC 5424 6.2.1 numbers (0 = emergency) onto the 0-10 scale of CEF and LEEF (10 = most severe):
# CEF's bands are Low 0-3, Medium 4-6, High 7-8, Very-High 9-10.
_SCALE_10 = {
    Severity.EMERGENCY: 10,
    Severity.ALERT: 9,
    Severity.CRITICAL: 8,
    Severity.ERROR: 7,
    Severity.WARNING: 5,
    Severity.NOTICE: 3,
    Severity.INFO: 2,
    Severity.DEBUG: 1,
}


# C0 controls other than tab, LF and CR (which each format writes its own way), and DEL.
_CONTROLS = {code: "\ufffd" for code in (*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F)}


def without_controls(text: str) -> str:
    """`text` with NUL and the other control characters CEF and LEEF have no escape for replaced
    by U+FFFD. Neither grammar forbids them, but a collector or parser written in C ends a value
    (and the fields after it) at a NUL, so an AE title or a patient name holding one could hide the
    rest of the record from the SIEM. The store and the JSON formats keep the exact text."""
    return text.translate(_CONTROLS)


def severity_0_10(severity: Severity) -> int:
    """The event's RFC 5424 severity on the 0-10 scale (higher is more severe)."""
    return _SCALE_10[Severity(severity)]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A party's network side as SIEM formats want it: an address field, a name field, a port."""

    ip: str | None  # the address as the event wrote it (str() of an ip_address would rewrite it), no zone
    ip_version: int | None
    hostname: str | None
    port: int | None


def endpoint(party: Party) -> Endpoint:
    """Split `party.host` into an IP address or a host name (formats keep them in different fields).

    A link-local IPv6 peer's address carries its zone ("fe80::1%eth0", RFC 4007 11.2), which only
    the receiving host can interpret. The IP fields get the address without it: Elasticsearch's
    `ip` type refuses a zone (so the whole ECS document would be refused), and CEF's IPv6 Address
    and LEEF's src/dst are plain addresses. ECS's `address` keeps the text as the event has it."""
    if party.host:
        try:
            version = ip_address(party.host).version
        except ValueError:
            return Endpoint(ip=None, ip_version=None, hostname=party.host, port=party.port)
        return Endpoint(ip=party.host.partition("%")[0], ip_version=version, hostname=None, port=party.port)
    return Endpoint(ip=None, ip_version=None, hostname=None, port=party.port)


def sides(event: Event) -> Iterator[tuple[bool, Party, Endpoint]]:
    """(is_source, party, endpoint) for the actor (the source) and the target (the destination),
    skipping a side the event leaves empty."""
    for is_source, party in ((True, event.actor), (False, event.target)):
        if party is not NOBODY:
            yield is_source, party, endpoint(party)


def joined(values: Iterable[str]) -> str:
    """Several values as one text, separated by the DICOM value delimiter."""
    return VALUE_DELIMITER.join(values)


def decision(event: Event) -> str | None:
    """What pacsguard did, for CEF `act` / ECS `event.type`: the IDS rule's action, the gateway's
    `decision` on a request, or the word in the kind for association outcomes."""
    for key in ("action", "decision"):
        value = event.details.get(key)
        if isinstance(value, str) and value:
            return value
    last = event.kind.rsplit(".", 1)[-1]
    if last in ("accepted", "rejected", "aborted", "enforced"):
        return last
    return None


def details_json(event: Event) -> str:
    """`details` as the canonical JSON writes it (sorted keys, compact), or '' when empty."""
    if not event.details:
        return ""
    return orjson.dumps(orjson.loads(event.to_json())["details"], option=orjson.OPT_SORT_KEYS).decode()


def identity(event: Event, id_key: str, decision_key: str) -> Iterator[tuple[str, str]]:
    """The pairs CEF and LEEF share under their own key names: the event id, the kind as `cat`,
    the outcome, and the decision when there is one."""
    yield id_key, event.id
    yield "cat", event.kind
    yield "outcome", event.outcome
    act = decision(event)
    if act:
        yield decision_key, act


def epoch_ms(value: datetime) -> int:
    """Milliseconds since the Unix epoch, UTC (CEF `rt`)."""
    # Integer arithmetic: a float timestamp can round a .999 ms value up to the next millisecond.
    return (value - _EPOCH) // timedelta(milliseconds=1)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
