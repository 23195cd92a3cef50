"""Round 6 fixes of the outbound ATNA feed (issue 18): reconnections back off exponentially with
jitter and a failing streak is recorded once per reason with its count of attempts; the TLS
alert a repository sends is kept by the idle look at a connection and named in the recorded
failure; and each message reaches a real repository (Debian's rsyslogd, gtls and ossl) exactly
once across its refusing pacsguard's client certificate, being fixed and restarted.

Real peers only, on 127.0.62.0/24, ports 21000-21999: Python's ssl module (OpenSSL) as a TLS 1.3
repository, plain sockets for connections that fail, and rsyslogd."""

from __future__ import annotations

import collections
import datetime as dt
import logging
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from receiver import DEADLINE
from test_senders_real import RSYSLOGD

from pacsguard.atna.config import AtnaConfig
from pacsguard.atna.outbound.sender import EARLY_CLOSE, Failure, OutboundSender
from pacsguard.atna.outbound.spool import Spool
from pacsguard.config.loader import ConfigError, parse_config
from pacsguard.runtime.peer import probe
from pacsguard.tls import make_ca, make_cert
from peers.dcmtk import free_port_in

HOST = "127.0.62.1"
_ports = iter(range(21000 + (time.monotonic_ns() // 1000) % 500, 22000))


def port() -> int:
    """A port of this module's range free on HOST right now (bound and released to check)."""
    return free_port_in(HOST, _ports)


def until(check: Callable[[], Any], what: str, seconds: float = DEADLINE) -> Any:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if found := check():
            return found
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """The repository's CA and server certificate, pacsguard's client certificate of that CA, one
    of another CA, and one of the repository's CA that is not valid yet."""
    ca, ca_key = make_ca(tmp_path / "pki", "Repository CA", 2)
    cert, key = make_cert(tmp_path / "pki", "localhost", ca, ca_key, hosts=["localhost", HOST], server=True, days=1)
    good, good_key = make_cert(tmp_path / "pki", "pacsguard-site", ca, ca_key, client=True, days=1)
    other_ca, other_key = make_ca(tmp_path / "other", "Another CA", 2)
    bad, bad_key = make_cert(tmp_path / "other", "pacsguard-site", other_ca, other_key, client=True, days=1)
    future, future_key = _not_yet_valid(tmp_path / "future", ca, ca_key)
    return {"ca": ca, "cert": cert, "key": key, "good": good, "good_key": good_key, "bad": bad, "bad_key": bad_key,
            "other_ca": other_ca, "future": future, "future_key": future_key}


def _not_yet_valid(out: Path, ca_path: Path, ca_key_path: Path) -> tuple[Path, Path]:
    """A client certificate of the repository's CA valid only from tomorrow: OpenSSL answers it
    with a "bad certificate" alert (X509_V_ERR_CERT_NOT_YET_VALID)."""
    out.mkdir()
    ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    start = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "site")]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (out / "site.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "site.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    return out / "site.crt", out / "site.key"


def client(pki: dict[str, Path], which: str | None, *, tls12: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    if which:
        context.load_cert_chain(pki[which], pki[f"{which}_key"])
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


class Repository:
    """A listener on HOST whose ``mode`` decides each connection: "close" (the ClientHello read,
    then closed: the TLS handshake fails), "garbage" (answered with bytes that are not TLS), "tls" (a
    TLS 1.3 server asking for a client certificate of its CA, holding the connection open while
    the client keeps it). ``accepted``: when each connection came."""

    def __init__(self, pki: dict[str, Path], mode: str = "close") -> None:
        self.mode = mode
        self.accepted: list[float] = []
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_3
        self.context.load_cert_chain(pki["cert"], pki["key"])
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.load_verify_locations(pki["ca"])
        self.port = port()
        self.server = socket.create_server((HOST, self.port))
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        turn = 0
        while True:
            try:
                raw, _ = self.server.accept()
            except OSError:
                return
            self.accepted.append(time.monotonic())
            mode = self.mode if self.mode != "alternate" else ("close", "garbage")[turn % 2]
            turn += 1
            threading.Thread(target=self._one, args=(raw, mode), daemon=True).start()

    def _one(self, raw: socket.socket, mode: str) -> None:
        try:
            if mode in ("close", "garbage"):
                # The ClientHello read first: closing with it unread would be a reset, not an EOF.
                raw.settimeout(5)
                raw.recv(65536)
            if mode == "garbage":
                raw.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            elif mode == "tls":
                with self.context.wrap_socket(raw, server_side=True) as conn:
                    while conn.recv(65536):
                        pass
        except OSError:
            pass  # the client's certificate refused (the alert is sent), or the client left
        finally:
            raw.close()

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def repository(pki: dict[str, Path]) -> Iterator[Repository]:
    repo = Repository(pki)
    yield repo
    repo.close()


def sender(spool: Spool, port: int, context: ssl.SSLContext, failures: list[Failure], **kwargs: Any) -> OutboundSender:
    return OutboundSender(spool, "site-a", HOST, port, context, server_name="localhost", on_failed=failures.append,
                          **kwargs)


# ------------------------------------------------------------------------------ 1. backoff


def test_reconnections_back_off_exponentially_with_jitter_up_to_retry_max(
        tmp_path: Path, pki: dict[str, Path], repository: Repository) -> None:
    """A repository that fails every connection: once a new attempt every ``retry`` seconds for
    ever (17,000 a day at 5 s). Now the wait doubles from ``retry`` to ``retry_max``, each a random
    part between half and all of it, and the streak is recorded once, as its first attempt."""
    spool = Spool(tmp_path / "spool.db")
    spool.add([b"<AuditMessage>m</AuditMessage>"])
    failures: list[Failure] = []
    out = sender(spool, repository.port, client(pki, "good"), failures, retry=0.05, retry_max=0.4)
    out.start()
    try:
        until(lambda: len(repository.accepted) >= 9, "nine attempts")
    finally:
        out.stop()
    gaps = [b - a for a, b in zip(repository.accepted, repository.accepted[1:], strict=False)]
    ceilings = [min(0.4, 0.05 * 2**i) for i in range(len(gaps))]
    # Each wait is at least half its ceiling (the machine may only make it longer).
    assert all(gap >= ceiling / 2 - 0.005 for gap, ceiling in zip(gaps, ceilings, strict=True)), gaps
    assert sum(gaps[:8]) >= sum(c / 2 for c in ceilings[:8]) > 0.6  # the old 0.05 s would be 0.4 in all
    capped = gaps[3:8]  # ceilings of 0.4: jittered, not one fixed period
    assert max(capped) - min(capped) > 0.01, capped
    assert len(failures) == 1 and failures[0].attempts == 1 and out.attempts == len(repository.accepted)
    assert spool.pending() == 1 and spool.delivered() == 0  # the spool keeps what waits
    spool.close()


def test_the_backoff_starts_again_from_retry_once_a_connection_worked(
        tmp_path: Path, pki: dict[str, Path], repository: Repository, caplog: pytest.LogCaptureFixture) -> None:
    """After a working connection (open ``confirm_after`` seconds) the failed attempts count from
    zero: the next outage is retried after ``retry`` again; the log says after how many failed
    attempts it connected."""
    caplog.set_level(logging.INFO, logger="pacsguard.atna.outbound")
    spool = Spool(tmp_path / "spool.db")
    spool.add([b"<AuditMessage>m%d</AuditMessage>" % i for i in range(3)])
    failures: list[Failure] = []
    out = sender(spool, repository.port, client(pki, "good"), failures, retry=0.05, retry_max=0.2,
                 confirm_after=0.3)
    out.start()
    try:
        until(lambda: out.attempts >= 5, "five failed attempts")
        assert out.delay() >= 0.1  # half of retry_max: backing off
        repository.mode = "tls"
        until(lambda: spool.delivered() == 3 and out.failing is None, "delivery over a working connection")
        assert out.attempts == 0 and out.delay() <= 0.05
    finally:
        out.stop()
        spool.close()
    again = [r.getMessage() for r in caplog.records if "connected again" in r.getMessage()]
    assert len(again) == 1 and re.search(r"\((\d+) failed attempts\)", again[0])
    assert int(re.search(r"\((\d+) failed attempts\)", again[0]).group(1)) >= 5  # type: ignore[union-attr]
    assert len(failures) == 1


def test_alternating_failures_are_recorded_once_each_with_their_attempt(
        tmp_path: Path, pki: dict[str, Path], repository: Repository) -> None:
    """Two failures taking turns (one of two backends down behind one address): once one Event per
    attempt, as each was "a new reason". Now each reason once per streak, with its attempt."""
    repository.mode = "alternate"
    spool = Spool(tmp_path / "spool.db")
    failures: list[Failure] = []
    out = sender(spool, repository.port, client(pki, "good"), failures, retry=0.02, retry_max=0.05)
    out.start()
    try:
        until(lambda: out.attempts >= 8, "eight failed attempts")
    finally:
        out.stop()
        spool.close()
    assert [f.attempts for f in failures] == [1, 2], [f.reason for f in failures]
    assert len({f.reason for f in failures}) == 2 and all(f.reason.startswith("TLS") for f in failures)


def test_stopping_is_prompt_while_backing_off(tmp_path: Path, pki: dict[str, Path], repository: Repository) -> None:
    spool = Spool(tmp_path / "spool.db")
    out = sender(spool, repository.port, client(pki, "good"), [], retry=30, retry_max=300)
    out.start()
    until(lambda: out.attempts >= 1, "a failed attempt")
    started = time.monotonic()
    out.stop(5)
    assert time.monotonic() - started < 2 and not out._thread.is_alive()
    spool.close()


@pytest.mark.parametrize(("keys", "key", "words"), [
    ("retry: 10, retry_max: 5", "atna.outbound.retry_max", "shorter than retry"),
    ("retry_max: 0", "atna.outbound.retry_max", "greater than 0"),
    ("retry_max: 100000", "atna.outbound.retry_max", "less than or equal to 86400"),
])
def test_the_backoff_keys_are_validated_naming_the_key(keys: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"atna:\n  enabled: true\n  outbound: {{host: arr.example, {keys}}}\n")
    assert [p.key for p in caught.value.problems] == [key]
    assert words in caught.value.problems[0].message


def test_the_backoff_defaults() -> None:
    outbound = AtnaConfig.model_validate({"outbound": {"host": "arr.example"}}).outbound
    assert outbound is not None and (outbound.retry, outbound.retry_max) == (5.0, 300.0)


# ------------------------------------------------------------------------------ 2. the alert's name


@pytest.mark.parametrize(("which", "alert"), [(None, "certificate required"), ("bad", "unknown ca"),
                                              ("future", "bad certificate")])
def test_the_idle_look_keeps_the_alert_a_repository_sent(
        pki: dict[str, Path], repository: Repository, which: str | None, alert: str) -> None:
    """In TLS 1.3 a repository refusing the client's certificate sends its alert after the
    client's handshake completed: the next look at the idle connection sees it. ``probe`` said
    "reset" and dropped the reason; ``look`` keeps the error and ``tls_alert`` names it."""
    from pacsguard.runtime.peer import look, tls_alert

    repository.mode = "tls"
    with socket.create_connection((HOST, repository.port), timeout=5) as raw, \
            client(pki, which).wrap_socket(raw, server_hostname="localhost") as conn:
        assert conn.version() == "TLSv1.3"
        seen = until(lambda: (s := look(conn)).state != "quiet" and s, "the alert")
        assert seen.state == "reset" and seen.error is not None and tls_alert(seen.error) == alert
    # What probe's callers (the syslog sink, store-and-forward) see of the same refusal: unchanged.
    with socket.create_connection((HOST, repository.port), timeout=5) as raw, \
            client(pki, which).wrap_socket(raw, server_hostname="localhost") as conn:
        assert until(lambda: (state := probe(conn)) != "quiet" and state, "the alert") == "reset"


def test_the_idle_look_without_an_alert() -> None:
    """An orderly end is "eof" with no error, a closed socket "reset" with none; a reset has its
    OS error, and ``tls_alert`` names only alerts."""
    from pacsguard.runtime.peer import look, tls_alert

    server = socket.create_server((HOST, port()))
    with socket.create_connection(server.getsockname(), timeout=5) as conn:
        accepted, _ = server.accept()
        assert look(conn).state == "quiet"
        accepted.close()
        assert until(lambda: look(conn).state == "eof", "the end") and look(conn).error is None
    closed = socket.socket()
    closed.close()
    assert (look(closed).state, look(closed).error) == ("reset", None)
    assert tls_alert(ConnectionResetError(104, "Connection reset by peer")) is None
    server.close()


@pytest.mark.parametrize(("which", "tls12", "reason"), [
    (None, False, "TLS alert from the repository: certificate required (it refuses pacsguard's client certificate)"),
    ("bad", False, "TLS alert from the repository: unknown ca (it refuses pacsguard's client certificate)"),
    ("future", False, "TLS alert from the repository: bad certificate (it refuses pacsguard's client certificate)"),
    ("good", True, "TLS alert from the repository: protocol version"),
])
def test_the_recorded_failure_names_the_alert(tmp_path: Path, pki: dict[str, Path], repository: Repository,
                                               which: str | None, tls12: bool, reason: str) -> None:
    """Each refusal is one atna.outbound.failed naming the alert (the repository's own certificate
    verified: ``certificate`` is false), however many attempts, and nothing counts as delivered."""
    repository.mode = "tls"
    spool = Spool(tmp_path / "spool.db")
    spool.add([b"<AuditMessage>m</AuditMessage>"])
    failures: list[Failure] = []
    out = sender(spool, repository.port, client(pki, which, tls12=tls12), failures, retry=0.05, retry_max=0.1,
                 confirm_after=2.0)
    out.start()
    try:
        until(lambda: out.attempts >= 3, "three failed attempts")
    finally:
        out.stop()
    assert [(f.reason, f.certificate, f.attempts) for f in failures] == [(reason, False, 1)]
    assert spool.delivered() == 0 and spool.pending() == 1
    spool.close()


# ------------------------------------------------------------------------------ 3. exactly once, rsyslog


def _wait_listening(proc: subprocess.Popen[bytes], port: int, console: Path, host: str = HOST) -> None:
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            assert proc.poll() is None, console.read_text(errors="replace")
            time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"rsyslogd did not listen: {console.read_text(errors='replace')}")


def _rsyslog(base: Path, driver: str, ca: Path, pki: dict[str, Path], port: int, peer: str,
             received: Path, *, host: str = HOST, settings: str = "") -> subprocess.Popen[bytes]:
    """rsyslogd receiving RFC 5425 TLS (``driver``) on ``host`` with mutual TLS: client
    certificates must chain to ``ca`` and name ``peer``; each message's raw text is one line of
    ``received``. ``settings``: more parameters of its global() (maxMessageSize="8k")."""
    if not Path(RSYSLOGD).exists() or not list(Path("/usr/lib").glob(f"*/rsyslog/lmnsd_{driver}.so")):
        pytest.fail(f"rsyslog's {driver} driver is missing: apt-get install rsyslog rsyslog-gnutls rsyslog-openssl")
    (base / "work").mkdir(parents=True)
    conf = base / "rsyslog.conf"
    conf.write_text(f'''
global(workDirectory="{base}/work" DefaultNetstreamDriverCAFile="{ca}" {settings}
       DefaultNetstreamDriverCertFile="{pki["cert"]}" DefaultNetstreamDriverKeyFile="{pki["key"]}")
module(load="imtcp" StreamDriver.Name="{driver}" StreamDriver.Mode="1" StreamDriver.AuthMode="x509/name"
       PermittedPeer=["{peer}"])
template(name="raw" type="string" string="%rawmsg%\\n")
ruleset(name="in") {{ action(type="omfile" file="{received}" template="raw") }}
input(type="imtcp" port="{port}" address="{host}" ruleset="in")
''')
    console = base / "console.log"
    with console.open("wb") as out:
        proc = subprocess.Popen([RSYSLOGD, "-n", "-f", str(conf), "-i", str(base / "pid")], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    _wait_listening(proc, port, console, host)
    return proc


def assert_each_once(received: Path, numbered: re.Pattern[bytes], count: int) -> None:
    """Every line of ``received`` carries a message number ``numbered`` finds (twice, as the test
    messages repeat it), and messages 1 to ``count`` are each there exactly once."""
    lines = received.read_bytes().splitlines()
    numbers = [(int(m.group(1)), int(m.group(2))) for m in map(numbered.search, lines) if m]
    assert len(numbers) == len(lines), lines[:3]
    copies = collections.Counter(numbers)
    assert {k: v for k, v in copies.items() if v > 1} == {}
    assert sorted(copies) == [(n, n) for n in range(1, count + 1)]


def _stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL after DEADLINE; a process stopped with SIGSTOP is continued first (it
    cannot act on SIGTERM otherwise); one already gone is left alone."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGCONT)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(DEADLINE)


SEQ = re.compile(rb'seq="(\d+)"\] <AuditMessage>m(\d+)</AuditMessage>$')


@pytest.mark.parametrize(("driver", "refusal", "reason"), [
    ("gtls", "name", EARLY_CLOSE),  # PermittedPeer names someone else: closed after the handshake
    ("gtls", "ca", EARLY_CLOSE),  # another CA: GnuTLS closes without an alert
    ("ossl", "ca", "TLS alert from the repository: unknown ca (it refuses pacsguard's client certificate)"),
])
def test_each_message_reaches_rsyslog_once_across_a_refused_certificate(
        tmp_path: Path, pki: dict[str, Path], driver: str, refusal: str, reason: str) -> None:
    """rsyslog first refuses pacsguard's client certificate (TLS 1.3, after the client's handshake)
    while bursts are spooled, is then fixed (the name permitted, pacsguard's CA trusted) and
    restarted while more come: rsyslog keeps no delivery numbers, so every line it writes counts;
    each message is there exactly once, in order, and none arrived while it refused."""
    repo_port = port()
    received = tmp_path / "received.log"
    context = client(pki, "bad" if refusal == "ca" else "good")
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    both = tmp_path / "both-cas.pem"
    both.write_bytes(pki["ca"].read_bytes() + pki["other_ca"].read_bytes())
    refusing = _rsyslog(tmp_path / "refusing", driver, pki["ca"], pki, repo_port,
                        "someone-else" if refusal == "name" else "pacsguard-site", received)
    spool = Spool(tmp_path / "spool.db")
    failures: list[Failure] = []
    out = sender(spool, repo_port, context, failures, retry=0.1, retry_max=0.4)
    count = 0

    def burst(n: int) -> None:
        nonlocal count
        spool.add([b"<AuditMessage>m%d</AuditMessage>" % (count + i + 1) for i in range(n)])
        count += n

    fixed: subprocess.Popen[bytes] | None = None
    try:
        out.start()
        for _ in range(4):
            burst(10)
            time.sleep(0.3)
        until(lambda: out.connections >= 3 and failures, "refused connections")
        burst(10)
        _stop(refusing)
        assert not received.exists() or received.read_bytes() == b""  # nothing got in while refused
        burst(5)  # while the repository is down
        fixed = _rsyslog(tmp_path / "fixed", driver, both, pki, repo_port, "pacsguard-site", received)
        for _ in range(3):
            burst(7)
            time.sleep(0.2)
        until(lambda: spool.delivered() == count, f"all {count} messages delivered", 3 * DEADLINE)
        until(lambda: received.exists() and len(received.read_bytes().splitlines()) >= count, "rsyslog's lines")
    finally:
        out.stop()
        spool.close()
        _stop(refusing)
        if fixed is not None:
            time.sleep(0.5)  # a resend would come within confirm_after; give it time to show
            _stop(fixed)
    assert_each_once(received, SEQ, count)
    assert [f.reason for f in failures][0] == reason and failures[0].attempts == 1
