"""The RESTful ATNA endpoint: IHE ITI-81 (GET /AuditEvent?... answers a FHIR searchset Bundle, and
GET /AuditEvent/ID reads one of its entries, FHIR R4 3.1.0.1) and FHIR AuditEvent intake (POST
/AuditEvent, as ITI-20's RESTful option). A small, bounded HTTP/1.1 server (RFC 9112): persistent
connections (RFC 9112 9.3) serving requests one after another, at most MAX_REQUESTS on one
connection; a head of at most 16 KiB, with one Host field (RFC 9112 3.2), within HEAD_TIMEOUT
(of the connection's opening for its first request: slowloris), and a whole request within
TIMEOUT; a body of at most the configured message size given by Content-Length, a 100
(Continue) sent first when the client waits for one (RFC 9110 10.1.1); every request
authenticated by the bearer token (RFC 6750), a verified client certificate, or both when both
are configured. At most max_connections connections: when full, the one waiting longest without
having shown the token makes room, else the newcomer is answered 503. A refused, cut short or too
slow request, and a connection that sent nothing, is an Event naming the sender; the server goes
on."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import re
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timezone
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, parse_qs, parse_qsl, urlencode, urlsplit

import orjson

from pacsguard.atna.ingest import (
    Sender,
    fhir_body_event,
    payload_event,
    peer_address,
    raw_fields,
    read_json,
    unparsed_event,
)
from pacsguard.atna.message import fhir
from pacsguard.atna.message.dicom_xml import AuditMessageError
from pacsguard.atna.message.mapping import record_from_event
from pacsguard.atna.query import SEARCH_DOCUMENTATION, SEARCH_PARAMETERS, AuditQuery, QueryError, stored_by_id
from pacsguard.atna.repeats import MOST_TRACKED, RECORD_INTERVAL, Repeats
from pacsguard.atna.syslog.listeners import REFUSALS_RECORDED_EVERY, Refusals
from pacsguard.events.model import Event, Outcome, Party, Severity
from pacsguard.runtime.periodic import every

if TYPE_CHECKING:
    from pacsguard.atna.config import HttpListener
    from pacsguard.atna.syslog.listeners import Publish
    from pacsguard.store import EventStore
    from pacsguard.store.store import StoredEvent

log = logging.getLogger("pacsguard.atna")

#: A Host header (RFC 9110 7.2) worth echoing in links: a name or IPv4 address, or a bracketed IPv6
#: address, with an optional port; anything else is not repeated back.
_HOST = re.compile(r"([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(:[0-9]{1,5})?")
#: RFC 9112 2.3: HTTP-version = "HTTP/" DIGIT "." DIGIT; only major version 1 is served.
_VERSION = re.compile(r"HTTP/1\.[0-9]")
#: An LF that no CR precedes, in a request head (`_parse_head`).
_BARE_LF = re.compile(rb"(?<!\r)\n")
#: A run of a header value up to a separator (RFC 7240 2: "," between preferences, ";" before a
#: preference's parameters), a quoted-string (RFC 9110 5.6.4) in it taken whole.
_ITEM = re.compile(r'(?:[^,;"]|"(?:[^"\\]|\\.)*")+|[,;]')
#: The paths of the AuditEvent type, with or without the /fhir prefix: searched (GET), posted to.
_AUDIT_EVENTS = ("/AuditEvent", "/fhir/AuditEvent")
#: The FHIR base, with or without the /fhir prefix (after the trailing "/" is taken off): where a
#: batch or transaction Bundle is POSTed (FHIR R4 3.1.0.11, ITI-20's FHIR feed).
_BASES = ("", "/fhir")
#: The path of one AuditEvent (FHIR R4 3.1.0.1, read): a search Bundle's fullUrl, a POST's Location.
_AUDIT_EVENT = re.compile(r"(/fhir)?/AuditEvent/([^/]+)")
#: The methods of RFC 9110 9 (and PATCH, RFC 5789): one a target does not take is answered 405 with
#: the Allow field; any other, "get" too (a method is case-sensitive, 9.1), 501 Not Implemented.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
#: The interim response that tells a client waiting with "Expect: 100-continue" to send its body.
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

MAX_HEAD = 16 * 1024
#: Seconds a connection may stay idle between two requests (then it is closed), and seconds a
#: request may take from its first octet to its last (then 408 Request Timeout).
TIMEOUT = 30.0
#: Seconds a new connection has for its first request's whole head (from when it opened, or when
#: its TLS handshake was done; that handshake has as long), and a later request for its head from
#: its first octet: a client that has not yet shown the token holds a place this long at most
#: (slowloris; Apache's mod_reqtimeout allows 20-40 s, nginx's client_header_timeout 60 s).
HEAD_TIMEOUT = 10.0
#: Seconds a client turned away (every place held by authenticated clients) is told to wait
#: (503 Service Unavailable, Retry-After: RFC 9110 10.2.3).
RETRY_AFTER = 5
#: Seconds a POST's answer waits for its messages to be durable (in the store or the bus's
#: journal) before it is 503 instead (RestfulAtna._stored): FHIR clients wait 30-60 s for an answer.
SETTLE_SECONDS = 10.0
#: Seconds a connection turned away with 503 is still read, for the client to take the answer, and
#: how many may be so at once (beyond, closed unanswered: a flood must not hold sockets this way).
TURNED_AWAY_LINGER = 1.0
TURNED_AWAY_MOST = 64
#: Requests served on one connection; the last answer says "Connection: close" (RFC 9112 9.6), so
#: that no client holds one of the max_connections places for ever.
MAX_REQUESTS = 1000
#: Seconds a connection being closed is still read, for the client to take its last answer.
LINGER = 2.0
#: `_length` of a body sent with Transfer-Encoding: chunked.
CHUNKED = -1
#: Octets of a body read at a time.
_CHUNK = 64 * 1024
FHIR_JSON = "application/fhir+json"
#: Media types of XML (FHIR's XML format, RFC 7303): refused with 415, only FHIR JSON is read.
_XML_TYPES = ("application/fhir+xml", "application/xml", "text/xml")
#: What a request may ask for to be answered, the only way it is, in FHIR JSON: the media types
#: (FHIR R4 http.html#mime-type, and DSTU2's application/json+fhir) and _format's "json".
_JSON_TYPES = frozenset({FHIR_JSON, "application/json", "application/json+fhir"})
#: Seconds an answer may wait to be taken by the client (its socket's buffers full): a client that
#: pipelines requests and reads none of the answers is closed then, not held for ever.
WRITE_TIMEOUT = 30.0
#: Requests without valid credentials from one host within GUESS_WINDOW seconds after which its
#: requests are answered 429 Too Many Requests (RFC 6585 4) unchecked until the window ends:
#: guessing the token one request at a time is too slow to be worth it.
MOST_GUESSES = 20
GUESS_WINDOW = 60.0
#: HSTS max-age (RFC 6797 6.1.1), in seconds: one day. The clients are audit sources, not browsers,
#: and HSTS binds the host name's every port (RFC 6797 8.3), so a browser that once saw it would
#: also refuse a plain HTTP page of another service on that host: a day bounds that; no
#: includeSubDomains.
HSTS_MAX_AGE = 86400


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: dict[str, Any]
    location: str | None = None
    close: bool = False  # the connection ends after this answer
    retry_after: int | None = None  # seconds, for a 503 (RFC 9110 10.2.3)
    allow: str | None = None  # the methods the target takes, for a 405 (RFC 9110 10.2.1, 15.5.6)
    bodiless: bool = False  # an answer to HEAD: its header fields only (RFC 9110 9.3.2)


@dataclass(frozen=True, slots=True)
class Request:
    """One request's head (RFC 9112 2.1): its request line and its header fields, names in lower case."""

    method: str
    url: SplitResult  # the request target (RFC 9112 3.2)
    version: str
    headers: dict[str, str]

    def persistent(self) -> bool:
        """Whether the connection may carry another request after this one's answer (RFC 9112 9.3):
        HTTP/1.1 unless the client says "close", HTTP/1.0 only when it says "keep-alive"."""
        options = {o.strip().lower() for o in self.headers.get("connection", "").split(",")}
        if "close" in options:
            return False
        if self.version == "HTTP/1.0" and "transfer-encoding" in self.headers:
            return False  # RFC 9112 6.1: its framing is to be taken as faulty; close after answering
        return self.version != "HTTP/1.0" or "keep-alive" in options


