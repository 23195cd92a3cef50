"""The odil peer: the C++11 DICOM library odil, from Debian's ``odil`` and ``python3-odil`` packages.

``odil`` (session fixture)
    An :class:`Odil`: ``run(verb, *args, timeout=30)`` runs ``/usr/bin/odil`` (its echo, find,
    get and store sub-commands are SCUs) and ``archive(host, folder)`` runs the small archive of
    odil_scp.py (odil's EchoSCP, StoreSCP, FindSCP and GetSCP) as a context manager.

Why /usr/bin/python3: python3-odil installs its module for Debian's Python only; the venv cannot
import it, so the CLI and the archive run as their own processes (with ``-P``: this module's folder
first on sys.path would make ``import odil`` find this file).

Why a bind shim: odil's ``Association.receive_association`` binds the wildcard address and
accepts a single connection per call. The tests listen on their own loopback address only, and a
client that opens its next association at once (``odil get`` asks C-FIND first, then C-GET) must
not find the port closed between two calls. ``LD_PRELOAD`` of a tiny library, built here with gcc,
binds the address in ``ODIL_BIND_HOST`` instead and hands the same listening socket to every
later acceptor of the process (only while odil_scp.py says it is accepting: a C-MOVE's outgoing
association gets a socket of its own).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import pytest

from peers.dcmtk import free_port, read_log, stop_process_group

ODIL_CLI = Path("/usr/bin/odil")
SYSTEM_PYTHON = Path("/usr/bin/python3")
SCP_SCRIPT = Path(__file__).with_name("odil_scp.py")
INSTALL_HINT = "install Debian's odil and python3-odil packages: apt-get install odil python3-odil"

_SHIM_SOURCE = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int kept = -1;  /* the one listening socket of this process */
int odil_bind_accepting = 0;  /* set by odil_scp.py around receive_association */

int socket(int domain, int type, int protocol) {
    static int (*next)(int, int, int);
    if (!next) next = dlsym(RTLD_NEXT, "socket");
    /* A new acceptor gets the kept listener: nothing queued on it is lost between two calls. */
    if (odil_bind_accepting && kept >= 0 && domain == AF_INET && (type & 0xf) == SOCK_STREAM) return dup(kept);
    return next(domain, type, protocol);
}

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    static int (*next)(int, const struct sockaddr *, socklen_t);
    if (!next) next = dlsym(RTLD_NEXT, "bind");
    const char *host = getenv("ODIL_BIND_HOST");
    if (!odil_bind_accepting || !host || !addr || addr->sa_family != AF_INET || len < sizeof(struct sockaddr_in))
        return next(fd, addr, len);
    if (kept >= 0) return 0;
    struct sockaddr_in own;
    memcpy(&own, addr, sizeof own);
    if (inet_pton(AF_INET, host, &own.sin_addr) != 1) return -1;
    int rc = next(fd, (const struct sockaddr *)&own, sizeof own);
    if (rc == 0) kept = dup(fd);
    return rc;
}

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    static int (*next)(int, const struct sockaddr *, socklen_t);
    static int (*next_bind)(int, const struct sockaddr *, socklen_t);
    if (!next) next = dlsym(RTLD_NEXT, "connect");
    if (!next_bind) next_bind = dlsym(RTLD_NEXT, "bind");
    const char *host = getenv("ODIL_BIND_HOST");
    if (host && addr && addr->sa_family == AF_INET) {
        /* An outgoing association (a C-MOVE's) leaves from the archive's own address, as it
           would from its own host, not from 127.0.0.1. */
        struct sockaddr_in own = {0};
        own.sin_family = AF_INET;
        if (inet_pton(AF_INET, host, &own.sin_addr) == 1)
            next_bind(fd, (const struct sockaddr *)&own, sizeof own);
    }
    return next(fd, addr, len);
}
"""


class Archive(NamedTuple):
    """A running odil_scp.py: where it listens, the folder it stores to and serves, its log."""

    host: str
    port: int
    folder: Path
    log: Path

    def lines(self) -> list[str]:
        """What it printed: one line per association, request and end (odil_scp.py)."""
        return read_log(self.log, limit=200_000).splitlines()

    def wait_for(self, prefix: str, count: int = 1, timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        found: list[str] = []
        while time.monotonic() < deadline:
            found = [line for line in self.lines() if line.startswith(prefix)]
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"odil archive printed {len(found)} {prefix!r} lines, expected {count}:\n"
                             + "\n".join(self.lines()))


