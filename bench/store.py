"""Store benchmark: batch ingest (events/s, hashing included) and "all events for patient X"
latency at a given store size, on SQLite and optionally PostgreSQL.

    .venv/bin/python bench/store.py --events 1000000 [--postgres URL] [--dir DIR]

Ingest runs on one core (one writer thread). Events look like gateway C-STORE records: 20,000
distinct patients, 5 studies each, details of a realistic size, appended in batches of --batch
(the event bus's maximum, 65,536); by default every event names another patient (the index's worst
case), --burst N sends them N at a time per patient, study and modality, as a series arrives.
The query "all events for patient X" is timed for 50 random patients, each twice: the first
query for that patient (its rows are not in any cache unless the operating system kept the
file's pages) and the same query repeated; medians and worst reported. `--cold once` empties
the operating system's page cache (root only) and reconnects before the 50 first queries: each
patient's rows come from the disk, while the few pages every search passes through stay cached
after the first, as in a running console. `--cold each` does so before every first query: every
page comes from the disk.

`--busy` ingests the same events twice more, into two fresh stores: alone, then beside a thread
that keeps the interpreter busy as a flooded event loop does (the gateway's, the ATNA receiver's),
and prints both rates and their ratio: what the writer thread loses waiting for the GIL each time
SQLite hands it back (store/rows.py). It then times 20 patient searches in the second store, alone
and beside the busy thread, and prints both medians (each row a search fetches waits for the GIL
too: docs/PERFORMANCE.md); --patients sets the rows per patient (--busy / --patients).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pacsguard.events import Event, EventBus, Party
from pacsguard.store import EventQuery, EventStore
from pacsguard.store.keys import generate_key
from workfolder import work_folder  # bench/workfolder.py


def events(start: int, n: int, patients: int, burst: int = 1) -> list[Event]:
    """C-STORE records; *burst* consecutive ones share patient, study and modality (a series
    arriving), 1 = every record another patient (the index's worst case)."""
    out = []
    for i in range(start, start + n):
        j = i // burst
        p = (j * 7919) % patients
        out.append(Event(kind="dicom.dimse.c-store", component="gateway",
                         actor=Party(f"CT{j % 12:02d}", f"10.20.{j % 7}.{j % 250}", 104),
                         target=Party("PACS", "10.30.0.5", 104),
                         patient_ids=(f"PAT{p:08d}",), study_uids=(f"1.2.826.0.1.3680043.9.{p}.{j % 5}",),
                         sop_instance_count=1, message="C-STORE-RSP 0x0000",
                         details={"sop_class": "1.2.840.10008.5.1.4.1.1.2", "status": 0,
                                  "sop_instance": f"1.2.826.0.1.3680043.9.{p}.{i}", "bytes": 525_000}))
    return out


def drop_caches(es: EventStore) -> None:
    """Empty the kernel's page cache (clean pages only, hence the sync first), and reconnect so that
    SQLite's own page cache starts empty too."""
    es.engine.dispose()
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def run(target: str, key: Path, total: int, batch: int, patients: int, burst: int, cold: str | None) -> dict:
    es = EventStore.open(target, key_path=key, create=True, checkpoint_interval=60)
    have = es.size()
    gen_time = ingest_time = 0.0
    n = have
    while n < total:
        t0 = time.perf_counter()
        chunk = events(n, min(batch, total - n), patients, burst)
        t1 = time.perf_counter()
        es.append(chunk)
        t2 = time.perf_counter()
        gen_time += t1 - t0
        ingest_time += t2 - t1
        n += len(chunk)
        if (n // batch) % 100 == 0:
            print(f"  {n:,} events, {(n - have) / ingest_time:,.0f} events/s so far", file=sys.stderr)
    es.checkpoint()
    rng = random.Random(7)
    first, warm, rows = [], [], []
    if cold == "once":
        drop_caches(es)
    for _ in range(50):
        pid = f"PAT{rng.randrange(patients):08d}"
        for times in (first, warm):  # the first query for this patient, then the same again
            if cold == "each" and times is first:
                drop_caches(es)
            t0 = time.perf_counter()
            got = list(es.search(EventQuery(patient=pid, limit=None)))
            times.append((time.perf_counter() - t0) * 1000)
        rows.append(len(got))
    es.close()
    return {"store": target, "events": max(total, have), "ingested": max(total - have, 0),
            "ingest_per_s": (total - have) / ingest_time if ingest_time else None,
            "query_ms_median": statistics.median(first), "query_ms_max": max(first),
            "warm_ms_median": statistics.median(warm), "warm_ms_max": max(warm),
            "rows_per_patient": statistics.mean(rows)}


@contextmanager
def busy_thread(busy: bool) -> Iterator[None]:
    """A thread spinning in Python while the block runs (when ``busy``)."""
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))  # bytecode, as a loop parsing messages runs: it holds the GIL

    spinner = threading.Thread(target=spin, daemon=True)
    if busy:
        spinner.start()
    try:
        yield
    finally:
        stop.set()
        if busy:
            spinner.join()


