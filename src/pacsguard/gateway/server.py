"""The gateway: one listener per route, the shared admission checks and limits, and quarantine
enforcement. `Gateway.start()` opens the listeners on the running asyncio loop."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

from pacsguard.config.schema import GatewayConfig, Route
from pacsguard.events import Event, Outcome, Party, Severity
from pacsguard.gateway import quarantine as q
from pacsguard.gateway.checks import Shared, build_chain
from pacsguard.gateway.relay import AssociationRelay, Endpoint, Side
from pacsguard.ids import DicomAdapter, Engine

if TYPE_CHECKING:
    from pacsguard.events.durable import Durability
    from pacsguard.gateway.objects import ObjectCheck
    from pacsguard.gateway.store_forward.route import StoreForwardRoute

log = logging.getLogger("pacsguard.gateway")

ALERT_WINDOW_TICK = 5.0  # seconds between checks for IDS limit windows that have closed

#: Publishes an Event; returns its ticket on the bus (pacsguard.events.bus) or None.
Publish = Callable[[Event], "int | None"]
Resolve = Callable[[Path], Path]
#: A store-and-forward route's object checks, by route (pacsguard.gateway.objects).
ObjectChecks = Callable[[Route], "list[ObjectCheck]"]


@dataclass(frozen=True, slots=True)
class Listener:
    route: str
    host: str
    port: int
    ae_title: str
    tls: bool
    upstream: str


class RouteRuntime:
    """Everything one route's associations share: its checks, TLS contexts and live associations.
    Implements the relay's view of its route (`pacsguard.gateway.route.RouteView`)."""

    def __init__(self, route: Route, gateway: "Gateway", resolve: Resolve) -> None:
        self.route = route
        self.gateway = gateway
        self.durability = gateway.durability
        self.checks = build_chain(route, Shared(gateway.quarantined, gateway.ips, gateway.durability))
        self.server_ssl = listen_tls_context(route, resolve)
        self.upstream_ssl = upstream_tls_context(route, resolve)
        self.quarantine_policy = gateway.quarantine_policy
        self.relays: set[AssociationRelay] = set()

    def publish(self, event: Event) -> int | None:
        return self.gateway.publish(event)

    def register(self, relay: AssociationRelay) -> None:
        self.relays.add(relay)

    def unregister(self, relay: AssociationRelay) -> None:
        self.relays.discard(relay)

    def quarantine(self, target: str, *, duration: timedelta | None, reason: str, component: str) -> None:
        self.gateway.quarantine(target, duration=duration, reason=reason, component=component)

    def protocol_factory(self) -> Side:
        if self.server_ssl:
            return TLSAcceptingSide(AssociationRelay(self), self.server_ssl)
        return Side(AssociationRelay(self), True)


