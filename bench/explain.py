"""Explanation-based auditing benchmark (docs/audit.md, "Explained and unexplained accesses"): the
cost of judging a day's accesses (`audit report --day`: one query of each patient's events) and of
judging one access as it arrives (`atna.privacy.explain.on_arrival`: one query per access).

    .venv/bin/python bench/explain.py [--work DIR] [--messages 20000] [--patients 2000] [--users 200]

The store holds ``--messages`` received audit messages of one day, made by the receiver's own ingest
(syslog frame -> Event): every tenth an order (110109, created) naming a user, the rest reads of a
patient record (110110) by random users of random patients. Figures measured on a shared machine
are noisy: the coordinator re-measures on a quiet one.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from pacsguard.atna.explain import Accesses, ExplainSettings, explain_unstored, summary
from pacsguard.atna.ingest import Sender, frame_event
from pacsguard.atna.message.build import to_xml
from pacsguard.atna.message.record import AuditRecord, Code, Participant, ParticipantObject
from pacsguard.events.model import Event
from pacsguard.store import EventQuery, EventStore
from pacsguard.store.keys import generate_key
from workfolder import work_folder  # bench/workfolder.py

DAY = datetime(2026, 12, 3, tzinfo=timezone.utc)
SENDER = Sender("127.0.0.1", 40000, "tcp", "octet-counting")
MEANINGS = {"110109": "Order Record", "110110": "Patient Record"}


def message(event_id: str, user: str, patient: str, when: datetime, action: str) -> Event:
    record = AuditRecord("dicom", Code(event_id, "DCM", MEANINGS[event_id]), action, when, "0",
                         participants=(Participant(user, user_name=user, requestor=True, access_point="10.0.0.7",
                                                   access_point_type="2"),),
                         source_id="VNA1",
                         objects=(ParticipantObject(patient, Code("2", "RFC-3881", "Patient Number"), type_code="1",
                                                    role="1"),))
    return frame_event(SENDER, b"<85>1 - vna1 audit - IHE+RFC-3881 - " + to_xml(record))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--patients", type=int, default=2_000)
    parser.add_argument("--users", type=int, default=200)
    args = parser.parse_args()
    work = work_folder(args.work, "pacsguard-explain-")
    rng = random.Random(7)
    key = generate_key(work / f"bench-{os.getpid()}.key")
    store = EventStore.open(str(work / f"explain-{os.getpid()}.db"), key_path=key, create=True)
    step = 86_000 / args.messages
    events = []
    for i in range(args.messages):
        event_id, action = ("110109", "C") if i % 10 == 0 else ("110110", "R")
        events.append(message(event_id, f"u{rng.randrange(args.users)}", f"P{rng.randrange(args.patients)}",
                              DAY + timedelta(seconds=i * step), action))
    for i in range(0, len(events), 5_000):
        store.append(events[i:i + 5_000])
    settings = ExplainSettings()
    start = time.perf_counter()
    seen = Accesses()
    for stored in store.search(EventQuery(since=DAY, until=DAY + timedelta(days=1), limit=None)):
        seen.see(stored)
    judged = summary(seen.explain(store, DAY, DAY + timedelta(days=1), settings))
    daily = time.perf_counter() - start
    print(f"daily: {judged['accesses']} accesses of {len(seen.wanted)} patients judged in {daily:.2f} s "
          f"({judged['accesses'] / daily:,.0f} accesses/s), {judged['explained']} explained")
    probes = [message("110110", f"u{rng.randrange(args.users)}", f"P{rng.randrange(args.patients)}",
                      DAY + timedelta(hours=23), "R") for _ in range(300)]
    start = time.perf_counter()
    for event in probes:
        explain_unstored(store, event, settings)
    each = (time.perf_counter() - start) / len(probes)
    print(f"on arrival: {each * 1000:.2f} ms per access ({1 / each:,.0f} accesses/s on one thread)")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    store.close()


if __name__ == "__main__":
    main()
