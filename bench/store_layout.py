"""What the store's row layout costs per large event, measured with SQLite alone (no pacsguard
code): store format 3 (the sealed body in the events row, rows placed by patient within a bucket
of 65,536: store/index.py) against format 4, the store's layout since 2026-12-05 (the bodies in a
table of their own, appended in seq order, with only the small columns placed by patient).

What-if tooling for issue #18's ingest target (the ATNA events carry their raw message: ~3.7 KB a
row): it measures the one step that the store's commit of patient-placed rows costs, so a layout
change can be weighed before the store's format is touched. Both layouts run in the same process,
alternating, with the store's pragmas (WAL, synchronous=FULL, 16 KiB pages, 64 MiB cache).

    .venv/bin/python bench/store_layout.py --events 100000 --body 3700 --repeat 2
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import time
import zlib
from pathlib import Path

from workfolder import work_folder  # bench/workfolder.py

BUCKET_BITS = 16  # as store/index.py
BATCH = 2000  # events per commit, as the ATNA receiver's batches under load


def place_of(seq: int, patient: str) -> int:
    low = seq & ((1 << BUCKET_BITS) - 1)
    return ((seq - low) << 24) | ((zlib.crc32(patient.encode()) & 0xFFFFFF) << BUCKET_BITS) | low


def connect(path: Path, page_size: int) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    for pragma in (f"page_size={page_size}", "journal_mode=WAL", "synchronous=FULL", "cache_size=-65536"):
        db.execute(f"PRAGMA {pragma}")
    return db


def run(layout: str, path: Path, events: int, body_size: int, page_size: int) -> tuple[float, float, float]:
    """CPU and wall seconds per event, and file bytes per event, for ``layout`` (inline or apart)."""
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    db = connect(path, page_size)
    db.execute("CREATE TABLE events(place INTEGER PRIMARY KEY, seq INTEGER NOT NULL, patient_id TEXT, "
               "time_us INTEGER, kind TEXT, leaf BLOB" + (", body TEXT NOT NULL)" if layout == "inline" else ")"))
    db.execute("CREATE UNIQUE INDEX ix_events_seq ON events(seq)")
    if layout == "apart":
        db.execute("CREATE TABLE bodies(seq INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    rnd = random.Random(1)  # the same patients and bodies for both layouts
    filler = "x" * body_size
    cpu, wall = time.process_time(), time.perf_counter()
    seq = 0
    while seq < events:
        rows = []
        for _ in range(min(BATCH, events - seq)):
            patient = f"P{rnd.randrange(10**9)}"
            rows.append((place_of(seq, patient), seq, patient, seq, "atna.audit.query", os.urandom(32),
                         filler + patient))
            seq += 1
        db.execute("BEGIN")
        if layout == "inline":
            db.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?)", rows)
        else:
            db.executemany("INSERT INTO events VALUES (?,?,?,?,?,?)", [r[:6] for r in rows])
            db.executemany("INSERT INTO bodies VALUES (?,?)", [(r[1], r[6]) for r in rows])
        db.execute("COMMIT")
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    db.close()
    size = sum(Path(str(path) + s).stat().st_size for s in ("", "-wal") if Path(str(path) + s).exists())
    return cpu / events, wall / events, size / events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--body", type=int, default=3700, help="octets of each event's body")
    parser.add_argument("--page-size", type=int, default=16384)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="folder for the databases (default: a temporary one)")
    args = parser.parse_args()
    work = work_folder(args.work, "pacsguard-layout-")
    print(f"{args.events:,} events of {args.body:,} octets, batches of {BATCH:,}, page size {args.page_size}")
    print(f"{'layout':<8} {'CPU us/event':>13} {'wall us/event':>14} {'bytes/event':>12}")
    results: dict[str, list[float]] = {"inline": [], "apart": []}
    for _ in range(args.repeat):
        for layout in ("inline", "apart"):
            cpu, wall, size = run(layout, work / f"{layout}.db", args.events, args.body, args.page_size)
            results[layout].append(cpu)
            print(f"{layout:<8} {cpu * 1e6:>13.1f} {wall * 1e6:>14.1f} {size:>12,.0f}")
    best = {k: min(v) for k, v in results.items()}
    print(f"bodies apart / inline, CPU per event (best of {args.repeat}): {best['apart'] / best['inline']:.2f}")


if __name__ == "__main__":
    main()
