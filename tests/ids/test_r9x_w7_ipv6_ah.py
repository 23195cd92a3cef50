"""IPv6 AH (RFC 4302) in front of TCP: read by the sensor only as far as a Linux receiver reads it
(outside round 9, W7).

Linux passes an AH header only through IPsec (xfrm6_rcv): without a security association for its
SPI the packet is dropped, so the PACS never reads the TCP segment behind it.  The sensor walked
through AH and read that segment: an attacker could inject, inside a real connection, AH-wrapped
bytes the server never sees, and the sensor would take them in place of the real ones.  Here the
kernel itself decides (a throwaway network namespace, a real connection on ::1, dumpcap): the
stream the sensor reassembles must be the one the server read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from capture_craft import Recorder
from lan_netns import require_peers

from pacsguard.ids.capture import read_capture

pytestmark = pytest.mark.peers

# In the namespace: a server on ::1 reads one connection to its end; the client connects, an AH
# (SPI 0x1234, no association) segment carrying b"EVIL" is injected at the client's next sequence
# number, then the client sends b"GOOD" and closes.  Prints what the server read.
_SCENARIO = r"""
import json, select, socket, struct, threading, time
def csum(b):
    b += b"\0" * (len(b) % 2)
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s >> 16) + (s & 0xFFFF)
    return ~s & 0xFFFF
addr = socket.inet_pton(socket.AF_INET6, "::1")
sniff = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_TCP)
lst = socket.socket(socket.AF_INET6)
lst.bind(("::1", 0))
lst.listen(1)
port = lst.getsockname()[1]
got = []
def serve():
    c, _ = lst.accept()
    while True:
        d = c.recv(4096)
        if not d:
            break
        got.append(d)
    c.close()
t = threading.Thread(target=serve)
t.start()
cli = socket.socket(socket.AF_INET6)
cli.connect(("::1", port))
cport = cli.getsockname()[1]
isn = {}
deadline = time.time() + 5
while len(isn) < 2 and time.time() < deadline:
    if select.select([sniff], [], [], 0.2)[0]:
        d = sniff.recv(65535)
        sp, dp, seq = struct.unpack_from("!HHI", d)
        if d[13] & 0x02:
            isn[sp] = seq
tcp = struct.pack("!HHIIBBHHH", cport, port, isn[cport] + 1, isn[port] + 1, 5 << 4, 0x18, 65535, 0, 0) + b"EVIL"
c = csum(addr + addr + struct.pack("!I3xB", len(tcp), 6) + tcp)
tcp = tcp[:16] + struct.pack("!H", c) + tcp[18:]
ah = struct.pack("!BBHII", 6, 4, 0, 0x1234, 1) + bytes(12)  # RFC 4302 2: 12-octet ICV
socket.socket(socket.AF_INET6, socket.SOCK_RAW, 51).sendto(ah + tcp, ("::1", 0))
time.sleep(0.3)
cli.sendall(b"GOOD")
time.sleep(0.3)
cli.close()
t.join(5)
print(json.dumps({"server_read": b"".join(got).decode("latin-1"), "client_port": cport}))
"""


@pytest.fixture(scope="module")
def ah_capture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict]]:
    require_peers(["ip", "dumpcap"], [])
    name = f"pg-w7ah-{os.getpid()}"
    cap = tmp_path_factory.mktemp("w7ah") / "ah.pcapng"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        dump = subprocess.Popen(["ip", "netns", "exec", name, "timeout", "30", "dumpcap", "-q", "-i", "lo",
                                 "-w", str(cap)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(2.0)  # dumpcap announces itself well before the kernel hands it packets
            r = subprocess.run(["ip", "netns", "exec", name, sys.executable, "-c", _SCENARIO],
                               capture_output=True, text=True, timeout=20)
            assert r.returncode == 0, r.stderr
            time.sleep(1.0)
        finally:
            dump.terminate()
            dump.communicate(timeout=15)
        yield cap, json.loads(r.stdout)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_the_sensor_reads_what_the_server_read(ah_capture: tuple[Path, dict]) -> None:
    cap, seen = ah_capture
    assert seen["server_read"] == "GOOD"  # this kernel dropped the AH segment (no IPsec association)
    rec = Recorder()
    stats = read_capture(cap, rec)
    (conn,) = [c for c in rec.conns if c.client_port == seen["client_port"]]
    client = b"".join(b for b in rec.streams[(conn.conn_id, True)] if isinstance(b, bytes))
    assert client == seen["server_read"].encode()
    assert stats.non_tcp.get("ipv6-ah") == 1  # counted, as for IPv4, not read
