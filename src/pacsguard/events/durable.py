"""Waiting on an asyncio loop until published Events are durable: the gateway holds a response to
its client until the record of the exchange is in the store (docs/gateway.md, "Nothing
acknowledged without its record").

`Durability` listens to the bus (pacsguard.events.bus.WriteListener) from the writer thread and
resolves waiters on the loop that registered them. A waiter is a callback, called once when every
event up to its ticket is written, or when writing fails (it then reads `failing` and decides:
wait on, answer anyway, or give up). The gateway never sees the store, only tickets and this.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
from collections.abc import Callable

from pacsguard.events.bus import EventBus, WriteHealth


class Durability:
    """Tickets of one bus, awaited on one asyncio loop (the first that waits)."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self._loop: asyncio.AbstractEventLoop | None = None
        # (ticket, order, callback): order keeps callbacks of one ticket in registration order.
        self._waiting: list[tuple[int, int, Callable[[], None]]] = []
        self._order = itertools.count()
        bus.listen(self)

    @property
    def failing(self) -> bool:
        """True from a failed write of the bus until its next successful one."""
        return self.bus.failing

    def done(self, ticket: int) -> bool:
        """Whether the event of ``ticket`` (and every one before it) is durable."""
        return ticket <= self.bus.durable_count

    def wait(self, ticket: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` on this loop once ticket ``ticket`` is durable or writing fails."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        heapq.heappush(self._waiting, (ticket, next(self._order), callback))
        # Pushed before reading the count: either this read sees the write, or the writing thread,
        # which updates the count before it looks at the heap, sees this waiter.
        if self.done(ticket):
            self._advance(self.bus.durable_count)
        else:
            self.bus.hurry()

    async def reached(self, ticket: int, seconds: float) -> bool:
        """Whether ticket ``ticket`` is durable within ``seconds``, waited for on this loop (a
        failed write wakes the wait, which then goes on until the deadline)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not self.done(ticket):
            left = deadline - loop.time()
            if left <= 0:
                return False
            woken: asyncio.Future[None] = loop.create_future()
            self.wait(ticket, functools.partial(_wake, woken))
            try:
                await asyncio.wait_for(woken, left)
            except TimeoutError:
                pass
        return True

    # --- WriteListener (the bus's writer thread) ------------------------------------------------

    def durable(self, count: int) -> None:
        if self._waiting and self._loop is not None and self._waiting[0][0] <= count:
            self._call(self._advance, count)

    def failed(self, health: WriteHealth) -> None:
        if self._waiting and self._loop is not None:
            self._call(self._fail)

    def recovered(self, health: WriteHealth, until: float) -> None:
        """Nothing to do: the write that recovered is reported to `written` next."""

    # --- on the loop -----------------------------------------------------------------------------

    def _call(self, function: Callable[..., None], *args: object) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(function, *args)
        except RuntimeError:  # the loop is closed: nobody is left waiting
            pass

    def _advance(self, count: int) -> None:
        waiting = self._waiting
        while waiting and waiting[0][0] <= count:
            heapq.heappop(waiting)[2]()

    def _fail(self) -> None:
        """Writing fails: every waiter is called now to decide for itself (see `failing`)."""
        waiting, self._waiting = self._waiting, []
        for _, _, callback in sorted(waiting, key=lambda w: w[:2]):
            callback()


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():  # cancelled by wait_for's timeout, or woken before
        future.set_result(None)
