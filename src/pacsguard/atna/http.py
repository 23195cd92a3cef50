"""The RESTful ATNA endpoint: IHE ITI-81 (GET /AuditEvent?... answers a FHIR searchset Bundle) and
FHIR AuditEvent intake (POST /AuditEvent, as ITI-20's RESTful option). A small, bounded HTTP/1.1
server (RFC 9112): one request per connection, a head of at most 16 KiB, a body of at most the
configured message size, every request authenticated by the bearer token (RFC 6750) or by a verified
client certificate. A refused request is an Event naming the sender; the server goes on."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import ssl
from dataclasses import dataclass
from datetime import datetime, timezone
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

from pacsguard.atna.ingest import Sender, payload_event, raw_fields
from pacsguard.atna.message import fhir
from pacsguard.atna.message.mapping import record_from_event
from pacsguard.atna.query import SEARCH_PARAMETERS, AuditQuery, QueryError
from pacsguard.atna.syslog.listeners import Refusals
from pacsguard.events.model import Event, Outcome, Party, Severity

if TYPE_CHECKING:
    from pacsguard.atna.config import HttpListener
    from pacsguard.atna.syslog.listeners import Publish
    from pacsguard.store import EventStore
    from pacsguard.store.store import StoredEvent

log = logging.getLogger("pacsguard.atna")

#: A Host header (RFC 9110 7.2) worth echoing in links: a name or IPv4 address, or a bracketed IPv6
#: address, with an optional port; anything else is not repeated back.
_HOST = re.compile(r"([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(:[0-9]{1,5})?")

MAX_HEAD = 16 * 1024
TIMEOUT = 30.0
FHIR_JSON = "application/fhir+json"


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: dict[str, Any]
    location: str | None = None


def outcome(status: HTTPStatus, text: str) -> Reply:
    """An OperationOutcome (FHIR R4) explaining a refusal."""
    code = {400: "invalid", 401: "login", 404: "not-found", 405: "not-supported", 413: "too-long"}.get(
        status.value, "exception")
    return Reply(status.value, {"resourceType": "OperationOutcome",
                                "issue": [{"severity": "error", "code": code, "diagnostics": text}]})


class RestfulAtna:
    def __init__(self, config: HttpListener, publish: Publish, store: EventStore, resolve: Any,
                 max_body: int, max_connections: int = 1000) -> None:
        self.config = config
        self.publish = publish
        self.store = store
        self.max_body = max_body
        self.max_connections = max_connections
        self.open = 0  # connections being served
        self.refusals = Refusals()
        self.token = config.token.resolve().encode() if config.token is not None else None
        self.context: ssl.SSLContext | None = None
        if config.cert_file is not None and config.key_file is not None:
            from pacsguard.tls.contexts import server_context

            self.context = server_context(resolve(config.cert_file), resolve(config.key_file),
                                          ca_file=resolve(config.ca_file) if config.ca_file else None,
                                          require_client_cert=config.require_client_cert)
        self.scheme = "https" if self.context else "http"
        self.base = ""
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._serve, host, port, ssl=self.context, limit=MAX_HEAD)
        bound = self._server.sockets[0].getsockname()
        self.base = f"{self.scheme}://{bound[0]}:{bound[1]}"
        return str(bound[0]), int(bound[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", None)
        sender = Sender(str(peer[0]), int(peer[1]) if peer[1] is not None else None, self.scheme)
        if self.open >= self.max_connections:  # a flood: closed unanswered, recorded now and then
            others = self.refusals.due()
            if others is not None:
                self._refuse(sender, "too-many-connections", f"{self.max_connections} connections already open "
                             f"(atna.max_connections): closed at once{others}", "", "", HTTPStatus.SERVICE_UNAVAILABLE)
            writer.close()
            return
        self.open += 1
        try:
            reply = await asyncio.wait_for(self._handle(reader, writer, sender), TIMEOUT)
            if reply is not None:
                writer.write(_encode(reply))
                await writer.drain()
        except (TimeoutError, ConnectionError, ssl.SSLError):
            pass  # a slow or vanished client: nothing to answer
        finally:
            self.open -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      sender: Sender) -> Reply | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            return self._refuse(sender, "bad-request", "request head too large", "", "",
                                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
        except asyncio.IncompleteReadError:
            return None
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return self._refuse(sender, "bad-request", "not an HTTP/1.x request", "", "", HTTPStatus.BAD_REQUEST)
        method, target = parts[0], parts[1]
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        url = urlsplit(target)
        if not self._authorised(headers, writer):
            return self._refuse(sender, "unauthorized", "no valid bearer token or client certificate", method,
                                url.path, HTTPStatus.UNAUTHORIZED)
        path = url.path.rstrip("/")
        if path in ("/metadata", "/fhir/metadata") and method == "GET":
            from pacsguard import __version__

            base = self._base_for(headers.get("host", ""), path.removesuffix("/metadata"))
            return Reply(200, fhir.capability_statement(base, __version__, datetime.now(timezone.utc),
                                                        SEARCH_PARAMETERS))
        if path not in ("/AuditEvent", "/fhir/AuditEvent"):
            return outcome(HTTPStatus.NOT_FOUND, f"{url.path}: only /AuditEvent (and /metadata) is served")
        base = self._base_for(headers.get("host", ""), path.removesuffix("/AuditEvent"))
        if method == "GET":
            return await self._search(url.query, sender, base, headers.get("prefer", ""))
        if method == "POST":
            length = headers.get("content-length", "")
            if not (length.isascii() and length.isdigit()):  # "²" is a digit to str.isdigit, not to int()
                return self._refuse(sender, "bad-request", "POST needs Content-Length", method, url.path,
                                    HTTPStatus.LENGTH_REQUIRED)
            if int(length) > self.max_body:
                return self._refuse(sender, "bad-request", f"body of {length} octets exceeds {self.max_body}",
                                    method, url.path, HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            body = await reader.readexactly(int(length))
            return self._ingest(body, sender, base)
        return outcome(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} is not supported")

    def _authorised(self, headers: dict[str, str], writer: asyncio.StreamWriter) -> bool:
        if self.config.require_client_cert and writer.get_extra_info("peercert"):
            return True  # verified by the TLS layer against ca_file
        auth = headers.get("authorization", "")
        if self.token is None or not auth.lower().startswith("bearer "):
            return False
        return hmac.compare_digest(auth[7:].strip().encode(), self.token)

    def _base_for(self, host: str, prefix: str) -> str:
        """The URL the client reached the endpoint by, for the links and locations it is given: its
        Host header when that is a host name or address (else the address listened on), and the
        path's prefix (/fhir, or none)."""
        origin = f"{self.scheme}://{host}" if _HOST.fullmatch(host) else self.base
        return origin + prefix

    def _ingest(self, body: bytes, sender: Sender, base: str) -> Reply:
        received: dict[str, Any] = {"sender": sender.to_dict(), "received": datetime.now(timezone.utc).isoformat(),
                                    **raw_fields(body)}
        event = payload_event(received, body, [], sender)
        self.publish(event)  # stored either way: raw and flagged when it is not an AuditEvent
        if event.kind == "atna.message.unparsed":
            return outcome(HTTPStatus.BAD_REQUEST, str(event.details["error"]))
        return Reply(201, fhir.render(record_from_event(event), event.id), f"{base}/AuditEvent/{event.id}")

    async def _search(self, query: str, sender: Sender, base: str, prefer: str) -> Reply:
        strict = "handling=strict" in prefer.replace(" ", "").lower()
        try:
            q = AuditQuery.parse(parse_qs(query, keep_blank_values=False), strict=strict)
        except QueryError as exc:
            return self._refuse(sender, "bad-request", str(exc), "GET", "/AuditEvent", HTTPStatus.BAD_REQUEST)
        found = await asyncio.to_thread(self._find, q) if q.count else []
        resources = [fhir.render(record_from_event(s.event), s.event.id) for s in found]
        # A full page may have more after it: a next link with the cursor after its last event. The
        # total is given when the whole result is this page, or when asked for (_count=0,
        # _total=accurate): counting every match of a large search costs a scan of all of it, and
        # FHIR R4 makes Bundle.total optional.
        full = q.count > 0 and len(found) >= q.count
        next_url = f"{base}/AuditEvent?{_with_cursor(query, found[-1].seq)}" if full else None
        if q.counted or not q.count:
            total: int | None = await asyncio.to_thread(self._count, q)
        else:
            total = None if full or q.after is not None else len(found)
        ignored = [f"search parameter {name!r} is not supported: ignored" for name in q.ignored]
        return Reply(200, fhir.bundle(resources, base, total=total, next_url=next_url, warnings=ignored))

    def _find(self, q: AuditQuery) -> list[StoredEvent]:
        return q.page(q.stored(self.store, after=q.after))

    def _count(self, q: AuditQuery) -> int:
        return sum(1 for s in q.stored(self.store) if q.matches(s.event))

    def _refuse(self, sender: Sender, problem: str, error: str, method: str, path: str,
                status: HTTPStatus) -> Reply:
        self.publish(Event(kind="atna.http.rejected", component="atna", severity=Severity.WARNING,
                           outcome=Outcome.MINOR_FAILURE, actor=Party(host=sender.host, port=sender.port),
                           message=f"RESTful ATNA request from {sender.host} refused: {error}",
                           details={"sender": sender.to_dict(), "problem": problem, "error": error,
                                    "method": method, "path": path}))
        return outcome(status, error)


def _with_cursor(query: str, after: int) -> str:
    """The search's own parameters, with the cursor of the page after ``after`` (a store position)."""
    kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=False) if k != "_cursor"]
    return urlencode([*kept, ("_cursor", str(after))])


def _encode(reply: Reply) -> bytes:
    body = json.dumps(reply.body).encode()
    head = (f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}\r\nContent-Type: {FHIR_JSON}\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n")
    if reply.location:
        head += f"Location: {reply.location}\r\n"
    if reply.status == 401:
        head += 'WWW-Authenticate: Bearer realm="pacsguard-atna"\r\n'
    return head.encode("latin-1") + b"\r\n" + body
