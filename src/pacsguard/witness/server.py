"""The witness service's HTTP/1.1 listener (the API of witness/http.py), on the standard library's
threading HTTP server: one thread per request, at most MAX_CLIENTS at once, each bounded by a
timeout and a body limit; TLS when configured (with client certificates when the section asks)."""

from __future__ import annotations

import json
import logging
import re
import ssl
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from pacsguard.witness.accept import Answer, Witness
from pacsguard.witness.http import API
from pacsguard.witness.jsontext import loads

log = logging.getLogger("pacsguard.witness")

MAX_REQUEST = 64 * 1024  # a checkpoint and a proof of at most 128 hashes fit many times over
MAX_CLIENTS = 32
# Whole-list answers (GET without ?from) made at once: each holds the whole ledger in memory, as
# objects and as JSON (a year at a checkpoint a minute is some 250 MB of JSON), and GET needs no
# token, so clients must not be able to multiply that by MAX_CLIENTS. Pages are not limited.
WHOLE_AT_ONCE = 2
_PATH = re.compile(re.escape(API) + r"/([0-9a-f]{16})/checkpoints")


class _BoundedServer(ThreadingHTTPServer):
    """At most MAX_CLIENTS requests at once: more connections are closed unanswered, so the witness
    port cannot be used to pile up threads."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self.whole_lists = threading.BoundedSemaphore(WHOLE_AT_ONCE)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client whose TLS handshake fails (a TLS 1.0 client, a scanner's probes, a client
        certificate of another CA: RFC 9325 3.1, 4.1) or that drops the connection is one warning
        line naming it and why; socketserver's default printed a traceback for each."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ssl.SSLError, ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)
            return
        from pacsguard.tls.contexts import explain_tls_error

        host, port = (client_address[0], client_address[1]) if isinstance(client_address, tuple) else ("?", "?")
        log.warning("witness service: connection from %s:%s closed: %s", host, port, explain_tls_error(exc))


class WitnessServer:
    """Listens on host:port (port 0: a free one) until close()."""

    def __init__(self, witness: Witness, host: str, port: int, *, context: ssl.SSLContext | None = None,
                 timeout: float = 10.0) -> None:
        handler = type("Handler", (_Handler,), {"witness": witness, "timeout": timeout})
        try:
            self.httpd = _BoundedServer((host, port), handler)
        except OSError as exc:  # name the listener and its keys, as the gateway's and ATNA's errors do
            raise OSError(exc.errno, f"witness service: cannot listen on {host}:{port} (witness.host, "
                          f"witness.port): {exc.strerror or exc}") from None
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
        assert isinstance(self.server, _BoundedServer)
        whole_lists = self.server.whole_lists
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
