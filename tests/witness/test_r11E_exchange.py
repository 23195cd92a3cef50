"""Round 11, area E: the witness client's HTTP exchange, done with public calls only.

The client drove urllib and bounded each step through private parts of http.client (its
connection hook `_create_connection`, its `_tunnel_host` and `_context`, the response's `fp`),
which a Python release may rename. It now opens the connection itself (lookup, TCP, a proxy's
CONNECT, TLS with the configured CA) and speaks the one HTTP/1.1 exchange the witness API needs
(witness/exchange.py). Two things urllib did are gone with it, each shown here failing before:

* a redirect was followed: a POST answered 302 went on as a GET to wherever Location pointed,
  with the log's bearer token (`Authorization: Bearer ...`) for that other host to keep;
* a peer answering no HTTP (an SSH banner: a witness URL with the wrong port) raised
  http.client.BadStatusLine out of the client, and `audit verify --witness` ended as an internal
  error ("a bug in pacsguard", exit 70).

What must not change is kept by real peers: a pacsguard witness service reached through an HTTP
proxy (https:// by CONNECT with the proxy's credentials, http:// in absolute form), verified with
the configured CA, its countersignature checked; no_proxy skipping the proxy."""

from __future__ import annotations

import ast
import base64
import selectors
import socket
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_r10D_slow_witness import _store, witness_pki

import pacsguard.witness
from pacsguard.config.schema import SecretRef
from pacsguard.store import EventStore
from pacsguard.store.keys import public_path
from pacsguard.tls import client_context
from pacsguard.witness.build import witness_server
from pacsguard.witness.config import WitnessedLog, WitnessServiceConfig
from pacsguard.witness.errors import WitnessError
from pacsguard.witness.http import WitnessClient
from pacsguard.witness.push import HttpWitness
from peers.listener import Listener, read_head
from store_helpers import make_events
from test_cli import run

HOST = "127.0.115.11"  # this helper's loopback range (round 11, area E)
OTHER_HOST = "127.0.115.12"
PROXY_HOST = "127.0.115.13"
TOKEN = "t0ken-of-the-site-r11e"
LOG = "0123456789abcdef"
#: The modules of the client's exchange: none may read a private attribute it does not define.
CLIENT_MODULES = ("http.py", "exchange.py", "route.py", "lookup.py", "deadline.py")


class Answering(Listener):
    """Reads each request's head, keeps it, sends ``answer`` and hangs up."""

    def __init__(self, host: str, answer: bytes) -> None:
        self.answer = answer
        self.heads: list[bytes] = []
        super().__init__(host)

    def serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                self.heads.append(read_head(conn))
                conn.sendall(self.answer)
            except OSError:
                return