class Broken(Exception):
    """A request the connection cannot go on after: refused before its body was read, not complete
    when the client closed (RFC 9112 8), or too slow. It is recorded, answered with ``status`` if
    the client still listens, and the connection is closed, since where a next request would start
    is unknown (RFC 9112 9.6)."""

    def __init__(self, problem: str, error: str, status: HTTPStatus, method: str = "", path: str = "",
                 retry_after: int | None = None) -> None:
        super().__init__(error)
        self.problem, self.error, self.status, self.method, self.path = problem, error, status, method, path
        self.retry_after = retry_after


class Stalled(Exception):
    """An answer the client did not take within WRITE_TIMEOUT seconds: its connection was aborted."""


class Guesses:
    """Requests without valid credentials per host in its current GUESS_WINDOW."""

    def __init__(self) -> None:
        self._hosts: dict[str, tuple[float, int]] = {}

    def failed(self, host: str, now: float) -> None:
        if host not in self._hosts and len(self._hosts) >= MOST_TRACKED:
            self._hosts = {h: w for h, w in self._hosts.items() if now - w[0] < GUESS_WINDOW}
            if len(self._hosts) >= MOST_TRACKED:
                host = "*"  # so many guessing hosts at once: they share one count
        started, count = self._hosts.get(host, (now, 0))
        if now - started >= GUESS_WINDOW:
            started, count = now, 0
        self._hosts[host] = (started, count + 1)

    def blocked(self, host: str, now: float) -> float | None:
        """Seconds ``host`` is still answered 429 unchecked, or None."""
        started, count = self._hosts.get(host) or self._hosts.get("*") or (now, 0)
        left = started + GUESS_WINDOW - now
        return left if count >= MOST_GUESSES and left > 0 else None


def outcome(status: HTTPStatus, text: str) -> Reply:
    """An OperationOutcome (FHIR R4) explaining a refusal."""
    code = {400: "invalid", 401: "login", 404: "not-found", 405: "not-supported", 408: "timeout",
            406: "not-supported", 413: "too-long", 415: "not-supported", 417: "not-supported", 429: "throttled",
            501: "not-supported"}.get(status.value, "exception")
    return Reply(status.value, {"resourceType": "OperationOutcome",
                                "issue": [{"severity": "error", "code": code, "diagnostics": text}]})


@dataclass(eq=False, slots=True)
class Place:
    """One of the max_connections places, held by a connection: its sender, when it opened (or its
    TLS handshake was done; the event loop's clock), whether a request on it has shown the token
    or certificate, and how to close it to make room for another (without recording it again)."""

    sender: Sender
    opened: float
    drop: Callable[[], object]
    authenticated: bool = False
    dropped: bool = False  # closed to make room


