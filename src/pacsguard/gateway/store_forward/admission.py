"""A store-and-forward route's association checks, the same `Check` hooks a relayed route runs
(pacsguard.gateway.check.decide), applied before pynetdicom takes the connection.

The A-ASSOCIATE-RQ (PS3.8 9.3.2) is read with MSG_PEEK, so it stays in the socket for pynetdicom,
and decoded by pacsguard's own decoder: the checks see the same `AssociateRQ` and decoder events
as on a relayed route. A refusal is answered here with the verdict's A-ASSOCIATE-RJ (PS3.8 9.3.4);
presentation contexts a check refuses (PS3.8 9.3.3.2) are left out of what pynetdicom accepts."""

from __future__ import annotations

import select
import socket
import struct
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
from pacsguard.gateway.verdict import RJ_REFUSED, Verdict
from pacsguard.records.dicom import AssociationRecord

_HEADER = struct.Struct(">BBI")


class NotAnAssociation(Exception):
    """The connection did not start with a well-formed A-ASSOCIATE-RQ in time."""


def peek_rq(sock: socket.socket, max_length: int, timeout: float) -> RawPDU:
    """The first PDU on ``sock``, left unread (MSG_PEEK); it must be an A-ASSOCIATE-RQ whose length
    is within ``max_length``, complete within ``timeout`` seconds (the ARTIM timer, PS3.8 9.1.5)."""
    deadline = time.monotonic() + timeout
    want = P.PDU_HEADER_LENGTH
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise NotAnAssociation(f"no complete A-ASSOCIATE-RQ within {timeout:g} s (ARTIM)")
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            continue
        data = sock.recv(want, socket.MSG_PEEK)
        if len(data) == want and want == P.PDU_HEADER_LENGTH:
            pdu_type, _, length = _HEADER.unpack(data)
            if pdu_type != P.PDU_ASSOCIATE_RQ:
                raise NotAnAssociation(f"the first PDU is of type 0x{pdu_type:02X}, not an A-ASSOCIATE-RQ")
            if length > max_length:
                raise NotAnAssociation(f"an A-ASSOCIATE-RQ of {length} bytes (limit {max_length})")
            want += length
            continue
        if len(data) == want:
            return RawPDU(P.PDU_ASSOCIATE_RQ, data)
        if not data:
            raise NotAnAssociation("the connection closed before an A-ASSOCIATE-RQ")
        # MSG_PEEK returns what is there; wait for the rest without spinning.
        time.sleep(0.002)


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
    rq: P.AssociateRQ | None = None
    events: list[ProtocolEvent] = field(default_factory=list)
    record: AssociationRecord | None = None
    refused_contexts: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def publish(self, event: Event) -> None:
        self.publish_event(event)

    def quarantine(self, verdict: Verdict) -> None:
        self.quarantine_source(self.host, verdict)

    def client_party(self) -> Party:
        return Party(ae_title=self.calling_ae, host=self.host or None, port=self.port or None)

    def judge(self, raw: RawPDU) -> Verdict:
        """Decode the A-ASSOCIATE-RQ, record it as requested, and run the route's checks on it and
        on each proposed abstract syntax."""
        decoder = AssociationDecoder(max_pdu_length=self.route.limits.max_pdu_length)
        self.events = decoder.on_pdu(True, raw)
        self.rq = next((e.rq for e in self.events if isinstance(e, AssociationRequested)), None)
        if self.rq is None:
            bad = next((e for e in self.events if isinstance(e, ProtocolViolation)), None)
            raise NotAnAssociation(bad.message if bad else "the A-ASSOCIATE-RQ could not be decoded")
        self.calling_ae = self.rq.calling_ae_title
        up = self.route.upstream
        self.record = AssociationRecord(self.publish, component="gateway", client=self.client_party(),
                                        server=Party(ae_title=up.ae_title, host=up.host, port=up.port),
                                        route=self.route.name, called_ae=self.rq.called_ae_title)
        self.record.requested(self.rq, tls=False, certificate=None, expected_by=expected_by(self.chain, self, self.rq))
        verdict = decide(self.chain, "on_associate", self, self.rq, self.events)
        if verdict.refused:
            return verdict
        for abstract in dict.fromkeys(pc.abstract_syntax for pc in self.rq.presentation_contexts):
            if decide(self.chain, "on_context", self, abstract).refused:
                self.refused_contexts.append(abstract)
        return verdict

    def reject(self, sock: socket.socket, verdict: Verdict) -> None:
        """Answer with the verdict's A-ASSOCIATE-RJ (PS3.8 9.3.4) and record why."""
        result, source, reason = verdict.rj or RJ_REFUSED
        try:
            sock.sendall(P.encode_associate_rj(result, source, reason))
        except OSError:
            pass
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