class Proxy(Listener):
    """An HTTP proxy on PROXY_HOST: CONNECT (RFC 9110 9.3.6) opens a tunnel; a request in absolute
    form (RFC 9112 3.2.2) is passed on in origin form. ``seen`` holds each request's method and
    target, and its Proxy-Authorization."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []
        super().__init__(PROXY_HOST)

    def serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                head = read_head(conn)
                line, _, rest = head.partition(b"\r\n")
                method, target, version = line.decode().split(" ")
                fields = dict(f.split(": ", 1) for f in rest.decode().split("\r\n") if ": " in f)
                self.seen.append((f"{method} {target}", fields.get("Proxy-Authorization")))
                if method == "CONNECT":
                    host, _, port = target.rpartition(":")
                    upstream = socket.create_connection((host, int(port)), timeout=5)
                    conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                else:
                    url = urllib.parse.urlsplit(target)
                    upstream = socket.create_connection((url.hostname, url.port), timeout=5)
                    upstream.sendall(f"{method} {url.path}?{url.query} {version}\r\n".encode() + rest)
            except (OSError, ValueError):
                return
            with upstream:
                _pipe(conn, upstream)


def _pipe(one: socket.socket, other: socket.socket) -> None:
    """Both ways until either side closes (at most 5 s)."""
    peer = {one: other, other: one}
    end = time.monotonic() + 5
    with selectors.DefaultSelector() as selector:
        for sock in peer:
            selector.register(sock, selectors.EVENT_READ)
        while time.monotonic() < end:
            for key, _ in selector.select(0.2):
                data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                if not data:
                    return
                peer[key.fileobj].sendall(data)  # type: ignore[index]


def test_a_redirect_is_not_followed_and_the_token_stays_with_the_witness() -> None:
    """A POST answered 302 (a misconfigured front, or a hostile one) is not sent on: the answer
    comes back as it is, and the host Location names never sees the log's token."""
    other = Answering(OTHER_HOST, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
    moved = f"http://{OTHER_HOST}:{other.port}/collect".encode()
    redirecting = Answering(HOST, b"HTTP/1.1 302 Found\r\nLocation: " + moved + b"\r\nContent-Length: 0\r\n\r\n")
    try:
        reply = WitnessClient(f"http://{HOST}:{redirecting.port}", TOKEN, timeout=3).request(
            "POST", LOG, {"checkpoint": {}})
    finally:
        redirecting.close()
        other.close()
    assert other.heads == [], f"the redirect was followed: {other.heads[0][:300]!r}"
    assert reply.status == 302
    assert reply.body["error"].startswith(f"it redirects to {moved.decode()}; a redirect is not followed")
    assert f"Authorization: Bearer {TOKEN}".encode() in redirecting.heads[0]


HELD = b'{"log": "L", "checkpoints": [{"a": 1}]}'


def _chunk(data: bytes, extension: bytes = b"") -> bytes:
    return b"%x%s\r\n%s\r\n" % (len(data), extension, data)


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + _chunk(HELD[:9], b";x=y") + _chunk(HELD[9:])
    + b"0\r\nX-Trailer: 1\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + HELD,
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length:  %d\r\nX-Folded: a\r\n b\r\n\r\n" % len(HELD)
    + HELD,
], ids=["chunked", "until-close", "interim-and-length"])
def test_an_answer_is_read_in_each_framing_http_has(answer: bytes) -> None:
    """As a reverse proxy in front of a witness may send it: chunked (RFC 9112 7.1), up to the
    end of the connection (6.3), after an interim 100 (RFC 9110 15.2)."""
    peer = Answering(HOST, answer)
    try:
        held = WitnessClient(f"http://{HOST}:{peer.port}", timeout=3).held(LOG)
    finally:
        peer.close()
    assert held == [{"a": 1}]


def test_audit_verify_names_a_witness_url_that_answers_no_http(tmp_path: Path) -> None:
    """An SSH server at the witness's URL (the wrong port): exit 2 and one line saying the answer
    is not HTTP, with what came; not an internal error (exit 70), no traceback."""
    es, key = _store(tmp_path)
    es.append(make_events(3))
    assert es.checkpoint() is not None
    es.close()
    banner = Answering(HOST, b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
    url = f"http://{HOST}:{banner.port}"
    try:
        proc = run("audit", "verify", "--store", str(tmp_path / "site.db"), "--key", str(public_path(key)),
                   "--witness", url, cwd=tmp_path, check_code=None)
    finally:
        banner.close()
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert f"witness {url}: it answered no HTTP/1.1 status line: 'SSH-2.0-OpenSSH_9.2p1 Debian-2\\r\\n'" \
        in proc.stderr, proc.stderr


def test_the_client_reads_no_private_attribute_of_the_standard_library() -> None:
    """Every `obj._name` the client's modules read is one they define themselves: no hook of
    http.client or urllib that a Python release may rename."""
    folder = Path(pacsguard.witness.__file__).parent  # the code under test, wherever it is imported from
    modules = [module for module in CLIENT_MODULES if (folder / module).exists()]
    assert "http.py" in modules
    for module in modules:
        tree = ast.parse((folder / module).read_text())
        defined = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.ClassDef)}
        defined |= {target.attr for node in ast.walk(tree) if isinstance(node, ast.Assign | ast.AnnAssign)
                    for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
                    if isinstance(target, ast.Attribute)}
        defined |= {node.target.id for node in ast.walk(tree)  # dataclass fields and class attributes
                    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)}
        defined |= {target.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
                    for target in node.targets if isinstance(target, ast.Name)}
        borrowed = sorted({node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                           and node.attr.startswith("_") and not node.attr.startswith("__")} - defined)
        assert borrowed == [], f"{module} reads private attributes it does not define: {borrowed}"


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    return witness_pki(tmp_path, HOST)


