"""Store upgrades (issue 17): no command migrates a store of an older revision on its own, readers and
writers alike refuse it naming the command, and `pacsguard store migrate` migrates after a verified
backup, and only with one."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from pacsguard.store import EventStore, StoreError, database, upgrade
from pacsguard.store.verify import verify_store
from store_helpers import make_events, write_revision_0001_store
from test_cli import run

HINT = "pacsguard store migrate --backup-to DIR"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def old_home(tmp_path: Path) -> Path:
    """`pacsguard init`'s folder, whose store is replaced by one at revision 0001 holding 40 events."""
    run("init", "--demo", cwd=tmp_path)
    store = tmp_path / "var/pacsguard.db"
    store.unlink()
    write_revision_0001_store(str(store), make_events(40))
    return tmp_path


def test_readers_and_writers_refuse_an_old_store_and_leave_it_as_it_was(old_home: Path) -> None:
    store = old_home / "var/pacsguard.db"
    before = _digest(store)
    commands = [("events", "search"), ("events", "tail"), ("audit", "verify"), ("serve",), ("init",),
                ("gateway", "run", "--listen", "127.0.0.1:1", "--aet", "GW", "--upstream", "PACS@127.0.0.1:9",
                 "--store", "var/pacsguard.db")]
    for args in commands:
        err = run(*args, cwd=old_home, check_code=2).stderr
        flat = " ".join(err.split())
        assert "revision 0001" in flat and f"revision {database.HEAD_REVISION}" in flat, (args, err)
        assert HINT in flat, (args, err)
        assert _digest(store) == before, args


def test_migrate_refuses_without_a_backup_folder(old_home: Path) -> None:
    store = old_home / "var/pacsguard.db"
    before = _digest(store)
    err = " ".join(run("store", "migrate", cwd=old_home, check_code=2).stderr.split())
    assert "--backup-to" in err and "without a backup" in err
    assert _digest(store) == before


def test_dry_run_says_what_it_would_do_and_changes_nothing(old_home: Path) -> None:
    store = old_home / "var/pacsguard.db"
    before = _digest(store)
    out = " ".join(run("store", "migrate", "--backup-to", "bk", "--dry-run", cwd=old_home).stdout.split())
    assert "revision 0001, 40 events" in out and f"revision {database.HEAD_REVISION}" in out and "dry run" in out
    assert _digest(store) == before
    assert not (old_home / "bk").exists()


def test_migrate_backs_up_then_upgrades(old_home: Path) -> None:
    out = " ".join(run("store", "migrate", "--backup-to", "bk", cwd=old_home).stdout.split())
    assert f"before revision 0001, 40 events; after revision {database.HEAD_REVISION}, 40 events" in out
    [copy] = (old_home / "bk").iterdir()
    assert copy.name.startswith("pacsguard-rev0001-") and copy.suffix == ".db"
    assert copy.stat().st_mode & 0o777 == 0o600
    # The backup is the store as it was: still revision 0001, same events, refused by a plain open.
    with sqlite3.connect(copy) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0001",)]
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (40,)
    with pytest.raises(StoreError, match="revision 0001"):
        EventStore.open(str(copy))
    es = EventStore.open(str(old_home / "var/pacsguard.db"))
    try:
        assert es.size() == 40
        report = verify_store(es, None)
    finally:
        es.close()
    assert not report.findings, report.findings
    assert "OK" in run("audit", "verify", cwd=old_home).stdout
    # A second run finds nothing to do and takes no backup.
    assert "nothing to do" in run("store", "migrate", "--backup-to", "bk", cwd=old_home).stdout
    assert len(list((old_home / "bk").iterdir())) == 1


def test_a_failed_backup_migrates_nothing(tmp_path: Path) -> None:
    """A copy that does not verify is removed and the store stays at its revision."""
    target = str(tmp_path / "s.db")
    write_revision_0001_store(target, make_events(12))
    url = database.normalise_target(target)
    engine = database.make_engine(url, create=False)
    try:
        state = upgrade.read_state(engine, url)
        wrong = upgrade.StoreState(state.revision, state.events + 1)  # as if the copy lost an event
        with pytest.raises(StoreError, match="copy holds 12 events, the store 13"):
            upgrade.backup(url, wrong, tmp_path / "bk")
        assert list((tmp_path / "bk").iterdir()) == []
        assert database.store_revision(engine, url) == "0001"
    finally:
        engine.dispose()


def test_postgresql_without_pg_dump_is_refused(postgres_db_url: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    write_revision_0001_store(postgres_db_url, make_events(5))
    url = database.normalise_target(postgres_db_url)
    engine = database.make_engine(url, create=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    try:
        with pytest.raises(StoreError, match="pg_dump and pg_restore are needed"):
            upgrade.upgrade(engine, url, tmp_path / "bk")
        assert database.store_revision(engine, url) == "0001"
    finally:
        engine.dispose()
    assert list((tmp_path / "bk").iterdir()) == []


def test_a_new_store_is_still_created_at_the_head(tmp_path: Path) -> None:
    es = EventStore.open(str(tmp_path / "new.db"), create=True)
    try:
        assert database.store_revision(es.engine, es.url) == database.HEAD_REVISION
    finally:
        es.close()
