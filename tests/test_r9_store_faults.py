"""The store under faults and tampering, as an outside tester found it in round 9 (docs/store.md):

- a store URL with a port that is not a number stopped every command with "internal error" (a bug
  line), and `store migrate` echoed an unparseable URL with its password;
- one edited sealed record made `audit verify` also say "the tree head was edited outside
  pacsguard", of a tree_state nobody touched;
- a writer whose newest event was deleted said the head counts N events "but none is stored";
- a store on a read-only file system was refused with SQLite's bare "unable to open database file";
- on PostgreSQL, a database made read-only for a while (ALTER DATABASE ... SET
  default_transaction_read_only) kept refusing writes after it was writable again, since the
  pooled sessions keep the setting they started with: recording never recovered; and a checkpoint
  that could not be written raised the driver's error, named by no store.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from pacsguard.store import EventStore
from pacsguard.store.errors import StoreError
from pacsguard.store.keys import load_public_key
from pacsguard.store.verify import verify_store
from peers.postgres import PostgresServer
from store_helpers import make_events, new_store, param, raw_sql

PACSGUARD = Path(sys.executable).parent / "pacsguard"
SECRET = "S3cretPw0rd"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PACSGUARD), *args], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(("url", "said"), [
    (f"postgresql://pacsguard:{SECRET}@127.0.106.1:54x2/audit", "its port is not a number"),
    (f"postgresql://pacsguard:{SECRET}@[::1/audit", "its port is not a number"),
    (f"postgres-ql://pacsguard:{SECRET}@127.0.106.1/audit?password={SECRET}", "postgresql://USER@HOST:PORT/DATABASE"),
])
@pytest.mark.parametrize("command", [["audit", "verify"], ["events", "search"],
                                     ["store", "migrate", "--backup-to", "/nonexistent"]])
def test_a_store_url_that_does_not_parse_is_named_without_its_password(url: str, said: str,
                                                                      command: list[str]) -> None:
    result = _cli(*command, "--store", url)
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert "internal error" not in out and "Traceback" not in out, out
    assert SECRET not in out, out
    assert "store URL" in out and "pacsguard@" in out and said in out, out


def _sealed_store(target: str, tmp: Path) -> Path:
    """30 events (checkpoints at 20 and 30); returns the signing key."""
    es, key = new_store(target, tmp, checkpoint_interval=3600)
    es.append(make_events(20))
    es.checkpoint()
    es.append(make_events(10, 20))
    es.close()
    return key


def _edited_store(target: str, tmp: Path, seq: int) -> tuple[str, Path]:
    """The store of `_sealed_store`; then event ``seq``'s sealed record edited from outside."""
    key = _sealed_store(target, tmp)
    with raw_sql(target) as cur:
        cur.execute(f"UPDATE event_bodies SET body = replace(body, 'event {seq} ', 'event X ') WHERE seq = {seq}")
    return target, key


@pytest.mark.parametrize("seq", [3, 25])
def test_an_edited_record_is_not_blamed_on_the_tree_head(target: str, tmp_path: Path,
                                                         seq: int) -> None:
    """tree_state holds the tree of the leaves as sealed; a record edited afterwards is `modified`
    (and its checkpoints' roots differ), but the head is as the writer left it."""
    _edited_store(target, tmp_path, seq)
    es = EventStore.open(target)
    report = verify_store(es, load_public_key(tmp_path / "keys" / "k.key"))
    es.close()
    kinds = [(f.kind, f.seq) for f in report.findings]
    assert ("modified", seq) in kinds, kinds
    assert "tree head" not in [k for k, _ in kinds], report.findings
    assert ("checkpoint", 30) in kinds, kinds


def test_an_edited_record_and_an_edited_head_are_both_found(tmp_path: Path) -> None:
    target, _ = _edited_store(str(tmp_path / "store.db"), tmp_path, 3)
    with raw_sql(target) as cur:
        cur.execute("UPDATE tree_state SET frontier = zeroblob(length(frontier))")
    es = EventStore.open(target)
    report = verify_store(es, load_public_key(tmp_path / "keys" / "k.key"))
    es.close()
    head = [f.message for f in report.findings if f.kind == "tree head"]
    assert len(head) == 1 and "tree_state.frontier" in head[0], report.findings


def _swap(target: str, table: str, column: str, a: int, b: int) -> None:
    """Exchange ``column`` of rows seq ``a`` and ``b`` of ``table`` (through a free seq for a key)."""
    p = param(target)
    with raw_sql(target) as cur:
        if column == "seq":
            for old, new in ((a, -1), (b, a), (-1, b)):
                cur.execute(f"UPDATE {table} SET seq = {p} WHERE seq = {p}", (new, old))
            return
        cur.execute(f"SELECT seq, {column} FROM {table} WHERE seq IN ({a}, {b})")
        held = dict(cur.fetchall())
        for seq, other in ((a, b), (b, a)):
            cur.execute(f"UPDATE {table} SET {column} = {p} WHERE seq = {p}", (held[other], seq))


def test_two_raw_messages_swapped_are_told_as_moved_records(target: str, tmp_path: Path) -> None:
    """The records of events #3 and #4 exchanged between their event_bodies rows, the events rows
    untouched: told as two records moved, not as "the leaf column was changed" and a list of
    "column ... was changed" for two events rows nobody edited."""
    _sealed_store(target, tmp_path)
    _swap(target, "event_bodies", "body", 3, 4)
    es = EventStore.open(target)
    report = verify_store(es, load_public_key(tmp_path / "keys" / "k.key"))
    es.close()
    assert [(f.kind, f.seq) for f in report.findings] == [("modified", 3), ("modified", 4)], report.findings
    assert "moved to event_bodies row #4" in report.findings[0].message
    assert "moved to event_bodies row #3" in report.findings[1].message
    assert not any("column" in f.message for f in report.findings), report.findings


