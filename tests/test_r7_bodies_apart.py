"""Store format 4 (issue #18): the sealed records sit in `event_bodies`, apart from the
patient-placed `events` rows (docs/store.md, "Layout"; docs/PERFORMANCE.md, "Bodies apart").

A store of format 3 written by the pacsguard before this change (its source taken from git, run
as a subprocess) is refused by the new code until `pacsguard store migrate`, then verifies with
the same leaves, checkpoints, searches and patient report. Each way of tampering with the new
table (a record deleted, added, moved to another seq, edited) is a finding of `audit verify`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pacsguard.store import EventStore, database
from pacsguard.store.keys import load_public_key
from pacsguard.store.verify import VerifyReport, verify_store
from store_helpers import make_events, new_store, raw_sql
from test_cli import run

ROOT = Path(__file__).resolve().parents[1]
#: The last commit of store format 3 (Alembic revision 0003): the "old code".
FORMAT_3_COMMIT = "330fa5a26e6622ee7d333247661c2c241837d5a9"
HINT = "pacsguard store migrate --backup-to DIR"


@pytest.fixture(scope="module")
def old_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pacsguard's source as of FORMAT_3_COMMIT, in a folder of its own (the shared tree stays)."""
    dest = tmp_path_factory.mktemp("format3")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", FORMAT_3_COMMIT, "src"], capture_output=True,
                             timeout=60, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, timeout=60, check=True)
    src = dest / "src"
    where = _old(src, "-c", "import pacsguard; print(pacsguard.__file__)", module=False).stdout.strip()
    assert where == str(src / "pacsguard" / "__init__.py")
    return src


def _old(src: Path, *args: str, cwd: Path | None = None, module: bool = True) -> subprocess.CompletedProcess[str]:
    """The old pacsguard (its CLI, or ``python -c`` when not ``module``), the tests folder importable."""
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{ROOT / 'tests'}", "COLUMNS": "200"}
    argv = [sys.executable, "-m", "pacsguard.cli", *args] if module else [sys.executable, *args]
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def _fill_with_old_code(src: Path, store: str, key: Path) -> None:
    """90 events in three batches, a checkpoint after each, written by the old code."""
    _old(src, "-c", "import sys\n"
         "from pacsguard.store import EventStore\n"
         "from store_helpers import make_events\n"
         "es = EventStore.open(sys.argv[1], key_path=sys.argv[2])\n"
         "for b in range(3):\n"
         "    es.append(make_events(30, 30 * b))\n"
         "    es.checkpoint()\n"
         "es.close()\n", store, str(key), module=False)


def _searches(store: str, cwd: Path, cli: Any) -> list[str]:
    """What the searches and the patient report print (the report without its time of making)."""
    out = [cli("events", "search", "--store", store, "--patient", p, "--format", "json", cwd=cwd).stdout
           for p in ("PID0003", "PID0049")]
    out += [cli("events", "search", "--store", store, *args, "--format", "json", cwd=cwd).stdout for args in (
        ("--kind", "dicom.association.*"), ("--actor", "MOD2"), ("--study", "1.2.826.0.1.3680043.2.7"),
        ("--since", "2000-01-01", "--limit", "5"))]
    report = cli("audit", "patient", "--store", store, "PID0007", "--format", "csv", "--no-checkpoint", cwd=cwd)
    out.append(report.stdout)
    return out


def _state(target: str) -> tuple[list[Any], list[Any]]:
    """The leaves in seq order and the checkpoint rows, read with SQL."""
    with raw_sql(target) as cur:
        cur.execute("SELECT seq, leaf FROM events ORDER BY seq")
        leaves = [(seq, bytes(leaf)) for seq, leaf in cur.fetchall()]
        cur.execute("SELECT tree_size, root, time_us, key_id, signature FROM checkpoints ORDER BY tree_size")
        cps = [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in cur.fetchall()]
    return leaves, cps


