"""The store under real concurrency and the clock: several processes that create and open one fresh
store at the same moment (SQLite file and PostgreSQL database), and checkpoints signed on a timer."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from pacsguard.store import EventStore
from pacsguard.store.database import make_engine, normalise_target
from pacsguard.store.keys import generate_key, load_public_key
from pacsguard.store.verify import verify_store
from store_helpers import make_events, new_store, raw_sql

WRITERS = 5
EVENTS_EACH = 60

# Each process waits for the same wall-clock instant, then opens (creating) the store and appends.
_WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[4])
    from store_helpers import make_events
    from pacsguard.store import EventStore
    time.sleep(max(0.0, float(sys.argv[3]) - time.time()))
    es = EventStore.open(sys.argv[1], key_path=sys.argv[2], create=True)
    for start in range(0, {each}, 10):
        es.append(make_events(10, start))
    es.close()
""").format(each=EVENTS_EACH)


def test_writers_started_together_on_a_fresh_store_all_succeed(target: str, tmp_path: Path) -> None:
    key = generate_key(tmp_path / "keys" / "k.key")
    at = time.time() + 2.0  # every process has imported pacsguard by then
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, target, str(key), str(at),
                               str(Path(__file__).parent)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(WRITERS)]
    results = [(p.wait(timeout=120), p.stderr.read().decode() if p.stderr else "") for p in procs]
    assert [rc for rc, _ in results] == [0] * WRITERS, [err for _, err in results if err]
    with raw_sql(target) as cur:
        cur.execute("SELECT version_num FROM alembic_version")
        assert len(cur.fetchall()) == 1
        cur.execute("SELECT count(*) FROM pacsguard_meta WHERE key = 'format'")
        assert cur.fetchone()[0] == 1
    es = EventStore.open(target)
    try:
        assert es.size() == WRITERS * EVENTS_EACH
        report = verify_store(es, load_public_key(key))
    finally:
        es.close()
    assert report.ok, report.findings
    assert report.newest_checkpoint == WRITERS * EVENTS_EACH


def test_openers_of_a_fresh_sqlite_file_all_switch_it_to_wal(tmp_path: Path) -> None:
    """Many rounds of five connections opening one fresh file at once: SQLite refuses all but one of
    the switches to WAL at once (no busy wait: it would deadlock), and each must try again, not fail."""
    rounds, openers = 40, 5
    errors: list[str] = []
    for n in range(rounds):
        url = normalise_target(str(tmp_path / f"{n}.db"))
        together = threading.Barrier(openers)

        def open_one(url: str = url, together: threading.Barrier = together) -> None:
            engine = make_engine(url, create=True)
            together.wait()
            try:
                with engine.connect() as conn:
                    assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(str(exc).splitlines()[0])
            finally:
                engine.dispose()

        threads = [threading.Thread(target=open_one) for _ in range(openers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert errors == []


def test_a_burst_is_signed_on_the_timer_without_further_events(tmp_path: Path) -> None:
    es, key = new_store(str(tmp_path / "timer.db"), tmp_path, checkpoint_interval=0.3)
    try:
        es.append(make_events(7))  # sooner than the interval: not signed by the append
        assert es.checkpoints() == []
        deadline = time.monotonic() + 10
        while not es.checkpoints() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [c.tree_size for c in es.checkpoints()] == [7]
        time.sleep(0.8)  # intervals pass with no growth: nothing more is signed
        assert [c.tree_size for c in es.checkpoints()] == [7]
        es.append(make_events(2, 7))
        deadline = time.monotonic() + 10
        while len(es.checkpoints()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [c.tree_size for c in es.checkpoints()] == [7, 9]
        assert verify_store(es, load_public_key(key)).ok
    finally:
        es.close()


def test_close_stops_the_timer(tmp_path: Path) -> None:
    es, _ = new_store(str(tmp_path / "stop.db"), tmp_path, checkpoint_interval=0.1)
    timer = es._timer
    assert timer is not None and timer.is_alive()
    es.close()
    assert not timer.is_alive()
