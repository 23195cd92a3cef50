"""`audit verify` on values of types pacsguard never writes (a text or blob seq) and on sealed records
that are stored but cannot be read (not JSON, not an object, no event, too deep, a number too long,
a blob, NUL, bytes that are not UTF-8): findings naming the event, exit 1, never an internal error,
never a deleted or truncated event for a record that is there, and never a byte of the record."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from pacsguard.store import EventStore
from pacsguard.store.keys import load_public_key
from pacsguard.store.verify import VerifyReport, verify_store
from store_helpers import make_events, new_store
from test_cli import run

N = 40
# Words of the stored records (make_events): none may show in what verify says of a damaged one.
RECORD_TEXT = ("PID0", "gateway", "cnicode", "ünïcode", "1.2.826", "MOD1", "10.1.0")


def _store(tmp_path: Path) -> tuple[Path, Path]:
    db = tmp_path / "store.db"
    es, key = new_store(str(db), tmp_path)
    es.append(make_events(N))
    es.checkpoint()
    es.close()
    return db, key


def _tamper(db: Path, stmt: str, args: tuple[object, ...] = ()) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute(stmt, args)
    finally:
        conn.close()


def _verify(db: Path, key: Path) -> VerifyReport:
    es = EventStore.open(str(db))
    try:
        return verify_store(es, load_public_key(key))
    finally:
        es.close()


def _cli(db: Path, key: Path, tmp_path: Path) -> tuple[str, dict[str, object]]:
    done = run("audit", "verify", "--store", str(db), "--key", f"{key}.pub", "--format", "json", cwd=tmp_path,
               check_code=1)
    assert "internal error" not in done.stderr
    return done.stdout + done.stderr, json.loads(done.stdout)


def _no_record_text(text: str) -> None:
    for word in RECORD_TEXT:
        assert word not in text


@pytest.mark.parametrize("value", ["five", b"\x05", "x"])
@pytest.mark.parametrize("seq", [5, N - 1])
def test_text_or_blob_seq_is_a_finding_naming_the_column(tmp_path: Path, seq: int, value: object) -> None:
    db, key = _store(tmp_path)
    _tamper(db, "UPDATE events SET seq = ? WHERE seq = ?", (value, seq))
    report = _verify(db, key)
    assert [f.kind for f in report.findings] == ["modified"]
    assert report.findings[0].seq == seq and "column seq" in report.findings[0].message
    assert report.events == N


def test_text_seq_from_the_cli_exits_1(tmp_path: Path) -> None:
    db, key = _store(tmp_path)
    _tamper(db, "UPDATE events SET seq = 'five' WHERE seq = 5")
    out, report = _cli(db, key, tmp_path)
    findings = report["findings"]
    assert isinstance(findings, list) and [(f["kind"], f["seq"]) for f in findings] == [("modified", 5)]
    assert "column seq" in findings[0]["message"]


@pytest.mark.parametrize("stmt", ["UPDATE event_batches SET last_seq = 'x' WHERE first_seq = 0",
                                  "UPDATE event_batches SET last_seq = x'01' WHERE first_seq = 0",
                                  "UPDATE checkpoints SET tree_size = 'forty' WHERE tree_size = 40",
                                  "UPDATE tree_state SET size = 'forty'",
                                  "UPDATE event_studies SET seq = 'x' WHERE seq = 3",
                                  "UPDATE event_terms SET first_seq = 'x' WHERE first_seq = 0"])
def test_text_counts_elsewhere_are_findings(tmp_path: Path, stmt: str) -> None:
    db, key = _store(tmp_path)
    _tamper(db, stmt)
    report = _verify(db, key)
    assert report.findings
    assert not any(f.kind in ("deleted", "truncated") for f in report.findings)


# A tamper of one record, and what the finding must say of it, in words.
UNREADABLE = {
    "not json": ("'not json'", "not JSON"),
    "array": ("'[1,2]'", "not an object"),
    "no event": ("json_remove(body, '$.event')", "no 'event' member"),
    "event not object": ("json_set(body, '$.event', json_array(1, 2))", "'event' member"),
    "event lacks id": ("json_remove(body, '$.event.id')", "no 'id' member"),
    "too deep": ("printf('%.*c', 3000, '[')", "nested deeper"),
    "long number": ("'{\"a\":' || printf('%.*c', 5000, '9') || '}'", "number too long"),
    "blob": ("CAST(body AS BLOB)", "blob"),
    "nul": ("CAST(x'00' AS TEXT)", "not JSON"),
    "not utf-8": ("CAST(replace(CAST(body AS BLOB), CAST('PID0' AS BLOB), x'ff49443030') AS TEXT)",
                  "not valid UTF-8"),
}


@pytest.mark.parametrize("seq", [11, N - 1])
@pytest.mark.parametrize("name", list(UNREADABLE))
def test_unreadable_record_is_one_modified_finding(tmp_path: Path, name: str, seq: int) -> None:
    db, key = _store(tmp_path)
    expr, words = UNREADABLE[name]
    _tamper(db, f"UPDATE event_bodies SET body = {expr} WHERE seq = ?", (seq,))
    report = _verify(db, key)
    kinds = {f.kind for f in report.findings}
    assert kinds <= {"modified", "checkpoint"}, report.findings
    modified = [f for f in report.findings if f.kind == "modified"]
    assert [f.seq for f in modified] == [seq]
    assert words in modified[0].message
    assert "list indices" not in modified[0].message and "('event')" not in modified[0].message
    assert report.events == N
    _no_record_text(" ".join(f.message for f in report.findings))


@pytest.mark.parametrize("name", ["not utf-8", "not json"])
def test_unreadable_record_from_the_cli_exits_1_without_its_text(tmp_path: Path, name: str) -> None:
    db, key = _store(tmp_path)
    _tamper(db, f"UPDATE event_bodies SET body = {UNREADABLE[name][0]} WHERE seq = 11")
    out, report = _cli(db, key, tmp_path)
    findings = report["findings"]
    assert isinstance(findings, list)
    assert [f["seq"] for f in findings if f["kind"] == "modified"] == [11]
    assert {f["kind"] for f in findings} <= {"modified", "checkpoint"}
    assert "cannot read the store" not in out
    _no_record_text(out)
