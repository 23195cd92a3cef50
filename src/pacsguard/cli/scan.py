"""`pacsguard scan PATH...`: the PACS-specific malware scanner (docs/scan.md).

Scans DICOM files, folders (DICOMDIR media as folders), zip and tar archives; prints findings
per file (severity, rule, offset, explanation, reference) as ``--format table|json|sarif|html``.
``--sanitize --out DIR`` writes cleaned copies where cleaning is safe; ``--quarantine DIR`` moves
infected files aside with a manifest. With ``--store`` (or ``--jsonl``) every finding is an Event.

Exit codes (docs/cli.md): 0 no finding reached ``--fail-on``, 1 at least one did, 2 usage,
configuration or rule error, or a PATH given that does not exist (when no finding reached it).
A PATH that exists but cannot be read is reported on its own line, as any unreadable file is.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import ExitStack
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from pacsguard.cli.common import (
    CONFIG_OPTION,
    EXIT_FINDINGS,
    EXIT_OK,
    EXIT_USAGE,
    config_path,
    fail,
    guarded,
    load,
    print_error,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from pacsguard.events import Event
    from pacsguard.scan.config import ScanSettings
    from pacsguard.scan.model import FileReport
    from pacsguard.scan.scanner import Scanner

__all__ = ["Format", "scan_command"]


class Format(str, Enum):
    table = "table"
    json = "json"
    sarif = "sarif"
    html = "html"


class FailOn(str, Enum):
    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"


def _settings(config: Path | None) -> tuple[ScanSettings, Path | None]:
    from pacsguard.scan.config import ScanSettings

    if config is None and not config_path(None).exists():
        return ScanSettings(), None
    loaded = load(config, required=False)
    settings: ScanSettings = loaded.section("scan")
    return settings, loaded.path.parent if loaded.path else None


def _publisher(stack: ExitStack, store: str | None, jsonl: Path | None) -> Callable[[Event], None] | None:
    if store is None and jsonl is None:
        return None
    from pacsguard.events.sink import EventSink
    from pacsguard.runtime import outputs

    es = outputs.open_store(store, create=True) if store is not None else None
    sinks: list[EventSink] = []
    if jsonl is not None:
        from pacsguard.sinks import JsonLinesSink

        sinks.append(JsonLinesSink(jsonl))
    bus = outputs.open_outputs(stack, es, sinks, close_timeout=30).bus
    stack.callback(bus.flush, 120)
    return bus.publish


@guarded
def scan_command(
    # readable=False: a PATH that cannot be read is reported on its own line (walk), not a usage
    # error that would stop the scan of every other PATH.
    paths: list[Path] = typer.Argument(..., readable=False,
                                       help="files, folders (DICOMDIR media), zip or tar archives"),
    format: Format = typer.Option(Format.table, "--format", "-f", help="table, json, sarif or html"),
    fail_on: FailOn | None = typer.Option(None, "--fail-on", help="exit 1 when a finding reaches this level "
                                          "(default: scan.fail_on, medium)"),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="worker processes"),
    sanitize: bool = typer.Option(False, "--sanitize", help="write cleaned copies to --out where cleaning is safe"),
    out: Path | None = typer.Option(None, "--out", help="folder for --sanitize's cleaned copies"),
    quarantine: Path | None = typer.Option(None, "--quarantine", help="move infected files here, with a manifest"),
    yara_dir: list[Path] = typer.Option([], "--yara-dir", help="extra YARA rule folder (repeat)"),
    clamd: str | None = typer.Option(None, "--clamd", help="clamd socket path or tcp://host:port"),
    store: str | None = typer.Option(None, "--store", help="record every finding in this pacsguard store "
                                     "(SQLite path or postgresql:// URL); created if missing"),
    jsonl: Path | None = typer.Option(None, "--jsonl", help="append every finding as an Event to this JSON-lines file"),
    show_info: bool = typer.Option(False, "--show-info", help="table: also list informational notes"),
    config: Path | None = CONFIG_OPTION,
) -> None:
    """Scan DICOM files, folders, media and archives for malware and hostile structure."""
    from pacsguard.owner_only import make_private_dir
    from pacsguard.scan.model import Level
    from pacsguard.scan.report import Summary, display_path
    from pacsguard.scan.scanner import Scanner
    from pacsguard.scan.walk import ArchiveLimits, walk
    from pacsguard.scan.yara_engine import YaraError

    if sanitize and out is None:
        raise fail("--sanitize needs --out DIR (originals are never modified)")
    for option, folder in (("--out", out if sanitize else None), ("--quarantine", quarantine)):
        try:  # before the first file: a folder that cannot be made stops nothing halfway
            if folder is not None:
                make_private_dir(folder)  # 0700, parents too: it will hold patient data
        except OSError as exc:
            raise fail(f"{option} {folder}: cannot create the folder ({exc.strerror or exc})") from None
    settings, base = _settings(config)
    updates: dict[str, object] = {}
    if yara_dir:
        updates["yara_dirs"] = [*settings.yara_dirs, *(d.resolve() for d in yara_dir)]
    if clamd:
        updates["clamd"] = clamd
    if updates:
        settings = settings.model_copy(update=updates)
    try:
        scanner = Scanner.from_settings(settings, base)
    except YaraError as exc:
        raise fail(str(exc)) from None
    threshold = Level.parse(fail_on.value if fail_on else settings.fail_on)
    lim = settings.limits
    limits = ArchiveLimits(lim.max_archive_ratio, lim.max_archive_total, lim.max_archive_depth,
                           lim.max_archive_members, lim.max_file_size)
    summary = Summary(threshold)
    reports: list[FileReport] = []
    # A PATH that is not there is a mistake in the command (a mount not made, a typo), not a clean
    # scan: exit 2 as clamscan does, unless a finding's 1 says more. Looked at before the scan,
    # which may move the files given (--quarantine).
    missing = [p for p in paths if not os.path.lexists(p)]
    exclude = _own_folders(out if sanitize else None, quarantine)
    started = time.perf_counter()
    with ExitStack() as stack:
        publish = _publisher(stack, store, jsonl)
        progress = _progress(stack)
        from pacsguard.scan.run import scan_all

        items = walk(paths, limits, exclude)
        for report in scan_all(items, scanner, jobs=jobs, settings=settings, base=base):
            summary.add(report)
            reports.append(report)
            if progress is not None:
                progress()
            _after(report, scanner, threshold, publish, out if sanitize else None, quarantine, paths)
        summary.seconds = time.perf_counter() - started
    _print(reports, summary, format, show_info)
    for path in missing:
        print_error(f"{display_path(str(path))}: no such file or folder")
    raise typer.Exit(EXIT_FINDINGS if summary.failing else EXIT_USAGE if missing else EXIT_OK)


def _own_folders(out: Path | None, quarantine: Path | None) -> list[tuple[Path, str]]:
    """The folders pacsguard writes to, kept out of the walk: a quarantined file scanned again
    would be moved onto itself, a cleaned copy cleaned again."""
    return [(folder, f"the {option} folder") for option, folder in (("--quarantine", quarantine), ("--out", out))
            if folder is not None]


def _progress(stack: ExitStack) -> Callable[[], None] | None:
    """A rich progress line on a terminal (files scanned so far); none when output is piped."""
    if not sys.stderr.isatty():
        return None
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from pacsguard.cli.common import err_console

    bar = stack.enter_context(Progress(SpinnerColumn(), TextColumn("{task.completed:,} files"), TimeElapsedColumn(),
                                       console=err_console, transient=True))
    task = bar.add_task("scan", total=None)
    return lambda: bar.advance(task)


def _after(report: FileReport, scanner: Scanner, threshold: object, publish: Callable[[Event], None] | None,
           out: Path | None, quarantine: Path | None, roots: Sequence[Path]) -> None:
    """Events, cleaned copy and quarantine for one file (only real files are moved or cleaned)."""
    from pacsguard.scan.events import finding_events
    from pacsguard.scan.model import Level

    assert isinstance(threshold, Level)
    if publish is not None:
        for event in finding_events(report):
            publish(event)
    source = Path(report.path)  # the name as the OS gave it (surrogate escapes): the file itself
    on_disk = not report.skipped and source.is_file()  # archive members ("a.zip!b.dcm") are not files
    if out is not None and on_disk and report.findings:
        _sanitize(report, scanner, source, out, copy_path(source, roots))
    if quarantine is not None and on_disk and report.fails(threshold):
        _quarantine(report, source, quarantine, publish)


def _quarantine(report: FileReport, source: Path, folder: Path, publish: Callable[[Event], None] | None) -> None:
    """Move one failing file aside; what could not be done is a warning and a note on the file."""
    from pacsguard.scan.events import quarantine_event
    from pacsguard.scan.quarantine import QuarantineRefused, quarantine

    try:
        moved = quarantine(source, report, folder)
    except OSError as exc:  # this file stays where it is; the scan goes on
        _not_done(report, "quarantine.failed", f"not moved to {folder}: {exc.strerror or exc}")
        return
    except QuarantineRefused as exc:
        _not_done(report, "quarantine.failed", str(exc))
        return
    if moved.note:
        _not_done(report, "quarantine.link-kept", moved.note)
    if publish is not None:
        publish(quarantine_event(report, moved.file, moved.manifest))


def _not_done(report: FileReport, rule: str, why: str) -> None:
    """An action on one file that could not be taken (a full disk, a folder without permission):
    a warning now and a note in its report; the scan goes on."""
    from pacsguard.cli.common import err_console, shown
    from pacsguard.scan.model import Finding, Level
    from pacsguard.scan.report import display_path

    why = display_path(why)  # it quotes paths: text that is valid UTF-8 in every format
    err_console.print(f"[yellow]warning:[/] {shown(display_path(report.path))}: {shown(why)}", highlight=False)
    report.findings.append(Finding(rule, Level.INFO, why))


def copy_path(source: Path, roots: Sequence[Path]) -> Path:
    """Where a file's cleaned copy goes under --out: its path from the PATH argument it was found
    under, that folder's own name first (as `cp -r` lays it out), so that media whose series each
    hold an IM000001 keep every one; a file given itself keeps its name. The folder's name is
    taken once the PATH is made absolute: "." and ".." name the folders they stand for."""
    for root in sorted(roots, key=lambda r: len(r.parts), reverse=True):
        try:
            within = source.relative_to(root)
        except ValueError:
            continue
        if not within.parts:
            return Path(source.name)
        # abspath, not resolve: a PATH that is a symbolic link keeps its own name, as with cp -r
        return Path(Path(os.path.abspath(root)).name or "root", within)
    return Path(source.name)


def inside(out: Path, relative: Path) -> Path | None:
    """``out / relative`` if it stays inside ``out`` (no absolute or ".." part, and no symbolic
    link already in ``out`` leading elsewhere once resolved); None: it would escape."""
    if relative.is_absolute() or not relative.parts or ".." in relative.parts:
        return None
    target = out / relative
    return target if target.resolve().is_relative_to(out.resolve()) else None


def _sanitize(report: FileReport, scanner: Scanner, source: Path, out: Path, relative: Path) -> None:
    """The cleaned copy of one file, written at ``out / relative`` (refused if that escapes out)."""
    from pacsguard.cli.common import err_console, shown
    from pacsguard.scan.model import Finding, Level
    from pacsguard.scan.report import display_path
    from pacsguard.scan.sanitize import clean, write_clean

    cleaned = clean(source.read_bytes(), report, scanner)
    if cleaned.refused:
        if cleaned.refused != "nothing to clean":
            report.findings.append(Finding("sanitize.refused", Level.INFO, cleaned.refused))
        return
    target = inside(out, relative)
    if target is None:
        _not_done(report, "sanitize.refused", f"cleaned copy not written: {relative} would be outside {out}")
        return
    try:
        write_clean(target, cleaned)
    except FileExistsError:
        err_console.print(f"[yellow]warning:[/] {shown(display_path(str(target)))} exists; not overwritten",
                          highlight=False)
        return
    except OSError as exc:
        _not_done(report, "sanitize.failed", f"cleaned copy not written to {target}: {exc.strerror or exc}")
        return
    report.findings.append(Finding("sanitize.written", Level.INFO, f"cleaned copy {display_path(str(target))}: "
                                   + "; ".join(cleaned.actions)))


def _print(reports: list[FileReport], summary: object, fmt: Format, show_info: bool) -> None:
    from pacsguard import __version__
    from pacsguard.scan import report as rep

    assert isinstance(summary, rep.Summary)
    if fmt is Format.table:
        rep.print_table(reports, summary, show_info=show_info)
        return
    text = {Format.json: lambda: rep.to_json(reports, summary),
            Format.sarif: lambda: rep.to_sarif(reports, summary, __version__),
            Format.html: lambda: rep.to_html(reports, summary)}[fmt]()
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
