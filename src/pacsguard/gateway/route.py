"""The relay's view of its route: what one relayed association needs of the route it belongs to
(the gateway's `RouteRuntime` implements it; tests implement it in memory)."""

from __future__ import annotations

import ssl
from datetime import timedelta
from typing import TYPE_CHECKING, Protocol

from pacsguard.config.schema import Route
from pacsguard.events import Event
from pacsguard.gateway.check import Chain
from pacsguard.gateway.quarantine import QuarantinePolicy
from pacsguard.records.dicom import RefusalLog

if TYPE_CHECKING:
    from pacsguard.events.durable import Durability
    from pacsguard.gateway.relay import AssociationRelay


class RouteView(Protocol):
    route: Route  # the route's configuration
    checks: Chain  # how the route judges traffic, in order (pacsguard.gateway.check.decide)
    upstream_ssl: ssl.SSLContext | None  # for the upstream leg; None: plain TCP
    durability: Durability | None  # when published events are durable; None: answers are never held
    quarantine_policy: QuarantinePolicy  # what a check's quarantine verdict takes (pair or host, admin hosts)
    refusals: RefusalLog  # the route's own refusals, counted per source and rule (records.dicom)

    def publish(self, event: Event) -> int | None:
        """Record an Event; returns its ticket for `durability` (None: no ticket, nothing to wait for)."""
        ...

    def register(self, relay: AssociationRelay) -> None: ...

    def unregister(self, relay: AssociationRelay) -> None: ...

    def quarantine(self, target: str, *, duration: timedelta | None, reason: str, component: str) -> None:
        """Quarantine a host or AE title now; live associations of it are cut off (may include the caller)."""
        ...