class RestfulAtna:
    def __init__(self, config: HttpListener, publish: Publish, store: EventStore, resolve: Any,
                 max_body: int, max_connections: int = 1000,
                 settled: Callable[[float], Awaitable[bool]] | None = None) -> None:
        self.config = config
        self.publish = publish
        #: Waits (at most the seconds given) until everything published is durable; False if not.
        self.settled = settled
        self.store = store
        self.max_body = max_body
        self.max_connections = max_connections
        #: The connections holding a place: served, or (HTTPS) still in their TLS handshake.
        self.places: set[Place] = set()
        self._turning_away = 0  # connections being answered 503
        self._writers: set[asyncio.StreamWriter] = set()  # theirs, closed with the server
        self.refusals = Refusals()
        self.repeats = Repeats()
        self.guesses = Guesses()
        self._summaries: asyncio.Task[None] | None = None
        self.token = config.token.resolve("atna.http.token").encode() if config.token is not None else None
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
        if self.context is not None:  # TLS run by each connection, so that a failed handshake is recorded
            from pacsguard.atna.https import TlsConnection

            context = self.context
            self._server = await asyncio.get_running_loop().create_server(
                lambda: TlsConnection(context, self, HEAD_TIMEOUT, MAX_HEAD), host, port)
        else:
            self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD)
        bound = self._server.sockets[0].getsockname()
        self.base = f"{self.scheme}://{bound[0]}:{bound[1]}"
        self._summaries = asyncio.get_running_loop().create_task(self._summarise_every())
        return str(bound[0]), int(bound[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):  # idle persistent connections end with the server
                writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
        if self._summaries is not None:
            self._summaries.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._summaries
        self._summarise(float("inf"))  # what was counted, not yet recorded, is not lost with the server

    async def _summarise_every(self) -> None:
        """Record the counts of the intervals over, a quarter of an interval at most after each ends."""
        loop = asyncio.get_running_loop()
        await every(RECORD_INTERVAL / 4, lambda: self._summarise(loop.time()), "recording the audit endpoint's "
                    "summaries", log)

    def _summarise(self, now: float) -> None:
        for host, count in self.refusals.summaries(final=now == float("inf")):
            who = "senders beyond the hosts counted apart" if host == "*" else "this sender"
            self._publish(Sender(host, None, self.scheme), "too-many-connections",
                          f"{count} more connections of {who} turned away or closed on the full endpoint "
                          f"(atna.max_connections) in the {REFUSALS_RECORDED_EVERY:g} s after the one recorded, "
                          "counted in this record", "", "", repeats=count)
        for slot in self.repeats.due(now):
            counted = f"{slot.counted} more" if slot.sender.host != "*" else f"{slot.counted} from other senders"
            error = (f"{counted} in {RECORD_INTERVAL:g} s after the first {slot.recorded} recorded, counted in this "
                     f"record (the last: {slot.error})")
            self._publish(slot.sender, slot.problem, error, slot.method, slot.path, repeats=slot.counted)

    # The owner of HTTPS connections (https.Owner): those still in their TLS handshake count too.

    def handshake_failed(self, peer: tuple[str, int | None], problem: str, why: str) -> None:
        self._record(Sender(peer[0], peer[1], self.scheme), problem, why, "", "")

    def admit(self, peer: tuple[str, int | None], drop: Callable[[], object]) -> Place | None:
        return self._admit(Sender(peer[0], peer[1], self.scheme), drop)

    def release(self, place: Place) -> None:
        self.places.discard(place)

    def serve(self, reader: asyncio.StreamReader, writer: Any, place: Place) -> Coroutine[Any, Any, None]:
        return self._serve(reader, writer, place)

    def _admit(self, sender: Sender, drop: Callable[[], object]) -> Place | None:
        """A place for a new connection, or None when every place is held by an authenticated client.
        At max_connections, the connection that has waited longest without showing the token or
        certificate, of the sender holding the most such, is closed to make room (as the syslog
        listeners close the quietest): connections that send nothing, or half a head (slowloris),
        cannot shut out a client with the token, and a flood from one host pays for itself first.
        Either is recorded, one event at most every REFUSALS_RECORDED_EVERY seconds, the others
        counted into a summary per host at the interval's end (`Refusals`, `_summarise`)."""
        now = asyncio.get_running_loop().time()
        if len(self.places) >= self.max_connections:
            waiting = [p for p in self.places if not p.authenticated]
            held = Counter(p.sender.host for p in waiting)
            victim = min(waiting, key=lambda p: (-held[p.sender.host], p.opened), default=None)
            due = self.refusals.due((sender if victim is None else victim.sender).host)
            if victim is None:
                if due:
                    self._record(sender, "too-many-connections", f"{self.max_connections} connections already open "
                                 "(atna.max_connections), each authenticated: turned away (503)", "", "")
                return None
            if due:
                self._record(victim.sender, "too-many-connections", f"{self.max_connections} connections already "
                             f"open (atna.max_connections): this one, {now - victim.opened:.0f} s without a request "
                             f"showing the token, of a sender holding {held[victim.sender.host]} such, was closed "
                             "to make room", "", "")
            self.places.discard(victim)
            victim.dropped = True
            victim.drop()
        place = Place(sender, now, drop)
        self.places.add(place)
        return place

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     place: Place | None = None) -> None:
        """One connection, from its place (HTTPS: taken before the handshake) to its close. A
        connection closed to make room is cancelled while it waits for a request: nothing else is
        recorded for it."""
        task = asyncio.current_task()
        assert task is not None
        if place is None:
            sender = Sender(*peer_address(writer.get_extra_info("peername")), self.scheme)
            place = self._admit(sender, task.cancel)
            if place is None:
                await self._turn_away(reader, writer)
                return
        self._writers.add(writer)
        try:
            await self._converse(reader, writer, place)
        except asyncio.CancelledError:
            if not place.dropped:
                raise
            task.uncancel()  # ended as asked: the task ends normally (Python 3.11's streams log a cancelled one)
        except Exception:  # noqa: BLE001 - a pacsguard bug ends this connection, logged here, not the server
            log.exception("RESTful ATNA connection from %s", place.sender.host)
        finally:
            self.places.discard(place)
            self._writers.discard(writer)
            await _close(writer)

    async def _turn_away(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Every place held by an authenticated client: 503 with Retry-After (RFC 9110 15.6.4), the
        connection read for TURNED_AWAY_LINGER seconds so that the answer is not lost to a reset.
        At most TURNED_AWAY_MOST are being turned away at once; beyond, closed unanswered."""
        if self._turning_away >= TURNED_AWAY_MOST:
            writer.close()
            return
        self._turning_away += 1
        self._writers.add(writer)  # closed with the server too
        try:
            reply = outcome(HTTPStatus.SERVICE_UNAVAILABLE, f"{self.max_connections} connections already open "
                            f"(atna.max_connections): try again in {RETRY_AFTER} s")
            with contextlib.suppress(Stalled):
                if await _send(writer, dataclasses.replace(reply, close=True, retry_after=RETRY_AFTER), "HTTP/1.1"):
                    await _linger(reader, writer, TURNED_AWAY_LINGER)
        finally:
            self._turning_away -= 1
            self._writers.discard(writer)
            writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, place: Place) -> None:
        """Requests one after another on one connection (RFC 9112 9.3), each read whole and answered
        before the next is read, so that pipelined requests are answered in order (9.3.2); until
        the client closes or asks to, a request breaks the connection, it idles past TIMEOUT, or
        MAX_REQUESTS are served."""
        sender = place.sender
        for served in range(MAX_REQUESTS):
            try:
                found = await self._request(reader, writer, place, first=served == 0)
            except Broken as broken:
                reply = self._refuse(sender, broken.problem, broken.error, broken.method, broken.path, broken.status)
                reply = dataclasses.replace(reply, close=True, retry_after=broken.retry_after)
                version, method, path = "HTTP/1.1", broken.method, broken.path
            else:
                if found is None:
                    return
                request, body = found
                reply, version = await self._respond(request, body or b"", sender), request.version
                method, path = request.method, request.url.path
                # A body left unread may still come: where the next request begins is unknown.
                if body is None or served + 1 == MAX_REQUESTS or not request.persistent():
                    reply = dataclasses.replace(reply, close=True)
            if method == "HEAD":  # RFC 9112 6.3: content after it would be read as the next answer
                reply = dataclasses.replace(reply, bodiless=True)
            try:
                if not await _send(writer, reply, version):
                    return
            except Stalled as stalled:
                self._record(sender, "too-slow", str(stalled), method, path)
                return
            if reply.close:
                await _linger(reader, writer)
                return

    async def _request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, place: Place, *,
                       first: bool) -> tuple[Request, bytes | None] | None:
        """The next request and its body; None when the connection ended or idled before one began.
        The body is None when it was not read: the client waits for a 100 (Continue) before it
        sends it, and the request does not take one (RFC 9110 10.1.1), so it is answered at once
        and its connection closed. The head has HEAD_TIMEOUT seconds: from when the connection
        opened for its first request, from its first octet for a later one; the whole request has
        TIMEOUT seconds from its first octet."""
        start = await self._began(reader, place, first)
        if start is None:
            return None
        began = asyncio.get_running_loop().time()
        head_by = place.opened + HEAD_TIMEOUT if first else began + HEAD_TIMEOUT
        request = _parse_head(start + await _read_head(reader, head_by))
        deadline = began + TIMEOUT
        path = request.url.path
        now = asyncio.get_running_loop().time()
        if (left := self.guesses.blocked(place.sender.host, now)) is not None:
            # Not checked: a guess gets the same answer whether it is right or wrong.
            raise Broken("throttled", f"{MOST_GUESSES} requests without valid credentials from {place.sender.host} "
                         f"within {GUESS_WINDOW:g} s: answered 429 unchecked for {left:.0f} s more",
                         HTTPStatus.TOO_MANY_REQUESTS, request.method, path, retry_after=max(1, round(left)))
        refused = self._unauthorised(request.headers, writer)
        if refused is not None:
            self.guesses.failed(place.sender.host, now)
            raise Broken("unauthorized", refused, HTTPStatus.UNAUTHORIZED, request.method, path)
        place.authenticated = True  # no longer closed to make room for another
        length = self._length(request, path)
        # No 100 when the framing shows no body (RFC 9110 10.1.1); nor for a request that takes
        # none: answered at once, its body left unread.
        if _expects_continue(request, path) and length:
            if request.method != "POST" or path.rstrip("/") not in (*_AUDIT_EVENTS, *_BASES):
                return request, None
            await _continue(writer)
        if length == CHUNKED:
            return request, await _read_chunked(reader, self.max_body, deadline, request.method, path)
        return request, await _read_body(reader, length, deadline, request.method, path)

    async def _began(self, reader: asyncio.StreamReader, place: Place, first: bool) -> bytes | None:
        """The first octet of the next request, once it comes: within HEAD_TIMEOUT of the connection's
        opening for the first, TIMEOUT after the last answer for another; empty lines before it are
        skipped (RFC 9112 2.2). Without one the connection is closed: quietly after a request (RFC
        9112 9.5), and recorded as silent when it had sent no request at all."""
        blank = 0
        try:
            async with asyncio.timeout_at(place.opened + HEAD_TIMEOUT) if first else asyncio.timeout(TIMEOUT):
                while (octet := await reader.readexactly(1)) in (b"\r", b"\n"):
                    blank += 1
            return octet
        except TimeoutError:
            ended = f" for {HEAD_TIMEOUT if first else TIMEOUT:g} s"
        except (asyncio.IncompleteReadError, OSError):  # closed or reset (OSError covers ssl.SSLError)
            ended = ""
        if first:
            sent = "only empty lines" if blank else "nothing"
            self._record(place.sender, "silent", f"connected and sent {sent}{ended}", "", "")
        return None

    def _length(self, request: Request, path: str) -> int:
        """The body's length (RFC 9112 6.3): CHUNKED for Transfer-Encoding: chunked (7.1), else from
        Content-Length, 0 when a request other than a POST has none. Both at once is refused, as
        request smuggling may hide in it (6.3 item 3); another transfer coding is not implemented
        (501, RFC 9112 6.1)."""
        method = request.method
        coding = request.headers.get("transfer-encoding")
        if coding is not None:
            if "content-length" in request.headers:
                raise Broken("bad-request", "both Transfer-Encoding and Content-Length", HTTPStatus.BAD_REQUEST,
                             method, path)
            if coding.strip().lower() != "chunked":
                raise Broken("bad-request", f"transfer coding {coding[:40]!r} is not implemented: send chunked or "
                             "Content-Length", HTTPStatus.NOT_IMPLEMENTED, method, path)
            return CHUNKED
        given = request.headers.get("content-length")
        if given is None and method != "POST":
            return 0
        # RFC 9110 8.6: the same value repeated ("7, 7") is one. "²" is a digit to str.isdigit,
        # not to int(): only ASCII digits are taken.
        values = {v.strip() for v in (given or "").split(",")}
        digits = values.pop() if len(values) == 1 else ""
        if not (digits.isascii() and digits.isdigit()):
            shown = "" if given is None else f" as one number of octets, not {given[:40]!r}"
            raise Broken("bad-request", f"{method} needs Content-Length{shown}", HTTPStatus.LENGTH_REQUIRED,
                         method, path)
        digits = digits.lstrip("0") or "0"
        # Compared as text first: int() refuses more than 4,300 digits with a ValueError.
        if len(digits) > len(str(self.max_body)) or int(digits) > self.max_body:
            shown = digits if len(digits) <= 20 else f"{digits[:20]}... ({len(digits)} digits)"
            raise Broken("bad-request", f"body of {shown} octets exceeds {self.max_body}",
                         HTTPStatus.REQUEST_ENTITY_TOO_LARGE, method, path)
        return int(digits)

    async def _respond(self, request: Request, body: bytes, sender: Sender) -> Reply:
        """The answer to a whole request; a failure of pacsguard's own (the store unreachable, a bug)
        is logged and answered 500, and ends the connection."""
        try:
            return await self._handle(request, body, sender)
        except Exception as exc:  # noqa: BLE001 - answered, and the server goes on
            log.exception("RESTful ATNA %s from %s", request.method, sender.host)
            failed = outcome(HTTPStatus.INTERNAL_SERVER_ERROR, f"the request failed: {type(exc).__name__}")
            return dataclasses.replace(failed, close=True)

    async def _handle(self, request: Request, body: bytes, sender: Sender) -> Reply:
        """Route a request. HEAD is answered as GET, its content then left out (RFC 9110 9.3.2: every
        general-purpose server supports GET and HEAD)."""
        method, headers, url = request.method, request.headers, request.url
        if method not in _METHODS:
            return self._unserved(sender, request, outcome(
                HTTPStatus.NOT_IMPLEMENTED, f"method {method[:40]!r} is not implemented (RFC 9110 9.1: methods are "
                "case-sensitive; GET, HEAD and POST are served)"))
        method = "GET" if method == "HEAD" else method
        path = url.path.rstrip("/")
        if path in ("/metadata", "/fhir/metadata"):
            if method != "GET":
                return self._unserved(sender, request, _not_allowed(method, url.path, "GET, HEAD"))
            from pacsguard import __version__

            if (refused := self._not_acceptable(sender, url.query, headers, url.path)) is not None:
                return refused
            base = self._base_for(headers.get("host", ""), path.removesuffix("/metadata"))
            return Reply(200, fhir.capability_statement(base, __version__, datetime.now(timezone.utc),
                                                        SEARCH_PARAMETERS, SEARCH_DOCUMENTATION))
        if (one := _AUDIT_EVENT.fullmatch(path)) is not None:
            if method != "GET":
                return self._unserved(sender, request, _not_allowed(method, "an AuditEvent", "GET, HEAD"))
            if (refused := self._not_acceptable(sender, url.query, headers, url.path)) is not None:
                return refused
            return await self._read(one.group(2))
        if path in _BASES:
            if method != "POST":
                return self._unserved(sender, request, _not_allowed(method, url.path, "POST"))
            return await self._stored(self._feed(body, sender, self._base_for(headers.get("host", ""), path)))
        if path not in _AUDIT_EVENTS:
            return self._unserved(sender, request, outcome(HTTPStatus.NOT_FOUND,
                                                           f"{url.path}: only /AuditEvent (and /metadata) is served"))
        base = self._base_for(headers.get("host", ""), path.removesuffix("/AuditEvent"))
        if method == "GET":
            return await self._search(url.query, sender, base, headers)
        if method == "POST":
            return await self._stored(self._ingest(body, sender, base, headers.get("content-type", "")))
        return self._unserved(sender, request, _not_allowed(method, url.path, "GET, HEAD, POST"))

    def _not_acceptable(self, sender: Sender, query: str, headers: dict[str, str], path: str) -> Reply | None:
        """A 406, recorded, when the GET of ``path`` takes no FHIR JSON (`_unacceptable`); else None."""
        unacceptable = _unacceptable(query, headers.get("accept", ""))
        if unacceptable is None:
            return None
        return self._refuse(sender, "bad-request", unacceptable, "GET", path, HTTPStatus.NOT_ACCEPTABLE)

    def _unserved(self, sender: Sender, request: Request, reply: Reply) -> Reply:
        """A request for a path not served or with a method not taken (404, 405, 501), recorded as
        bad-request: a PUT or DELETE of an AuditEvent, or a scan of paths, leaves its trace."""
        self._record(sender, "bad-request", str(reply.body["issue"][0]["diagnostics"]), request.method,
                     request.url.path)
        return reply

    @property
    def authentication(self) -> str:
        """What a request must carry, for the banner: the token, a client certificate, or both."""
        return " and ".join(name for name, needed in (("token", self.token is not None),
                                                      ("mutual TLS", self.config.require_client_cert)) if needed)

    def _unauthorised(self, headers: dict[str, str], writer: asyncio.StreamWriter) -> str | None:
        """Why a request is refused (401), or None. Each configured credential is needed: with both
        a token and require_client_cert, a certificate of the CA alone (any modality's syslog
        certificate) is not enough, nor the token alone (defence in depth, as configured)."""
        if self.config.require_client_cert and not writer.get_extra_info("peercert"):
            return "no verified client certificate"  # the TLS layer verifies it against ca_file
        if self.token is None:
            return None
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer ") and hmac.compare_digest(auth[7:].strip().encode(), self.token):
            return None
        both = " (a client certificate alone is not enough: both are configured)" \
            if self.config.require_client_cert else ""
        return f"no valid bearer token{both}"

    def _base_for(self, host: str, prefix: str) -> str:
        """The URL the client reached the endpoint by, for the links and locations it is given: its
        Host header when that is a host name or address (else the address listened on), and the
        path's prefix (/fhir, or none)."""
        origin = f"{self.scheme}://{host}" if _HOST.fullmatch(host) else self.base
        return origin + prefix

    async def _stored(self, reply: Reply) -> Reply:
        """``reply`` once what the request published is durable (in the store, or in the bus's
        journal): a 201 or 200 says the message is kept, so it waits for that, as the gateway holds
        its answers (events/durable.py). When the store is not writing within SETTLE_SECONDS, 503
        with Retry-After instead: what was received is still written once the store takes writes
        again, so a message sent again may be stored twice, never lost. A refusal (4xx) waits for
        nothing."""
        if reply.status not in (200, 201) or self.settled is None or await self.settled(SETTLE_SECONDS):
            return reply
        return dataclasses.replace(outcome(
            HTTPStatus.SERVICE_UNAVAILABLE, f"received but not yet stored within {SETTLE_SECONDS} s: the store is "
            "not writing (pacsguard's log says why); it is written once the store takes writes again"),
            retry_after=RETRY_AFTER)

    def _ingest(self, body: bytes, sender: Sender, base: str, content_type: str) -> Reply:
        """FHIR create of one AuditEvent (ITI-20's FHIR feed): FHIR JSON only, whatever the
        Content-Type says, and an XML one (FHIR's XML format) refused with 415. Stored either way:
        raw and flagged when it is not an AuditEvent."""
        received = _received(sender, body)
        media = content_type.partition(";")[0].strip().lower()
        if media in _XML_TYPES:
            error = f"Content-Type {media}: FHIR XML is not supported, only FHIR JSON ({FHIR_JSON})"
            self.publish(unparsed_event(received, "not-fhir", error, [], sender))
            return outcome(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, error)
        event = fhir_body_event(received, body, sender)
        self.publish(event)
        if event.kind == "atna.message.unparsed":
            return outcome(HTTPStatus.BAD_REQUEST, str(event.details["error"]))
        return Reply(201, fhir.render(record_from_event(event), event.id), f"{base}/AuditEvent/{event.id}")

    def _feed(self, body: bytes, sender: Sender, base: str) -> Reply:
        """A batch or transaction Bundle of AuditEvents POSTed to the FHIR base (FHIR R4 3.1.0.11,
        IHE ITI-20's FHIR feed, which an Audit Record Repository takes besides single creates): each
        entry, a POST of an AuditEvent, stored as its own message, and a batch-response or
        transaction-response Bundle answered (200), an entry's response 201 with its location. A
        transaction is all or nothing: an entry that is no valid AuditEvent refuses it whole (400,
        nothing stored of it but the body raw, unparsed). In a batch, each entry stands alone: one
        that is not an AuditEvent is stored raw, unparsed, and answered 400 in its place. A body that
        is no such Bundle is stored raw, unparsed, and answered 400."""
        received = _received(sender, body)
        try:
            kind, resources = _audit_bundle(body)
        except AuditMessageError as exc:
            self.publish(unparsed_event(received, exc.problem, str(exc), [], sender))
            return outcome(HTTPStatus.BAD_REQUEST, str(exc))
        # Each entry is its own message, its raw form the entry's resource as JSON (the Bundle's own
        # bytes, other entries included, are not repeated in each).
        events = [payload_event(_received(sender, payload), payload, [], sender)
                  for payload in (orjson.dumps(resource) for resource in resources)]
        failed = next(((n, e) for n, e in enumerate(events) if e.kind == "atna.message.unparsed"), None)
        if kind == "transaction" and failed is not None:
            error = f"transaction Bundle entry {failed[0]}: {failed[1].details['error']} (nothing of it stored)"
            self.publish(unparsed_event(received, str(failed[1].details["problem"]), error, [], sender))
            return outcome(HTTPStatus.BAD_REQUEST, error)
        answers = []
        for event in events:
            self.publish(event)
            answers.append(_entry_response(event, base))
        return Reply(200, {"resourceType": "Bundle", "type": f"{kind}-response", "entry": answers})

    async def _read(self, resource_id: str) -> Reply:
        """FHIR read (R4 3.1.0.1) of the AuditEvent a search Bundle's entry gives with this id (its
        fullUrl, as a POST's Location): the resource as the search renders it, or 404."""
        found = await asyncio.to_thread(stored_by_id, self.store, resource_id)
        if found is None:
            shown = resource_id if len(resource_id) <= 64 else f"{resource_id[:64]}..."
            return outcome(HTTPStatus.NOT_FOUND, f"no AuditEvent with the id {shown!r}")
        return Reply(200, fhir.render(record_from_event(found.event), found.event.id))

    async def _search(self, query: str, sender: Sender, base: str, headers: dict[str, str]) -> Reply:
        strict = _preferences(headers.get("prefer", "")).get("handling") == "strict"
        try:
            q = AuditQuery.parse(parse_qs(query, keep_blank_values=True), strict=strict)
        except QueryError as exc:
            return self._refuse(sender, "bad-request", str(exc), "GET", "/AuditEvent", HTTPStatus.BAD_REQUEST)
        if (refused := self._not_acceptable(sender, query, headers, "/AuditEvent")) is not None:
            return refused
        found = await asyncio.to_thread(self._find, q) if q.count else []
        resources = [fhir.render(record_from_event(s.event), s.event.id) for s in found]
        # A full page may have more after it: a next link with the cursor after its last event. The
        # total is given when the whole result is this page, or when asked for (_count=0,
        # _total=accurate): counting every match of a large search costs a scan of all of it, and
        # FHIR R4 makes Bundle.total optional.
        full = q.count > 0 and len(found) >= q.count
        # FHIR R4 search ("Server Conformance"): the server SHALL return the parameters it used, in
        # the self link; one ignored (lenient handling) is not among them.
        used = urlencode([(k, v) for k, v in parse_qsl(query) if k not in q.ignored])
        self_url = f"{base}/AuditEvent" + (f"?{used}" if used else "")
        next_url = f"{base}/AuditEvent?{_with_cursor(used, found[-1].seq)}" if full else None
        if q.counted or not q.count:
            total: int | None = await asyncio.to_thread(self._count, q)
        else:
            total = None if full or q.after is not None else len(found)
        ignored = [f"search parameter {name!r} is not supported: ignored" for name in q.ignored]
        return Reply(200, fhir.bundle(resources, base, total=total, self_url=self_url, next_url=next_url,
                                      warnings=ignored))

    def _find(self, q: AuditQuery) -> list[StoredEvent]:
        return q.page(q.stored(self.store, after=q.after))

    def _count(self, q: AuditQuery) -> int:
        return sum(1 for s in q.stored(self.store) if q.matches(s.event))

    def _refuse(self, sender: Sender, problem: str, error: str, method: str, path: str,
                status: HTTPStatus) -> Reply:
        """Record a refused request and explain the refusal."""
        self._record(sender, problem, error, method, path)
        return outcome(status, error)

    def _record(self, sender: Sender, problem: str, error: str, method: str, path: str) -> None:
        """An Event naming the sender of a refused, incomplete or missing request: the first few of a
        problem from a host in an interval, the others counted into one (`Repeats`). Connections
        closed when the endpoint is full are recorded at most every 10 s already (`Refusals`)."""
        now = asyncio.get_running_loop().time()
        self._summarise(now)
        if problem == "too-many-connections" or self.repeats.note(sender, problem, error, method, path, now):
            self._publish(sender, problem, error, method, path)

    def _publish(self, sender: Sender, problem: str, error: str, method: str, path: str, repeats: int = 0) -> None:
        what = {"silent": "connection{} from {} sent no request",
                "truncated": "request{} from {} not complete"}.get(problem, "request{} from {} refused")
        details: dict[str, object] = {"sender": sender.to_dict(), "problem": problem, "error": error,
                                      "method": method, "path": path}
        if repeats:  # a summary: it stands for this many requests (`atna sources` counts them all)
            details["repeats"] = repeats
        self.publish(Event(kind="atna.http.rejected", component="atna", severity=Severity.WARNING,
                           outcome=Outcome.MINOR_FAILURE, actor=Party(host=sender.host, port=sender.port),
                           message=f"RESTful ATNA {what.format('s' if repeats else '', sender.host)}: {error}",
                           details=details))


async def _read_head(reader: asyncio.StreamReader, deadline: float) -> bytes:
    """The rest of a request head, up to the empty line that ends it (RFC 9112 2.1), by
    ``deadline``: at most MAX_HEAD octets (else 431), whole (else the client closed mid-head). Read
    a line at a time, so that a head whose lines end in a bare LF ends where its client thinks it
    does, and is refused as such (`_parse_head`) rather than waited on until the deadline."""
    head = bytearray()
    try:
        async with asyncio.timeout_at(deadline):
            while not head.endswith((b"\n\r\n", b"\n\n")):
                head += await reader.readuntil(b"\n")
                if len(head) > MAX_HEAD:
                    raise asyncio.LimitOverrunError("request head too large", len(head))
        return bytes(head)
    except TimeoutError:
        raise Broken("truncated", f"request head not complete after {HEAD_TIMEOUT:g} s",
                     HTTPStatus.REQUEST_TIMEOUT) from None
    except asyncio.LimitOverrunError:
        raise Broken("bad-request", "request head too large", HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE) from None
    except asyncio.IncompleteReadError as exc:
        raise Broken("truncated", f"connection closed after {len(head) + len(exc.partial) + 1} octets of a "
                     "request head", HTTPStatus.BAD_REQUEST) from None
    except OSError as exc:  # reset, or a TLS failure (ssl.SSLError)
        raise Broken("truncated", f"connection lost in a request head ({type(exc).__name__})",
                     HTTPStatus.BAD_REQUEST) from None


def _parse_head(head: bytes) -> Request:
    """The request line and header fields of ``head`` (RFC 9112 3, 5), or Broken (400). Field
    names are taken in lower case; a field given twice is one, its values joined by commas
    (RFC 9110 5.3)."""
    if _BARE_LF.search(head):
        # RFC 9112 2.2 lets a server take LF alone as a line's end; it is refused instead, as a bare
        # CR is: a proxy before pacsguard may read the lines otherwise (request smuggling).
        raise Broken("bad-request", "a line of the request head ends in a bare LF, not CRLF (RFC 9112 2.2)",
                     HTTPStatus.BAD_REQUEST)
    lines = head.decode("latin-1").split("\r\n")  # latin-1 decodes any octet: never a UnicodeDecodeError
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _VERSION.fullmatch(parts[2]):
        raise Broken("bad-request", "not an HTTP/1.x request", HTTPStatus.BAD_REQUEST)
    method, target, version = parts
    headers: dict[str, str] = {}
    hosts = 0
    for line in filter(None, lines[1:]):
        if any(c in line for c in "\r\n\0"):  # RFC 9112 5.5, 2.2: a bare CR or LF, or a NUL, may hide a field
            raise Broken("bad-request", f"a CR or NUL inside a header line ({_field_named(line)})",
                         HTTPStatus.BAD_REQUEST, method)
        name, colon, value = line.partition(":")
        # RFC 9112 5.1: no whitespace between a field name and its colon; 5.2: no line folding.
        if line[0] in " \t":
            raise Broken("bad-request", f"a folded header line (obs-fold, RFC 9112 5.2: {len(line)} octets, not "
                         "shown)", HTTPStatus.BAD_REQUEST, method)
        if not colon or not name or name != name.strip():
            raise Broken("bad-request", f"not a header field ({_field_named(line)}): RFC 9112 5.1 asks for "
                         "name:value, no whitespace before the colon", HTTPStatus.BAD_REQUEST, method)
        key = name.lower()
        hosts += key == "host"
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    try:
        url = urlsplit(target)
    except ValueError as exc:  # e.g. "//[": an unclosed IPv6 literal
        raise Broken("bad-request", f"request target {target[:80]!r}: {exc}", HTTPStatus.BAD_REQUEST,
                     method) from None
    # RFC 9112 3.2: 400 for an HTTP/1.1 request without Host, and for any with more than one (which
    # of two hosts was meant is a guess, and a proxy before pacsguard may have guessed otherwise).
    # HTTP/1.x above 1.1 is taken as 1.1 (RFC 9110 2.5).
    if hosts > 1:
        raise Broken("bad-request", f"{hosts} Host header fields (RFC 9112 3.2: exactly one)", HTTPStatus.BAD_REQUEST,
                     method, url.path)
    if not hosts and version != "HTTP/1.0":
        raise Broken("bad-request", f"an {version} request without a Host header field (RFC 9112 3.2)",
                     HTTPStatus.BAD_REQUEST, method, url.path)
    # 3.2: an invalid field value is a 400 too (a list, "a, b", is two hosts in one line); empty
    # is allowed, for a target without an authority.
    given = headers.get("host", "")
    if given and not _HOST.fullmatch(given):
        raise Broken("bad-request", f"Host {given[:80]!r} is not a host[:port] (RFC 9112 3.2, RFC 3986 3.2.2)",
                     HTTPStatus.BAD_REQUEST, method, url.path)
    return Request(method, url, version, headers)


def _field_named(line: str) -> str:
    """A refused header line as its error names it: the field's name, never its value (an
    Authorization or Cookie value is a secret, and the error is recorded in the store)."""
    name, colon, _ = line.partition(":")
    if colon and name.strip() and not any(c in name for c in "\r\n\0"):
        return f"the field {name[:40]!r}, its value not shown"
    return f"a line of {len(line)} octets, not shown"


def _not_allowed(method: str, target: str, allow: str) -> Reply:
    """405 Method Not Allowed, with the Allow field the status requires (RFC 9110 15.5.6)."""
    return dataclasses.replace(outcome(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} of {target or 'an empty path'} is "
                                       f"not supported (allowed: {allow})"), allow=allow)


