"""Values the store's columns cannot hold must not stall recording (round 6, an outside tester).

One event whose patient ID was longer than events.patient_id's 128 characters, or held U+0000
(PostgreSQL text cannot), made PostgreSQL refuse the whole batch; the event bus kept it for retry
for ever, so nothing published after it was stored. Now every column copy and index key goes
through pacsguard.store.columns.column_key (the sealed body keeps the value exactly), and a batch
the database still refuses for what an event holds is split: the rest is stored, the refused event
is recorded by a `pacsguard.recording.failed` event that does not repeat its values.

Both backends: SQLite (which ignores lengths) and the suite's real PostgreSQL (tests/peers/postgres.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pacsguard.events import Event, Party
from pacsguard.events.bus import EventBus
from pacsguard.store import EventStore
from pacsguard.store.columns import MARKER, REFUSED_KIND, column_key, patient_key
from pacsguard.store.keys import load_public_key
from pacsguard.store.schema import event_patients, events
from pacsguard.store.search import EventQuery
from pacsguard.store.verify import verify_store
from store_helpers import new_store, raw_sql

LONG_PATIENT = "L" * 200
NUL_PATIENT = "NUL\x00X"
LONG_STUDY = "1.2.3." + "9" * 90
LONG_USER = "u" * 300
NUL_AE = "MOD\x00"
#: A short patient ID an attacker shaped like the key of LONG_PATIENT: it must not find its events.
FORGED = column_key(LONG_PATIENT, 128)


def _event(patients: tuple[str, ...], *, studies: tuple[str, ...] = (), actor: Party = Party(),
           message: str = "") -> Event:
    return Event(kind="atna.audit.patient-record", component="atna", actor=actor, patient_ids=patients,
                 study_uids=studies, message=message)


def _hostile_batch() -> list[Event]:
    return [
        _event(("BEFORE",)),
        _event((LONG_PATIENT,), studies=(LONG_STUDY,), actor=Party(user=LONG_USER)),
        _event((NUL_PATIENT,), studies=("1.2\x00.3",), actor=Party(ae_title=NUL_AE, host="h\x00st")),
        _event((FORGED,), actor=Party(user=column_key(LONG_USER, 255))),
        _event(("OTHER", LONG_PATIENT, NUL_PATIENT), studies=(LONG_STUDY, "1.2.3")),
        _event(("AFTER",)),
    ]


def _seqs(store: EventStore, **query: str) -> list[int]:
    return [s.seq for s in store.search(EventQuery(limit=None, **query))]  # type: ignore[arg-type]


def test_column_keys_fit_hold_no_nul_and_differ_per_value() -> None:
    assert column_key("PID-1", 128) == "PID-1"  # a value that fits is stored as it is
    for size in (64, 128, 255, 300):
        for value in ("x" * (size + 1), "a\x00b", "x" * size + "\x00", "A" + MARKER + "0" * 64):
            key = column_key(value, size)
            assert len(key) <= size and "\x00" not in key and MARKER in key
            assert column_key(value, size) == key  # deterministic: a search computes the same
            digits = key.rsplit(MARKER, 1)[1]
            assert hashlib.sha256(value.encode()).hexdigest().startswith(digits) and len(digits) >= 48
    # Two long values with the same first 128 characters get different keys.
    assert column_key("P" * 300 + "1", 128) != column_key("P" * 300 + "2", 128)
    # A value that already looks like a key is keyed again, so it can never equal another's key.
    assert column_key(FORGED, 128) != FORGED
    # The first patient (events) and the others (event_patients) are keyed with one length.
    assert event_patients.c.patient_id.type.length == events.c.patient_id.type.length == 128


def test_hostile_values_are_stored_found_exactly_and_verify(target: str, tmp_path: Path) -> None:
    """The outside tester's values in one batch: all of it stored (PostgreSQL refused the batch
    before), each value found by exact search, nothing else found, and `audit verify` passes."""
    store, key = new_store(target, tmp_path)
    batch = _hostile_batch()
    assert store.append(batch) == len(batch)
    got = {s.seq: s.event for s in store.search(EventQuery(limit=None))}
    assert [got[i].patient_ids for i in range(len(batch))] == [e.patient_ids for e in batch]  # bodies exact
    assert got[2].actor.ae_title == NUL_AE and got[1].actor.user == LONG_USER
    assert _seqs(store, patient="BEFORE") == [0] and _seqs(store, patient="AFTER") == [5]
    assert _seqs(store, patient=LONG_PATIENT) == [1, 4]
    assert _seqs(store, patient=NUL_PATIENT) == [2, 4]
    assert _seqs(store, patient=FORGED) == [3]  # shaped like a key: finds only its own event
    assert _seqs(store, patient="\x00") == [] and _seqs(store, patient="L" * 128) == []
    assert _seqs(store, study=LONG_STUDY) == [1, 4] and _seqs(store, study="1.2\x00.3") == [2]
    assert _seqs(store, patient="OTHER", study=LONG_STUDY) == [4]
    assert _seqs(store, actor=LONG_USER) == [1] and _seqs(store, actor=column_key(LONG_USER, 255)) == [3]
    assert _seqs(store, actor=NUL_AE) == [2] and _seqs(store, actor="h\x00st") == [2]
    assert _seqs(store, actor="\x00") == [] and _seqs(store, kind="atna\x00*") == []
    with raw_sql(target) as cur:  # the column holds the key, the body the value
        cur.execute("SELECT patient_id FROM events WHERE seq = 1")
        assert cur.fetchone()[0] == patient_key(LONG_PATIENT)
    store.checkpoint()
    report = verify_store(store, load_public_key(key))
    assert report.ok, report.findings
    store.close()


def test_verify_still_finds_an_edited_key(target: str, tmp_path: Path) -> None:
    """A keyed column is checked like any other: set back to the raw value (or another key), it is
    a finding, since a search would then miss the event."""
    store, key = new_store(target, tmp_path)
    store.append(_hostile_batch())
    store.checkpoint()
    store.engine.dispose()
    with raw_sql(target) as cur:
        cur.execute("UPDATE events SET patient_id = 'L' WHERE seq = 1")
    report = verify_store(EventStore.open(target), load_public_key(key))
    assert [(f.kind, f.seq) for f in report.findings] == [("modified", 1)], report.findings
    assert "patient_id" in report.findings[0].message


def test_an_event_the_store_cannot_take_does_not_stall_the_bus(target: str, tmp_path: Path) -> None:
    """An event that cannot be sealed (details nested deeper than JSON is written: orjson's limit)
    among others, through the bus: before, the bus retried the batch for ever and nothing after it
    was stored. Now the rest is stored in order and a refusal record takes the refused event's
    place, without its text. (A lone surrogate was the case here once: it is now written as its
    escape text and stored, tests/test_r7_event_surrogates.py.)"""
    store, key = new_store(target, tmp_path)
    deep: dict[str, object] = {}
    for _ in range(300):
        deep = {"d": deep}
    bad = Event(kind="atna.audit.patient-record", component="atna", patient_ids=("BAD",),
                message="broken \ud800 text", details=deep)
    sent = [_event(("BEFORE",)), _event(("A",)), bad, _event(("B",)), _event(("AFTER",))]
    bus = EventBus(store, max_delay=0.01)
    try:
        for ev in sent:
            bus.publish(ev)
        assert bus.flush(timeout=20), "the bus is stuck on the batch the store refuses"
        assert not bus.failing
    finally:
        bus.close(timeout=5)
    stored = [s.event for s in store.search(EventQuery(limit=None))]
    assert [e.id for e in stored[:2] + stored[3:]] == [e.id for e in sent[:2] + sent[3:]]
    record = stored[2]
    assert record.kind == REFUSED_KIND and bad.id in record.message and "\ud800" not in record.to_json()
    assert "BAD" not in record.to_json() and "broken" not in record.to_json()
    assert _seqs(store, patient="AFTER") == [4]
    store.checkpoint()
    assert verify_store(store, load_public_key(key)).ok
    store.close()


def test_a_data_exception_from_postgresql_is_split_out(postgres_db_url: str, tmp_path: Path) -> None:
    """A value PostgreSQL itself refuses (SQLSTATE 22001, a column narrowed behind pacsguard's back):
    the batch is tried in savepoints, the refused event alone is left out and recorded, the others
    are stored in one transaction, and the store verifies."""
    store, key = new_store(postgres_db_url, tmp_path)
    with raw_sql(postgres_db_url) as cur:
        # The view for SQL readers (store format 4) depends on the column: PostgreSQL alters no
        # column a view reads, so it goes first.
        cur.execute("DROP VIEW events_with_body")
        cur.execute("ALTER TABLE events ALTER COLUMN actor_host TYPE varchar(8)")
    sent = [_event((f"P{i}",), actor=Party(host="h-long-name" if i == 5 else f"h{i}")) for i in range(12)]
    assert store.append(sent) == 12
    stored = [s.event for s in store.search(EventQuery(limit=None))]
    assert [e.id for e in stored if e.kind != REFUSED_KIND] == [e.id for i, e in enumerate(sent) if i != 5]
    assert stored[5].kind == REFUSED_KIND and "SQLSTATE 22001" in stored[5].message
    assert "h-long-name" not in stored[5].to_json()
    store.checkpoint()
    assert verify_store(store, load_public_key(key)).ok
    store.close()


@pytest.mark.parametrize("size", [64, 128, 255, 300])
def test_a_key_fits_exactly_at_the_column_length(size: int) -> None:
    assert column_key("v" * size, size) == "v" * size
    assert len(column_key("v" * (size + 1), size)) == size


def _audit_message(patient: str) -> bytes:
    """An RFC 5424 syslog message (RFC 5426 UDP) carrying a DICOM PS3.15 A.5 audit message of a
    patient record read, whose patient participant object is ``patient`` (XML-escaped)."""
    from xml.sax.saxutils import quoteattr

    xml = ('<AuditMessage><EventIdentification EventActionCode="R" EventDateTime="2026-12-05T06:00:00Z" '
           'EventOutcomeIndicator="0"><EventID csd-code="110110" codeSystemName="DCM" '
           'originalText="Patient Record"/></EventIdentification>'
           '<ActiveParticipant UserID="nurse7" UserIsRequestor="true"/><AuditSourceIdentification '
           'AuditSourceID="RIS2"/><ParticipantObjectIdentification ParticipantObjectID=' + quoteattr(patient)
           + ' ParticipantObjectTypeCode="1" ParticipantObjectTypeCodeRole="1"><ParticipantObjectIDTypeCode '
           'csd-code="2" codeSystemName="RFC-3881" originalText="Patient Number"/>'
           '</ParticipantObjectIdentification></AuditMessage>')
    return ("<85>1 2026-12-05T06:00:00Z ris2 ris - IHE+RFC-3881 - " + xml).encode()


def test_atna_listener_on_postgresql_goes_on_after_a_129_character_patient(postgres_db_url: str,
                                                                           tmp_path: Path) -> None:
    """The outside tester's path: `pacsguard atna listen` (a real process) on a PostgreSQL store takes
    one UDP audit message whose patient ID is 129 characters long; the messages after it are stored
    and the long ID is found by its exact value."""
    import os
    import socket
    import subprocess
    import sys
    import time

    scheme, rest = postgres_db_url.split("://", 1)
    credentials, where = rest.split("@", 1)
    user, password = credentials.split(":", 1)
    address = ("127.0.67.21", 29000 + os.getpid() % 500)  # this round's loopback range for the columns fix
    log = tmp_path / "listen.log"
    cmd = [sys.executable, "-m", "pacsguard.cli", "atna", "listen", "--udp", f"{address[0]}:{address[1]}",
           "--store", f"{scheme}://{user}@{where}", "--key", str(tmp_path / "k.key")]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PGPASSWORD": password})
    try:
        deadline = time.monotonic() + 60
        while "RFC 5426 UDP" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            for patient in ("FIRST-1", "Q" * 129, "SECOND-2"):
                udp.sendto(_audit_message(patient), address)
                time.sleep(0.3)
        store = EventStore.open(postgres_db_url)
        while not _seqs(store, patient="SECOND-2"):
            assert time.monotonic() < deadline, "the message after the long patient ID was never stored: " \
                + log.read_text()[-2000:]
            time.sleep(0.2)
        assert len(_seqs(store, patient="Q" * 129)) == 1 and len(_seqs(store, patient="FIRST-1")) == 1
        store.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
