"""Round 10, area R: one deadline from the start of a witness request, connecting included.

The witness client read the answer by one deadline (round 10, area D), but the TCP connect and the
TLS handshake before it were given the time left when connecting started, each bounded per wait:
a witness that accepted late and then trickled its ServerHello a byte at a time held a delivery or
`audit verify --witness` for up to twice the timeout, and through an HTTP proxy's CONNECT tunnel
the handshake had no bound at all (the socket was left blocking once the proxy's answer was read).
A witness that never accepted was reported "unreachable (timed out)", not as too slow. Now the
connect, the proxy's CONNECT, the TLS handshake (RFC 8446 4), the request and the answer
(RFC 9112 2.1) share the one deadline, `timeout`, and a witness given up on is named too slow.

The peers are real sockets on loopback: a Python TLS server (pacsguard.tls) behind a relay that
passes its bytes on one every STEP seconds, a listener whose backlog is full, a CONNECT proxy,
and a listener that accepts and never reads."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_r10D_slow_witness import _store, retried_later, witness_pki

from pacsguard.store.keys import public_path
from pacsguard.tls import client_context, server_context
from pacsguard.witness.errors import WitnessError
from pacsguard.witness.http import WitnessClient
from peers.listener import Listener, read_head
from store_helpers import make_events
from test_cli import run

HOST = "127.0.118.11"  # this helper's loopback range (round 10, area R)
PROXY_HOST = "127.0.118.12"
TLS_HOST = "127.0.118.13"
#: The client's timeout in the tests that call it directly.
TIMEOUT = 1.5
#: A byte every STEP seconds: every wait of the handshake is far shorter than any timeout.
STEP = 0.1
#: How long a relay trickles at most: far past every deadline the tests expect.
TRICKLE_FOR = 30.0


def _pipe(source: socket.socket, sink: socket.socket, step: float, stop: threading.Event) -> None:
    """Copies ``source`` to ``sink``; with ``step`` one byte every ``step`` seconds."""
    end = time.monotonic() + TRICKLE_FOR
    try:
        while not stop.is_set() and time.monotonic() < end:
            data = source.recv(1 if step else 65536)
            if not data:
                break
            sink.sendall(data)
            if step:
                time.sleep(step)
    except OSError:
        pass  # the client gave up: what the tests expect
    finally:
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class TlsWitness(Listener):
    """A real TLS server on TLS_HOST: it does the handshake, then holds the connection."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.handshakes = 0
        super().__init__(TLS_HOST, join_for=0)  # each connection is held open: not waited for

    def serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(TRICKLE_FOR)
            with self.context.wrap_socket(conn, server_side=True) as tls:
                self.handshakes += 1
                tls.recv(1)  # then nothing: the tests are about what comes before
        except OSError:
            return


