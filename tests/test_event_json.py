"""The canonical JSON of an Event (what the store seals and hashes, and what sinks send)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from types import MappingProxyType

import orjson

from pacsguard.events import Event, Party, Severity


def _event(time: datetime, **kw) -> Event:
    return Event(kind="dicom.dimse.c-store", component="gateway", severity=Severity.WARNING, time=time,
                 actor=Party("CT1", "10.0.0.7", 104), patient_ids=("P1", "P2"), study_uids=("1.2.3",), **kw)


def test_canonical_json_is_sorted_compact_and_round_trips():
    ev = _event(datetime(2026, 11, 24, 1, 2, 3, 4567, tzinfo=timezone.utc),
                details={"z": 1, "a": {"y": (1, 2), "b": b"\x01\xff"}, "m": MappingProxyType({"k": "v"})})
    text = ev.to_json()
    data = json.loads(text)
    # The same text json.dumps writes with sorted keys and no white space (nested keys too).
    assert text == json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert data["time"] == "2026-11-24T01:02:03.004567Z" and data["severity"] == "warning"
    assert data["patient_ids"] == ["P1", "P2"] and data["details"]["a"] == {"b": "01ff", "y": [1, 2]}
    assert data["details"]["m"] == {"k": "v"}, "a read-only mapping is written as an object, not as its repr"
    back = Event.from_json(text)
    assert back.time == ev.time and back.patient_ids == ev.patient_ids and back.actor == ev.actor
    assert orjson.loads(back.to_json()) == data
    assert ev.to_dict()["time"] == data["time"]


def test_time_is_written_in_utc_and_without_a_zero_fraction():
    whole = _event(datetime(2026, 11, 24, 1, 2, 3, tzinfo=timezone.utc))
    assert json.loads(whole.to_json())["time"] == "2026-11-24T01:02:03Z" == whole.to_dict()["time"]
    paris = _event(datetime(2026, 11, 24, 2, 2, 3, 5, tzinfo=timezone(timedelta(hours=1))))
    assert json.loads(paris.to_json())["time"] == "2026-11-24T01:02:03.000005Z"
    assert Event.from_json(paris.to_json()).time == paris.time
