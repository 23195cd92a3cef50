"""The witness service's HTTP/1.1 listener (the API of witness/http.py), on the standard library's
threading HTTP server: one thread per connection, at most MAX_CLIENTS at once; each request (its
TLS handshake, request line, header fields and body: RFC 9112 2.1) must arrive whole within the
timeout, and its body is limited; TLS when configured (with client certificates when the section
asks).

A connection holds a slot from its accept on, but one still waiting for its request (idle, or
trickling it in) is the first to go when every slot is taken: the oldest such one is closed for
the newcomer, so a TLS scan or a pile of idle connections does not keep a store's delivery out
(as a reverse proxy's client header timeout frees its workers, only sooner)."""

from __future__ import annotations

import json
import logging
import re
import socket
import ssl
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from pacsguard.runtime.listening import cannot_listen
from pacsguard.witness.accept import Answer, Witness
from pacsguard.witness.deadline import Deadline, reader
from pacsguard.witness.http import API
from pacsguard.witness.jsontext import loads

log = logging.getLogger("pacsguard.witness")

MAX_REQUEST = 64 * 1024  # a checkpoint and a proof of at most 128 hashes fit many times over
MAX_CLIENTS = 32
# Whole-list answers (GET without ?from) made at once: each holds the whole ledger in memory, as
# objects and as JSON (a year at a checkpoint a minute is some 250 MB of JSON), and GET needs no
# token, so clients must not be able to multiply that by MAX_CLIENTS. Pages are not limited.
WHOLE_AT_ONCE = 2
#: Connections the kernel holds until they are accepted (as nginx's listen backlog, 511).
LISTEN_BACKLOG = 512
#: Seconds the newcomer waits for the slot of the idle connection closed for it.
EVICTED_WITHIN = 2.0
_PATH = re.compile(re.escape(API) + r"/([0-9a-f]{16})/checkpoints")


