"""Receiving: a store-and-forward route's Storage SCP (PS3.4 B.2.2) on pynetdicom.

Each connection is judged first (pacsguard.gateway.store_forward.admission); pynetdicom then runs
the association in its own thread. A C-STORE is answered only after the object is in the spool:
written and fsync'd, checked by the route's object checks in order, renamed into place and the
folder fsync'd. Success (0x0000) is never sent for an object that is not on disk; a spool that
would leave less than its free-space floor answers 0xA700 (out of resources, PS3.4 B.2.3)."""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from socketserver import BaseServer
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from pacsguard.config.schema import Route
from pacsguard.dicom import dimse
from pacsguard.dicom.dataset import peek_identifiers
from pacsguard.dicom.events import DimseCommand, DimseDatasetEnd, DimseDatasetStart
from pacsguard.events import Event, Outcome, Severity
from pacsguard.gateway.check import Chain, decide
from pacsguard.gateway.objects import ObjectAction, ObjectCheck, ReceivedObject
from pacsguard.gateway.store_forward import records
from pacsguard.gateway.store_forward.admission import Admission, NotAnAssociation, peek_rq
from pacsguard.gateway.store_forward.judging import adopt_replacement, run_checks, set_aside
from pacsguard.gateway.store_forward.spool import Spool, SpooledMeta, SpoolFull
from pacsguard.gateway.verdict import Action, Verdict

log = logging.getLogger("pacsguard.gateway")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700  # PS3.4 Table B.2-1
STATUS_PROCESSING_FAILURE = 0x0110  # PS3.7 C.4.2: the gateway itself failed to keep the object


@dataclass(frozen=True, slots=True)
class Receiver:
    """What the SCP needs of its route (pacsguard.gateway.store_forward.route implements it)."""

    route: Route
    chain: Chain
    spool: Spool
    object_checks: Sequence[ObjectCheck]
    lock: threading.Lock  # the route's checks keep state for one thread: judged one at a time
    publish: Callable[[Event], object]
    quarantine_source: Callable[[str, Verdict], None]
    is_quarantined: Callable[[str, str | None], bool]
    queued: Callable[[SpooledMeta], None]  # hands a committed object to the forwarders


class _Server(ThreadedAssociationServer):
    """pynetdicom's server, started and stopped by the route rather than by its AE."""

    def shutdown(self) -> None:
        BaseServer.shutdown(self)
        self.server_close()


