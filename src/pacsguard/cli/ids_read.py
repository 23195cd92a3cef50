"""`pacsguard ids read CAPTURE` and `pacsguard ids live --interface IF`: the passive sensor.

Both run the IDS rules (built-in plus ``--rules-dir`` and ``ids.rules_dirs``) over DICOM traffic
and record every alert and each association's ``dicom.association.*``/``dicom.dimse.*`` events
(docs/events.md):

* ``--store S``: into a pacsguard store (SQLite path or postgresql:// URL; created if missing);
* ``--jsonl FILE``: appended as JSON lines (both may be given);
* neither: printed, one line per event (``--format table``) or one JSON Event per line
  (``--format json``).

``ids read --bpf EXPR`` reads only the frames a pcap-filter(7) expression keeps, as ``tcpdump -r``
does (libpcap compiles and matches it: :mod:`pacsguard.ids.capture.offline_filter`); a filter
libpcap refuses is a usage error.

Then a summary: associations, alerts by rule, what was skipped and why, capture problems, and
the reading speed.  With ``--format json`` the summary is one JSON object ``{"summary": ...}`` on
the last line of standard output.  ``read`` shows a progress bar (bytes of the file) on a
terminal.

Exit codes (docs/ids.md): 0 no alert fired, 1 at least one alert fired, 2 usage, configuration,
rule or capture error (one line on stderr, no traceback), 7 the capture could not be read
completely (whatever the alerts; the summary says what was lost and lists the alerts of what was
read).

The functions here are typer commands; ``pacsguard.cli.ids`` registers them.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from collections.abc import Callable
from contextlib import ExitStack
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from pacsguard.cli.common import (
    CONFIG_OPTION,
    EXIT_FINDINGS,
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_PIPE_CLOSED,
    config_path,
    fail,
    guarded,
    load,
    print_rule_problems,
    stdout_closed,
)
from pacsguard.ids.capture import DEFAULT_MAX_FLOWS, CaptureError

if TYPE_CHECKING:
    from pacsguard.events import Event
    from pacsguard.events.sink import EventSink
    from pacsguard.ids.capture.offline_filter import BpfFilter
    from pacsguard.ids.engine import Engine
    from pacsguard.ids.passive import PassiveStats
    from pacsguard.ids.sensor import CaptureClock

__all__ = ["Format", "live_command", "read_command"]

F = TypeVar("F", bound=Callable[..., object])


class Format(str, Enum):
    table = "table"
    json = "json"


RULES_DIR_OPTION = typer.Option(
    None, "--rules-dir", help="directory (or YAML file) of site rules, loaded after the built-in ones (repeat)")
STORE_OPTION = typer.Option(
    None, "--store", help="write events to this pacsguard store (SQLite path or postgresql:// URL); created if missing")
JSONL_OPTION = typer.Option(None, "--jsonl", help="append events to this JSON-lines file")
FORMAT_OPTION = typer.Option(Format.table, "--format", help="table or json (events and summary)")
NO_ASSOC_OPTION = typer.Option(False, "--alerts-only", help="record alerts only, not the association records")
MAX_FLOWS_OPTION = typer.Option(DEFAULT_MAX_FLOWS, "--max-flows", min=1, help="TCP connections tracked at once")


def _ids_errors(func: F) -> F:
    """Rule and capture errors become red lines and exit 2 (guarded handles config/store/OS)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pacsguard.ids import RuleError

        try:
            return func(*args, **kwargs)
        except CaptureError as exc:
            raise fail(str(exc)) from None
        except RuleError as exc:
            raise print_rule_problems(exc) from None

    return wrapper  # type: ignore[return-value]


# ------------------------------------------------------------------ setup shared by both commands


def _engine(rules_dir: list[Path], config: Path | None) -> tuple[Engine, CaptureClock]:
    """The rule engine on a capture clock, with the ``ids:`` settings of pacsguard.yaml (``--config``,
    else ``$PACSGUARD_CONFIG``, else ./pacsguard.yaml when it exists; the defaults without one)."""
    from pacsguard.ids.sensor import CaptureClock

    clock = CaptureClock()
    if config is None and not config_path(None).exists():
        # No pacsguard.yaml: the IDS defaults, without building the model of every part's section.
        from pacsguard.ids.passive import build_engine

        return build_engine(rules_dir, None, clock=clock), clock
    from pacsguard.ids.part import rule_engine

    loaded = load(config, required=False)
    engine = rule_engine(loaded, rules_dir, clock=clock)
    engine.extend_setting("dicom_ports", _route_ports(loaded))
    return engine, clock