class TLSAcceptingSide(Side):
    """The client leg of a TLS route: the handshake runs explicitly (start_tls) so that a failed
    one (no client certificate, wrong CA, TLS 1.1) is recorded as an event with the peer's address,
    and the client gets OpenSSL's alert (RFC 8446 6.2). Runs on uvloop and on asyncio's loop."""

    def __init__(self, relay: Endpoint, context: ssl.SSLContext) -> None:
        super().__init__(relay, True)
        self.context = context
        self.ready = False
        self.switched = False  # start_tls() has taken the connection over
        self.gone = False  # the client closed (or reset) the connection before that
        # The client's first TLS records, read before start_tls() took the connection over: uvloop
        # starts reading a new connection once connection_made() returns, whatever it asked for.
        self.hello: list[bytes] = []
        # Decrypted data can arrive before start_tls() returns: hold it until the relay knows the
        # peer's address and certificate, or the RQ would be judged without them.
        self.early: list[bytes] = []

    def buffer_updated(self, nbytes: int) -> None:
        if self.ready:
            super().buffer_updated(nbytes)
        elif self.switched:
            self.early.append(bytes(self._view[:nbytes]))
        else:
            self.hello.append(bytes(self._view[:nbytes]))
            assert self.transport is not None  # set in connection_made, before any read
            self.transport.pause_reading()  # start_tls() resumes reading once it owns the connection

    def eof_received(self) -> bool:
        if self.switched:
            return super().eof_received()
        self.gone = True
        return True  # the handshake task records why and closes

    def connection_lost(self, exc: Exception | None) -> None:
        if self.switched:
            super().connection_lost(exc)
        else:
            self.gone = True  # the relay never heard of this client: nothing to tell it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # Until start_tls() owns the socket, the ClientHello should not reach this (plaintext)
        # protocol; asyncio's loop honours this, uvloop reads once more (kept in `hello`).
        transport.pause_reading()  # type: ignore[attr-defined]
        asyncio.get_running_loop().create_task(self._handshake(transport))

    def _replay_hello(self, raw: asyncio.BaseTransport) -> None:
        """Give the TLS protocol that start_tls() put on *raw* the records this one read first.
        Runs before that protocol's connection_made(), which start_tls() schedules after it: the
        bytes wait in its incoming BIO, and the handshake starts with them."""
        hello, self.hello = b"".join(self.hello), []
        protocol = raw.get_protocol()
        if hello and protocol is not self:
            feed(protocol, hello)

    async def _start_tls(self, raw: asyncio.BaseTransport) -> asyncio.BaseTransport:
        if self.gone:
            raise ConnectionResetError("the client closed the connection before its first TLS record")
        loop = asyncio.get_running_loop()
        loop.call_soon(self._replay_hello, raw)  # before the callbacks start_tls() schedules
        self.switched = True
        tls = await loop.start_tls(raw, self, self.context, server_side=True,  # type: ignore[arg-type]
                                   ssl_handshake_timeout=self.relay.route.limits.artim_timeout)
        if tls is None or tls.is_closing():
            # uvloop completes start_tls() without an error when the connection is lost mid-handshake.
            raise ConnectionResetError("the connection was lost during the handshake")
        return tls

    async def _handshake(self, raw: asyncio.BaseTransport) -> None:
        peer = raw.get_extra_info("peername") or ("?", 0)
        # A second handle on the socket: the loop closes its own when a handshake fails, before
        # the alert OpenSSL wrote for the client has been sent (see pacsguard.tls.alerts).
        held = None if self.gone or raw.is_closing() else raw.get_extra_info("socket")
        spare = held.dup() if held is not None else None
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            tls = await self._start_tls(raw)
        except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
            from pacsguard.tls.alerts import pending_alert, send_alert

            if spare is not None:
                send_alert(spare, pending_alert(exc))
            self._refused(peer, exc, timed_out=self._timed_out(exc, loop.time() - started))
            raw.close()
            return
        except asyncio.CancelledError:
            if spare is not None:
                spare.close()
            raise
        if spare is not None:
            spare.close()  # the handshake succeeded: the TLS transport owns the connection
        Side.connection_made(self, tls)
        self.ready = True
        early, self.early = self.early, []
        for data in early:
            self.deliver(data)

    def _timed_out(self, exc: BaseException, elapsed: float) -> bool:
        """Whether the loop's handshake timeout (limits.artim_timeout, given to start_tls) ended the
        handshake: both loops then close the connection and report it as lost or aborted
        (ConnectionAbortedError), which alone reads as the client's doing."""
        if isinstance(exc, ssl.SSLError) or not isinstance(exc, (ConnectionError, TimeoutError)):
            return False
        return isinstance(exc, TimeoutError) or elapsed >= self.relay.route.limits.artim_timeout - 0.1

    def _refused(self, peer: tuple[str, int], exc: BaseException, *, timed_out: bool = False) -> None:
        from pacsguard.tls import explain_tls_error

        if timed_out:
            why = (f"the gateway timed the handshake out after {self.relay.route.limits.artim_timeout:g} s "
                   "(limits.artim_timeout): the client did not complete it in time")
        elif isinstance(exc, ssl.SSLError):
            why = explain_tls_error(exc)
        elif isinstance(exc, ConnectionError):
            why = ("the client closed the connection during the handshake (it may not trust the gateway's "
                   "certificate, or offer no common TLS version or cipher)")
        else:
            why = str(exc) or type(exc).__name__
        self.relay.publish(Event(kind="tls.handshake.failed", component="gateway", severity=Severity.WARNING,
                                 outcome=Outcome.SERIOUS_FAILURE, actor=Party(host=str(peer[0]), port=int(peer[1])),
                                 target=Party(ae_title=self.relay.route.listen.ae_title),
                                 message=f"TLS handshake with {peer[0]}:{peer[1]} failed: {why}",
                                 details={"route": self.relay.route.name, "error": why}))


