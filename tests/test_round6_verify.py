"""Tamper evidence gaps an outside tester found in round 6 (docs/store.md, "What verify finds"):
a store re-signed with a new key passed `audit verify --witness`; the tree head (tree_state) was
never checked against the events, and the writer appended and signed from a damaged one; columns
of another type crashed verify; one deleted event read as a cut tail; an edited checkpoint root
was blamed on the events. Each test edits a real SQLite store from outside, as an insider would."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from pacsguard.store import EventStore
from pacsguard.store.errors import StoreError
from pacsguard.store.keys import generate_key, key_id, load_private_key, load_public_key
from pacsguard.store.merkle import leaf_hash
from pacsguard.store.store import Checkpoint, checkpoint_message
from pacsguard.store.verify import VerifyReport, verify_store
from pacsguard.store.witnessed import check_witnessed, exit_code
from store_helpers import make_events, new_store


def _store(tmp: Path, batches: int = 5, per_batch: int = 4) -> tuple[str, Path]:
    """A store of ``batches`` batches, each followed by a checkpoint (sizes 4, 8, ...)."""
    target = str(tmp / "store.db")
    es, key = new_store(target, tmp, checkpoint_interval=3600)
    for b in range(batches):
        es.append(make_events(per_batch, b * per_batch))
        es.checkpoint()
    es.close()
    return target, key


def _sql(target: str, *statements: str) -> None:
    conn = sqlite3.connect(target, isolation_level=None)
    try:
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


def _verify(target: str, key: Path) -> VerifyReport:
    es = EventStore.open(target)
    try:
        return verify_store(es, load_public_key(key))
    finally:
        es.close()


def _kinds(report: VerifyReport) -> list[tuple[str, int | None]]:
    return [(f.kind, f.seq) for f in report.findings]


# --- 1: a store re-signed with a new key, against a witness of the old one -----------------------

def test_a_witness_holding_only_another_keys_checkpoints_is_a_finding(tmp_path: Path) -> None:
    target, old_key = _store(tmp_path, batches=3)
    witnessed = EventStore.open(target).checkpoints()
    new_key = tmp_path / "new.key"
    generate_key(new_key)
    signer = load_private_key(new_key)
    # The insider re-signs every checkpoint with a key of their own (its .pub left beside the store).
    conn = sqlite3.connect(target)
    for size, root, time_us in conn.execute("SELECT tree_size, root, time_us FROM checkpoints").fetchall():
        conn.execute("UPDATE checkpoints SET signature = ?, key_id = ? WHERE tree_size = ?",
                     (signer.sign(checkpoint_message(size, root, time_us)), key_id(signer.public_key()), size))
    conn.commit()
    conn.close()
    es = EventStore.open(target)
    public = load_public_key(new_key)
    report = verify_store(es, public)
    assert report.ok  # signed consistently by the new key: only the witness can tell
    check_witnessed(report, es.checkpoints(), witnessed, public, "w.jsonl")
    es.close()
    assert [f.kind for f in report.findings] == ["witness"]
    message = report.findings[0].message
    assert key_id(load_public_key(old_key)) in message and key_id(public) in message
    assert "re-signed with a new key" in message and "still hash to the root it saw" in message
    assert exit_code(report.findings) == 1


# --- 2 and 3: the tree head against the events; the writer refuses a damaged head ---------------

def test_the_newest_event_re_hashed_is_told_by_the_tree_head(tmp_path: Path) -> None:
    target, key = _store(tmp_path, batches=2)
    es = EventStore.open(target)  # two events past the last checkpoint: the chain alone protects them
    es.append(make_events(2, 100))
    es.close()
    conn = sqlite3.connect(target)
    body = conn.execute("SELECT body FROM event_bodies WHERE seq = 9").fetchone()[0].replace("event 101 ", "event X ")
    conn.execute("UPDATE event_bodies SET body = ? WHERE seq = 9", (body,))
    conn.execute("UPDATE events SET leaf = ? WHERE seq = 9", (leaf_hash(body.encode()),))
    conn.commit()
    conn.close()
    report = _verify(target, key)
    assert _kinds(report) == [("modified", 9)]
    assert "tree head" in report.findings[0].message and "re-hashed" in report.findings[0].message


@pytest.mark.parametrize(("column", "value", "named"), [
    ("last_leaf", "zeroblob(32)", "tree_state.last_leaf"),
    ("frontier", "zeroblob(length(frontier))", "tree_state.frontier"),
])
def test_an_edited_tree_head_is_a_finding(tmp_path: Path, column: str, value: str, named: str) -> None:
    target, key = _store(tmp_path, batches=3)
    _sql(target, f"UPDATE tree_state SET {column} = {value}")
    report = _verify(target, key)
    assert _kinds(report) == [("tree head", None)]
    assert named in report.findings[0].message


@pytest.mark.parametrize(("edit", "named"), [
    ("UPDATE tree_state SET frontier = zeroblob(32)", "frontier is not the 2 hashes"),
    ("UPDATE tree_state SET frontier = zeroblob(64)", "frontier does not give the root signed at size 12"),
    ("UPDATE tree_state SET last_leaf = zeroblob(32)", "last_leaf is not the leaf of event #11"),
])
def test_the_writer_refuses_a_damaged_tree_head(tmp_path: Path, edit: str, named: str) -> None:
    target, key = _store(tmp_path, batches=3)
    _sql(target, edit)
    es = EventStore.open(target, key_path=key, checkpoint_interval=3600)
    with pytest.raises(StoreError, match=named):
        es.append(make_events(3, 50))
    es.close()
    conn = sqlite3.connect(target)
    assert conn.execute("SELECT count(*), max(seq) FROM events").fetchone() == (12, 11)
    assert conn.execute("SELECT max(tree_size) FROM checkpoints").fetchone() == (12,)  # nothing signed
    conn.close()


# --- 4: columns of another type ------------------------------------------------------------------

@pytest.mark.parametrize(("edit", "kind", "said"), [
    ("UPDATE events SET leaf = 'xyz' WHERE seq = 5", "modified", "leaf column"),
    ("UPDATE events SET seq = 5.5 WHERE seq = 5", "modified", "column seq"),
    ("UPDATE checkpoints SET root = 'abc' WHERE tree_size = 12", "checkpoint", "column root holds 'abc' (text)"),
    ("UPDATE tree_state SET size = 'x'", "tree head", "tree_state.size holds 'x' (text)"),
])
def test_a_column_of_another_type_is_a_finding(tmp_path: Path, edit: str, kind: str, said: str) -> None:
    target, key = _store(tmp_path, batches=3)
    _sql(target, edit)
    report = _verify(target, key)
    assert [f.kind for f in report.findings] == [kind]
    assert said in report.findings[0].message


# --- 5: one event deleted in the middle ------------------------------------------------------------

def test_one_deleted_event_is_a_gap_not_a_cut_tail(tmp_path: Path) -> None:
    target, key = _store(tmp_path, batches=5)
    _sql(target, "DELETE FROM events WHERE seq = 5")
    report = _verify(target, key)
    assert [seq for kind, seq in _kinds(report) if kind == "deleted"] == [5]
    assert {kind for kind, _ in _kinds(report)} <= {"deleted", "index"}
    assert all(seq == 5 for _, seq in _kinds(report))  # only the deleted event's own index rows
    assert report.newest_checkpoint_root_ok is True  # checked past the gap: #6 sealed #5's hash
    assert len(report.chain) == 20


# --- 8: an edited checkpoint root, events intact ------------------------------------------------------

def test_an_edited_checkpoint_root_blames_the_checkpoint(tmp_path: Path) -> None:
    target, key = _store(tmp_path, batches=4)
    _sql(target, "UPDATE checkpoints SET root = (SELECT root FROM checkpoints WHERE tree_size = 12) "
                 "WHERE tree_size = 16")
    report = _verify(target, key)
    messages = [f.message for f in report.findings]
    assert all(f.kind == "checkpoint" and f.seq == 16 for f in report.findings)
    assert not any("rewritten" in m for m in messages)
    assert any("root column was edited" in m for m in messages)


def test_the_stores_checkpoint_list_leaves_out_a_row_of_another_type(tmp_path: Path) -> None:
    """The store's own checkpoint list leaves a row of another type out (verify names it)."""
    target, _ = _store(tmp_path, batches=3)
    _sql(target, "UPDATE checkpoints SET root = 'abc' WHERE tree_size = 12")
    held = EventStore.open(target).checkpoints()
    assert [cp.tree_size for cp in held] == [4, 8]
    assert all(isinstance(cp, Checkpoint) and isinstance(cp.root, bytes) for cp in held)


