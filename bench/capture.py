"""Benchmark the IDS capture layer against a bare dpkt loop and tshark's DICOM dissector.

Usage (as root, Debian's dcmtk, wireshark's dumpcap/tshark and ethtool installed):

    .venv/bin/python bench/capture.py --size-mb 200

It makes a LAN-like capture (see shared BENCHMARKING.md): a network namespace whose loopback has
MTU 1500 and TSO/GSO/GRO off, ``/usr/bin/storescp --ignore`` and ``/usr/bin/storescu`` with
``TCP_NODELAY=1`` sending objects built from pydicom's CT_small.dcm with fresh UIDs (a few 8 MiB
objects, a few hundred small ones), captured with ``dumpcap -i lo`` in the namespace.  Then, in
the same run, it times:

  (a) ``pacsguard.ids.capture.read_capture`` with a consumer that only counts bytes (pcapng as
      written by dumpcap, and the same capture converted to pcap by editcap);
  (b) a bare dpkt loop: pcapng reader + Ethernet/IP/TCP parse, nothing else;
  (c) ``tshark -r FILE -d tcp.port==P,dicom -Y dicom -T fields -e frame.number > /dev/null``.

MB/s and Gbit/s are capture-file bytes per second of wall time (one core, single process).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
LARGE_BYTES = 8 << 20


def sh(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=True, capture_output=True, text=True, **kw)  # type: ignore[call-overload]


def make_objects(out: Path, n_large: int, n_small: int) -> tuple[list[Path], list[Path]]:
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    base_path = get_testdata_file("CT_small.dcm")
    study = generate_uid()

    def fresh(ds: pydicom.Dataset, series: str) -> None:
        uid = generate_uid()
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series

    large, small = [], []
    series = generate_uid()
    pattern = os.urandom(1 << 16)
    big_pixels = pattern * (LARGE_BYTES // len(pattern))
    for i in range(n_large):
        ds = pydicom.dcmread(base_path)
        fresh(ds, series)
        ds.Rows = 2048
        ds.Columns = 2048
        ds.InstanceNumber = i + 1
        ds.PixelData = big_pixels
        p = out / f"large_{i:03d}.dcm"
        ds.save_as(p)
        large.append(p)
    series = generate_uid()
    for i in range(n_small):
        ds = pydicom.dcmread(base_path)
        fresh(ds, series)
        ds.InstanceNumber = i + 1
        p = out / f"small_{i:04d}.dcm"
        ds.save_as(p)
        small.append(p)
    return large, small


class Netns:
    """A throwaway network namespace with a LAN-like loopback: MTU 1500, no segmentation or
    receive offloads, and (``rate``) a token-bucket shaper so that traffic runs at a LAN's line
    rate and dumpcap, sharing two cores with both peers, does not drop packets."""

    def __init__(self, rate: str | None = "1gbit") -> None:
        self.name = f"pg-bench-{secrets.token_hex(4)}"
        self.rate = rate

    def __enter__(self) -> "Netns":
        sh("ip", "netns", "add", self.name)
        try:
            self.run("ip", "link", "set", "lo", "up", "mtu", "1500")
            self.run("ethtool", "-K", "lo", "tso", "off", "gso", "off", "gro", "off")
            if self.rate:
                self.run("tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", self.rate,
                         "burst", "256kb", "latency", "100ms")
        except BaseException:
            subprocess.run(["ip", "netns", "del", self.name], check=False)
            raise
        return self

    def cmd(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return sh(*self.cmd(*args), **kw)

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def wait_for_port(ns: Netns, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = subprocess.run(ns.cmd("ss", "-ltnH", f"sport = :{port}"), capture_output=True, text=True)
        if r.stdout.strip():
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


PROBE_PORT = 9  # UDP "discard": readiness probes, in the capture as a few non-TCP frames


class Dumpcap:
    """dumpcap on an interface of a namespace, started for real before :meth:`start` returns.

    dumpcap prints "Capturing on ..." well before the kernel hands it packets (~0.7 s here), so
    readiness is proven instead: UDP probes to port 9 are sent inside the namespace (the filter
    admits them) until dumpcap's progress line reports a captured packet.
    """

    def __init__(self, ns: Netns, iface: str, path: Path, bpf: str) -> None:
        self.ns, self.iface, self.path = ns, iface, path
        self.bpf = f"({bpf}) or udp port {PROBE_PORT}"
        self.err: list[str] = []
        self.proc: subprocess.Popen[str] | None = None

    def _reader(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line)

    def start(self, timeout: float = 20.0) -> None:
        import threading

        self.proc = subprocess.Popen(
            self.ns.cmd("dumpcap", "-i", self.iface, "-B", "256", "-f", self.bpf, "-w", str(self.path)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._reader, daemon=True).start()
        probe = subprocess.Popen(
            self.ns.cmd(
                sys.executable, "-c",
                "import socket,time\n"
                "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                f"for i in range(2000): s.sendto(b'pacsguard-probe',('127.0.0.1',{PROBE_PORT})); time.sleep(0.02)",
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if any(line.startswith("Packets:") for line in self.err):
                    return
                if self.proc.poll() is not None:
                    raise RuntimeError(f"dumpcap exited: {''.join(self.err)}")
                time.sleep(0.02)
            raise RuntimeError(f"dumpcap captured nothing in {timeout} s: {''.join(self.err)}")
        finally:
            probe.kill()
            probe.wait()

    def stop(self) -> str:
        """Let dumpcap drain its ring buffer, then SIGINT; returns its report."""
        assert self.proc is not None
        time.sleep(1.0)
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)
        time.sleep(0.1)
        return "".join(self.err)


def make_capture(
    workdir: Path, size_mb: int, n_small: int, large_per_assoc: int, small_per_assoc: int, rate: str | None
) -> tuple[Path, int, list[str]]:
    small_mb = n_small * 0.04
    n_large = max(1, round((size_mb / 1.06 - small_mb) / 8.0))
    objdir = workdir / "objects"
    objdir.mkdir()
    t0 = time.perf_counter()
    large, small = make_objects(objdir, n_large, n_small)
    print(f"built {len(large)} x 8 MiB + {len(small)} small objects in {time.perf_counter() - t0:.1f} s")
    port = 11112
    cap = workdir / "bench.pcapng"
    assocs = capture_storescu(cap, port, large, small, large_per_assoc, small_per_assoc, rate)
    return cap, port, assocs


def capture_storescu(cap: Path, port: int, large: list[Path], small: list[Path], large_per_assoc: int,
                     small_per_assoc: int, rate: str | None) -> list[str]:
    """Send the objects with dcmtk's storescu to storescp on *port* inside a fresh network namespace
    (loopback limited to *rate*), so many per association, while dumpcap writes *cap*. Returns a
    line per association."""
    assocs: list[str] = []
    env = dict(os.environ, TCP_NODELAY="1")
    with Netns(rate) as ns:
        scp = subprocess.Popen(ns.cmd(STORESCP, "--ignore", str(port)), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(ns, port)
            dc = Dumpcap(ns, "lo", cap, f"tcp port {port}")
            dc.start()
            t0 = time.perf_counter()
            try:
                groups = [("8 MiB", large[i:i + large_per_assoc]) for i in range(0, len(large), large_per_assoc)]
                groups += [("small", small[i:i + small_per_assoc]) for i in range(0, len(small), small_per_assoc)]
                for kind, files in groups:
                    subprocess.run(ns.cmd(STORESCU, "127.0.0.1", str(port), *map(str, files)), env=env, check=True,
                                   capture_output=True)
                    size = sum(f.stat().st_size for f in files)
                    assocs.append(f"{len(files)} x {kind} ({size / 1e6:.1f} MB)")
            finally:
                report = " ".join(dc.stop().split())
            print(f"sent in {time.perf_counter() - t0:.1f} s; dumpcap: {report[report.find('Packets captured'):]}",
                  flush=True)
        finally:
            scp.terminate()
            scp.wait(timeout=10)
    return assocs


class CountingConsumer:
    __slots__ = ("bytes", "conns", "gaps", "chunks")

    def __init__(self) -> None:
        self.bytes = 0
        self.conns = 0
        self.gaps = 0
        self.chunks = 0

    def on_open(self, conn: object) -> None:
        self.conns += 1

    def on_data(self, conn: object, from_client: bool, data: memoryview, ts: int) -> None:
        self.bytes += len(data)

    def on_gap(self, conn: object, from_client: bool, nbytes: int) -> None:
        self.gaps += 1

    def on_close(self, conn: object, reason: str) -> None:
        pass


def time_pacsguard(path: Path) -> tuple[float, CountingConsumer, object]:
    from pacsguard.ids.capture import read_capture

    c = CountingConsumer()
    t0 = time.perf_counter()
    st = read_capture(path, c)
    return time.perf_counter() - t0, c, st


def time_dpkt(path: Path) -> tuple[float, int]:
    import dpkt

    t0 = time.perf_counter()
    n = 0
    with open(path, "rb") as f:
        reader = dpkt.pcapng.Reader(f) if path.suffix == ".pcapng" else dpkt.pcap.Reader(f)
        for _ts, buf in reader:
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.tcp.TCP):
                n += len(ip.data.data)
    return time.perf_counter() - t0, n


def time_tshark(path: Path, port: int) -> float:
    t0 = time.perf_counter()
    with open(os.devnull, "w") as devnull:
        r = subprocess.run(
            ["tshark", "-r", str(path), "-d", f"tcp.port=={port},dicom", "-Y", "dicom", "-T", "fields",
             "-e", "frame.number"],
            stdout=devnull,
            stderr=subprocess.PIPE,
            text=True,
        )
    t = time.perf_counter() - t0
    if r.returncode != 0:
        print(f"tshark exit {r.returncode}: {r.stderr.strip()[-300:]}")
    return t


def frame_stats(path: Path) -> tuple[int, int]:
    from pacsguard.ids.capture import iter_frames

    n = total = 0
    for _ts, _lt, frame in iter_frames(path):
        n += 1
        total += len(frame)
    return n, total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=200, help="approximate capture size (default 200)")
    ap.add_argument("--small", type=int, default=300, help="number of small (CT_small, 39 kB) objects")
    ap.add_argument("--large-per-assoc", type=int, default=4, help="8 MiB objects per association")
    ap.add_argument("--small-per-assoc", type=int, default=100, help="small objects per association")
    ap.add_argument("--capture", type=Path, help="use this existing capture instead of making one")
    ap.add_argument("--port", type=int, default=11112, help="DICOM port of --capture")
    ap.add_argument("--keep", type=Path, help="copy the capture here")
    ap.add_argument("--no-tshark", action="store_true")
    ap.add_argument("--rate", default="1gbit", help="tc tbf rate on the namespace's lo ('none': unshaped)")
    ap.add_argument("--repeat", type=int, default=3, help="best of N for the Python readers")
    args = ap.parse_args()
    if args.capture is None:
        for tool in (STORESCU, STORESCP, "/usr/bin/dumpcap", "/usr/sbin/ethtool"):
            if not os.path.exists(tool):
                print(f"missing {tool}", file=sys.stderr)
                return 2
        if os.geteuid() != 0:
            print("needs root (network namespace)", file=sys.stderr)
            return 2

    with tempfile.TemporaryDirectory(prefix="pg-bench-") as tmp:
        work = Path(tmp)
        assocs: list[str] = []
        if args.capture is None:
            cap, port, assocs = make_capture(
                work, args.size_mb, args.small, args.large_per_assoc, args.small_per_assoc,
                None if args.rate == "none" else args.rate,
            )
        else:
            cap, port = args.capture, args.port
        if args.keep:
            shutil.copy(cap, args.keep)
        pcap = work / "bench.pcap"
        sh("editcap", "-F", "pcap", str(cap), str(pcap))
        size = cap.stat().st_size
        frames, frame_bytes = frame_stats(cap)
        print(f"\ncapture: {cap.name} {size / 1e6:.1f} MB, {frames} frames, avg frame {frame_bytes / frames:.0f} bytes")
        if assocs:
            print(f"associations ({len(assocs)}): " + "; ".join(assocs))

        def best(fn, *a):  # type: ignore[no-untyped-def]
            runs = [fn(*a) for _ in range(args.repeat)]
            return min(runs, key=lambda r: r[0])

        t_pg, c, st = best(time_pacsguard, cap)
        print(f"(a) {t_pg:.2f} s", flush=True)
        t_pg_pcap, c2, _ = best(time_pacsguard, pcap)
        print(f"(a, pcap) {t_pg_pcap:.2f} s", flush=True)
        t_dpkt, dpkt_bytes = best(time_dpkt, cap)
        print(f"(b) {t_dpkt:.2f} s", flush=True)
        t_ts = None if args.no_tshark else time_tshark(cap, port)

        print(f"pacsguard: {c.conns} connections, {c.bytes} payload bytes, {c.gaps} gaps; "
              f"stats: retrans={st.retransmissions} ooo={st.out_of_order} gaps={st.gaps} problems={st.problem_count}")
        print(f"dpkt saw {dpkt_bytes} payload bytes")

        def row(name: str, t: float, nbytes: int) -> None:
            mbs = nbytes / t / 1e6
            print(f"  {name:<38} {t:8.2f} s  {mbs:8.1f} MB/s  {mbs * 8 / 1000:6.3f} Gbit/s  "
                  f"{frames / t / 1000:7.1f} kframes/s")

        print("\nresults (capture bytes / wall time, one core):")
        row("(a) pacsguard read_capture, pcapng", t_pg, size)
        row("(a) pacsguard read_capture, pcap", t_pg_pcap, pcap.stat().st_size)
        row("(b) bare dpkt loop (eth/ip/tcp), pcapng", t_dpkt, size)
        if t_ts is not None:
            row("(c) tshark -d dicom -Y dicom", t_ts, size)
        tshark = f", pacsguard/tshark {t_ts / t_pg:.1f}x, dpkt/tshark {t_ts / t_dpkt:.1f}x" if t_ts else ""
        print(f"\nratios: pacsguard/dpkt {t_dpkt / t_pg:.1f}x" + tshark)
    return 0


if __name__ == "__main__":
    sys.exit(main())