@pytest.fixture(params=["sqlite", "postgresql"])
def old_store(request: pytest.FixtureRequest, tmp_path: Path, old_src: Path) -> tuple[str, Path]:
    """A format-3 store filled by the old code: its path or URL, and its signing key."""
    _old(old_src, "init", cwd=tmp_path)
    key = tmp_path / "var/keys/store-signing.key"
    if request.param == "sqlite":
        target = str(tmp_path / "var/pacsguard.db")
    else:
        target = request.getfixturevalue("postgres_db_url")
        _old(old_src, "-c", "import sys\nfrom pacsguard.store import EventStore\n"
             "EventStore.open(sys.argv[1], create=True).close()\n", target, module=False)
    _fill_with_old_code(old_src, target, key)
    return target, key


def test_a_format_3_store_is_refused_then_migrated_with_the_same_chain_and_answers(
        old_store: tuple[str, Path], tmp_path: Path, old_src: Path) -> None:
    target, key = old_store
    old_cli = lambda *args, cwd: _old(old_src, *args, cwd=cwd)  # noqa: E731
    before = _searches(target, tmp_path, old_cli)
    leaves, cps = _state(target)
    assert len(leaves) == 90 and [cp[0] for cp in cps] == [30, 60, 90]
    assert '"ok": true' in _old(old_src, "audit", "verify", "--store", target, "--format", "json", cwd=tmp_path).stdout
    # The new code refuses the old store, naming both revisions and the one command that upgrades it.
    for args in (("events", "search"), ("audit", "verify")):
        err = " ".join(run(*args, "--store", target, cwd=tmp_path, check_code=2).stderr.split())
        assert "revision 0003" in err and f"revision {database.HEAD_REVISION}" in err and HINT in err, err
    out = " ".join(run("store", "migrate", "--store", target, "--backup-to", "bk", cwd=tmp_path).stdout.split())
    assert f"before revision 0003, 90 events; after revision {database.HEAD_REVISION}, 90 events" in out, out
    [backup] = (tmp_path / "bk").iterdir()
    assert "-rev0003-" in backup.name
    assert _state(target) == (leaves, cps)
    with raw_sql(target) as cur:
        cur.execute("SELECT count(*) FROM event_bodies")
        assert cur.fetchone()[0] == 90
        cur.execute("SELECT value FROM pacsguard_meta WHERE key = 'format_version'")
        assert cur.fetchone()[0] == "4"
    es = EventStore.open(target)
    try:
        with es.engine.connect() as conn:
            assert "body" not in {c["name"] for c in database.inspect(conn).get_columns("events")}
        report = verify_store(es, load_public_key(key))
    finally:
        es.close()
    assert report.ok and report.events == 90 and report.newest_checkpoint_valid, report.findings
    assert _searches(target, tmp_path, run) == before
    # And the migrated store takes new events, chained to the old ones.
    es = EventStore.open(target, key_path=key)
    es.append(make_events(10, 90))
    es.checkpoint()
    es.close()
    verified = json.loads(run("audit", "verify", "--store", target, "--format", "json", cwd=tmp_path).stdout)
    assert verified["ok"] and verified["events"] == 100


def test_sql_readers_have_the_view_of_events_with_their_records(tmp_path: Path) -> None:
    target = str(tmp_path / "store.db")
    es, _ = new_store(target, tmp_path)
    es.append(make_events(12))
    es.close()
    with raw_sql(target) as cur:
        cur.execute("SELECT seq, json_extract(body, '$.event.details.n'), actor_ae FROM events_with_body "
                    "WHERE patient_id = 'PID0007'")
        assert cur.fetchall() == [(7, 7, "MOD3")]


def _tampered(target: str, tmp: Path, *sql: str) -> VerifyReport:
    """40 events in two batches and a checkpoint, then ``sql`` run on the database from outside."""
    es, key = new_store(target, tmp)
    es.append(make_events(20))
    es.append(make_events(20, 20))
    es.checkpoint()
    es.close()
    with raw_sql(target) as cur:
        for statement in sql:
            cur.execute(statement)
    es = EventStore.open(target)
    try:
        return verify_store(es, load_public_key(key))
    finally:
        es.close()