def test_one_deleted_event_is_no_cut_tail_to_a_witness(tmp_path: Path) -> None:
    target, key = _store(tmp_path, batches=5)
    witnessed = EventStore.open(target).checkpoints()
    _sql(target, "DELETE FROM events WHERE seq = 5")
    es = EventStore.open(target)
    report = verify_store(es, load_public_key(key))
    check_witnessed(report, es.checkpoints(), witnessed, load_public_key(key), "w.jsonl")
    es.close()
    assert exit_code(report.findings) == 1  # the deletion itself; the witness's checkpoints still hold
    assert not any(f.kind in ("truncated tail", "rollback", "forked") for f in report.findings)


def test_two_deleted_events_in_a_row_are_no_cut_tail_either(tmp_path: Path) -> None:
    target, key = _store(tmp_path, batches=5)
    witnessed = EventStore.open(target).checkpoints()
    _sql(target, "DELETE FROM events WHERE seq IN (5, 6)")
    es = EventStore.open(target)
    report = verify_store(es, load_public_key(key))
    check_witnessed(report, es.checkpoints(), witnessed, load_public_key(key), "w.jsonl")
    es.close()
    assert not any(f.kind in ("truncated", "truncated tail") for f in report.findings), report.findings
    assert [f.seq for f in report.findings if f.kind == "deleted"][:2] == [5, 6]
    assert any("cannot be checked" in f.message for f in report.findings)
    assert exit_code(report.findings) == 1


def test_a_report_over_a_leaf_of_another_type_is_a_clear_error(tmp_path: Path) -> None:
    from pacsguard.store.proofs import inclusion_proofs

    target, _ = _store(tmp_path, batches=3)
    _sql(target, "UPDATE events SET leaf = 'xyz' WHERE seq = 5")
    es = EventStore.open(target)
    try:
        with pytest.raises(StoreError, match="event #5's leaf column holds 'xyz'"):
            inclusion_proofs(es, [1, 2], es.checkpoints()[-1])
    finally:
        es.close()


def test_a_witness_holding_nothing_of_a_store_with_checkpoints_is_a_finding(tmp_path: Path) -> None:
    """A witness service is asked for this log only: for a store re-signed with a new key it answers
    that it knows no such log (an empty list), which must not read as "extends all it holds"."""
    target, key = _store(tmp_path, batches=2)
    es = EventStore.open(target)
    report = verify_store(es, load_public_key(key))
    check_witnessed(report, es.checkpoints(), [], load_public_key(key), "https://w.example:8471")
    es.close()
    assert [f.kind for f in report.findings] == ["witness"]
    assert "holds no checkpoint of log" in report.findings[0].message
    assert exit_code(report.findings) == 1
