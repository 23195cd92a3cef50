"""`hosts`: the source address must lie in `policy.hosts` (absent: any host); else
A-ASSOCIATE-RJ permanent, service-user, no reason (PS3.8 Table 9-21)."""

from __future__ import annotations

from ipaddress import ip_address

from pacsguard.config.schema import Route
from pacsguard.dicom import pdu as P
from pacsguard.dicom.events import ProtocolEvent
from pacsguard.gateway.check import Association, Check
from pacsguard.gateway.verdict import ALLOW, RJ_REFUSED, Verdict, refuse

RULE = "policy.hosts"


class HostsCheck(Check):
    name = "hosts"

    def __init__(self, route: Route) -> None:
        self.hosts = route.policy.hosts

    def on_associate(self, assoc: Association, rq: P.AssociateRQ, events: list[ProtocolEvent]) -> Verdict:
        if self.hosts is None:
            return ALLOW
        try:
            addr = ip_address(assoc.host.split("%", 1)[0])  # an IPv6 zone is not part of the address
        except ValueError:
            return refuse(f"source {assoc.host} is not an IP address", RULE, rj=RJ_REFUSED)
        if any(addr in net for net in self.hosts):
            return ALLOW
        return refuse(f"source host {assoc.host} is not in the route's allowed hosts", RULE, rj=RJ_REFUSED)
