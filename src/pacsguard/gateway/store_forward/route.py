"""One store-and-forward route at run time: its spool, its Storage SCP (pacsguard.gateway.
store_forward.acceptor, on the gateway's asyncio loop, over TCP or TLS), a forwarder per
destination and the spool's high-water watch. The gateway (pacsguard.gateway.server) starts and
stops it next to its relayed routes; both share the gateway's checks, quarantine, events and
their durability."""

from __future__ import annotations

import asyncio
import errno
import logging
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from pacsguard.config.schema import Destination, Route
from pacsguard.events import Event, Outcome, Party, Severity
from pacsguard.gateway.check import Chain
from pacsguard.gateway.objects import ObjectCheck
from pacsguard.gateway.quarantine import QuarantineList, QuarantinePolicy
from pacsguard.gateway.store_forward import records
from pacsguard.gateway.store_forward.acceptor import StoreAssociation, storage_sop_classes
from pacsguard.gateway.store_forward.forwarding import ForwardingProcess
from pacsguard.gateway.store_forward.receiver import Receiver
from pacsguard.gateway.store_forward.spool import MIB, Spool, SpooledMeta
from pacsguard.gateway.verdict import Verdict
from pacsguard.records.dicom import RefusalLog
from pacsguard.records.moves import MoveLedger, SubOperationsOnly

if TYPE_CHECKING:
    from pacsguard.events.durable import Durability
    from pacsguard.gateway.relay import Side
    from pacsguard.gateway.server import Acceptor, DescriptorShortage, Peer

log = logging.getLogger("pacsguard.gateway")

WATCH_INTERVAL = 2.0  # seconds between looks at the spool's size
REARM = 0.9  # the high-water event fires again once the spool fell below 90 % of the mark
# A look at the spool can fail for a moment (a descriptor shortage during a connection flood): it is
# recorded only when it lasts, as the watch cannot announce a filling spool meanwhile.
UNREADABLE_RECORDED_AFTER = 60.0
UNREADABLE = "gateway.spool.unreadable"
META_WRITERS = 4  # objects whose metadata is written at once; more wait their turn (~0.3 ms each)


def spool_for(route: Route, resolve: Callable[[Path], Path] = lambda p: p) -> Spool:
    """The spool of a store-and-forward route (spool.directory, default var/spool/ROUTE)."""
    folder = route.spool.directory or Path("var/spool") / route.name
    return Spool(resolve(folder), min_free_mib=route.spool.min_free_mib, retention=route.spool.retention,
                 reuse_mib=route.spool.reuse_mib)


