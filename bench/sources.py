"""Memory per distinct source address (issue #16, section 3): ~100,000 distinct source addresses each
open one association, and the gateway's RSS and per-source tables are printed as they come.

    .venv/bin/python bench/sources.py [--sources 100000] [--sample 10000] [--accepted-every 2]
                                      [--serve [--work DIR]]

In memory (default): the route's real checks and the built-in IDS rules inline, the relay on the
playbook harness's in-memory transports (tests/gateway/playbook.py), no sockets; printed: this
process's VmRSS and the size of every per-source table (the rate check's windows, the IDS engine's
flows and its largest per-key rule state, the inline check's live flows, the quarantine list).

With --serve: a real `pacsguard serve` over loopback, dcmtk's storescp (/usr/bin/storescp) as its
upstream. Sources are loopback addresses 127.1.0.0 upwards (Linux routes all of 127.0.0.0/8 to lo,
so a client socket can bind any of them). Printed: the gateway's VmRSS (/proc/PID/status) and the
store's size.

In both modes every --accepted-every-th source calls as an allowed AE title and sends a C-ECHO (the
rate check's per-host window, the IDS rules' per-host state); the others call with an AE title the
route refuses (A-ASSOCIATE-RJ: the IDS's per-host brute-force counters). Per-source state that is
bounded shows as a plateau, not a line.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import yaml

from pacsguard.dicom import dimse
from pacsguard.dicom import pdu as P
from workfolder import work_folder  # bench/workfolder.py

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def read_pdu(sock: socket.socket) -> bytes:
    head = b""
    while len(head) < 6:
        chunk = sock.recv(6 - len(head))
        if not chunk:
            return head
        head += chunk
    body = b""
    need = struct.unpack(">I", head[2:])[0]
    while len(body) < need:
        chunk = sock.recv(need - len(body))
        if not chunk:
            break
        body += chunk
    return head + body


def one_source(port: int, address: str, calling: str, echo: bool) -> None:
    rq = P.encode_associate_rq(P.AssociateRQ("PACSGUARD", calling, [P.PresentationContextRQ(1, VERIFICATION,
                               [IMPLICIT_LE])], P.UserInformation.build(max_length=16384,
                                                                        implementation_class_uid="1.2.3.4")))
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.settimeout(10)
        sock.bind((address, 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(rq)
        answer = read_pdu(sock)
        if echo and answer[:1] == bytes([P.PDU_ASSOCIATE_AC]):
            command = dimse.encode_command_set(dimse.CommandSet(dimse.C_ECHO_RQ, message_id=1,
                                                                affected_sop_class_uid=VERIFICATION))
            sock.sendall(b"".join(P.encode_dimse_message(1, command)))
            read_pdu(sock)
            sock.sendall(P.encode_release_rq())
            read_pdu(sock)


def address(i: int) -> str:
    n = (1 << 16) + i  # 127.1.0.0 upwards
    return f"127.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def in_memory(sources: int, sample: int, accepted_every: int) -> int:
    """The route's checks, the IDS rules and the relay in this process; RSS and table sizes."""
    import asyncio
    import logging

    sys.path[:0] = [str(Path(__file__).resolve().parent.parent / "tests" / "gateway")]
    from playbook import Playbook, associate_ac, associate_rq, echo_rq, response, route_config

    from pacsguard.gateway.checks import Shared, build_chain
    from pacsguard.gateway.checks.ids import IdsCheck
    from pacsguard.gateway.checks.rate import RateCheck
    from pacsguard.ids import DicomAdapter, Engine, IdsSettings, load_rules

    logging.getLogger("pacsguard").setLevel(logging.ERROR)
    route = route_config(policy={"calling_ae_titles": ["CT1"]}, limits={"requests_per_minute": 1000})
    engine = Engine(load_rules([]), IdsSettings())
    pb = Playbook(route)
    pb.checks = build_chain(route, Shared(pb.quarantined, DicomAdapter(engine)))
    rate = next(c for c in pb.checks.checks if isinstance(c, RateCheck))
    ids = next(c for c in pb.checks.checks if isinstance(c, IdsCheck))
    echo = echo_rq(1)

    async def flood() -> None:
        print(f"{'sources':>9} {'RSS MiB':>8} {'rate':>7} {'flows':>7} {'rule keys':>9} {'live':>5} "
              f"{'quarantine':>10} {'s':>5}")
        started = time.monotonic()
        for i in range(sources + 1):
            if i % sample == 0:
                keys = max((len(r.state) for r in engine._compiled.values() if r.state is not None), default=0)
                print(f"{i:>9,} {rss_kib(os.getpid()) / 1024:>8.1f} {len(rate.windows):>7,} {len(engine.flows):>7,} "
                      f"{keys:>9,} {len(ids.flows):>5} {len(pb.quarantined):>10,} {time.monotonic() - started:>5.0f}",
                      flush=True)
            if i == sources:
                return
            pb.events = []  # the gateway hands them to the store: not per-source state
            pb.host = address(i)
            pb.connect(40000 + i % 20000)
            if i % accepted_every == 0:
                await pb.client(associate_rq("CT1"))
                await pb.upstream(associate_ac())
                await pb.client(echo)
                await pb.upstream(response(echo))
                await pb.client(P.encode_release_rq())
                await pb.upstream(P.encode_release_rp())
            else:
                await pb.client(associate_rq(f"X{i % 7}"))
            pb.close()

    asyncio.run(flood())
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=10_000)
    parser.add_argument("--accepted-every", type=int, default=2)
    parser.add_argument("--serve", action="store_true", help="a real `pacsguard serve` over loopback")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    if not args.serve:
        return in_memory(args.sources, args.sample, args.accepted_every)
    work = work_folder(args.work, "pacsguard-sources-")
    scp_port, gw_port = free_port(), free_port()
    (work / "scp").mkdir(exist_ok=True)
    scp = subprocess.Popen(["/usr/bin/storescp", "--ignore", "-aet", "SINK", str(scp_port)], cwd=work / "scp",
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = {"store": {"url": "var/pacsguard.db"},
              "gateway": {"routes": [{"name": "bench", "listen": {"host": "127.0.0.1", "port": gw_port,
                                                                  "ae_title": "PACSGUARD"},
                                      "upstream": {"host": "127.0.0.1", "port": scp_port, "ae_title": "SINK"},
                                      "policy": {"calling_ae_titles": ["CT1"]},
                                      "limits": {"requests_per_minute": 1000}}]}}
    (work / "pacsguard.yaml").write_text(yaml.safe_dump(config))
    cli = [sys.executable, "-m", "pacsguard.cli"]
    subprocess.run([*cli, "init", "--no-demo"], cwd=work, check=True, capture_output=True)
    with (work / "serve.log").open("w") as log:
        gw = subprocess.Popen([*cli, "serve"], cwd=work, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(scp_port, scp)
        wait_port(gw_port, gw)
        time.sleep(1)
        print(f"{'sources':>9} {'RSS MiB':>8} {'store MiB':>9} {'s':>6}")
        started = time.monotonic()
        for i in range(args.sources + 1):
            if i % args.sample == 0:
                store = sum(f.stat().st_size for f in (work / "var").glob("pacsguard.db*")) / 2**20
                print(f"{i:>9,} {rss_kib(gw.pid) / 1024:>8.1f} {store:>9.1f} {time.monotonic() - started:>6.0f}",
                      flush=True)
            if i == args.sources:
                break
            accepted = i % args.accepted_every == 0
            one_source(gw_port, address(i), "CT1" if accepted else f"X{i % 7}", accepted)
        traceback = "Traceback" in (work / "serve.log").read_text()
        print(f"gateway log: {'a Traceback' if traceback else 'no Traceback'}; work dir {work}")
        return 1 if traceback else 0
    finally:
        for proc in (gw, scp):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