def feed(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """Deliver *data* to *protocol* as its transport would (through its buffer if it has one)."""
    get_buffer = getattr(protocol, "get_buffer", None)
    if get_buffer is None:
        protocol.data_received(data)  # type: ignore[attr-defined]
        return
    view = memoryview(data)
    while view:
        buffer = get_buffer(len(view))
        n = min(len(buffer), len(view))
        buffer[:n] = view[:n]
        protocol.buffer_updated(n)  # type: ignore[attr-defined]
        view = view[n:]


class Gateway:
    """All routes of the configuration, plus quarantine. Publishes every Event through `publish`."""

    def __init__(self, config: GatewayConfig, publish: Publish, *, resolve: Resolve = lambda p: p,
                 read_quarantine: Callable[[int], list[tuple[int, Event]]] | None = None,
                 engine: Engine | None = None, durability: Durability | None = None,
                 object_checks: ObjectChecks | None = None) -> None:
        self.config = config
        self.publish = publish
        # Tells a relay when the events it published are durable (docs/gateway.md, "Nothing
        # acknowledged without its record"); None: answers are never held (the in-memory tests).
        self.durability = durability
        self.engine = engine  # the IDS rules, run inline on every route (IPS); None: no rules
        self.ips = DicomAdapter(engine) if engine is not None else None
        self.quarantined = q.QuarantineList()
        self.quarantine_policy = q.QuarantinePolicy(config.quarantine_scope, tuple(config.admin_hosts))
        self.routes = [RouteRuntime(r, self, resolve) for r in config.routes if r.mode == "relay"]
        self.stored = [self._store_forward(r, resolve, object_checks) for r in config.routes
                       if r.mode == "store-and-forward"]
        self._read_quarantine = read_quarantine
        self._quarantine_seq = -1
        self._servers: list[asyncio.base_events.Server] = []
        self._poller: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.listeners: list[Listener] = []

    async def start(self) -> list[Listener]:
        loop = asyncio.get_running_loop()
        if self._read_quarantine is not None:
            await self.refresh_quarantine()
            self._poller = loop.create_task(self._poll_quarantine())
        if self.engine is not None:
            self._ticker = loop.create_task(self._close_alert_windows())
        for rt in self.routes:
            listen = rt.route.listen
            try:
                server = await loop.create_server(rt.protocol_factory, listen.host, listen.port, reuse_address=True)
            except OSError as exc:
                await self.stop()
                raise OSError(exc.errno, f"route {rt.route.name}: cannot listen on {listen.host}:{listen.port}: "
                                         f"{exc.strerror}") from None
            self._servers.append(server)
            port = server.sockets[0].getsockname()[1]
            up = rt.route.upstream
            self.listeners.append(Listener(rt.route.name, listen.host, port, listen.ae_title, rt.server_ssl is not None,
                                           f"{up.ae_title}@{up.host}:{up.port}" + (" (TLS)" if up.tls else "")))
            _warn_open(rt.route)
        for sf in self.stored:
            try:
                port = await sf.start()
            except OSError:
                await self.stop()
                raise
            r = sf.route
            dests = ", ".join(f"{d.ae_title}@{d.host}:{d.port}" + (" (TLS)" if d.tls else "") for d in r.destinations)
            self.listeners.append(Listener(r.name, r.listen.host, port, r.listen.ae_title, sf.server_ssl is not None,
                                           f"{dests} (store-and-forward)"))
            _warn_open(r)
        return self.listeners

    def _store_forward(self, route: Route, resolve: Resolve, object_checks: ObjectChecks | None) -> StoreForwardRoute:
        from pacsguard.gateway.store_forward.route import StoreForwardRoute

        return StoreForwardRoute(route, build_chain(route, Shared(self.quarantined, self.ips, self.durability)),
                                 publish=self.publish, quarantined=self.quarantined, quarantine=self.quarantine,
                                 object_checks=object_checks(route) if object_checks else [], resolve=resolve,
                                 durability=self.durability, server_ssl=listen_tls_context(route, resolve),
                                 quarantine_policy=self.quarantine_policy)

    async def stop(self, grace: float = 5.0) -> None:
        if self._poller is not None:
            self._poller.cancel()
        for server in self._servers:
            server.close()
        for sf in self.stored:
            await sf.stop(grace)
        deadline = time.monotonic() + grace
        while any(rt.relays for rt in self.routes) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for rt in self.routes:
            for relay in list(rt.relays):
                relay.abort("the gateway is shutting down", kind="shutdown")
        if self._ticker is not None:
            self._ticker.cancel()
        if self.engine is not None:  # the aggregate alerts of limit windows still open (docs/ids.md)
            for alert in self.engine.flush():
                self.publish(alert.event)

    async def _close_alert_windows(self) -> None:
        """An IDS limit window closes on the next observation; on a quiet gateway this timer closes
        it, so an aggregate alert never waits for traffic that may not come."""
        assert self.engine is not None
        while True:
            await asyncio.sleep(ALERT_WINDOW_TICK)
            for alert in self.engine.due(self.engine.clock()):
                self.publish(alert.event)

    # --- quarantine ---------------------------------------------------------------------------

    def quarantine(self, target: str, *, duration: timedelta | None = None, reason: str = "",
                   component: str = "gateway") -> None:
        """Quarantine a host or AE title now (the IPS hook): recorded, applied and enforced at once."""
        event = q.change_event("add", target, duration=duration, reason=reason, component=component)
        self.publish(event)
        self.quarantined.apply(event)
        self.enforce()

    async def refresh_quarantine(self) -> None:
        assert self._read_quarantine is not None
        changes = await asyncio.to_thread(self._read_quarantine, self._quarantine_seq)
        for seq, event in changes:
            self.quarantined.apply(event)
            self._quarantine_seq = max(self._quarantine_seq, seq)
        if changes:
            self.enforce()

    async def _poll_quarantine(self) -> None:
        while True:
            await asyncio.sleep(self.config.quarantine_poll_interval)
            try:
                await self.refresh_quarantine()
            except Exception as exc:  # noqa: BLE001 - a store hiccup must not stop enforcement
                log.error("quarantine refresh failed: %s", exc)

    def enforce(self) -> None:
        """Cut off live associations of quarantined devices (A-ABORT), on every route: a relayed
        route's (both legs) and a store-and-forward route's, whose object in flight is then never
        answered Success (its file is dropped, or withdrawn from the spool if committed)."""
        for route, live in self._live():
            entry = self.quarantined.match(live.host, live.calling_ae)
            if entry is None or live.closed or live.state == "closed":
                continue
            self.publish(Event(kind=q.ENFORCED, component="gateway", severity=Severity.WARNING,
                               outcome=Outcome.SUCCESS, actor=Party(user=entry.by),
                               target=Party(ae_title=live.calling_ae, host=live.host, port=live.port),
                               message=(f"cut off {live.calling_ae or '?'}@{live.host}: "
                                        f"{entry.target} is quarantined"),
                               details={"route": route, "target": entry.target, "reason": entry.reason}))
            live.abort(f"{entry.target} is quarantined", kind="quarantine")

    def _live(self) -> Iterator[tuple[str, LiveAssociation]]:
        """Every open association of every route, with its route's name."""
        for rt in self.routes:
            for relay in list(rt.relays):
                yield rt.route.name, relay
        for sf in self.stored:
            for association in list(sf.associations):
                yield sf.route.name, association


class LiveAssociation(Protocol):
    """What quarantine enforcement needs of an open association, relayed or store-and-forward."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def calling_ae(self) -> str | None: ...
    @property
    def closed(self) -> bool: ...
    @property
    def state(self) -> str: ...

    def abort(self, reason: str, *, kind: str = ...) -> None: ...


def _warn_open(route: Route) -> None:
    if route.policy.calling_ae_titles is None and route.policy.hosts is None:
        log.warning("route %s accepts any calling AE title from any host: set policy.calling_ae_titles "
                    "or policy.hosts", route.name)


def listen_tls_context(route: Route, resolve: Resolve) -> ssl.SSLContext | None:
    """The route's listening TLS context, None without TLS; TLSConfigError names what is wrong
    (`serve` and `config check` both build it)."""
    tls = route.listen.tls
    if tls is None:
        return None
    from pacsguard.tls import server_context

    return server_context(resolve(tls.cert_file), resolve(tls.key_file),
                          ca_file=resolve(tls.ca_file) if tls.ca_file else None,
                          require_client_cert=tls.require_client_cert)


def upstream_tls_context(route: Route, resolve: Resolve) -> ssl.SSLContext | None:
    """The route's TLS context toward its PACS, None without TLS (as `listen_tls_context`)."""
    tls = route.upstream.tls
    if tls is None:
        return None
    from pacsguard.tls import client_context

    return client_context(ca_file=resolve(tls.ca_file) if tls.ca_file else None,
                          cert_file=resolve(tls.cert_file) if tls.cert_file else None,
                          key_file=resolve(tls.key_file) if tls.key_file else None)
