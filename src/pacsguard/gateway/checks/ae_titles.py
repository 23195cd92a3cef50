"""`ae-titles`: the called AE title, the calling AE title and the client certificate subject, in
that order (PS3.8 7.1.1); refused with A-ASSOCIATE-RJ permanent, service-user and reason 7
(called AE title not recognized), 3 (calling AE title not recognized) or 1 (PS3.8 Table 9-21)."""

from __future__ import annotations

from pacsguard.config.schema import Route
from pacsguard.dicom import pdu as P
from pacsguard.dicom.events import ProtocolEvent
from pacsguard.gateway.check import Association, Check
from pacsguard.gateway.verdict import ALLOW, RJ_REFUSED, Verdict, refuse

_USER = (P.RJ_RESULT_PERMANENT, P.RJ_SOURCE_SERVICE_USER)


class AETitlesCheck(Check):
    name = "ae-titles"

    def __init__(self, route: Route) -> None:
        self.own = route.listen.ae_title
        self.calling = route.policy.calling_ae_titles
        subjects = route.policy.cert_subjects
        # An entry with "=" is a whole RFC 4514 subject and matches only a subject; one without is
        # a bare CN and matches only a CN: a certificate whose one CN is the text "CN=ct1,O=Radiology"
        # must not pass for that subject.
        self.subjects = None if subjects is None else {s for s in subjects if "=" in s}
        self.cns = None if subjects is None else {s for s in subjects if "=" not in s}

    def on_associate(self, assoc: Association, rq: P.AssociateRQ, events: list[ProtocolEvent]) -> Verdict:
        called, calling = rq.called_ae_title, rq.calling_ae_title
        if called != self.own:
            return refuse(f"called AE title {called!r} is not this gateway's ({self.own!r})", "listen.ae_title",
                          rj=(*_USER, P.RJ_REASON_USER_CALLED_AE_NOT_RECOGNIZED))
        if self.calling is not None and calling not in self.calling:
            return refuse(f"calling AE title {calling!r} is not allowed", "policy.calling_ae_titles",
                          rj=(*_USER, P.RJ_REASON_USER_CALLING_AE_NOT_RECOGNIZED))
        if self.subjects is not None:
            cert = assoc.cert or {}
            if cert.get("subject") not in self.subjects and cert.get("subject_cn") not in (self.cns or ()):
                who = cert.get("subject") or "no client certificate"
                return refuse(f"client certificate subject ({who}) is not allowed", "policy.cert_subjects",
                              rj=RJ_REFUSED)
        return ALLOW
