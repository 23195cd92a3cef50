"""Every Event the suite makes is checked against docs/events.schema.json.

A pytest plugin (loaded by conftest.py): it wraps `Event.__post_init__` so that each Event built by
pacsguard's own code (not by a test, not read back from a store) is validated, the first few of
each shape (kind and set of detail keys); gateway tests also validate what a `pacsguard serve`
subprocess recorded as they read it (`check_event`). A violation fails the session and is listed
with the kind, the path in the event and the schema's complaint.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from pacsguard.events.model import Event

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = ROOT / "docs" / "events.schema.json"
_SOURCE = str(ROOT / "src" / "pacsguard") + "/"
_READERS = (str(ROOT / "src" / "pacsguard" / "events" / "model.py"),)  # from_dict: a stored event read back
_PER_SHAPE = 5


class EventChecker:
    def __init__(self) -> None:
        self.validator = Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
        self.shapes: Counter[tuple[str, frozenset[str]]] = Counter()
        self.kinds: Counter[str] = Counter()
        self.failures: list[str] = []

    def check(self, event: Event, where: str) -> None:
        shape = (event.kind, frozenset(event.details))
        self.kinds[event.kind] += 1
        self.shapes[shape] += 1
        if self.shapes[shape] > _PER_SHAPE:
            return
        data = event.to_dict()
        for error in self.validator.iter_errors(data):
            path = "/".join(str(p) for p in error.absolute_path) or "(event)"
            self.failures.append(f"{event.kind} at {path}: {error.message[:300]} (made in {where})")


CHECKER = EventChecker()


def check_event(event: Event, where: str = "a pacsguard process") -> None:
    """Validate an Event another process recorded (read from its store)."""
    CHECKER.check(event, where)


def _install() -> None:
    original = Event.__post_init__

    def post_init(self: Event) -> None:
        original(self)
        caller = sys._getframe(2).f_code.co_filename  # [0] this, [1] the dataclass __init__
        if caller.startswith(_SOURCE) and caller not in _READERS:
            CHECKER.check(self, caller.removeprefix(str(ROOT) + "/"))

    Event.__post_init__ = post_init  # type: ignore[method-assign]


_install()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    output = getattr(session.config, "workeroutput", None)
    if output is not None:  # a pytest-xdist worker: the controller reports (below)
        output["event_schema"] = {"kinds": dict(CHECKER.kinds), "failures": CHECKER.failures}
    if CHECKER.failures and session.exitstatus == 0:
        session.exitstatus = 1


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """pytest-xdist's controller: a worker's checks join this process's count and failures."""
    report = getattr(node, "workeroutput", {}).get("event_schema")
    if report:
        CHECKER.kinds.update(report["kinds"])
        CHECKER.failures.extend(report["failures"])


def pytest_terminal_summary(terminalreporter: Any) -> None:
    tr = terminalreporter
    kinds = sorted(CHECKER.kinds)
    tr.write_line(f"event schema: {sum(CHECKER.kinds.values())} events of {len(kinds)} kinds checked against "
                  f"{SCHEMA_FILE.relative_to(ROOT)}")
    if CHECKER.failures:
        tr.write_sep("=", f"{len(CHECKER.failures)} events do not match the event schema", red=True)
        for line in sorted(set(CHECKER.failures))[:50]:
            tr.write_line(line, red=True)
