"""The kinds of Event the scanner records (docs/events.md, docs/scan.md): one per finding, and one
per file moved to quarantine."""

from __future__ import annotations

from pacsguard.events.kinds import BOOLEAN, INTEGER, STRING, STRINGS, UID, EventKind, nullable

LEVEL = {"enum": ["info", "low", "medium", "high", "critical"]}
_FILE = {"file": STRING, "sha256": STRING, "size": INTEGER, "route": nullable(STRING),
         "sop_instance_uid": nullable(UID)}

KINDS = (
    EventKind("scan.finding", "the scanner found something in a file or a received object (one Event per finding)",
              {**_FILE, "rule": STRING, "level": LEVEL, "explanation": STRING, "offset": nullable(INTEGER),
               "reference": STRING, "tag": nullable(STRING), "inflated": BOOLEAN, "action": nullable(STRING)},
              required=("file", "rule", "level", "explanation")),
    EventKind("scan.quarantined", "a scanned file was moved to the quarantine folder, with its manifest",
              {**_FILE, "quarantine": STRING, "manifest": STRING, "rules": STRINGS},
              required=("file", "quarantine", "rules")),
)
