"""The real dcmtk peer: OFFIS DICOM toolkit command-line tools from Debian's ``dcmtk`` package.

Fixtures
--------
``dcmtk`` (session)
    A :class:`Dcmtk` object: ``path(tool)``, ``env`` and ``run(tool, *args, timeout=60)``.
``storescp_sink`` (function)
    A running ``/usr/bin/storescp`` (AE title ``SINK``) on a free loopback port, as a
    :class:`StoreSCP` ``(host, port, aet, output_dir)``.  By default it receives and drops
    objects (``--ignore``); ``@pytest.mark.storescp_sink(write=True)`` makes it write them to
    ``output_dir`` instead.

Why the Debian path: pynetdicom installs Python apps called ``echoscu``, ``storescu``,
``storescp``... into ``.venv/bin``; with the venv on PATH a bare name silently runs those
instead of dcmtk (see ../shared/BENCHMARKING.md). Every tool is therefore taken from
``/usr/bin`` and its ``--version`` must name dcmtk/OFFIS.

Why ``TCP_NODELAY=1``: dcmtk leaves Nagle's algorithm on unless that variable is set, which
adds ~40 ms to every small C-STORE and makes timings meaningless.
"""

from __future__ import annotations

import itertools
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import pytest

DCMTK_BIN = Path("/usr/bin")
INSTALL_HINT = "install Debian's dcmtk package: apt-get install dcmtk"
LOOPBACK = "127.0.0.1"
FREE_PORTS = range(20000, 32000)  # free_port's, below the kernel's ephemeral range


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that is free on ``host`` right now.

    Taken below the kernel's ephemeral range (32768-60999 by default), so that no outgoing
    connection of another test takes it before the caller binds, and from a band of its own for
    each pytest-xdist worker, so that two workers never pick the same one. Another process could
    still take it in the milliseconds before the caller binds; a fixed port would collide every
    time two sessions run side by side.
    """
    workers = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1), 1)
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0) % workers
    band = len(FREE_PORTS) // workers
    low = FREE_PORTS.start + band * worker
    # The band is walked from a random place, each port tried once per round: two calls before
    # either port is bound (a test's TCP and HTTP listeners) never get the same one, which random
    # picks did once in a few thousand pairs.
    return free_port_in(host, (low + (_START + next(_TRIED)) % band for _ in range(500)))


#: Where this process's walk of its band began, and how many ports it has tried: the one piece of
#: state the helper keeps (see free_port).
_START = secrets.randbelow(len(FREE_PORTS))
_TRIED = itertools.count()


def free_port_in(host: str, candidates: Iterable[int]) -> int:
    """The first of ``candidates`` free on ``host`` right now (bound and released to check)."""
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port on {host} among the candidates")


def wait_for_port(
    host: str,
    port: int,
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
) -> bool:
    """Wait until ``host:port`` accepts TCP connections; False on timeout or if ``proc`` exits.

    Polling rather than sleeping keeps start-up as short as the peer allows.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def stop_process_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
    """Stop ``proc`` and every process in its group: ``sig`` first, SIGKILL after ``grace`` s.

    Peers are started with ``start_new_session=True`` so that their group id is their pid and
    a forking peer (postgres, storescp --fork) leaves no orphan behind.
    """
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    # The leader may be gone while children of the group still live: always sweep with SIGKILL.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - a process that survives SIGKILL
        pass


#: How often a peer is started on a new free port when the one picked was taken meanwhile.
PORT_ATTEMPTS = 3


def port_was_taken(log_path: Path) -> bool:
    """True if a peer's log says it could not bind its port (the free_port() race was lost)."""
    return "already in use" in read_log(log_path).lower()


