"""`audit verify --witness FILE`: real SQLite stores whose checkpoints went to a file witness, then
tampered with from outside as an insider with the database (and, for the fork, the signing key)
would. Each case has its own finding and exit code; the store's own verify misses the first three."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path

from pacsguard.store import EventStore
from pacsguard.store.keys import generate_key, load_private_key, public_path
from pacsguard.store.merkle import Frontier, leaf_hash
from pacsguard.store.store import _event_part, checkpoint_message, seal
from pacsguard.witness.delivery import WitnessDelivery
from pacsguard.witness.file import FileWitness
from store_helpers import make_events
from test_cli import run


class Site:
    """A store written in four batches of ten events, each batch checkpointed and witnessed."""

    def __init__(self, tmp: Path, snapshot_after: int | None = None) -> None:
        self.db = tmp / "site.db"
        self.key = generate_key(tmp / "keys" / "site.key")
        self.witness = tmp / "witness" / "checkpoints.jsonl"
        self.snapshot = tmp / "older.db"
        es = EventStore.open(str(self.db), key_path=self.key, create=True)
        es.add_checkpoint_listener(WitnessDelivery([FileWitness(self.witness)]))
        for batch in range(4):
            es.append(make_events(10, 10 * batch))
            es.checkpoint()
            if batch == snapshot_after:
                with sqlite3.connect(self.db) as live, sqlite3.connect(self.snapshot) as copy:
                    live.backup(copy)  # a consistent copy of the store as it was then
        es.close()

    def verify(self, code: int, *options: str) -> str:
        proc = run("audit", "verify", "--store", str(self.db), "--key", str(public_path(self.key)),
                   "--witness", str(self.witness), *options, cwd=self.db.parent, check_code=code)
        return proc.stdout

    def findings(self, code: int) -> str:
        """The findings of verify --format json, one "kind: message" per line."""
        report = json.loads(self.verify(code, "--format", "json"))
        assert report["witnesses"][0]["source"] == str(self.witness)
        return "\n".join(f"{f['kind']}: {f['message']}" for f in report["findings"])

    def verify_alone(self) -> int:
        proc = run("audit", "verify", "--store", str(self.db), "--key", str(public_path(self.key)),
                   cwd=self.db.parent, check_code=None)
        return proc.returncode

    def sql(self, *statements: str) -> None:
        conn = sqlite3.connect(self.db, isolation_level=None)
        try:
            for statement in statements:
                conn.execute(statement)
        finally:
            conn.close()


def test_an_untouched_store_extends_every_witnessed_checkpoint(tmp_path: Path) -> None:
    site = Site(tmp_path)
    lines = site.witness.read_text().splitlines()
    assert [json.loads(line)["tree_size"] for line in lines] == [10, 20, 30, 40]
    out = site.verify(0)
    assert "4 checkpoints of this log, newest at size 40" in out
    assert "extends every checkpoint the witnesses hold" in out


def test_rollback_to_an_older_copy_is_named(tmp_path: Path) -> None:
    site = Site(tmp_path, snapshot_after=1)
    for suffix in ("-wal", "-shm"):
        Path(str(site.db) + suffix).unlink(missing_ok=True)
    shutil.copy(site.snapshot, site.db)
    assert site.verify_alone() == 0  # internally consistent: the store alone cannot tell
    assert "rollback" in site.verify(5)
    out = site.findings(5)
    assert "rollback" in out and "saw the log at size 40" in out and "ends at 20 events" in out


def test_deleting_the_newest_checkpoint_is_named(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.sql("DELETE FROM checkpoints WHERE tree_size = 40")
    assert site.verify_alone() == 0
    out = site.findings(3)
    assert "deleted checkpoint" in out and "at size 40" in out


def test_deleting_every_checkpoint_is_named(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.sql("DELETE FROM checkpoints")
    assert site.verify_alone() == 0
    out = site.findings(3)
    assert "4 checkpoint(s) the store lacks, at size 10, 20, 30, 40" in out


def test_a_forked_rewrite_re_signed_with_the_real_key_is_named(tmp_path: Path) -> None:
    site = Site(tmp_path)
    _rewrite_and_resign(site, seq=5)
    assert site.verify_alone() == 0  # a complete rewrite with the real key: consistent in itself
    out = site.findings(6)
    assert "forked" in out and "re-signed with the real key" in out
    assert "at size 10" in out  # the first witnessed checkpoint that covers event #5


def test_a_truncated_tail_is_named(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.sql("DELETE FROM events WHERE seq >= 25")
    out = site.findings(4)
    assert "truncated tail" in out and "events #25..#39 were cut" in out


def test_a_witnessed_checkpoint_that_was_not_signed_by_the_log_is_reported(tmp_path: Path) -> None:
    site = Site(tmp_path)
    lines = site.witness.read_text().splitlines()
    forged = json.loads(lines[-1])
    forged["tree_size"] = 41
    site.witness.write_text("\n".join([*lines, json.dumps(forged)]) + "\n")
    out = site.findings(1)
    assert "signature fails with key" in out and "size 41" in out


def _rewrite_and_resign(site: Site, seq: int) -> None:
    """Edit event ``seq``'s message, re-seal every later event, rewrite the tree head, and replace the
    checkpoints by one signed with the store's own key: what a root user holding the key can do."""
    conn = sqlite3.connect(site.db, isolation_level=None)
    try:
        rows = conn.execute("SELECT seq, body FROM event_bodies ORDER BY seq").fetchall()
        frontier, prev = Frontier(), bytes(32)
        conn.execute("BEGIN")
        for s, body in rows:
            event = _event_part(body)
            if s == seq:
                event = event.replace(f"event {seq} ", "event rewritten ")
            if s >= seq:
                body = seal(event, prev, s)
                conn.execute("UPDATE event_bodies SET body = ? WHERE seq = ?", (body, s))
                conn.execute("UPDATE events SET leaf = ? WHERE seq = ?", (leaf_hash(body.encode()), s))
            prev = leaf_hash(body.encode())
            frontier.append(prev)
        conn.execute("UPDATE tree_state SET frontier = ?, last_leaf = ? WHERE id = 1", (frontier.to_bytes(), prev))
        conn.execute("DELETE FROM checkpoints")
        key = load_private_key(site.key)
        now = time.time_ns() // 1000
        from pacsguard.store.keys import key_id

        signature = key.sign(checkpoint_message(frontier.size, frontier.root(), now))
        conn.execute("INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?)",
                     (frontier.size, frontier.root(), now, key_id(key.public_key()), signature))
        conn.execute("COMMIT")
    finally:
        conn.close()
