"""ATNA outbound feed benchmark: how fast pacsguard's own Events become spooled PS3.15 A.5
messages (atna/outbound/forwarder.py), alone and beside a thread that keeps the interpreter busy
as a flooded event loop does (the gateway relaying, the ATNA receiver reading).

    .venv/bin/python bench/outbound.py [--events 5000] [--busy-events 2000]

The Events are the gateway's records of C-STOREs (one patient each, so each also needs a Begin
Transferring message) and of the associations' releases, handed to the feed through a real
Subscription as the event bus hands them (in its batches of --batch); the time runs until the
subscription has delivered every one and the spool holds their messages. Each mode runs on a
fresh spool; the ratio busy/alone is printed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

from pacsguard.atna.outbound.forwarder import Forwarder
from pacsguard.atna.outbound.spool import Spool
from pacsguard.events.model import Event, Party
from pacsguard.events.subscription import Subscription

CT = Party("CT01", "10.20.0.7", 104)
PACS = Party("PACS", "10.30.0.5", 104)


def events(n: int) -> list[Event]:
    """``n`` Events: a C-STORE of its own patient, every tenth followed by its association's end."""
    out: list[Event] = []
    for i in range(n):
        if i % 10 == 9:
            out.append(Event(kind="dicom.association.released", component="gateway", actor=CT, target=PACS))
            continue
        out.append(Event(kind="dicom.dimse.c-store", component="gateway", actor=CT, target=PACS,
                         patient_ids=(f"PID-{i}",), study_uids=(f"1.2.826.0.1.3680043.9.{i}",),
                         sop_instance_count=1,
                         details={"route": "main", "message_id": i, "sop_class": "1.2.840.10008.5.1.4.1.1.2",
                                  "status": "0x0000"}))
    return out


def rate(work: Path, n: int, batch: int, busy: bool) -> tuple[float, int]:
    """Events/s from the first hand-over to the last Event taken, and the messages spooled."""
    spool = Spool(work / f"spool-{'busy' if busy else 'alone'}.db")
    subscription = Forwarder(spool, "bench").follow(Subscription, None, 0)  # as serve does, with no store
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))  # bytecode: it holds the GIL as a busy event loop does

    spinner = threading.Thread(target=spin, daemon=True)
    stream = events(n)
    if busy:
        spinner.start()
    try:
        t0 = time.perf_counter()
        for at in range(0, n, batch):
            subscription.offer(stream[at:at + batch])
        while subscription.delivered < n:
            time.sleep(0.005)
        took = time.perf_counter() - t0
    finally:
        stop.set()
        subscription.unsubscribe(10)
    spooled = spool.pending()
    spool.close()
    return n / took, spooled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=5000, help="Events fed alone")
    ap.add_argument("--busy-events", type=int, default=2000, help="Events fed beside the busy thread")
    ap.add_argument("--batch", type=int, default=100, help="Events the bus hands over at a time")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pg-outbound-") as folder:
        work = Path(folder)
        alone, spooled = rate(work, args.events, args.batch, busy=False)
        busy, busy_spooled = rate(work, args.busy_events, args.batch, busy=True)
    print(f"outbound feed: alone {alone:,.0f} events/s ({spooled:,} messages spooled), beside a busy thread "
          f"{busy:,.0f} events/s ({busy_spooled:,}); busy/alone {busy / alone:.3f}", file=sys.stdout)


if __name__ == "__main__":
    main()
