"""The gateway: one listener per route, the shared admission checks and limits, and quarantine
enforcement. `Gateway.start()` opens the listeners on the running asyncio loop."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import socket
import ssl
import time
from collections import Counter
from collections.abc import Iterator, Sequence
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
from pacsguard.records.dicom import RefusalLog, StoredInstances
from pacsguard.records.moves import MoveLedger
from pacsguard.runtime.listening import cannot_listen
from pacsguard.runtime.periodic import every

if TYPE_CHECKING:
    from pacsguard.events.durable import Durability
    from pacsguard.gateway.objects import ObjectCheck
    from pacsguard.gateway.store_forward.route import StoreForwardRoute

log = logging.getLogger("pacsguard.gateway")

ALERT_WINDOW_TICK = 5.0  # seconds between checks for IDS limit windows that have closed
ACCEPT_BACKLOG = 100  # listen() backlog: what asyncio's and uvloop's create_server() use
ACCEPT_BATCH = 64  # connections taken per readiness of a listener before the loop serves others
# With not even the reserve descriptor free, a listener rests this long (asyncio's own accept retry delay).
ACCEPT_RETRY_DELAY = 1.0
SHORTAGE_REPORTED_EVERY = 60.0  # seconds: refusals for want of descriptors summed up at most this often
SHORTAGE_HOSTS = 20  # sources named in one record of a descriptor shortage, most refused first
DESCRIPTORS_EXHAUSTED = "gateway.descriptors.exhausted"
OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)

#: Publishes an Event; returns its ticket on the bus (pacsguard.events.bus) or None.
Publish = Callable[[Event], "int | None"]
Resolve = Callable[[Path], Path]
#: A store-and-forward route's object checks, by route (pacsguard.gateway.objects).
ObjectChecks = Callable[[Route], "list[ObjectCheck]"]
#: A client's address as accept() returned it (host, port).
Peer = tuple[str, int]
#: A listener's protocol for one accepted connection, given the client's address.
ProtocolFactory = Callable[[Peer], asyncio.BaseProtocol]


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
        # The route's own refusals, counted per source and rule (records.dicom.RefusalLog).
        self.refusals = RefusalLog(route.limits.refusals_recorded_per_minute, self.publish)
        # The patient and study of the instances its C-STOREs stored, for storage commitment.
        self.stored = StoredInstances()
        # The C-MOVEs of every route, for their sub-operations on a return route (records.moves).
        self.moves = gateway.moves

    def publish(self, event: Event) -> int | None:
        return self.gateway.publish(event)

    def register(self, relay: AssociationRelay) -> None:
        self.relays.add(relay)

    def unregister(self, relay: AssociationRelay) -> None:
        self.relays.discard(relay)

    def quarantine(self, target: str, *, duration: timedelta | None, reason: str, component: str) -> None:
        self.gateway.quarantine(target, duration=duration, reason=reason, component=component)

    def protocol_factory(self, peer: Peer) -> Side:
        if self.server_ssl:
            return TLSAcceptingSide(AssociationRelay(self), self.server_ssl, peer, self.gateway.shortage)
        return Side(AssociationRelay(self), True, peer)


class TLSAcceptingSide(Side):
    """The client leg of a TLS route: the handshake runs explicitly (start_tls) so that a failed
    one (no client certificate, wrong CA, TLS 1.1) is recorded as an event with the peer's address,
    and the client gets OpenSSL's alert (RFC 8446 6.2). Runs on uvloop and on asyncio's loop."""

    def __init__(self, relay: Endpoint, context: ssl.SSLContext, peer: Peer | None = None,
                 shortage: DescriptorShortage | None = None) -> None:
        super().__init__(relay, True, peer)
        self.context = context
        self.shortage = shortage  # where a connection refused for want of a descriptor is counted
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
        peer = self.peer or raw.get_extra_info("peername") or ("?", 0)
        # A second handle on the socket: the loop closes its own when a handshake fails, before
        # the alert OpenSSL wrote for the client has been sent (see pacsguard.tls.alerts).
        held = None if self.gone or raw.is_closing() else raw.get_extra_info("socket")
        try:
            spare = held.dup() if held is not None else None
        except OSError as exc:
            self._no_descriptor(raw, peer, exc)
            return
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

    def _no_descriptor(self, raw: asyncio.BaseTransport, peer: Peer, exc: OSError) -> None:
        """The spare handle could not be made: the process has no descriptor left (EMFILE), or the
        system none (ENFILE). The connection is refused (closed before its handshake, which frees
        its descriptor) and counted as such (`DescriptorShortage`: aggregated, never one record
        per connection of a flood); any other failure is recorded as a failed handshake."""
        raw.abort()  # type: ignore[attr-defined]  # a transport, as start_tls() needs
        if exc.errno in OUT_OF_DESCRIPTORS and self.shortage is not None:
            self.shortage.refused(self.relay.route.name, [peer], exc)
            return
        self._refused(peer, exc)

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
                                 # explain_tls_error's own "TLS handshake failed: " is not said twice
                                 message=f"TLS handshake with {peer[0]}:{peer[1]} failed: "
                                         f"{why.removeprefix('TLS handshake failed: ')}",
                                 details={"route": self.relay.route.name, "error": why}))


class DescriptorShortage:
    """Connections refused because the process ran out of file descriptors (EMFILE: its
    RLIMIT_NOFILE; ENFILE: the system's), when accepting them (`Acceptor`) or when a TLS handshake
    needs its spare handle (`TLSAcceptingSide`). Never silent, never one record per connection of
    a flood: the first refusal is logged and recorded (`gateway.descriptors.exhausted`) at once,
    those after it are counted and summed up in one warning and one record at most every
    SHORTAGE_REPORTED_EVERY seconds, with the count, the routes and the sources."""

    def __init__(self, publish: Publish, every: float = SHORTAGE_REPORTED_EVERY) -> None:
        self.publish = publish
        self.every = every
        self.total = 0  # refusals since the start
        self.routes: Counter[str] = Counter()  # refusals not yet reported, per route
        self.hosts: Counter[str] = Counter()  # ... per source host
        self.error = errno.EMFILE
        self._since = 0.0  # when the refusals not yet reported began
        self._last_report = -every
        self._timer: asyncio.TimerHandle | None = None

    def refused(self, route: str, peers: Sequence[Peer], exc: OSError) -> None:
        """``peers`` were refused on ``route`` (none: accept() itself failed, the client waits)."""
        now = time.monotonic()
        if not self.routes:
            self._since = now
        self.total += len(peers)
        self.routes[route] += len(peers)  # named even when none was refused: accept() failed, the client waits
        self.hosts.update(peer[0] for peer in peers)
        self.error = exc.errno or errno.EMFILE
        if now - self._last_report >= self.every:
            self.report()
        elif self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._last_report + self.every - now, self.report)

    def report(self) -> None:
        """Log and record what was counted since the last report (nothing when nothing was)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.routes:
            return
        now = time.monotonic()
        routes, hosts, self.routes, self.hosts = self.routes, self.hosts, Counter(), Counter()
        self._last_report = now
        event = shortage_event(self.error, routes, hosts, now - self._since)
        log.warning("%s", event.message)
        self.publish(event)


def descriptor_limit() -> int:
    """The process's soft RLIMIT_NOFILE: how many descriptors it may hold."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def shortage_event(error: int, routes: Counter[str], hosts: Counter[str], seconds: float) -> Event:
    """The record of connections refused for want of a descriptor (`DescriptorShortage`)."""
    refused = sum(routes.values())
    code = errno.errorcode.get(error, str(error))
    whose = (f"the process's limit of {descriptor_limit()} (RLIMIT_NOFILE, LimitNOFILE= of a systemd unit)"
             if error == errno.EMFILE else "the system's limit (fs.file-max)")
    named = ", ".join(f"{h} ({n})" for h, n in hosts.most_common(SHORTAGE_HOSTS))
    message = (f"the gateway ran out of file descriptors ({code}: {whose}): {refused} connection(s) refused "
               f"in {seconds:.0f} s on route(s) {', '.join(sorted(routes))}"
               + (f", from {named}" if named else "")
               + (" (and new connections wait while none is free)" if refused == 0 else "")
               + "; raise the limit, or find who holds the connections open")
    only = next(iter(hosts)) if len(hosts) == 1 else None
    return Event(kind=DESCRIPTORS_EXHAUSTED, component="gateway", severity=Severity.ERROR,
                 outcome=Outcome.SERIOUS_FAILURE, actor=Party(host=only) if only else Party(), message=message,
                 details={**({"route": next(iter(routes))} if len(routes) == 1 else {}), "routes": dict(routes),
                          "refused": refused, "hosts": dict(hosts.most_common(SHORTAGE_HOSTS)), "error": code,
                          "limit": descriptor_limit(), "seconds": round(seconds, 1)})


class Acceptor:
    """A route's listening sockets, whose connections the gateway accepts itself and hands to the
    loop (`loop.connect_accepted_socket`) with the address accept() returned. That address is the
    only one sure to be known: a client that resets its connection at once (an A-ASSOCIATE-RQ,
    then RST) leaves the kernel nothing to answer getpeername() with, and uvloop asks it only when
    the protocol wants the address; the record, the host policy and the IDS would get "?".

    When accept() fails for want of a descriptor (EMFILE, ENFILE), the reserve descriptor each
    acceptor holds is freed to take the waiting connections and close them at once (what libuv
    does, so that a client is told at once rather than left waiting in the backlog), and they
    are counted by the gateway's `DescriptorShortage`; with not even that possible the listener
    rests ACCEPT_RETRY_DELAY seconds."""

    def __init__(self, route: str, sockets: list[socket.socket], factory: ProtocolFactory,
                 shortage: DescriptorShortage) -> None:
        self.route = route
        self.sockets = sockets
        self.factory = factory
        self.shortage = shortage
        self.loop = asyncio.get_running_loop()
        self.closed = False
        self._reserve = _reserve_descriptor()
        self._handing: set[asyncio.Task[object]] = set()  # hand-overs not yet done
        self._resting: dict[int, asyncio.TimerHandle] = {}
        for listener in sockets:
            self.loop.add_reader(listener.fileno(), self._readable, listener)

    @classmethod
    async def open(cls, route: str, host: str, port: int, factory: ProtocolFactory,
                   shortage: DescriptorShortage) -> Acceptor:
        """Listen on every address ``host`` resolves to (as create_server(reuse_address=True) does);
        OSError names the route, the address and what failed."""
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            sockets = _bound(infos)
        except OSError as exc:
            raise cannot_listen(f"route {route}", host, port, exc, "listen.host, listen.port") from None
        return cls(route, sockets, factory, shortage)

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    def close(self) -> None:
        """Stop listening; connections already accepted go on."""
        if self.closed:
            return
        self.closed = True
        for timer in self._resting.values():
            timer.cancel()
        for listener in self.sockets:
            self.loop.remove_reader(listener.fileno())
            listener.close()
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None

    def _readable(self, listener: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while queued: nobody to serve or record
            except OSError as exc:
                self._accept_failed(listener, exc)
                return
            self._hand_over(conn, address)

    def _hand_over(self, conn: socket.socket, address: tuple[object, ...]) -> None:
        peer = (str(address[0]), int(address[1]))  # type: ignore[call-overload]
        conn.setblocking(False)
        task = self.loop.create_task(self.loop.connect_accepted_socket(lambda: self.factory(peer), conn))
        self._handing.add(task)
        task.add_done_callback(lambda done: self._handed(done, conn, peer))

    def _handed(self, task: asyncio.Task[object], conn: socket.socket, peer: Peer) -> None:
        self._handing.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        log.warning("route %s: the connection from %s:%d could not be set up: %s", self.route, peer[0], peer[1],
                    task.exception())
        if conn.fileno() >= 0:  # the loop did not take it over (it detaches what it closes)
            conn.close()

    def _accept_failed(self, listener: socket.socket, exc: OSError) -> None:
        if exc.errno not in OUT_OF_DESCRIPTORS:
            # ENOBUFS, ENOMEM, a firewall's EPERM: the next connection may fare better, after a rest.
            log.warning("route %s: accepting a connection failed: %s", self.route, exc)
            self._rest(listener)
            return
        refused, emptied = self._refuse_waiting(listener)
        # Linux reserves the new descriptor before it looks at the queue: accept() fails with
        # EMFILE even when nobody waits. Only a refusal, or a queue not known empty, is news.
        if refused or not emptied:
            self.shortage.refused(self.route, refused, exc)
        if not emptied:
            self._rest(listener)

    def _refuse_waiting(self, listener: socket.socket) -> tuple[list[Peer], bool]:
        """Take the waiting connections with the reserve descriptor freed, and close each at once;
        returns their addresses and whether none waits any more."""
        if self._reserve is None:
            self._reserve = _reserve_descriptor()
            return [], False
        os.close(self._reserve)
        self._reserve = None
        refused: list[Peer] = []
        emptied = False
        try:
            while len(refused) < ACCEPT_BATCH:
                try:
                    conn, address = listener.accept()
                except (BlockingIOError, InterruptedError):
                    emptied = True
                    break
                except ConnectionAbortedError:
                    continue
                except OSError:
                    break  # another thread took the freed descriptor first
                conn.close()
                refused.append((str(address[0]), int(address[1])))
        finally:
            self._reserve = _reserve_descriptor()
        return refused, emptied

    def _rest(self, listener: socket.socket) -> None:
        """Stop accepting on ``listener`` for ACCEPT_RETRY_DELAY seconds (it would be ready again
        at once: a busy loop)."""
        fd = listener.fileno()
        if self.closed or fd in self._resting:
            return
        self.loop.remove_reader(fd)
        self._resting[fd] = self.loop.call_later(ACCEPT_RETRY_DELAY, self._wake, listener)

    def _wake(self, listener: socket.socket) -> None:
        self._resting.pop(listener.fileno(), None)
        if not self.closed:
            self.loop.add_reader(listener.fileno(), self._readable, listener)


def _reserve_descriptor() -> int | None:
    """A descriptor held in reserve for `Acceptor._refuse_waiting` (None: none was free)."""
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


#: One answer of getaddrinfo(): family, type, protocol, canonical name, address.
AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str,
                 "tuple[str, int] | tuple[str, int, int, int] | tuple[int, bytes]"]


def _bound(infos: Sequence[AddrInfo]) -> list[socket.socket]:
    """Listening, non-blocking sockets bound to each distinct address of ``infos`` (getaddrinfo)."""
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            listener = socket.socket(family, kind, proto)
            sockets.append(listener)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # As create_server: an IPv6 socket serves IPv6 only, the IPv4 address gets its own.
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            listener.bind(address)
            listener.listen(ACCEPT_BACKLOG)
            listener.setblocking(False)
    except OSError:
        for listener in sockets:
            listener.close()
        raise
    if not sockets:
        raise OSError(errno.EADDRNOTAVAIL, "the address resolves to nothing")
    return sockets


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
        # Connections refused for want of a file descriptor, on every route: logged and recorded.
        self.shortage = DescriptorShortage(publish)
        # One for all routes: a C-MOVE relayed by one route delivers through another (its return
        # route, relayed or store-and-forward).
        self.moves = MoveLedger()
        self.routes = [RouteRuntime(r, self, resolve) for r in config.routes if r.mode == "relay"]
        self.stored = [self._store_forward(r, resolve, object_checks) for r in config.routes
                       if r.mode == "store-and-forward"]
        self._read_quarantine = read_quarantine
        self._quarantine_seq = -1
        self._servers: list[Acceptor] = []
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
                server = await Acceptor.open(rt.route.name, listen.host, listen.port, rt.protocol_factory,
                                             self.shortage)
            except OSError:
                await self.stop()
                raise
            self._servers.append(server)
            port = server.port
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
                                 quarantine_policy=self.quarantine_policy, shortage=self.shortage,
                                 moves=self.moves)

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
        self.shortage.report()  # refusals counted since the last report are not lost
        for rt in self.routes:
            rt.refusals.flush()  # open refusal summaries, before the bus closes
        if self.engine is not None:  # the aggregate alerts of limit windows still open (docs/ids.md)
            for alert in self.engine.flush():
                self.publish(alert.event)

    async def _close_alert_windows(self) -> None:
        """An IDS limit window closes on the next observation; on a quiet gateway this timer closes
        it, so an aggregate alert never waits for traffic that may not come."""
        engine = self.engine
        assert engine is not None

        def close_due() -> None:
            for alert in engine.due(engine.clock()):
                self.publish(alert.event)
        await every(ALERT_WINDOW_TICK, close_due, "closing the IDS alert windows", log)

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
        await every(lambda: self.config.quarantine_poll_interval, self.refresh_quarantine, "quarantine refresh",
                    log)

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

