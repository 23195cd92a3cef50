"""`pacsguard scan PATH...`: the PACS-specific malware scanner (docs/scan.md).

Scans DICOM files, folders (DICOMDIR media as folders), zip and tar archives; prints findings
per file (severity, rule, offset, explanation, reference) as ``--format table|json|sarif|html``.
``--sanitize --out DIR`` writes cleaned copies where cleaning is safe; ``--quarantine DIR`` moves
infected files aside with a manifest. With ``--store`` (or ``--jsonl``) every finding is an Event.

Exit codes (docs/cli.md): 0 no finding reached ``--fail-on``, 1 at least one did, 2 usage,
configuration or rule error, or a PATH given that does not exist (when no finding reached it).
A PATH that exists but cannot be read is reported on its own line, as any unreadable file is: a
scan.not-scanned finding (medium), so it is not judged clean.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
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
    from collections.abc import Callable, Iterable, Iterator, Sequence

    from pacsguard.events import Event
    from pacsguard.scan.config import ScanSettings
    from pacsguard.scan.model import FileReport, Level
    from pacsguard.scan.scanner import Scanner
    from pacsguard.scan.walk import Item

__all__ = ["Format", "scan_command"]


#: The most worker processes --jobs takes: each is about 47 MB (its compiled YARA rules and
#: imports) before it holds a file, so a mistyped --jobs 1000 would ask for 47 GB; refused (exit 2).
MAX_JOBS = 64


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: a container's or taskset's share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def bounded_jobs(jobs: int) -> int:
    """``jobs`` no higher than the CPUs usable: the scan is CPU-bound, so a worker more than there
    are CPUs adds its memory and no speed. Said on stderr when lowered."""
    cpus = usable_cpus()
    if jobs <= cpus:
        return jobs
    from pacsguard.cli.common import err_console

    err_console.print(f"[yellow]warning:[/] --jobs {jobs} lowered to {cpus}, the CPUs this process may use: "
                      "more workers add memory (about 47 MB each), not speed", highlight=False)
    return cpus


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
                                       help="files, folders (DICOMDIR media), zip, tar, gz/bz2/xz/lzma archives"),
    format: Format = typer.Option(Format.table, "--format", "-f", help="table, json, sarif or html"),
    fail_on: FailOn | None = typer.Option(None, "--fail-on", help="exit 1 when a finding reaches this level "
                                          "(default: scan.fail_on, medium)"),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, max=MAX_JOBS,
                             help=f"worker processes (at most {MAX_JOBS}, and no more than the CPUs)"),
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
    from pacsguard.scan.clamd import NOT_CHECKED
    from pacsguard.scan.model import Level
    from pacsguard.scan.report import Summary, display_path
    from pacsguard.scan.scanner import Scanner
    from pacsguard.scan.walk import ArchiveLimits, walk
    from pacsguard.scan.yara_engine import YaraError

    if sanitize and out is None:
        raise fail("--sanitize needs --out DIR (originals are never modified)")
    if out is not None and not sanitize:
        raise fail("--out DIR is the folder of --sanitize's cleaned copies: give --sanitize too")
    _check_overlap(paths, out, quarantine)
    for option, folder in (("--out", out), ("--quarantine", quarantine)):
        try:  # before the first file: a folder that cannot be made stops nothing halfway
            if folder is not None:
                make_private_dir(folder)  # 0700, parents too: it will hold patient data
        except OSError as exc:
            raise fail(f"{option} {folder}: cannot create the folder ({exc.strerror or exc})") from None
    jobs = bounded_jobs(jobs)
    # The warning console made now, not at the first warning: one about a file that ran out of
    # memory must not need memory to import rich.
    from pacsguard.cli.common import err_console  # noqa: F401
    settings, base = _settings(config)
    updates: dict[str, object] = {}
    if yara_dir:
        updates["yara_dirs"] = [*settings.yara_dirs, *(d.resolve() for d in yara_dir)]
    if clamd is not None:
        from pacsguard.scan.clamd import ClamdAddressError, parse_address

        try:  # before anything is scanned: a mistyped address is said once, not on every file
            parse_address(clamd)
        except ClamdAddressError as exc:
            raise fail(f"--clamd: {exc}") from None
        updates["clamd"] = clamd
    if updates:
        settings = settings.model_copy(update=updates)
    try:
        scanner = Scanner.from_settings(settings, base, one_scan=True)
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
    exclude = _own_folders(out, quarantine)
    started = time.perf_counter()
    with ExitStack() as stack:
        publish = _publisher(stack, store, jsonl)
        progress = _progress(stack)
        from pacsguard.scan.run import scan_all

        acts = _Actions(scanner, threshold, publish, out, quarantine, paths)
        kinds: deque[_Kind] = deque()
        items = _tap(walk(paths, limits, exclude), kinds)
        without_clamd = 0
        for report in scan_all(items, scanner, jobs=jobs, settings=settings, base=base):
            without_clamd += any(f.rule == NOT_CHECKED for f in report.findings)
            summary.add(report)
            reports.append(report)
            if progress is not None:
                progress()
            acts.after(report, kinds.popleft())  # reports come in the walk's order
        summary.seconds = time.perf_counter() - started
    _print(reports, summary, format, show_info)
    if without_clamd:
        _clamd_given_up(settings.clamd or "", without_clamd)
    for path in missing:
        print_error(f"{display_path(str(path))}: no such file or folder")
    raise typer.Exit(EXIT_FINDINGS if summary.failing else EXIT_USAGE if missing else EXIT_OK)


def _clamd_given_up(address: str, files: int) -> None:
    """The scan's note that clamd stopped being asked: why, and how many files went without it
    (each carries clamav.not-checked, counted here over every worker's reports)."""
    from pacsguard.cli.common import err_console, shown
    from pacsguard.scan.clamd import GIVE_UP_AFTER, NOT_CHECKED
    from pacsguard.scan.report import display_path

    err_console.print(f"[yellow]warning:[/] clamd at {shown(display_path(address))} failed {GIVE_UP_AFTER} times in "
                      f"a row (see its clamav.error findings) and was no longer asked: {files:,} "
                      f"file{'' if files == 1 else 's'} scanned without ClamAV ({NOT_CHECKED})", highlight=False)


def _check_overlap(paths: Sequence[Path], out: Path | None, quarantine: Path | None) -> None:
    """A usage error (exit 2) for a PATH that is pacsguard's own --quarantine or --out folder, or
    inside it: its files would be left out whole (excluded), and a scan of nothing is no clean scan.
    The folder inside a PATH is fine: it alone is left out."""
    from pacsguard.scan.report import display_path

    for option, folder in (("--quarantine", quarantine), ("--out", out)):
        if folder is None:
            continue
        mine = Path(os.path.realpath(folder))
        for path in paths:
            real = Path(os.path.realpath(path))
            if real == mine or real.is_relative_to(mine):
                where = "is" if real == mine else "is inside"
                raise fail(f"{display_path(str(path))} {where} the {option} folder {display_path(str(folder))}: "
                           f"pacsguard's own output is not scanned, so nothing of it would be; give {option} "
                           "a folder outside the PATHs")


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


#: What the walk gave for each report, in the same order: the file on disk (None for an archive's
#: member, a skipped entry), whether it is an archive's own report, whether it is inside an archive.
_Kind = tuple["Path | None", bool, bool]


def _tap(items: Iterable[Item], kinds: deque[_Kind]) -> Iterator[Item]:
    """``items``, noting each one's kind in ``kinds`` as it goes to the scan: the reports come back
    in the same order (scan_all), so the first kind noted is that of the next report."""
    for item in items:
        member = item.data is not None or (item.container and item.path is None)
        kinds.append((item.path if not item.skipped and item.data is None else None, item.container, member))
        yield item


@dataclass
class _Actions:
    """Events, cleaned copies and quarantine, report by report, for the files under ``roots``."""

    scanner: Scanner
    threshold: Level
    publish: Callable[[Event], None] | None
    out: Path | None
    quarantine: Path | None
    roots: Sequence[Path]
    #: Cleaned copies written by this scan (two files whose copies would take one place).
    written: set[Path] = field(default_factory=set)
    #: Members that failed, of the archive whose own report comes next (the walk gives it last).
    members: list[FileReport] = field(default_factory=list)

    def after(self, report: FileReport, kind: _Kind) -> None:
        """Only files on disk are cleaned or moved; an archive is moved when it, or a member at any
        depth, fails (a member alone cannot be taken out of it)."""
        from pacsguard.scan.events import finding_events

        if self.publish is not None:
            for event in finding_events(report):
                self.publish(event)
        on_disk, container, member = kind
        failing = report.fails(self.threshold)
        if member:
            if failing and self.quarantine is not None:
                self.members.append(report)
            return
        if on_disk is None or report.skipped:
            return
        if container:
            members, self.members = [m for m in self.members if m.path.startswith(report.path + "!")], []
            if self.quarantine is not None and (failing or members):
                _quarantine(report, self.quarantine, self.publish, self.roots, members)
            return
        if self.out is not None and report.findings:
            _sanitize(report, self.scanner, Path(report.path), self.out, copy_path(Path(report.path), self.roots),
                      self.roots, self.written)
        if self.quarantine is not None and failing:
            _quarantine(report, self.quarantine, self.publish, self.roots, [])


def _quarantine(report: FileReport, folder: Path, publish: Callable[[Event], None] | None, roots: Sequence[Path],
                members: list[FileReport]) -> None:
    """Move one failing file aside; what could not be done is a warning and a note on the file."""
    from pacsguard.scan.events import quarantine_event
    from pacsguard.scan.quarantine import QuarantineRefused, quarantine

    source = Path(report.path)  # the name as the OS gave it (surrogate escapes): the file itself
    try:
        moved = quarantine(source, report, folder, roots, members)
    except OSError as exc:  # this file stays where it is; the scan goes on
        _not_done(report, "quarantine.failed", f"not moved to {folder}: {exc.strerror or exc}")
        return
    except QuarantineRefused as exc:
        _not_done(report, "quarantine.failed", str(exc))
        return
    except MemoryError:  # one file's failure, not the scan's: the others are still moved
        _not_done(report, "quarantine.failed", f"not moved to {folder}: out of memory while moving it")
        return
    if moved.note:
        _not_done(report, "quarantine.link-kept", moved.note)
    if publish is not None:  # an archive's Event names its members' rules too
        every = replace(report, findings=[*report.findings, *(f for m in members for f in m.findings)])
        publish(quarantine_event(every, moved.file, moved.manifest))


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


def _sanitize(report: FileReport, scanner: Scanner, source: Path, out: Path, relative: Path,
              roots: Sequence[Path], written: set[Path]) -> None:
    """The cleaned copy of one file, written at ``out / relative`` (refused if that escapes out; a
    place another file's copy took in this scan gets a name of its own: ``IM1-2``). The file is read
    as quarantine reads it: beneath its PATH, through no link, unchanged since it was scanned."""
    import hashlib

    from pacsguard.scan.model import Finding, Level
    from pacsguard.scan.quarantine import QuarantineRefused, read_beneath
    from pacsguard.scan.report import display_path
    from pacsguard.scan.sanitize import clean, write_clean

    try:
        data = read_beneath(source, roots)
        if report.sha256 and hashlib.sha256(data).hexdigest() != report.sha256:
            _not_done(report, "sanitize.failed", "cleaned copy not written: the file changed since it was scanned")
            return
        cleaned = clean(data, report, scanner)
    except (OSError, QuarantineRefused) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        _not_done(report, "sanitize.failed", f"cleaned copy not written: {why}")
        return
    except MemoryError:
        # A file too large for the memory left (held whole to be cleaned, and its copy rescanned):
        # this file has no copy; the scan and the other files' copies go on.
        _not_done(report, "sanitize.failed", "cleaned copy not written: out of memory while cleaning it")
        return
    if cleaned.refused:
        if cleaned.refused != "nothing to clean":
            report.findings.append(Finding("sanitize.refused", Level.INFO, cleaned.refused))
        return
    target = inside(out, relative)
    if target is None:
        _not_done(report, "sanitize.refused", f"cleaned copy not written: {relative} would be outside {out}")
        return
    for place in _places(target):
        try:
            write_clean(place, cleaned)
        except FileExistsError:
            if place != target or target in written:
                continue  # the place of another file's copy, written by this scan: a name of its own
            _not_done(report, "sanitize.failed", f"cleaned copy not written: {place} exists (never overwritten)")
            return
        except OSError as exc:
            _not_done(report, "sanitize.failed", f"cleaned copy not written to {place}: {exc.strerror or exc}")
            return
        written.add(place)
        report.findings.append(Finding("sanitize.written", Level.INFO, f"cleaned copy {display_path(str(place))}: "
                                       + "; ".join(cleaned.actions)))
        return
    _not_done(report, "sanitize.failed", f"cleaned copy not written: {MAX_SAME_NAME} copies named {target.name} "
              "already")


#: Copies of files with one name in one place of --out (IM1, IM1-2 ... IM1-99).
MAX_SAME_NAME = 99


def _places(target: Path) -> Iterator[Path]:
    """``target``, then ``NAME-2`` ... (before a .dcm suffix: ``IM1-2.dcm``)."""
    yield target
    suffix = target.suffix if target.suffix.lower() in (".dcm", ".dicom") else ""
    stem = target.name[:len(target.name) - len(suffix)]
    for n in range(2, MAX_SAME_NAME + 1):
        yield target.with_name(f"{stem}-{n}{suffix}")


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
