"""The real CTN peer: the RSNA Central Test Node, Debian's ``ctn`` package (MIRCTN11MAR2003).

CTN is 1990s DICOM code, the oldest style a gateway meets: one association per SOP class,
an SCP/SCU Role Selection item on every context it proposes (PS3.7 D.3.3.4), the PDU header
written apart from its body, 16 KiB PDUs, Explicit VR Big Endian on request, and storage files
without a Part-10 header ("CTN format": a bare Implicit VR data set).

Fixtures
--------
``ctn`` (session)
    A :class:`Ctn` object: ``path(tool)`` and ``run(tool, *args, timeout=30)``.
``simple_storage`` (function)
    ``simple_storage(aet="CTNSCP", *extra_args)`` starts CTN's Storage SCP ``simple_storage``
    on a free port, writing what it receives under its :class:`StorageSCP` ``output_dir``
    (``<modality>/<SOP Instance UID>``); every SCP started is stopped at teardown.

Tools that need CTN's MySQL control database (``send_study``, ``storage_commit``,
``clone_study``, ``image_server``, ``archive_server``) are not wrapped here.

Where CTN listens: ``simple_storage`` has no option for a bind address, it listens on every
address (as dcmtk's storescp does); the port is picked free on all of them. Its clients connect
from the address the kernel chooses (127.0.0.1 on loopback), not from a given one.

simple_storage exits (status 0) when a TCP connection closes before its A-ASSOCIATE-RQ: a port
probe kills it. Its start is therefore seen in /proc/net/tcp (LISTEN), never by connecting.

``capture(path, bpf)`` (fixture ``ctn_capture``) runs tcpdump on ``lo`` for the ``with`` block,
bounded in time, for ``pacsguard ids read``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import NamedTuple

import pytest

from peers.dcmtk import (
    PORT_ATTEMPTS,
    free_port,
    port_was_taken,
    read_log,
    stop_process_group,
)

CTN_BIN = Path("/usr/bin")
INSTALL_HINT = "install Debian's ctn package: apt-get install ctn"
#: The one version Debian ships; its tools print it (ctn_version) and send it in every A-ASSOCIATE.
CTN_VERSION = "MIRCTN11MAR2003"
#: simple_storage listens on every address; tests reach it on this one of their own.
SCP_HOST_DEFAULT = "127.0.121.1"


class Ctn:
    """CTN's command-line tools by their Debian path (``/usr/bin``), checked to be CTN's."""

    def __init__(self, bindir: Path = CTN_BIN) -> None:
        self.bindir = bindir

    def path(self, tool: str) -> str:
        """Return ``/usr/bin/<tool>``; fail with the apt-get hint when it is missing."""
        exe = self.bindir / tool
        if not (exe.is_file() and os.access(exe, os.X_OK)):
            pytest.fail(f"CTN tool {exe} is missing: {INSTALL_HINT}")
        return str(exe)

    def check(self) -> None:
        """ctn_version must name the CTN release (another package could own a ``send_image``)."""
        try:
            out = subprocess.run([self.path("ctn_version")], capture_output=True, text=True,
                                 errors="replace", timeout=10, check=False, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.fail(f"ctn_version failed ({exc}): {INSTALL_HINT}")
        if CTN_VERSION not in out.stdout + out.stderr:
            pytest.fail(f"ctn_version says {(out.stdout + out.stderr)[:200]!r}, not {CTN_VERSION}: {INSTALL_HINT}")

    def run(self, tool: str, *args: str | os.PathLike[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a CTN tool to completion, output captured; never raises on its exit status.

        A tool that overruns ``timeout`` (a hung association) is killed and the test fails with
        what it printed. CTN's tools print to stdout and stderr both; read them together.
        """
        cmd = [self.path(tool), *map(os.fspath, args)]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout,
                                  check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            pytest.fail(f"{' '.join(cmd)} did not finish in {timeout} s\n"
                        f"stdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}")


class StorageSCP(NamedTuple):
    """A running simple_storage: where to reach it and where it writes."""

    host: str
    port: int
    aet: str
    output_dir: Path
    log: Path

    def received(self) -> dict[str, bytes]:
        """SOP Instance UID -> the file simple_storage wrote for it (one folder per modality)."""
        return {p.name: p.read_bytes() for p in sorted(self.output_dir.rglob("*")) if p.is_file()}


