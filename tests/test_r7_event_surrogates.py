"""Events carrying lone surrogates (a file name or a value decoded with surrogateescape), coordinator
round 7: the canonical JSON writes them as their escape text, so the store records the event
(instead of refusing it) and the journal keeps it (instead of failing its whole batch)."""

from __future__ import annotations

import json
from pathlib import Path

from pacsguard.events import journal
from pacsguard.events.model import Event, Party
from pacsguard.store.keys import load_public_key
from pacsguard.store.search import EventQuery
from pacsguard.store.store import EventStore
from pacsguard.store.verify import verify_store
from store_helpers import new_store


def _event() -> Event:
    return Event(kind="test.surrogate", component="test", message="file b\udcffd.dcm",
                 actor=Party(host="h\udc80st"), patient_ids=("P\ud800",),
                 details={"path": "/in/b\udcffd.dcm", "k\udcfe": ["x\udcfd", 1]})


def test_the_canonical_form_escapes_lone_surrogates() -> None:
    text = _event().to_json()
    text.encode("utf-8")  # valid UTF-8: nothing lone left
    data = json.loads(text)
    assert data["message"] == "file b\\udcffd.dcm"
    assert data["details"] == {"path": "/in/b\\udcffd.dcm", "k\\udcfe": ["x\\udcfd", 1]}
    assert data["patient_ids"] == ["P\\ud800"] and data["actor"]["host"] == "h\\udc80st"
    again = Event.from_json(text)
    assert again.to_json() == text  # the escaped form is stable: sealing it twice gives one hash


def test_ordinary_text_is_unchanged() -> None:
    ev = Event(kind="test.plain", component="test", message="Müller ^ 患者 \\udcff as typed")
    assert json.loads(ev.to_json())["message"] == "Müller ^ 患者 \\udcff as typed"


def test_the_store_records_the_event_instead_of_refusing_it(tmp_path: Path) -> None:
    store = EventStore.open(str(tmp_path / "store.db"), create=True)
    try:
        store.append([Event(kind="test.before", component="test"), _event(),
                      Event(kind="test.after", component="test")])
        kinds = [s.event.kind for s in store.search(EventQuery())]
        found = [s.event for s in store.search(EventQuery()) if s.event.kind == "test.surrogate"]
    finally:
        store.close()
    assert kinds == ["test.before", "test.surrogate", "test.after"]
    assert found[0].message == "file b\\udcffd.dcm" and found[0].patient_ids == ("P\\ud800",)


def test_the_journal_keeps_the_batch(tmp_path: Path) -> None:
    j = journal.Journal(tmp_path / "journal")
    try:
        j.append([Event(kind="test.before", component="test"), _event()])
    finally:
        j.close()
    assert [e.kind for e in journal.read(tmp_path / "journal")] == ["test.before", "test.surrogate"]


def test_a_cycle_in_the_details_is_still_refused_as_unwritable() -> None:
    cyclic: dict[str, object] = {}
    cyclic["self"] = cyclic
    try:
        Event(kind="test.cycle", component="test", details=cyclic).to_json()
    except TypeError:
        return
    raise AssertionError("a cyclic event was written")


def test_a_store_holding_such_an_event_verifies(target: str, tmp_path: Path) -> None:
    store, key = new_store(target, tmp_path)
    try:
        store.append([_event(), Event(kind="test.after", component="test", patient_ids=("P\ud800",))])
        assert [s.seq for s in store.search(EventQuery(patient="P\\ud800", limit=None))] == [0, 1]
        store.checkpoint()
        report = verify_store(store, load_public_key(key))
    finally:
        store.close()
    assert report.ok, report.findings