def make_server(receiver: Receiver) -> ThreadedAssociationServer:
    """A listening (not yet serving) Storage SCP for ``receiver``'s route."""
    route = receiver.route
    ae = AE(ae_title=route.listen.ae_title)
    ae.maximum_pdu_size = route.limits.max_pdu_length
    ae.acse_timeout = route.limits.artim_timeout
    ae.network_timeout = route.limits.idle_timeout
    ae.dimse_timeout = route.limits.idle_timeout
    ae.maximum_associations = route.limits.max_associations
    ae.require_called_aet = False  # the route's ae-titles check decides, as on a relayed route
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(str(context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)

    def handler(request: Any, address: Any, server: BaseServer) -> RequestHandler:
        return _Connection(receiver, request, address, server)

    server = ae.make_server((route.listen.host, route.listen.port), server_class=_Server,
                            contexts=_SharedContexts(ae.supported_contexts), request_handler=handler)
    return server


class _SharedContexts(list):  # type: ignore[type-arg]
    """The SCP's presentation contexts, shared by its associations. pynetdicom deep-copies them for
    each association (~0.2 s with every transfer syntax of every storage SOP class); negotiation
    only reads them (PS3.8 9.3.3.2: it builds the results anew), so one copy serves all."""

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return list(self)


class _Connection(RequestHandler):
    """One TCP connection: judged by the route's checks, then handed to pynetdicom."""

    def __init__(self, receiver: Receiver, request: Any, address: Any, server: BaseServer) -> None:
        self.receiver = receiver
        super().__init__(request, address, server)

    def handle(self) -> None:
        rx = self.receiver
        sock: socket.socket = self.request
        host, port = str(self.client_address[0]), int(self.client_address[1])
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        adm = Admission(rx.route, host, port, rx.chain, rx.publish, rx.quarantine_source)
        try:
            raw = peek_rq(sock, rx.route.limits.max_pdu_length, rx.route.limits.artim_timeout)
            with rx.lock:
                verdict = adm.judge(raw)
                if verdict.refused:
                    adm.reject(sock, verdict)
        except (NotAnAssociation, OSError) as exc:
            log.info("route %s: %s:%d: %s", rx.route.name, host, port, exc)
            with rx.lock:
                adm.closed()
            _close(sock)
            return
        if verdict.refused:
            with rx.lock:
                adm.closed()
            time.sleep(0.05)  # let the A-ASSOCIATE-RJ reach the requestor before the socket closes
            _close(sock)
            return
        assoc = self._create_association()
        if adm.refused_contexts:
            refused = set(adm.refused_contexts)
            assoc.acceptor.supported_contexts = [cx for cx in assoc.acceptor.supported_contexts
                                                 if cx.abstract_syntax not in refused]
        session = _Session(rx, adm)
        assoc.bind(evt.EVT_C_STORE, session.on_store)
        for event, method in ((evt.EVT_ACCEPTED, session.on_accepted), (evt.EVT_RELEASED, session.on_released),
                              (evt.EVT_ABORTED, session.on_aborted), (evt.EVT_CONN_CLOSE, session.on_closed)):
            assoc.bind(event, method)
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class _Session:
    """One association's handlers (they run on pynetdicom's association thread)."""

    def __init__(self, receiver: Receiver, adm: Admission) -> None:
        self.rx = receiver
        self.adm = adm
        self.closed = False
        self.ended = False
        self.aborting = ""  # why the gateway itself aborts, once it does
        self.cut_off = ""  # why this association takes nothing more (its sender was quarantined)
        self.stored = 0

    @property
    def record(self) -> Any:
        return self.adm.record

    def on_accepted(self, event: evt.Event) -> None:
        accepted = sorted({str(cx.abstract_syntax) for cx in event.assoc.accepted_contexts})
        self.record.association("accepted", message=f"{len(accepted)} SOP classes accepted", accepted=accepted,
                                refused_by_policy=sorted(set(self.adm.refused_contexts)),
                                max_pdu=event.assoc.requestor.maximum_length or None)

    def _totals(self) -> dict[str, Any]:
        return {"duration_ms": round((time.monotonic() - self.adm.started) * 1000, 3)}

    def on_released(self, event: evt.Event) -> None:
        self.ended = True
        self.record.ended("released", message=f"released after {self.stored} objects", **self._totals())

    def on_aborted(self, event: evt.Event) -> None:
        self.ended = True
        if self.aborting:
            self.record.ended("aborted", severity=Severity.WARNING, outcome=Outcome.SERIOUS_FAILURE,
                              message=f"aborted by the gateway: {self.aborting}", by="gateway",
                              reason=self.aborting, cause="policy", **self._totals())
            return
        self.record.ended("aborted", severity=Severity.NOTICE, outcome=Outcome.MINOR_FAILURE,
                          message="A-ABORT from the client", by="client", **self._totals())

    def _abort(self, event: evt.Event, why: str) -> None:
        """A-ABORT (PS3.8 9.3.8) after this C-STORE is answered: from another thread, since this
        handler runs on the association's own."""
        self.aborting = why
        threading.Thread(target=event.assoc.abort, daemon=True).start()

    def on_closed(self, event: evt.Event) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.ended and self.record is not None:
            self.record.ended("aborted", severity=Severity.NOTICE, outcome=Outcome.MINOR_FAILURE,
                              message="the connection closed without A-RELEASE", by="client",
                              cause="connection-closed", **self._totals())
        with self.rx.lock:
            self.adm.closed()

    # --- C-STORE (PS3.4 B.2.2, PS3.7 9.1.1) ---------------------------------------------------

    def on_store(self, event: evt.Event) -> int:
        req: Any = event.request  # a C-STORE primitive (EVT_C_STORE)
        context = event.context
        command = dimse.CommandSet(
            dimse.C_STORE_RQ, message_id=req.MessageID, affected_sop_class_uid=str(req.AffectedSOPClassUID or ""),
            affected_sop_instance_uid=str(req.AffectedSOPInstanceUID or ""), priority=req.Priority,
            command_data_set_type=0x0000, move_originator_ae=req.MoveOriginatorApplicationEntityTitle or None,
            move_originator_message_id=req.MoveOriginatorMessageID)
        ts = str(context.transfer_syntax)
        command_event = DimseCommand(True, context.context_id, str(context.abstract_syntax), ts, command)
        pending = self.record.request(command_event)
        self.record.track(pending)
        dataset = req.DataSet.getbuffer()
        peek = peek_identifiers(dataset, ts, final=True)
        pending.add_identifiers(peek.patient_id, peek.study_instance_uid)
        pending.sop_instance_uid = command.affected_sop_instance_uid
        pending.dataset_bytes = len(dataset)
        status = self._judge_request(event, pending, command_event, peek, len(dataset))
        if status is None:
            status = self._spool(event, dataset, peek.patient_id, peek.study_instance_uid)
        if status == STATUS_SUCCESS:
            self.stored += 1
        if self.cut_off and not self.aborting:
            self._abort(event, self.cut_off)
        response = dimse.CommandSet(dimse.C_STORE_RSP, message_id_being_responded_to=req.MessageID, status=status,
                                    affected_sop_class_uid=command.affected_sop_class_uid,
                                    affected_sop_instance_uid=command.affected_sop_instance_uid)
        self.record.answered(pending, response)
        return status

    def _judge_request(self, event: evt.Event, pending: Any, command_event: DimseCommand, peek: Any,
                       size: int) -> int | None:
        """The route's request checks (rate, services, the inline IDS), as on a relayed route;
        None when the object may be spooled, else the status to answer."""
        rx, adm = self.rx, self.adm
        if self.cut_off or rx.is_quarantined(adm.host, adm.calling_ae):
            self._abort(event, f"{adm.host} ({adm.calling_ae}) is quarantined")
            pending.refuse("the source is quarantined", "quarantine", dimse.STATUS_NOT_AUTHORIZED)
            return dimse.STATUS_NOT_AUTHORIZED
        with rx.lock:
            verdict = decide(rx.chain, "on_request", adm, pending, command_event)
            if not verdict.refused:
                msg_id = command_event.command.message_id
                start = DimseDatasetStart(True, command_event.context_id, msg_id, peek)
                end = DimseDatasetEnd(True, msg_id, size)
                verdict = max((verdict, decide(rx.chain, "on_data_event", adm, start),
                               decide(rx.chain, "on_data_event", adm, end)), key=lambda v: v.action)
        if not verdict.refused:
            return None
        status = verdict.status if verdict.status is not None else dimse.STATUS_NOT_AUTHORIZED
        pending.refuse(verdict.reason, verdict.rule, status)
        if verdict.action >= Action.ABORT:
            self._abort(event, verdict.reason)
        return status

    def _meta(self, event: evt.Event, object_id: str, size: int, patient: str | None, study: str | None) -> SpooledMeta:
        req: Any = event.request
        adm = self.adm
        obj = ReceivedObject(path=self.rx.spool.object_path(object_id), sop_class_uid=str(req.AffectedSOPClassUID),
                             sop_instance_uid=str(req.AffectedSOPInstanceUID),
                             transfer_syntax_uid=str(event.context.transfer_syntax), calling_ae=adm.calling_ae or "",
                             called_ae=adm.rq.called_ae_title if adm.rq else "", peer_host=adm.host,
                             route=self.rx.route.name, association_id=f"{adm.host}:{adm.port}")
        return SpooledMeta(id=object_id, object=obj, received=time.time(), bytes=size,
                           destinations=[d.key for d in self.rx.route.destinations], patient_id=patient,
                           study_uid=study)

    def _spool(self, event: evt.Event, dataset: memoryview, patient: str | None, study: str | None) -> int:
        """Write, check and commit one object; the status to answer."""
        rx = self.rx
        from pynetdicom.dsutils import encode_file_meta

        head = b"\x00" * 128 + b"DICM" + encode_file_meta(event.file_meta)
        object_id = rx.spool.new_id()
        meta = self._meta(event, object_id, len(head) + len(dataset), patient, study)
        try:
            rx.spool.reserve(meta.bytes)
        except SpoolFull as exc:
            rx.publish(records.refused(meta, status=STATUS_OUT_OF_RESOURCES, check="spool", rule="spool.min_free_mib",
                                       reason=str(exc)))
            return STATUS_OUT_OF_RESOURCES
        try:
            return self._keep(meta, head, dataset)
        finally:
            rx.spool.release(meta.bytes)

    def _keep(self, meta: SpooledMeta, head: bytes, dataset: memoryview) -> int:
        """Receive durably, check, then commit (or quarantine, or drop) one object."""
        rx, object_id = self.rx, meta.id
        try:
            received = rx.spool.receive(object_id, head, dataset)
        except OSError as exc:  # ENOSPC, EIO: nothing was acknowledged, the modality may retry
            rx.spool.discard(rx.spool.tmp / f"{object_id}.dcm")
            status = STATUS_OUT_OF_RESOURCES if exc.errno in (errno.ENOSPC, errno.EDQUOT) else STATUS_PROCESSING_FAILURE
            rx.publish(records.refused(meta, status=status, check="spool", rule="spool.directory",
                                       reason=f"cannot write the spool: {exc.strerror or exc}"))
            return status
        checked = replace(meta.object, path=received)  # judged synced, before it is committed
        verdict, path = run_checks(rx.object_checks, checked, rx.publish)
        if verdict.action is not ObjectAction.FORWARD:
            if verdict.action is ObjectAction.QUARANTINE and rx.route.quarantine_sender:
                reason = f"sent an object that {verdict.check} quarantined: {verdict.reason}"
                rx.quarantine_source(self.adm.host, Verdict(Action.QUARANTINE, reason, verdict.rule,
                                                            component="gateway"))
                self.cut_off = reason  # this association ends now, before the quarantine reaches the loop
            try:
                return set_aside(rx.spool, meta, path, received, verdict, rx.publish)
            except OSError as exc:  # the quarantine folder could not take it: refused all the same
                log.error("route %s: cannot quarantine %s: %s", rx.route.name, object_id, exc)
                rx.spool.discard(received)
                return verdict.status
        try:
            if path != received:
                meta, path = adopt_replacement(meta, path, received, verdict.check or "object check")
            rx.spool.commit(path, meta)
        except OSError as exc:
            rx.spool.discard(received)
            rx.publish(records.refused(meta, status=STATUS_OUT_OF_RESOURCES, check="spool", rule="spool.directory",
                                       reason=f"cannot commit to the spool: {exc.strerror or exc}"))
            return STATUS_OUT_OF_RESOURCES
        rx.publish(records.received(meta))
        rx.queued(meta)
        return STATUS_SUCCESS
