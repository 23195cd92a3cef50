"""One deadline for a whole HTTP message read off a socket (RFC 9112 2.1: start line, header
fields, body), on both sides of the witness API.

A socket's timeout bounds each read only: a peer that sends one byte a little before each
timeout runs out keeps the reader waiting as long as it goes on (the "slowloris" pattern). The
readers here give every read only what is left of one deadline, so the message as a whole
arrives by then or not at all: a witness trickling its answer's headers no longer holds a
delivery or `audit verify --witness`, and a client trickling its request no longer holds one of
the witness service's few slots. A client also connects (connect) and does its TLS handshake
(handshake) by the same deadline, so the whole exchange ends by it; the host name is looked up
by it as well (lookup.py)."""

from __future__ import annotations

import io
import selectors
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

#: What is raised when the deadline has passed, given the bytes that came by then.
Expired = Callable[[int], Exception]


class Deadline:
    """A point in time.monotonic(): ``left()`` is what remains of it (never negative)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def restart(self) -> None:
        """The same span again from now (a kept-alive connection's next request)."""
        self.at = time.monotonic() + self.seconds

    def left(self) -> float:
        return max(0.0, self.at - time.monotonic())


class DeadlineReader(io.RawIOBase):
    """The bytes of ``sock`` read through ``raw`` (its makefile("rb", buffering=0)), each read
    given what is left of ``deadline`` as the socket's timeout; once none is left,
    ``expired(bytes read by then)`` is raised. Between reads the socket's timeout goes back to
    ``idle`` (writes, which the deadline does not bound, keep the timeout they had)."""

    def __init__(self, raw: Any, sock: socket.socket, deadline: Deadline, expired: Expired,
                 idle: float | None) -> None:
        super().__init__()
        self.raw = raw
        self.sock = sock
        self.deadline = deadline
        self.expired = expired
        self.idle = idle
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        left = self.deadline.left()
        if left <= 0:
            raise self.expired(self.count)
        self.sock.settimeout(left if self.idle is None else min(left, self.idle))
        try:
            got: int | None = self.raw.readinto(buffer)
        except TimeoutError:
            if self.deadline.left() <= 0:
                raise self.expired(self.count) from None
            raise
        finally:
            self._restore()
        self.count += got or 0
        return got

    def _restore(self) -> None:
        try:
            self.sock.settimeout(self.idle)
        except OSError:
            return  # closed meanwhile: nothing left to restore

    def close(self) -> None:
        if not self.closed:
            self.raw.close()
        super().close()


def reader(sock: socket.socket, deadline: Deadline, expired: Expired,
           idle: float | None) -> io.BufferedReader:
    """A buffered reader of ``sock`` bounded by ``deadline`` (DeadlineReader). It holds its own
    reference to the socket (socket.makefile), so closing the socket object, as urllib does once
    the status and headers are read, leaves the body readable."""
    return io.BufferedReader(DeadlineReader(sock.makefile("rb", buffering=0), sock, deadline, expired, idle))


def connect(addresses: list[tuple[Any, ...]], deadline: Deadline, late: Callable[[], Exception]) -> socket.socket:
    """A TCP connection to the first of ``addresses`` (getaddrinfo's answer, lookup.Lookups) that
    accepts, tried in turn as socket.create_connection tries them, every attempt given only what
    is left of ``deadline``: create_connection gives each attempt the whole timeout, and a peer
    that never accepts (its listen backlog full, its address dropping SYNs) then held the caller
    that long before the deadline of its answer began. ``late()`` is raised once the deadline
    has passed."""
    error: OSError | None = None
    for family, kind, proto, _, sockaddr in addresses:
        left = deadline.left()
        if left <= 0:
            raise late()
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(left)
            sock.connect(sockaddr)
            return sock
        except TimeoutError:
            sock.close()
            raise late() from None  # it waited all that was left
        except OSError as exc:
            sock.close()
            error = exc
    raise error or OSError("no address to connect to")


def handshake(sock: ssl.SSLSocket, deadline: Deadline, late: Callable[[], Exception]) -> ssl.SSLSocket:
    """The TLS handshake (RFC 8446 4, RFC 5246 7.3) of ``sock`` (wrapped with
    do_handshake_on_connect=False), done without blocking: each wait for the peer is given what is
    left of ``deadline``, so a peer that trickles its ServerHello and certificate a byte at a time
    is given up at the deadline however it trickles. ``late()`` is raised then. Afterwards the
    socket's timeout is what is left (the request's write, RFC 9112 2.1)."""
    sock.setblocking(False)
    with selectors.DefaultSelector() as selector:
        while True:
            try:
                sock.do_handshake()
                break
            except ssl.SSLWantReadError:
                events = selectors.EVENT_READ
            except ssl.SSLWantWriteError:
                events = selectors.EVENT_WRITE
            left = deadline.left()
            if left <= 0:
                raise late()
            selector.register(sock, events)
            ready = selector.select(left)
            selector.unregister(sock)
            if not ready:
                raise late()  # it waited all that was left
    left = deadline.left()
    if left <= 0:
        raise late()
    sock.settimeout(left)
    return sock
