"""`audit verify` tells a forensic reader what was changed, and only that: an edited record from an
edited column or stored hash, "re-hashed" only when it was, a failing signature apart from a root
that differs, a checkpoint of another key as such, and a forged row past the tree head as inserted."""

from __future__ import annotations

from pathlib import Path

from pacsguard.store import EventStore
from pacsguard.store.index import place_of, placed_by
from pacsguard.store.keys import generate_key, load_public_key
from pacsguard.store.merkle import leaf_hash
from pacsguard.store.store import seal
from pacsguard.store.verify import VerifyReport, verify_store
from store_helpers import make_events, new_store, param, raw_sql, rehashed


def _after(target: str, tmp_path: Path, stmt: str, args: tuple[object, ...] = ()) -> VerifyReport:
    es, key = new_store(target, tmp_path)
    es.append(make_events(40))
    es.checkpoint()
    es.engine.dispose()
    with raw_sql(target) as cur:
        cur.execute(stmt, args)
    return verify_store(EventStore.open(target), load_public_key(key))


def _messages(report: VerifyReport, seq: int) -> str:
    return " | ".join(f.message for f in report.findings if f.seq == seq)


def test_edited_record_names_the_column_as_the_original(target: str, tmp_path: Path) -> None:
    report = _after(target, tmp_path,
                    "UPDATE event_bodies SET body = replace(body, '\"MOD0\"', '\"CT1_\"') WHERE seq = 12")
    said = _messages(report, 12)
    assert "its sealed record was edited" in said
    assert "the record now says actor_ae 'CT1_'; its column, copied at sealing, holds 'MOD0'" in said
    assert "sealed 'CT1_'" not in said and "re-hashed" not in " ".join(f.message for f in report.findings)


def test_edited_leaf_column_leaves_the_record_intact(target: str, tmp_path: Path) -> None:
    report = _after(target, tmp_path, f"UPDATE events SET leaf = {param(target)} WHERE seq = 7", (bytes(32),))
    assert "its stored hash (the leaf column) was changed; the sealed record is intact" in _messages(report, 7)
    assert not any(f.kind == "checkpoint" for f in report.findings)


def test_rehashed_record_keeps_a_valid_signature_and_a_differing_root(target: str, tmp_path: Path) -> None:
    report = rehashed(target, tmp_path)
    assert "its sealed record was edited and re-hashed" in _messages(report, 9)
    assert report.newest_checkpoint_signature == "valid" and report.newest_checkpoint_root_ok is False
    assert not report.newest_checkpoint_valid
    assert not any("INVALID" in f.message for f in report.findings)


def test_checkpoint_of_another_key_names_both_keys(target: str, tmp_path: Path) -> None:
    es, _ = new_store(target, tmp_path)
    es.append(make_events(10))
    es.close()
    other = generate_key(tmp_path / "other" / "o.key")
    report = verify_store(EventStore.open(target), load_public_key(other))
    assert report.newest_checkpoint_signature == "other key" and report.newest_checkpoint_root_ok is True
    [finding] = report.findings
    assert finding.kind == "checkpoint" and f"the key given is {report.key_id}" in finding.message
    assert f"signed by key {report.newest_checkpoint_key}" in finding.message and "INVALID" not in finding.message


def test_forged_signature_with_the_named_key_is_invalid(target: str, tmp_path: Path) -> None:
    report = _after(target, tmp_path, "UPDATE checkpoints SET time_us = time_us + 1")
    assert report.newest_checkpoint_signature == "invalid" and report.newest_checkpoint_root_ok is True
    assert any("signature INVALID" in f.message for f in report.findings)


def test_row_forged_past_the_tree_head_is_inserted(target: str, tmp_path: Path) -> None:
    es, key = new_store(target, tmp_path)
    es.append(make_events(20))
    es.close()
    with raw_sql(target) as cur:
        cur.execute("SELECT leaf FROM events WHERE seq = 19")
        prev = bytes(cur.fetchone()[0])
        forged = make_events(1, 20)[0]
        body = seal(forged.to_json(), prev, 20)
        patient = placed_by(forged.patient_ids)
        p = param(target)
        cur.execute(f"INSERT INTO events VALUES ({', '.join([p] * 9)})",
                    (place_of(20, patient), 20, patient, forged.time_us, forged.kind, forged.actor.ae_title,
                     forged.actor.host, forged.actor.user, leaf_hash(body.encode())))
        cur.execute(f"INSERT INTO event_bodies VALUES ({p}, {p})", (20, body))
    report = verify_store(EventStore.open(target), load_public_key(key))
    assert ("inserted", 20) in {(f.kind, f.seq) for f in report.findings}
