"""Outside tester, round 9: `pacsguard ids live` stops when told, even while libpcap compiles a long
BPF filter (docs/ids.md: "until Ctrl-C, SIGTERM or --duration").

libpcap's optimizer needs seconds for a few hundred terms and minutes (and gigabytes) for a thousand;
``pcap_compile`` cannot be interrupted.  An administrator listing the site's modalities or ports in
``--bpf`` got a command that ignored Ctrl-C, SIGTERM and ``--duration`` until libpcap was done, and
then reported an empty capture as complete (exit 0)."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from test_capture_evasion import Anomalies

from pacsguard.ids.capture import CaptureError, TCPReassembler
from pacsguard.ids.capture import reader as R

PACSGUARD = str(Path(sys.executable).with_name("pacsguard"))
# 400 terms: about 15 s of pcap_compile on the test machine (100 MB), far above the stop below
LONG_FILTER = " or ".join(f"port {p}" for p in range(1, 401))


def _bounded() -> None:
    """The child may not take the shared machine's memory, whatever libpcap does."""
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def _live(*extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([PACSGUARD, "ids", "live", "--interface", "lo", "--bpf", LONG_FILTER, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_bounded,
                            env={**os.environ, "COLUMNS": "200"})


def _finish(proc: subprocess.Popen[str], within: float) -> tuple[int, str, float]:
    started = time.monotonic()
    try:
        _out, err = proc.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"`ids live` still running {within} s after it was told to stop") from None
    return proc.returncode, err, time.monotonic() - started


def _assert_named(code: int, err: str) -> None:
    assert code == 2, err[-1000:]
    assert "Traceback" not in err and "internal error" not in err, err[-1000:]
    assert err.startswith("error: BPF filter 'port 1 or port 2") and "before libpcap finished compiling" in err, err
    assert "nothing was captured" in err and len(err) < 1000, err


def test_duration_bounds_the_run_while_the_filter_compiles() -> None:
    start = time.monotonic()
    code, err, _ = _finish(_live("--duration", "1"), within=30)
    _assert_named(code, err)
    assert time.monotonic() - start < 8, time.monotonic() - start


def test_sigterm_stops_it_while_the_filter_compiles() -> None:
    proc = _live()
    time.sleep(1.5)  # past start-up (imports, rules), into pcap_compile
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    code, err, waited = _finish(proc, within=30)
    _assert_named(code, err)
    assert waited < 4, waited


def test_a_filter_longer_than_the_kernel_takes_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Linux refuses a socket filter of more than 4,096 instructions (BPF_MAXINSNS) with EINVAL;
    libpcap compiles such filters (slowly), so the program stands in for one here."""
    monkeypatch.setattr(R, "compile_bpf", lambda expr, linktype, snaplen: [(0x06, 0, 0, 0)] * 5000)  # ret #0
    stop = threading.Event()
    with pytest.raises(CaptureError) as info:
        R.live_loop("lo", TCPReassembler(Anomalies()), "port 104 or port 11112", stop)
    assert str(info.value) == ("BPF filter 'port 104 or port 11112': the kernel refused its 5,000 instructions "
                               "(Invalid argument; a socket filter holds at most 4,096): use fewer terms")