def _listening(host: str, port: int) -> bool:
    """True once a socket is in LISTEN on host:port (read from /proc, so that no probe connection
    takes the one accept odil's receive_association makes)."""
    want = "%08X:%04X" % (int.from_bytes(bytes(map(int, host.split("."))), "little"), port)
    try:
        rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(r.split()[1] == want and r.split()[3] == "0A" for r in rows)


class Odil:
    """odil's CLI and its Python SCPs, checked once to be Debian's."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        for exe in (ODIL_CLI, SYSTEM_PYTHON):
            if not (exe.is_file() and os.access(exe, os.X_OK)):
                pytest.fail(f"{exe} is missing: {INSTALL_HINT}")
        probe = subprocess.run([str(SYSTEM_PYTHON), "-P", "-c", "import odil; print(odil.__file__)"],
                               capture_output=True, text=True, timeout=30, check=False)
        if probe.returncode != 0:
            pytest.fail(f"Debian's python3 cannot import odil ({probe.stderr.strip()[-300:]}): {INSTALL_HINT}")
        self.shim = self._build_shim()

    def _build_shim(self) -> Path:
        cc = shutil.which("gcc") or shutil.which("cc")
        if cc is None:
            pytest.fail("a C compiler is needed for the odil archive's bind shim: apt-get install gcc")
        source = self.workdir / "odil_bind.c"
        source.write_text(_SHIM_SOURCE)
        shim = self.workdir / "odil_bind.so"
        built = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(shim), str(source), "-ldl"],
                               capture_output=True, text=True, timeout=60, check=False)
        if built.returncode != 0:
            pytest.fail(f"building the odil bind shim failed:\n{built.stderr}")
        return shim

    def run(self, verb: str, *args: str | os.PathLike[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """``odil VERB ARGS...`` to completion; never raises on its exit status (odil's CLI exits 2
        with ``odil: error: ...`` on any failure). A hang fails the test with what it printed."""
        cmd = [str(ODIL_CLI), verb, *map(os.fspath, args)]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout,
                                  check=False, stdin=subprocess.DEVNULL, cwd=self.workdir)
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            pytest.fail(f"{' '.join(cmd)} did not finish in {timeout} s\nstdout:\n{out}\nstderr:\n{err}")

    @contextmanager
    def archive(self, host: str, folder: Path, moves: dict[str, tuple[str, int]] | None = None,
                startup_timeout: float = 15.0) -> Iterator[Archive]:
        """odil_scp.py on ``host`` (a free port), storing to and serving ``folder``, sending C-MOVE
        sub-operations to ``moves`` (AE title -> host, port); stopped after."""
        folder.mkdir(parents=True, exist_ok=True)
        port = free_port(host)
        log = folder.parent / f"odil_scp_{host}_{port}.log"
        env = {**os.environ, "LD_PRELOAD": str(self.shim), "ODIL_BIND_HOST": host, "PYTHONUNBUFFERED": "1"}
        with log.open("w") as out:
            proc = subprocess.Popen([str(SYSTEM_PYTHON), "-P", str(SCP_SCRIPT), str(port), str(folder),
                                     *[f"--move={aet}={h}:{p}" for aet, (h, p) in (moves or {}).items()]],
                                    env=env,
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        try:
            deadline = time.monotonic() + startup_timeout
            while not _listening(host, port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the odil archive did not listen on {host}:{port}:\n{read_log(log)}")
                time.sleep(0.05)
            yield Archive(host, port, folder, log)
        finally:
            stop_process_group(proc, grace=3)


@pytest.fixture(scope="session", name="odil")
def odil_fixture(tmp_path_factory: pytest.TempPathFactory) -> Odil:
    """The ``odil`` fixture (a test module imports ``odil_fixture``; the parameter is ``odil``)."""
    return Odil(tmp_path_factory.mktemp("odil"))
