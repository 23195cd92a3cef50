"""docs/events.schema.json is what the parts declare, and it rejects what it should."""

from __future__ import annotations

import json
import subprocess
import sys

from jsonschema import Draft202012Validator

from event_schema import SCHEMA_FILE
from pacsguard.events import Event, Party
from pacsguard.runtime.registry import Registry


def test_the_published_schema_is_the_declared_one() -> None:
    declared = Registry.default().event_schema()
    assert json.loads(SCHEMA_FILE.read_text()) == declared
    result = subprocess.run([sys.executable, "-m", "pacsguard.cli", "events", "schema", "--check", str(SCHEMA_FILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def _errors(event: Event) -> list[str]:
    validator = Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    return [e.message for e in validator.iter_errors(event.to_dict())]


def test_schema_accepts_a_recorded_store_and_rejects_what_is_not_declared() -> None:
    good = Event(kind="dicom.dimse.c-store", component="gateway", actor=Party(ae_title="CT1", host="10.0.0.5"),
                 patient_ids=("PAT1",), details={"route": "main", "message_id": 1, "sop_class": "1.2.3",
                                                 "duration_ms": 1.5, "status": "0x0000"})
    assert _errors(good) == []
    assert _errors(Event(kind="dicom.dimse.c-store", component="gateway",
                         details={"route": "main", "message_id": 1, "sop_class": "1.2", "duration_ms": 1,
                                  "status": "success"}))  # status is 0xNNNN
    assert _errors(Event(kind="gateway.made.up", component="gateway"))  # an undeclared kind
    assert _errors(Event(kind="gateway.upstream.unreachable", component="gateway",
                         details={"route": "main", "error": "refused", "surprise": 1}))  # an undeclared field
    assert _errors(Event(kind="ids.alert.x", component="ids", details={"rule_id": "x"}))  # required fields missing


def test_every_part_kind_is_documented_in_events_md() -> None:
    text = (SCHEMA_FILE.parent / "events.md").read_text()
    missing = [k.kind for k in Registry.default().event_kinds() if f"`{k.kind.removesuffix('.*')}" not in text]
    assert missing == []
