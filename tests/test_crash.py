"""kill -9 of a writer in the middle of its batches loses no acknowledged event and leaves a
store that verifies (SQLite WAL with synchronous=FULL; one transaction per batch)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from pacsguard.store import EventQuery, EventStore
from pacsguard.store.keys import generate_key, load_public_key
from pacsguard.store.verify import verify_store

WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[3])
    from store_helpers import make_events
    from pacsguard.store import EventStore
    es = EventStore.open(sys.argv[1], key_path=sys.argv[2], create=True, checkpoint_interval=0.2)
    n = 0
    while True:
        es.append(make_events(500, n))
        n += 500
        # Acknowledged: the batch is durable; say so only now.
        print(n, flush=True)
""")


def test_kill_9_during_writes(tmp_path: Path):
    key = tmp_path / "k.key"
    generate_key(key)
    store = tmp_path / "s.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(store), str(key), str(Path(__file__).parent)],
                            stdout=subprocess.PIPE, text=True)
    acked = 0
    deadline = time.monotonic() + 60
    try:
        while acked < 20_000 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acked = int(line)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert acked >= 20_000, "the writer did not get far enough to be killed mid-stream"
    es = EventStore.open(str(store))
    assert es.size() >= acked
    # Every acknowledged event is there, in order, with its content.
    seqs = [s.seq for s in es.search(EventQuery(limit=None))]
    assert seqs == list(range(es.size()))
    report = verify_store(es, load_public_key(key))
    assert report.ok, report.findings
    assert report.checkpoints >= 1 and report.newest_checkpoint_valid
