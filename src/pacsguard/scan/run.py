"""Scanning many items, in this process or in ``jobs`` worker processes (each compiles its own
rules: compiled YARA rules do not cross processes). Reports come back in the walk's order."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
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
        return FileReport(item.name, size=item.size, findings=list(item.findings), skipped=item.skipped)
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


def scan_all(items: Iterable[Item], scanner: Scanner, *, jobs: int = 1, settings: ScanSettings | None = None,
             base: Path | None = None) -> Iterator[FileReport]:
    if jobs <= 1 or settings is None:
        for item in items:
            yield scan_item(scanner, item)
        return
    with ProcessPoolExecutor(max_workers=jobs, initializer=_init, initargs=(settings, base)) as pool:
        yield from pool.map(_work, items, chunksize=8)
