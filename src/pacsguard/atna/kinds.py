"""The kinds of Event the audit record repository records (docs/events.md, docs/audit.md)."""

from __future__ import annotations

from typing import Any

from pacsguard.events.kinds import BOOLEAN, INTEGER, NUMBER, OBJECT, STRING, STRINGS, EventKind, nullable

_CODE: dict[str, Any] = {"type": "object", "properties": {"code": STRING, "system": STRING, "meaning": STRING},
                         "required": ["code"], "additionalProperties": False}
_SENDER: dict[str, Any] = {"type": "object", "properties": {
    "host": STRING, "port": INTEGER, "transport": {"enum": ["tls", "tcp", "udp", "http", "https"]},
    "framing": STRING, "certificate": STRING}, "required": ["host", "transport"], "additionalProperties": False}
_PATIENT: dict[str, Any] = {"type": "object", "properties": {"id": STRING, "authority": STRING, "cx": STRING},
                            "required": ["id"], "additionalProperties": False}
_PROBLEMS = ["malformed-frame", "oversize", "truncated", "silent", "entity-expansion", "unparsable-xml",
             "bad-encoding", "not-audit-message", "not-fhir", "unauthorized", "bad-request", "not-syslog",
             "unreadable", "too-many-connections", "too-slow", "tls-handshake-failed", "throttled", "backlog-full"]

#: What every received message carries: where it came from, its syslog header, its raw bytes.
_RECEIVED = {
    "sender": _SENDER,
    "syslog": OBJECT,
    "raw": STRING,  # the message as sent, when it is UTF-8 (else raw_base64)
    "raw_base64": STRING,
    # legacy-bsd, missing-msgid, wrong-framing, bad-timestamp, bad-event-time, no-time-zone, clock-skew,
    # bad-action-code, bad-outcome, relay-escaped, no-requestor
    "flags": STRINGS,
    "received": STRING,
}

KINDS = (
    EventKind("atna.audit.*", "an audit message received (PS3.15 A.5, RFC 3881 or FHIR AuditEvent), named after "
              "its event ID (atna.audit.patient-record, atna.audit.query, ...; atna.audit.other for codes "
              "outside CID 400); the raw message is kept beside the parsed fields", {
                  **_RECEIVED,
                  "syntax": {"enum": ["dicom", "rfc3881", "fhir"]},
                  "event_id": _CODE,
                  "event_types": {"type": "array", "items": _CODE},
                  "action": STRING,
                  "outcome_indicator": STRING,
                  "outcome_description": STRING,
                  "purposes": {"type": "array", "items": _CODE},
                  "participants": {"type": "array", "items": OBJECT},
                  "source": OBJECT,
                  "objects": {"type": "array", "items": OBJECT},
                  "patients": {"type": "array", "items": _PATIENT},
              }, required=("sender", "syntax", "event_id")),
    EventKind("atna.message.unparsed", "a message that could not be read as an audit message, stored raw "
              "and flagged with the problem", {**_RECEIVED, "problem": {"enum": _PROBLEMS}, "error": STRING},
              required=("sender", "problem", "error")),
    EventKind("atna.frame.rejected", "bytes that were not a syslog frame (malformed, oversize, truncated), a "
              "connection that sent nothing or was closed because the listener was full (a summary of such "
              "connections carries their number, repeats); the receiver went on",
              {"sender": _SENDER, "problem": {"enum": _PROBLEMS}, "error": STRING, "sample_base64": STRING,
               "repeats": INTEGER},
              required=("sender", "problem", "error")),
    EventKind("atna.http.rejected", "a request to the RESTful ATNA endpoint that was refused (no valid token or "
              "client certificate, a body that is not a FHIR AuditEvent), cut short or too slow, a connection that "
              "sent nothing, or a failed TLS handshake",
              {"sender": _SENDER, "problem": {"enum": _PROBLEMS}, "error": STRING, "path": STRING,
               "method": STRING, "repeats": INTEGER}, required=("sender", "problem", "error")),
    EventKind("atna.delivery.duplicate", "an authenticated sender (TLS client certificate) resent a message it "
              "had numbered (pacsguard's outbound feed: origin, instance and seq in its structured data) that this "
              "repository already stored byte for byte; it was dropped, and the rest of that resend with it (one "
              "record per resend)",
              {"sender": _SENDER, "origin": STRING, "instance": STRING, "seq": INTEGER, "stored_id": STRING,
               "highest": INTEGER},  # highest: records of versions that kept only the highest seq
              required=("sender", "origin", "seq")),
    EventKind("atna.delivery.sequence-reused", "an authenticated sender numbered a message with the origin, "
              "instance and seq of one already stored, with other content (a forged or restored sender): both "
              "are stored, this record names them",
              {"sender": _SENDER, "origin": STRING, "instance": STRING, "seq": INTEGER, "stored_id": STRING,
               "new_id": STRING}, required=("sender", "origin", "instance", "seq", "stored_id", "new_id")),
    EventKind("atna.reader.restarted", "a process reading the TLS or TCP listener's connections (atna.readers) "
              "ended while the repository ran; its connections were reset and it was started again",
              {"transport": {"enum": ["tls", "tcp"]}, "reader": INTEGER, "exit_code": nullable(INTEGER),
               "signal": nullable(STRING), "restart_in": NUMBER},
              required=("transport", "reader", "exit_code")),
    EventKind("atna.outbound.delivered", "a batch of pacsguard's own events reached the external repository",
              {"repository": STRING, "messages": INTEGER, "first": INTEGER, "last": INTEGER,
               "reconnected": BOOLEAN}, required=("repository", "messages")),
    EventKind("atna.outbound.failed", "the outbound feed could not connect to the external repository, or its "
              "certificate did not verify (another CA, another name: a possible man in the middle); recorded when "
              "it starts failing and when the reason changes, while the messages wait in the spool",
              {"repository": STRING, "error": STRING, "certificate": BOOLEAN, "pending": INTEGER,
               "attempts": INTEGER},
              required=("repository", "error", "certificate")),
)
