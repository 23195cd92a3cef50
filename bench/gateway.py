"""Gateway benchmark: dcmtk's storescu sends the same files directly to a ``storescp --ignore`` sink,
through ``pacsguard gateway run``, through a second gateway that answers before its record is durable
(``--respond-before-record``: what holding each answer for its record costs is the difference), and
(for reference) through a plain socat TCP relay, in the same run.

    .venv/bin/python bench/gateway.py [--work DIR] [--small 1000] [--large 20] [--large-mb 8]
                                      [--repeat 5] [--repeat-large 15] [--pdu 16384] [--no-socat]
                                      [--python-relay]
                                      [--postgres URL]
                                      [--no-async] [--tls] [--check]
                                      [--profile [--profile-gil]] [--gateway-launcher FILE]

Needs Debian's dcmtk (/usr/bin/storescu, /usr/bin/storescp); socat (apt-get install -y socat) for
the relay reference and py-spy (.venv/bin/pip install py-spy) for --profile are optional.

Targets (issue "bench/gateway.py"): large objects through the gateway at >= 0.9x the direct
throughput, and <= 1 ms added median latency per small C-STORE; a store-and-forward route at
>= 0.8x the relay's throughput (issue 19), every acknowledged object synced to its spool.

The store-and-forward path is a second gateway, ``pacsguard serve`` with one route in
``mode: store-and-forward`` whose destination is the same sink, its spool in the work dir: storescu
sees each C-STORE answered once the object is written, fsync'd, renamed and its folder fsync'd;
the forwarding to the sink runs meanwhile. After each of its runs the bench waits (untimed) until
the spool is empty, so that no path's run competes with leftover forwarding.

Corpus (made once, reused from ``--work DIR/corpus`` when its manifest matches): ``--small`` copies
of pydicom's CT_small.dcm (128x128x16 bit, ~39 KB files) and ``--large`` CT objects with Rows and
Columns enlarged to ``--large-mb`` MiB of 16-bit pixel data (2048x2048 = 8 MiB by default,
uncompressed, Explicit VR Little Endian), every object with fresh Study, Series and SOP Instance
UIDs, so that no layer can answer from a cache.

Peers: ``/usr/bin/storescp --ignore`` as the sink and ``/usr/bin/storescu`` as the client (Debian's
dcmtk, not pynetdicom's look-alikes in .venv/bin), both with ``TCP_NODELAY=1`` in their
environment; the gateway runs as ``python -m pacsguard.cli gateway run`` with a SQLite store in the
work dir (its real event recording, writer thread included). ``socat -b 262144`` with ``nodelay``
on both legs is the ceiling a relay without inspection reaches. Both dcmtk tools are given
``--pdu`` (``-pdu``, default 16384, dcmtk's own default): the sink advertises it as its Maximum
Length (PS3.8 D.1) and storescu sends P-DATA-TF PDUs of that size (checked with tshark at 16, 64
and 128 KiB). dcmtk accepts at most 131072; storescu sends at most 131072-byte PDUs even to a
receiver that advertises more (1 MiB to a pynetdicom SCP: still 131072), so larger PDUs need
another sender. The gateway's own limit (4 MiB) is above all of these, so it passes each
advertised length on unchanged.

``--tls`` adds three paths over TLS (certificates made in the work dir by pacsguard.tls, mutual
TLS on every leg that speaks it): ``direct-tls``, storescu ``+tls`` to a second sink
``storescp +tls``; ``gateway-tls``, storescu ``+tls`` to a gateway that terminates TLS
(``--tls-cert``, client certificate required) and relays in clear to the plain sink; and
``gateway-tls-asyncio``, the same on asyncio's own loop (``PACSGUARD_EVENT_LOOP=asyncio``, where
TLS routes ran before they ran on uvloop). The TLS gateways are judged against ``direct-tls``.
storescu proposes its default list of 128 presentation contexts in every association, as a
modality configured with dcmtk's defaults would.

Method. Each path is run once untimed (warm-up: page cache, first association), then
``--repeat-large`` times (large objects) or ``--repeat`` times (small), the order of the paths rotated
on every repetition; medians of the repetitions are reported.
storescu logs through a log4cplus configuration whose timestamps carry microseconds
(``%D{%s.%Q}``) and the lines "Requesting Association", "Association Accepted", "Sending Store
Request", "Received Store Response" and "Releasing Association" are parsed:

  (a) large: all ``--large`` files in ONE association. Throughput = file bytes / in-association
      time (Association Accepted -> last C-STORE response), MB = 10^6 bytes; the ratio to direct
      is the issue's figure. Also shown: storescu's wall time (process start to exit, association
      set-up included) and the per-object throughput, object size / median C-STORE round trip of
      all timed runs, which a run stalled by the scheduler does not drag down (on a 2-core machine
      three or four busy processes share the cores, and single runs of ~0.3 s vary by +-30 %).
  (b) small: all ``--small`` files in ONE association. The mean per object is in-association time /
      count. The median comes from the per-request round trips that storescu itself timestamps:
      from "Sending Store Request" (data set already loaded from disk, just before the first byte
      is written) to "Received Store Response" (response read and decoded). That interval is
      exactly what a relay adds to: client -> [relay] -> sink -> [relay] -> client; it leaves out
      storescu's file reading and process start. Every C-STORE of every timed run is pooled
      (repeat x small samples per path); the added latency is median(path) - median(direct).
      Logging at that level costs a few microseconds per line and is the same on every path.

CPU time is read around every run: storescu's from its rusage, storescp's and the relay's (the
gateway with its event-writer thread, or socat with its forked child) from /proc, 0.2 s after
storescu exits so that the relay's tail work (closing, flushing events) is counted. For the Python
relays the small table is followed by their CPU per C-STORE by thread: the event loop's (the main
thread) user and system time, and that of the other threads (event writer, journal, workers). At the end the
gateway is stopped (SIGTERM: open associations finish, the event bus is flushed) and its store is
opened: every C-STORE sent through it must be recorded as one
``dicom.dimse.c-store`` event with status 0x0000, the SOP Instance UIDs matching what was sent.

``--profile`` adds untimed runs (5 large associations, 3 small ones) with py-spy attached to the
gateway and prints where each of its threads spends its time (self and inclusive %, from the
collapsed stacks it saves in the work dir). By default every sample is recorded (``--idle``) and
samples whose leaf is a wait (epoll, a lock, a queue) are counted apart, so the figures are wall
time of a busy thread, GIL waits included; ``--profile-gil`` samples only the thread holding the
GIL, i.e. where Python CPU goes. ``--gateway-launcher FILE`` runs the gateway through a script
that patches something first (what-if experiments; never used for the reference figures).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable

from rich.console import Console
from rich.table import Table

STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
HOST = "127.0.0.1"
SINK_AE, GW_AE, CLIENT_AE = "SINK", "GW", "BENCH"
ASYNC = "gateway-async"  # the path through a gateway run with --respond-before-record
PYTHON_COPY = "python-copy"  # bench/python_relay.py: a Python relay that only copies
POSTGRES = "gateway-postgres"  # a gateway whose store is --postgres URL, with a local journal
POSTGRES_COMMIT = "gateway-pg-commit"  # the same without a journal: answers wait for PostgreSQL's commit
CORPUS_VERSION = 1

console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)

LOGGER_CFG = """\
log4cplus.rootLogger = INFO, console
log4cplus.appender.console = log4cplus::ConsoleAppender
log4cplus.appender.console.logToStdErr = true
log4cplus.appender.console.ImmediateFlush = false
log4cplus.appender.console.layout = log4cplus::PatternLayout
log4cplus.appender.console.layout.ConversionPattern = %D{%s.%Q} %p %m%n
"""
LOG_LINE = re.compile(r"^(\d+)\.(\d+\.\d+) (\w+) (.*)$")


# --- corpus --------------------------------------------------------------------------------------

@dataclass
class Corpus:
    directory: Path
    uids: list[str]
    file_bytes: int  # all files together
    shape: str

    @property
    def count(self) -> int:
        return len(self.uids)


def _fresh(ds, generate_uid):  # type: ignore[no-untyped-def]
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def build_corpus(root: Path, kind: str, count: int, large_mb: float) -> Corpus:
    """Make (or reuse) `count` objects: small = CT_small as it is, large = enlarged pixel data."""
    import random

    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    side = 0
    if kind == "large":
        side = max(16, int(math.sqrt(large_mb * (1 << 20) / 2)) // 16 * 16)
    directory = root / (f"small-{count}" if kind == "small" else f"large-{count}-{side}x{side}")
    manifest = directory.parent / f"{directory.name}.json"  # not inside: storescu +sd sends every file
    if manifest.exists():
        meta = json.loads(manifest.read_text())
        files = sorted(directory.glob("*.dcm"))
        if meta.get("version") == CORPUS_VERSION and len(meta["uids"]) == count == len(files):
            return Corpus(directory, meta["uids"], sum(f.stat().st_size for f in files), meta["shape"])
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    shape = f"{base.Rows}x{base.Columns}x{base.BitsAllocated} bit"
    rng = random.Random(20240601)
    uids = []
    for i in range(count):
        ds = _fresh(base.copy(), generate_uid)
        if kind == "large":
            ds.Rows = ds.Columns = side
            ds.PixelData = rng.randbytes(side * side * 2)
            ds["PixelData"].VR = "OW"
            shape = f"{side}x{side}x16 bit"
        ds.save_as(directory / f"{i:05d}.dcm", enforce_file_format=True)
        uids.append(str(ds.SOPInstanceUID))
    manifest.write_text(json.dumps({"version": CORPUS_VERSION, "uids": uids, "shape": shape}))
    files = sorted(directory.glob("*.dcm"))
    return Corpus(directory, uids, sum(f.stat().st_size for f in files), shape)


# --- processes -----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on {port} within {timeout:g} s")


def stop_all(procs: list[subprocess.Popen]) -> None:  # type: ignore[type-arg]
    """Terminate the bench's peers and relays that still run (SIGKILL after 10 s)."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def children_of(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found.update(int(x) for x in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return found


