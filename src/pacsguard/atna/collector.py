"""Python's cyclic garbage collector in the process of `pacsguard atna listen` (docs/PERFORMANCE.md,
"ATNA ingest"; the syslog receiver of IHE ITI-20 / RFC 5425).

Reading one audit message allocates a few hundred container objects (the reader's contexts, the
record, the Event's details), and a message arrives every few tens of microseconds under load. With
Python's default threshold (a young collection every 700 allocations) a collection runs every few
messages, walks the objects of the messages still being read and, every tenth time, the Events
queued for the store: with 15,000 Events queued, a quarter of the time to read a message in process.
Collected every 200,000 allocations instead, nearly all of those objects are freed by their
reference counts before a collection sees them; cyclic garbage (an asyncio transport, an
exception's traceback) is still collected, a little later. The objects of start-up (imported
modules, the CLI) are frozen out of the walks: they live as long as the process.

Only the standalone receiver does this: `pacsguard serve` runs the gateway in the same process, whose
latency profile was measured with the default collector (docs/PERFORMANCE.md, gateway).
"""

from __future__ import annotations

import gc

#: Container allocations (less deallocations) between two young-generation collections; Python's
#: default is 700. In process with a backlog of 15,000 Events, 200,000 read a message as fast as with
#: the collector off; 50,000 was ~10 us per message slower (docs/PERFORMANCE.md).
YOUNG_THRESHOLD = 200_000


def tune_for_ingest() -> None:
    """Freeze what start-up left and collect the young generation every YOUNG_THRESHOLD allocations;
    the older generations keep their defaults."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
