"""The store on SQLite and on a real PostgreSQL: round trips, indexed search, append-only API,
checkpoints, and `audit verify` catching every kind of tampering done with raw SQL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pacsguard.store import EventQuery, EventStore, StoreError
from pacsguard.store.keys import generate_key, load_public_key
from pacsguard.store.merkle import Frontier, inclusion_proof, leaf_hash, root_of, verify_inclusion
from pacsguard.store.schema import STORE_FORMAT_VERSION
from pacsguard.store.verify import verify_store
from store_helpers import make_events, new_store, raw_sql, rehashed, write_revision_0001_store


def test_merkle_frontier_matches_rfc9162_definition():
    leaves = [leaf_hash(str(i).encode()) for i in range(70)]
    f = Frontier()
    for n, leaf in enumerate(leaves, 1):
        f.append(leaf)
        assert f.root() == root_of(leaves[:n])
        g = Frontier.from_bytes(f.size, f.to_bytes())
        assert g.root() == f.root()
    for n in (1, 2, 3, 7, 8, 13, 70):
        for i in range(n):
            proof = inclusion_proof(i, leaves[:n])
            assert verify_inclusion(i, n, leaves[i], proof, root_of(leaves[:n]))
            assert not verify_inclusion(i, n, leaf_hash(b"x"), proof, root_of(leaves[:n]))


def test_round_trip_and_search(target, tmp_path):
    es, key = new_store(target, tmp_path)
    sent = make_events(500)
    for i in range(0, 500, 128):
        es.append(sent[i:i + 128])
    assert es.size() == 500
    got = [s.event for s in es.search(EventQuery(limit=None))]
    assert [e.to_dict() for e in got] == [e.to_dict() for e in sent]

    by_patient = list(es.search(EventQuery(patient="PID0007", limit=None)))
    assert [s.seq for s in by_patient] == [i for i in range(500) if i % 50 == 7]
    by_study = list(es.search(EventQuery(study="1.2.826.0.1.3680043.2.5", limit=None)))
    assert [s.seq for s in by_study] == [i for i in range(500) if i % 80 == 5]
    by_actor = list(es.search(EventQuery(actor="MOD1", limit=None)))
    assert {s.event.actor.ae_title for s in by_actor} == {"MOD1"} and len(by_actor) == 125
    assert len(list(es.search(EventQuery(actor="10.1.0.3", limit=None)))) == len([i for i in range(500) if i % 9 == 3])
    kinds = list(es.search(EventQuery(kind="dicom.association.*", limit=None)))
    assert len(kinds) == len([i for i in range(500) if i % 3 == 0])
    t = sent[100].time
    window = list(es.search(EventQuery(since=t, until=sent[200].time + timedelta(microseconds=1), limit=None)))
    assert window and all(t <= s.event.time <= sent[200].time for s in window)
    both = list(es.search(EventQuery(patient="PID0007", actor="MOD3", limit=None)))
    assert [s.seq for s in both] == [i for i in range(500) if i % 50 == 7 and i % 4 == 3]
    assert len(list(es.search(EventQuery(limit=10)))) == 10
    es.close()


def test_store_is_append_only():
    assert not any(hasattr(EventStore, name) for name in ("update", "delete", "remove", "edit"))


def test_clean_store_verifies_and_checkpoint_signature(target, tmp_path):
    es, key = new_store(target, tmp_path)
    es.append(make_events(300))
    cp1 = es.checkpoint()
    es.append(make_events(77, 300))
    es.close()  # writes the final checkpoint
    reopened = EventStore.open(target)
    cps = reopened.checkpoints()
    assert [c.tree_size for c in cps] == [300, 377] and cps[0].root == cp1.root
    report = verify_store(reopened, load_public_key(key))
    assert report.ok, report.findings
    assert report.newest_checkpoint == 377 and report.newest_checkpoint_valid


def _tampered(target, tmp_path, sql: list[str], n=40, checkpoint=True):
    es, key = new_store(target, tmp_path)
    es.append(make_events(n))
    if checkpoint:
        es.checkpoint()
    es.engine.dispose()
    with raw_sql(target) as cur:
        for stmt in sql:
            cur.execute(stmt)
    return verify_store(EventStore.open(target), load_public_key(key))


def _kinds(report) -> set[tuple[str, int | None]]:
    return {(f.kind, f.seq) for f in report.findings}


def test_verify_catches_edited_column(target, tmp_path):
    report = _tampered(target, tmp_path, ["UPDATE events SET actor_ae = 'EVIL' WHERE seq = 12"])
    assert ("modified", 12) in _kinds(report)
    assert any("actor_ae" in f.message for f in report.findings)


def test_verify_catches_edited_body(target, tmp_path):
    report = _tampered(target, tmp_path,
                       ["UPDATE event_bodies SET body = replace(body, 'PID0013', 'PID9999') WHERE seq = 13"])
    assert ("modified", 13) in _kinds(report)


def test_verify_catches_rehashed_body(target, tmp_path):
    # An attacker who also recomputes the leaf hash of the row they edit: the next event's seal,
    # and the signed checkpoint, still catch it.
    report = rehashed(target, tmp_path)
    assert ("modified", 9) in _kinds(report)
    assert any(f.kind == "checkpoint" for f in report.findings)


def test_verify_catches_deleted_row(target, tmp_path):
    report = _tampered(target, tmp_path, [f"DELETE FROM {t} WHERE seq = 20" for t in ("events", "event_bodies")])
    assert ("deleted", 20) in _kinds(report) and not any(k == "inserted" for k, _ in _kinds(report))


def test_verify_catches_inserted_row(target, tmp_path):
    # Shift the tail to make room, then insert a forged copy of event 5 as event 6.
    shift = [f"UPDATE {t} SET seq = seq + 1000 WHERE seq >= 6; UPDATE {t} SET seq = seq - 999 WHERE seq >= 1000"
             for t in ("events", "event_bodies")]
    shift = [q for pair in shift for q in pair.split("; ")] + [
        "INSERT INTO events SELECT -6, 6, patient_id, time_us, kind, actor_ae, actor_host, actor_user, leaf"
        " FROM events WHERE seq = 5", "INSERT INTO event_bodies SELECT 6, body FROM event_bodies WHERE seq = 5"]
    report = _tampered(target, tmp_path, shift)
    kinds = _kinds(report)
    assert any(k == "inserted" for k, _ in kinds), report.findings
    assert not any(k == "deleted" for k, _ in kinds)


def test_verify_catches_swapped_rows(target, tmp_path):
    swap = [f"UPDATE {t} SET seq = {a} WHERE seq = {b}" for t in ("events", "event_bodies")
            for a, b in ((-1, 3), (3, 17), (17, -1))]
    report = _tampered(target, tmp_path, swap)
    assert {("reordered", 3), ("reordered", 17)} <= _kinds(report)


def test_verify_catches_truncated_tail_after_checkpoint(target, tmp_path):
    report = _tampered(target, tmp_path, ["DELETE FROM events WHERE seq >= 35",
                                          "DELETE FROM event_bodies WHERE seq >= 35",
                                          "UPDATE tree_state SET size = 35"])
    assert any(f.kind == "truncated" and f.seq == 35 for f in report.findings), report.findings
    assert not report.newest_checkpoint_valid


def test_verify_catches_forged_checkpoint(target, tmp_path):
    es, key = new_store(target, tmp_path)
    es.append(make_events(10))
    es.checkpoint()
    es.engine.dispose()
    # The attacker signs with their own key: the verifier's public key rejects it.
    other = tmp_path / "attacker" / "a.key"
    generate_key(other)
    forger = EventStore.open(target, key_path=other)
    forger.append(make_events(1, 10))
    forger.checkpoint()
    forger.engine.dispose()
    with raw_sql(target) as cur:
        cur.execute("UPDATE checkpoints SET time_us = time_us + 1 WHERE tree_size = 10")
    report = verify_store(EventStore.open(target), load_public_key(key))
    bad = {f.seq for f in report.findings if f.kind == "checkpoint"}
    assert bad == {10, 11} and report.newest_checkpoint_valid is False


def test_verify_catches_index_tampering(target, tmp_path):
    report = _tampered(target, tmp_path, ["INSERT INTO event_patients VALUES (0, 'OTHER', 4)"])
    assert ("index", 4) in _kinds(report)
    report = _tampered(target, tmp_path, ["UPDATE event_studies SET study_uid = 'OTHER' WHERE seq = 9"])
    assert ("index", 9) in _kinds(report)


def test_verify_catches_moved_row(target, tmp_path):
    """A row moved to another place (where a search by its patient does not look) is reported."""
    report = _tampered(target, tmp_path, ["UPDATE events SET place = place + 1 WHERE seq = 7"])
    assert [(f.kind, f.seq) for f in report.findings] == [("index", 7)]
    assert "search by patient would miss it" in report.findings[0].message


def test_not_a_store_is_a_clear_error(tmp_path):
    bogus = tmp_path / "notes.db"
    bogus.write_text("hello, not a database " * 100)
    with pytest.raises(StoreError, match="not a pacsguard store"):
        EventStore.open(str(bogus))
    import sqlite3
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE patients (id TEXT)")
    with pytest.raises(StoreError, match="not a pacsguard store"):
        EventStore.open(str(other))
    with pytest.raises(StoreError, match="no store here"):
        EventStore.open(str(tmp_path / "missing.db"))


def test_unreachable_postgres_names_the_host():
    with pytest.raises(StoreError, match=r"127\.0\.0\.1:9"):
        EventStore.open("postgresql://nobody@127.0.0.1:9/none")


def test_two_writers_share_one_chain(target, tmp_path):
    a, key = new_store(target, tmp_path)
    b = EventStore.open(target, key_path=key)
    for i in range(10):
        (a if i % 2 else b).append(make_events(7, i * 7))
    a.checkpoint()
    assert a.size() == 70
    assert verify_store(a, load_public_key(key)).ok


def test_verify_catches_term_and_batch_index_tampering(target, tmp_path):
    report = _tampered(target, tmp_path, ["DELETE FROM event_terms WHERE term = 'actor:MOD1'"])
    assert any(f.kind == "index" and "'actor:MOD1' is missing" in f.message for f in report.findings), report.findings
    report = _tampered(target, tmp_path, ["UPDATE event_batches SET min_time_us = min_time_us + 1000000"])
    assert any(f.kind == "index" and "time range" in f.message for f in report.findings), report.findings
    report = _tampered(target, tmp_path, ["UPDATE event_terms SET term = 'actor:SOMEONE' WHERE term = 'actor:MOD2'"])
    messages = " ".join(f.message for f in report.findings)
    assert "'actor:SOMEONE' is listed" in messages and "'actor:MOD2' is missing" in messages


def test_index_spans_buckets(target, tmp_path, monkeypatch):
    """Small buckets (16 events) so that one store has many: searches find events in all of them,
    newest first and limited too, and verify agrees with the index."""
    from pacsguard.store import index

    monkeypatch.setattr(index, "BUCKET_BITS", 4)
    es, key = new_store(target, tmp_path)
    sent = make_events(300)
    for i in range(0, 300, 37):  # batches that straddle buckets
        es.append(sent[i:i + 37])
    assert [s.seq for s in es.search(EventQuery(patient="PID0007", limit=None))] == list(range(7, 300, 50))
    assert [s.seq for s in es.search(EventQuery(patient="PID0007", newest_first=True, limit=4))] == [257, 207, 157, 107]
    assert [s.seq for s in es.search(EventQuery(patient="PID0007", after_seq=57, limit=2))] == [107, 157]
    assert [s.seq for s in es.search(EventQuery(study="1.2.826.0.1.3680043.2.5", limit=None))] == [5, 85, 165, 245]
    newest = [s.seq for s in es.search(EventQuery(actor="MOD1", newest_first=True, limit=5))]
    assert newest == [297, 293, 289, 285, 281]
    exact = [s.seq for s in es.search(EventQuery(kind="dicom.association.accepted", after_seq=280, limit=None))]
    assert exact == [282, 285, 288, 291, 294, 297]
    since, until = sent[40].time, sent[260].time
    assert [s.seq for s in es.search(EventQuery(since=since, until=until, limit=None))] == list(range(40, 260))
    es.checkpoint()
    report = verify_store(es, load_public_key(key))
    assert report.ok, report.findings
    es.close()


def test_patient_search_finds_every_patient_of_an_event(target, tmp_path, monkeypatch):
    """An event is placed by its first patient; it is found by its later ones too, and patients whose
    hashes collide (here: all of them) are still told apart."""
    from pacsguard.events import Event
    from pacsguard.store import index

    monkeypatch.setattr(index, "BUCKET_BITS", 3)
    monkeypatch.setattr(index, "patient_hash", lambda patient_id: 5)
    es, key = new_store(target, tmp_path)
    sent = make_events(60)
    # C-FIND responses that disclosed several patients, the queried one not always first.
    for i in (10, 31, 44):
        sent[i] = Event(kind="dicom.dimse.c-find", component="gateway",
                        patient_ids=(f"PID{i % 50:04d}", "PIDX", "PIDX"))
    for i in range(0, 60, 9):
        es.append(sent[i:i + 9])
    assert [s.seq for s in es.search(EventQuery(patient="PIDX", limit=None))] == [10, 31, 44]
    assert [s.seq for s in es.search(EventQuery(patient="PIDX", newest_first=True, limit=2))] == [44, 31]
    assert [s.seq for s in es.search(EventQuery(patient="PID0031", limit=None))] == [31]
    assert [s.seq for s in es.search(EventQuery(patient="PID0007", limit=None))] == [7, 57]
    assert [s.seq for s in es.search(EventQuery(patient="PID0007", actor="MOD3", limit=None))] == [7]
    assert [s.seq for s in es.search(EventQuery(patient="PID0007", study="1.2.826.0.1.3680043.2.57",
                                                limit=None))] == [57]
    assert [s.seq for s in es.search(EventQuery(patient="PIDX", kind="dicom.dimse.c-find", after_seq=10,
                                                limit=None))] == [31, 44]
    assert not list(es.search(EventQuery(patient="PID9999", limit=None)))
    es.checkpoint()
    assert verify_store(es, load_public_key(key)).ok
    es.close()


def test_store_of_format_1_is_migrated(target, tmp_path):
    """A store written by pacsguard before the search index of format 2 (Alembic revision 0001) is
    refused by a plain open, then upgraded in place by the explicit migration (after its backup)
    through formats 2 and 3 (placement by patient), verifies, and is searchable through the new index."""
    from pacsguard.events import Event
    from pacsguard.store import database, upgrade

    sent = make_events(60)
    sent[20] = Event(kind="dicom.dimse.c-find", component="gateway", patient_ids=("PID0020", "PIDX"))
    write_revision_0001_store(target, sent)
    with pytest.raises(StoreError, match="revision 0001.*pacsguard store migrate --backup-to DIR"):
        EventStore.open(target)

    url = database.normalise_target(target)
    engine = database.make_engine(url, create=False)
    try:
        result = upgrade.upgrade(engine, url, tmp_path / "backup")
    finally:
        engine.dispose()
    assert (result.before.revision, result.after.revision) == ("0001", database.HEAD_REVISION)
    assert result.before.events == result.after.events == 60
    assert result.backup is not None and result.backup.parent == tmp_path / "backup"

    es = EventStore.open(target)
    assert [s.seq for s in es.search(EventQuery(actor="MOD1", limit=None))] == list(range(1, 60, 4))
    assert [s.seq for s in es.search(EventQuery(patient="PID0007", limit=None))] == [7, 57]
    assert [s.seq for s in es.search(EventQuery(patient="PIDX", limit=None))] == [20]
    assert [s.seq for s in es.search(EventQuery(patient="PID0020", limit=None))] == [20]
    report = verify_store(es, None)
    assert not [f for f in report.findings if f.kind != "checkpoint"], report.findings
    es.append(make_events(5, 60))
    assert [s.seq for s in es.search(EventQuery(patient="PID0010", limit=None))] == [10, 60]
    with raw_sql(target) as cur:
        cur.execute("SELECT value FROM pacsguard_meta WHERE key = 'format_version'")
        assert cur.fetchone()[0] == STORE_FORMAT_VERSION == "4"
        cur.execute("SELECT patient_id, seq FROM event_patients")
        assert cur.fetchall() == [("PIDX", 20)]
    es.close()


def test_head_revision_is_the_migration_scripts_head() -> None:
    """Opening a store compares its revision with HEAD_REVISION instead of loading Alembic's scripts:
    a new migration must move HEAD_REVISION too, or stores at the old head would not be upgraded."""
    from alembic.script import ScriptDirectory

    from pacsguard.store import database

    assert ScriptDirectory.from_config(database._alembic_config()).get_current_head() == database.HEAD_REVISION