def settle(pid: int | None, persistent: set[int] = frozenset()) -> None:  # type: ignore[assignment]
    """After a run: let the relay finish it (socat's forked child exits and is reaped, the gateway
    closes the association and its event writer flushes) so that its CPU time is all counted.
    ``persistent``: children that live on (a store-and-forward route's forwarding process)."""
    time.sleep(0.2)
    if pid is None:
        return
    deadline = time.monotonic() + 2.0
    while children_of(pid) - persistent and time.monotonic() < deadline:
        time.sleep(0.02)


def cpu_seconds(pid: int) -> float:
    """utime+stime of a process, its reaped children (socat's forks) and its live descendants (a
    store-and-forward route's forwarding process), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    own = sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(child) for child in children_of(pid))


def thread_cpu(pid: int) -> tuple[float, float, float, float]:
    """CPU seconds of a process by thread: the main thread's (the gateway's event loop) user and
    system time, and the other threads' (event writer, journal, workers) user and system time."""
    tick = os.sysconf("SC_CLK_TCK")
    main_user = main_sys = other_user = other_sys = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        user, system = int(fields[11]) / tick, int(fields[12]) / tick
        if task.name == str(pid):
            main_user, main_sys = user, system
        else:
            other_user, other_sys = other_user + user, other_sys + system
    return main_user, main_sys, other_user, other_sys


@dataclass
class Path_:
    name: str
    port: int
    called_ae: str
    pid: int | None = None  # whose CPU time to read (the relay process), None for direct
    client_args: tuple[str, ...] = ()  # storescu's extra options (TLS)
    sink_pid: int | None = None  # the sink this path reaches, when it is not the plain one


