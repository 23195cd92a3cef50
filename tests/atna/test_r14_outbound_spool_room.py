"""The outbound spool gives its disk space back once a long outage's messages are delivered: the
file does not stay at the size the outage grew it to (SQLite keeps freed pages for reuse unless
the database vacuums them), and neither does its write-ahead log."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pacsguard.atna.outbound.spool import Spool

MESSAGE = b"<85>1 - x" + bytes(1500)


def _on_disk(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def _fill(spool: Spool, count: int) -> None:
    for _ in range(count // 1000):
        assert spool.add([MESSAGE] * 1000) == 0


def test_a_drained_spool_gives_back_what_an_outage_grew_it_to(tmp_path: Path) -> None:
    path = tmp_path / "outbound.db"
    spool = Spool(path)
    _fill(spool, 20_000)  # ~30 MB held while the repository is away
    grown = _on_disk(path)
    assert grown > 30_000_000
    while sent := spool.after(spool.delivered()):  # a thousand at a time, as the sender marks them
        spool.mark_delivered(sent[-1][0])
    assert spool.pending() == 0
    assert _on_disk(path) < 3 * 1024 * 1024, f"{_on_disk(path):,} bytes still on disk after every message left"
    # Still a spool: it takes and hands over messages as before, in order, numbering on.
    assert spool.add([b"next"]) == 0
    assert spool.after(spool.delivered()) == [(20_001, b"next")]
    spool.close()


def test_a_spool_made_before_this_version_gives_its_room_back_once_empty(tmp_path: Path) -> None:
    path = tmp_path / "outbound.db"
    old = sqlite3.connect(path, isolation_level=None)  # as the spool made files: no auto_vacuum
    old.execute("PRAGMA journal_mode=WAL")
    old.execute("CREATE TABLE spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, message BLOB NOT NULL)")
    old.close()
    spool = Spool(path)
    _fill(spool, 10_000)
    spool.mark_delivered(10_000)
    assert _on_disk(path) < 3 * 1024 * 1024
    spool.close()
    again = Spool(path)
    assert again.pending() == 0 and again.delivered() == 10_000
    assert again.add([b"next"]) == 0 and again.after(10_000) == [(10_001, b"next")]
    again.close()
