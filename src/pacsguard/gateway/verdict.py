"""What a check answers: a `Verdict`, carrying the action it asks for and the DICOM answer the
gateway gives when it refuses: an A-ASSOCIATE-RJ result/source/reason (PS3.8 9.3.4, Table 9-21),
a presentation context user-rejection (PS3.8 9.3.3.2, Table 9-18) or a DIMSE status (PS3.7 Annex C).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import IntEnum

from pacsguard.dicom import pdu as P


class Action(IntEnum):
    """The ladder of what a verdict asks for, weakest first (the IPS's "alert" is ALLOW plus an
    event). A stronger action wins when checks disagree, see `pacsguard.gateway.check.decide`."""

    ALLOW = 0
    REFUSE = 1  # the IPS's "drop": A-ASSOCIATE-RJ, context user-rejection or a DIMSE failure status
    ABORT = 2  # A-ABORT both legs (PS3.8 9.3.8)
    QUARANTINE = 3  # quarantine the source, then abort


#: A-ASSOCIATE-RJ (result, source, reason) the gateway sends when a service user refuses (PS3.8 Table 9-21).
RJ_REFUSED = (P.RJ_RESULT_PERMANENT, P.RJ_SOURCE_SERVICE_USER, P.RJ_REASON_USER_NO_REASON)
#: ... when a limit is reached: transient, so the requestor may retry later.
RJ_LIMIT = (P.RJ_RESULT_TRANSIENT, P.RJ_SOURCE_SERVICE_PROVIDER_PRESENTATION,
            P.RJ_REASON_PRESENTATION_LOCAL_LIMIT_EXCEEDED)
#: ... when the upstream cannot be reached ("temporary congestion").
RJ_CONGESTION = (P.RJ_RESULT_TRANSIENT, P.RJ_SOURCE_SERVICE_PROVIDER_PRESENTATION,
                 P.RJ_REASON_PRESENTATION_TEMPORARY_CONGESTION)


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action = Action.ALLOW
    reason: str = ""
    rule: str = ""  # which configuration key or IDS rule decided: for the event and the administrator
    rj: tuple[int, int, int] | None = None  # result, source, reason of the A-ASSOCIATE-RJ
    status: int | None = None  # DIMSE status for a refused request
    quarantine_for: timedelta | None = None  # with QUARANTINE: how long (None: until released)
    component: str = "gateway"  # who asked, for the quarantine record

    @property
    def allowed(self) -> bool:
        return self.action is Action.ALLOW

    @property
    def refused(self) -> bool:
        return self.action is not Action.ALLOW


ALLOW = Verdict()


def refuse(reason: str, rule: str, *, rj: tuple[int, int, int] | None = None, status: int | None = None) -> Verdict:
    """A refusal: with `rj` on the association, with `status` on a DIMSE request."""
    return Verdict(Action.REFUSE, reason, rule, rj=rj, status=status)
