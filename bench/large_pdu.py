"""Large objects in PDUs larger than dcmtk sends (1 MiB by default): directly, through
``pacsguard gateway run`` and through socat, with a sender and a receiver that use the Maximum
Length the receiver advertises (PS3.8 D.1).

    .venv/bin/python bench/large_pdu.py [--pdu 1048576] [--large 8] [--large-mb 8] [--repeat 9]
                                        [--work DIR]

dcmtk's storescu sends at most 131072-byte PDUs whatever the receiver advertises (bench/gateway.py
covers 16 to 128 KiB with dcmtk); pynetdicom sends P-DATA-TF PDUs of the receiver's Maximum
Length. So here both peers are pynetdicom, each in its own process: the sink is an SCP
advertising ``--pdu`` that answers every C-STORE with Success without decoding it, the sender
reads its files first and then sends them all in one association. The gateway's own limit is
raised to ``--pdu`` when that is above its default (4 MiB), so it passes the advertised length on
unchanged; the sender prints the Maximum Length it was told, which is the PDU size that flowed.

Both peers are Python and busy themselves, so the ratios to direct say less about the relay than
bench/gateway.py's do with dcmtk; the relay's CPU seconds per GB (from /proc around each run) are
the comparable figure. Medians of ``--repeat`` runs per path, the order rotated each time, after
one untimed warm-up; every C-STORE through the gateway must be in its store as one event with
status 0x0000 and the UIDs sent.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway import HOST, build_corpus, check_store, cpu_seconds, free_port, med, settle, stop_all, wait_port  # noqa: E402

SINK_AE, GW_AE, CLIENT_AE = "SINK", "GW", "BENCH"
DEFAULT_GATEWAY_MAX = 4 * 1024 * 1024  # the gateway's own default limit (limits.max_pdu_length)


def sink(port: int, pdu: int) -> None:
    """A pynetdicom storage SCP advertising *pdu* as its Maximum Length; answers Success unread."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    ae = AE(ae_title=SINK_AE)
    ae.maximum_pdu_size = pdu
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    ae.start_server((HOST, port), evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)], block=True)