def _expects_continue(request: Request, path: str) -> bool:
    """Whether the client waits for a 100 (Continue) before it sends the body (RFC 9110 10.1.1:
    "Expect: 100-continue", case-insensitive); Broken (417 Expectation Failed) for an expectation
    this server cannot meet, which is any other. An HTTP/1.0 request's Expect is ignored (10.1.1:
    it was not defined then, a proxy may have passed it on unread)."""
    if request.version == "HTTP/1.0":
        return False
    given = request.headers.get("expect", "")
    expected = {e.strip().lower() for e in given.split(",")} - {""}
    if expected - {"100-continue"}:
        raise Broken("bad-request", f"Expect: {given[:80]!r} cannot be met: only 100-continue is",
                     HTTPStatus.EXPECTATION_FAILED, request.method, path)
    return bool(expected)


async def _continue(writer: asyncio.StreamWriter) -> None:
    """Send the 100 (Continue) a client waits for before it sends the body (RFC 9110 15.2.1): curl
    waits a second for it, then sends the body anyway. A client gone is found by the body's read."""
    with contextlib.suppress(OSError, RuntimeError):
        writer.write(_CONTINUE)
        await writer.drain()


async def _read_chunked(reader: asyncio.StreamReader, most: int, deadline: float, method: str, path: str) -> bytes:
    """A chunked body (RFC 9112 7.1): chunks of a hexadecimal size (extensions ignored, 7.1.1), the
    last of size 0, then trailer fields (dropped, 7.1.2), by ``deadline``, at most ``most`` octets."""
    body = bytearray()
    try:
        async with asyncio.timeout_at(deadline):
            while True:
                line = await reader.readuntil(b"\r\n")
                size_text = line[:-2].split(b";", 1)[0].strip()
                if not size_text or len(size_text) > 16 or not all(c in b"0123456789abcdefABCDEF" for c in size_text):
                    raise Broken("bad-request", f"not a chunk size: {line[:40]!r}", HTTPStatus.BAD_REQUEST, method,
                                 path)
                size = int(size_text, 16)
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailer fields, up to the empty line
                        pass
                    return bytes(body)
                if len(body) + size > most:
                    raise Broken("bad-request", f"chunked body over {most} octets", HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                 method, path)
                body += await reader.readexactly(size)
                if await reader.readexactly(2) != b"\r\n":
                    raise Broken("bad-request", "a chunk not followed by CRLF", HTTPStatus.BAD_REQUEST, method, path)
    except TimeoutError:
        raise Broken("truncated", f"chunked body not complete after {TIMEOUT:g} s ({len(body)} octets)",
                     HTTPStatus.REQUEST_TIMEOUT, method, path) from None
    except asyncio.LimitOverrunError:
        raise Broken("bad-request", "a chunk-size line too long", HTTPStatus.BAD_REQUEST, method, path) from None
    except (asyncio.IncompleteReadError, OSError) as exc:
        raise Broken("truncated", f"chunked body cut short after {len(body)} octets ({type(exc).__name__})",
                     HTTPStatus.BAD_REQUEST, method, path) from None


