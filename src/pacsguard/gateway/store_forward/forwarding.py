"""The forwarding process of a store-and-forward route: its forwarders (forwarder.py, a thread
per destination) run in a child process of the gateway, at a lower CPU priority
(``forward_nice``), so that receiving from modalities goes first when the CPU is busy and the two
never wait for each other's Python (one interpreter lock each).

The gateway keeps everything else: the spool's lock and rescan, receiving, the events. The child
is a new interpreter (`python -m pacsguard.gateway.store_forward.forwarding FD`: not a fork, the
gateway runs threads and an event loop, which a fork would copy half-way; not multiprocessing's
spawn, which re-runs the gateway's main script). Between the two, one socket pair carries
pickled messages (multiprocessing.connection):

    gateway -> child   (route, spool folder, destinations, objects owed, log level)   first, once
                       ("add", SpooledMeta)   an object committed to objects/, to forward
                       ("stop", None)         finish the object in flight, then exit
    child -> gateway   ("event", Event)       a forwarder's record, published by the gateway
                       ("spent", path)        an object every destination has: the gateway
                                              moves its file to the spool's pool (reuse.py)

The spool on disk stays the whole state (spool.py): markers are written by the child as they
were by the threads. A child that dies is started again after a second with what the spool
still owes; a gateway that dies closes the pipe and its child ends at once, as the threads did
(the spool's markers settle what was in flight at the next start). Two children never forward
from one spool at once: each holds ``forward.lock`` while it forwards.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from pacsguard.config.schema import Destination, Route
from pacsguard.events import Event
from pacsguard.gateway.store_forward import records
from pacsguard.gateway.store_forward.spool import Spool, SpooledMeta
from pacsguard.owner_only import hold_lock

log = logging.getLogger("pacsguard.gateway")

RESTART_DELAY = 1.0  # seconds before a child that died is started again
LOCK_WAIT = 30.0  # seconds a child waits for an old one to let go of the spool
# A SIGTERM the child gets is most often the one its gateway got too (systemd's KillMode=control-group,
# `kill` of the process group): it waits this long for the gateway's "stop" (or its end) before it
# ends on its own, so that an orderly stop is neither cut short nor recorded as a failure.
TERM_WAIT = 20.0
FORWARDER_DIED = 70  # the child's exit code when one of its forwarder threads ended (EX_SOFTWARE)


class ForwardingProcess:
    """The gateway's side: starts the child, hands it objects, publishes what it records."""

    def __init__(self, route: Route, spool: Spool, destinations: list[Destination],
                 publish: Callable[[Event], object]) -> None:
        self.route = route
        self.spool = spool
        self.destinations = destinations  # TLS file paths resolved: the child has no config folder
        self.publish = publish
        self._conn: Connection | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._send_lock = threading.Lock()
        self._stopping = threading.Event()
        self._pump: threading.Thread | None = None

    def start(self, waiting: list[SpooledMeta] | None = None) -> None:
        """Start the child with the objects the spool still owes a destination (``waiting``, or,
        at a restart, what the spool shows now)."""
        ours, theirs = socket.socketpair()
        with theirs:
            # -P: the working directory (the service's own writable folder) is not searched for
            # code: a pacsguard/ planted there would otherwise run as this child.
            process = subprocess.Popen([sys.executable, "-P", "-m", __name__, str(theirs.fileno())],
                                       pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        conn = Connection(ours.detach())
        level = logging.getLogger("pacsguard").getEffectiveLevel()  # the child logs as the gateway does
        # At a restart objects keep arriving: the spool is read and the pipe opened under the lock
        # `add` takes, so that an object committed after the reading is added through the new pipe
        # (one committed before it may come both ways; the child takes it once).
        with self._send_lock:
            if waiting is None:
                waiting = self.spool.waiting()
            conn.send((self.route, self.spool.root, self.destinations, waiting, level))
            self._conn, self._process = conn, process
        self._pump = threading.Thread(target=self._read, args=(conn,), name=f"pacsguard-forwarding-{self.route.name}",
                                      daemon=True)
        self._pump.start()

    def add(self, meta: SpooledMeta) -> None:
        self._send(("add", meta))

    def stopping(self) -> None:
        """The route is being stopped: the child's end from now on is no failure (not recorded, not
        restarted), also when a signal meant for the whole service ends it before `stop`."""
        self._stopping.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Let the object in flight finish, then end the child (killed after ``timeout``)."""
        self._stopping.set()
        self._send(("stop", None))
        process = self._process
        if process is not None:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(2)
        if self._pump is not None:
            self._pump.join(2)

    def _send(self, message: tuple[str, Any]) -> None:
        with self._send_lock:
            if self._conn is None:
                return
            try:
                self._conn.send(message)
            except (OSError, ValueError):  # the child is gone: its restart rescans the spool
                pass

    def _read(self, conn: Connection) -> None:
        """What the child says, until it ends; then, unless stopping, its restart."""
        while True:
            try:
                kind, value = conn.recv()
            except (EOFError, OSError):
                break
            if kind == "event":
                self.publish(value)
            elif kind == "spent":
                path = Path(value)
                if not self.spool.pool.put(path):
                    path.unlink(missing_ok=True)
        with self._send_lock:
            self._conn = None
        conn.close()
        if self._stopping.is_set():
            return
        code = self._process.wait() if self._process is not None else None
        event = records.forwarding_restarted(self.route.name, code, RESTART_DELAY)
        log.error("%s", event.message)
        self.publish(event)
        if self._stopping.wait(RESTART_DELAY):
            return
        self.start()


# --- the child -------------------------------------------------------------------------------------


def child_main(route: Route, root: Path, destinations: list[Destination], waiting: list[SpooledMeta],
               conn: Connection) -> None:
    """The forwarding process: the route's forwarders, fed from the pipe, until told to stop or
    the gateway is gone."""
    from pacsguard.gateway.store_forward.forwarder import Forwarder

    # The gateway decides when this ends: a terminal's ^C and hang-up reach the whole process group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if route.forward_nice:
        os.nice(route.forward_nice)
    send_lock = threading.Lock()

    def send(kind: str, value: Any) -> bool:
        with send_lock:
            try:
                conn.send((kind, value))
                return True
            except (OSError, ValueError):
                return False  # the gateway is gone; the spool keeps the state

    def spend(path: Path) -> bool:
        return send("spent", str(path))

    from pynetdicom import _config

    # pynetdicom (the C-FIND check, verify.py) describes every PDU with its standard handlers; the
    # forwarders record their own events, so those stay unbound.
    _config.LOG_HANDLER_LEVEL = "none"
    lock = hold_lock(root / "forward.lock", wait=LOCK_WAIT)
    if lock is None:  # ends: the gateway starts another child, which waits again
        log.error("route %s: another forwarding process still holds %s", route.name, root / "forward.lock")
        return
    spool = Spool(root, retention=route.spool.retention)
    spool.spend = spend

    def died(why: str) -> None:
        """A forwarder thread ended while the route runs: end the process, which the gateway starts
        again (`ForwardingProcess._read`) with what the spool owes; living on would leave that
        destination unserved, silently, while new objects are still acknowledged."""
        log.critical("route %s: %s", route.name, why)
        logging.shutdown()
        os._exit(FORWARDER_DIED)

    forwarders = [Forwarder(route, d, spool, lambda ev: send("event", ev), client_context(d), died)
                  for d in destinations]
    _wait_for_gateway_on_sigterm(route, forwarders, lock)
    for forwarder in forwarders:
        for meta in waiting:
            if not spool.sent_to(meta.id, [forwarder.name]):
                forwarder.add(meta)
        forwarder.start()
    # An object committed while the gateway read the spool for this start may also be added
    # through the pipe: the second time is dropped (once only: the set shrinks to nothing).
    given = {meta.id for meta in waiting}
    while True:
        try:
            kind, value = conn.recv()
        except (EOFError, OSError):
            # The gateway died (SIGKILL, a crash): end as it did, at once. What was in flight is
            # settled at its next start by the spool's markers (an object in doubt is asked about),
            # and nothing is recorded that its store would never see.
            os._exit(0)
        if kind == "stop":
            break
        if value.id in given:
            given.discard(value.id)
            continue
        for forwarder in forwarders:
            forwarder.add(value)
    for forwarder in forwarders:
        forwarder.stop()
    os.close(lock)


def _wait_for_gateway_on_sigterm(route: Route, forwarders: list[Any], lock: int) -> None:
    """SIGTERM does not end the child at once: the gateway got it too, as a rule, and sends "stop"
    once its routes stop (the object in flight finishes). Only when no word comes within
    `TERM_WAIT` seconds (the child alone was signalled) does it stop its forwarders and end."""
    termed = threading.Event()

    def end_unless_told() -> None:
        time.sleep(TERM_WAIT)
        log.warning("route %s: the forwarding process got SIGTERM and no word from the gateway in %g s: it ends",
                    route.name, TERM_WAIT)
        for forwarder in forwarders:
            forwarder.stop()
        os.close(lock)
        logging.shutdown()
        os._exit(128 + signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        if not termed.is_set():
            termed.set()
            threading.Thread(target=end_unless_told, name="pacsguard-forwarding-term", daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)


def client_context(destination: Destination) -> Any:
    """The TLS context for a destination with ``tls`` (its file paths already resolved), or None."""
    tls = destination.tls
    if tls is None:
        return None
    from pacsguard.tls import client_context as make

    return make(ca_file=tls.ca_file, cert_file=tls.cert_file, key_file=tls.key_file)


def main(argv: list[str]) -> int:
    """The child's entry point: the socket's descriptor as the only argument."""
    conn = Connection(int(argv[1]))
    try:
        route, root, destinations, waiting, level = conn.recv()
    except (EOFError, OSError):
        return 1
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pacsguard").setLevel(level)
    # As serve's own process (cli.common.quiet_libraries): pynetdicom's ERROR lines name neither
    # route nor destination; the route's events say it with both. Kept for --log-level debug.
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if level <= logging.DEBUG else logging.CRITICAL)
    child_main(route, root, destinations, waiting, conn)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