def _route_ports(loaded: Any) -> list[int]:
    """Every gateway route's listen and upstream port (and a store-and-forward route's
    destinations', whose associations a capture at the gateway shows too): DICOM ports by
    definition (PS3.8 9.1: any TCP port may be configured), added to ``$dicom_ports`` as the
    inline IDS adds them (pacsguard.gateway.checks.ids), so the gateway's own traffic read with
    its own configuration raises no ``dicom-unexpected-port``."""
    gateway = getattr(loaded.config, "gateway", None)  # None: a runner without the gateway part
    return [port for route in getattr(gateway, "routes", None) or ()
            for port in (route.listen.port, route.upstream.port, *(d.port for d in route.destinations))]


class _Printer:
    """Prints events as they are published (no store, no JSON lines)."""

    def __init__(self, fmt: Format) -> None:
        self.fmt = fmt

    def __call__(self, event: Event) -> None:
        from pacsguard.cli.common import console, shown
        from pacsguard.events import Severity

        if self.fmt is Format.json:
            sys.stdout.write(event.to_json() + "\n")
            return
        severity = event.severity
        style = "bold red" if severity <= Severity.ERROR else "yellow" if severity <= Severity.WARNING else ""
        when = event.time.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        kind = event.kind.removeprefix("ids.")
        line = f"{when}  {kind:<34} {shown(event.message)}"
        console.print(f"[{style}]{line}[/]" if style else line, highlight=False, soft_wrap=True)


def _output(stack: ExitStack, store: str | None, jsonl: Path | None, fmt: Format) -> Callable[[Event], None]:
    """Where events go: the store and/or JSON lines through an EventBus, else the printer."""
    from pacsguard.cli.common import err_console
    from pacsguard.runtime import outputs

    if store is None and jsonl is None:
        return _Printer(fmt)
    try:
        es = outputs.open_store(store, create=True) if store is not None else None
    except OSError as exc:  # a SQLite path in a missing or unwritable directory
        raise fail(f"--store {store}: cannot open it: {exc.strerror or exc}") from None
    sinks: list[EventSink] = []
    if jsonl is not None:
        from pacsguard.sinks import JsonLinesSink

        try:
            sinks.append(JsonLinesSink(jsonl))
        except BaseException as exc:
            if es is not None:
                es.close()
            if isinstance(exc, OSError):  # name the option and the file, not just an errno
                raise fail(f"--jsonl {jsonl}: cannot open it for appending: {exc.strerror or exc}") from None
            raise
    failures: list[Exception] = []
    bus = outputs.open_outputs(stack, es, sinks, on_error=failures.append, close_timeout=5).bus

    def close() -> None:
        if not bus.flush(timeout=120):
            err_console.print(f"[bold red]error:[/] {bus.pending} events could not be written"
                              + (f": {failures[-1]}" if failures else ""), highlight=False)
    stack.callback(close)
    return bus.publish


# ------------------------------------------------------------------ summary


def _summary_dict(stats: PassiveStats, engine: Any) -> dict[str, Any]:
    out = stats.to_dict()
    titles = {r.id: r.title for r in getattr(engine, "rules", [])}
    out["alerts"] = {
        "total": stats.sensor.alerts,
        "by_rule": [{"rule_id": k, "title": titles.get(k, ""), "count": v}
                    for k, v in sorted(stats.sensor.alerts_by_rule.items(), key=lambda kv: (-kv[1], kv[0]))],
    }
    out["inactive_rules"] = dict(getattr(engine, "inactive", {}) or {})
    return out