async def _read_body(reader: asyncio.StreamReader, length: int, deadline: float, method: str, path: str) -> bytes:
    """``length`` octets of body, by ``deadline`` (else 408); fewer when the client closes is an
    incomplete message (RFC 9112 8), refused."""
    body = bytearray()
    try:
        async with asyncio.timeout_at(deadline):
            while len(body) < length:
                chunk = await reader.read(min(length - len(body), _CHUNK))
                if not chunk:
                    break
                body += chunk
    except TimeoutError:
        raise Broken("truncated", f"body of {len(body)} of the {length} octets of its Content-Length after "
                     f"{TIMEOUT:g} s", HTTPStatus.REQUEST_TIMEOUT, method, path) from None
    except OSError as exc:  # reset, or a TLS failure (ssl.SSLError)
        raise Broken("truncated", f"body of {len(body)} of the {length} octets of its Content-Length, then the "
                     f"connection was lost ({type(exc).__name__})", HTTPStatus.BAD_REQUEST, method, path) from None
    if len(body) < length:
        raise Broken("truncated", f"body of {len(body)} of the {length} octets of its Content-Length, then the "
                     "client closed", HTTPStatus.BAD_REQUEST, method, path)
    return bytes(body)


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, most: float = LINGER) -> None:
    """Close in stages (RFC 9112 9.6): the sending side first, then read and drop what the client
    still sends until it closes or ``most`` seconds (LINGER) pass. Closing with unread octets (a body not
    read, pipelined requests after the last one served) would reset the connection, and the
    client could lose the answer it was sent."""
    if writer.can_write_eof():  # TLS cannot half-close: the client's close ends the reading
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()
    with contextlib.suppress(TimeoutError, OSError):
        async with asyncio.timeout(most):
            while await reader.read(_CHUNK):
                pass


