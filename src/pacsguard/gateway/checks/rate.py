"""`rate`: at most `limits.requests_per_minute` DIMSE requests per source host in a fixed
one-minute window; a request over it is refused with status 0xA700 (out of resources, PS3.7 C.4).

The windows are bounded like the IDS's per-source state (docs/ids.md, "Bounded state"): at most
`MAX_TRACKED_HOSTS` hosts, the least recently active evicted first, and a host idle for a minute
forgotten (its window is over). Under a flood of more distinct sources than that, an evicted host
starts a fresh window: the price of a bound that no traffic can push."""

from __future__ import annotations

import time

from pacsguard.config.schema import Route
from pacsguard.dicom import dimse
from pacsguard.dicom.events import DimseCommand
from pacsguard.gateway.check import Association, Check
from pacsguard.gateway.verdict import ALLOW, Verdict, refuse
from pacsguard.ids.state import BoundedLRU
from pacsguard.records.dicom import Pending

MAX_TRACKED_HOSTS = 10_000
WINDOW = 60.0  # seconds


class _Window:
    __slots__ = ("start", "count", "touched")

    def __init__(self, start: float) -> None:
        self.start = start
        self.count = 0
        self.touched = start


class RateCheck(Check):
    name = "rate"

    def __init__(self, route: Route, *, max_hosts: int = MAX_TRACKED_HOSTS) -> None:
        self.limit = route.limits.requests_per_minute
        self.windows: BoundedLRU[str, _Window] = BoundedLRU(max_hosts, ttl=WINDOW)  # host -> its window

    def on_request(self, assoc: Association, pending: Pending, event: DimseCommand) -> Verdict:
        limit = self.limit
        if limit is None:
            return ALLOW
        host = assoc.host
        now = time.monotonic()
        window = self.windows.get_or_create(host, now, lambda: _Window(now))
        if now - window.start >= WINDOW:
            window.start, window.count = now, 0
        window.count += 1
        if window.count > limit:
            return refuse(f"{host} exceeded {limit} requests per minute", "limits.requests_per_minute",
                          status=dimse.STATUS_OUT_OF_RESOURCES)
        return ALLOW
