"""The kinds of Event de-identification records (docs/events.md)."""

from __future__ import annotations

from pacsguard.events.kinds import OBJECT, STRING, EventKind

_IDS = {"study_uid": STRING, "series_uid": STRING, "sop_instance_uid": STRING, "patient_id": STRING}
_OBJECT = {"route": STRING, "key_fingerprint": STRING, "sop_class_uid": STRING}

KINDS = (
    EventKind("deid.object.deidentified",
              "an object was de-identified for a route; its original and new identifiers sealed "
              "under the key (pacsguard deid reidentify opens them)",
              {**_OBJECT, "original": OBJECT, "new": OBJECT, "options": {"type": "array", "items": STRING},
               "pixels": STRING, "edition": STRING},
              required=("route", "key_fingerprint", "original", "new")),
    EventKind("deid.object.withheld", "an object could not be de-identified safely and was not forwarded",
              {**_OBJECT, "reason": STRING, "original": OBJECT},
              required=("route", "reason")),
)

IDENTIFIERS = tuple(_IDS)
