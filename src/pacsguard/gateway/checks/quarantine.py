"""`quarantine`: refuse an association from a quarantined host, calling AE title, or (calling AE
title, host) pair (docs/gateway.md, "Quarantine").

The A-ASSOCIATE-RJ says what PS3.8 Table 9-21 can say of it: result transient while the quarantine
has an end (the requestor may try again later), permanent when it has none; source service-user;
reason 3, calling-AE-title-not-recognized, when the AE title is what is quarantined (alone or on this
host): the calling AE title is not accepted from here. Table 9-21 has no reason for a refused host,
so a whole-host quarantine gives reason 1, no-reason-given. The rejection event says "quarantined"
and names the entry in either case."""

from __future__ import annotations

from pacsguard.dicom import pdu as P
from pacsguard.dicom.events import ProtocolEvent
from pacsguard.gateway.check import Association, Check
from pacsguard.gateway.quarantine import Entry, QuarantineList, is_host
from pacsguard.gateway.verdict import ALLOW, Verdict, refuse


def quarantine_rj(entry: Entry) -> tuple[int, int, int]:
    """The A-ASSOCIATE-RJ (result, source, reason) refusing a device *entry* quarantines."""
    result = P.RJ_RESULT_TRANSIENT if entry.until is not None else P.RJ_RESULT_PERMANENT
    reason = P.RJ_REASON_USER_NO_REASON if is_host(entry.target) else P.RJ_REASON_USER_CALLING_AE_NOT_RECOGNIZED
    return result, P.RJ_SOURCE_SERVICE_USER, reason


class QuarantineCheck(Check):
    name = "quarantine"

    def __init__(self, quarantined: QuarantineList) -> None:
        self.quarantined = quarantined

    def on_associate(self, assoc: Association, rq: P.AssociateRQ, events: list[ProtocolEvent]) -> Verdict:
        entry = self.quarantined.match(assoc.host, rq.calling_ae_title)
        if entry is None:
            return ALLOW
        until = f" until {entry.until:%Y-%m-%d %H:%M:%SZ}" if entry.until else ""
        why = f": {entry.reason}" if entry.reason else ""
        return refuse(f"quarantined: {entry.target}{until}{why}", "quarantine", rj=quarantine_rj(entry))