async def _send(writer: asyncio.StreamWriter, reply: Reply, version: str) -> bool:
    """Write ``reply``; False when the client is gone. Stalled, the connection aborted, when the
    client has not taken it within WRITE_TIMEOUT seconds (its buffers full: it reads nothing)."""
    try:
        writer.write(_encode(reply, version, secure=writer.get_extra_info("ssl_object") is not None))
        async with asyncio.timeout(WRITE_TIMEOUT):
            await writer.drain()
    except TimeoutError:
        _abort(writer)
        raise Stalled(f"the client took none of an answer for {WRITE_TIMEOUT:g} s (it reads nothing): "
                      "connection closed") from None
    except (OSError, RuntimeError):  # reset, TLS failure; RuntimeError: a transport already closing
        return False
    return True


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close a connection: what is still to be sent is sent first (asyncio's close waits for it),
    for WRITE_TIMEOUT seconds at most, then the connection is aborted: a client that reads nothing
    does not hold it open."""
    writer.close()
    try:
        async with asyncio.timeout(WRITE_TIMEOUT):
            await writer.wait_closed()
    except TimeoutError:
        _abort(writer)
    except Exception:  # noqa: BLE001, S110 - closed with an error (a reset): closed all the same
        pass


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close at once, dropping what is still to be sent (a reset)."""
    abort = getattr(writer, "abort", None)  # https.TlsWriter
    if abort is not None:
        abort()
    else:
        writer.transport.abort()


def _received(sender: Sender, body: bytes) -> dict[str, Any]:
    """The details of a body received over HTTP: who sent it, when, and the body byte for byte."""
    return {"sender": sender.to_dict(), "received": datetime.now(timezone.utc).isoformat(), **raw_fields(body)}


def _audit_bundle(body: bytes) -> tuple[str, list[Any]]:
    """The type (batch or transaction) and the AuditEvent resources of a Bundle POSTed to the FHIR
    base (FHIR R4 Bundle, 3.1.0.11); AuditMessageError (not-fhir, bad-encoding) for a body that is
    not one, or has an entry other than a POST of an AuditEvent (this repository creates nothing
    else)."""
    bundle = read_json(body)
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise AuditMessageError("not-fhir", "a POST to the FHIR base takes a batch or transaction Bundle of "
                                "AuditEvents; POST one AuditEvent to /AuditEvent")
    kind = bundle.get("type")
    if kind not in ("batch", "transaction"):
        raise AuditMessageError("not-fhir", f"Bundle.type {str(kind)[:40]!r}: only a batch or transaction Bundle "
                                "is processed (FHIR R4 3.1.0.11)")
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise AuditMessageError("not-fhir", "Bundle.entry is not a JSON array")
    resources = []
    for number, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        request = entry.get("request") if isinstance(entry, dict) else None
        url = request.get("url") if isinstance(request, dict) else None
        if not (isinstance(resource, dict) and resource.get("resourceType") == "AuditEvent"
                and isinstance(request, dict) and request.get("method") == "POST"
                and isinstance(url, str) and url.rstrip("/").rsplit("/", 1)[-1] == "AuditEvent"):
            raise AuditMessageError("not-fhir", f"Bundle entry {number}: only a POST of an AuditEvent (request.method "
                                    "POST, request.url AuditEvent, resource an AuditEvent) is taken")
        resources.append(resource)
    return str(kind), resources


def _entry_response(event: Event, base: str) -> dict[str, Any]:
    """The response of one batch or transaction entry (FHIR R4 Bundle.entry.response): 201 with the
    created AuditEvent's location, or 400 with the OperationOutcome saying why it is not one."""
    if event.kind == "atna.message.unparsed":
        refused = outcome(HTTPStatus.BAD_REQUEST, str(event.details["error"]))
        return {"response": {"status": "400 Bad Request", "outcome": refused.body}}
    return {"fullUrl": f"{base}/AuditEvent/{event.id}",
            "response": {"status": "201 Created", "location": f"AuditEvent/{event.id}"}}


def _preferences(given: str) -> dict[str, str]:
    """The preferences of a Prefer header (RFC 7240 2: ``token [BWS "=" BWS word]``, a word a token
    or a quoted-string, so ``handling="strict"`` is ``handling=strict``), their parameters after
    ";" left out; names and values in lower case, the first of a name given twice taken (2)."""
    found: dict[str, str] = {}
    parameter = False  # after a ";": a parameter of the preference before it
    for item in _ITEM.findall(given):
        if item in (",", ";"):
            parameter = item == ";"
            continue
        if parameter:
            continue
        name, _, value = (part.strip() for part in item.partition("="))
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r"\\(.)", r"\1", value[1:-1])  # RFC 9110 5.6.4: a quoted-pair is its octet
        if name:
            found.setdefault(name.lower(), value.lower())
    return found


