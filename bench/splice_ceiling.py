"""What moving P-DATA-TF bodies with os.splice (Linux) would buy a relay that must see every PDU
header (PS3.8 9.3.5), against copying through user space, per PDU size. No DICOM peers, no event
loop: one blocking relay thread on loopback, the floor each technique sets.

    python bench/splice_ceiling.py [--repeat 3] [--gib 1] [--sizes 16384 65536 131072 1048576]

A sender writes P-DATA-TF PDUs of one size (one data PDV each) to the relay, which forwards them to
a sink that discards them. The default sizes are those bench/gateway.py measures with real peers
(16, 64 and 128 KiB: dcmtk's range) and 1 MiB, which only other senders use (pynetdicom sends
PDUs of whatever Maximum Length the receiver advertises). Relays:
  copy        recv_into a 256 KiB buffer, sendall: a byte relay with no parsing (socat's technique)
  splice      per PDU: read its 12-byte header, check it, send it, splice the body socket -> pipe ->
              socket (the issue's design: the next header is read before more bytes move)
  peeksplice  peek what the socket holds (up to 256 KiB), check every whole header in it, then
              splice all those PDUs at once (the last one to its announced end)
  socat       socat -b 262144 with nodelay on both legs (when installed)
Prints MB/s (10^6 bytes) and the relay's CPU seconds per GB, medians of --repeat runs.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import resource
import shutil
import socket
import struct
import subprocess
import threading
import time
from typing import Callable

F_SETPIPE_SZ = 1031  # fcntl.h; Python 3.10+ also names it fcntl.F_SETPIPE_SZ
CHUNK = 1 << 20
PEEK = 256 * 1024
_HEADER = struct.Struct(">BBIIBB")  # PDU type, reserved, PDU-length, PDV length, context ID, MCH


def _listener() -> tuple[socket.socket, int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s, s.getsockname()[1]


def _nodelay(*socks: socket.socket) -> None:
    for s in socks:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _pdu(size: int) -> bytes:
    length = size - 6
    return _HEADER.pack(4, 0, length, length - 4, 1, 0) + b"\xAB" * (length - 6)


def _recv_exact(s: socket.socket, view: memoryview) -> bool:
    got = 0
    while got < len(view):
        k = s.recv_into(view[got:])
        if not k:
            return False
        got += k
    return True


def _pipe() -> tuple[int, int]:
    r, w = os.pipe()
    fcntl.fcntl(w, F_SETPIPE_SZ, CHUNK)
    return r, w


def _splice(src: int, dst: int, pipe: tuple[int, int], n: int) -> bool:
    """Move exactly *n* bytes from socket *src* to socket *dst* through *pipe*."""
    r, w = pipe
    while n:
        k = os.splice(src, w, min(n, CHUNK))
        if not k:
            return False
        n -= k
        while k:
            k -= os.splice(r, dst, k)
    return True


def relay_copy(c: socket.socket, u: socket.socket) -> None:
    buf = bytearray(PEEK)
    view = memoryview(buf)
    while k := c.recv_into(buf):
        u.sendall(view[:k])


def relay_splice(c: socket.socket, u: socket.socket) -> None:
    pipe = _pipe()
    header = bytearray(12)
    while _recv_exact(c, memoryview(header)):
        pdu_type, _, length, pdv_length, _, _ = _HEADER.unpack(header)
        if pdu_type != 4 or pdv_length + 4 != length:
            raise ValueError("not a one-PDV P-DATA-TF")
        u.sendall(header)
        if not _splice(c.fileno(), u.fileno(), pipe, length - 6):
            return


def relay_peeksplice(c: socket.socket, u: socket.socket) -> None:
    pipe = _pipe()
    buf = bytearray(PEEK)
    while k := c.recv_into(buf, 0, socket.MSG_PEEK):
        if k < 6:
            k = c.recv_into(buf, 6, socket.MSG_PEEK | socket.MSG_WAITALL)
        pos = 0
        while k - pos >= 6:
            pdu_type, _, length = struct.unpack_from(">BBI", buf, pos)
            if pdu_type != 4:
                raise ValueError("not a P-DATA-TF")
            pos += 6 + length
        if not _splice(c.fileno(), u.fileno(), pipe, pos):
            return


RELAYS: dict[str, Callable[[socket.socket, socket.socket], None]] = {
    "copy": relay_copy, "splice": relay_splice, "peeksplice": relay_peeksplice}


def _proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(mode: str, size: int, total: int) -> tuple[float, float]:
    """One transfer of *total* bytes in PDUs of *size*: (MB/s, relay CPU s per GB)."""
    sink_listener, sink_port = _listener()
    received: list[int] = []

    def sink() -> None:
        conn, _ = sink_listener.accept()
        buf = bytearray(CHUNK)
        n = 0
        while k := conn.recv_into(buf):
            n += k
        received.append(n)
        conn.close()

    cpu: list[float] = []
    threads = [threading.Thread(target=sink)]
    socat: subprocess.Popen[bytes] | None = None
    relay_listener, port = _listener()
    if mode == "socat":
        relay_listener.close()
        socat = subprocess.Popen([str(shutil.which("socat")), "-b", "262144",
                                  f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,nodelay",
                                  f"TCP:127.0.0.1:{sink_port},nodelay"])
        time.sleep(0.3)
    else:
        def relay() -> None:
            c, _ = relay_listener.accept()
            u = socket.create_connection(("127.0.0.1", sink_port))
            _nodelay(c, u)
            before = resource.getrusage(resource.RUSAGE_THREAD)
            RELAYS[mode](c, u)
            after = resource.getrusage(resource.RUSAGE_THREAD)
            cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
            u.close()
            c.close()

        threads.append(threading.Thread(target=relay))
    for t in threads:
        t.start()
    sender = socket.create_connection(("127.0.0.1", port))
    _nodelay(sender)
    block = _pdu(size) * max(1, (4 << 20) // size)
    start = time.perf_counter()
    sent = 0
    while sent < total:
        sender.sendall(block)
        sent += len(block)
    sender.shutdown(socket.SHUT_WR)
    threads[0].join()
    elapsed = time.perf_counter() - start
    if socat is not None:
        cpu.append(_proc_cpu(socat.pid))
        socat.wait(10)
    for t in threads[1:]:
        t.join()
    sender.close()
    sink_listener.close()
    relay_listener.close()
    if received != [sent]:
        raise AssertionError(f"the sink got {received} bytes of {sent}")
    return sent / elapsed / 1e6, cpu[0] / (sent / 1e9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--gib", type=float, default=1.0, help="bytes per transfer, GiB")
    ap.add_argument("--sizes", type=int, nargs="+", default=[16384, 65536, 131072, 1 << 20],
                    help="PDU sizes")
    args = ap.parse_args()
    modes = [*RELAYS, *(["socat"] if shutil.which("socat") else [])]
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; medians of {args.repeat} runs")
    for size in args.sizes:
        for mode in modes:
            runs = [run(mode, size, int(args.gib * (1 << 30))) for _ in range(args.repeat)]
            mbs = sorted(r[0] for r in runs)[len(runs) // 2]
            cpu = sorted(r[1] for r in runs)[len(runs) // 2]
            print(f"PDU {size:>8}  {mode:<10}  {mbs:6.0f} MB/s  relay CPU {cpu:5.2f} s/GB", flush=True)


if __name__ == "__main__":
    main()