class StoreForwardRoute:
    """A route in ``mode: store-and-forward``."""

    def __init__(self, route: Route, chain: Chain, *, publish: Callable[[Event], int | None],
                 quarantined: QuarantineList, quarantine: Callable[..., None],
                 object_checks: Sequence[ObjectCheck] = (),
                 resolve: Callable[[Path], Path] = lambda p: p, durability: Durability | None = None,
                 server_ssl: ssl.SSLContext | None = None,
                 quarantine_policy: QuarantinePolicy | None = None,
                 shortage: DescriptorShortage | None = None, moves: MoveLedger | None = None) -> None:
        self.route = route
        self.publish = publish
        self.quarantined = quarantined
        self._quarantine = quarantine
        self.durability = durability  # answers wait for their records (docs/gateway.md); None: never held
        self.server_ssl = server_ssl  # route.listen.tls; None: plain TCP
        self._shortage = shortage  # the gateway's count of connections refused for want of descriptors
        self.spool = spool_for(route, resolve)
        self.forwarding = ForwardingProcess(route, self.spool, [_resolved(d, resolve) for d in route.destinations],
                                            publish)
        self._meta_writer = ThreadPoolExecutor(META_WRITERS, thread_name_prefix=f"pacsguard-meta-{route.name}")
        self.receiver = Receiver(route, chain, self.spool, self.spool.folder_sync, tuple(object_checks),
                                 publish, self._quarantine_source, self._is_quarantined, self._queued,
                                 self._meta_writer, RefusalLog(route.limits.refusals_recorded_per_minute, publish),
                                 quarantine_policy or QuarantinePolicy(),
                                 # As a Move Destination's return route, its C-STOREs credit the
                                 # C-MOVEs the gateway's relay routes opened (records.moves).
                                 SubOperationsOnly(moves) if moves is not None else None)
        self.associations: set[StoreAssociation] = set()
        self.server: Acceptor | None = None
        self.port = route.listen.port
        self._supported = storage_sop_classes()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self.spool_watch = SpoolWatch(route, self.spool, publish)
        self._watch = threading.Thread(target=self._watch_spool, name=f"pacsguard-spool-{route.name}", daemon=True)

    async def start(self) -> int:
        """Rescan the spool, start the forwarders and listen on the running loop; returns the port
        listened on."""
        from pacsguard.gateway.server import Acceptor, DescriptorShortage

        self._loop = asyncio.get_running_loop()
        waiting = await asyncio.to_thread(self._start_forwarders)
        listen = self.route.listen
        if self._shortage is None:  # a route run on its own (the tests): it counts its refusals itself
            self._shortage = DescriptorShortage(self.publish)
        try:
            self.server = await Acceptor.open(self.route.name, listen.host, listen.port, self._accept, self._shortage)
        except OSError:
            await self.stop()
            raise
        self.port = self.server.port
        self._watch.start()
        if waiting:
            log.info("route %s: %d spooled objects resume forwarding", self.route.name, waiting)
        return self.port

    def _start_forwarders(self) -> int:
        """Rescan the spool, say what cannot be forwarded, start the forwarding process; returns
        how many spooled objects wait for a configured destination."""
        try:
            waiting = self.spool.open()
        except OSError as exc:
            raise spool_unusable(self.route.name, self.spool.root, exc) from exc
        for spool_id, reason in self.spool.damaged.items():  # not forwarded: said once per start
            log.error("route %s: spooled object %s is damaged and not forwarded: %s", self.route.name, spool_id, reason)
            self.publish(records.damaged(self.route.name, spool_id, reason, str(self.spool.object_path(spool_id)),
                                         self.spool.read_meta(spool_id)))
        stranded = self._report_stranded(waiting)
        self.forwarding.start(waiting)
        return len(waiting) - stranded

    def _report_stranded(self, waiting: list[SpooledMeta]) -> int:
        """Objects spooled for a destination the configuration no longer has (renamed, removed, or
        moved: an unnamed destination is named AET-HOST-PORT): no forwarder serves that name, so
        they would wait for ever. Each is recorded (`gateway.object.undeliverable`, once per start)
        and the log says how to re-route or purge them; returns how many wait for nothing else."""
        configured = {d.key for d in self.route.destinations}
        stranded: dict[str, list[SpooledMeta]] = {}
        only = 0
        for meta in waiting:
            owed = [d for d in dict.fromkeys(meta.destinations) if not self.spool.sent_to(meta.id, [d])]
            gone = [d for d in owed if d not in configured]
            for destination in gone:
                stranded.setdefault(destination, []).append(meta)
            only += bool(gone) and len(gone) == len(owed)
        for destination, metas in stranded.items():
            why = stranded_reason(self.route.name, destination)
            log.warning("route %s: %d spooled objects (%s) wait for %s", self.route.name, len(metas),
                        ", ".join(m.id for m in metas[:5]) + (", ..." if len(metas) > 5 else ""), why)
            for meta in metas:
                self.publish(records.undeliverable(meta, destination, Party(), why))
        return only

    def _accept(self, peer: Peer) -> Side:
        """A new connection's protocol, given the client's address as accept() returned it: the
        relay's TCP leg, or its TLS leg (the handshake recorded)."""
        association = StoreAssociation(self.receiver, self.durability, self._supported, self.associations)
        if self.server_ssl is not None:
            from pacsguard.gateway.server import TLSAcceptingSide

            return TLSAcceptingSide(association, self.server_ssl, peer, self._shortage)
        from pacsguard.gateway.relay import Side

        return Side(association, True, peer)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop listening, let open associations finish within ``grace`` seconds (then abort them),
        stop the forwarders. What is spooled stays for the next start."""
        self._stop.set()
        self.forwarding.stopping()  # from now on the forwarding process's end is no failure
        if self.server is not None:
            self.server.close()
            if self._shortage is not None:
                self._shortage.report()  # refusals counted since the last report are not lost
            deadline = time.monotonic() + grace
            while self.associations and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            for association in list(self.associations):
                association.abort("the gateway is shutting down", kind="shutdown")
        self.receiver.refusals.flush()  # open refusal summaries, before the bus closes
        await asyncio.to_thread(self._stop_forwarders)

    def _stop_forwarders(self) -> None:
        self._meta_writer.shutdown(wait=True)
        self.forwarding.stop()
        self.spool.close()

    # --- what the Storage SCP calls --------------------------------------------------------------

    def _queued(self, meta: SpooledMeta) -> None:
        self.forwarding.add(meta)

    def _is_quarantined(self, host: str, calling_ae: str | None) -> bool:
        return self.quarantined.match(host, calling_ae) is not None

    def _quarantine_source(self, target: str, verdict: Verdict) -> None:
        """Quarantine ``target`` (a host, or AE@host: what the gateway's policy chose for an
        association check, the sending host for `quarantine_sender`): done on the gateway's loop,
        like a relayed route's, which also cuts off its open associations (the object checks ask
        from their worker thread)."""
        if self._loop is None:
            return
        self._loop.call_soon_threadsafe(lambda: self._quarantine(
            target, duration=verdict.quarantine_for, reason=verdict.reason, component=verdict.component))

    # --- the high-water watch ----------------------------------------------------------------------

    def _watch_spool(self) -> None:
        """The watch's thread: one look every WATCH_INTERVAL seconds until the route stops (a
        look that fails is retried at the next tick: `SpoolWatch`)."""
        while not self._stop.wait(WATCH_INTERVAL):
            self.spool_watch.look()


class SpoolWatch:
    """The spool's high-water watch (docs/gateway.md, "The high-water mark"): each look compares
    what the spool holds with `spool.high_water_mib` and records `gateway.spool.high-water` once
    per crossing. A look that fails (no file descriptor left, EMFILE, while a connection flood
    holds them all; an I/O error) is logged once and tried again at the next look: the watch
    never ends on its own, or the spool could fill to 0xA700 unannounced. Blind for
    UNREADABLE_RECORDED_AFTER seconds, it records `gateway.spool.unreadable`, once until a look
    succeeds again."""

    def __init__(self, route: Route, spool: Spool, publish: Callable[[Event], int | None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.route = route.name
        self.mark_mib = route.spool.high_water_mib
        self.spool = spool
        self.publish = publish
        self.clock = clock
        self.raised = False  # the spool is above the mark and that was recorded
        self.blind_since: float | None = None  # the first of the failed looks in a row
        self.recorded = False  # this blind spell was recorded

    def look(self) -> None:
        try:
            usage = self.spool.usage()
        except OSError as exc:
            self._failed(exc)
            return
        if self.blind_since is not None:
            log.warning("route %s: the spool's size can be read again (the high-water watch was blind for %.0f s)",
                        self.route, self.clock() - self.blind_since)
            self.blind_since, self.recorded = None, False
        mark = self.mark_mib * MIB
        if usage.bytes > mark and not self.raised:
            self.raised = True
            self.publish(records.high_water(self.route, usage, self.mark_mib))
        elif usage.bytes < mark * REARM:
            self.raised = False

    def _failed(self, exc: OSError) -> None:
        now = self.clock()
        if self.blind_since is None:
            self.blind_since = now
            log.warning("route %s: the high-water watch cannot read the spool's size: %s; it tries again every "
                        "%g s", self.route, unreadable_reason(exc), WATCH_INTERVAL)
            return
        if not self.recorded and now - self.blind_since >= UNREADABLE_RECORDED_AFTER:
            self.recorded = True
            self.publish(unreadable(self.route, unreadable_reason(exc), now - self.blind_since))


def spool_unusable(route: str, root: Path, exc: OSError) -> OSError:
    """The error `pacsguard serve` stops with when a route's spool cannot be opened: the route,
    the folder, what failed and where (the lock, a subfolder), and, when the cause is the file
    system's, what the service needs (an OSError still, with the errno, as the CLI expects)."""
    reason = exc.strerror or str(exc)
    if exc.filename and str(exc.filename) not in reason:
        reason += f" ({exc.filename})"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        reason += ("; spool.directory must be on a writable file system, owned by the service user "
                   "(docs/gateway.md, \"The spool\")")
    error = OSError(f"route {route}: cannot open its spool {root}: {reason}")
    error.errno = exc.errno
    return error


