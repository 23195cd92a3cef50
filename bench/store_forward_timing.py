"""Where a store-and-forward route's time goes between an object's last data PDV and its answer.

A launcher for ``bench/gateway.py --store-forward-launcher bench/store_forward_timing.py`` (what-if
tooling, never used for the reference figures): it runs ``pacsguard serve`` with the steps of
keeping an object (pacsguard.gateway.store_forward.receiver) wrapped with a clock, and, when the
route stops, writes to its log (stderr) the median and 90th percentile of each step's end, in ms
after the object's last data PDV was handled:

- ``worker``: the worker thread that syncs, checks and commits the object has started;
- ``fsync-start`` / ``fsync-done``: the object's fdatasync (what the background writeback left);
- ``meta-done``: its metadata written and synced as well;
- ``committed``: checked, renamed into objects/, the folder synced, recorded, queued;
- ``answer-queued``: the C-STORE-RSP handed to the outbox (it may wait for its record there);
- ``answer-sent``: the C-STORE-RSP written to the modality's connection.

Objects are timed one at a time, as storescu sends them (one association, one request at a
time). The wrappers cost ~1 us per step.
"""

from __future__ import annotations

import atexit
import functools
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from pacsguard.gateway import outbox
from pacsguard.gateway.store_forward import acceptor, receiver


def _mark(owner: Any, name: str, marks: list[tuple[str, float]], before: str | None, after: str | None) -> None:
    inner: Callable[..., Any] = getattr(owner, name)
    clock = time.perf_counter

    @functools.wraps(inner)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if before:
            marks.append((before, clock()))
        result = inner(*args, **kwargs)
        if after:
            marks.append((after, clock()))
        return result

    setattr(owner, name, wrapper)


def _report(marks: list[tuple[str, float]]) -> None:
    objects: list[list[tuple[str, float]]] = []
    for label, at in marks:
        if label == "last-pdv":
            objects.append([(label, at)])
        elif objects:
            objects[-1].append((label, at))
    after: dict[str, list[float]] = {}
    for steps in objects:
        start = steps[0][1]
        seen: set[str] = set()
        for label, at in steps[1:]:
            if label not in seen:  # the first of each step: the object's own
                seen.add(label)
                after.setdefault(label, []).append((at - start) * 1e3)
    print(f"store-and-forward timing, ms after the last data PDV ({len(objects)} objects):", file=sys.stderr)
    for label, values in sorted(after.items(), key=lambda item: statistics.median(item[1])):
        values.sort()
        print(f"  {label:<14} median {statistics.median(values):7.3f}  p90 {values[int(len(values) * 0.9)]:7.3f}",
              file=sys.stderr)


def install() -> None:
    marks: list[tuple[str, float]] = []
    _mark(acceptor.StoreAssociation, "_on_dataset_end", marks, "last-pdv", None)
    _mark(receiver, "_check_and_commit", marks, "worker", "committed")
    _mark(receiver, "sync_object", marks, "fsync-start", "fsync-done")
    _mark(receiver, "_sync_with_meta", marks, None, "meta-done")
    _mark(outbox.Outbox, "send", marks, "answer-queued", None)
    _mark(outbox.Outbox, "_flush", marks, "answer-sent", None)
    atexit.register(_report, marks)


if __name__ == "__main__":
    install()
    from pacsguard.cli.main import main

    sys.exit(main())