def _unacceptable(query: str, accept: str) -> str | None:
    """Why an answer in FHIR JSON, the only format served, is not one the request takes, for a 406
    (FHIR R4 http.html#mime-type; RFC 9110 12.5.1, 15.5.7), or None. ``_format`` (the last given)
    overrides Accept; a space in its value is the ``+`` of application/fhir+json sent unencoded (a
    ``+`` in a query is a space). Accept is taken when one of its media ranges, its ``q`` above 0,
    covers JSON (``*/*``, ``application/*`` too); one that is not ``type/subtype`` is left out, and
    an Accept of none (absent, or only such ranges) takes any."""
    formats = [v for k, v in parse_qsl(query) if k == "_format"]
    if formats:
        given = formats[-1].partition(";")[0].strip().lower().replace(" ", "+")
        if given == "json" or given in _JSON_TYPES:
            return None
        return f"_format={formats[-1][:64]!r}: only FHIR JSON ({FHIR_JSON}) is answered"
    ranges = []
    for item in accept.split(","):
        media, *parameters = (part.strip().lower() for part in item.split(";"))
        if not re.fullmatch(r"[^/\s]+/[^/\s]+", media):
            continue
        weight = next((p.partition("=")[2].strip() for p in parameters if p.partition("=")[0].strip() == "q"), "1")
        try:
            taken = float(weight) > 0
        except ValueError:
            taken = True  # a malformed qvalue (RFC 9110 12.4.2) read as the default, 1
        ranges.append((media, taken))
    if not ranges or any(taken and media in ("*/*", "application/*", *_JSON_TYPES) for media, taken in ranges):
        return None
    return f"Accept: {accept[:64]!r} takes no FHIR JSON ({FHIR_JSON}), the only format answered"


