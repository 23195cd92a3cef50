"""`ids`: the inline IPS. The IDS rules (docs/ids.md) see every decoder event of the association
(a client's first PDU that is no A-ASSOCIATE-RQ too), every decode error, first bytes of another
protocol (RDP), the gateway's own rejections and the end of the connection; each alert is
recorded, and a rule's action becomes the verdict: alert (pass), drop (refuse: A-ASSOCIATE-RJ on
the RQ, 0x0124 not authorized on a request, PS3.7 C.4), abort (A-ABORT, PS3.8 9.3.8) or quarantine.

A C-MOVE relayed by one route announces the association its SCP (the route's upstream host) opens
to the Move Destination, typically through a return route: that route's ``requested`` record names
the C-MOVE (``expected_by``), as the passive sensor's does.

A route's listen port and its upstream's port are DICOM ports by definition: they join the
rules' ``$dicom_ports``.  A limit or ids.suppress (docs/ids.md) may hold an alert's event back;
its action is enforced all the same.

This is the only module of the gateway that calls the IDS (through its DICOM adapter)."""

from __future__ import annotations

from typing import Any

from pacsguard.config.schema import Route
from pacsguard.dicom import dimse
from pacsguard.dicom import pdu as P
from pacsguard.dicom.errors import UNKNOWN_PDU_TYPE, DecodeError
from pacsguard.dicom.events import DimseCommand, ProtocolEvent
from pacsguard.dicom.reasons import rj_reason
from pacsguard.gateway.check import Association, Check
from pacsguard.gateway.verdict import ALLOW, RJ_REFUSED, Action, Verdict
from pacsguard.ids import Alert, DicomAdapter, Flow
from pacsguard.records.dicom import Pending

_ACTIONS = {"alert": Action.ALLOW, "drop": Action.REFUSE, "abort": Action.ABORT, "quarantine": Action.QUARANTINE}


class IdsCheck(Check):
    name = "ids"
    observer = True  # the rules see what the policy refuses too: that is how probing shows

    def __init__(self, route: Route, dicom: DicomAdapter) -> None:
        self.route = route
        self.dicom = dicom
        dicom.add_dicom_ports([route.listen.port, route.upstream.port])
        self.flows: dict[Association, Flow] = {}  # live associations only: dropped when closed

    def _flow(self, assoc: Association) -> Flow:
        flow = self.flows.get(assoc)
        if flow is None:
            listen = self.route.listen
            flow = Flow(assoc.host, assoc.port, listen.host, listen.port, tls=assoc.cert is not None,
                        route=self.route.name, sensor="inline",
                        id=f"{self.route.name}/{assoc.host}:{assoc.port}/{id(assoc)}",
                        acceptor_host=self.route.upstream.host)
            self.flows[assoc] = flow
        if assoc.upstream_host is not None:
            # The address the upstream leg reached, not upstream.host as written: a host name (or one
            # of several addresses) is what a sub-association's source address is compared with.
            flow.acceptor_host = assoc.upstream_host
        return flow

    def expected_by(self, assoc: Association, rq: P.AssociateRQ) -> dict[str, Any] | None:
        """The C-MOVE (on any route of this gateway) whose SCP opens this association to its Move
        Destination (PS3.4 C.4.2.2), for the association's ``requested`` record."""
        announced = self.dicom.expected(self._flow(assoc), rq.called_ae_title)
        return announced.as_details() if announced is not None else None

    def on_associate(self, assoc: Association, rq: P.AssociateRQ, events: list[ProtocolEvent]) -> Verdict:
        flow = self._flow(assoc)
        return _verdict(assoc, [a for ev in events for a in self.dicom.observe(flow, ev)], rj=RJ_REFUSED)

    def on_request(self, assoc: Association, pending: Pending, event: DimseCommand) -> Verdict:
        return _verdict(assoc, self.dicom.observe(self._flow(assoc), event), status=dimse.STATUS_NOT_AUTHORIZED)

    def on_event(self, assoc: Association, event: ProtocolEvent) -> Verdict:
        return _verdict(assoc, self.dicom.observe(self._flow(assoc), event))

    on_data_event = on_event

    def on_decode_error(self, assoc: Association, from_client: bool, error: DecodeError) -> Verdict:
        if from_client and error.code == UNKNOWN_PDU_TYPE and error.offset == 0:
            # The client's very first bytes are no PDU: not DICOM at all (HTTP, TLS, SSH...), as the
            # passive sensor tells it on a DICOM port (PS3.8 9.2: the requestor opens with an RQ).
            return _verdict(assoc, self.dicom.non_dicom(self._flow(assoc), error.head))
        return _verdict(assoc, self.dicom.decode_error(self._flow(assoc), from_client, error))

    def on_not_dicom(self, assoc: Association, head: bytes) -> Verdict:
        # The passive sensor reports these bytes on a DICOM port as non-DICOM, naming the protocol
        # they look like (protocol_guess); inline says the same for the same bytes.
        return _verdict(assoc, self.dicom.non_dicom(self._flow(assoc), head))

    def on_rejected(self, assoc: Association, verdict: Verdict) -> Verdict:
        # The gateway's own rejections feed the rules too: AE-title brute forcing is caught inline.
        result, source, reason = verdict.rj or RJ_REFUSED
        why = rj_reason(source, reason) if verdict.rule != "upstream" else verdict.reason
        return _verdict(assoc, self.dicom.association_result(self._flow(assoc), rejected=True, reason=why,
                                                                      by="gateway"))

    def on_closed(self, assoc: Association) -> Verdict:
        flow = self._flow(assoc)  # also for a connection that never sent an A-ASSOCIATE-RQ (a port scan)
        del self.flows[assoc]
        return _verdict(assoc, self.dicom.flow_closed(flow))


def _verdict(assoc: Association, alerts: list[Alert], *, rj: tuple[int, int, int] | None = None,
             status: int | None = None) -> Verdict:
    """Record every alert a limit does not hold back; the verdict is the strongest acting rule's
    (the first of equals), over every match."""
    strongest: Alert | None = None
    for alert in alerts:
        if alert.record:
            assoc.publish(alert.event)
        if _ACTIONS[alert.action] > (_ACTIONS[strongest.action] if strongest else Action.ALLOW):
            strongest = alert
    if strongest is None:
        return ALLOW
    return Verdict(_ACTIONS[strongest.action], f"IDS rule {strongest.rule_id}: {strongest.title}",
                   f"ids:{strongest.rule_id}", rj=rj, status=status, quarantine_for=strongest.quarantine_for,
                   component="ids")
