"""Round 7 (wave 2) fixes of the outbound ATNA feed (issue 18, "Outbound"): a repository that
stops reading for longer than the sender's old 10 s socket timeout (its store stalls) is not
taken for a dead one, so nothing is resent and stored twice; a repository slower than the feed
has what it took confirmed while the feed goes on; one that takes no byte for ``stall_timeout``
is reconnected to; the spool is bounded (``max_spool_bytes``) and what it holds back is recorded.

Real peers only, on 127.0.72.1, ports 23000-23999: Debian's rsyslogd and a second pacsguard
(`pacsguard atna listen`, mutual TLS) stopped with SIGSTOP, and Python's ssl module (OpenSSL) as a
TLS 1.3 repository that reads slowly or not at all."""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from receiver import DEADLINE
from test_outbound import own_events
from test_round6_outbound import _rsyslog as rsyslog_repository
from test_round6_outbound import _stop, assert_each_once, until

from pacsguard.atna.config import AtnaConfig
from pacsguard.atna.dedupe import delivery_of
from pacsguard.atna.outbound.forwarder import Forwarder
from pacsguard.atna.outbound.sender import Failure, OutboundSender
from pacsguard.atna.outbound.spool import Spool
from pacsguard.config.loader import ConfigError, parse_config
from pacsguard.store import EventQuery, EventStore
from pacsguard.tls import make_ca, make_cert
from peers.dcmtk import free_port_in

