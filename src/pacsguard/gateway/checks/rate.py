"""`rate`: at most `limits.requests_per_minute` DIMSE requests per source host in a fixed
one-minute window; a request over it is refused with status 0xA700 (out of resources, PS3.7 C.4)."""

from __future__ import annotations

import time

from pacsguard.config.schema import Route
from pacsguard.dicom import dimse
from pacsguard.dicom.events import DimseCommand
from pacsguard.gateway.check import Association, Check
from pacsguard.gateway.verdict import ALLOW, Verdict, refuse
from pacsguard.records.dicom import Pending

MAX_TRACKED_HOSTS = 10_000  # beyond this, windows that are over are forgotten


class RateCheck(Check):
    name = "rate"

    def __init__(self, route: Route) -> None:
        self.limit = route.limits.requests_per_minute
        self.windows: dict[str, tuple[float, int]] = {}  # host -> (window start, requests in it)

    def on_request(self, assoc: Association, pending: Pending, event: DimseCommand) -> Verdict:
        limit = self.limit
        if limit is None:
            return ALLOW
        host = assoc.host
        now = time.monotonic()
        start, count = self.windows.get(host, (now, 0))
        if now - start >= 60:
            start, count = now, 0
        count += 1
        self.windows[host] = (start, count)
        if len(self.windows) > MAX_TRACKED_HOSTS:
            self.windows = {h: v for h, v in self.windows.items() if now - v[0] < 60}
        if count > limit:
            return refuse(f"{host} exceeded {limit} requests per minute", "limits.requests_per_minute",
                          status=dimse.STATUS_OUT_OF_RESOURCES)
        return ALLOW
