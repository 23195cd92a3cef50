"""Scanning many items, in this process or in ``jobs`` worker processes (each compiles its own
rules: compiled YARA rules do not cross processes). Reports come back in the walk's order."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING

from pacsguard.scan.model import FileReport
from pacsguard.scan.walk import OUT_OF_MEMORY, Item, not_scanned

if TYPE_CHECKING:
    from pacsguard.scan.config import ScanSettings
    from pacsguard.scan.scanner import Scanner

#: The worker process's scanner, made once by _init (a process-wide cache, not shared state).
_WORKER: dict[str, Scanner] = {}


def scan_item(scanner: Scanner, item: Item) -> FileReport:
    """The report of one item. A file too large for the memory left (a multi-frame image of a
    gigabyte on a small machine, with other jobs) is reported not scanned, and the scan goes on:
    one file's MemoryError must not end the scan of the others and lose every report."""
    try:
        return _scan_item(scanner, item)
    except MemoryError:
        return _not_scanned(item, OUT_OF_MEMORY)


def _scan_item(scanner: Scanner, item: Item) -> FileReport:
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

    _WORKER["scanner"] = Scanner.from_settings(settings, base, one_scan=True)


def _work(item: Item) -> FileReport:
    return scan_item(_WORKER["scanner"], item)


#: Items in flight per worker process: enough to keep each busy while the walk reads the next.
WINDOW_PER_JOB = 4


#: The skip reason of a file whose worker process ended while scanning it, alone too: the
#: system's OOM killer, a signal, or a crash in native code (YARA) on the file's bytes.
WORKER_ENDED = "scan process ended while scanning it (killed, or out of memory), also when scanned alone"


def scan_all(items: Iterable[Item], scanner: Scanner, *, jobs: int = 1, settings: ScanSettings | None = None,
             base: Path | None = None) -> Iterator[FileReport]:
    """A report per item, in the items' order. With ``jobs`` > 1 at most ``jobs`` x WINDOW_PER_JOB
    items are in flight: an archive's members are read by the walk as they are needed, not all at
    once (Executor.map would take the whole walk up front and hold every member in memory). A
    worker process that ends (the OOM killer, a signal) takes no result but its own: the items in
    flight are scanned again, each alone, and one that ends its process again is reported not
    scanned (scan.not-scanned); the scan goes on with a new pool."""
    if jobs <= 1 or settings is None:
        for item in items:
            yield scan_item(scanner, item)
        return

    def pool(workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=workers, initializer=_init, initargs=(settings, base))

    yield from _bounded(lambda: pool(jobs), lambda: pool(1), iter(items), jobs * WINDOW_PER_JOB)


def _bounded(new_pool: Callable[[], ProcessPoolExecutor], alone_pool: Callable[[], ProcessPoolExecutor],
             items: Iterator[Item], window: int) -> Iterator[FileReport]:
    """Results of ``_work`` over ``items`` in order, with no more than ``window`` submitted and not
    yet handed out; when the pool breaks, the items in flight are scanned again one by one."""
    pending: deque[tuple[Item, Future[FileReport]]] = deque()
    pool = new_pool()
    try:
        for item in items:
            try:
                pending.append((item, pool.submit(_work, item)))
            except BrokenProcessPool as exc:  # broken before this one went in: retried with the rest
                pending.append((item, _refused(exc)))
            while len(pending) >= window:
                report = _next(pending)
                if report is None:
                    yield from _retry(pending, alone_pool)
                    pool.shutdown(wait=True, cancel_futures=True)
                    pool = new_pool()
                else:
                    yield report
        while pending:
            report = _next(pending)
            if report is None:
                yield from _retry(pending, alone_pool)
            else:
                yield report
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _next(pending: deque[tuple[Item, Future[FileReport]]]) -> FileReport | None:
    """The first pending result, taken off; None (and nothing taken) when its pool broke."""
    try:
        report = pending[0][1].result()
    except BrokenProcessPool:
        return None
    pending.popleft()
    return report


def _refused(exc: BrokenProcessPool) -> Future[FileReport]:
    """The result of an item a broken pool would not take: the pool's failure, retried as the rest."""
    future: Future[FileReport] = Future()
    future.set_exception(exc)
    return future


def _retry(pending: deque[tuple[Item, Future[FileReport]]],
           alone_pool: Callable[[], ProcessPoolExecutor]) -> Iterator[FileReport]:
    """Every item in flight when the pool broke, in order: a result that came before the break is
    kept, the others are scanned again, each in a pool of its own; the one that ends its process
    again is the cause, reported not scanned."""
    while pending:
        item, future = pending.popleft()
        if future.done() and not future.cancelled() and future.exception() is None:
            yield future.result()
            continue
        report: FileReport | None = None
        with alone_pool() as single:
            try:
                report = single.submit(_work, item).result()
            except BrokenProcessPool:
                pass
        yield report if report is not None else _worker_ended(item)


def _worker_ended(item: Item) -> FileReport:
    """The report of an item whose scan ended its process twice."""
    return _not_scanned(item, WORKER_ENDED)


def _not_scanned(item: Item, why: str) -> FileReport:
    """The report of an item that could not be scanned: a scan.not-scanned finding, not judged
    clean. An archive's own report keeps its findings and is not skipped (its members were
    scanned, and one that failed still moves it to the quarantine)."""
    findings = [*item.findings, not_scanned(why)]
    if item.container:
        return FileReport(item.name, size=item.size, findings=findings)
    return FileReport(item.name, size=item.size, findings=findings, skipped=why)
