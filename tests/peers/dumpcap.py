"""Wireshark's dumpcap as the tests' capture peer."""

from __future__ import annotations

import subprocess
import time


def announced(dumpcap: subprocess.Popen[str], within: float = 15.0) -> None:
    """Wait until ``dumpcap`` (started with ``stderr=PIPE, text=True``) says "Capturing on", then a
    half second more: it says so before its socket takes packets."""
    assert dumpcap.stderr is not None
    seen = ""
    deadline = time.monotonic() + within
    while "Capturing on" not in seen and time.monotonic() < deadline:
        seen += dumpcap.stderr.readline()
    assert "Capturing on" in seen, seen
    time.sleep(0.5)
