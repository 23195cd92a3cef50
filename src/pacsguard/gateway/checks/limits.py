"""`limits`: at most `limits.max_associations` admitted associations on the route and
`limits.max_associations_per_source` from one host; else A-ASSOCIATE-RJ transient, service-provider
(presentation), local limit exceeded (PS3.8 Table 9-21), so the requestor may retry later.

An association counts from the moment this check admits it until its connection closes."""

from __future__ import annotations

from pacsguard.config.schema import Route
from pacsguard.dicom import pdu as P
from pacsguard.dicom.events import ProtocolEvent
from pacsguard.gateway.check import Association, Check
from pacsguard.gateway.verdict import ALLOW, RJ_LIMIT, Verdict, refuse


class LimitsCheck(Check):
    name = "limits"

    def __init__(self, route: Route) -> None:
        self.limits = route.limits
        self.live: dict[Association, str] = {}  # admitted association -> its source host

    def on_associate(self, assoc: Association, rq: P.AssociateRQ, events: list[ProtocolEvent]) -> Verdict:
        limits = self.limits
        if len(self.live) >= limits.max_associations:
            return refuse(f"route has {len(self.live)} associations (limit {limits.max_associations})",
                          "limits.max_associations", rj=RJ_LIMIT)
        from_source = sum(1 for host in self.live.values() if host == assoc.host)
        if from_source >= limits.max_associations_per_source:
            return refuse(f"{assoc.host} has {from_source} associations (limit {limits.max_associations_per_source})",
                          "limits.max_associations_per_source", rj=RJ_LIMIT)
        self.live[assoc] = assoc.host
        return ALLOW

    def on_closed(self, assoc: Association) -> Verdict:
        self.live.pop(assoc, None)
        return ALLOW
