"""The kinds of Event the IDS records (docs/events.md, docs/ids.md): its alerts; the passive
sensor's association records are the shared DICOM ones (pacsguard.records.kinds)."""

from __future__ import annotations

from pacsguard.events.kinds import BOOLEAN, INTEGER, NUMBER, OBJECT, STRING, EventKind, nullable
from pacsguard.ids.capture.reassembly import ANOMALIES
from pacsguard.records.kinds import KINDS as DICOM_RECORDS
from pacsguard.records.kinds import VLAN

#: an aggregate's first/last match, as an Event time is written (ISO 8601, RFC 3339)
TIME = {"type": "string", "format": "date-time"}

KINDS = (
    EventKind("ids.alert.*", "an IDS rule fired, inline or passive (the kind ends with the rule id)",
              {"rule_id": STRING, "title": STRING, "action": {"enum": ["alert", "drop", "abort", "quarantine"]},
               "reference": nullable(STRING), "protocol": STRING, "on": STRING, "sensor": nullable(STRING),
               "route": nullable(STRING), "flow_id": nullable(STRING), "tls": BOOLEAN, "observation": OBJECT,
               "quarantine_seconds": NUMBER, "threshold": OBJECT, "limit": OBJECT,
               # an aggregate: the matches a limit window held back, and when the first and last were
               "aggregate": BOOLEAN, "count": INTEGER, "first": TIME, "last": TIME, "vlan": VLAN},
              required=("rule_id", "title", "action", "protocol", "on", "observation")),
    EventKind("ids.anomaly.*", "the passive sensor saw traffic a receiver may read otherwise than a naive "
              "observer (an IDS evasion attempt): the kind ends with the anomaly (docs/ids.md)",
              {"anomaly": {"enum": list(ANOMALIES)},
               "sensor": STRING, "flow_id": nullable(STRING), "from_client": nullable(BOOLEAN),
               "offset": INTEGER, "length": INTEGER, "detail": STRING, "vlan": VLAN},
              required=("anomaly", "sensor", "offset", "length", "detail")),
    *DICOM_RECORDS,
)
