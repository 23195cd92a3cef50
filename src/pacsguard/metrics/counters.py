"""Counters derived from the Event stream: each written Event moves the metrics it stands for.

The vocabulary read here is docs/events.md's: DICOM association and DIMSE records (PS3.8 9.3,
PS3.7 9.1), gateway refusals, IDS alerts and the gateway's upstream reachability."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from pacsguard.dicom.dimse import COMMAND_NAMES, status_category
from pacsguard.events import Event

_ASSOCIATION = "dicom.association."
_DIMSE = "dicom.dimse."
_ALERT = "ids.alert."
_UNREACHABLE = "gateway.upstream.unreachable"
_ENDED = ("released", "aborted")
#: The DIMSE services a `service` label may name (PS3.7 9.1, 10.1 and E.1: the defined command
#: fields); any other is counted as OTHER_SERVICE.
SERVICES = frozenset(name.removesuffix("-RQ") for name in COMMAND_NAMES.values() if name.endswith("-RQ"))
#: The `service` label of a request whose Command Field no DIMSE service defines (the event's kind
#: keeps its value, `dicom.dimse.unknown-0xNNNN`): one series, not one per value a client sends.
OTHER_SERVICE = "UNKNOWN"


def label(value: object) -> str:
    """A label value the exposition can carry: text that is valid UTF-8 (the text format is UTF-8,
    Prometheus exposition formats, "Text format details"). A lone surrogate (a rule id read from a
    YAML escape, say) would make every scrape fail with a UnicodeEncodeError; it is written as its
    escape text instead, as the event's canonical JSON writes it."""
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def where(details: Mapping[str, Any]) -> str:
    """The route an event belongs to; a passive sensor's records have none and are named by sensor."""
    route = details.get("route")
    if route:
        return label(route)
    sensor = details.get("sensor")
    return label(f"sensor:{sensor}") if sensor else ""


def service_label(service: str) -> str:
    """The `service` label of a `dicom.dimse.<service>` Event: the service's name for a defined
    command (PS3.7 E.1), OTHER_SERVICE for any other. Each of the 65,536 values of the Command
    Field (US) a client may send would otherwise add series that stay for the process's life."""
    name = service.upper()
    return name if name in SERVICES else OTHER_SERVICE


def dimse_status(details: Mapping[str, Any]) -> str:
    """The request's outcome as a PS3.7 Annex C status category, or how the gateway ended it."""
    decision = details.get("decision")
    if decision:
        return label(decision)
    status = details.get("status")
    if isinstance(status, int) and not isinstance(status, bool):  # a passive sensor's records: the number
        return status_category(status)
    if isinstance(status, str) and status.startswith("0x"):
        try:
            return status_category(int(status, 16))
        except ValueError:
            return "none"  # not a number: no category rather than a lost count
    return "none"  # the association ended before the final response


class EventCounters:
    """The metrics an Event moves, registered in the service's own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.associations = Counter("pacsguard_associations", "DICOM association events by route and event "
                                    "(requested, accepted, rejected, released, aborted)", ("route", "event"),
                                    registry=registry)
        self.requests = Counter("pacsguard_dimse_requests", "DIMSE requests at their end, by route, service and "
                                "status category (success, warning, failure, cancel, refused, aborted, none)",
                                ("route", "service", "status"), registry=registry)
        self.refusals = Counter("pacsguard_refusals", "associations and requests the gateway refused, by the rule "
                                "that refused them", ("route", "stage", "rule"), registry=registry)
        self.bytes = Counter("pacsguard_bytes", "bytes relayed or captured on ended associations, by route and "
                             "direction (from_client, from_upstream)", ("route", "direction"), registry=registry)
        self.alerts = Counter("pacsguard_alerts", "IDS alerts recorded, by rule and action", ("rule", "action"),
                              registry=registry)
        self.upstream_up = Gauge("pacsguard_upstream_up", "1 when the route's upstream accepted the latest "
                                 "association, 0 after it could not be reached", ("route",), registry=registry)

    def observe(self, event: Event) -> None:
        kind, details = event.kind, event.details
        if kind.startswith(_ASSOCIATION):
            self._association(kind.removeprefix(_ASSOCIATION), details)
        elif kind.startswith(_DIMSE):
            self._request(kind.removeprefix(_DIMSE), details)
        elif kind.startswith(_ALERT):
            rule = details.get("rule_id") or kind.removeprefix(_ALERT)
            self.alerts.labels(label(rule), label(details.get("action", ""))).inc()
        elif kind == _UNREACHABLE:
            self.upstream_up.labels(where(details)).set(0)

    def _association(self, what: str, details: Mapping[str, Any]) -> None:
        route = where(details)
        self.associations.labels(route, what).inc()
        if what == "accepted" and details.get("route"):
            self.upstream_up.labels(route).set(1)
        elif what == "rejected" and details.get("by") == "gateway":
            self.refusals.labels(route, "association", label(details.get("rule") or "none")).inc()
        elif what in _ENDED:
            for direction in ("from_client", "from_upstream"):
                count = details.get(f"bytes_{direction}")
                if isinstance(count, int) and count > 0:
                    self.bytes.labels(route, direction).inc(count)

    def _request(self, service: str, details: Mapping[str, Any]) -> None:
        route = where(details)
        self.requests.labels(route, service_label(service), dimse_status(details)).inc()
        if details.get("decision") == "refused":
            self.refusals.labels(route, "request", label(details.get("rule") or "none")).inc()