def _with_cursor(query: str, after: int) -> str:
    """The search's own parameters, with the cursor of the page after ``after`` (a store position)."""
    kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=False) if k != "_cursor"]
    return urlencode([*kept, ("_cursor", str(after))])


def _encode(reply: Reply, version: str, *, secure: bool = False) -> bytes:
    """The response (RFC 9112 4, 6): HTTP/1.1 whatever the request's minor version (RFC 9110 2.5).
    "Connection: close" when the connection ends after it (RFC 9112 9.6); to an HTTP/1.0 client
    that asked to keep it, "keep-alive" (RFC 9112 C.2.2). Over HTTPS (``secure``), HSTS (RFC 9325
    3.2, RFC 6797 6.1), which plain HTTP must not send (RFC 6797 7.2)."""
    body = json.dumps(reply.body).encode()
    # To HEAD, the Content-Length the GET would have (RFC 9110 8.6), and no content.
    head = (f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}\r\nContent-Type: {FHIR_JSON}\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n")
    if reply.close:
        head += "Connection: close\r\n"
    elif version == "HTTP/1.0":
        head += "Connection: keep-alive\r\n"
    if reply.location:
        head += f"Location: {reply.location}\r\n"
    if reply.status == 401:
        head += 'WWW-Authenticate: Bearer realm="pacsguard-atna"\r\n'
    if reply.retry_after is not None:
        head += f"Retry-After: {reply.retry_after}\r\n"
    if reply.allow is not None:
        head += f"Allow: {reply.allow}\r\n"
    if secure:
        head += f"Strict-Transport-Security: max-age={HSTS_MAX_AGE}\r\n"
    return head.encode("latin-1") + b"\r\n" + (b"" if reply.bodiless else body)
