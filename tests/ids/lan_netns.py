"""A network namespace that looks like a hospital LAN to a capture (shared BENCHMARKING.md):
loopback with MTU 1500 and segmentation offloads off, so frames are 1,514 bytes, and a 1 Gbit/s
shaper so the capture tools are not outrun on a busy 2-core machine. Deleted on exit."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from contextlib import contextmanager
from typing import Iterator

import pytest

SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
STORESCU = "/usr/bin/storescu"


def require_peers(commands: list[str], programs: list[str]) -> None:
    """Fail (never skip) unless root, the commands on the system PATH and the programs are there,
    and /usr/bin/storescu is OFFIS dcmtk (pynetdicom installs a Python one of the same name)."""
    if os.geteuid() != 0:
        pytest.fail("these tests need root (they make a network namespace)")
    missing = [c for c in commands if shutil.which(c, path=SYSTEM_PATH) is None]
    missing += [p for p in programs if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"missing tools: {missing} (apt-get install iproute2 ethtool tshark nmap dcmtk orthanc)")
    version = subprocess.run([STORESCU, "--version"], capture_output=True, text=True).stdout
    if "dcmtk" not in version.lower():
        pytest.fail(f"{STORESCU} is not OFFIS dcmtk: {version[:80]!r}")


def ns_cmd(name: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", name, *args]


@contextmanager
def lan_netns(prefix: str = "pg") -> Iterator[str]:
    name = f"{prefix}-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(ns_cmd(name, "ip", "link", "set", "lo", "up", "mtu", "1500"), check=True)
        subprocess.run(ns_cmd(name, "ethtool", "-K", "lo", "tso", "off", "gso", "off", "gro", "off"),
                       check=True, capture_output=True)
        subprocess.run(ns_cmd(name, "tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "1gbit",
                              "burst", "256kb", "latency", "100ms"), check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
