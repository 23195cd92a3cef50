"""The real PostgreSQL peer: a private PostgreSQL 15 server built from Debian's binaries.

Fixtures
--------
``postgres_server`` (session)
    The running :class:`PostgresServer` (port, socket directory, ``url(dbname)``, admin access).
``postgres_url`` (session)
    ``postgresql+psycopg://pacsguard:PASSWORD@127.0.0.1:PORT/pacsguard`` — a database owned by
    the role ``pacsguard`` that every test in the session shares.
``postgres_db_url`` (function)
    The same kind of URL for a fresh database ``t_<random>`` owned by ``pacsguard``, dropped
    (with any connections still open on it) after the test.

The server is not the machine's cluster: it is initialised in a private directory, listens on
127.0.0.1 only, on a free port, with its unix socket in that directory, and stops at the end of
the session. initdb and postgres refuse to run as root, so under uid 0 they run as Debian's
``postgres`` system user; that is why the directory is made with :func:`tempfile.mkdtemp`
instead of pytest's tmp dir (``/tmp/pytest-of-root`` is 0700 root and the postgres user could
not enter it).

Authentication: the unix socket (reachable only through the private 0700 directory) trusts the
superuser, which the fixtures use for administration; TCP on loopback requires the password
(scram-sha-256), so the URLs the tests get exercise real password authentication.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from peers.dcmtk import LOOPBACK, PORT_ATTEMPTS, free_port, port_was_taken, read_log, stop_process_group

PG_BIN = Path("/usr/lib/postgresql/15/bin")
INSTALL_HINT = "install Debian's PostgreSQL 15 server: apt-get install postgresql-15"
APP_ROLE = "pacsguard"
STARTUP_TIMEOUT = 30.0


def _psycopg() -> Any:
    """Import psycopg 3, failing the test with the install command when it is missing."""
    try:
        import psycopg
    except ImportError:
        pytest.fail("psycopg 3 is missing from the venv: pip install 'psycopg[binary]>=3.1'")
    return psycopg


@dataclass
class PostgresServer:
    """A running private PostgreSQL server and how to reach it."""

    host: str
    port: int
    socket_dir: Path
    superuser: str
    app_password: str
    log_path: Path

    def url(self, dbname: str = APP_ROLE) -> str:
        """SQLAlchemy URL (psycopg 3 driver) for ``dbname`` as the ``pacsguard`` role, over TCP."""
        return f"postgresql+psycopg://{APP_ROLE}:{self.app_password}@{self.host}:{self.port}/{dbname}"

    def admin_connect(self, dbname: str = "postgres") -> Any:
        """An autocommit superuser connection over the private unix socket (for DDL such as
        CREATE DATABASE, which cannot run inside a transaction)."""
        psycopg = _psycopg()
        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user=self.superuser,
            dbname=dbname,
            autocommit=True,
            connect_timeout=5,
        )


def _run_as_kwargs() -> dict[str, Any]:
    """Popen arguments that drop root to the ``postgres`` user (initdb/postgres refuse root)."""
    if os.geteuid() != 0:
        return {}
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail(f"running as root but there is no 'postgres' system user to run the server as: {INSTALL_HINT}")
    # extra_groups=[] drops root's supplementary groups as well.
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


def _initdb(base: Path) -> tuple[Path, Path, dict[str, str], dict[str, Any]]:
    """Create a cluster in ``base/data``; return (data dir, socket dir, env, run-as arguments)."""
    for tool in ("initdb", "postgres"):
        if not os.access(PG_BIN / tool, os.X_OK):
            pytest.fail(f"{PG_BIN / tool} is missing: {INSTALL_HINT}")
    run_as = _run_as_kwargs()
    data, sock = base / "data", base / "sock"
    sock.mkdir(mode=0o700)
    if run_as:
        for path in (base, sock):
            shutil.chown(path, user="postgres", group="postgres")
    # The C locale avoids depending on which locales the machine has generated.
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}
    init = subprocess.run(
        [
            str(PG_BIN / "initdb"),
            "--pgdata", str(data),
            "--username", "postgres",
            "--encoding", "UTF8",
            "--locale", "C",
            "--auth-local", "trust",
            "--auth-host", "scram-sha-256",
            "--no-sync",  # a throw-away cluster needs no fsync; saves seconds per session
            "--no-instructions",
        ],
        env=env,
        cwd=base,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        **run_as,
    )
    if init.returncode != 0:
        pytest.fail(f"initdb failed (exit {init.returncode}):\n{init.stdout}\n{init.stderr}")
    return data, sock, env, run_as


def _launch(
    base: Path, data: Path, sock: Path, env: dict[str, str], run_as: dict[str, Any]
) -> tuple[subprocess.Popen[bytes], PostgresServer]:
    """Start ``postgres`` on a free loopback port (not yet ready: see :func:`_wait_ready`)."""
    port = free_port()
    settings = {
        "listen_addresses": LOOPBACK,
        "port": str(port),
        "unix_socket_directories": str(sock),
        # Durability is pointless for a cluster deleted at session end, and costs time.
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "logging_collector": "off",
        "shared_buffers": "32MB",
        "max_connections": "100",
    }
    args = [str(PG_BIN / "postgres"), "-D", str(data)]
    for key, value in settings.items():
        args += ["-c", f"{key}={value}"]
    log_path = base / "postgres.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            args,
            env=env,
            cwd=base,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **run_as,
        )
    server = PostgresServer(
        host=LOOPBACK,
        port=port,
        socket_dir=sock,
        superuser="postgres",
        app_password=secrets.token_urlsafe(24),
        log_path=log_path,
    )
    return proc, server


def _start_server(base: Path) -> tuple[subprocess.Popen[bytes], PostgresServer]:
    """initdb a cluster in ``base`` and start it, on a new port if the first one was taken."""
    data, sock, env, run_as = _initdb(base)
    for attempt in range(1, PORT_ATTEMPTS + 1):
        proc, server = _launch(base, data, sock, env, run_as)
        try:
            _wait_ready(proc, server)
            return proc, server
        except BaseException:
            _stop_server(proc)
            # Lost the race between free_port() and postgres's bind: try another port.
            if attempt < PORT_ATTEMPTS and port_was_taken(server.log_path):
                continue
            raise
    raise AssertionError("unreachable")


def _wait_ready(proc: subprocess.Popen[bytes], server: PostgresServer) -> None:
    """Connect until the server answers, fail with its log if it exits or takes > 30 s."""
    psycopg = _psycopg()
    deadline = time.monotonic() + STARTUP_TIMEOUT
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"postgres exited with {proc.returncode} during start-up:\n{read_log(server.log_path)}")
        try:
            with server.admin_connect():
                return
        except psycopg.OperationalError as exc:
            last_error = exc
            time.sleep(0.1)
    pytest.fail(
        f"postgres did not accept connections within {STARTUP_TIMEOUT} s ({last_error}):\n{read_log(server.log_path)}"
    )


def _stop_server(proc: subprocess.Popen[bytes]) -> None:
    """Fast shutdown (SIGINT to the postmaster), then sweep the process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    stop_process_group(proc, grace=5)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL 15 on 127.0.0.1 with role and database ``pacsguard``; stopped at
    session end and its directory removed."""
    psycopg = _psycopg()
    base = Path(tempfile.mkdtemp(prefix="pacsguard-pg-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        proc, server = _start_server(base)
        sql = psycopg.sql
        with server.admin_connect() as conn:
            # Utility statements take no bind parameters: quote the password as a literal.
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(APP_ROLE), sql.Literal(server.app_password)
                )
            )
            conn.execute(sql.SQL("CREATE DATABASE {0} OWNER {0}").format(sql.Identifier(APP_ROLE)))
        # Prove the URL's credentials work over TCP before any test relies on them.
        with psycopg.connect(
            host=server.host, port=server.port, user=APP_ROLE, password=server.app_password,
            dbname=APP_ROLE, connect_timeout=5,
        ):
            pass
        yield server
    finally:
        if proc is not None:
            _stop_server(proc)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """``postgresql+psycopg://pacsguard:PASSWORD@127.0.0.1:PORT/pacsguard`` (shared by the session)."""
    return postgres_server.url()


@pytest.fixture
def postgres_db_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A URL for a database created for this test only (``t_<random>``, owner ``pacsguard``)."""
    psycopg = _psycopg()
    sql = psycopg.sql
    name = f"t_{secrets.token_hex(8)}"
    with postgres_server.admin_connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(APP_ROLE)))
    try:
        yield postgres_server.url(name)
    finally:
        with postgres_server.admin_connect() as conn:
            # FORCE: a test that leaked a connection (or a pool) must not make teardown fail.
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
