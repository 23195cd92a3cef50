"""Round 11, area E: looking up the witness's host name is bounded by the request's deadline.

The client's one deadline covered connecting, a proxy's CONNECT, the TLS handshake and the whole
answer, but not getaddrinfo before them: behind a DNS server that does not answer, a request
given 1 s (or the 10 s of a delivery and of `audit verify --witness`) waited as long as the
system's resolver does (resolv.conf: 5 s a try, 2 tries, per server) and was then reported
"unreachable (Temporary failure in name resolution)". The lookup is now given up at the deadline
and named ("resolving HOST"); the lookup left running is shared by the next tries, so retries
behind the dead server hold one thread, not one each.

The dead DNS server is real: a network namespace (ip netns, deleted afterwards) whose
/etc/netns/NS/resolv.conf names 127.0.115.53, where a UDP socket takes every query and answers
none. The client runs in that namespace as a subprocess (`ip netns exec`), so the host's own
resolver is not touched."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

NAMESERVER = "127.0.115.53"  # this helper's loopback range (round 11, area E), inside the namespace
NAME = "witness.r11e.example"  # in no /etc/hosts: only DNS can answer it
#: The client's timeout: each try must end by it, plus a margin for a busy machine.
TIMEOUT = 0.7
MARGIN = 0.4
TRIES = 3
#: The resolver's own wait for an answer: far past every deadline, so the old code is caught.
RESOLVER_WAIT = 20

CLIENT = f"""
import json, socket, threading, time
from pacsguard.witness.errors import WitnessError
from pacsguard.witness.http import WitnessClient

dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dns.bind(({NAMESERVER!r}, 53))  # takes every query, answers none
client = WitnessClient("https://{NAME}:8471", "t" * 64, timeout={TIMEOUT})
tries = []
for _ in range({TRIES}):
    started = time.monotonic()
    try:
        client.held("0123456789abcdef")
        error = None
    except WitnessError as exc:
        error = str(exc)
    tries.append({{"took": time.monotonic() - started, "error": error}})
dns.setblocking(False)
queries = 0
while True:
    try:
        dns.recv(4096)
    except BlockingIOError:
        break
    queries += 1
print(json.dumps({{"tries": tries, "queries": queries, "threads": threading.active_count() - 1}}))
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def dead_dns() -> Iterator[str]:
    """A network namespace whose only DNS server takes queries and never answers."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail("this test needs root and iproute2's ip (it makes a network namespace)")
    name = f"r11e-{secrets.token_hex(3)}"
    config = Path("/etc/netns") / name
    made = not config.parent.exists()  # ip netns exec reads /etc/netns/NS/; removed again if made here
    config.mkdir(parents=True)
    (config / "resolv.conf").write_text(f"nameserver {NAMESERVER}\noptions timeout:{RESOLVER_WAIT} attempts:1\n")
    try:
        _ip("netns", "add", name)
        _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
        shutil.rmtree(config, ignore_errors=True)
        if made:
            try:
                config.parent.rmdir()
            except OSError:
                pass  # another namespace's configuration is there now


def test_a_lookup_the_dns_server_never_answers_ends_at_the_deadline(dead_dns: str, tmp_path: Path) -> None:
    """Each try is given up at the client's timeout and names the lookup; the three tries share
    the one lookup thread still waiting for the resolver."""
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    limit = TRIES * (TIMEOUT + MARGIN) + 3  # and the interpreter's start
    try:
        done = subprocess.run(["ip", "netns", "exec", dead_dns, sys.executable, str(script)],
                              capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{TRIES} tries of {TIMEOUT} s each still waiting for the resolver after {limit:.1f} s")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["queries"] >= 1, "the resolver never asked the namespace's DNS server: the test proves nothing"
    said = f"witness https://{NAME}:8471: too slow: resolving {NAME} not done within {TIMEOUT:g} s"
    for attempt in result["tries"]:
        assert attempt["error"] == said
        assert attempt["took"] < TIMEOUT + MARGIN, f"given up after {attempt['took']:.2f} s, not at {TIMEOUT} s"
    assert result["threads"] == 1, f"{result['threads']} lookup threads left for {TRIES} tries of one name"