class _BoundedServer(ThreadingHTTPServer):
    """At most MAX_CLIENTS connections at once, so the witness port cannot be used to pile up
    threads. When all are taken, the one that has waited longest for its request is closed for
    the newcomer; when every one is busy with a request, the newcomer is closed unanswered."""

    daemon_threads = True
    # listen(2)'s backlog: socketserver's 5 made connections past it wait for the client's SYN to
    # be sent again (1 s, then 3 s...) before they are even accepted, a delivery among them.
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self.whole_lists = threading.BoundedSemaphore(WHOLE_AT_ONCE)
        self.lock = threading.Lock()
        #: The connections that have not sent their whole request head yet, with when they began.
        self.waiting: dict[Any, float] = {}
        #: Connections closed for a newcomer: their handler's end is no error worth a warning.
        self.evicted: set[int] = set()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False) and not self._evict_for(client_address):
            log.warning("witness service: %d connections are busy with requests; closed the one from %s "
                        "unanswered (it tries again later)", MAX_CLIENTS, _name(client_address))
            self.shutdown_request(request)
            return
        self.waits(request)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.done(request)
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.done(request)
            self.slots.release()

    def waits(self, request: Any) -> None:
        """``request`` waits for its (next) request head."""
        with self.lock:
            self.waiting[request] = time.monotonic()

    def busy(self, request: Any) -> None:
        """``request`` sent its request head: it is served, never closed for a newcomer."""
        with self.lock:
            self.waiting.pop(request, None)

    def done(self, request: Any) -> None:
        with self.lock:
            self.waiting.pop(request, None)
            self.evicted.discard(id(request))

    def _evict_for(self, newcomer: Any) -> bool:
        """Close the connection that has waited longest for its request, and take its slot once its
        handler has let go (within EVICTED_WITHIN s); False when none waits."""
        with self.lock:
            if not self.waiting:
                return False
            victim = min(self.waiting, key=self.waiting.__getitem__)
            since = self.waiting.pop(victim)
            self.evicted.add(id(victim))
        try:
            name = _name(victim.getpeername())
        except OSError:
            name = "a client"
        # Debug only: a TLS scan makes one such line per probe; the clients affected retry.
        log.debug("witness service: all %d connections taken; closed the one from %s, which sent no whole "
                  "request in %.1f s, for %s", MAX_CLIENTS, name, time.monotonic() - since, _name(newcomer))
        try:
            # The plain socket's shutdown, not the TLS one (which would first try to send an alert):
            # the handler's blocked read returns at once, from any thread.
            socket.socket.shutdown(victim, socket.SHUT_RDWR)
        except OSError:
            pass  # it closed meanwhile: its slot is free all the same
        return self.slots.acquire(timeout=EVICTED_WITHIN)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client whose TLS handshake fails (a TLS 1.0 client, a scanner's probes, a client
        certificate of another CA: RFC 9325 3.1, 4.1) or that drops the connection is one warning
        line naming it and why; socketserver's default printed a traceback for each."""
        exc = sys.exc_info()[1]
        with self.lock:
            evicted = id(request) in self.evicted
        if evicted:
            return  # closed for a newcomer, and said so then
        if not isinstance(exc, (ssl.SSLError, ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)
            return
        from pacsguard.tls.contexts import explain_tls_error

        log.warning("witness service: connection from %s closed: %s", _name(client_address), explain_tls_error(exc))


def _name(address: Any) -> str:
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else "?"


class WitnessServer:
    """Listens on host:port (port 0: a free one) until close()."""

    def __init__(self, witness: Witness, host: str, port: int, *, context: ssl.SSLContext | None = None,
                 timeout: float = 10.0) -> None:
        handler = type("Handler", (_Handler,), {"witness": witness, "timeout": timeout})
        try:
            self.httpd = _BoundedServer((host, port), handler)
        except OSError as exc:  # name the listener and its keys, as the gateway's and ATNA's errors do
            raise cannot_listen("witness service", host, port, exc, "witness.host, witness.port") from None
        if context is not None:
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True, do_handshake_on_connect=False)
        self.address: tuple[str, int] = (str(self.httpd.server_address[0]), int(self.httpd.server_address[1]))
        self.scheme = "https" if context is not None else "http"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="witness-http", daemon=True)

    def start(self) -> str:
        self._thread.start()
        host, port = self.address
        return f"{self.scheme}://{host}:{port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    witness: Witness
    protocol_version = "HTTP/1.1"
    server_version = "pacsguard-witness"
    deadline: Deadline

    def setup(self) -> None:
        """The request is read by one deadline of ``timeout`` seconds: the socket's timeout bounds
        each read only, and a client trickling its request head a byte at a time held its slot as
        long as it went on (a slowloris)."""
        super().setup()
        self.deadline = Deadline(self.timeout or 0.0)
        self.rfile.close()  # the plain reader the base class made: read through the deadline instead
        self.rfile = reader(self.connection, self.deadline, self._too_slow, self.timeout)

    def _too_slow(self, count: int) -> Exception:
        # http.server ends the connection on a TimeoutError, quietly (log_message: debug).
        return TimeoutError(f"no whole request within {self.timeout:g} s ({count} bytes of it came)")

    def handle_one_request(self) -> None:
        """Each request of a kept-alive connection has its own deadline, and waits as the first did."""
        self.deadline.restart()
        self._server().waits(self.request)
        super().handle_one_request()

    def parse_request(self) -> bool:
        """The request line and header fields came (RFC 9112 2.1): from now on the connection is
        served, not one a newcomer may have closed for it."""
        ok = super().parse_request()
        self._server().busy(self.request)
        return ok

    def _server(self) -> _BoundedServer:
        assert isinstance(self.server, _BoundedServer)
        return self.server

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        log_id = self._log_id()
        if log_id is None:
            return
        query = parse_qs(self.path.partition("?")[2], keep_blank_values=True)
        start = query.get("from", [None])[-1]
        if start is not None and not (start.isascii() and start.isdigit()):
            self._send(Answer(400, {"error": f"from: expected a tree size (0 or more), got {start[:40]!r}"}))
            return
        if start is not None:
            self._send(self.witness.held(log_id, int(start)))
            return
        whole_lists = self._server().whole_lists
        if not whole_lists.acquire(blocking=False):
            self._send(Answer(503, {"error": f"{WHOLE_AT_ONCE} whole lists are being sent; try again later, or ask "
                                    "for pages: ?from=0"}))
            return
        try:
            self._send(self.witness.held(log_id))
        finally:
            whole_lists.release()

    def do_POST(self) -> None:  # noqa: N802
        log_id = self._log_id()
        if log_id is None:
            return
        length = self.headers.get("Content-Length", "")
        if not (length.isascii() and length.isdigit()):  # "²" is a digit to str.isdigit, not to int()
            self._send(Answer(411, {"error": "Content-Length required"}))
            return
        if int(length) > MAX_REQUEST:
            self._send(Answer(413, {"error": f"a request body is at most {MAX_REQUEST} bytes"}))
            return
        try:
            body: Any = loads(self.rfile.read(int(length)))
        except ValueError:
            self._send(Answer(400, {"error": "the body is not JSON"}))
            return
        auth = self.headers.get("Authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else None  # RFC 6750 2.1
        self._send(self.witness.submit(log_id, token, body, self.client_address[0]))

    def _log_id(self) -> str | None:
        match = _PATH.fullmatch(self.path.split("?", 1)[0])
        if match is None:
            self._send(Answer(404, {"error": f"unknown path; the API is {API}/LOG/checkpoints"}))
            return None
        return match.group(1)

    def _send(self, answer: Answer) -> None:
        data = json.dumps(answer.body).encode() + b"\n"
        self.send_response(answer.status, HTTPStatus(answer.status).phrase)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("witness %s: " + format, self.client_address[0], *args)