class Relay:
    """A listener on ``host`` that passes each connection on to ``target``, the target's bytes one
    every STEP seconds. Its backlog is filled (`fill`) so that connects to it are not accepted;
    it starts accepting after ``accept_after`` seconds (never with None)."""

    def __init__(self, host: str, target: tuple[str, int], accept_after: float | None = 0.0) -> None:
        self.target = target
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind((host, 0))
        self.listener.listen(0)
        self.port = self.listener.getsockname()[1]
        self.fillers: list[socket.socket] = []
        self.stop = threading.Event()
        self.accept_after = accept_after
        self.accepted = 0
        self.threads: list[threading.Thread] = []

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.listener.getsockname()[:2]
        return str(host), int(port)

    def fill(self) -> None:
        """Connects until a connect is not answered: the listen queue is full, and the kernel
        drops further SYNs (the client retries them after 1 s, 3 s...)."""
        for _ in range(16):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.settimeout(0.3)
            self.fillers.append(filler)
            try:
                filler.connect(self.address)
            except TimeoutError:
                return
        raise AssertionError("the relay's listen queue never filled: connects still answered")

    def start(self) -> None:
        thread = threading.Thread(target=self._accept, daemon=True)
        self.threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        if self.accept_after is None:
            self.stop.wait(TRICKLE_FOR)
            return
        self.stop.wait(self.accept_after)
        for filler in self.fillers:
            filler.close()
        self.listener.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._relay(conn)

    def _relay(self, conn: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            conn.close()
            return
        conn.settimeout(TRICKLE_FOR)
        upstream.settimeout(TRICKLE_FOR)
        for args in ((conn, upstream, 0.0), (upstream, conn, STEP)):
            thread = threading.Thread(target=_pipe, args=(*args, self.stop), daemon=True)
            self.threads.append(thread)
            thread.start()

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        for filler in self.fillers:
            filler.close()
        for thread in self.threads:
            thread.join(STEP + 6)


class ConnectProxy(Listener):
    """An HTTP proxy on PROXY_HOST that answers CONNECT (RFC 9110 9.3.6) at once and then passes
    the tunnel's bytes both ways unchanged."""

    def __init__(self) -> None:
        self.tunnels: list[str] = []
        super().__init__(PROXY_HOST)

    def serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            head = read_head(conn)
            target = head.split(b" ")[1].decode()
            host, _, port = target.rpartition(":")
            upstream = socket.create_connection((host, int(port)), timeout=5)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        except OSError:
            conn.close()
            return
        self.tunnels.append(target)
        conn.settimeout(TRICKLE_FOR)
        upstream.settimeout(TRICKLE_FOR)
        for args in ((conn, upstream), (upstream, conn)):
            thread = threading.Thread(target=_pipe, args=(*args, 0.0, self.stop), daemon=True)
            self.threads.append(thread)
            thread.start()



@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    return witness_pki(tmp_path, HOST)


@pytest.fixture
def tls_witness(pki: dict[str, Path]) -> Iterator[TlsWitness]:
    server = TlsWitness(server_context(pki["cert"], pki["key"]))
    try:
        yield server
    finally:
        server.close()


def _relay(tls_witness: TlsWitness, accept_after: float | None, fill: bool) -> Relay:
    relay = Relay(HOST, (TLS_HOST, tls_witness.port), accept_after)
    if fill:
        relay.fill()
    relay.start()
    return relay


def _held_within(client: WitnessClient) -> tuple[float, WitnessError]:
    started = time.monotonic()
    with pytest.raises(WitnessError) as raised:
        client.held("0123456789abcdef")
    return time.monotonic() - started, raised.value


def test_a_trickled_tls_handshake_ends_at_the_deadline(tls_witness: TlsWitness, pki: dict[str, Path]) -> None:
    """A witness that accepts at once and sends its ServerHello and certificate a byte at a time:
    given up at the timeout, named as too slow in its handshake."""
    relay = _relay(tls_witness, 0.0, fill=False)
    try:
        client = WitnessClient(f"https://{HOST}:{relay.port}", context=client_context(ca_file=pki["ca"]),
                               timeout=TIMEOUT)
        took, error = _held_within(client)
    finally:
        relay.close()
    assert took < TIMEOUT + 0.5, f"given up after {took:.1f} s, not at the {TIMEOUT} s deadline: {error}"
    assert str(error) == f"witness https://{HOST}:{relay.port}: too slow: no TLS handshake within 1.5 s"
    assert relay.accepted == 1 and tls_witness.handshakes == 0


def test_a_late_accept_and_a_trickled_handshake_share_one_deadline(tls_witness: TlsWitness,
                                                                   pki: dict[str, Path]) -> None:
    """The connect waits about a second (the listen queue full: the SYN is retried), then the
    handshake trickles: both together are given up at the timeout, not at the connect's time
    plus another timeout."""
    relay = _relay(tls_witness, 0.3, fill=True)
    try:
        client = WitnessClient(f"https://{HOST}:{relay.port}", context=client_context(ca_file=pki["ca"]),
                               timeout=TIMEOUT)
        took, error = _held_within(client)
    finally:
        relay.close()
    assert relay.accepted >= 1, "the SYN retried after a second was not accepted: no handshake was tried"
    assert took < TIMEOUT + 0.5, f"given up after {took:.1f} s, not at the {TIMEOUT} s deadline: {error}"
    assert str(error) == f"witness https://{HOST}:{relay.port}: too slow: no TLS handshake within 1.5 s"


def test_a_witness_that_never_accepts_is_too_slow(tls_witness: TlsWitness) -> None:
    """Its listen queue full, the witness never completes the TCP handshake: given up at the
    timeout, and said as too slow (the witness is there, it does not answer in time)."""
    relay = _relay(tls_witness, None, fill=True)
    try:
        took, error = _held_within(WitnessClient(f"http://{HOST}:{relay.port}", timeout=TIMEOUT))
    finally:
        relay.close()
    assert took < TIMEOUT + 0.5, f"given up after {took:.1f} s: {error}"
    assert str(error) == f"witness http://{HOST}:{relay.port}: too slow: not connected within 1.5 s"


def test_a_handshake_through_a_proxy_tunnel_is_bounded(tls_witness: TlsWitness, pki: dict[str, Path],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """https:// through an HTTP proxy (https_proxy): the proxy answers CONNECT at once, the witness
    behind it trickles its handshake. The handshake was left without any timeout once the proxy's
    answer was read; it now ends at the one deadline."""
    relay = _relay(tls_witness, 0.0, fill=False)
    proxy = ConnectProxy()
    monkeypatch.setenv("https_proxy", f"http://{PROXY_HOST}:{proxy.port}")
    for name in ("no_proxy", "NO_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    result: list[tuple[float, WitnessError]] = []
    client = WitnessClient(f"https://{HOST}:{relay.port}", context=client_context(ca_file=pki["ca"]),
                           timeout=TIMEOUT)
    # in a thread: on the old code the call is held for as long as the relay trickles
    caller = threading.Thread(target=lambda: result.append(_held_within(client)), daemon=True)
    try:
        caller.start()
        caller.join(TIMEOUT + 3)
        assert not caller.is_alive(), f"still in the TLS handshake through the proxy {TIMEOUT + 3} s later"
    finally:
        proxy.close()
        relay.close()
        caller.join(TRICKLE_FOR)
    took, error = result[0]
    assert proxy.tunnels == [f"{HOST}:{relay.port}"]
    assert took < TIMEOUT + 0.5, f"given up after {took:.1f} s: {error}"
    assert str(error) == f"witness https://{HOST}:{relay.port}: too slow: no TLS handshake within 1.5 s"


def test_a_delivery_to_a_witness_slow_to_handshake_is_retried_later(tls_witness: TlsWitness,
                                                                    pki: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    """The courier gives the checkpoint up at the deadline, records the outage once naming the
    witness as too slow, keeps the checkpoint queued and connects again after its backoff."""
    relay = _relay(tls_witness, 0.0, fill=False)
    url = f"https://{HOST}:{relay.port}"
    try:
        outage = retried_later(WitnessClient(url, "t" * 64, client_context(ca_file=pki["ca"]), timeout=1.0),
                               lambda: relay.accepted, tmp_path, 4)
        assert f"witness {url}: too slow: no TLS handshake within 1 s" in outage.message
    finally:
        relay.close()


def test_audit_verify_names_a_witness_that_never_accepts(tls_witness: TlsWitness, tmp_path: Path) -> None:
    """The administrator's command: exit 2 within the 10 s timeout and a margin, one line naming
    the witness as too slow to connect; no traceback."""
    es, key = _store(tmp_path)
    es.append(make_events(3))
    assert es.checkpoint() is not None
    es.close()
    relay = _relay(tls_witness, None, fill=True)
    url = f"http://{HOST}:{relay.port}"
    try:
        started = time.monotonic()
        proc = run("audit", "verify", "--store", str(tmp_path / "site.db"), "--key", str(public_path(key)),
                   "--witness", url, cwd=tmp_path, check_code=2)
        took = time.monotonic() - started
    finally:
        relay.close()
    assert took < 13, f"audit verify took {took:.1f} s: {proc.stderr}"
    assert f"witness {url}: too slow: not connected within 10 s" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_witness_that_does_not_read_the_request_is_too_slow() -> None:
    """A witness that accepts and then reads nothing (its receive buffer small): the request's
    write stalls once the buffers are full, and is given up at the deadline as too slow."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited by the accepted socket
    listener.bind((HOST, 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    acceptor = threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True)
    acceptor.start()
    client = WitnessClient(f"http://{HOST}:{port}", "t" * 64, timeout=TIMEOUT)
    started = time.monotonic()
    try:
        with pytest.raises(WitnessError) as raised:
            client.request("POST", "0123456789abcdef", body={"pad": "a" * 8_000_000})
        took = time.monotonic() - started
    finally:
        acceptor.join(5)
        for conn in accepted:
            conn.close()
        listener.close()
    assert took < TIMEOUT + 0.5, f"given up after {took:.1f} s: {raised.value}"
    assert str(raised.value) == f"witness http://{HOST}:{port}: too slow: the request not taken within 1.5 s"
