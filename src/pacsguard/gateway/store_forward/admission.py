"""A store-and-forward route's association checks, the same `Check` hooks a relayed route runs
(pacsguard.gateway.check.decide), applied to the A-ASSOCIATE-RQ (PS3.8 9.3.2) before the route's
Storage SCP (pacsguard.gateway.store_forward.acceptor) answers it.

The A-ASSOCIATE-RQ is decoded by the association's own decoder (pacsguard.dicom), so the checks
see the same `AssociateRQ` and decoder events as on a relayed route. A refusal is answered with
the verdict's A-ASSOCIATE-RJ (PS3.8 9.3.4); presentation contexts a check refuses (PS3.8
9.3.3.2) are answered as rejected by the user."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pacsguard.config.schema import Route
from pacsguard.dicom import pdu as P
from pacsguard.dicom.association import AssociationDecoder
from pacsguard.dicom.events import AssociationRequested, ProtocolEvent, ProtocolViolation
from pacsguard.dicom.stream import RawPDU
from pacsguard.events import Event, Outcome, Party, Severity
from pacsguard.gateway.check import Chain, decide, expected_by
from pacsguard.gateway.quarantine import SPARED, QuarantinePolicy
from pacsguard.gateway.verdict import RJ_REFUSED, Verdict
from pacsguard.records.dicom import AssociationRecord
from pacsguard.records.moves import MoveLedger


class NotAnAssociation(Exception):
    """The connection did not start with a well-formed A-ASSOCIATE-RQ."""


@dataclass(eq=False)
class Admission:
    """One association of a store-and-forward route, as its checks see it (the `Association` of
    pacsguard.gateway.check): who called, and its record."""

    route: Route
    host: str
    port: int
    chain: Chain
    publish_event: Callable[[Event], object]
    quarantine_source: Callable[[str, Verdict], None]
    calling_ae: str | None = None
    cert: dict[str, Any] | None = None
    upstream_host: str | None = None  # a store-and-forward route relays no association upstream
    tls: bool = False
    rq: P.AssociateRQ | None = None
    events: list[ProtocolEvent] = field(default_factory=list)
    record: AssociationRecord | None = None
    refused_contexts: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    decoder: AssociationDecoder | None = None  # the association's, once judged: its contexts
    # What a check's quarantine takes (gateway.quarantine_scope, gateway.admin_hosts), as on a
    # relayed route (pacsguard.gateway.relay.AssociationRelay.quarantine).
    quarantine_policy: QuarantinePolicy = field(default_factory=QuarantinePolicy)
    # The gateway's open C-MOVEs (records.moves): the record credits the one a C-STORE it
    # acknowledges is a sub-operation of, as a relayed route's record does.
    moves: MoveLedger | None = None

    def publish(self, event: Event) -> None:
        self.publish_event(event)

    def quarantine(self, verdict: Verdict) -> None:
        """Quarantine this association's source (a check, an inline IDS rule, asked for it) through
        the gateway's policy, as a relayed route does: the (calling AE title, host) pair, or the host
        when `gateway.quarantine_scope` is ``host``; never a host of `gateway.admin_hosts`. A source
        spared is recorded as such (`gateway.quarantine.spared`); the verdict still acts on this
        association."""
        target, spared = self.quarantine_policy.target(self.host, self.calling_ae)
        if target is None:
            server = self.record.server if self.record is not None else Party(ae_title=self.route.listen.ae_title)
            self.publish(Event(kind=SPARED, component="gateway", severity=Severity.NOTICE,
                               actor=self.client_party(), target=server,
                               message=f"not quarantined: {spared} ({verdict.reason})",
                               details={"route": self.route.name, "reason": verdict.reason, "why": spared}))
            return
        self.quarantine_source(target, verdict)

    def abstract_syntax(self, context_id: int) -> str | None:
        return self.decoder.abstract_syntax(context_id) if self.decoder is not None else None

    def client_party(self) -> Party:
        # The certificate's subject, else the username the A-ASSOCIATE-RQ claimed (PS3.7 D.3.3.7.1,
        # kept by the record): what a relayed route's events name too.
        user = self.cert.get("subject") if self.cert else self.record.client.user if self.record is not None else None
        return Party(ae_title=self.calling_ae, host=self.host or None, port=self.port or None, user=user)

    def judge(self, raw: RawPDU, decoder: AssociationDecoder) -> Verdict:
        """Decode the A-ASSOCIATE-RQ with the association's ``decoder``, record it as requested, and
        run the route's checks on it and on each proposed abstract syntax."""
        self.decoder = decoder
        self.events = decoder.on_pdu(True, raw)
        self.rq = next((e.rq for e in self.events if isinstance(e, AssociationRequested)), None)
        if self.rq is None:
            bad = next((e for e in self.events if isinstance(e, ProtocolViolation)), None)
            raise NotAnAssociation(bad.message if bad else "the A-ASSOCIATE-RQ could not be decoded")
        self.calling_ae = self.rq.calling_ae_title
        self.record = self.new_record(self.rq.called_ae_title)
        self.record.requested(self.rq, tls=self.tls, certificate=self.cert,
                              expected_by=expected_by(self.chain, self, self.rq))
        verdict = decide(self.chain, "on_associate", self, self.rq, self.events)
        if verdict.refused:
            return verdict
        for abstract in dict.fromkeys(pc.abstract_syntax for pc in self.rq.presentation_contexts):
            if decide(self.chain, "on_context", self, abstract).refused:
                self.refused_contexts.append(abstract)
        return verdict

    def new_record(self, called_ae: str) -> AssociationRecord:
        """The association's record (the route's destinations stand for the server)."""
        up = self.route.upstream
        return AssociationRecord(self.publish, component="gateway", client=self.client_party(),
                                 server=Party(ae_title=up.ae_title, host=up.host, port=up.port),
                                 route=self.route.name, called_ae=called_ae, moves=self.moves)

    def reject(self, send: Callable[[bytes], None], verdict: Verdict) -> None:
        """Answer with the verdict's A-ASSOCIATE-RJ (PS3.8 9.3.4) through ``send`` and record why."""
        result, source, reason = verdict.rj or RJ_REFUSED
        send(P.encode_associate_rj(result, source, reason))
        transient = result == P.RJ_RESULT_TRANSIENT
        if self.record is not None:
            self.record.association("rejected", severity=Severity.WARNING,
                                    outcome=Outcome.MINOR_FAILURE if transient else Outcome.SERIOUS_FAILURE,
                                    message=f"rejected by gateway: {verdict.reason}", by="gateway",
                                    rule=verdict.rule, reason=verdict.reason, result=result, source=source,
                                    reason_code=reason)
        decide(self.chain, "on_rejected", self, verdict)

    def closed(self) -> None:
        decide(self.chain, "on_closed", self)