@pytest.fixture(params=["https", "http"])
def service(request: pytest.FixtureRequest, tmp_path: Path, pki: dict[str, Path],
            monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """A pacsguard witness service on HOST pinning the site's key (TLS with the hospital CA's
    certificate for https); its URL and the site's key."""
    es, key = _store(tmp_path)
    es.close()
    monkeypatch.setenv("R11E_SITE_TOKEN", TOKEN)
    tls = {"tls": {"cert_file": pki["cert"], "key_file": pki["key"]}} if request.param == "https" else {}
    cfg = WitnessServiceConfig.model_validate({
        "enabled": True, "host": HOST, "port": 0, "storage": Path("held"), "signing_key": Path("witness.key"),
        "logs": [WitnessedLog(name="site", public_key=public_path(key), token=SecretRef(env="R11E_SITE_TOKEN"))],
        **tls})
    server = witness_server(cfg, lambda p: tmp_path / "w" / p, lambda event: None)
    url = server.start()
    try:
        yield url, key
    finally:
        server.close()


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Proxy]:
    """The proxy, named with credentials in http_proxy and https_proxy."""
    server = Proxy()
    for name in ("no_proxy", "NO_PROXY", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    for name in ("http_proxy", "https_proxy"):
        monkeypatch.setenv(name, f"http://gw1:pa%20ss@{PROXY_HOST}:{server.port}")
    try:
        yield server
    finally:
        server.close()


def test_a_checkpoint_reaches_the_witness_through_the_proxy(service: tuple[str, Path], proxy: Proxy,
                                                            pki: dict[str, Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Delivered and countersigned through the proxy (https: a tunnel, the witness's certificate
    verified with the configured CA; http: the request in absolute form), the proxy's credentials
    sent to the proxy; with no_proxy naming the witness, straight to it."""
    url, key = service
    context = client_context(ca_file=pki["ca"]) if url.startswith("https") else None
    store = EventStore.open(str(tmp_path / "site.db"), key_path=key)
    try:
        store.append(make_events(3))
        checkpoint = store.checkpoint()
        assert checkpoint is not None
        witness_key = public_path(tmp_path / "w" / "witness.key")
        HttpWitness(WitnessClient(url, TOKEN, context, timeout=5), store.leaves, witness_key).deliver(checkpoint)
    finally:
        store.close()
    authorization = "Basic " + base64.b64encode(b"gw1:pa ss").decode()
    line = f"CONNECT {url.split('://')[1]}" if context else f"POST {url}/v1/logs/{checkpoint.key_id}/checkpoints"
    assert proxy.seen == [(line, authorization)]
    monkeypatch.setenv("no_proxy", f"localhost, {HOST}")
    held = WitnessClient(url, context=context, timeout=5).held(checkpoint.key_id)
    assert [h["tree_size"] for h in held] == [3]
    assert len(proxy.seen) == 1, f"no_proxy did not keep the request off the proxy: {proxy.seen}"
    if context is not None:
        # the configured CA, and only it, vouches for the witness: the system's trust store does not
        with pytest.raises(WitnessError, match=r": peer certificate rejected: .*not issued by a CA of ca_file"):
            WitnessClient(url, context=client_context(), timeout=5).held(checkpoint.key_id)


def test_a_proxy_that_refuses_the_tunnel_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """The proxy's refusal of CONNECT (407: it wants credentials) is said with the proxy's name
    and its status, not as the witness's."""
    refusing = Answering(PROXY_HOST, b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
    monkeypatch.setenv("https_proxy", f"http://{PROXY_HOST}:{refusing.port}")
    for name in ("no_proxy", "NO_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    try:
        with pytest.raises(WitnessError) as raised:
            WitnessClient(f"https://{HOST}:8471", timeout=3).held(LOG)
    finally:
        refusing.close()
    assert str(raised.value) == (f"witness https://{HOST}:8471: the proxy {PROXY_HOST}:{refusing.port} answered "
                                 f"CONNECT {HOST}:8471 with 407 Proxy Authentication Required")
    assert refusing.heads[0].startswith(f"CONNECT {HOST}:8471 HTTP/1.1\r\n".encode())
