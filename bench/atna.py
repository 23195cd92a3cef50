"""ATNA ingest benchmark: several concurrent TLS senders (RFC 5425, octet counting) send the same
stream of PS3.15 A.5 audit messages to ``pacsguard atna listen --tls`` (SQLite store, every message
parsed, sealed and hashed) and, in the same run, to Debian's rsyslogd receiving over TLS (gtls) into
a plain file; messages/s for both and their ratio.

    .venv/bin/python bench/atna.py [--work DIR] [--senders 4] [--messages 20000] [--rate 0]
                                   [--readers N] [--no-rsyslog]
    .venv/bin/python bench/atna.py --in-process 5000     # the per-message work alone, no TLS, no store

``--messages`` is per sender. ``--rate R`` paces the senders to R messages/s in total (0: as fast as
they can), for the zero-loss run of the issue (``--rate 10000 --messages 1500000 --senders 4``:
10 minutes). Every 10 s the run prints the rate stored in that interval and the backlog (messages
the senders have written and the receiver has not stored yet), so a stall shows; at the end the
rate, the largest backlog and the receiver's lag (from the last message sent to the last stored).
Every run checks that each receiver holds every message exactly once: as many messages as were
sent, one per patient (pacsguard: its events table; rsyslog: the lines of its file), and none more
a second after the last.

Targets (issue 18): >= 20,000 messages/s into SQLite with hashing, >= 0.5x rsyslog's rate; zero
loss over 10 minutes at 10,000 messages/s. Figures measured on a shared machine are noisy: the
coordinator re-measures on a quiet one (docs/PERFORMANCE.md).

Method. The messages (one per patient, 110104 DICOM Instances Transferred with a study of 3 CT
instances, ~1.6 KB each with its RFC 5424 header) come from one template written by pacsguard's
PS3.15 A.5 writer. Each sender is a process with one TLS connection writing frames in chunks of
64 KiB; it prepares its frames before the clock starts (up to 256 MiB, else it makes them while
sending). The rate is the total divided by the time from the first byte sent to the moment the
receiver has all of them (pacsguard: the store's tree size, read every 0.1 s with sqlite3;
rsyslog: the messages in its file, read on from where the last count stopped).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gateway import cpu_seconds  # bench/gateway.py: a process's CPU with its children's (the readers)
from pacsguard.atna.message.build import to_xml
from pacsguard.atna.message.record import AuditRecord, Code, Participant, ParticipantObject, SopClass
from pacsguard.tls import make_ca, make_cert
from workfolder import work_folder  # bench/workfolder.py

RSYSLOGD = "/usr/sbin/rsyslogd"
CHUNK = 64 * 1024
#: Bytes of frames a sender prepares before the clock starts; a longer stream is made while sending.
PREPARED = 256 * 1024 * 1024
#: Seconds between two progress lines, so a stall shows.
REPORT_EVERY = 10.0
_FIELDS = (b"@@AE@@", b"@@HOST@@", b"@@PID@@", b"@@STUDY@@")


class Template:
    """The bench's message, 110104 DICOM Instances Transferred, written once by pacsguard's own
    PS3.15 A.5 writer with markers where the sender's AE title and address, the patient and the
    study go; message ``i`` fills them in. A sender makes its frames as it sends them, so a
    10-minute run needs no gigabytes of prepared frames."""

    def __init__(self) -> None:
        ae, host, pid, study = (f.decode() for f in _FIELDS)
        record = AuditRecord(
            "dicom", Code("110104", "DCM", "DICOM Instances Transferred"), "C", datetime.now(timezone.utc), "0",
            participants=(Participant(f"{ae}@{host}", alternative_user_id=f"AETITLES={ae}", requestor=True,
                                      access_point=host, access_point_type="2",
                                      roles=(Code("110153", "DCM", "Source Role ID"),)),
                          Participant("PACS@10.20.0.2", alternative_user_id="AETITLES=PACS", access_point="10.20.0.2",
                                      access_point_type="2", roles=(Code("110152", "DCM", "Destination Role ID"),))),
            source_id="BENCH", objects=(
                ParticipantObject(f"{pid}^^^STMARY&1.2.840.99999.1&ISO", Code("2", "RFC-3881", "Patient Number"),
                                  type_code="1", role="1"),
                ParticipantObject(study, Code("110180", "DCM", "Study Instance UID"), type_code="2", role="3",
                                  sop_classes=(SopClass("1.2.840.10008.5.1.4.1.1.2", 3),))))
        body = b"<85>1 2026-12-03T10:00:00Z bench audit - IHE+RFC-3881 - " + to_xml(record)
        # Text and markers alternate: the text at even places, the field numbers at odd ones.
        self.parts: list[bytes | int] = [
            part if n % 2 == 0 else _FIELDS.index(part)
            for n, part in enumerate(re.split(b"(" + b"|".join(_FIELDS) + b")", body))]

    def frame(self, i: int) -> bytes:
        """Message ``i`` with its RFC 6587 octet count: patient PID<i>, study ...7777.<i>."""
        values = (b"CT%02d" % (i % 16), b"10.20.0.%d" % (i % 200), b"PID%08d" % i, b"1.2.826.0.1.3680043.9.7777.%d" % i)
        body = b"".join(values[p] if isinstance(p, int) else p for p in self.parts)
        return b"%d %s" % (len(body), body)


def message(i: int) -> bytes:
    """Message ``i`` of the stream, framed."""
    return Template().frame(i)


def sender(port: int, ca: str, first: int, count: int, rate: float, ready: Any, progress: Any) -> None:
    """One TLS connection sending messages ``first`` .. ``first + count - 1`` in 64 KiB writes, at
    ``rate`` messages/s (0: as fast as it can); ``progress.value`` counts the messages written. The
    frames are made before the clock starts (``ready``, a barrier) when they fit in PREPARED bytes,
    else while sending (the long paced runs, where the sender has time to spare)."""
    template = Template()
    numbers = range(first, first + count)
    frames: Iterable[bytes] = [template.frame(i) for i in numbers] if count * len(template.frame(first)) <= PREPARED \
        else map(template.frame, numbers)
    context = ssl.create_default_context(cafile=ca)
    with socket.create_connection(("127.0.0.1", port)) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as conn:
        ready.wait()
        sent, chunk, size, began = 0, [], 0, time.monotonic()
        for frame in frames:
            chunk.append(frame)
            size += len(frame)
            if size >= CHUNK or sent + len(chunk) == count:
                conn.sendall(b"".join(chunk))
                sent += len(chunk)
                progress.value = sent
                chunk, size = [], 0
                if rate:
                    ahead = sent / rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)
        try:
            conn.unwrap()  # close_notify, and wait for the receiver's: it has read everything
        except (ssl.SSLError, OSError):
            pass  # rsyslog closes without answering close_notify; it has read what we sent


@dataclass
class Run:
    """How one receiver did: seconds to the last message stored, the largest backlog seen (messages
    written by the senders and not yet stored), and the seconds from the senders' last write to the
    last message stored (the receiver's lag at the end)."""

    seconds: float
    max_backlog: int
    drain: float
    cpu: float = 0.0  # CPU seconds (user + system, all threads) the receiver spent on the run
    cpu_main: float = 0.0  # of which its main process (the rest: its reading processes)


def own_cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` alone so far (proc(5): utime and stime, fields 14
    and 15): with ``--readers``, the main process; `cpu_seconds` adds its reading processes."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_senders(port: int, ca: Path, senders: int, per_sender: int, rate: float) -> tuple[float, list[Any]]:
    """Start the senders; returns when all are connected and start writing, with their progress."""
    per = rate / senders if rate else 0.0
    ready = multiprocessing.Barrier(senders + 1)
    progress = [multiprocessing.Value("q", 0, lock=False) for _ in range(senders)]
    procs = [multiprocessing.Process(target=sender, args=(port, str(ca), s * per_sender, per_sender, per, ready,
                                                          progress[s]), daemon=True) for s in range(senders)]
    for p in procs:
        p.start()
    ready.wait(600)
    return time.monotonic(), progress


def follow(name: str, count: Callable[[], int], progress: list[Any], total: int, began: float,
           timeout: float) -> Run:
    """Wait until ``count()`` reaches ``total``, printing every REPORT_EVERY seconds the rate stored
    in that interval and the backlog, so a stall shows."""
    last_time, last_count, next_report = began, 0, began + REPORT_EVERY
    max_backlog, all_sent = 0, None
    while True:
        now, stored = time.monotonic(), count()
        sent = sum(p.value for p in progress)
        max_backlog = max(max_backlog, sent - stored)
        if all_sent is None and sent >= total:
            all_sent = now
        if stored >= total:
            return Run(now - began, max_backlog, now - (all_sent or now))
        if now >= next_report:
            rate = (stored - last_count) / (now - last_time)
            print(f"  {name} {now - began:6.0f} s: {rate:9,.0f} msg/s stored in the last {now - last_time:.0f} s; "
                  f"{sent:,} sent, {stored:,} stored, backlog {sent - stored:,}", flush=True)
            last_time, last_count, next_report = now, stored, now + REPORT_EVERY
        if now - began > timeout:
            raise SystemExit(f"{name}: only {stored} of {total} messages arrived within {timeout:.0f} s")
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_pacsguard(work: Path, pki: dict[str, Path], args: argparse.Namespace) -> Run:
    port = free_port()
    store = work / "pacsguard.db"
    proc = subprocess.Popen([sys.executable, "-m", "pacsguard.cli", "atna", "listen", "--tls", f"127.0.0.1:{port}",
                             "--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"]), "--store", str(store),
                             "--readers", str(args.readers)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stored() -> int:
        try:
            with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1) as db:
                return int(db.execute("SELECT size FROM tree_state").fetchone()[0])
        except sqlite3.Error:
            return 0

    def distinct() -> tuple[int, int]:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10) as db:
            row = db.execute("SELECT COUNT(*), COUNT(DISTINCT patient_id) FROM events "
                             "WHERE kind = 'atna.audit.instances-transferred'").fetchone()
        return int(row[0]), int(row[1])

    return measure("pacsguard", proc, port, pki, args, stored, distinct, probe_records=1)


class FileCount:
    """The audit messages in rsyslog's output file, read on from where the last call stopped; and
    how many distinct patients they name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.count = 0
        self.tail = b""

    def __call__(self) -> int:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = self.tail + f.read()
        except FileNotFoundError:
            return 0
        self.offset += len(data) - len(self.tail)
        cut = data.rfind(b"\n") + 1  # count whole lines only; the rest is still being written
        self.count += data.count(b"<AuditMessage", 0, cut)
        self.tail = data[cut:]
        return self.count

    def distinct(self, total: int) -> tuple[int, int]:
        seen = bytearray(total)
        lines = 0
        with open(self.path, "rb") as f:
            for line in f:
                start = line.find(b"PID")
                if start >= 0:
                    lines += 1
                    seen[int(line[start + 3:start + 11])] = 1
        return lines, sum(seen)


def bench_rsyslog(work: Path, pki: dict[str, Path], args: argparse.Namespace) -> Run:
    port = free_port()
    base = work / "rsyslog"
    (base / "work").mkdir(parents=True, exist_ok=True)
    out = base / "messages.log"
    conf = base / "rsyslog.conf"
    conf.write_text(f"""
global(workDirectory="{base / "work"}" maxMessageSize="64k" DefaultNetstreamDriver="gtls"
       DefaultNetstreamDriverCAFile="{pki["ca"]}" DefaultNetstreamDriverCertFile="{pki["cert"]}"
       DefaultNetstreamDriverKeyFile="{pki["key"]}")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.Authmode="anon")
template(name="raw" type="string" string="%rawmsg%\\n")
ruleset(name="in") {{ action(type="omfile" file="{out}" template="raw" asyncWriting="on" ioBufferSize="256k") }}
input(type="imtcp" port="{port}" address="127.0.0.1" ruleset="in")
""")
    proc = subprocess.Popen([RSYSLOGD, "-n", "-f", str(conf), "-i", str(base / "pid")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    lines = FileCount(out)
    return measure("rsyslog", proc, port, pki, args, lines, lambda: lines.distinct(args.senders * args.messages))


def measure(name: str, proc: subprocess.Popen[bytes], port: int, pki: dict[str, Path], args: argparse.Namespace,
            held_count: Callable[[], int], distinct: Callable[[], tuple[int, int]], probe_records: int = 0) -> Run:
    """The run of the receiver ``proc`` on ``port`` until it holds every message (``held_count``); it
    is stopped after. Every message must be there exactly once: ``distinct`` gives the messages held
    and the distinct patients among them, one per message. ``probe_records``: what the receiver
    records of the readiness probe (`_wait_port`), not counted."""
    total = args.senders * args.messages
    _wait_port(port, proc, pki["ca"])
    deadline = time.monotonic() + 10
    while held_count() < probe_records and time.monotonic() < deadline:
        time.sleep(0.05)
    base = held_count()

    def count() -> int:
        return held_count() - base

    try:
        idle, idle_main = cpu_seconds(proc.pid), own_cpu_seconds(proc.pid)
        began, progress = run_senders(port, pki["ca"], args.senders, args.messages, args.rate)
        run = follow(name, count, progress, total, began, 600 + (total / args.rate if args.rate else 0))
        run.cpu = cpu_seconds(proc.pid) - idle
        run.cpu_main = own_cpu_seconds(proc.pid) - idle_main
        time.sleep(1.0)  # a duplicate would arrive after the last one
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    held, patients = distinct()
    assert count() == held == patients == total, f"{name}: {held} of {total} held, {patients} distinct"
    return run


def _wait_port(port: int, proc: subprocess.Popen[bytes], ca: Path) -> None:
    """Until the receiver completes a TLS handshake. pacsguard records the probe, a connection that
    sends nothing, as a silent sender: one event, which `measure` does not count."""
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    end = time.monotonic() + 60
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"receiver exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as raw, context.wrap_socket(raw):
                pass
            time.sleep(0.3)
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("receiver did not listen")


def in_process(count: int, rounds: int = 10) -> None:
    """The receiver's own work on a message, alone: frame to Event (syslog header, the A.5 reader,
    the mapping), no TLS, no store; CPU time of the best of ``rounds`` passes over ``count`` messages."""
    from pacsguard.atna.ingest import Sender, frame_event

    template = Template()
    frames = [template.frame(i).split(b" ", 1)[1] for i in range(count)]  # without the octet count
    sender = Sender("127.0.0.1", 50000, "tls", "octet-counting")
    best = float("inf")
    for _ in range(rounds):
        began = time.process_time()
        for frame in frames:
            frame_event(sender, frame)
        best = min(best, time.process_time() - began)
    print(f"frame_event in process: {best / count * 1e6:.1f} us per message (CPU time, best of {rounds} x {count}); "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def report(name: str, run: Run, total: int) -> None:
    print(f"{name}: {total / run.seconds:,.0f} messages/s ({run.seconds:.2f} s, {total} stored exactly once); "
          f"largest backlog {run.max_backlog:,} messages, last stored {run.drain:.2f} s after the last sent; "
          f"receiver CPU {run.cpu / total * 1e6:,.0f} us per message"
          + (f" (main process {run.cpu_main / total * 1e6:,.0f})" if run.cpu_main < run.cpu * 0.99 else ""),
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path)
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--messages", type=int, default=20_000, help="per sender")
    ap.add_argument("--rate", type=float, default=0.0, help="total messages/s (0: unpaced)")
    ap.add_argument("--no-rsyslog", action="store_true")
    ap.add_argument("--readers", type=int, default=0, help="pacsguard's reading processes (atna listen --readers)")
    ap.add_argument("--in-process", type=int, metavar="N", help="only time frame_event over N messages, in process")
    args = ap.parse_args()
    if args.in_process:
        in_process(args.in_process)
        return
    if args.work is not None:
        shutil.rmtree(args.work, ignore_errors=True)  # a run starts from empty stores
    run(work_folder(args.work, "atna-bench-"), args)


def run(work: Path, args: argparse.Namespace) -> None:
    """Both receivers, one after the other, in ``work``."""
    ca, ca_key = make_ca(work / "pki", "bench CA", 2)
    cert, key = make_cert(work / "pki", "localhost", ca, ca_key, hosts=["localhost", "127.0.0.1"], server=True, days=1)
    pki = {"ca": ca, "cert": cert, "key": key}
    total = args.senders * args.messages
    print(f"{args.senders} TLS senders x {args.messages} messages ({len(message(0))} bytes each), "
          f"{'unpaced' if not args.rate else f'paced to {args.rate:,.0f}/s'}; {os.cpu_count()} CPUs, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    (work / "pacsguard").mkdir()
    pg = bench_pacsguard(work / "pacsguard", pki, args)
    report("pacsguard atna listen (SQLite, sealed)", pg, total)
    if not args.no_rsyslog:
        rs = bench_rsyslog(work, pki, args)
        report("rsyslogd (gtls, to a file)", rs, total)
        print(f"ratio pacsguard / rsyslog: {rs.seconds / pg.seconds:.2f}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
