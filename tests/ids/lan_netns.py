"""A network namespace that looks like a hospital LAN to a capture (shared BENCHMARKING.md):
loopback with MTU 1500 and segmentation offloads off, so frames are 1,514 bytes, and a 1 Gbit/s
shaper so the capture tools are not outrun on a busy 2-core machine. Deleted on exit."""

from __future__ import annotations

import secrets
import subprocess
from contextlib import contextmanager
from typing import Iterator


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
