"""`quarantine`: refuse an association from a quarantined host or calling AE title
(docs/gateway.md, "Quarantine"); A-ASSOCIATE-RJ permanent, service-user, no reason (PS3.8 Table 9-21)."""

from __future__ import annotations

from pacsguard.dicom import pdu as P
from pacsguard.dicom.events import ProtocolEvent
from pacsguard.gateway.check import Association, Check
from pacsguard.gateway.quarantine import QuarantineList
from pacsguard.gateway.verdict import ALLOW, RJ_REFUSED, Verdict, refuse


class QuarantineCheck(Check):
    name = "quarantine"

    def __init__(self, quarantined: QuarantineList) -> None:
        self.quarantined = quarantined

    def on_associate(self, assoc: Association, rq: P.AssociateRQ, events: list[ProtocolEvent]) -> Verdict:
        entry = self.quarantined.match(assoc.host, rq.calling_ae_title)
        if entry is None:
            return ALLOW
        why = f" ({entry.reason})" if entry.reason else ""
        return refuse(f"{entry.target} is quarantined{why}", "quarantine", rj=RJ_REFUSED)