def _said(report: VerifyReport) -> list[tuple[str, int | None, str]]:
    return [(f.kind, f.seq, f.message) for f in report.findings]


def test_a_missing_record_is_a_deleted_event_and_the_chain_goes_on(target: str, tmp_path: Path) -> None:
    report = _tampered(target, tmp_path, "DELETE FROM event_bodies WHERE seq = 12")
    assert _said(report) == [("deleted", 12, "event #12: its sealed record is missing (event_bodies has no row #12; "
                              "deleted); its leaf column and event #13's seal keep its hash, so the events and "
                              "checkpoints past it are still checked")]
    assert report.newest_checkpoint_root_ok is True and len(report.chain) == 40


def test_a_record_of_no_event_is_inserted(target: str, tmp_path: Path) -> None:
    report = _tampered(target, tmp_path, "INSERT INTO event_bodies SELECT 77, body FROM event_bodies WHERE seq = 5")
    assert _said(report) == [("inserted", 77, "event_bodies row #77 holds a record that no events row claims and "
                              "that is not part of the sealed chain: it was stored outside pacsguard (inserted)")]
    assert report.newest_checkpoint_valid is True


def test_the_record_left_by_a_deleted_events_row_is_named_in_the_deletion(target: str, tmp_path: Path) -> None:
    report = _tampered(target, tmp_path, "DELETE FROM events WHERE seq = 30")
    deleted = [f for f in report.findings if f.kind == "deleted"]
    assert [f.seq for f in deleted] == [30] and not any(f.kind == "inserted" for f in report.findings)
    assert deleted[0].message.startswith("event #30 is missing (deleted)")
    assert deleted[0].message.endswith("its sealed record is left in event_bodies row #30")


def test_an_edited_record_is_modified(target: str, tmp_path: Path) -> None:
    report = _tampered(target, tmp_path,
                       "UPDATE event_bodies SET body = replace(body, 'PID0013', 'PID0099') WHERE seq = 13")
    [(kind, seq, message)] = [s for s in _said(report) if s[0] == "modified"]
    assert (kind, seq) == ("modified", 13)
    assert "its sealed record was edited: it no longer hashes to the leaf that event #14 sealed" in message


def test_records_moved_to_each_others_seq_are_found(target: str, tmp_path: Path) -> None:
    report = _tampered(target, tmp_path, *(f"UPDATE event_bodies SET seq = {a} WHERE seq = {b}"
                                           for a, b in ((-1, 8), (8, 9), (9, -1))))
    assert {(f.kind, f.seq) for f in report.findings} >= {("modified", 8), ("modified", 9)}, report.findings


def test_a_record_moved_to_a_seq_of_no_event_is_found(target: str, tmp_path: Path) -> None:
    """The record is whole but no longer at its event's seq: searches would call the store damaged."""
    report = _tampered(target, tmp_path, "UPDATE event_bodies SET seq = 1005 WHERE seq = 5")
    assert _said(report) == [("modified", 5, "event #5: its sealed record was moved to event_bodies row #1005, "
                              "where no search or proof reads it (it belongs in row #5)")]


def test_a_record_moved_with_its_events_row_is_reordered(target: str, tmp_path: Path) -> None:
    """An events row's seq edited to a value of no event: its record is found by its leaf hash."""
    report = _tampered(target, tmp_path, "UPDATE events SET seq = 1005 WHERE seq = 5")
    kinds = {(f.kind, f.seq) for f in report.findings}
    assert ("reordered", 5) in kinds and not any(k in ("deleted", "inserted") for k, _ in kinds), report.findings


def test_search_names_an_event_whose_record_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    es, _ = new_store(str(path), tmp_path)
    es.append(make_events(10))
    es.close()
    with raw_sql(str(path)) as cur:
        cur.execute("DELETE FROM event_bodies WHERE seq = 3")
    err = " ".join(run("events", "search", "--store", str(path), "--patient", "PID0003", cwd=tmp_path,
                       check_code=2).stderr.split())
    assert "the store is damaged: events row #3: its sealed record is missing (event_bodies has no row #3)" in err
