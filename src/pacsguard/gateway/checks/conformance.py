"""`conformance`: an A-ASSOCIATE-RQ the service provider cannot accept (PS3.8 9.2 AE-6: "otherwise
issue A-ASSOCIATE-RJ-PDU") is refused before any policy is asked and never reaches the upstream.
The fields and the A-ASSOCIATE-RJ each fault gets are `pacsguard.dicom.conformance`'s; the refusal's
rule names the field (``conformance.<field>``) and its reason the value.

Not a configurable check: every route runs it first, whatever its `checks:` list says."""

from __future__ import annotations

from pacsguard.dicom import pdu as P
from pacsguard.dicom.conformance import associate_rq_faults
from pacsguard.dicom.events import ProtocolEvent
from pacsguard.gateway.check import Association, Check
from pacsguard.gateway.verdict import ALLOW, Verdict, refuse

NAME = "conformance"


class ConformanceCheck(Check):
    name = NAME

    def on_associate(self, assoc: Association, rq: P.AssociateRQ, events: list[ProtocolEvent]) -> Verdict:
        faults = associate_rq_faults(rq)
        if not faults:
            return ALLOW
        first = faults[0]
        more = f" (and {len(faults) - 1} more: {', '.join(f.field for f in faults[1:])})" if len(faults) > 1 else ""
        return refuse(f"A-ASSOCIATE-RQ {first}{more}", f"{NAME}.{first.field}", rj=first.rj)
