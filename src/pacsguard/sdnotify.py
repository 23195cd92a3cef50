"""A small client of systemd's service notification protocol (sd_notify(3), systemd.service(5)
Type=notify, WatchdogSec=).

The service manager passes the path of an AF_UNIX datagram socket in $NOTIFY_SOCKET; a path that
starts with '@' names a socket in the abstract namespace (the '@' stands for a leading NUL byte).
Each notification is one datagram of newline-separated VARIABLE=value assignments: READY=1 when
start-up is done, STATUS=... for `systemctl status`, WATCHDOG=1 as the keep-alive ping,
STOPPING=1 when shutdown begins. Without $NOTIFY_SOCKET (not run by systemd) every call is a
no-op, so the same code runs in a terminal, a container and a test.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"

log = logging.getLogger("pacsguard.sdnotify")


class Notifier:
    """Sends notifications to the socket named by $NOTIFY_SOCKET (read once, when created)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.name = env.get(NOTIFY_SOCKET, "")
        self.address = _socket_address(self.name)
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **assignments: str | int) -> bool:
        """Send one datagram of NAME=value lines, e.g. notify(READY=1, STATUS="serving").
        Returns whether a datagram was sent: False without $NOTIFY_SOCKET, and False with one
        warning when the socket cannot be reached (gone, refusing, inherited from another service,
        passed into a container without its socket). sd_notify(3) reports such an error to its
        caller and the service goes on; raising here ended `serve` right after its start."""
        if self.address is None:
            return False
        lines = []
        for name, value in assignments.items():
            text = str(value)
            if "\n" in text:  # a newline would start a new assignment: never let a value forge one
                raise ValueError(f"{name} must be one line")
            lines.append(f"{name}={text}")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(lines).encode("utf-8"), self.address)
        except OSError as exc:
            if not self._warned:  # once: the watchdog would repeat it every few seconds
                self._warned = True
                log.warning("$NOTIFY_SOCKET %s cannot be reached (%s): systemd gets no readiness or "
                            "watchdog notification from pacsguard", self.name, exc.strerror or exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up is complete (Type=notify: systemd starts dependants only now)."""
        return self.notify(READY=1, **({"STATUS": status} if status else {}))

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        """The keep-alive ping; missing it for WatchdogSec= makes systemd restart the service."""
        return self.notify(WATCHDOG=1)

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown has begun."""
        return self.notify(STOPPING=1, **({"STATUS": status} if status else {}))


def _socket_address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode("utf-8")  # the abstract namespace: a leading NUL byte
    if not value.startswith("/"):
        return None  # sd_notify(3) accepts only absolute paths and abstract names
    return value


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of $WATCHDOG_USEC, as sd_watchdog_enabled(3)
    advises; None when the watchdog is off or meant for another process ($WATCHDOG_PID)."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get(WATCHDOG_USEC, ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = env.get(WATCHDOG_PID)
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 2 / 1_000_000


class Watchdog:
    """Pings WATCHDOG=1 every `interval` seconds from a daemon thread while `healthy()` is true.

    The check is what makes the ping mean something: give it a probe of the part that can hang
    (e.g. "the event loop answered within a second"); a failing check stops the pings, and
    systemd restarts the service after WatchdogSec=.
    """

    def __init__(self, notifier: Notifier, interval: float,
                 healthy: Callable[[], bool] = lambda: True) -> None:
        if interval <= 0:
            raise ValueError("the watchdog interval must be positive")
        self._notifier, self._interval, self._healthy = notifier, interval, healthy
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)

    def start(self) -> "Watchdog":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self._interval + 1.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._healthy():
                self._notifier.watchdog()
            self._stop.wait(self._interval)