HOST = "127.0.72.1"
_ports = iter(range(23000 + (time.monotonic_ns() // 1000) % 500, 24000))
#: Longer than the old sender's socket timeout (10 s), which made it reconnect and resend.
STALL = 12.0
#: Bytes of padding in each test message: with the stall's feed, enough to fill the socket buffers.
PAD = 2000


def port() -> int:
    """A port of this module's range free on HOST right now (bound and released to check)."""
    return free_port_in(HOST, _ports)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca, ca_key = make_ca(tmp_path / "pki", "Repository CA", 2)
    cert, key = make_cert(tmp_path / "pki", "localhost", ca, ca_key, hosts=["localhost", HOST], server=True, days=1)
    good, good_key = make_cert(tmp_path / "pki", "pacsguard-site", ca, ca_key, client=True, days=1)
    return {"ca": ca, "cert": cert, "key": key, "good": good, "good_key": good_key}


def client(pki: dict[str, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    context.load_cert_chain(pki["good"], pki["good_key"])
    return context


def numbered(n: int) -> bytes:
    return b"<AuditMessage>m%d %s</AuditMessage>" % (n, b"x" * PAD)


class Feed:
    """Test messages into a spool, one line each: by default ``m<N>`` and padding."""

    def __init__(self, spool: Spool, message: Callable[[int], bytes] = numbered) -> None:
        self.spool = spool
        self.message = message
        self.count = 0

    def burst(self, n: int) -> None:
        self.spool.add([self.message(self.count + i + 1) for i in range(n)])
        self.count += n


def _stall_and_resume(proc: subprocess.Popen[Any], feed: Feed, out: OutboundSender) -> None:
    """Stop ``proc`` for STALL seconds while the feed writes enough to fill every buffer between
    them, then let it go on and feed more."""
    feed.burst(100)
    until(lambda: feed.spool.delivered() == feed.count, "the first burst delivered")
    proc.send_signal(signal.SIGSTOP)
    try:
        end = time.monotonic() + STALL
        for _ in range(8):
            feed.burst(500)  # 8 MB in all
            time.sleep(0.2)
        time.sleep(max(0.0, end - time.monotonic()))
        assert feed.spool.delivered() < feed.count  # the stall held some back
    finally:
        proc.send_signal(signal.SIGCONT)
    feed.burst(100)
    until(lambda: feed.spool.delivered() == feed.count, f"all {feed.count} messages delivered", 4 * DEADLINE)


# ------------------------------------------------------------------------------ 1. rsyslog stalled

RAW = re.compile(rb'seq="(\d+)"\] <AuditMessage>m(\d+) x+</AuditMessage>$')


def _rsyslog(base: Path, pki: dict[str, Path], repo_port: int, received: Path) -> subprocess.Popen[bytes]:
    """rsyslogd receiving RFC 5425 TLS (gtls) on HOST with mutual TLS; each message's raw text is
    one line of ``received``."""
    return rsyslog_repository(base, "gtls", pki["ca"], pki, repo_port, "pacsguard-site", received, host=HOST,
                              settings='maxMessageSize="8k"')


def test_rsyslog_stalled_longer_than_the_old_timeout_stores_each_message_once(
        tmp_path: Path, pki: dict[str, Path]) -> None:
    """rsyslog keeps no delivery numbers: a resend after a reconnection would be a second line."""
    repo_port = port()
    received = tmp_path / "received.log"
    proc = _rsyslog(tmp_path / "rsyslog", pki, repo_port, received)
    spool = Spool(tmp_path / "spool.db")
    feed = Feed(spool)
    failures: list[Failure] = []
    out = OutboundSender(spool, "site-a", HOST, repo_port, client(pki), server_name="localhost", retry=0.2,
                         retry_max=0.4, on_failed=failures.append)
    try:
        out.start()
        _stall_and_resume(proc, feed, out)
        until(lambda: received.exists() and len(received.read_bytes().splitlines()) >= feed.count, "rsyslog's lines")
    finally:
        out.stop()
        spool.close()
        time.sleep(0.5)  # a resend would come within confirm_after; give it time to show
        _stop(proc)
    assert_each_once(received, RAW, feed.count)
    assert failures == [] and out.connections == 1  # a stalled repository is not a dead one


# ------------------------------------------------------------------------------ 2. a second pacsguard stalled


def test_a_stalled_pacsguard_repository_gets_each_message_once_and_no_resend(
        tmp_path: Path, pki: dict[str, Path]) -> None:
    """A pacsguard repository would drop a resend (client certificate), recording each as an
    ``atna.delivery.duplicate``: there must be none, and each message stored once."""
    repo_port = port()
    store_path = tmp_path / "repository.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pacsguard.cli", "atna", "listen", "--tls", f"{HOST}:{repo_port}",
         "--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"]), "--tls-ca", str(pki["ca"]),
         "--store", str(store_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "200"})
    spool = Spool(tmp_path / "spool.db")
    # A real PS3.15 A.5 message (the repository dedupes audit messages only), padded by a comment.
    audit = Forwarder(spool, "site-a").message(own_events(1)[0])
    assert audit is not None
    padded = audit.replace(b"</AuditMessage>", b"<!-- %s --></AuditMessage>" % (b"x" * PAD))
    feed = Feed(spool, lambda n: padded)
    out = OutboundSender(spool, "site-a", HOST, repo_port, client(pki), server_name="localhost", retry=0.2,
                         retry_max=0.4)
    try:
        assert proc.stdout is not None
        started = threading.Event()

        def read_console() -> None:  # drained, so a full pipe never stops the repository
            assert proc.stdout is not None
            for line in proc.stdout:
                if "ATNA syslog" in line:
                    started.set()

        threading.Thread(target=read_console, daemon=True).start()
        assert started.wait(3 * DEADLINE), f"the repository did not start: {proc.poll()}"
        out.start()
        _stall_and_resume(proc, feed, out)
        out.stop()

        def stored() -> list[Any]:
            store = EventStore.open(str(store_path))
            try:
                return [s.event for s in store.search(EventQuery(kind="atna.*", limit=None))]
            finally:
                store.close()

        until(lambda: len([e for e in stored() if e.kind.startswith("atna.audit.")]) >= feed.count,
              "the repository's stored messages", 3 * DEADLINE)
        time.sleep(0.5)
        events = stored()
    finally:
        out.stop()
        spool.close()
        _stop(proc)
    assert [e.kind for e in events if e.kind == "atna.delivery.duplicate"] == []
    seqs = [delivery_of(e.details["syslog"].get("structured_data")) for e in events if e.kind.startswith("atna.audit.")]
    assert sorted(s[1] for s in seqs if s) == list(range(1, feed.count + 1))
    assert out.connections == 1


# ------------------------------------------------------------------------------ 3. slow, dead


class Slow:
    """A TLS 1.3 repository on HOST reading ``chunk`` bytes every ``pause`` seconds (0 bytes: never
    reading), with a small receive buffer so that its window shuts soon; ``lines`` counts the
    frames it read."""

    def __init__(self, pki: dict[str, Path], chunk: int, pause: float) -> None:
        self.chunk, self.pause = chunk, pause
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_3
        self.context.load_cert_chain(pki["cert"], pki["key"])
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)  # inherited by accepted ones
        self.listener.bind((HOST, 0))
        self.listener.listen(8)
        self.listener.settimeout(0.2)
        self.port: int = self.listener.getsockname()[1]
        self.data = bytearray()
        self.accepted = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._serve, daemon=True)]
        self._threads[0].start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            thread = threading.Thread(target=self._one, args=(raw,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _one(self, raw: socket.socket) -> None:
        raw.settimeout(DEADLINE)
        try:
            with self.context.wrap_socket(raw, server_side=True) as conn:
                while not self._stop.is_set():
                    if self.chunk:
                        got = conn.recv(self.chunk)
                        if not got:
                            return
                        self.data += got
                    self._stop.wait(self.pause)
        except OSError:
            return

    def seqs(self) -> list[int]:
        return [int(n) for n in re.findall(rb'seq="(\d+)"', bytes(self.data))]

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(DEADLINE)
        self.listener.close()


@pytest.fixture
def slow(pki: dict[str, Path]) -> Iterator[Slow]:
    repository = Slow(pki, 2048, 0.02)  # some 100 KB/s
    yield repository
    repository.close()


def test_a_repository_slower_than_the_feed_has_what_it_took_confirmed(
        tmp_path: Path, pki: dict[str, Path], slow: Slow) -> None:
    """The feed outruns the repository (the send queue is never empty): what it took is confirmed
    while the feed goes on, on one connection, each message read once."""
    spool = Spool(tmp_path / "spool.db")
    feed = Feed(spool)
    out = OutboundSender(spool, "site-a", HOST, slow.port, client(pki), server_name="localhost", retry=0.2,
                         retry_max=0.4, confirm_after=0.3)
    confirmed_while_feeding = 0
    try:
        out.start()
        end = time.monotonic() + 4.0
        while time.monotonic() < end:
            feed.burst(100)  # 200 KB every 0.1 s: far more than it reads
            time.sleep(0.1)
            confirmed_while_feeding = spool.delivered()
        assert spool.delivered() < feed.count  # it is still behind
    finally:
        out.stop()
        spool.close()
    assert confirmed_while_feeding > 0
    assert out.connections == 1 and slow.accepted == 1
    seqs = slow.seqs()
    assert seqs == list(range(1, len(seqs) + 1))  # in order, none twice
    assert len(seqs) >= confirmed_while_feeding


def test_a_slow_repository_is_not_taken_for_dead_but_a_shut_one_is(tmp_path: Path, pki: dict[str, Path]) -> None:
    """With ``stall_timeout`` 1 s: a repository reading a TLS record (16 KB) every 0.5 s keeps its
    connection while a write waits far longer than that; one that never reads is reconnected to,
    recorded."""
    slowly, shut = Slow(pki, 16384, 0.5), Slow(pki, 0, 0.2)
    try:
        for repository, expected in ((slowly, 1), (shut, 2)):
            spool = Spool(tmp_path / f"spool-{repository.port}.db")
            feed = Feed(spool)
            failures: list[Failure] = []
            out = OutboundSender(spool, "site-a", HOST, repository.port, client(pki), server_name="localhost",
                                 retry=0.2, retry_max=0.4, stall_timeout=1.0, on_failed=failures.append)
            try:
                feed.burst(300)  # 600 KB: some 20 s at 32 KB/s
                out.start()
                time.sleep(3.5)
            finally:
                out.stop()
                spool.close()
            assert repository.accepted >= expected
            if expected == 1:
                assert (repository.accepted, failures) == (1, []) and len(repository.data) > 20_000
            else:
                assert [f.reason for f in failures] == [
                    "the repository accepted no byte for 1 s (stall_timeout) while audit messages waited: taken "
                    "for dead, reconnecting"]
    finally:
        slowly.close()
        shut.close()


# ------------------------------------------------------------------------------ 4. the spool's bound


def test_the_spool_holds_back_at_its_bound_and_it_is_recorded(tmp_path: Path, pki: dict[str, Path]) -> None:
    """A repository down: the spool fills to ``max_bytes`` and holds the rest back (counted, never
    blocking); that is recorded when it starts, and with the count when the spool takes messages
    again after the repository came back and drained it."""
    message = b"<AuditMessage>%s</AuditMessage>" % (b"y" * 1000)
    spool = Spool(tmp_path / "spool.db", max_bytes=10 * len(message))
    failures: list[Failure] = []
    listener = socket.socket()
    listener.bind((HOST, 0))
    down_port = listener.getsockname()[1]
    listener.close()  # nobody listens there: refused
    out = OutboundSender(spool, "site-a", HOST, down_port, client(pki), server_name="localhost", retry=0.2,
                         retry_max=0.4, on_failed=failures.append)
    try:
        assert spool.add([message] * 7) == 0
        assert spool.add([message] * 5) == 2  # 3 fit; the last 2 are held back
        assert spool.add([b"tiny"]) == 1  # nothing is spooled after a held-back one
        assert (spool.pending(), spool.held, spool.size) == (10, 3, 10 * len(message))
        out.start()
        bound = f"max_spool_bytes ({10 * len(message)} bytes)"
        until(lambda: any(bound in f.reason for f in failures), "the bound recorded")
        assert spool.add([message]) == 1
        time.sleep(0.6)
        assert [f.reason for f in failures if bound in f.reason] == [
            f"the spool is at its bound, {bound}: new audit messages are held back, neither spooled nor sent "
            "(pacsguard's own event store keeps their events)"]
    finally:
        out.stop()
    spool.close()  # a restart while messages are held back: their count is kept
    spool = Spool(tmp_path / "spool.db", max_bytes=10 * len(message))
    assert (spool.held, spool.held_recorded, spool.full) == (4, True, True)
    slow = Slow(pki, 65536, 0.01)
    out = OutboundSender(spool, "site-a", HOST, slow.port, client(pki), server_name="localhost", retry=0.2,
                         retry_max=0.4, confirm_after=0.2, on_failed=failures.append)
    try:
        out.start()
        until(lambda: spool.pending() == 0, "the spool drained")
        assert spool.add([message]) == 0
        until(lambda: len(failures) >= 3, "the end of the hold recorded")
    finally:
        out.stop()
        spool.close()
        slow.close()
    assert failures[-1].reason == (
        f"4 audit messages were held back, neither spooled nor sent, while the spool was at its bound, {bound} "
        "(pacsguard's own event store keeps their events); it takes new ones again")
    assert slow.seqs() == list(range(1, 12))


def test_the_spool_bound_counts_what_is_already_in_it(tmp_path: Path) -> None:
    """A spool reopened (a restart) counts the messages it still holds against its bound."""
    spool = Spool(tmp_path / "spool.db", max_bytes=100)
    assert spool.add([b"a" * 60]) == 0
    spool.close()
    spool = Spool(tmp_path / "spool.db", max_bytes=100)
    try:
        assert spool.size == 60 and spool.add([b"b" * 60]) == 1 and spool.add([b"c" * 40]) == 0
        spool.mark_delivered(1)
        assert spool.size == 40
    finally:
        spool.close()


def test_the_outbound_stall_and_bound_defaults_and_validation() -> None:
    out = AtnaConfig.model_validate({"outbound": {"host": "arr.example"}}).outbound
    assert out is not None and (out.stall_timeout, out.max_spool_bytes) == (60.0, 256 * 1024 * 1024)
    for key, value, words in (("stall_timeout", 0, "greater than 0"), ("max_spool_bytes", 1000, "1048576")):
        with pytest.raises(ConfigError) as caught:
            parse_config(f"atna:\n  enabled: true\n  outbound: {{host: arr.example, {key}: {value}}}\n")
        assert [p.key for p in caught.value.problems] == [f"atna.outbound.{key}"]
        assert words in caught.value.problems[0].message
