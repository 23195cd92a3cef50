"""The store on a real PostgreSQL under faults a hospital DBA meets (round 17, probe B).

The server is a private PostgreSQL 15 cluster of this module on 127.0.72.1 (this probe's own
loopback address), reached directly or through a TCP proxy written here that can stall: it keeps
the client's connection open and its bytes acknowledged (the kernel does that), but forwards
nothing, as a frozen backend, a queueing pgbouncer or a half-dead firewall does.
"""

from __future__ import annotations

import logging
import re
import secrets
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pacsguard.store import EventStore
from pacsguard.store.database import describe
from pacsguard.store.errors import StoreError
from pacsguard.store.keys import load_public_key
from pacsguard.store.verify import verify_store
from peers.dcmtk import free_port
from peers.postgres import PG_BIN, PostgresServer, _initdb, _stop_server, _wait_ready
from store_helpers import make_events, new_store

HOST = "127.0.72.1"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "store.md"
PACSGUARD = Path(sys.executable).with_name("pacsguard")


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A private PostgreSQL 15 on 127.0.72.1 with a superuser reachable over its unix socket."""
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="pacsguard-r17b-pg-"))
    data, sock, env, run_as = _initdb(base)
    port = free_port(HOST)
    log_path = base / "postgres.log"
    cert, key = _server_certificate(base, run_as)
    args = [str(PG_BIN / "postgres"), "-D", str(data), "-c", f"listen_addresses={HOST}", "-c", f"port={port}",
            "-c", f"unix_socket_directories={sock}", "-c", "fsync=off", "-c", "logging_collector=off",
            "-c", "ssl=on", "-c", f"ssl_cert_file={cert}", "-c", f"ssl_key_file={key}"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, env=env, cwd=base, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, **run_as)
    server = PostgresServer(HOST, port, sock, "postgres", secrets.token_urlsafe(18), log_path)
    try:
        _wait_ready(proc, server)
        yield server
    finally:
        _stop_server(proc)
        shutil.rmtree(base, ignore_errors=True)


def _server_certificate(base: Path, run_as: dict[str, object]) -> tuple[Path, Path]:
    """A self-signed P-256 certificate for 127.0.72.1 made by openssl (it is its own CA), readable
    by the server's user; the key 0600, as PostgreSQL requires."""
    import shutil

    cert, key = base / "server.crt", base / "server.key"
    done = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                           "-nodes", "-subj", f"/CN={HOST}", "-addext", f"subjectAltName=IP:{HOST}", "-days", "2",
                           "-keyout", str(key), "-out", str(cert)], capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 0, f"openssl could not make the server's certificate: {done.stderr}"
    key.chmod(0o600)
    if run_as:
        for path in (cert, key):
            shutil.chown(path, user="postgres", group="postgres")
    return cert, key


def _database(pg: PostgresServer, owner: str, password: str) -> str:
    """A new role ``owner`` (with ``password``) owning a new UTF8 database; returns the database."""
    name = f"r17b_{secrets.token_hex(4)}"
    sql = psycopg.sql
    with pg.admin_connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(owner), sql.Literal(password)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(owner)))
    return name


class StallingProxy:
    """A TCP proxy on 127.0.72.1 to the server; `stall()` stops forwarding on every connection
    (new ones are accepted and stall too), `resume()` forwards again."""

    def __init__(self, port: int) -> None:
        self._target = (HOST, port)
        self._listener = socket.create_server((HOST, 0))
        self.port = self._listener.getsockname()[1]
        self._running = threading.Event()
        self._running.set()
        self._stopped = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def stall(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def close(self) -> None:
        self._stopped = True
        self._running.set()
        self._listener.close()
        for sock in self._sockets:
            sock.close()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target, timeout=5)
            self._sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self._stopped:
                if not select.select([src], [], [], 0.1)[0]:
                    continue
                data = src.recv(65536)
                if not data:
                    break
                while not self._running.wait(0.1):
                    pass
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def proxied(pg: PostgresServer) -> Iterator[tuple[str, StallingProxy]]:
    """A store URL through a stalling proxy to a fresh database of its own role."""
    password = secrets.token_urlsafe(12)
    role = f"w_{secrets.token_hex(4)}"
    db = _database(pg, role, password)
    proxy = StallingProxy(pg.port)
    try:
        # connect_timeout: a new session through the stalled proxy waits this long (libpq's limit).
        yield f"postgresql+psycopg://{role}:{password}@{HOST}:{proxy.port}/{db}?connect_timeout=2", proxy
    finally:
        proxy.close()


