"""The kinds of Event the gateway records of its own (docs/events.md); the DICOM association and
DIMSE records it shares with the passive sensor are declared in pacsguard.records."""

from __future__ import annotations

from pacsguard.events.kinds import INTEGER, NUMBER, OBJECT, STATUS, STRING, STRINGS, UID, EventKind, nullable
from pacsguard.records.kinds import KINDS as DICOM_RECORDS

_ROUTE = {"route": STRING}
_QUARANTINE = {"target": STRING, "until": nullable(STRING), "reason": STRING}
# A store-and-forward route's object (docs/gateway.md, "Store-and-forward routes").
_OBJECT = {**_ROUTE, "spool_id": STRING, "sop_class": UID, "sop_instance": UID, "transfer_syntax": UID,
           "bytes": INTEGER}
_VERDICT = {**_OBJECT, "status": STATUS, "check": STRING, "rule": STRING, "reason": STRING}

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
    EventKind("gateway.object.received", "a store-and-forward route spooled an object durably and acknowledged it",
              {**_OBJECT, "destinations": STRINGS, "replaced_by": nullable(STRING)},
              required=("route", "spool_id", "sop_instance", "destinations")),
    EventKind("gateway.object.refused", "a store-and-forward route answered a C-STORE with a failure status "
              "(an object check, a full spool, a policy check, a malformed request: check reception)", _VERDICT,
              required=("route", "status", "reason")),
    EventKind("gateway.object.quarantined", "an object check quarantined an object: refused and kept aside",
              {**_VERDICT, "quarantine": STRING}, required=("route", "status", "reason", "quarantine")),
    EventKind("gateway.object.discarded",
              "a store-and-forward route received and spooled an object but its association ended before the "
              "C-STORE-RSP could be sent: withdrawn from the spool, never forwarded (the modality sends it again)",
              {**_OBJECT, "reason": STRING}, required=("route", "spool_id", "sop_instance", "reason")),
    EventKind("gateway.object.undeliverable",
              "a spooled object the forwarder will not send: its file holds no data set or is gone, or its "
              "destination is no longer configured (renamed, moved, removed); nothing sent, it stays spooled "
              "until re-routed or purged",
              {**_OBJECT, "destination": STRING, "reason": STRING},
              required=("route", "spool_id", "destination", "reason")),
    EventKind("gateway.object.forwarded", "a destination answered Success for a spooled object",
              {**_OBJECT, "destination": STRING, "status": STATUS},
              required=("route", "spool_id", "destination", "status")),
    EventKind("gateway.object.delayed", "a destination could not take spooled objects yet; they wait and are retried",
              {**_OBJECT, "destination": STRING, "error": STRING, "retry_in": NUMBER, "attempts": INTEGER,
               "waiting": INTEGER},
              required=("route", "destination", "error")),
    EventKind("gateway.object.in-doubt",
              "a spooled object's last send to a destination had no recorded answer (a crash, a lost response): "
              "the destination was asked with a C-FIND whether it holds it (found: not sent again), or could not be",
              {**_OBJECT, "destination": STRING, "answer": {"enum": ["found", "absent", "cannot-ask", "not-asked"]},
               "reason": STRING}, required=("route", "spool_id", "destination", "answer")),
    EventKind("gateway.forwarding.restarted",
              "a store-and-forward route's forwarding process ended on its own (a crash, a kill) and is started "
              "again; what it had in flight is settled from the spool's markers",
              {**_ROUTE, "exit_code": nullable(INTEGER), "signal": nullable(STRING), "restart_in": NUMBER},
              required=("route", "exit_code", "restart_in")),
    EventKind("gateway.spool.high-water", "a route's spool (objects/ and quarantine/) grew past its high-water "
              "mark",
              {**_ROUTE, "bytes": INTEGER, "objects": INTEGER, "high_water_mib": NUMBER},
              required=("route", "bytes", "objects")),
    EventKind("gateway.spool.damaged",
              "a spooled object's metadata (ID.json) cannot be read, or its file (ID.dcm) is gone: it is not "
              "forwarded, and `spool list` shows it as damaged until an administrator purges it",
              {**_ROUTE, "spool_id": STRING, "reason": STRING, "path": STRING},
              required=("route", "spool_id", "reason")),
    EventKind("gateway.spool.unreadable",
              "a store-and-forward route's high-water watch could not read the spool's size for a minute (no file "
              "descriptor left, an I/O error): it cannot announce a filling spool until a look succeeds again",
              {**_ROUTE, "error": STRING, "seconds": NUMBER}, required=("route", "error")),
    EventKind("gateway.descriptors.exhausted",
              "connections refused because the gateway ran out of file descriptors (EMFILE: its RLIMIT_NOFILE; "
              "ENFILE: the system's): the first recorded at once, later ones summed up at most every 60 s",
              {**_ROUTE, "routes": {"type": "object", "additionalProperties": INTEGER}, "refused": INTEGER,
               "hosts": {"type": "object", "additionalProperties": INTEGER}, "error": STRING, "limit": INTEGER,
               "seconds": NUMBER},
              required=("routes", "refused", "error")),
    EventKind("gateway.spool.purged", "spooled objects were deleted by `pacsguard gateway spool purge`",
              {**_ROUTE, "spool_ids": STRINGS, "states": STRINGS, "sop_instances": STRINGS},
              required=("route", "spool_ids")),
    EventKind("gateway.refusals.summary",
              "associations a route refused from one host by one rule past limits.refusals_recorded_per_minute "
              "in a minute: counted, not recorded one by one (each would be a requested and a rejected record)",
              {**_ROUTE, "host": STRING, "rule": STRING, "suppressed": INTEGER, "recorded": INTEGER,
               "first": STRING, "last": STRING, "calling_ae_titles": STRINGS, "window_s": NUMBER},
              required=("route", "host", "rule", "suppressed", "first", "last")),
    *DICOM_RECORDS,
)