def listening(port: int, timeout: float, proc: subprocess.Popen[bytes]) -> bool:
    """True once some socket LISTENs on ``port`` (/proc/net/tcp, state 0A), without connecting;
    False if ``proc`` exits first or ``timeout`` passes."""
    wanted = f":{port:04X}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                rows = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            if any(f[1].endswith(wanted) and f[3] == "0A" for f in (row.split() for row in rows)):
                return True
        time.sleep(0.05)
    return False


@contextmanager
def run_simple_storage(ctn: Ctn, workdir: Path, aet: str = "CTNSCP", *extra_args: str,
                       host: str = SCP_HOST_DEFAULT, startup_timeout: float = 10.0) -> Iterator[StorageSCP]:
    """CTN's ``simple_storage`` for the ``with`` block: ``-f`` (a process per association, so a
    gateway's forwarder and a relayed client are served side by side), ``-s`` (no dump of every
    attribute), files under ``workdir/received``."""
    output_dir = workdir / "received"
    output_dir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "simple_storage.log"
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port = free_port("0.0.0.0")  # it binds every address: the port must be free on all
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([ctn.path("simple_storage"), "-f", "-s", *extra_args, "-c", aet,
                                     "-x", str(output_dir), str(port)], cwd=workdir, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if listening(port, startup_timeout, proc):
            break
        stop_process_group(proc)
        if attempt < PORT_ATTEMPTS and port_was_taken(log_path):
            continue
        pytest.fail(f"simple_storage did not listen on {host}:{port} within {startup_timeout} s "
                    f"(exit {proc.poll()}):\n{read_log(log_path)}")
    try:
        yield StorageSCP(host, port, aet, output_dir, log_path)
    finally:
        stop_process_group(proc)


@pytest.fixture(scope="session")
def ctn() -> Ctn:
    """CTN's tools from /usr/bin; fails (never skips) when the ctn package is not installed."""
    tools = Ctn()
    tools.check()
    return tools


@pytest.fixture
def simple_storage(ctn: Ctn, tmp_path: Path) -> Iterator[Callable[..., StorageSCP]]:
    """``simple_storage(aet, *extra_args, host=...)``: a new CTN Storage SCP, stopped at teardown."""
    with ExitStack() as stack:
        count = 0

        def start(aet: str = "CTNSCP", *extra_args: str, host: str = SCP_HOST_DEFAULT) -> StorageSCP:
            nonlocal count
            workdir = tmp_path / f"ctn-scp{count}"
            count += 1
            workdir.mkdir()
            return stack.enter_context(run_simple_storage(ctn, workdir, aet, *extra_args, host=host))

        yield start


@pytest.fixture
def ctn_capture() -> Callable[..., AbstractContextManager[Path]]:
    """:func:`capture` as a fixture, for test modules that load this one as a plugin."""
    return capture


@contextmanager
def capture(path: Path, bpf: str, *, limit: float = 60.0) -> Iterator[Path]:
    """tcpdump on ``lo`` writing ``path`` for the ``with`` block (full frames, ``bpf`` filter, a
    64 MiB buffer: loopback carries 64 KiB segments, and the default buffer drops some of a burst;
    immediate mode: else the frames of the last, unfilled buffer block are lost at SIGINT).

    Bounded: tcpdump itself is run under ``timeout`` ``limit`` seconds, so it cannot outlive a
    test that dies; at the end it is sent SIGINT, which flushes the file."""
    tool = shutil.which("tcpdump")
    if tool is None:
        pytest.fail("tcpdump is missing: apt-get install tcpdump")
    proc = subprocess.Popen(["timeout", str(int(limit)), tool, "-i", "lo", "-s", "0", "-B", "65536", "--immediate-mode",
                             "-U", "-n", "-w", str(path), bpf],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stderr is not None
    said = proc.stderr.readline()  # "listening on lo, ..." once the socket takes packets
    if "listening on" not in said:
        stop_process_group(proc)
        pytest.fail(f"tcpdump did not start: {said}{proc.stderr.read() if proc.poll() is not None else ''}")
    try:
        yield path
    finally:
        time.sleep(0.3)  # the last frames reach tcpdump's socket
        try:
            os.killpg(proc.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        stop_process_group(proc)
