"""The repository as a service of `serve` (and of `pacsguard atna listen`): the listeners the `atna:`
section names, each publishing the Events of what it receives to the bus."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pacsguard.atna.backpressure import Backpressure
from pacsguard.atna.syslog.listeners import DatagramListener, Limits, Publish, StreamListener, tls_context
from pacsguard.atna.syslog.readers import ReadingProcesses
from pacsguard.events.durable import Durability
from pacsguard.events.model import Event, Outcome, Severity
from pacsguard.runtime.listening import cannot_listen

if TYPE_CHECKING:
    from pathlib import Path

    from pacsguard.atna.config import AtnaConfig, Outbound, TlsListener
    from pacsguard.atna.explain import ExplainSettings
    from pacsguard.atna.outbound.spool import Spool
    from pacsguard.ids.audit.adapter import AuditAdapter, Explainer
    from pacsguard.ids.engine import Engine
    from pacsguard.runtime.part import BannerRow, ServiceContext
    from pacsguard.store import EventStore


class RecentEvents:
    """The received messages naming a patient of the last ``keep`` seconds (at most ``most``), by
    patient (bare ID): the store writer takes an Event a moment after it is published, so an access
    judged on arrival would not see the order received just before it on the same connection
    without them."""

    def __init__(self, keep: float = 30.0, most: int = 10_000) -> None:
        self.keep = keep
        self.most = most
        self._order: deque[tuple[float, Event, list[str]]] = deque()
        self._by_patient: dict[str, deque[Event]] = {}
        self._lock = threading.Lock()  # the reading processes' threads publish too

    def add(self, event: Event, now: float) -> None:
        from pacsguard.atna.explain import patients_of

        patients = patients_of(event)
        if not patients:
            return
        with self._lock:
            self._order.append((now, event, patients))
            for patient in patients:
                self._by_patient.setdefault(patient, deque()).append(event)
            self._expire(now)

    def of(self, patient: str, now: float) -> list[Event]:
        """The recent messages naming ``patient``, oldest first."""
        with self._lock:
            self._expire(now)
            return list(self._by_patient.get(patient, ()))

    def _expire(self, now: float) -> None:
        while self._order and (now - self._order[0][0] > self.keep or len(self._order) > self.most):
            _, _, patients = self._order.popleft()
            for patient in patients:  # the oldest message is first under each of its patients
                held = self._by_patient[patient]
                held.popleft()
                if not held:
                    del self._by_patient[patient]


class AtnaService:
    """The listeners and the outbound feed of one `atna:` section."""

    needs_asyncio_loop = False

    def __init__(self, config: AtnaConfig, publish: Publish, store: EventStore | None = None,
                 resolve: Any = None, subscribe: Any = None, durability: Durability | None = None,
                 backlog: Callable[[], int] | None = None) -> None:
        """``backlog``: the events ``publish`` has taken and the store not yet (the bus's), by
        which the stream senders are held back (atna/backpressure.py); None: never held."""
        from pacsguard.atna.dedupe import Deduplicator

        self.config = config
        self.deliver = publish
        self.durability = durability  # of the bus `publish` feeds: the RESTful answers wait for it
        self.store = store
        self.subscribe = subscribe
        self.dedupe = Deduplicator(publish)
        self.privacy: AuditAdapter | None = None
        self.recent = RecentEvents()
        self._outbound: list[Any] = []
        # Where the store stood before this run published anything (serve's "started" comes next):
        # the outbound feed sends what was written from here on, also before it subscribed.
        self._since = store.size() if store is not None and config.outbound is not None else 0
        self.resolve: Any = resolve or (lambda p: p)
        self.listeners: list[Any] = []
        self.backpressure = Backpressure(backlog, config.max_backlog) if backlog is not None else None
        #: Where each listener is bound, by name (tls, tcp, udp, http), once started.
        self.addresses: dict[str, tuple[str, int]] = {}

    def publish(self, event: Event) -> None:
        """What the listeners call: every received message once (a resent one is dropped), then the
        privacy rules' alerts about it."""
        if not self.dedupe.fresh(event):
            return
        self.deliver(event)
        if self.backpressure is not None:
            self.backpressure.check()
        if self.privacy is not None:
            now = time.monotonic()
            for alert in self.privacy.observe(event, now):
                if alert.record:
                    self.deliver(alert.event)
            if self.privacy.wants_explanations():  # else nothing reads them: no memory spent
                self.recent.add(event, now)

    def use_privacy_rules(self, engine: Engine) -> None:
        """Run the engine's ``protocol: audit`` rules over every received message (config ``privacy``),
        with the store's explanations of each access when a rule asks for them."""
        from pacsguard.atna.explain import settings_of
        from pacsguard.ids.audit.adapter import AuditAdapter, PrivacyLists
        from pacsguard.ids.audit.baseline import BaselineSettings

        p = self.config.privacy
        lists = p.lists(self._path) if p else PrivacyLists()
        baseline = BaselineSettings(**p.baseline.model_dump()) if p else None
        self.privacy = AuditAdapter(engine, lists, explain=self._explainer(settings_of(p, self._path, lists)),
                                    baseline=baseline, zone=self.config.site_zone())

    def _explainer(self, settings: ExplainSettings) -> Explainer | None:
        """Whether the store explains a received access (atna/explain.py), judged at its arrival."""
        from pacsguard.atna.explain import explain_unstored

        store = self.store
        if store is None:
            return None

        def explain(event: Event) -> tuple[bool, str] | None:
            now = time.monotonic()
            verdict = explain_unstored(store, event, settings, lambda patient: self.recent.of(patient, now))
            return None if verdict is None else (verdict.explained, verdict.template or "")

        return explain

    async def start(self) -> list[BannerRow]:
        cfg = self.config
        limits = Limits(cfg.max_message, cfg.idle_timeout, cfg.max_connections, cfg.frame_timeout)
        rows: list[BannerRow] = []
        if self.store is not None:  # before any listener: what was delivered before a restart
            await asyncio.to_thread(self.dedupe.learn, self.store)
        try:
            if cfg.tls is not None:
                t = cfg.tls.model_copy(update={
                    "cert_file": self._path(cfg.tls.cert_file), "key_file": self._path(cfg.tls.key_file),
                    "ca_file": self._path(cfg.tls.ca_file) if cfg.tls.ca_file else None})
                await self._listen("tls", self._stream(limits, t), t.host, t.port)
                rows.append(("ATNA syslog (RFC 5425 TLS)", self._where("tls"),
                             ("mutual TLS" if t.require_client_cert else "server TLS") + self._read_by()))
            if cfg.tcp is not None:
                await self._listen("tcp", self._stream(limits, None), cfg.tcp.host, cfg.tcp.port)
                rows.append(("ATNA syslog (RFC 6587 TCP)", self._where("tcp"),
                             "octet counting or LF" + self._read_by()))
            if cfg.udp is not None:
                udp = DatagramListener(self.publish)
                await self._listen("udp", udp, cfg.udp.host, cfg.udp.port)
                if self.backpressure is not None:
                    self.backpressure.listeners.append(udp)  # its datagrams dropped and counted while held
                rows.append(("ATNA syslog (RFC 5426 UDP)", self._where("udp"), ""))
            if cfg.http is not None:
                from pacsguard.atna.http import RestfulAtna

                if self.store is None:
                    raise LookupError("the RESTful ATNA endpoint needs the store")
                http = RestfulAtna(cfg.http, self.publish, self.store, self.resolve, cfg.max_message,
                                   cfg.max_connections, self.settled if self.durability is not None else None)
                await self._listen("http", http, cfg.http.host, cfg.http.port)
                rows.append(("ATNA RESTful (ITI-81)", f"{http.scheme}://{self._where('http')}/AuditEvent",
                             http.authentication))
            if cfg.outbound is not None:
                rows.append(await asyncio.to_thread(self._start_outbound, cfg.outbound))
        except BaseException:
            await self.stop()
            raise
        return rows

    async def settled(self, seconds: float) -> bool:
        """Whether everything published so far is durable within ``seconds`` (the bus's ticket of
        its last event reached): what a RESTful answer of 201 waits for."""
        durability = self.durability
        return durability is None or await durability.reached(durability.bus.published, seconds)

    def _read_by(self) -> str:
        n = self.config.readers
        return f", {n} reading process{'es' if n > 1 else ''}" if n else ""

    def _stream(self, limits: Limits, tls: TlsListener | None) -> StreamListener | ReadingProcesses:
        """A TLS (``tls``, its paths resolved) or TCP listener: read in this event loop, or by the
        reading processes ``readers`` asks for."""
        # Made here in either case, so that a certificate that does not load stops the start with
        # its reason rather than every reading process, one after the other.
        context = tls_context(tls) if tls is not None else None
        listener: StreamListener | ReadingProcesses
        if self.config.readers:
            listener = ReadingProcesses(self.publish, limits, tls, self.config.readers)
        else:
            listener = StreamListener(self.publish, limits, context)
        if self.backpressure is not None:
            self.backpressure.listeners.append(listener)
        return listener

    def _start_outbound(self, out: Outbound) -> BannerRow:
        from pacsguard.atna.outbound.forwarder import Forwarder
        from pacsguard.atna.outbound.sender import Failure, OutboundSender
        from pacsguard.tls.contexts import client_context

        if self.subscribe is None:
            raise LookupError("the outbound feed needs the event bus (run it under `pacsguard serve`)")
        context = client_context(ca_file=self._path(out.ca_file) if out.ca_file else None,
                                 cert_file=self._path(out.cert_file) if out.cert_file else None,
                                 key_file=self._path(out.key_file) if out.key_file else None)
        spool = self._spool(out)
        repository = f"{out.host}:{out.port}"

        def delivered(first: int, last: int, reconnected: bool) -> None:
            self.deliver(Event(kind="atna.outbound.delivered", component="atna",
                               message=f"{last - first + 1} audit messages delivered to {repository}",
                               details={"repository": repository, "messages": last - first + 1, "first": first,
                                        "last": last, "reconnected": reconnected}))

        def failed(failure: Failure) -> None:
            pending = spool.pending()
            self.deliver(Event(kind="atna.outbound.failed", component="atna", severity=Severity.WARNING,
                               outcome=Outcome.MINOR_FAILURE,
                               message=f"the outbound feed cannot deliver to {repository}: {failure.reason}; "
                                       f"{pending} audit messages wait in the spool",
                               details={"repository": repository, "error": failure.reason,
                                        "certificate": failure.certificate, "pending": pending,
                                        "attempts": failure.attempts}))

        sender = OutboundSender(spool, out.source_id, out.host, out.port, context, server_name=out.server_name,
                                retry=out.retry, retry_max=out.retry_max, stall_timeout=out.stall_timeout,
                                on_delivered=delivered, on_failed=failed)
        try:
            # With what the store took before the subscription began (serve's "started").
            subscription = Forwarder(spool, out.source_id).follow(self.subscribe, self.store, self._since)
        except BaseException:
            spool.close()
            raise
        sender.start()
        self._outbound = [subscription, sender, spool]
        return ("ATNA outbound (RFC 5425 TLS)", repository, f"spool {out.spool}, {spool.pending()} pending")

    def _spool(self, out: Outbound) -> Spool:
        """The outbound spool; one that cannot be used is a configuration error naming its key."""
        from pacsguard.atna.outbound.spool import Spool, SpoolError
        from pacsguard.config.loader import ConfigError, ConfigProblem

        path = self._path(out.spool)
        try:
            return Spool(path, max_bytes=out.max_spool_bytes)
        except SpoolError as exc:
            raise ConfigError(str(path), [ConfigProblem("atna.outbound.spool", exc.problem)]) from None

    async def _listen(self, name: str, listener: Any, host: str, port: int) -> None:
        try:
            self.addresses[name] = await listener.start(host, port)
        except OSError as exc:
            # uvloop's datagram endpoint raises an OSError without errno or strerror: its text is all.
            raise cannot_listen(f"atna {name} listener", host, port, exc, f"atna.{name}") from None
        self.listeners.append(listener)

    def _where(self, name: str) -> str:
        host, port = self.addresses[name]
        return f"{host}:{port}"

    def _path(self, path: Path) -> Path:
        resolved: Path = self.resolve(path)
        return resolved

    async def stop(self) -> None:
        if self.backpressure is not None:
            self.backpressure.stop()
        for listener in reversed(self.listeners):
            await listener.close()
        self.listeners.clear()
        if self._outbound:
            subscription, sender, spool = self._outbound
            self._outbound = []
            await asyncio.to_thread(sender.stop)
            # The subscription goes on until the bus closes, after serve recorded its stop: that
            # Event (110121 Application Stop) and what the other services record while they stop
            # are spooled too, and sent at the next start. The spool closes with the process.
            if not subscription.active:
                spool.close()


def make_service(ctx: ServiceContext) -> AtnaService | None:
    config: AtnaConfig = ctx.section
    if not config.enabled:
        return None
    # Only the RESTful endpoint answers what it received (201) and so waits for it to be durable.
    durability = Durability(ctx.bus) if config.http is not None else None
    bus = ctx.bus
    service = AtnaService(config, bus.publish, ctx.store, ctx.resolve, bus.subscribe, durability,
                          backlog=lambda: bus.backlog)
    if config.privacy is not None:
        from pacsguard.ids.audit.adapter import rule_files
        from pacsguard.ids.part import rule_engine

        p = config.privacy
        service.use_privacy_rules(rule_engine(ctx.loaded, rule_files(baseline=p.rule_set,
                                                                     unexplained=p.explain.on_arrival)))
    return service
