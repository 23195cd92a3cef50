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

    def arm_by(self, seconds: float, why: str) -> None:
        """Fire within ``seconds``: re-armed only when it would fire later (or is not armed)."""
        handle, now = self._handle, asyncio.get_running_loop().time()
        if handle is None or not now < handle.when() <= now + seconds:  # none, spent, or later
            self.arm(seconds, why)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def idle_left(last_activity: float, limit: float) -> tuple[float, str]:
    """Seconds left before ``limit`` seconds without traffic since ``last_activity`` (monotonic),
    and the reason to give once none are left."""
    idle = time.monotonic() - last_activity
    return limit - idle, f"idle for {idle:.0f} s (limit {limit:.0f} s)"


class PduClock:
    """When the PDU still arriving in one direction began, and its length once its header says
    (PS3.8 9.3.1: 6 header bytes, then PDU-length bytes). Idleness alone lets a sender keep an
    association (and its slot) forever with one byte just inside `limits.idle_timeout`; a PDU must
    therefore arrive whole within `limits.artim_timeout` plus its length at `limits.min_pdu_rate`."""

    __slots__ = ("pdu", "began", "size", "paused_at")

    def __init__(self) -> None:
        self.pdu: tuple[str, int] | None = None  # which PDU: how it is read, where it is in the stream
        self.began = 0.0
        self.size: int | None = None
        self.paused_at: float | None = None  # the gateway stopped reading (backpressure): not the sender's time

    def pause(self, paused: bool, now: float) -> None:
        """Reading this direction stopped (the other leg's buffer is full) or resumed: the time it
        stood still is not counted against the sender."""
        if paused:
            self.paused_at = self.paused_at if self.paused_at is not None else now
        elif self.paused_at is not None:
            self.began += now - self.paused_at
            self.paused_at = None

    def update(self, pdu: tuple[str, int] | None, size: int | None, now: float) -> bool:
        """After a read: the PDU in progress (None: none) and its length if known. True when its
        deadline was set or moved (a new PDU, or its header completed)."""
        if pdu is None:
            self.pdu = None
            return False
        if pdu != self.pdu:
            self.pdu, self.began, self.size = pdu, now, size
            return True
        if self.size is None and size is not None:
            self.size = size
            return True
        return False

    def deadline(self, grace: float, rate_kib: float) -> float | None:
        """The monotonic time by which the PDU in progress must be whole; None: none in progress."""
        if self.pdu is None or self.paused_at is not None:
            return None
        return self.began + grace + (self.size or 0) / (rate_kib * 1024)


#: The timer's reason while a PDU deadline is armed: the timer's callback works out the real one
#: (pdu_left) when it fires, so the hot path formats nothing.
PDU_DEADLINE = "a PDU's deadline"


def pdu_left(clocks: dict[bool, PduClock], grace: float, rate_kib: float,
             names: tuple[str, str] = ("upstream", "client"), *, describe: bool = True) -> tuple[float, str]:
    """Seconds left before the first PDU in progress (key True: from the client) is overdue
    (infinity when none is), and the reason to give once none are left (without ``describe``:
    PDU_DEADLINE, for arming the timer after each read)."""
    now = time.monotonic()
    left, late = float("inf"), None
    for from_client, clock in clocks.items():
        deadline = clock.deadline(grace, rate_kib)
        if deadline is not None and deadline - now < left:
            left, late = deadline - now, (from_client, clock)
    if late is None or not describe:
        return left, PDU_DEADLINE
    from_client, clock = late
    length = f"{clock.size}-byte PDU" if clock.size is not None else "PDU (its header incomplete)"
    return left, (f"a {length} from the {names[from_client]} not whole {now - clock.began:.0f} s after its first "
                  f"byte (limit: limits.artim_timeout {grace:g} s + its length at limits.min_pdu_rate "
                  f"{rate_kib:g} KiB/s)")