def send(port: int, called: str, folder: Path) -> None:
    """Send every file of *folder* in one association; print timings and the Maximum Length told."""
    from pydicom import dcmread
    from pynetdicom import AE

    datasets = [dcmread(f) for f in sorted(folder.glob("*.dcm"))]
    ae = AE(ae_title=CLIENT_AE)
    ae.maximum_pdu_size = 0  # the responses are small: no limit of ours in the way
    for ds in datasets[:1]:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate(HOST, port, ae_title=called)
    if not assoc.is_established:
        raise SystemExit(f"no association with {called} on {port}")
    start = time.perf_counter()
    ok = sum(assoc.send_c_store(ds).get("Status") == 0 for ds in datasets)
    elapsed = time.perf_counter() - start
    told = assoc.acceptor.maximum_length
    assoc.release()
    print(json.dumps({"elapsed": elapsed, "ok": ok, "max_pdu": told}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pdu", type=int, default=1 << 20, help="the sink's advertised Maximum Length, bytes")
    ap.add_argument("--large", type=int, default=8, help="objects per association")
    ap.add_argument("--large-mb", type=float, default=8.0, help="pixel data per object, MiB")
    ap.add_argument("--repeat", type=int, default=9, help="timed runs per path")
    ap.add_argument("--work", type=Path, default=None, help="corpus cache and gateway store (default: a temp dir)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="pacsguard-bench-pdu-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        return bench(args, work, procs)
    finally:
        stop_all(procs)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def bench(args: argparse.Namespace, work: Path, procs: list[subprocess.Popen[bytes]]) -> int:
    corpus = build_corpus(work / "corpus", "large", args.large, args.large_mb)
    me = [sys.executable, str(Path(__file__).resolve())]
    sink_port = free_port()
    procs.append(subprocess.Popen([*me, "sink", str(sink_port), str(args.pdu)], stderr=subprocess.DEVNULL))
    wait_port(sink_port, procs[-1], "the pynetdicom sink")
    store = work / "large-pdu.db"
    for stale in (store, Path(f"{store}.key"), Path(f"{store}-wal"), Path(f"{store}-shm")):
        stale.unlink(missing_ok=True)
    gw_port = free_port()
    limit = ["--max-pdu", str(args.pdu)] if args.pdu > DEFAULT_GATEWAY_MAX else []
    gw = subprocess.Popen([sys.executable, "-m", "pacsguard.cli", "gateway", "run", "--listen", f"{HOST}:{gw_port}",
                           "--aet", GW_AE, "--upstream", f"{SINK_AE}@{HOST}:{sink_port}", "--allow-calling",
                           CLIENT_AE, "--store", str(store), *limit], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    procs.append(gw)
    wait_port(gw_port, gw, "pacsguard gateway")
    paths: list[tuple[str, int, str, int | None]] = [("direct", sink_port, SINK_AE, None),
                                                     ("gateway", gw_port, GW_AE, gw.pid)]
    socat_exe = shutil.which("socat")
    if socat_exe:
        socat_port = free_port()
        procs.append(subprocess.Popen([socat_exe, "-b", "262144",
                                       f"TCP-LISTEN:{socat_port},bind={HOST},reuseaddr,fork,nodelay",
                                       f"TCP:{HOST}:{sink_port},nodelay"]))
        wait_port(socat_port, procs[-1], "socat")
        paths.append(("socat", socat_port, SINK_AE, procs[-1].pid))

    sent: Counter[str] = Counter()
    results: dict[str, list[tuple[float, float | None, int]]] = {}
    for rep in range(args.repeat + 1):
        order = paths[rep % len(paths):] + paths[:rep % len(paths)]
        for name, port, called, pid in order:
            before = cpu_seconds(pid) if pid else None
            out = subprocess.run([*me, "send", str(port), called, str(corpus.directory)], capture_output=True,
                                 text=True, check=True)
            settle(pid)
            cpu = cpu_seconds(pid) - before if pid and before is not None else None
            run = json.loads(out.stdout)
            if run["ok"] != corpus.count:
                raise SystemExit(f"{name}: {run['ok']} of {corpus.count} C-STOREs succeeded")
            if name == "gateway":
                sent.update(corpus.uids)
            if rep:  # the first round is the warm-up
                results.setdefault(name, []).append((run["elapsed"], cpu, run["max_pdu"]))
    gw.send_signal(signal.SIGTERM)
    gw.wait(60)
    recorded = check_store(store)

    gb = corpus.file_bytes / 1e9
    direct = med([corpus.file_bytes / r[0] for r in results["direct"]])
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {corpus.count} x "
          f"{corpus.file_bytes / corpus.count / 1e6:.2f} MB per association; sink advertises {args.pdu}; "
          f"medians of {args.repeat} runs")
    for name, runs in results.items():
        rate = med([corpus.file_bytes / r[0] for r in runs])
        cpus = [r[1] for r in runs if r[1] is not None]
        relay = f"{med(cpus) / gb:.2f} CPU-s/GB" if cpus else "-"
        print(f"{name:<8} {rate / 1e6:6.0f} MB/s  {rate / direct:.3f} x direct  relay {relay}  "
              f"PDU size told to the sender {sorted({r[2] for r in runs})}")
    same = recorded["uids"] == sent and recorded["events"] == sum(sent.values())
    print(f"gateway record: {recorded['events']} c-store events for {sum(sent.values())} sent, statuses "
          f"{dict(recorded['statuses'])}, UIDs match: {same}")  # type: ignore[call-overload]
    return 0 if same else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "sink":
        sink(int(sys.argv[2]), int(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "send":
        send(int(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
    else:
        sys.exit(main())