def _print_summary(stats: PassiveStats, engine: Any, fmt: Format) -> None:
    import orjson
    from rich.table import Table

    from pacsguard.cli.common import console, shown

    if fmt is Format.json:
        summary = orjson.dumps({"summary": _summary_dict(stats, engine)}, option=orjson.OPT_NON_STR_KEYS)
        sys.stdout.write(summary.decode() + "\n")
        sys.stdout.flush()
        return
    cap, sen = stats.capture, stats.sensor
    titles = {r.id: r.title for r in getattr(engine, "rules", [])}

    t = Table(title=f"pacsguard ids: {shown(stats.source)}", show_header=False, title_justify="left")
    t.add_column("what", style="bold")
    t.add_column("value", overflow="fold")
    avg = cap.bytes / cap.packets if cap.packets else 0
    t.add_row("capture", f"{stats.size / 1e6:,.1f} MB, {cap.packets:,} frames (average {avg:,.0f} bytes), "
                         f"{cap.flows:,} TCP connections")
    if cap.ip_length_from_frame:
        t.add_row("IP length 0", f"{cap.ip_length_from_frame:,} frames read with the length of the frame "
                                 "(captured on the sending host before TCP segmentation offload)")
    t.add_row("speed", f"{stats.seconds:,.2f} s: {stats.mb_per_s:,.1f} MB/s, {stats.gbit_per_s:.3f} Gbit/s")
    results = ", ".join(f"{n:,} {r}" for r, n in sorted(sen.results.items(), key=lambda kv: -kv[1])) or "none"
    t.add_row("associations", f"{sen.associations:,} ({results})"
              + (f"; {sen.midstream_associations:,} joined mid-stream" if sen.midstream_associations else ""))
    if sen.commands:
        top = sorted(sen.commands.items(), key=lambda kv: -kv[1])
        commands = ", ".join(f"{n:,} {name}" for name, n in top[:8])
        t.add_row("DIMSE commands", commands + (", ..." if len(top) > 8 else ""))
    t.add_row("alerts", f"[bold red]{sen.alerts:,}[/]" if sen.alerts else "0")
    if stats.incomplete:
        t.add_row("read incompletely", f"[bold red]{shown(stats.lost())}[/]")
    console.print(t)

    if sen.alerts_by_rule:
        a = Table(title="alerts by rule", title_justify="left")
        a.add_column("rule")
        a.add_column("title")
        a.add_column("count", justify="right")
        for rule, n in sorted(sen.alerts_by_rule.items(), key=lambda kv: (-kv[1], kv[0])):
            a.add_row(rule, shown(titles.get(rule, "")), f"{n:,}")
        console.print(a)

    rows: list[tuple[str, str, str]] = []
    for reason, n in sorted(sen.skipped.items(), key=lambda kv: -kv[1]):
        rows.append(("connection not decoded", reason, f"{n:,}"))
    for code, n in sorted(sen.decode_errors.items(), key=lambda kv: -kv[1]):
        rows.append(("decode error (decoding stopped)", code, f"{n:,}"))
    for code, n in sorted(sen.violations.items(), key=lambda kv: -kv[1]):
        rows.append(("protocol violation", code, f"{n:,}"))
    if sen.gaps:
        rows.append(("missing bytes in DICOM streams", f"{sen.gap_bytes:,} bytes; decoder resynchronised",
                     f"{sen.gaps:,}"))
    if sen.resync_skipped_bytes:
        rows.append(("bytes skipped while resynchronising", "", f"{sen.resync_skipped_bytes:,}"))
    for what, n in sorted(cap.non_tcp.items(), key=lambda kv: -kv[1]):
        rows.append(("frame not TCP / not used", what, f"{n:,}"))
    if cap.evicted:
        rows.append(("connections evicted (max flows)", "", f"{cap.evicted:,}"))
    for p in cap.problems[:20]:
        where = p.where()
        rows.append(("capture file problem", p.what + (f" ({where})" if where else ""), "1"))
    if cap.problem_count > len(cap.problems[:20]):
        rows.append(("capture file problem", "more not shown", f"{cap.problem_count - len(cap.problems[:20]):,}"))
    inactive = getattr(engine, "inactive", {}) or {}
    if inactive:
        rows.append(("rules not running", "; ".join(f"{k}: {v}" for k, v in sorted(inactive.items())),
                     f"{len(inactive)}"))
    if rows:
        s = Table(title="skipped and problems", title_justify="left")
        s.add_column("what")
        s.add_column("reason", overflow="fold")
        s.add_column("count", justify="right")
        for row in rows:
            s.add_row(*(shown(x) for x in row))
        console.print(s)


def _exit_code(stats: PassiveStats) -> int:
    if stats.incomplete:
        return EXIT_INCOMPLETE  # "no alerts" would claim more than was read
    return EXIT_FINDINGS if stats.sensor.alerts else EXIT_OK


