"""ATNA ingest benchmark: several concurrent TLS senders (RFC 5425, octet counting) send the same
stream of PS3.15 A.5 audit messages to ``pacsguard atna listen --tls`` (SQLite store, every message
parsed, sealed and hashed) and, in the same run, to Debian's rsyslogd receiving over TLS (gtls) into
a plain file; messages/s for both and their ratio.

    .venv/bin/python bench/atna.py [--work DIR] [--senders 4] [--messages 20000] [--rate 0]
                                   [--no-rsyslog]

``--messages`` is per sender. ``--rate R`` paces the senders to R messages/s in total (0: as fast as
they can), for the zero-loss run of the issue (``--rate 10000 --messages 1500000 --senders 4``:
10 minutes); every run checks that each receiver got every message exactly once (pacsguard: the
store's size; rsyslog: the lines of its file).

Targets (issue 18): >= 20,000 messages/s into SQLite with hashing, >= 0.5x rsyslog's rate; zero
loss over 10 minutes at 10,000 messages/s. Figures measured on a shared machine are noisy: the
coordinator re-measures on a quiet one (docs/PERFORMANCE.md).

Method. The messages (one per patient, 110104 DICOM Instances Transferred with a study of 3 CT
instances, ~1.6 KB each with its RFC 5424 header) are framed once before the clock starts. Each
sender is a process with one TLS connection writing frames in chunks of 64 KiB. The rate is the
total divided by the time from the first byte sent to the moment the receiver has all of them
(pacsguard: the store's tree size, read every 0.1 s with sqlite3; rsyslog: the lines in its file).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from pacsguard.atna.message.build import to_xml
from pacsguard.atna.message.record import AuditRecord, Code, Participant, ParticipantObject, SopClass
from pacsguard.tls import make_ca, make_cert

RSYSLOGD = "/usr/sbin/rsyslogd"
CHUNK = 64 * 1024


def message(i: int) -> bytes:
    record = AuditRecord(
        "dicom", Code("110104", "DCM", "DICOM Instances Transferred"), "C", datetime.now(timezone.utc), "0",
        participants=(Participant(f"CT{i % 16:02d}@10.20.0.{i % 200}", alternative_user_id=f"AETITLES=CT{i % 16:02d}",
                                  requestor=True, access_point=f"10.20.0.{i % 200}", access_point_type="2",
                                  roles=(Code("110153", "DCM", "Source Role ID"),)),
                      Participant("PACS@10.20.0.2", alternative_user_id="AETITLES=PACS", access_point="10.20.0.2",
                                  access_point_type="2", roles=(Code("110152", "DCM", "Destination Role ID"),))),
        source_id="BENCH", objects=(
            ParticipantObject(f"PID{i:08d}^^^STMARY&1.2.840.99999.1&ISO", Code("2", "RFC-3881", "Patient Number"),
                              type_code="1", role="1"),
            ParticipantObject(f"1.2.826.0.1.3680043.9.7777.{i}", Code("110180", "DCM", "Study Instance UID"),
                              type_code="2", role="3", sop_classes=(SopClass("1.2.840.10008.5.1.4.1.1.2", 3),))))
    body = b"<85>1 2026-12-03T10:00:00Z bench audit - IHE+RFC-3881 - " + to_xml(record)
    return b"%d %s" % (len(body), body)


def sender(port: int, ca: str, frames: list[bytes], rate: float, start: float) -> None:
    context = ssl.create_default_context(cafile=ca)
    with socket.create_connection(("127.0.0.1", port)) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as conn:
        while time.time() < start:
            time.sleep(0.001)
        sent, chunk, began = 0, [], time.monotonic()
        for frame in frames:
            chunk.append(frame)
            sent += 1
            if sum(map(len, chunk)) >= CHUNK:
                conn.sendall(b"".join(chunk))
                chunk = []
                if rate:
                    ahead = sent / rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)
        if chunk:
            conn.sendall(b"".join(chunk))
        try:
            conn.unwrap()  # close_notify, and wait for the receiver's: it has read everything
        except (ssl.SSLError, OSError):
            pass  # rsyslog closes without answering close_notify; it has read what we sent


def run_senders(port: int, ca: Path, streams: list[list[bytes]], rate: float) -> float:
    start = time.time() + 0.5
    per = rate / len(streams) if rate else 0.0
    procs = [multiprocessing.Process(target=sender, args=(port, str(ca), frames, per, start)) for frames in streams]
    for p in procs:
        p.start()
    while time.time() < start:
        time.sleep(0.001)
    return time.monotonic()


def wait_count(count: Callable[[], int], total: int, began: float, timeout: float) -> float:
    while time.monotonic() - began < timeout:
        if count() >= total:
            return time.monotonic() - began
        time.sleep(0.1)
    raise SystemExit(f"only {count()} of {total} messages arrived within {timeout:.0f} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_pacsguard(work: Path, pki: dict[str, Path], streams: list[list[bytes]], rate: float, total: int) -> float:
    port = free_port()
    store = work / "pacsguard.db"
    proc = subprocess.Popen([sys.executable, "-m", "pacsguard.cli", "atna", "listen", "--tls", f"127.0.0.1:{port}",
                             "--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"]), "--store", str(store)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stored() -> int:
        try:
            with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1) as db:
                return int(db.execute("SELECT size FROM tree_state").fetchone()[0])
        except sqlite3.Error:
            return 0

    return measure("pacsguard", proc, port, pki, streams, rate, total, stored)


def bench_rsyslog(work: Path, pki: dict[str, Path], streams: list[list[bytes]], rate: float, total: int) -> float:
    port = free_port()
    base = work / "rsyslog"
    (base / "work").mkdir(parents=True, exist_ok=True)
    out = base / "messages.log"
    conf = base / "rsyslog.conf"
    conf.write_text(f'''
global(workDirectory="{base / "work"}" maxMessageSize="64k" DefaultNetstreamDriver="gtls"
       DefaultNetstreamDriverCAFile="{pki["ca"]}" DefaultNetstreamDriverCertFile="{pki["cert"]}"
       DefaultNetstreamDriverKeyFile="{pki["key"]}")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.Authmode="anon")
template(name="raw" type="string" string="%rawmsg%\\n")
ruleset(name="in") {{ action(type="omfile" file="{out}" template="raw" asyncWriting="on" ioBufferSize="256k") }}
input(type="imtcp" port="{port}" address="127.0.0.1" ruleset="in")
''')
    proc = subprocess.Popen([RSYSLOGD, "-n", "-f", str(conf), "-i", str(base / "pid")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def lines() -> int:
        try:
            with open(out, "rb") as f:
                return sum(chunk.count(b"<AuditMessage") for chunk in iter(lambda: f.read(1 << 20), b""))
        except FileNotFoundError:
            return 0

    return measure("rsyslog", proc, port, pki, streams, rate, total, lines)


def measure(name: str, proc: subprocess.Popen[bytes], port: int, pki: dict[str, Path], streams: list[list[bytes]],
            rate: float, total: int, count: Callable[[], int]) -> float:
    """Seconds until the receiver ``proc`` on ``port`` holds every message (``count``); it is stopped after."""
    _wait_port(port, proc)
    try:
        began = run_senders(port, pki["ca"], streams, rate)
        seconds = wait_count(count, total, began, 600 + (total / rate if rate else 0))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert count() == total, f"{name} received {count()} of {total}"
    return seconds


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    end = time.monotonic() + 60
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"receiver exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            time.sleep(0.3)
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("receiver did not listen")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path)
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--messages", type=int, default=20_000, help="per sender")
    ap.add_argument("--rate", type=float, default=0.0, help="total messages/s (0: unpaced)")
    ap.add_argument("--no-rsyslog", action="store_true")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="atna-bench-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ca, ca_key = make_ca(work / "pki", "bench CA", 2)
    cert, key = make_cert(work / "pki", "localhost", ca, ca_key, hosts=["localhost", "127.0.0.1"], server=True, days=1)
    pki = {"ca": ca, "cert": cert, "key": key}
    streams = [[message(s * args.messages + i) for i in range(args.messages)] for s in range(args.senders)]
    total = args.senders * args.messages
    size = sum(len(f) for f in streams[0]) / args.messages
    print(f"{args.senders} TLS senders x {args.messages} messages ({size:.0f} bytes each), "
          f"{'unpaced' if not args.rate else f'{args.rate:.0f}/s'}; {os.cpu_count()} CPUs")
    (work / "pacsguard").mkdir()
    pg = bench_pacsguard(work / "pacsguard", pki, streams, args.rate, total)
    print(f"pacsguard atna listen (SQLite, sealed): {total / pg:,.0f} messages/s ({pg:.2f} s, {total} stored)")
    if not args.no_rsyslog:
        rs = bench_rsyslog(work, pki, streams, args.rate, total)
        print(f"rsyslogd (gtls, to a file):             {total / rs:,.0f} messages/s ({rs:.2f} s, {total} written)")
        print(f"ratio pacsguard / rsyslog: {rs / pg:.2f}")


if __name__ == "__main__":
    main()
