"""Nothing acknowledged without its record: the frames one association sends its client, held
until the Events it published before them are durable (docs/gateway.md).

The relay sets `ticket` to the bus ticket of every Event it publishes and sends everything for the
client through `send()`. A frame goes out at once when every Event up to `ticket` is durable (or
the route answers before recording, `record_before_response: false`); otherwise it waits, and
every later frame waits behind it, so the client sees the association in its order. The gateway's
own refusals (`answers=False`) acknowledge nothing: they wait only behind what is held.

While events cannot be made durable the route's `on_record_failure` decides: `relay` lets held
frames pass; `refuse` keeps them, and after `record_timeout` with the oldest frame still held
calls `late` (the relay aborts the association: no status it could send would be true).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from pacsguard.config.schema import Route

if TYPE_CHECKING:
    from pacsguard.events.durable import Durability

Write = Callable[[bytes | memoryview], None]


class Outbox:
    def __init__(self, route: Route, durability: Durability | None, write: Write,
                 late: Callable[[str], None]) -> None:
        self.ticket = 0  # the bus ticket of the newest Event the association published
        self._held: deque[tuple[int, bytes]] = deque()  # (ticket it waits for, frame)
        self._durability = durability if route.record_before_response else None
        self._pass_on_failure = route.on_record_failure == "relay"
        self._timeout = route.record_timeout
        self._write = write
        self._late = late
        self._timer: asyncio.TimerHandle | None = None
        self._then: list[Callable[[], object]] = []  # run in the order asked once nothing is held
        self._dropped = False

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def send(self, data: bytes | memoryview, *, answers: bool = True) -> None:
        """Write ``data`` to the client now, or hold a copy until its records are durable."""
        durability = self._durability
        if self._held or (answers and durability is not None and self.ticket > durability.bus.durable_count
                          and not (self._pass_on_failure and durability.failing)):
            self._held.append((self.ticket if answers else 0, bytes(data)))
            if len(self._held) == 1:
                self._wait()
            return
        self._write(data)

    def when_sent(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` once nothing is held (now, if nothing is); callbacks asked while frames
        are held run in the order asked."""
        if self._held:
            self._then.append(callback)
        else:
            callback()

    def drop(self) -> None:
        """The association is over: forget what is held (it acknowledged nothing yet)."""
        self._dropped = True
        self._held.clear()
        self._then.clear()
        self._stop_timer()

    def _wait(self) -> None:
        assert self._durability is not None  # only what was held waits
        self._durability.wait(self._held[0][0], self._written)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._timeout, self._timed_out)

    def _written(self) -> None:
        """Durability said: written up to some ticket, or writing fails. Send what may go."""
        durability = self._durability
        if self._dropped or not self._held or durability is None:
            return
        passing = self._pass_on_failure and durability.failing
        frames: list[bytes] = []
        while self._held and (passing or durability.done(self._held[0][0])):
            frames.append(self._held.popleft()[1])
        self._flush(frames)
        if self._held:
            if frames:
                self._stop_timer()  # records are being written: the timeout is the oldest frame's
            self._wait()

    def _timed_out(self) -> None:
        self._timer = None
        if self._dropped or not self._held:
            return
        if self._pass_on_failure:
            frames = [frame for _, frame in self._held]
            self._held.clear()
            self._flush(frames)
            return
        error = self._durability.bus.health().error if self._durability is not None else ""
        self._late(f"the record of this association could not be made durable within {self._timeout:g} s"
                   + (f" ({error})" if error else ""))

    def _flush(self, frames: list[bytes]) -> None:
        if frames:
            self._write(b"".join(frames))
        if not self._held:
            self._stop_timer()
            then, self._then = self._then, []
            for callback in then:
                callback()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