def test_events_rows_swapped_are_reordered_not_edited(target: str, tmp_path: Path) -> None:
    _sealed_store(target, tmp_path)
    _swap(target, "events", "seq", 10, 11)
    es = EventStore.open(target)
    report = verify_store(es, load_public_key(tmp_path / "keys" / "k.key"))
    es.close()
    kinds = [(f.kind, f.seq) for f in report.findings]
    assert ("reordered", 10) in kinds and ("reordered", 11) in kinds, kinds
    assert not any(f.kind == "modified" for f in report.findings), report.findings


def test_a_deleted_newest_event_is_named_by_the_writer(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    target = str(tmp_path / "store.db")
    es, key = new_store(target, tmp_path, checkpoint_interval=3600)
    es.append(make_events(30))
    es.close()
    with raw_sql(target) as cur:
        cur.execute("DELETE FROM events WHERE seq = 29")
    with caplog.at_level(logging.WARNING, logger="pacsguard.store"):
        es = EventStore.open(target, key_path=key, checkpoint_interval=3600)
    try:
        assert "event #29, the newest it counts, is not stored" in caplog.text, caplog.text
        with pytest.raises(StoreError, match="event #29, the newest it counts, is not stored"):
            es.append(make_events(1, 30))
    finally:
        es.engine.dispose()


def test_a_store_on_a_read_only_file_system_is_refused_with_why(tmp_path: Path) -> None:
    """A write-blocked copy or a snapshot mounted read-only: SQLite cannot make the -shm file that
    reading a WAL store needs, and said only "unable to open database file"."""
    source, mount = tmp_path / "src", tmp_path / "ro"
    source.mkdir()
    mount.mkdir()
    es, key = new_store(str(source / "store.db"), tmp_path)
    es.append(make_events(5))
    es.close()
    for args in (["mount", "--bind", str(source), str(mount)], ["mount", "-o", "remount,ro,bind", str(mount)]):
        done = subprocess.run(args, capture_output=True, text=True)
        assert done.returncode == 0, f"cannot make a read-only bind mount (root needed): {done.stderr}"
    try:
        result = _cli("audit", "verify", "--store", str(mount / "store.db"), "--key", f"{key}.pub")
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
    assert result.returncode == 2, result.stdout + result.stderr
    said = result.stderr
    assert str(mount / "store.db") in said, said
    assert f"its folder {mount} cannot be written: a read-only file system" in said, said
    assert "copy the store" in said, said


def _set_read_only(server: PostgresServer, dbname: str, on: bool) -> None:
    with server.admin_connect() as admin:
        setting = "SET default_transaction_read_only = on" if on else "RESET default_transaction_read_only"
        admin.execute(f'ALTER DATABASE "{dbname}" {setting}')
        # Sessions started before read the old setting: end them, as a failover or restart would.
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,))


def test_recording_recovers_when_a_read_only_database_takes_writes_again(
        postgres_server: PostgresServer, postgres_db_url: str, tmp_path: Path) -> None:
    dbname = postgres_db_url.rsplit("/", 1)[1]
    es, key = new_store(postgres_db_url, tmp_path, checkpoint_interval=3600)
    try:
        es.append(make_events(5))
        _set_read_only(postgres_server, dbname, True)
        for _ in range(2):  # the bus retries: each attempt is refused while it lasts
            with pytest.raises(StoreError, match="read-only transaction") as refused:
                es.append(make_events(3, 5))
            assert es.name in str(refused.value)
        with postgres_server.admin_connect() as admin:
            admin.execute(f'ALTER DATABASE "{dbname}" RESET default_transaction_read_only')
        # No session is ended this time: the store's own pooled ones must not keep it read-only.
        assert es.append(make_events(3, 5)) == 8
        assert es.checkpoint() is not None
    finally:
        _set_read_only(postgres_server, dbname, False)
        es.close()
    es = EventStore.open(postgres_db_url)
    report = verify_store(es, load_public_key(key))
    es.close()
    assert report.ok and report.events == 8, report.findings


def test_a_checkpoint_the_database_refuses_names_the_store(
        postgres_server: PostgresServer, postgres_db_url: str, tmp_path: Path) -> None:
    """`serve` stopping, or `audit patient --checkpoint`, on a read-only database: the final
    checkpoint's failure was the driver's InternalError, shown as "the store's database failed ...
    `pacsguard audit verify` tells what is damaged", with no store named and nothing damaged."""
    dbname = postgres_db_url.rsplit("/", 1)[1]
    es, _ = new_store(postgres_db_url, tmp_path, checkpoint_interval=3600)
    es.append(make_events(5))
    _set_read_only(postgres_server, dbname, True)
    try:
        with pytest.raises(StoreError, match="signing a checkpoint failed") as unsigned:
            es.checkpoint()
        assert es.name in str(unsigned.value) and "read-only transaction" in str(unsigned.value)
        assert "the events are stored" in str(unsigned.value)
    finally:
        _set_read_only(postgres_server, dbname, False)
    assert es.checkpoint() is not None  # signed once the database takes writes again
    es.close()
