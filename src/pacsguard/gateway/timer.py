"""One association's timer: the ARTIM timer (PS3.8 9.1.5) while an A-ASSOCIATE-RQ or a release
is awaited, the route's idle limit while it is established. Relayed associations and the
store-and-forward route's Storage SCP share it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class AssociationTimer:
    """One pending deadline, re-armed (never stacked); on expiry ``expired(why)`` is called."""

    def __init__(self, expired: Callable[[str], None]) -> None:
        self._expired = expired
        self._handle: asyncio.TimerHandle | None = None

    def arm(self, seconds: float, why: str) -> None:
        self.cancel()
        self._handle = asyncio.get_running_loop().call_later(seconds, self._expired, why)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def idle_left(last_activity: float, limit: float) -> tuple[float, str]:
    """Seconds left before ``limit`` seconds without traffic since ``last_activity`` (monotonic),
    and the reason to give once none are left."""
    idle = time.monotonic() - last_activity
    return limit - idle, f"idle for {idle:.0f} s (limit {limit:.0f} s)"