def test_a_write_the_database_never_answers_fails_within_its_limit_and_is_written_after(
        proxied: tuple[str, StallingProxy], tmp_path: Path) -> None:
    """Before: libpq waited for the answer for ever; the writer hung with its batch, recording was
    never marked failed (no RECORDING FAILED, no alert) and no later event was written."""
    url, proxy = proxied
    store, key = new_store(url, tmp_path, write_timeout=1.5, checkpoint_interval=0.2)
    try:
        store.append(make_events(10))
        proxy.stall()
        batch = make_events(5, 10)
        failed: list[BaseException] = []
        started = time.monotonic()

        def write() -> None:
            try:
                store.append(batch)
            except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
                failed.append(exc)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        writer.join(20)
        assert not writer.is_alive(), "the write to a stalled database never returned"
        # The limit, then the pool's reconnect after its failed ping, bounded by connect_timeout.
        assert time.monotonic() - started < 1.5 + 2 + 3
        assert len(failed) == 1 and isinstance(failed[0], StoreError), failed
        assert "did not answer within 2 s" in str(failed[0])  # 1.5 s + 1 ms per event, rounded
        proxy.resume()
        assert store.append(batch) == 15  # the retry writes it on new sessions, chained on
        store.checkpoint()
        report = verify_store(EventStore.open(url), load_public_key(key))
        assert report.ok and report.events == 15, report.findings
    finally:
        proxy.resume()
        store.close()


