"""Forwarding benchmark: what a store-and-forward route's forwarder (pacsguard.gateway.store_forward.
forwarder, whose Storage SCU, sender.py, sends each spooled file's data set as stored, PS3.4
B.2.1) costs in CPU per GB, alone in its process, sending large objects to dcmtk's
``storescp --ignore``.

    .venv/bin/python bench/forward.py [--work DIR] [--count 16] [--mb 8] [--repeat 3]
                                      [--sink-pdu 16384 ...] [--log-handlers] [--what-if FILE]

Corpus: ``--count`` CT objects with ``--mb`` MiB of 16-bit pixel data (made as bench/gateway.py makes
its large ones: fresh UIDs, uncompressed, Explicit VR Little Endian), reused from ``--work``.

Each run: a fresh spool holding every object (hard links to the corpus, committed as the SCP
commits, untimed), one Forwarder for one destination (``storescp --ignore`` with ``TCP_NODELAY=1``
and ``--max-pdu`` the ``--sink-pdu`` value: the destination's maximum PDU length is what bounds
every P-DATA-TF the forwarder sends, PS3.8 D.1), started and timed until the spool is empty.
CPU is the bench process's (every thread: the forwarder's; the main
thread only polls the spool every 20 ms) and storescp's, from /proc. CPU-s/GB = CPU seconds /
(file bytes / 10^9). Medians of ``--repeat`` runs per ``--sink-pdu`` value, after one untimed run.

pynetdicom's standard log handlers are unbound, as the route unbinds them at start
(``_config.LOG_HANDLER_LEVEL = "none"``); ``--log-handlers`` keeps them, to show what they cost.
``--what-if FILE`` runs a Python file in the bench process before the runs (to patch something and
see what it changes; never used for the reference figures).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway import HOST, build_corpus, cpu_seconds, dcmtk_env, free_port, wait_port  # bench/gateway.py
from workfolder import work_folder  # bench/workfolder.py

STORESCP = "/usr/bin/storescp"
SINK_AE, ROUTE_AE = "SINK", "GW"


def route_config(port: int):  # type: ignore[no-untyped-def]
    from pacsguard.config.loader import parse_config

    text = f"""
gateway:
  routes:
  - name: bench
    mode: store-and-forward
    listen: {{port: 11999, ae_title: {ROUTE_AE}}}
    destinations: [{{name: sink, host: {HOST}, port: {port}, ae_title: {SINK_AE}}}]
"""
    return parse_config(text).gateway.routes[0]


def spool_corpus(folder: Path, files: list[Path]):  # type: ignore[no-untyped-def]
    """A spool holding every file, as the route's SCP leaves it (committed, metadata synced)."""
    from pydicom import dcmread

    from pacsguard.gateway.objects import ReceivedObject
    from pacsguard.gateway.store_forward.spool import Spool, SpooledMeta

    spool = Spool(folder)
    spool.open()
    metas = []
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        object_id = spool.new_id()
        received = spool.tmp / f"{object_id}.dcm"
        os.link(path, received)
        obj = ReceivedObject(path=spool.object_path(object_id), sop_class_uid=str(ds.SOPClassUID),
                             sop_instance_uid=str(ds.SOPInstanceUID),
                             transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), calling_ae="BENCH",
                             called_ae=ROUTE_AE, peer_host=HOST, route="bench")
        meta = SpooledMeta(id=object_id, object=obj, received=time.time(), bytes=path.stat().st_size,
                           destinations=["sink"], study_uid=str(ds.StudyInstanceUID))
        spool.commit(received, meta)
        metas.append(meta)
    return spool, metas


def one_run(work: Path, files: list[Path], sink_pdu: int) -> tuple[float, float, float]:
    """Forward every file once; (wall s, bench process CPU s, storescp CPU s)."""
    from pacsguard.gateway.store_forward.forwarder import Forwarder

    port = free_port()
    sink = subprocess.Popen([STORESCP, "--ignore", "-aet", SINK_AE, "--max-pdu", str(sink_pdu), str(port)],
                            env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, sink, "storescp")
        spool, metas = spool_corpus(Path(tempfile.mkdtemp(prefix="spool-", dir=work)), files)
        events: list[object] = []
        route = route_config(port)
        forwarder = Forwarder(route, route.destinations[0], spool, events.append)
        for meta in metas:
            forwarder.add(meta)
        sink_before, cpu_before, t0 = cpu_seconds(sink.pid), time.process_time(), time.perf_counter()
        forwarder.start()
        while any(spool.objects.glob("*.json")):
            time.sleep(0.02)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu_before
        forwarder.stop()
        spool.close()
        time.sleep(0.2)  # storescp finishes the association
        sink_cpu = cpu_seconds(sink.pid) - sink_before
        forwarded = [e for e in events if getattr(e, "kind", "") == "gateway.object.forwarded"]
        if len(forwarded) != len(files):
            raise SystemExit(f"{len(forwarded)} of {len(files)} objects forwarded: {events[-3:]}")
        return wall, cpu, sink_cpu
    finally:
        sink.terminate()
        sink.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, help="work dir (corpus reused); default: a temporary one")
    ap.add_argument("--count", type=int, default=16)
    ap.add_argument("--mb", type=float, default=8.0, help="pixel data of each object, MiB")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sink-pdu", type=int, nargs="+", default=[16384],
                    help="storescp's maximum PDU length(s) to measure with (4096..131072)")
    ap.add_argument("--log-handlers", action="store_true", help="keep pynetdicom's standard log handlers")
    ap.add_argument("--what-if", type=Path, help="a Python file run first (experiments only)")
    args = ap.parse_args()
    if args.what_if:
        exec(compile(args.what_if.read_text(), str(args.what_if), "exec"), {"__name__": "what_if"})  # noqa: S102
    from pynetdicom import _config

    _config.LOG_HANDLER_LEVEL = "standard" if args.log_handlers else "none"
    work = work_folder(args.work, "pacsguard-forward-")
    corpus = build_corpus(work / "corpus", "large", args.count, args.mb)
    files = sorted(corpus.directory.glob("*.dcm"))
    gb = corpus.file_bytes / 1e9
    print(f"{len(files)} objects, {corpus.shape}, {corpus.file_bytes / 1e6:.1f} MB; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; log handlers "
          f"{'standard' if args.log_handlers else 'none'}{f'; what-if {args.what_if}' if args.what_if else ''}")
    for pdu in args.sink_pdu:
        one_run(work, files, pdu)  # warm-up: page cache, imports, first association
        runs = [one_run(work, files, pdu) for _ in range(args.repeat)]
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        sink = statistics.median(r[2] for r in runs)
        print(f"sink max PDU {pdu:>6}: {gb / wall * 1e3:7.1f} MB/s, forwarder {cpu / gb:5.2f} CPU-s/GB "
              f"(runs {', '.join(f'{r[1] / gb:.2f}' for r in runs)}), {cpu / len(files) * 1e3:.2f} ms CPU per object; "
              f"storescp {sink / gb:5.2f} CPU-s/GB")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
