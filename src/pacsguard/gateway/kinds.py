"""The kinds of Event the gateway records of its own (docs/events.md); the DICOM association and
DIMSE records it shares with the passive sensor are declared in pacsguard.records."""

from __future__ import annotations

from pacsguard.events.kinds import OBJECT, STRING, EventKind, nullable
from pacsguard.records.kinds import KINDS as DICOM_RECORDS

_ROUTE = {"route": STRING}
_QUARANTINE = {"target": STRING, "until": nullable(STRING), "reason": STRING}

KINDS = (
    EventKind("gateway.upstream.unreachable",
              "the PACS could not be reached, or did not answer the A-ASSOCIATE-RQ in time",
              {**_ROUTE, "error": STRING}, required=("route", "error")),
    EventKind("gateway.quarantine.added", "a device (host or AE title) was quarantined",
              _QUARANTINE, required=("target",)),
    EventKind("gateway.quarantine.removed", "a device was released from quarantine",
              _QUARANTINE, required=("target",)),
    EventKind("gateway.quarantine.enforced", "a live association of a quarantined device was cut off",
              {**_ROUTE, "target": STRING, "reason": STRING}, required=("route", "target")),
    EventKind("dicom.protocol.warning",
              "a peer's deviation the receivers tolerate (docs/gateway.md, protocol deviations) was passed on",
              {**_ROUTE, "code": STRING, "from": {"enum": ["client", "upstream"]}, "state": STRING,
               "reason": STRING}, required=("route", "code", "from")),
    EventKind("gateway.quarantine.spared",
              "an inline rule asked for a quarantine the gateway did not apply: the source is an administrative "
              "host (gateway.admin_hosts), or no calling AE title is known and gateway.quarantine_scope is pair",
              {**_ROUTE, "reason": STRING, "why": STRING}, required=("route", "why")),
    EventKind("tls.handshake.failed", "a TLS client failed the handshake with a route's listener",
              {**_ROUTE, "error": STRING, "certificate": nullable(OBJECT)}, required=("route", "error")),
    *DICOM_RECORDS,
)