def test_a_timed_checkpoint_that_fails_is_logged_on_one_line(
        proxied: tuple[str, StallingProxy], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Before: each failed timed checkpoint logged SQLAlchemy's wrapper: the exception class, a
    newline and "(Background on this error at: https://sqlalche.me/...)"."""
    url, proxy = proxied
    store, _key = new_store(url, tmp_path, checkpoint_interval=0.3)
    try:
        store.append(make_events(3))
        proxy.close()  # the database is gone: its sessions closed, new ones refused
        with caplog.at_level(logging.WARNING, logger="pacsguard.store"):
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline and not any("timed checkpoint failed" in r.getMessage()
                                                          for r in caplog.records):
                time.sleep(0.1)
        lines = [r.getMessage() for r in caplog.records if "timed checkpoint failed" in r.getMessage()]
        assert lines, caplog.text
        for line in lines:
            assert "\n" not in line and "sqlalche.me" not in line and "psycopg." not in line, line
    finally:
        # The final checkpoint cannot be signed either: close says so (and still releases the pool).
        with pytest.raises(StoreError, match="signing a checkpoint failed"):
            store.close()


def test_the_urls_connect_timeout_is_the_one_used(proxied: tuple[str, StallingProxy]) -> None:
    """Before: pacsguard's own connect_timeout (10 s) replaced the one the administrator gave in the
    URL (SQLAlchemy's connect_args win over the query), so a store that did not answer took 10 s."""
    url, proxy = proxied
    proxy.stall()
    started = time.monotonic()
    with pytest.raises(StoreError, match="cannot open the store"):
        EventStore.open(url.replace("connect_timeout=2", "connect_timeout=1"), create=True)
    assert time.monotonic() - started < 5


def _grant_block() -> str:
    """The SQL of docs/store.md's append-only writer role (the block after its heading)."""
    text = DOCS.read_text()
    part = text.split("### An append-only role for the services", 1)
    assert len(part) == 2, "docs/store.md gives no GRANTs for an append-only role"
    block = re.search(r"```sql\n(.*?)```", part[1], re.DOTALL)
    assert block is not None
    return block.group(1)


def test_the_documented_append_only_role_writes_and_signs_but_cannot_rewrite(pg: PostgresServer,
                                                                              tmp_path: Path) -> None:
    """The GRANTs docs/store.md gives, run as written against a store its owner made: the services'
    role appends, signs, verifies; UPDATE, DELETE and TRUNCATE of the events are refused to it."""
    owner_pw, writer_pw = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    owner = f"o_{secrets.token_hex(4)}"
    db = _database(pg, owner, owner_pw)
    made, key = new_store(f"postgresql+psycopg://{owner}:{owner_pw}@{HOST}:{pg.port}/{db}", tmp_path)
    made.close()
    sql = _grant_block().replace("pacsguard_writer", f"w_{owner}").replace("DATABASE pacsguard", f"DATABASE {db}")
    sql = sql.replace("'WRITER-PASSWORD'", f"'{writer_pw}'")
    with pg.admin_connect(db) as conn:
        for statement in filter(str.strip, sql.split(";")):
            if not statement.strip().startswith("--"):
                conn.execute(statement)
    writer_url = f"postgresql+psycopg://w_{owner}:{writer_pw}@{HOST}:{pg.port}/{db}"
    store = EventStore.open(writer_url, key_path=key, create=True)
    try:
        assert store.append(make_events(20)) == 20
        assert store.checkpoint() is not None
    finally:
        store.close()
    assert verify_store(EventStore.open(writer_url), load_public_key(key)).ok
    with psycopg.connect(writer_url.replace("+psycopg", ""), autocommit=True) as conn:
        for statement in ("UPDATE event_bodies SET body = body WHERE seq = 3", "DELETE FROM events WHERE seq = 19",
                          "TRUNCATE checkpoints", "DELETE FROM checkpoints", "UPDATE checkpoints SET time_us = 0"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_a_store_reached_over_a_unix_socket_is_named_by_its_socket(pg: PostgresServer) -> None:
    """Before: ``postgresql://None:5432/DB``: the host and port given as libpq query parameters
    (the form for a unix socket) were not read, so messages named no host and the wrong port."""
    url = f"postgresql+psycopg://u:pw@/db?host={pg.socket_dir}&port={pg.port}"
    assert describe(url) == f"postgresql://{pg.socket_dir}:{pg.port}/db"
    done = subprocess.run([str(PACSGUARD), "audit", "verify", "--store", url.replace("+psycopg", "")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done
    assert "None" not in done.stderr and f"{pg.socket_dir}:{pg.port}/db" in done.stderr, done.stderr
    assert "pw@" not in done.stderr and "Traceback" not in done.stderr


def test_a_refused_password_names_the_key_it_came_from_and_is_never_shown(pg: PostgresServer,
                                                                         tmp_path: Path) -> None:
    """Before: "password authentication failed for user ..." with no word of which setting held it."""
    good = "p@ss:w/o%rd#x?y&z=1 \"q"  # odd characters: quoted into the URL by pacsguard itself
    role = f"r_{secrets.token_hex(4)}"
    db = _database(pg, role, good)
    (tmp_path / "pw").write_text("Wr0ng-" + good)
    (tmp_path / "pacsguard.yaml").write_text(
        f"store:\n  url: postgresql://{role}@{HOST}:{pg.port}/{db}\n  password: {{file: pw}}\n")
    done = subprocess.run([str(PACSGUARD), "audit", "verify", "-c", str(tmp_path / "pacsguard.yaml")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "password authentication failed" in lines[0] and "store.password" in lines[0], lines
    assert "Wr0ng" not in done.stderr + done.stdout and "w/o" not in done.stderr + done.stdout
    (tmp_path / "pw").write_text(good)  # the right one, with its odd characters, opens the store
    done = subprocess.run([str(PACSGUARD), "audit", "verify", "-c", str(tmp_path / "pacsguard.yaml")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert "empty database, not a pacsguard store" in done.stderr, done.stderr


def test_a_role_that_may_not_create_tables_is_told_how_to_make_the_store(pg: PostgresServer) -> None:
    """Before: PostgreSQL's "permission denied for schema public" alone."""
    password = secrets.token_urlsafe(12)
    role = f"n_{secrets.token_hex(4)}"
    with pg.admin_connect() as conn:
        conn.execute(psycopg.sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            psycopg.sql.Identifier(role), psycopg.sql.Literal(password)))
    db = _database(pg, f"o{role}", secrets.token_urlsafe(12))
    with pg.admin_connect(db) as conn:
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    with pytest.raises(StoreError) as refused:
        EventStore.open(f"postgresql+psycopg://{role}:{password}@{HOST}:{pg.port}/{db}", create=True)
    message = str(refused.value)
    assert "permission denied for schema public" in message and "pacsguard init" in message, message
    assert "docs/store.md" in message and password not in message


def test_a_relative_ca_file_in_the_url_is_read_from_the_configurations_folder(pg: PostgresServer,
                                                                             tmp_path: Path) -> None:
    """Before: libpq read ``sslrootcert=db-ca.crt`` from the folder the command ran in (/ under
    systemd): "root certificate file "db-ca.crt" does not exist", though every other path in
    pacsguard.yaml is relative to its folder."""
    password = secrets.token_urlsafe(12)
    role = f"s_{secrets.token_hex(4)}"
    db = _database(pg, role, password)
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "db-ca.crt").write_bytes((pg.log_path.parent / "server.crt").read_bytes())
    (folder / "pw").write_text(password)
    (folder / "pacsguard.yaml").write_text(
        f"store:\n  url: 'postgresql://{role}@{HOST}:{pg.port}/{db}?sslmode=verify-full&sslrootcert=db-ca.crt'\n"
        "  password: {file: pw}\n")
    elsewhere = tmp_path / "run"
    elsewhere.mkdir()
    done = subprocess.run([str(PACSGUARD), "audit", "verify", "-c", str(folder / "pacsguard.yaml")],
                          capture_output=True, text=True, timeout=60, check=False, cwd=elsewhere)
    # Connected over verified TLS: the database is reached, and it holds no store yet.
    assert "empty database, not a pacsguard store" in done.stderr, done.stderr
    assert password not in done.stderr + done.stdout