def ingest_rate(target: str, key: Path, total: int, batch: int, patients: int, busy: bool) -> float:
    """Events/s appending ``total`` events to a fresh store, with a thread spinning in Python
    beside the writer when ``busy``."""
    es = EventStore.open(target, key_path=key, create=True, checkpoint_interval=60)
    chunks = [events(n, min(batch, total - n), patients) for n in range(0, total, batch)]
    try:
        with busy_thread(busy):
            t0 = time.perf_counter()
            for chunk in chunks:
                es.append(chunk)
            return total / (time.perf_counter() - t0)
    finally:
        es.close()


def search_ms(target: str, key: Path, patients: int, busy: bool) -> tuple[float, float]:
    """Median milliseconds of 20 patient searches (each patient's every event) and the mean rows
    found, with a thread spinning in Python beside the search when ``busy``."""
    es = EventStore.open(target, key_path=key, checkpoint_interval=60)
    rng = random.Random(11)
    times, rows = [], []
    try:
        with busy_thread(busy):
            for _ in range(20):
                pid = f"PAT{rng.randrange(patients):08d}"
                t0 = time.perf_counter()
                rows.append(len(list(es.search(EventQuery(patient=pid, limit=None)))))
                times.append((time.perf_counter() - t0) * 1000)
    finally:
        es.close()
    return statistics.median(times), statistics.mean(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=EventBus.MAX_BATCH,
                    help="events per append (default: the event bus's max_batch, its batch under load)")
    ap.add_argument("--patients", type=int, default=20_000)
    ap.add_argument("--burst", type=int, default=1,
                    help="consecutive events of one patient, study and modality (e.g. 200: CT series); "
                         "1 = every event another patient, the worst case for the index")
    ap.add_argument("--dir", type=Path, default=None, help="keep the SQLite store here (reuse to grow it)")
    ap.add_argument("--postgres", default=None, help="also run against this PostgreSQL URL")
    ap.add_argument("--cold", choices=("once", "each"), default=None,
                    help="empty the page cache before the first queries, or before each (needs root)")
    ap.add_argument("--busy", type=int, metavar="N", default=0,
                    help="also ingest N events alone and N beside a busy thread, and print the ratio")
    args = ap.parse_args()
    if args.cold and not os.access("/proc/sys/vm/drop_caches", os.W_OK):
        sys.exit("--cold needs root: it writes /proc/sys/vm/drop_caches")
    work = work_folder(args.dir, "pg-bench-")
    key = work / "bench.key"
    if not key.exists():
        generate_key(key)
    targets = [str(work / "bench.db")] + ([args.postgres] if args.postgres else [])
    for target in targets:
        r = run(target, key, args.events, args.batch, args.patients, args.burst, args.cold)
        ingest = f"{r['ingest_per_s']:,.0f} events/s" if r["ingest_per_s"] else "n/a (already filled)"
        print(f"{r['store']}: {r['events']:,} events; ingest {ingest} (batches of {args.batch}); "
              f"patient query (first for that patient{f', page cache emptied {args.cold}' if args.cold else ''}) "
              f"median {r['query_ms_median']:.2f} ms, max "
              f"{r['query_ms_max']:.2f} ms; repeated median {r['warm_ms_median']:.2f} ms, "
              f"max {r['warm_ms_max']:.2f} ms; "
              f"{r['rows_per_patient']:.0f} rows per patient")
    if args.busy:
        alone = ingest_rate(str(work / "alone.db"), key, args.busy, args.batch, args.patients, busy=False)
        beside = ingest_rate(str(work / "busy.db"), key, args.busy, args.batch, args.patients, busy=True)
        print(f"SQLite, {args.busy:,} events in batches of {args.batch}: alone {alone:,.0f} events/s, beside a busy "
              f"thread {beside:,.0f} events/s; busy/alone {beside / alone:.3f}")
        searched = str(work / "busy.db")
        (quiet, found), (loud, _) = (search_ms(searched, key, args.patients, busy=b) for b in (False, True))
        print(f"SQLite, a patient's {found:,.0f} events: search alone {quiet:.1f} ms, beside a busy thread "
              f"{loud:.1f} ms (medians of 20); busy/alone {loud / quiet:.1f}")


if __name__ == "__main__":
    main()
