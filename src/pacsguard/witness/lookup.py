"""Host-name lookups bounded by a request's deadline (the witness client, docs/witness.md).

getaddrinfo (POSIX.1-2017 getaddrinfo(); RFC 3493 6.1) takes no timeout: with a DNS server that
does not answer, the system's resolver waits its own timeout for each try and each server
(resolv.conf(5): 5 s, 2 attempts, per server), and a witness request given 10 s was held for as
long as that before its deadline even began to count. The lookup is run in a thread of its own
that the caller waits for only as long as its deadline leaves, and gives up on then; the thread
ends when the resolver does. A later request for the same name while that lookup still runs
waits for it rather than starting another, so a witness retried every half second behind a dead
DNS server holds one thread per name, not one per try."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pacsguard.witness.deadline import Deadline

#: What getaddrinfo answers: (family, type, proto, canonname, sockaddr) for each address.
Addresses = list[tuple[Any, ...]]


@dataclass(slots=True)
class _Lookup:
    """One getaddrinfo call running in its thread; ``done`` is set when it has answered."""

    done: threading.Event = field(default_factory=threading.Event)
    addresses: Addresses | None = None
    error: Exception | None = None


class Lookups:
    """The lookups of one client: at most one running per (host, port) at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[tuple[str, int], _Lookup] = {}

    def addresses(self, host: str, port: int, deadline: Deadline, late: Callable[[], Exception]) -> Addresses:
        """The TCP addresses of ``host`` (getaddrinfo's order), once the resolver has them within
        what is left of ``deadline``; ``late()`` is raised when it has not. An address given as
        such (an IP literal) needs no resolver and is answered at once."""
        if _literal(host):
            return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
        lookup = self._join(host, port)
        if not lookup.done.wait(deadline.left()):
            raise late()
        if lookup.error is not None:
            raise lookup.error
        return list(lookup.addresses or [])

    def _join(self, host: str, port: int) -> _Lookup:
        """The lookup of (host, port) still running, or a new one started."""
        key = (host, port)
        with self._lock:
            lookup = self._running.get(key)
            if lookup is None:
                lookup = self._running[key] = _Lookup()
                threading.Thread(target=self._resolve, args=(key, lookup), name=f"resolving {host}",
                                 daemon=True).start()  # daemon: a hung resolver never holds an exit
        return lookup

    def _resolve(self, key: tuple[str, int], lookup: _Lookup) -> None:
        try:
            lookup.addresses = socket.getaddrinfo(key[0], key[1], 0, socket.SOCK_STREAM)
        except Exception as exc:  # noqa: BLE001 - handed to the waiting caller: gaierror, or UnicodeError for a bad name
            lookup.error = exc
        finally:
            with self._lock:
                if self._running.get(key) is lookup:
                    del self._running[key]  # answered: the next request asks the resolver afresh
            lookup.done.set()

    def running(self) -> int:
        """How many lookups are still waiting for the resolver (the threads this client holds)."""
        with self._lock:
            return len(self._running)


def _literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.partition("%")[0])  # an IPv6 scope (fe80::1%eth0) is no name either
    except ValueError:
        return False
    return True
