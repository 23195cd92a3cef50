"""Scanning many items, in this process or in ``jobs`` worker processes (each compiles its own
rules: compiled YARA rules do not cross processes). Reports come back in the walk's order."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from pacsguard.scan.model import FileReport
from pacsguard.scan.walk import Item

if TYPE_CHECKING:
    from pacsguard.scan.config import ScanSettings
    from pacsguard.scan.scanner import Scanner

#: The worker process's scanner, made once by _init (a process-wide cache, not shared state).
_WORKER: dict[str, Scanner] = {}


def scan_item(scanner: Scanner, item: Item) -> FileReport:
    if item.container or item.skipped:
        report = FileReport(item.name, size=item.size, findings=list(item.findings), skipped=item.skipped)
        if item.container and item.own is not None:
            # The archive's own bytes: what belongs to no member (a zip comment, data after a tar's end).
            report.findings += scanner.scan_container(item.own)
        return report
    if item.data is not None:
        report = scanner.scan_bytes(item.data, item.name)
    else:
        assert item.path is not None
        report = scanner.scan_file(item.path, item.name)
    report.findings = item.findings + report.findings
    return report


def _init(settings: ScanSettings, base: Path | None) -> None:
    from pacsguard.scan.scanner import Scanner

    _WORKER["scanner"] = Scanner.from_settings(settings, base)


def _work(item: Item) -> FileReport:
    return scan_item(_WORKER["scanner"], item)


#: Items in flight per worker process: enough to keep each busy while the walk reads the next.
WINDOW_PER_JOB = 4


def scan_all(items: Iterable[Item], scanner: Scanner, *, jobs: int = 1, settings: ScanSettings | None = None,
             base: Path | None = None) -> Iterator[FileReport]:
    """A report per item, in the items' order. With ``jobs`` > 1 at most ``jobs`` x WINDOW_PER_JOB
    items are in flight: an archive's members are read by the walk as they are needed, not all at
    once (Executor.map would take the whole walk up front and hold every member in memory)."""
    if jobs <= 1 or settings is None:
        for item in items:
            yield scan_item(scanner, item)
        return
    with ProcessPoolExecutor(max_workers=jobs, initializer=_init, initargs=(settings, base)) as pool:
        yield from _bounded(pool, iter(items), jobs * WINDOW_PER_JOB)


def _bounded(pool: ProcessPoolExecutor, items: Iterator[Item], window: int) -> Iterator[FileReport]:
    """Results of ``_work`` over ``items`` in order, with no more than ``window`` submitted and not
    yet handed out."""
    pending: deque[Future[FileReport]] = deque()
    for item in items:
        pending.append(pool.submit(_work, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
