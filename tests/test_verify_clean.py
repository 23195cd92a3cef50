"""`audit verify`'s first reading (store/clean_pass.py): an untouched store is proven in memory bounded
by one bucket, with the same chain the forensic reading gives; any change to a row, an index row, a
term posting or a batch sends verify to the forensic reading, which names it."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from pacsguard.events.model import Event, Party
from pacsguard.store import EventStore, index
from pacsguard.store.clean_pass import clean_chain
from pacsguard.store.keys import load_public_key
from pacsguard.store.verify import VerifyReport, _forensic_chain, verify_store
from store_helpers import make_events, new_store, raw_sql


@pytest.fixture
def small_buckets(monkeypatch: pytest.MonkeyPatch) -> int:
    """Buckets of 256 events instead of 65,536 (store/index.py reads BUCKET_BITS at each call), so that a
    store of a few thousand events spans many buckets."""
    monkeypatch.setattr(index, "BUCKET_BITS", 8)
    return 1 << 8


def several_patients(n: int, start: int = 0) -> list[Event]:
    """Events with two patients and two studies each, so that both index tables have rows."""
    return [Event(kind="atna.audit.query", component="atna", actor=Party(f"WS{i % 3}", f"10.0.0.{i % 5}"),
                  patient_ids=(f"P{i % 997}", f"P{i % 997}^^^H&1.2.3&ISO"), study_uids=(f"1.2.{i % 31}", f"1.3.{i}"),
                  details={"i": i}) for i in range(start, start + n)]


def both_readings(store: EventStore) -> tuple[list[bytes] | None, list[bytes], VerifyReport]:
    report = VerifyReport(store=store.name)
    with store.engine.connect() as conn:
        clean = clean_chain(conn, store.size(), None)
        forensic = _forensic_chain(conn, store.size(), None, report)
    return clean, forensic, report


def test_a_store_of_several_buckets_is_proven_by_the_clean_reading(target: str, tmp_path: Path,
                                                                   small_buckets: int) -> None:
    es, key = new_store(target, tmp_path)
    total = 10 * small_buckets + 50
    for start in range(0, total, 700):  # batches that cross bucket boundaries
        es.append(several_patients(min(700, total - start), start))
    es.checkpoint()
    clean, forensic, report = both_readings(es)
    assert report.findings == []
    assert clean is not None and len(clean) == total
    assert clean == forensic
    verified = verify_store(es, load_public_key(key))
    assert verified.ok and verified.events == total and verified.newest_checkpoint_valid
    es.close()


def test_the_clean_reading_holds_one_bucket_not_the_store(tmp_path: Path, small_buckets: int) -> None:
    target = str(tmp_path / "store.db")
    es, _ = new_store(target, tmp_path)
    total = 16_000
    for start in range(0, total, 4_000):
        es.append(several_patients(4_000, start))
    peaks = []
    for reading in ("clean", "forensic"):
        with es.engine.connect() as conn:
            tracemalloc.start()
            if reading == "clean":
                assert clean_chain(conn, total, None) is not None
            else:
                _forensic_chain(conn, total, None, VerifyReport(store=es.name))
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
    es.close()
    clean_peak, forensic_peak = peaks
    # Per event the clean reading keeps a leaf hash; the forensic one every row's fields and index values.
    assert clean_peak < forensic_peak / 3, peaks


TAMPERINGS = {
    "record edited": "UPDATE event_bodies SET body = replace(body, '\"MOD0\"', '\"CT1_\"') WHERE seq = 12",
    "record deleted": "DELETE FROM event_bodies WHERE seq = 30",
    "record of no event": "INSERT INTO event_bodies SELECT 45, body FROM event_bodies WHERE seq = 5",
    "records swapped": "UPDATE event_bodies SET seq = -1 WHERE seq = 8; UPDATE event_bodies SET seq = 8 WHERE seq = 9; "
                       "UPDATE event_bodies SET seq = 9 WHERE seq = -1",
    "leaf column": "UPDATE events SET leaf = zeroblob(32) WHERE seq = 7",
    "search column": "UPDATE events SET actor_ae = 'X' WHERE seq = 3",
    "place": "UPDATE events SET place = place + 1 WHERE seq = 20",
    "row deleted": "DELETE FROM events WHERE seq = 30; DELETE FROM event_bodies WHERE seq = 30",
    "row copied past the end": "INSERT INTO events SELECT place + 1, 41, patient_id, time_us, kind, actor_ae, "
                               "actor_host, actor_user, leaf FROM events WHERE seq = 5; "
                               "INSERT INTO event_bodies SELECT 41, body FROM event_bodies WHERE seq = 5",
    "seqs swapped": "UPDATE events SET seq = -1 WHERE seq = 8; UPDATE events SET seq = 8 WHERE seq = 9; "
                    "UPDATE events SET seq = 9 WHERE seq = -1",
    "study index row deleted": "DELETE FROM event_studies WHERE seq = 11",
    "study index row added": "INSERT INTO event_studies (bucket, study_uid, seq) VALUES (0, '9.9.9', 2)",
    "study index row of no event": "INSERT INTO event_studies (bucket, study_uid, seq) VALUES (3, '9.9.9', 4)",
    "term row deleted": "DELETE FROM event_terms WHERE term = (SELECT min(term) FROM event_terms)",
    "term row added": "INSERT INTO event_terms (bucket, term, first_seq, seqs) VALUES (0, 'a:NOBODY', 0, x'00000000')",
    "batch time changed": "UPDATE event_batches SET max_time_us = max_time_us + 1",
    "batch deleted": "DELETE FROM event_batches WHERE first_seq = 20",
}


@pytest.mark.parametrize("change", sorted(TAMPERINGS))
def test_any_change_sends_verify_to_the_forensic_reading(tmp_path: Path, change: str) -> None:
    target = str(tmp_path / "store.db")
    es, key = new_store(target, tmp_path)
    es.append(make_events(20))
    es.append(make_events(20, 20))
    es.checkpoint()
    es.close()
    with raw_sql(target) as cur:
        for statement in TAMPERINGS[change].split("; "):
            cur.execute(statement)
    es = EventStore.open(target)
    try:
        with es.engine.connect() as conn:
            assert clean_chain(conn, 41, None) is None
        report = verify_store(es, load_public_key(key))
    finally:
        es.close()
    assert not report.ok and report.findings, change


def test_a_rehashed_record_that_is_not_an_event_is_found_not_fatal(tmp_path: Path) -> None:
    """A record rewritten into something that is no Event (an actor that is a number) and given a
    matching leaf: both readings must report it, neither may stop on it."""
    import orjson

    from pacsguard.store.merkle import leaf_hash

    target = str(tmp_path / "store.db")
    es, key = new_store(target, tmp_path)
    es.append(make_events(10))
    es.close()
    with raw_sql(target) as cur:
        body = cur.execute("SELECT body FROM event_bodies WHERE seq = 4").fetchone()[0]
        sealed = orjson.loads(body)
        sealed["event"]["actor"] = 5
        forged = orjson.dumps(sealed).decode()
        cur.execute("UPDATE event_bodies SET body = ? WHERE seq = 4", (forged,))
        cur.execute("UPDATE events SET leaf = ? WHERE seq = 4", (leaf_hash(forged.encode()),))
    es = EventStore.open(target)
    try:
        report = verify_store(es, load_public_key(key))
    finally:
        es.close()
    found = [f for f in report.findings if f.seq == 4]
    assert found[0].kind == "modified" and "its sealed record is not valid" in found[0].message
    assert {f.kind for f in found} <= {"modified", "index"}  # its index rows no longer match a readable record