def unreadable_reason(exc: OSError) -> str:
    """What stopped a look at the spool, in words (EMFILE named: it passes once connections end)."""
    what = exc.strerror or str(exc) or type(exc).__name__
    code = errno.errorcode.get(exc.errno or 0)
    where = f" on {exc.filename}" if exc.filename else ""
    hint = (" (the gateway has no file descriptor left: RLIMIT_NOFILE, e.g. LimitNOFILE= of its systemd unit, "
            "is too low for the connections it holds)" if exc.errno in (errno.EMFILE, errno.ENFILE) else "")
    return f"{what}{f' ({code})' if code else ''}{where}{hint}"


def unreadable(route: str, reason: str, seconds: float) -> Event:
    """The high-water watch could not read the spool's size for ``seconds``: it cannot announce a
    filling spool until it can again."""
    return Event(kind=UNREADABLE, component="gateway", severity=Severity.ERROR, outcome=Outcome.SERIOUS_FAILURE,
                 message=(f"route {route}: the spool's size could not be read for {seconds:.0f} s, the high-water "
                          f"watch is blind until it can: {reason}"),
                 details={"route": route, "error": reason, "seconds": round(seconds, 1)})


def stranded_reason(route: str, destination: str) -> str:
    """Why an object spooled for ``destination`` is not forwarded, and what to do (docs/gateway.md,
    "A destination renamed, moved or removed")."""
    return (f"destination {destination!r}, which route {route} no longer has (renamed, removed, or moved: an "
            f"unnamed destination is named AET-HOST-PORT); to send them on, give the destination that replaces it "
            f"`name: {destination}` in pacsguard.yaml and restart; otherwise delete them with "
            f"`pacsguard gateway spool purge ID... --yes`")


def _resolved(destination: Destination, resolve: Callable[[Path], Path]) -> Destination:
    """``destination`` with its TLS files' paths resolved against the configuration's folder (the
    forwarding process has no configuration of its own)."""
    tls = destination.tls
    if tls is None:
        return destination
    paths = {key: resolve(value) for key in ("ca_file", "cert_file", "key_file")
             if (value := getattr(tls, key)) is not None}
    return destination.model_copy(update={"tls": tls.model_copy(update=paths)})