@dataclass
class Run:
    wall: float
    setup: float  # Requesting Association -> Association Accepted
    in_assoc: float  # Association Accepted -> last Received Store Response
    rtts: list[float]  # per C-STORE: Sending Store Request -> Received Store Response
    ok: int
    max_pdv: int | None
    cpu: float | None = None  # the relay process (gateway or socat)
    client_cpu: float = 0.0  # storescu
    sink_cpu: float = 0.0  # storescp
    delivered: float | None = None  # store-and-forward: storescu's start -> the spool drained
    # the relay by thread: loop user, loop system, other threads user, other threads system
    threads: tuple[float, float, float, float] | None = None


def storescu(path: Path_, corpus: Corpus, logcfg: Path, max_pdu: int, sink_pid: int,
             drain: Callable[[], None] | None = None) -> Run:
    """One storescu run through ``path``. ``drain`` (store-and-forward): waits until everything
    was forwarded, before CPU times are read, and gives the delivered time."""
    cmd = [STORESCU, "-lc", str(logcfg), "-aet", CLIENT_AE, "-aec", path.called_ae, "-pdu", str(max_pdu),
           *path.client_args, "+sd", HOST, str(path.port), str(corpus.directory)]
    sink_pid = path.sink_pid or sink_pid
    before = cpu_seconds(path.pid) if path.pid else None
    threads_before = thread_cpu(path.pid) if path.pid else None
    sink_before = cpu_seconds(sink_pid)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    persistent = children_of(path.pid) if path.pid else set()
    proc = subprocess.run(cmd, env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    delivered = None
    if drain is not None and proc.returncode == 0:
        drain()
        delivered = time.perf_counter() - t0
    settle(path.pid, persistent)
    cpu = cpu_seconds(path.pid) - before if path.pid and before is not None else None
    threads = None
    if path.pid and threads_before is not None:
        lu, ls, ou, os_ = (b - a for a, b in zip(threads_before, thread_cpu(path.pid), strict=True))
        threads = (lu, ls, ou, os_)
    sink_cpu = cpu_seconds(sink_pid) - sink_before
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # storescu, the only child reaped meanwhile
    client_cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    if proc.returncode != 0:
        raise SystemExit(f"storescu via {path.name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    marks: dict[str, float] = {}
    rtts: list[float] = []
    sent: float | None = None
    ok = 0
    max_pdv = None
    for line in proc.stderr.splitlines():
        m = LOG_LINE.match(line)
        if not m:
            continue
        t = int(m.group(1)) + float(m.group(2)) / 1000.0
        text = m.group(4)
        if text.startswith("Sending Store Request"):
            sent = t
        elif text.startswith("Received Store Response"):
            if sent is not None:
                rtts.append(t - sent)
            sent = None
            marks["last_rsp"] = t
            ok += "(Success)" in text
        elif text.startswith("Requesting Association"):
            marks["rq"] = t
        elif text.startswith("Association Accepted"):
            marks["ac"] = t
            pdv = re.search(r"Max Send PDV: (\d+)", text)
            max_pdv = int(pdv.group(1)) if pdv else None
    if len(rtts) != corpus.count or ok != corpus.count:
        raise SystemExit(f"storescu via {path.name}: {ok}/{corpus.count} successful C-STOREs "
                         f"({len(rtts)} timed)\n{proc.stderr[-3000:]}")
    return Run(wall, marks["ac"] - marks["rq"], marks["last_rsp"] - marks["ac"], rtts, ok, max_pdv, cpu,
               client_cpu, sink_cpu, delivered, threads)


# --- profiling -----------------------------------------------------------------------------------

def pyspy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def profile(gw_pid: int, runs: list, out: Path, rate: int, gil: bool = False) -> dict[str, object]:
    """Record the gateway with py-spy while `runs` (callables) execute; summarise each thread."""
    exe = pyspy()
    if exe is None:
        console.print("[yellow]py-spy not found (.venv/bin/pip install py-spy): no profile[/]")
        return {}
    raw = out.with_suffix(".txt")
    spy = subprocess.Popen([exe, "record", "--pid", str(gw_pid), "--rate", str(rate), "--threads",
                            "--gil" if gil else "--idle", "--format", "raw", "-o", str(raw)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # let py-spy attach
    t0 = time.perf_counter()
    for run in runs:
        run()
    elapsed = time.perf_counter() - t0
    spy.send_signal(signal.SIGINT)
    try:
        _, err = spy.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        spy.kill()
        err = ""
    if not raw.exists():
        console.print(f"[yellow]py-spy wrote nothing: {err[-2000:]}[/]")
        return {}
    return summarise_stacks(raw, elapsed, rate)


# Leaf frames of a thread that waits (py-spy's own idle detection misses them here, so every sample is
# recorded with --idle and classified by its leaf): the event loop in epoll, the writer thread on its
# threading.Event, to_thread workers on their queue.
_IDLE = re.compile(r"^(EpollSelector\.select|Condition\.wait|Event\.wait|_worker|Thread\._wait_for_tstate_lock) ")


def summarise_stacks(raw: Path, elapsed: float, rate: int) -> dict[str, object]:
    """Per thread: busy samples, and self / inclusive sample counts per function (line numbers dropped);
    samples whose leaf is a wait (_IDLE) are counted apart as idle."""
    threads: dict[str, dict[str, object]] = {}
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        name = frames[0].split(":", 1)[-1].strip()  # "thread (123): MainThread" -> "MainThread"
        name = re.sub(r"_\d+$", "", name)  # asyncio_0, asyncio_1 ... (to_thread workers) as one
        t = threads.setdefault(name, {"samples": 0, "idle": 0, "self": Counter(), "incl": Counter()})
        count = int(n)
        if len(frames) > 1 and _IDLE.match(_short(frames[-1])):
            t["idle"] += count  # type: ignore[operator]
            continue
        t["samples"] += count  # type: ignore[operator]
        if len(frames) > 1:
            t["self"][_short(frames[-1])] += count  # type: ignore[index]
            for f in {_short(f) for f in frames[1:]}:
                t["incl"][f] += count  # type: ignore[index]
    return {"elapsed": elapsed, "rate": rate, "threads": threads, "raw": raw}


def _short(frame: str) -> str:
    """'data_received (pacsguard/gateway/relay.py:190)' -> 'data_received (gateway/relay.py)'."""
    m = re.match(r"(.*?) \((.*?)(?::\d+)?\)$", frame)
    if not m:
        return frame
    path = m.group(2)
    for marker in ("site-packages/", "lib/python3.11/", "src/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m.group(1)} ({path})"


# Frames every sample of a thread passes through (start-up, the loop itself): not worth a row.
_BORING = re.compile(r"\((<frozen runpy>|typer/|pacsguard/cli/|asyncio/runners|threading\.py|concurrent/)"
                     r"|BaseEventLoop\.(run_forever|run_until_complete)|_run_module_as_main|<module>")


def print_profile(title: str, prof: dict[str, object], top: int = 20) -> None:
    if not prof:
        return
    elapsed, rate = prof["elapsed"], prof["rate"]
    threads: dict[str, dict] = prof["threads"]  # type: ignore[assignment]
    console.print(f"\n[bold]{title}[/]: {elapsed:.2f} s of storescu runs recorded at {rate} Hz; CPU busy per thread "
                  "(samples not waiting in epoll / a lock / a queue): "
                  + "; ".join(f"{name} {t['samples']} samples = {t['samples'] / rate / elapsed:.0%} of a core"  # type: ignore[operator]
                              for name, t in sorted(threads.items(), key=lambda kv: -kv[1]["samples"])))
    for name, t in sorted(threads.items(), key=lambda kv: -kv[1]["samples"]):
        total = t["samples"]
        if total < 0.05 * rate * elapsed:  # type: ignore[operator]
            continue
        table = Table(header_style="bold", title=f"{title}: thread {name}, {total} samples (% of them)")
        table.add_column("self: function (file)")
        table.add_column("self %", justify="right")
        table.add_column("inclusive: function (file)")
        table.add_column("incl. %", justify="right")
        selfs = t["self"].most_common(top)
        incl = [(f, n) for f, n in t["incl"].most_common() if not _BORING.search(f)][:top]
        for i in range(max(len(selfs), len(incl))):
            a = selfs[i] if i < len(selfs) else ("", None)
            b = incl[i] if i < len(incl) else ("", None)
            table.add_row(a[0], f"{100 * a[1] / total:.1f}" if a[1] else "",
                          b[0], f"{100 * b[1] / total:.1f}" if b[1] else "")
        console.print(table)
    console.print(f"collapsed stacks (flamegraph.pl / speedscope input): {prof['raw']}")


# --- report --------------------------------------------------------------------------------------

def med(xs: list[float]) -> float:
    return statistics.median(xs)


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def machine() -> str:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    dcmtk = subprocess.run([STORESCU, "--version"], capture_output=True, text=True).stdout.split("\n")[0].strip()
    return (f"nproc {os.cpu_count()} ({model}), Linux {platform.release()}, Python {platform.python_version()}, "
            f"{dcmtk}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=None, help="corpus cache and gateway store (default: a temp dir)")
    ap.add_argument("--small", type=int, default=1000, help="small objects, all in one association")
    ap.add_argument("--large", type=int, default=20, help="large objects, all in one association")
    ap.add_argument("--large-mb", type=float, default=8.0, help="pixel data of a large object, MiB")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per path of the small objects (median reported)")
    ap.add_argument("--repeat-large", type=int, default=15,
                    help="timed runs per path of the large objects: one takes ~0.2 s, and on a shared 2-core "
                         "machine single runs vary by +-30 %%, so more of them steady the median")
    ap.add_argument("--pdu", "--max-pdu", dest="max_pdu", type=int, default=16384,
                    help="the sink's advertised Maximum Length and storescu's -pdu (4096..131072: dcmtk's range)")
    ap.add_argument("--tls", action="store_true",
                    help="add direct-tls, gateway-tls (uvloop) and gateway-tls-asyncio paths (mutual TLS)")
    ap.add_argument("--no-socat", action="store_true", help="skip the plain socat relay")
    ap.add_argument("--python-relay", action="store_true",
                    help="also the floor of a relay in Python: bench/python_relay.py (uvloop, copies, no inspection)")
    ap.add_argument("--postgres", default=None, metavar="URL",
                    help="also two gateways whose store is this PostgreSQL database, with and without a local journal")
    ap.add_argument("--no-async", action="store_true",
                    help="skip the second gateway that answers before its record is durable")
    ap.add_argument("--no-store-forward", action="store_true", help="skip the store-and-forward route")
    ap.add_argument("--profile", action="store_true", help="extra untimed runs with py-spy on the gateway")
    ap.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second")
    ap.add_argument("--profile-gil", action="store_true",
                    help="py-spy --gil: sample only the thread holding the GIL (CPU in Python, no GIL waits)")
    ap.add_argument("--keep", action="store_true", help="keep the default temp work dir (--profile keeps it too)")
    ap.add_argument("--check", action="store_true", help="exit 1 when the gateway misses a target")
    ap.add_argument("--gateway-launcher", type=Path, default=None,
                    help="for what-if experiments: run the gateway as `python FILE gateway run ...` (a script that "
                         "patches something, then calls pacsguard.cli.main.main()) instead of "
                         "`python -m pacsguard.cli`")
    ap.add_argument("--store-forward-launcher", type=Path, default=None,
                    help="the same for the store-and-forward route's `serve` (e.g. bench/store_forward_timing.py)")
    args = ap.parse_args()
    if not 4096 <= args.max_pdu <= 131072:
        ap.error("--pdu: dcmtk's storescp and storescu accept 4096..131072")

    for tool in (STORESCU, STORESCP):
        version = subprocess.run([tool, "--version"], capture_output=True, text=True).stdout
        if "dcmtk" not in version.lower():
            raise SystemExit(f"{tool} is not OFFIS DCMTK (apt-get install dcmtk)")
    temp = args.work is None
    work = Path(tempfile.mkdtemp(prefix="pacsguard-bench-gw-")) if temp else args.work
    work.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []
    try:
        return bench(args, work, procs)
    finally:
        stop_all(procs)
        if temp and not (args.keep or args.profile):  # --profile: keep the collapsed stacks
            shutil.rmtree(work, ignore_errors=True)
        elif temp:
            console.print(f"work dir kept: {work}")


def bench(args: argparse.Namespace, work: Path, procs: list[subprocess.Popen]) -> int:
    with ExitStack() as files:
        return _bench(args, work, procs, lambda name: files.enter_context((work / "logs" / name).open("w")))


def _bench(args: argparse.Namespace, work: Path, procs: list[subprocess.Popen], log: Callable[[str], IO[str]]) -> int:
    t0 = time.perf_counter()
    small = build_corpus(work / "corpus", "small", args.small, args.large_mb)
    large = build_corpus(work / "corpus", "large", args.large, args.large_mb)
    console.print(f"corpus in {work / 'corpus'} ready in {time.perf_counter() - t0:.1f} s: "
                  f"{small.count} x {small.file_bytes / small.count / 1e3:.1f} KB ({small.shape}), "
                  f"{large.count} x {large.file_bytes / large.count / 1e6:.2f} MB ({large.shape})")
    logcfg = work / "storescu-logger.cfg"
    logcfg.write_text(LOGGER_CFG)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)

    sink_port = free_port()
    sink = subprocess.Popen([STORESCP, "--ignore", "-aet", SINK_AE, "-pdu", str(args.max_pdu), str(sink_port)],
                            env=dcmtk_env(), stdout=log("storescp.log"), stderr=subprocess.STDOUT)
    procs.append(sink)
    wait_port(sink_port, sink, "storescp")

    store = work / "gateway.db"
    for stale in (store, Path(f"{store}.key"), Path(f"{store}-wal"), Path(f"{store}-shm")):
        stale.unlink(missing_ok=True)
    gw_port = free_port()
    launch = [str(args.gateway_launcher)] if args.gateway_launcher else ["-m", "pacsguard.cli"]
    def start_gateway(port: int, db: Path | str, *extra: str, name: str = "") -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, *launch, "gateway", "run", "--listen", f"{HOST}:{port}",
                                 "--aet", GW_AE, "--upstream", f"{SINK_AE}@{HOST}:{sink_port}", "--allow-calling",
                                 CLIENT_AE, "--allow-host", HOST, "--store", str(db), *extra],
                                stdout=log(f"{name or Path(db).stem}.log"), stderr=subprocess.STDOUT)
        procs.append(proc)
        wait_port(port, proc, "pacsguard gateway")
        return proc

    gw = start_gateway(gw_port, store)
    paths = [Path_("direct", sink_port, SINK_AE), Path_("gateway", gw_port, GW_AE, gw.pid)]
    gateways = {"gateway": (gw, store)}  # whose record is checked at the end
    if not args.no_async:
        # The same gateway answering before its record is durable: the difference is what holding
        # each C-STORE-RSP for its record costs.
        async_store = work / "gateway-async.db"
        for stale in (async_store, Path(f"{async_store}.key"), Path(f"{async_store}-wal"),
                      Path(f"{async_store}-shm")):
            stale.unlink(missing_ok=True)
        async_port = free_port()
        gw_async = start_gateway(async_port, async_store, "--respond-before-record")
        paths.append(Path_(ASYNC, async_port, GW_AE, gw_async.pid))
    if args.postgres:
        # The same gateway on a PostgreSQL store, twice: with a local journal (answers wait for its
        # fdatasync), and without (answers wait for the database's commit).
        journal = work / "gateway-postgres.journal"
        journal.unlink(missing_ok=True)
        for label, setting in ((POSTGRES, str(journal)), (POSTGRES_COMMIT, "none")):
            pg_port = free_port()
            gw_pg = start_gateway(pg_port, args.postgres, "--journal", setting, name=label)
            paths.append(Path_(label, pg_port, GW_AE, gw_pg.pid))
    if args.python_relay:
        py_port = free_port()
        py_relay = subprocess.Popen([sys.executable, str(Path(__file__).with_name("python_relay.py")), str(py_port),
                                     HOST, str(sink_port)], stderr=log("python-relay.log"))
        procs.append(py_relay)
        wait_port(py_port, py_relay, "python relay")
        paths.append(Path_(PYTHON_COPY, py_port, SINK_AE, py_relay.pid))
    socat_exe = None if args.no_socat else shutil.which("socat")
    if socat_exe:
        socat_port = free_port()
        socat = subprocess.Popen([socat_exe, "-b", "262144",
                                  f"TCP-LISTEN:{socat_port},bind={HOST},reuseaddr,fork,nodelay",
                                  f"TCP:{HOST}:{sink_port},nodelay"], stderr=log("socat.log"))
        procs.append(socat)
        wait_port(socat_port, socat, "socat")
        paths.append(Path_("socat", socat_port, SINK_AE, socat.pid))
    elif not args.no_socat:
        console.print("[yellow]socat not installed (apt-get install -y socat): no relay reference[/]")
    if args.tls:
        pki = make_pki(work / "pki")
        tls_sink_port = free_port()
        tls_sink = subprocess.Popen([STORESCP, "--ignore", "-aet", SINK_AE, "-pdu", str(args.max_pdu),
                                     "+tls", str(pki["sink.key"]), str(pki["sink.crt"]), "+cf", str(pki["ca"]),
                                     str(tls_sink_port)], env=dcmtk_env(), stdout=log("storescp-tls.log"),
                                    stderr=subprocess.STDOUT)
        procs.append(tls_sink)
        wait_port(tls_sink_port, tls_sink, "storescp +tls")
        client_tls = ("+tls", str(pki["client.key"]), str(pki["client.crt"]), "+cf", str(pki["ca"]))
        paths.append(Path_("direct-tls", tls_sink_port, SINK_AE, None, client_tls, tls_sink.pid))
        serve_tls = ("--tls-cert", str(pki["gateway.crt"]), "--tls-key", str(pki["gateway.key"]),
                     "--tls-ca", str(pki["ca"]), "--require-client-cert")
        for name, loop in (("gateway-tls", "uvloop"), ("gateway-tls-asyncio", "asyncio")):
            db = work / f"{name}.db"
            for stale in (db, Path(f"{db}.key"), Path(f"{db}-wal"), Path(f"{db}-shm")):
                stale.unlink(missing_ok=True)
            port = free_port()
            os.environ["PACSGUARD_EVENT_LOOP"] = loop  # read by the gateway process at start
            try:
                proc = start_gateway(port, db, *serve_tls)
            finally:
                del os.environ["PACSGUARD_EVENT_LOOP"]
            paths.append(Path_(name, port, GW_AE, proc.pid, client_tls))
            gateways[name] = (proc, db)

    spool = None
    if not args.no_store_forward:
        sf_port, sf_proc, spool = start_store_forward(work, sink_port, log("store-forward.log"), args.max_pdu,
                                                      args.store_forward_launcher)
        procs.append(sf_proc)
        paths.append(Path_("store-and-forward", sf_port, GW_AE, sf_proc.pid))

    sent_via: dict[str, Counter[str]] = {name: Counter() for name in gateways}
    assocs_via: Counter[str] = Counter()

    def send(path: Path_, corpus: Corpus) -> Run:
        wait = (lambda: drain(spool)) if path.name == "store-and-forward" and spool is not None else None
        run = storescu(path, corpus, logcfg, args.max_pdu, sink.pid, wait)
        if path.name in sent_via:
            sent_via[path.name].update(corpus.uids)
            assocs_via[path.name] += 1
        return run

    results: dict[tuple[str, str], list[Run]] = {}
    for label, corpus in (("large", large), ("small", small)):
        for path in paths:  # warm-up, untimed
            send(path, corpus)
        repeat = args.repeat_large if label == "large" else args.repeat
        for rep in range(repeat):
            order = paths[rep % len(paths):] + paths[:rep % len(paths)]
            for path in order:
                results.setdefault((label, path.name), []).append(send(path, corpus))
        console.print(f"{label}: {repeat} timed runs per path done")

    profiles = {}
    if args.profile:
        gpath = paths[1]
        profiles["large"] = profile(gw.pid, [lambda: send(gpath, large)] * 5, work / "profile-large", args.profile_rate,
                                   args.profile_gil)
        profiles["small"] = profile(gw.pid, [lambda: send(gpath, small)] * 3, work / "profile-small", args.profile_rate,
                                   args.profile_gil)

    # Stop each gateway cleanly (flushes its event bus), then check its record.
    records = {}
    for name, (proc, db) in gateways.items():
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise SystemExit(f"the {name} did not stop within 60 s of SIGTERM") from None
        records[name] = (sent_via[name], assocs_via[name], check_store(db))

    status = report(args, small, large, paths, results, records)
    for label, prof in profiles.items():
        print_profile(f"py-spy, gateway, {label} objects", prof)
    return status


def start_store_forward(work: Path, sink_port: int, log: IO[str], max_pdu: int,
                        launcher: Path | None = None) -> tuple[int, subprocess.Popen, Path]:
    """`pacsguard serve` with one store-and-forward route to the sink; its port, process and spool."""
    import yaml

    home = work / "store-forward"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    port = free_port()
    route = {"name": "sf", "mode": "store-and-forward",
             "listen": {"host": HOST, "port": port, "ae_title": GW_AE},
             "policy": {"calling_ae_titles": [CLIENT_AE], "hosts": [HOST]},
             "limits": {"max_pdu_length": max(max_pdu, 16384)},
             "destinations": [{"name": "sink", "host": HOST, "port": sink_port, "ae_title": SINK_AE}],
             "spool": {"min_free_mib": 256}}
    (home / "pacsguard.yaml").write_text(yaml.safe_dump({"store": {"url": "var/pacsguard.db"},
                                                        "gateway": {"routes": [route]}}))
    subprocess.run([sys.executable, "-m", "pacsguard.cli", "init", "--no-demo"], cwd=home, check=True,
                   stdout=log, stderr=subprocess.STDOUT)
    launch = [str(launcher.resolve())] if launcher else ["-m", "pacsguard.cli"]
    proc = subprocess.Popen([sys.executable, *launch, "serve"], cwd=home, stdout=log, stderr=subprocess.STDOUT)
    wait_port(port, proc, "pacsguard serve (store-and-forward)")
    return port, proc, home / "var" / "spool" / "sf" / "objects"


def drain(objects: Path, timeout: float = 600.0) -> None:
    """Wait until the store-and-forward route has forwarded everything it spooled."""
    deadline = time.monotonic() + timeout
    while any(objects.glob("*.json")):
        if time.monotonic() > deadline:
            raise SystemExit(f"the store-and-forward spool did not drain within {timeout:.0f} s")
        time.sleep(0.05)


def check_store(store: Path) -> dict[str, object]:
    from pacsguard.store import EventQuery, EventStore

    es = EventStore.open(str(store))
    try:
        uids: Counter[str] = Counter()
        statuses: Counter[str] = Counter()
        events = 0
        for stored in es.search(EventQuery(kind="dicom.dimse.c-store", limit=None)):
            events += 1
            details = stored.event.details
            uids[str(details.get("sop_instance"))] += 1
            statuses[str(details.get("status"))] += 1
        released = sum(1 for _ in es.search(EventQuery(kind="dicom.association.released", limit=None)))
        contexts = accepted = None
        for stored in es.search(EventQuery(kind="dicom.association.requested", limit=1)):
            contexts = stored.event.details.get("contexts")
        for stored in es.search(EventQuery(kind="dicom.association.accepted", limit=1)):
            accepted = stored.event.details.get("accepted")
        aborted = sum(1 for _ in es.search(EventQuery(kind="dicom.association.aborted", limit=None)))
        total = es.size()
    finally:
        es.engine.dispose()
    return {"events": events, "uids": uids, "statuses": statuses, "released": released, "aborted": aborted,
            "total": total, "contexts": contexts, "accepted": len(accepted) if isinstance(accepted, list) else None}


def make_pki(folder: Path) -> dict[str, Path]:
    """A CA and certificates for the sink, the gateway and the client (pacsguard.tls, 127.0.0.1)."""
    from pacsguard.tls import make_ca, make_cert

    ca_cert, ca_key = make_ca(folder, "Bench CA", 2, force=True)  # fresh for every run
    out = {"ca": ca_cert}
    for name in ("sink", "gateway", "client"):
        cert, key = make_cert(folder, name, ca_cert, ca_key, hosts=["127.0.0.1"], days=2, server=name != "client",
                              client=name == "client", force=True)
        out[f"{name}.crt"], out[f"{name}.key"] = cert, key
    return out


def report(args: argparse.Namespace, small: Corpus, large: Corpus, paths: list[Path_],
           results: dict[tuple[str, str], list[Run]],
           records: dict[str, tuple[Counter[str], int, dict[str, object]]]) -> int:
    """Print the tables and verdicts; returns the exit status (1: record incomplete, or --check and a target missed)."""
    console.print()
    console.print(f"[bold]machine[/]: {machine()}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    recorded = records["gateway"][2]
    if args.gateway_launcher:
        console.print(f"[bold yellow]gateway started through the launcher {args.gateway_launcher}[/]")
    pdv = results[("large", "direct")][0].max_pdv
    console.print(f"[bold]shapes[/]: large {large.count} x {large.file_bytes / large.count / 1e6:.2f} MB "
                  f"({large.shape}) in one association = {large.file_bytes / 1e6:.0f} MB; small {small.count} x "
                  f"{small.file_bytes / small.count / 1e3:.1f} KB ({small.shape}) in one association; "
                  f"max PDU {args.max_pdu} (max send PDV {pdv}); storescu proposes {recorded['contexts']} "
                  f"presentation contexts ({recorded['accepted']} SOP classes accepted); "
                  f"{args.repeat_large} (large) and "
                  f"{args.repeat} (small) timed runs per path after one warm-up, medians shown; "
                  "MB = 10^6 bytes of DICOM files")

    names = [p.name for p in paths]
    direct_tp = med([large.file_bytes / r.in_assoc for r in results[("large", "direct")]])
    table = Table(title=f"(a) large: {large.count} x {large.file_bytes / large.count / 1e6:.1f} MB in one association",
                  header_style="bold")
    for col in ("path", "MB/s (in assoc.)", "x direct", "runs MB/s", "MB/s (wall)", "x direct (wall)",
                "MB/s per object (median)", "x direct (per object)", "CPU s/GB storescu + storescp + relay",
                "cores busy"):
        table.add_column(col, justify="right" if col != "path" else "left")
    direct_wall = med([large.file_bytes / r.wall for r in results[("large", "direct")]])
    per_object = large.file_bytes / large.count
    direct_obj = per_object / med([x for r in results[("large", "direct")] for x in r.rtts])
    ratios, obj_ratios, relay_gb = {}, {}, {}
    for name in names:
        runs = results[("large", name)]
        tp = med([large.file_bytes / r.in_assoc for r in runs])
        wall = med([large.file_bytes / r.wall for r in runs])
        ratios[name] = tp / direct_tp
        obj = per_object / med([x for r in runs for x in r.rtts])
        obj_ratios[name] = obj / direct_obj
        gb = large.file_bytes / 1e9
        relay = relay_gb[name] = med([r.cpu for r in runs]) / gb if runs[0].cpu is not None else 0.0
        client, sinkc = med([r.client_cpu for r in runs]) / gb, med([r.sink_cpu for r in runs]) / gb
        busy = med([(r.client_cpu + r.sink_cpu + (r.cpu or 0.0)) / r.wall for r in runs])
        table.add_row(name, f"{tp / 1e6:.0f}", f"{tp / direct_tp:.3f}",
                      " ".join(f"{large.file_bytes / r.in_assoc / 1e6:.0f}" for r in runs),
                      f"{wall / 1e6:.0f}", f"{wall / direct_wall:.3f}", f"{obj / 1e6:.0f}", f"{obj / direct_obj:.3f}",
                      f"{client:.2f} + {sinkc:.2f} + " + (f"{relay:.2f}" if runs[0].cpu is not None else "-")
                      + f" = {client + sinkc + relay:.2f}", f"{busy:.2f} of {os.cpu_count()}")
    console.print(table)
    console.print("in assoc. = Association Accepted -> last C-STORE response; per object = object size / median "
                  "C-STORE round trip of all timed runs (robust to a stalled run). CPU: utime+stime per GB of files "
                  "(storescu from its rusage, storescp and the relay from /proc, read 0.2 s after each run); cores "
                  "busy = their CPU time / storescu's wall time")

    table = Table(title=f"(b) small: {small.count} x {small.file_bytes / small.count / 1e3:.1f} KB in one association",
                  header_style="bold")
    for col in ("path", "mean ms / C-STORE", "median RTT ms", "p90 ms", "p99 ms", "added median ms",
                "added mean ms", "assoc. set-up ms", "CPU ms / C-STORE storescu + storescp + relay"):
        table.add_column(col, justify="right" if col != "path" else "left")
    d_runs = results[("small", "direct")]
    d_rtt = [x for r in d_runs for x in r.rtts]
    d_mean = med([r.in_assoc / small.count for r in d_runs])
    added = {}
    for name in names:
        runs = results[("small", name)]
        rtt = [x for r in runs for x in r.rtts]
        mean = med([r.in_assoc / small.count for r in runs])
        added[name] = med(rtt) - med(d_rtt)
        per = 1e3 / small.count
        relay = med([r.cpu for r in runs]) * per if runs[0].cpu is not None else 0.0
        client, sinkc = med([r.client_cpu for r in runs]) * per, med([r.sink_cpu for r in runs]) * per
        table.add_row(name, f"{mean * 1e3:.3f}", f"{med(rtt) * 1e3:.3f}", f"{pct(rtt, 0.9) * 1e3:.3f}",
                      f"{pct(rtt, 0.99) * 1e3:.3f}", f"{added[name] * 1e3:+.3f}", f"{(mean - d_mean) * 1e3:+.3f}",
                      f"{med([r.setup for r in runs]) * 1e3:.2f}",
                      f"{client:.3f} + {sinkc:.3f} + " + (f"{relay:.3f}" if runs[0].cpu is not None else "-")
                      + f" = {client + sinkc + relay:.3f}")
    console.print(table)
    console.print("RTT = storescu's own timestamps, 'Sending Store Request' -> 'Received Store Response', every "
                  f"C-STORE of the {args.repeat} timed runs pooled; mean = in-association time / count")
    split = []
    for name in names:
        runs = results[("small", name)]
        if runs[0].threads is None or name == "socat":
            continue
        loop_user, loop_sys, other_user, other_sys = (med([r.threads[i] for r in runs]) * 1e3 / small.count  # type: ignore[index]
                                                      for i in range(4))
        split.append(f"{name} loop {loop_user:.3f} user + {loop_sys:.3f} sys, other threads {other_user:.3f} user + "
                     f"{other_sys:.3f} sys")
    if split:
        console.print("relay CPU ms / C-STORE by thread (medians): " + "; ".join(split))

    ok_tp = ratios["gateway"] >= 0.9
    ok_lat = added["gateway"] <= 0.001
    verdict = lambda ok: "[green]PASS[/]" if ok else "[red]FAIL[/]"  # noqa: E731
    line = (f"gateway large throughput {ratios['gateway']:.3f} x direct (target >= 0.9) {verdict(ok_tp)} "
            f"(per object: {obj_ratios['gateway']:.3f} x)")
    if "socat" in ratios:
        line += (f"; socat {ratios['socat']:.3f} x (per object {obj_ratios['socat']:.3f} x); gateway / socat "
                 f"{ratios['gateway'] / ratios['socat']:.3f}")
    console.print(line)
    line = (f"gateway added median latency per small C-STORE {added['gateway'] * 1e3:.3f} ms (target <= 1 ms) "
            f"{verdict(ok_lat)}")
    if "socat" in added:
        line += f"; socat {added['socat'] * 1e3:.3f} ms"
    if PYTHON_COPY in added:
        line += f"; a Python relay that only copies {added[PYTHON_COPY] * 1e3:.3f} ms"
    console.print(line)
    if ASYNC in added:
        console.print(f"of which waiting for the record (gateway - {ASYNC}, median): "
                      f"{(added['gateway'] - added[ASYNC]) * 1e3:.3f} ms; {ASYNC} adds {added[ASYNC] * 1e3:.3f} ms")
    if POSTGRES in added:
        console.print(f"on a PostgreSQL store with a local journal: {POSTGRES} adds {added[POSTGRES] * 1e3:.3f} ms "
                      f"per small C-STORE (target <= 1 ms) {verdict(added[POSTGRES] <= 0.001)}; without a journal "
                      f"(answers wait for the database's commit) {added[POSTGRES_COMMIT] * 1e3:.3f} ms")
    if "direct-tls" in ratios:
        tls = [f"{name} {ratios[name] / ratios['direct-tls']:.3f} x direct-tls (relay {relay_gb[name]:.2f} "
               f"CPU-s/GB, added median per small C-STORE {(added[name] - added['direct-tls']) * 1e3:+.3f} ms)"
               for name in ("gateway-tls", "gateway-tls-asyncio")]
        console.print(f"TLS, large throughput (target: better than 0.77 x direct-tls): {'; '.join(tls)}; "
                      f"direct-tls {ratios['direct-tls']:.3f} x direct")
    ok_sf = True
    if "store-and-forward" in ratios:
        sf = ratios["store-and-forward"] / ratios["gateway"]
        ok_sf = sf >= 0.8
        console.print(f"store-and-forward large throughput {sf:.3f} x the relay's (target >= 0.8, acknowledged "
                      f"objects synced) {verdict(ok_sf)}; {ratios['store-and-forward']:.3f} x direct; added median "
                      f"latency per small C-STORE {added['store-and-forward'] * 1e3:.3f} ms")
        # What the destination sees: storescu's start -> the spool drained, against the relay's
        # storescu wall time (each of its objects is at the sink when storescu ends).
        runs = results[("large", "store-and-forward")]
        if all(r.delivered for r in runs):
            delivered = large.file_bytes / med([r.delivered or 0.0 for r in runs]) / 1e6
            relay_wall = large.file_bytes / med([r.wall for r in results[("large", "gateway")]]) / 1e6
            console.print(f"store-and-forward delivered to the sink: {delivered:.0f} MB/s = "
                          f"{delivered / relay_wall:.3f} x the relay's {relay_wall:.0f} MB/s (storescu's start -> "
                          "the spool drained, against storescu's wall time through the relay)")

    complete = True
    for name, (sent, assocs, recorded) in records.items():
        uids: Counter[str] = recorded["uids"]  # type: ignore[assignment]
        statuses: Counter[str] = recorded["statuses"]  # type: ignore[assignment]
        sent_total = sum(sent.values())
        same = uids == sent and recorded["events"] == sent_total
        complete = complete and same
        console.print(f"{name} record: {recorded['events']} dicom.dimse.c-store events for {sent_total} C-STOREs "
                      f"sent through it ({assocs} associations: {recorded['released']} released, "
                      f"{recorded['aborted']} aborted events); statuses {dict(statuses)}; SOP Instance UIDs match "
                      f"what was sent: {verdict(same)}; store holds {recorded['total']} events")
    if not complete:
        return 1
    return 1 if args.check and not (ok_tp and ok_lat and ok_sf) else 0


if __name__ == "__main__":
    sys.exit(main())
