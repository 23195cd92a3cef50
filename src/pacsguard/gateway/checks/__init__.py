"""The checks a route can list in `checks:` (docs/gateway.md, "How a route judges traffic"), by
name, and `build_chain()` that makes a route's ordered `Chain` of them."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Callable, Mapping

from pacsguard.config.schema import Route
from pacsguard.gateway.check import Chain, Check
from pacsguard.gateway.checks.ae_titles import AETitlesCheck
from pacsguard.gateway.checks.conformance import ConformanceCheck
from pacsguard.gateway.checks.hosts import HostsCheck
from pacsguard.gateway.checks.ids import IdsCheck
from pacsguard.gateway.checks.limits import LimitsCheck
from pacsguard.gateway.checks.quarantine import QuarantineCheck
from pacsguard.gateway.checks.rate import RateCheck
from pacsguard.gateway.checks.recording import RecordingCheck
from pacsguard.gateway.checks.services import ServicesCheck
from pacsguard.gateway.quarantine import QuarantineList
from pacsguard.ids import DicomAdapter

if TYPE_CHECKING:
    from pacsguard.events.durable import Durability


@dataclass(frozen=True, slots=True)
class Shared:
    """What checks share across the gateway's routes."""

    quarantined: QuarantineList
    ips: DicomAdapter | None = None  # the IDS rules behind their DICOM adapter; None: `ids` has nothing to run
    durability: Durability | None = None  # when the gateway's events are durable; None: not known (tests)


#: name -> factory; None when the check has nothing to do on this gateway.
FACTORIES: Mapping[str, Callable[[Route, Shared], Check | None]] = MappingProxyType({
    "quarantine": lambda route, shared: QuarantineCheck(shared.quarantined),
    "hosts": lambda route, shared: HostsCheck(route),
    "ae-titles": lambda route, shared: AETitlesCheck(route),
    "limits": lambda route, shared: LimitsCheck(route),
    "services": lambda route, shared: ServicesCheck(route),
    "rate": lambda route, shared: RateCheck(route),
    "ids": lambda route, shared: IdsCheck(route, shared.ips) if shared.ips is not None else None,
})


def build_chain(route: Route, shared: Shared) -> Chain:
    """The route's checks in its configured order (`route.checks`), after `conformance`, which every
    route runs first (a request the service provider cannot accept is no policy question), and the
    recording check when the route refuses traffic it cannot record (`on_record_failure: refuse`)."""
    checks = [FACTORIES[name](route, shared) for name in route.checks]
    if route.on_record_failure == "refuse" and shared.durability is not None:
        checks.insert(0, RecordingCheck(shared.durability))
    return Chain([ConformanceCheck(), *(c for c in checks if c is not None)])