def read_log(path: Path, limit: int = 8000) -> str:
    """Return the tail of a peer's log file for a failure message (empty if there is none)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-limit:]


class Dcmtk:
    """Access to dcmtk's command-line tools by their Debian path, verified to really be dcmtk."""

    def __init__(self, bindir: Path = DCMTK_BIN) -> None:
        self.bindir = bindir
        # TCP_NODELAY=1: without it dcmtk waits for delayed ACKs on every small PDU.
        self.env: dict[str, str] = {**os.environ, "TCP_NODELAY": "1"}
        self._verified: dict[str, str] = {}

    def path(self, tool: str) -> str:
        """Return ``/usr/bin/<tool>`` after checking (once per tool) that it is dcmtk's."""
        if tool in self._verified:
            return self._verified[tool]
        if "/" in tool:
            pytest.fail(f"dcmtk tool name must be bare, got {tool!r}")
        exe = self.bindir / tool
        if not (exe.is_file() and os.access(exe, os.X_OK)):
            pytest.fail(f"dcmtk tool {exe} is missing: {INSTALL_HINT}")
        try:
            out = subprocess.run(
                [str(exe), "--version"],
                env=self.env,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=15,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.fail(f"{exe} --version failed ({exc}): {INSTALL_HINT}")
        banner = out.stdout + out.stderr
        if "OFFIS" not in banner and "dcmtk" not in banner:
            pytest.fail(f"{exe} is not OFFIS dcmtk (its --version says {banner[:200]!r}): {INSTALL_HINT}")
        self._verified[tool] = str(exe)
        return str(exe)

    def run(self, tool: str, *args: str | os.PathLike[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a dcmtk tool to completion with text output captured; never raises on exit status.

        A tool that overruns ``timeout`` is killed and the test fails with what it printed, so
        a hung association cannot hang the suite.
        """
        cmd = [self.path(tool), *map(os.fspath, args)]
        try:
            return subprocess.run(
                cmd,
                env=self.env,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            pytest.fail(f"{' '.join(cmd)} did not finish in {timeout} s\nstdout:\n{out}\nstderr:\n{err}")


class StoreSCP(NamedTuple):
    """Where a running dcmtk storescp listens, and where it writes (empty with ``--ignore``)."""

    host: str
    port: int
    aet: str
    output_dir: Path


@contextmanager
def run_storescp(
    dcmtk: Dcmtk,
    workdir: Path,
    *,
    write: bool = False,
    aet: str = "SINK",
    extra_args: Sequence[str] = (),
    startup_timeout: float = 15.0,
) -> Iterator[StoreSCP]:
    """Run ``/usr/bin/storescp`` on a free port for the duration of the ``with`` block.

    ``write=False`` uses ``--ignore`` (receive, then drop: a sink for throughput and relay
    tests); ``write=True`` writes Part 10 files into ``workdir/received``. ``+xa`` accepts every
    transfer syntax dcmtk knows, so compressed objects are not refused by the sink itself.

    dcmtk 3.6.7's storescp has no option to bind one address: it listens on all interfaces.
    The port lives only as long as the test.
    """
    output_dir = workdir / "received"
    output_dir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "storescp.log"
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port = free_port()
        args = [dcmtk.path("storescp"), "-v", "-aet", aet, "+xa"]
        args += ["-od", str(output_dir)] if write else ["--ignore"]
        args += [*extra_args, str(port)]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                args,
                env=dcmtk.env,
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait_for_port(LOOPBACK, port, startup_timeout, proc) and proc.poll() is None:
            break
        stop_process_group(proc)
        if attempt < PORT_ATTEMPTS and port_was_taken(log_path):
            continue  # another process took the port between free_port() and storescp's bind
        pytest.fail(
            f"storescp did not listen on {LOOPBACK}:{port} within {startup_timeout} s "
            f"(exit {proc.poll()}):\n{read_log(log_path)}"
        )
    try:
        yield StoreSCP(LOOPBACK, port, aet, output_dir)
    finally:
        stop_process_group(proc)


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker that configures ``storescp_sink`` (the suite runs --strict-markers)."""
    config.addinivalue_line(
        "markers",
        "storescp_sink(write=False, aet='SINK', extra_args=()): options for the storescp_sink fixture",
    )


@pytest.fixture(scope="session")
def dcmtk() -> Dcmtk:
    """dcmtk's tools from /usr/bin; fails (never skips) when dcmtk is not installed."""
    tools = Dcmtk()
    # Fail at the first test that wants dcmtk, not in the middle of it.
    tools.path("echoscu")
    return tools


@pytest.fixture
def storescp_sink(dcmtk: Dcmtk, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreSCP]:
    """A dcmtk storescp (AE ``SINK``) on a free loopback port, stopped at teardown.

    Configure with ``@pytest.mark.storescp_sink(write=True)`` to keep the received files.
    """
    marker = request.node.get_closest_marker("storescp_sink")
    options = dict(marker.kwargs) if marker else {}
    with run_storescp(dcmtk, tmp_path / "storescp", **options) as scp:
        yield scp