def _progress_bar(stack: ExitStack, name: str) -> Callable[[int, int | None], None]:
    """A rich progress bar on the terminal for the capture being read; imported only when shown."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from pacsguard.cli.common import err_console, shown

    progress = stack.enter_context(Progress(
        TextColumn("[bold]reading[/] {task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), console=err_console, transient=True))
    task = progress.add_task(shown(name), total=None)

    def report(done: int, total: int | None) -> None:
        progress.update(task, completed=done, total=total)

    return report


def _frame_filter(bpf: str | None) -> BpfFilter | None:
    """``--bpf``'s filter (libpcap compiles it for each link type the file holds and matches each
    frame as ``tcpdump -r`` does: ids/capture/offline_filter.py). An empty filter matches every
    frame, in libpcap as here: no filtering at all then."""
    if bpf is None or not bpf.strip():
        return None
    from pacsguard.ids.capture.offline_filter import BpfFilter

    return BpfFilter(bpf)


# ------------------------------------------------------------------ commands


@guarded
@_ids_errors
def read_command(
    capture: Path = typer.Argument(
        ..., help="pcap or pcapng capture file, plain or compressed (gzip, zstd, lz4); - or a FIFO: read as a "
                  "stream (tcpdump -w -)"),
    rules_dir: list[Path] = RULES_DIR_OPTION,
    store: str | None = STORE_OPTION,
    jsonl: Path | None = JSONL_OPTION,
    fmt: Format = FORMAT_OPTION,
    config: Path | None = CONFIG_OPTION,
    alerts_only: bool = NO_ASSOC_OPTION,
    max_flows: int = MAX_FLOWS_OPTION,
    bpf: str | None = typer.Option(
        None, "--bpf", help="read only the frames this filter matches, pcap-filter(7) syntax as in tcpdump -r FILE "
                            "EXPR, e.g. 'host 10.0.0.5 and port 104'"),
) -> None:
    """Run the IDS rules over a capture file; exit 1 if any alert fired.

    Exit 7 if the capture could not be read completely (the summary says what was lost)."""
    from pacsguard.cli.common import err_console
    from pacsguard.ids.passive import read

    engine, clock = _engine(rules_dir or [], config)
    frame_filter = _frame_filter(bpf)
    with ExitStack() as stack:
        publish = _output(stack, store, jsonl, fmt)
        report = _progress_bar(stack, capture.name) if err_console.is_terminal else None
        stats = read(capture, engine=engine, publish=publish, clock=clock, max_flows=max_flows,
                     log_associations=not alerts_only, progress=report,
                     frame_filter=frame_filter)
    _print_summary(stats, engine, fmt)
    raise typer.Exit(_exit_code(stats))


@guarded
@_ids_errors
def live_command(
    interface: str = typer.Option(..., "--interface", "-i", help="network interface to capture on (needs CAP_NET_RAW)"),
    bpf: str | None = typer.Option(None, "--bpf", help="capture filter, pcap-filter(7) syntax, e.g. 'tcp port 104'"),
    rules_dir: list[Path] = RULES_DIR_OPTION,
    store: str | None = STORE_OPTION,
    jsonl: Path | None = JSONL_OPTION,
    fmt: Format = FORMAT_OPTION,
    config: Path | None = CONFIG_OPTION,
    duration: float | None = typer.Option(None, "--duration", min=0.1, help="stop after this many seconds"),
    promisc: bool = typer.Option(True, "--promisc/--no-promisc", help="put the interface in promiscuous mode"),
    alerts_only: bool = NO_ASSOC_OPTION,
    max_flows: int = MAX_FLOWS_OPTION,
) -> None:
    """Run the IDS rules over live traffic until Ctrl-C, SIGTERM or --duration; exit 1 if any alert fired.

    Exit 7 if packets were lost (dropped by the kernel)."""
    from pacsguard.cli.common import err_console, shown
    from pacsguard.ids.passive import live

    engine, clock = _engine(rules_dir or [], config)
    stop = threading.Event()
    timer: threading.Timer | None = None
    previous: dict[signal.Signals, Any] = {}
    with ExitStack() as stack:
        publish = _output(stack, store, jsonl, fmt)

        def ready() -> None:
            where = f"{interface}" + (f" (filter: {bpf})" if bpf else "")
            err_console.print(f"capturing on {shown(where)}; Ctrl-C to stop", highlight=False)

        def on_signal(signum: int, frame: Any) -> None:
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
        try:
            if duration is not None:
                timer = threading.Timer(duration, stop.set)
                timer.daemon = True
                timer.start()
            reader_gone = _stop_when_reader_goes(stop) if store is None and jsonl is None else None
            stats = live(interface, bpf, engine=engine, publish=publish, stop_event=stop, ready=ready, clock=clock,
                         max_flows=max_flows, promisc=promisc, log_associations=not alerts_only)
        finally:
            if timer is not None:
                timer.cancel()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if reader_gone is not None and reader_gone.is_set():
        raise typer.Exit(EXIT_PIPE_CLOSED)  # as `ids read | head`: no summary to a reader gone
    _print_summary(stats, engine, fmt)
    raise typer.Exit(_exit_code(stats))


def _stop_when_reader_goes(stop: threading.Event) -> threading.Event:
    """Set ``stop`` (and the event returned) when the reader of a piped stdout goes away:
    `ids live -i eth0 | head -1` otherwise captured on, unseen, until the next alert made a write
    fail, on a quiet network until --duration or for ever (GNU tail -f stops the same way)."""
    import stat

    gone = threading.Event()
    try:
        piped = stat.S_ISFIFO(os.fstat(sys.stdout.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):  # stdout replaced (tests) or not a file
        piped = False
    if not piped:
        return gone

    def watch() -> None:
        while not stop.wait(0.5):
            if stdout_closed():
                gone.set()
                stop.set()

    threading.Thread(target=watch, name="stdout-reader-watch", daemon=True).start()
    return gone
