"""The Storage SCP of a store-and-forward route, on pacsguard's own decoder (pacsguard.dicom): one
`StoreAssociation` per connection, on the gateway's asyncio loop, over the relay's own TCP or TLS
leg (pacsguard.gateway.relay.Side, pacsguard.gateway.server.TLSAcceptingSide).

The association (PS3.8 9.2, as an acceptor): the A-ASSOCIATE-RQ is judged by the route's checks
(pacsguard.gateway.store_forward.admission) and answered with an A-ASSOCIATE-RJ (PS3.8 9.3.4) or
an A-ASSOCIATE-AC (PS3.8 9.3.3, `negotiate`); C-STORE-RQs (PS3.7 9.1.1) are received into the
spool (pacsguard.gateway.store_forward.receiver) and C-ECHO-RQs answered (PS3.7 9.1.5); an
A-RELEASE-RQ is answered once every request before it is (PS3.8 9.3.6); an A-ABORT ends it
(PS3.8 9.3.8). ARTIM and idle timers, the route's PDU limit and the violation table
(pacsguard.gateway.violations) apply as on a relayed route: a malformed PDU is recorded and
answered with A-ABORT.

Everything sent goes through the relay's `Outbox` (pacsguard.gateway.outbox): with
`record_before_response` a C-STORE-RSP waits until the Events recorded before it (the object
received, the C-STORE itself) are durable in the store. An object goes to the forwarders only
once its C-STORE-RSP is sent; one whose association ends before that is withdrawn from the spool
(the modality saw no Success and sends it again: forwarding it too would make a duplicate).

A C-STORE the route could not forward as received (no UIDs in its command, no data set, a data
set in another transfer syntax or of another SOP Instance, one that does not hold together) is
refused at reception (pacsguard.gateway.store_forward.screening), once per object: at its command,
at its data set's first PDV, and, for its structure, once it is whole (receiver.py)."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pacsguard.dicom import dimse, uids
from pacsguard.dicom import events as E
from pacsguard.dicom import pdu as P
from pacsguard.dicom.association import AssociationDecoder
from pacsguard.dicom.errors import TRUNCATED_PDU, DecodeError
from pacsguard.dicom.stream import PDUReader, RawPDU, data_fragment_run
from pacsguard.events import Event, Outcome, Severity
from pacsguard.gateway.check import decide
from pacsguard.gateway.first_bytes import FirstBytes
from pacsguard.gateway.outbox import Outbox
from pacsguard.gateway.store_forward import records, screening
from pacsguard.gateway.store_forward.admission import Admission, NotAnAssociation
from pacsguard.gateway.store_forward.receiver import Incoming, Kept, Receiver, Sender, keep, kept_now
from pacsguard.gateway.store_forward.spool import SpooledMeta
from pacsguard.gateway.timer import AssociationTimer, PduClock, idle_left, pdu_left
from pacsguard.gateway.verdict import Action, Verdict
from pacsguard.gateway.violations import TOLERATED, tolerated_apart, violation_event, warning_event
from pacsguard.records.dicom import AssociationRecord, Pending, RefusalFilter
from pacsguard.records.moves import CreditWhenSent

if TYPE_CHECKING:
    from pacsguard.events.durable import Durability
    from pacsguard.gateway.relay import Side

log = logging.getLogger("pacsguard.gateway")


def storage_sop_classes() -> frozenset[str]:
    """The SOP classes the SCP accepts: every Storage SOP Class pynetdicom lists (PS3.4 B.5), every
    other SOP class PS3.6 Table A-1 names as a storage (pydicom's UID dictionary), retired or not,
    and Verification (PS3.4 A.4). Retired ones are kept because old modalities still send them (an
    ultrasound machine's retired Ultrasound Image Storage, 1.2.840.10008.5.1.4.1.1.6), as dcmtk's
    storescp and Orthanc accept them; a relayed route passes them on too."""
    from pydicom._uid_dict import UID_dictionary  # PS3.6 Table A-1 as pydicom ships it (pydicom.uid uses it)
    from pynetdicom import AllStoragePresentationContexts

    named = {uid for uid, (name, kind, *_) in UID_dictionary.items()
             if kind == "SOP Class" and _STORAGE_NAME.search(name) and not name.startswith(_NOT_STORAGE)}
    return frozenset(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts) | named | {uids.VERIFICATION}


#: A storage SOP class's name ends in "Storage" (some with " - Trial", " - For Presentation", ...).
_STORAGE_NAME = re.compile(r"\bStorage( SOP Class)?( - .*)?$")
#: Named like one, but not a C-STORE of an object (PS3.4 J, F.3).
_NOT_STORAGE = ("Storage Commitment", "Media Storage Directory")


def negotiate(rq: P.AssociateRQ, *, supported: Collection[str], refused: Collection[str],
              max_length: int, syntaxes: Sequence[str] | None = None) -> P.AssociateAC:
    """The A-ASSOCIATE-AC answering ``rq`` (PS3.8 9.3.3): each presentation context accepted with
    the first transfer syntax proposed, or with ``syntaxes`` (the route's accepted ones) the first
    of them proposed (result 4 when none is, PS3.8 Table 9-18), unless its abstract syntax is not
    ``supported`` (result 3) or the route's checks ``refused`` it (result 1); our Maximum Length (PS3.8
    D.1), pacsguard's Implementation Class UID and Version Name (PS3.7 D.3.3.2), and the roles.

    Roles (PS3.7 D.3.3.4): this acceptor is only ever the SCP of Storage and Verification, the
    requestor only their SCU. A requestor proposing the SCU role (alone or with the SCP role) gets
    it, and only it: SCU 1, SCP 0 (an acceptor may refuse a proposed role, never grant one not
    proposed). A requestor proposing only the SCP role, or neither, would be left with no role on
    the context (answering SCU 0, SCP 0 and then serving its C-ECHO-RQ contradicts the AC): the
    context is rejected (result 1, user rejection), as pynetdicom's acceptor does for an SOP class
    it supports in the SCP role only, so no DIMSE request can come on it (a PDV there is a protocol
    error, answered with an A-ABORT). Role items answer accepted contexts only."""
    role_items = rq.user_information.role_selections if rq.user_information else []
    proposed: dict[str, P.RoleSelection] = {}
    for item in role_items:
        proposed.setdefault(item.sop_class_uid, item)  # one item per SOP class (PS3.7 D.3.3.4); the first counts
    contexts = []
    roles: dict[str, P.RoleSelection] = {}
    for pc in rq.presentation_contexts:
        role = proposed.get(pc.abstract_syntax)
        if pc.abstract_syntax in refused:
            contexts.append(P.PresentationContextAC(pc.context_id, P.PC_USER_REJECTION, None))
        elif pc.abstract_syntax not in supported:
            contexts.append(P.PresentationContextAC(pc.context_id, P.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED, None))
        elif (chosen := _chosen(pc.transfer_syntaxes, None if pc.abstract_syntax == uids.VERIFICATION
                                else syntaxes)) is None:  # C-ECHO has no data set to convert
            contexts.append(P.PresentationContextAC(pc.context_id, P.PC_TRANSFER_SYNTAXES_NOT_SUPPORTED, None))
        elif role is not None and not role.scu_role:
            contexts.append(P.PresentationContextAC(pc.context_id, P.PC_USER_REJECTION, None))
        else:
            contexts.append(P.PresentationContextAC(pc.context_id, P.PC_ACCEPTANCE, chosen))
            if role is not None:
                roles.setdefault(pc.abstract_syntax, P.RoleSelection(pc.abstract_syntax, 1, 0))
    info = P.UserInformation.build(max_length=max_length,
                                   implementation_class_uid=uids.PACSGUARD_IMPLEMENTATION_CLASS_UID,
                                   implementation_version_name=uids.PACSGUARD_IMPLEMENTATION_VERSION_NAME,
                                   role_selections=list(roles.values()))
    return P.AssociateAC(called_ae_title=rq.called_ae_title, calling_ae_title=rq.calling_ae_title,
                         presentation_contexts=contexts, user_information=info)


def _chosen(proposed: Sequence[str], accepted: Sequence[str] | None) -> str | None:
    """The transfer syntax a context is accepted with: the first proposed, or the route's most
    preferred one among those proposed; None: no proposal can be taken."""
    if accepted is None:
        return proposed[0] if proposed else None
    return next((ts for ts in accepted if ts in proposed), None)


class StoreAssociation:
    """One connection to a store-and-forward route: the relay's `Side` calls it as its endpoint
    (pacsguard.gateway.relay.Endpoint)."""

    upstream: Side | None = None  # an SCP has no second leg

    def __init__(self, rx: Receiver, durability: Durability | None, supported: frozenset[str],
                 live: set[StoreAssociation]) -> None:
        self.rx = rx
        self.route = rx.route
        limits = self.route.limits
        self.supported = supported
        self.live = live
        self.client: Side | None = None
        self.state = "awaiting-rq"
        self.decoder = AssociationDecoder(max_pdu_length=limits.max_pdu_length, tolerate=TOLERATED)
        self.reader = PDUReader(limits.max_pdu_length)
        self.first = FirstBytes()  # the client's first bytes: another protocol's, read as a PDU header?
        # Its C-STOREs credit their C-MOVE once their Success is sent (records.moves.CreditWhenSent).
        self.credits = CreditWhenSent(rx.moves) if rx.moves is not None else None
        self.adm = Admission(self.route, "", 0, rx.chain, self.publish, rx.quarantine_source,
                             quarantine_policy=rx.quarantine_policy, moves=self.credits)
        self.outbox = Outbox(self.route, durability, self._write, lambda why: self.abort(why, kind="record-failure"))
        self.refusals = RefusalFilter(rx.refusals, self._publish_now)
        self.incoming: Incoming | None = None
        self.answers: deque[asyncio.Task[None]] = deque()  # in the order their requests came
        # Committed objects whose Success is written or held by the outbox, not yet sent: the
        # forwarders get each once it is sent; those left when the association ends are withdrawn.
        self.unanswered: dict[str, SpooledMeta] = {}
        self.warned: set[str] = set()
        # Quarantines of this sender an object check asked for (quarantine_sender), made once the
        # object's failure status is sent, or the association ended.
        self.quarantines: list[Verdict] = []
        self.stored = 0
        self.closed = False
        self.started = time.monotonic()
        self.last_activity = self.started
        self.timer = AssociationTimer(self._expired)
        self.pdu_clock = PduClock()  # the PDU still arriving from the requestor

    # --- who is on the other end (quarantine enforcement, pacsguard.gateway.server) -----------------

    @property
    def host(self) -> str:
        return self.adm.host

    @property
    def port(self) -> int:
        return self.adm.port

    @property
    def calling_ae(self) -> str | None:
        return self.adm.calling_ae

    # --- the endpoint the relay's Side calls -----------------------------------------------------

    def client_connected(self, side: Side) -> None:
        self.client = side
        transport = side.transport
        assert transport is not None  # called from the leg's connection_made
        peer = side.peer or transport.get_extra_info("peername") or ("?", 0)  # accept()'s, kept after a reset
        self.adm.host, self.adm.port = str(peer[0]), int(peer[1])
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            from pacsguard.tls import describe_peer

            self.adm.tls = True
            self.adm.cert = describe_peer(ssl_object) or None
        self.live.add(self)
        self.timer.arm(self.route.limits.artim_timeout, "ARTIM timer expired: no A-ASSOCIATE-RQ")

    def data_received(self, from_client: bool, data: memoryview | bytes) -> None:
        """Bytes from the requestor (`_received`); then when the PDU left incomplete began (`PduClock`)."""
        self._received(from_client, data)
        reader = self.reader
        pdu = ("reader", reader.stream_offset) if reader.pending_bytes else None
        size = reader.pending_bytes + reader.missing_bytes if reader.missing_bytes else None
        if self.closed or not self.pdu_clock.update(pdu, size, time.monotonic()):
            return
        if self.state == "established":  # the timer fires by the time the PDU must be whole
            limits = self.route.limits
            left, why = pdu_left({True: self.pdu_clock}, limits.artim_timeout, limits.min_pdu_rate, describe=False)
            self.timer.arm_by(max(left, 0.0), why)

    def _received(self, from_client: bool, data: memoryview | bytes) -> None:
        """Bytes from the requestor; a view of the leg's buffer, valid only during this call (the
        PDU reader copies what it keeps). The bulk of a data set is taken from it in place
        (`_bulk_run`), the rest goes through the PDU reader."""
        if self.closed or self.state == "closed":
            return
        self.last_activity = time.monotonic()
        if not self.first.done and self.state == "awaiting-rq":
            guess = self.first.feed(data)
            if guess is not None:
                head = bytes(self.first.head)
                decide(self.rx.chain, "on_not_dicom", self.adm, head)  # aborted below in any case
                if self.closed:  # a quarantine verdict has cut it off already
                    return
                self.protocol_error("unexpected-pdu", f"the first bytes ({head[:8].hex(' ')}) are no "
                                                      f"A-ASSOCIATE-RQ: they look like {guess}")
                return
        view = memoryview(data)
        fragments: list[memoryview] = []  # data set fragments of this read, written together
        pos = 0
        while pos < len(view) and not self.closed and self.state != "closed":
            missing = self.reader.missing_bytes if self.reader.pending_bytes else 0
            if missing:  # first the PDU the last read began, through the reader
                cut = min(len(view), pos + missing)
                if not self._feed(view[pos:cut], fragments):
                    return
                pos = cut
                continue
            ran = self._bulk_run(view, pos, fragments)
            if ran == pos:
                self._feed(view[pos:], fragments)
                return
            pos = ran
        self._write_fragments(fragments)

    def _bulk_run(self, view: memoryview, pos: int, fragments: list[memoryview]) -> int:
        """From ``pos``, the whole P-DATA-TF PDUs of the data set in flight that `_bulk_fragment`
        would take, checked in place: their values join ``fragments`` without a copy. Returns
        where the run ends (``pos`` when there is none: a command, a last fragment, another PDU,
        a header that fails a check, or one split between reads)."""
        context_id = self.decoder.streaming_context(True)
        if context_id is None or self.incoming is None or self.reader.pending_bytes:
            return pos
        limit = self.reader.max_pdu_length
        negotiated = self.decoder.acceptor_max_pdu_length
        if 0 < negotiated < limit:
            limit = negotiated
        start = pos
        pos, count = data_fragment_run(view, pos, context_id, limit, whole=True, values=fragments)
        if count:
            self.decoder.count_data_fragments(True, count, pos - start)
            self.reader.skip(count, pos - start)
        return pos

    def _feed(self, data: memoryview, fragments: list[memoryview]) -> bool:
        """``data`` through the PDU reader and each PDU it completes; False once the association
        ended (a decode error, an abort)."""
        error: DecodeError | None = None
        try:
            pdus = self.reader.feed(data)
        except DecodeError as exc:
            pdus, error = exc.partial, exc
        for pdu in pdus:
            if self.closed or self.state == "closed":
                return False
            if self._bulk_fragment(pdu, fragments):
                continue
            self._write_fragments(fragments)
            try:
                self._on_pdu(pdu)
            except DecodeError as exc:
                self.decode_error(exc)
                return False
        self._write_fragments(fragments)
        if error is not None and not self.closed:
            self.decode_error(error)
            return False
        return not self.closed

    def connection_lost(self, from_client: bool, exc: Exception | None) -> None:
        if self.closed:
            return
        cut = self.reader.pending_bytes
        refused = self.first.cut_short() if cut and self.state == "awaiting-rq" else None
        if refused is not None:  # no PDU header at all, yet too short for the PDU reader to refuse
            self.decode_error(refused)
            return
        if cut and self.state not in ("awaiting-rq", "closed"):
            # The TCP connection ended inside a PDU (PS3.8 9.3.1): say so, it is not a plain hang-up.
            self.protocol_error(TRUNCATED_PDU, f"connection closed {cut} bytes into a PDU", notify=False)
            return
        if self.state in ("established", "releasing"):
            self._lost(exc)
        self.close()

    def _lost(self, exc: Exception | None) -> None:
        """The requestor's connection ended without A-RELEASE or A-ABORT: an A-P-ABORT (PS3.8 9.2.3,
        AA-4), established or, after its A-RELEASE-RQ, before this SCP sent the A-RELEASE-RP.
        Recorded as the relay records it (cause, words, outcome): a search by cause finds lost
        connections on every kind of route."""
        where = "during release, before the A-RELEASE-RP" if self.state == "releasing" else "without A-RELEASE"
        reason = f"client closed the connection {where}" + (f" ({exc})" if exc else "")
        self._record().ended("aborted", severity=Severity.WARNING, outcome=Outcome.SERIOUS_FAILURE, message=reason,
                             by="client", reason=reason, cause="connection-lost", **self._totals())

    def set_paused(self, reading_client: bool, paused: bool) -> None:
        """Backpressure from the client's leg: the SCP writes only short answers, it needs none."""

    # --- the association ---------------------------------------------------------------------------

    def _on_pdu(self, pdu: RawPDU) -> None:
        kind = pdu.pdu_type
        if self.state == "awaiting-rq":
            if kind != P.PDU_ASSOCIATE_RQ:
                # The IDS sees what the decoder makes of it (a state violation, a malformed PDU),
                # as the passive sensor does with the same bytes (PS3.8 9.2, Sta2: AA-1); the
                # violation is recorded and the connection aborted below in any case.
                for ev in self._decode(pdu):
                    decide(self.rx.chain, "on_event", self.adm, ev)
                if self.closed:  # a quarantine verdict has cut it off already
                    return
                self.protocol_error("unexpected-pdu", f"{pdu.name} before A-ASSOCIATE-RQ")
                return
            self._on_associate_rq(pdu)
            return
        if kind == P.PDU_P_DATA_TF and self.state == "established":
            self._on_p_data(pdu)
            return
        for ev in self._decode(pdu):
            if isinstance(ev, E.ProtocolViolation):
                self.protocol_error(ev.code, ev.message)
                return
            if isinstance(ev, E.ReleaseRequested):
                self._release()
            elif isinstance(ev, E.Aborted):
                self._record().ended("aborted", severity=Severity.NOTICE, outcome=Outcome.MINOR_FAILURE,
                                     message="A-ABORT from the client", by="client", source=ev.source,
                                     reason_code=ev.reason, **self._totals())
                self.state = "closed"
                self.close()
                return
            elif not isinstance(ev, (E.DimseCommand, E.DimseDatasetStart, E.DimseDatasetEnd)):
                self.protocol_error("unexpected-pdu", f"{pdu.name} in state {self.state}")
                return

    def _on_associate_rq(self, pdu: RawPDU) -> None:
        adm = self.adm
        try:
            verdict = adm.judge(pdu, self.decoder)
        except NotAnAssociation as exc:
            self.protocol_error("unexpected-pdu", str(exc))
            return
        if self.closed:  # a quarantine verdict cut it off already
            return
        if verdict.refused:
            adm.reject(lambda frame: self.outbox.send(frame, answers=False), verdict)
            self.state = "closed"
            self._close_soon()
            return
        rq = adm.rq
        assert rq is not None  # judged
        ac = negotiate(rq, supported=self.supported, refused=adm.refused_contexts,
                       max_length=self.route.limits.max_pdu_length, syntaxes=self.route.accepted_transfer_syntaxes)
        raw = P.encode_associate_ac(ac)
        for ev in self.decoder.on_pdu(False, RawPDU(P.PDU_ASSOCIATE_AC, raw)):
            if isinstance(ev, E.ProtocolViolation):  # our own AC: a bug, not the peer's fault
                self.abort(f"the A-ASSOCIATE-AC could not be made: {ev.message}", kind="internal-error")
                return
        accepted = sorted({abstract for abstract, _ in self.decoder.contexts.values()})
        self._record().association("accepted", message=f"{len(accepted)} SOP classes accepted", accepted=accepted,
                                   refused_by_policy=sorted(set(adm.refused_contexts)),
                                   max_pdu=rq.max_length or None)
        self.state = "established"
        self.outbox.send(raw)
        self.timer.arm(self.route.limits.idle_timeout, "idle")

    def _release(self) -> None:
        """A-RELEASE-RQ (PS3.8 9.3.6): answered once every request before it has its answer. The
        association stays releasing (PS3.8 9.2.3, Sta8) until the A-RELEASE-RP is sent, which may
        wait behind answers held for their records (`Outbox`): a connection lost before that is
        an A-P-ABORT (`connection_lost`), not a release."""
        self.state = "releasing"
        self.timer.arm(self.route.limits.artim_timeout, "ARTIM timer expired during release")

        def answer() -> None:
            if self.closed:
                return
            self.outbox.send(P.encode_release_rp())
            self.outbox.when_sent(self._released)  # dropped with the outbox if the association ends first

        self._after_answers(answer)

    def _released(self) -> None:
        """The A-RELEASE-RP is sent (PS3.8 9.2.3, AR-4): released; the requestor closes (Sta13)."""
        if self.closed or self.state != "releasing":
            return
        self._record().ended("released", message=f"released after {self.stored} objects", **self._totals())
        self.state = "closed"
        self._close_soon()

    def _after_answers(self, then: Callable[[], None]) -> None:
        last = self.answers[-1] if self.answers else None
        if last is None or last.done():
            then()
        else:
            last.add_done_callback(lambda _: then())

    # --- P-DATA: commands and data sets (PS3.8 9.3.5, PS3.7 6.3.1) ------------------------------------

    def _bulk_fragment(self, pdu: RawPDU, fragments: list[memoryview]) -> bool:
        """The bulk of a data set: a P-DATA-TF of one data PDV, not the last, on the message's
        context. The decoder only counts it (as on_pdu would); its value joins ``fragments``, which
        go to the object's file before the next PDU that is not one (`_write_fragments`)."""
        raw = pdu.raw
        if (pdu.pdu_type != P.PDU_P_DATA_TF or self.state != "established" or self.incoming is None
                or (context_id := self.decoder.streaming_context(True)) is None
                or data_fragment_run(raw, 0, context_id, len(raw), whole=True, values=fragments)[1] != 1):
            return False
        self.decoder.count_data_fragments(True, 1, len(raw))
        return True

    def _write_fragments(self, fragments: list[memoryview]) -> None:
        if fragments and self.incoming is not None:
            self.incoming.write_many(self.rx.spool, fragments)
        fragments.clear()

    def _on_p_data(self, pdu: RawPDU) -> None:
        raw = pdu.raw
        events = self._decode(pdu)
        violation = next((ev for ev in events if isinstance(ev, E.ProtocolViolation)), None)
        if violation is not None:
            self.protocol_error(violation.code, violation.message)
            return
        # The decoder's events come in the order of the PDVs that completed them: a command with the
        # last fragment of its command set, a data set's end with its last fragment. Data PDVs up to
        # each of those go to the message in flight before the event is handled.
        spans = iter(P.pdv_spans(raw))
        view = memoryview(raw)
        ended = False  # the data set's last fragment is written already
        for ev in events:
            if isinstance(ev, E.DimseCommand):
                self._write_until(spans, view, command=True)
                self._on_command(ev)
            elif isinstance(ev, E.DimseDatasetStart):
                # Its data PDVs in this PDU first (none of another message comes before its last
                # one): the data set's first bytes are then in the file for `_screen_dataset`.
                ended = self._write_until(spans, view, command=False)
                self._on_dataset_start(ev)
            elif isinstance(ev, E.DimseDatasetEnd):
                if not ended:
                    self._write_until(spans, view, command=False)
                ended = False
                self._on_dataset_end(ev)
            if self.closed:
                return
        self._write_until(spans, view, command=None)

    def _write_until(self, spans: Iterator[tuple[int, int, int, int]], view: memoryview, *,
                     command: bool | None) -> bool:
        """Write data PDVs to the message in flight, up to and including the last fragment of a
        command set (``command=True``) or of a data set (False), or to the PDU's end (None).
        Returns whether that last fragment was reached."""
        for _, mch, start, end in spans:
            is_command, is_last = bool(mch & 0x01), bool(mch & 0x02)
            if not is_command and self.incoming is not None:
                self.incoming.write(self.rx.spool, view[start:end])
            if is_last and is_command is command:
                return True
        return False

    def _on_command(self, ev: E.DimseCommand) -> None:
        """A complete command set from the requestor (PS3.7 9.3): C-STORE-RQ and C-ECHO-RQ are this
        SCP's services; another request is refused as an unrecognised operation (PS3.7 C.5.4)."""
        command = ev.command
        if command.is_response:
            # This SCP sends no request, so no response of the requestor answers one (PS3.7 9.1, 9.3).
            self.protocol_error(E.VIOLATION_UNSOLICITED_RESPONSE,
                                f"{dimse.command_name(command.command_field)} answers Message ID "
                                f"{command.message_id_being_responded_to}, but this Storage SCP sends no "
                                "requests (PS3.7 9.1, 9.3)")
            return
        if not dimse.has_response(command):
            self.abort(f"{dimse.command_name(command.command_field)} is not a request this Storage SCP "
                       "answers", kind="protocol")
            return
        record = self._record()
        reused = record.reused_message_id(True, command)
        if reused is not None:
            self.protocol_error(E.VIOLATION_MESSAGE_ID_IN_USE, reused)
            return
        pending = record.request(ev)
        if command.command_field == dimse.C_STORE_RQ:
            if command.has_dataset:
                self._on_store(ev, pending)
            else:
                self._on_store_without_dataset(ev, pending)
            return
        verdict = decide(self.rx.chain, "on_request", self.adm, pending, ev)
        if verdict.action >= Action.ABORT:
            self.abort(verdict.reason, kind=verdict.component)
            return
        record.track(pending)
        status = dimse.STATUS_SUCCESS
        if verdict.refused:
            status = verdict.status if verdict.status is not None else dimse.STATUS_NOT_AUTHORIZED
            pending.refuse(verdict.reason, verdict.rule, status)
        elif command.command_field != dimse.C_ECHO_RQ:
            status = dimse.STATUS_UNRECOGNIZED_OPERATION
            pending.refuse(f"{dimse.command_name(command.command_field)} is not a service of this Storage SCP",
                           "store-and-forward", status)
        incoming = Incoming(ev, pending, status)
        if command.has_dataset:
            self.incoming = incoming  # its data set is read and dropped, then it is answered
        else:
            self._answer(incoming, None)

    def _on_store(self, ev: E.DimseCommand, pending: Pending) -> None:
        """A C-STORE-RQ (PS3.4 B.2.2): judged as on a relayed route, then its data set goes to disk."""
        rx, adm = self.rx, self.adm
        self._record().track(pending)
        incoming = Incoming(ev, pending)
        self.incoming = incoming
        if rx.is_quarantined(adm.host, adm.calling_ae):
            self._refuse(incoming, "the source is quarantined", "quarantine", dimse.STATUS_NOT_AUTHORIZED,
                         abort=f"{adm.host} ({adm.calling_ae}) is quarantined")
            return
        verdict = decide(rx.chain, "on_request", adm, pending, ev)
        if verdict.refused:
            self._refuse(incoming, verdict.reason, verdict.rule,
                         verdict.status if verdict.status is not None else dimse.STATUS_NOT_AUTHORIZED,
                         abort=verdict.reason if verdict.action >= Action.ABORT else "")
            return
        problem = screening.command_problem(ev.command)
        if problem is not None:
            self._refuse_malformed(incoming, problem)
            return
        incoming.open(rx.spool, self._sender())

    def _on_store_without_dataset(self, ev: E.DimseCommand, pending: Pending) -> None:
        """A C-STORE-RQ whose Command Data Set Type (0000,0800) says it has no data set (PS3.7
        9.1.1.1, E.1): a C-STORE of nothing, refused at reception as an empty data set (0xC000)."""
        self._record().track(pending)
        incoming = Incoming(ev, pending)
        self._refuse_malformed(incoming, screening.Problem(
            dimse.STATUS_CANNOT_UNDERSTAND, "c-store.data-set-empty",
            "the C-STORE-RQ says it carries no data set (Command Data Set Type 0x0101, PS3.7 9.1.1.1, E.1): "
            "there is nothing to store", "no data set"))
        self._answer(incoming, self._keep(incoming))

    def _refuse(self, incoming: Incoming, reason: str, rule: str, status: int, *, abort: str = "") -> None:
        incoming.pending.refuse(reason, rule, status)
        incoming.status = status
        incoming.drop(self.rx.spool)
        incoming.abort_after = abort

    def _refuse_malformed(self, incoming: Incoming, problem: screening.Problem) -> None:
        """A C-STORE the route cannot forward as received: its C-STORE record and the object's
        `gateway.object.refused` (check ``reception``) say why; the rest of the data set is read and
        dropped, and the answer carries an Error Comment."""
        incoming.pending.refuse(problem.reason, problem.rule, problem.status)
        incoming.refuse(self.rx.spool, problem.status, problem.reason, problem.rule, screening.CHECK,
                        problem.comment)
        log.info("route %s: refused a C-STORE from %s (%s): %s", self.route.name, self.adm.host,
                 self.adm.calling_ae, problem.reason)

    def _on_dataset_start(self, ev: E.DimseDatasetStart) -> None:
        """The data set's identifiers (peeked by the decoder from its first fragments)."""
        self._record().dataset_start(ev)
        incoming = self.incoming
        if incoming is None or incoming.status is not None:
            return
        incoming.peek = ev.peek
        verdict = decide(self.rx.chain, "on_data_event", self.adm, ev)
        if verdict.refused:
            self._refuse(incoming, verdict.reason, verdict.rule,
                         verdict.status if verdict.status is not None else dimse.STATUS_NOT_AUTHORIZED,
                         abort=verdict.reason if verdict.action >= Action.ABORT else "")
            return
        self._screen_dataset(incoming, ev)

    def _screen_dataset(self, incoming: Incoming, ev: E.DimseDatasetStart) -> None:
        """The data set's first bytes, read back from its file once (screening.dataset_problem)."""
        if not incoming.receiving:  # refused already, or the spool could not take it
            return
        try:
            first, size = incoming.first_bytes(screening.HEADER)
        except OSError:  # its write's own error path answers for the file
            return
        problem = screening.dataset_problem(incoming.command.command, incoming.command.transfer_syntax, first,
                                            size, ev.peek)
        if problem is not None:
            self._refuse_malformed(incoming, problem)

    def _on_dataset_end(self, ev: E.DimseDatasetEnd) -> None:
        self._record().dataset_end(ev)
        incoming, self.incoming = self.incoming, None
        if incoming is None:
            return
        if incoming.status is None:
            verdict = decide(self.rx.chain, "on_data_event", self.adm, ev)
            if verdict.refused:
                self._refuse(incoming, verdict.reason, verdict.rule,
                             verdict.status if verdict.status is not None else dimse.STATUS_NOT_AUTHORIZED,
                             abort=verdict.reason if verdict.action >= Action.ABORT else "")
        if incoming.command.command.command_field != dimse.C_STORE_RQ:
            self._answer(incoming, None)
            return
        if incoming.status is None and screening.unseen_identity(incoming.command.command, incoming.peek):
            self._screen_whole(incoming)
        self._answer(incoming, self._keep(incoming))

    def _screen_whole(self, incoming: Incoming) -> None:
        """A data set whose first fragments did not reach its SOP Instance UID, read back whole
        (up to screening.DEEP) from the page cache, on the loop: only such a data set pays it."""
        if not incoming.receiving:
            return
        try:
            data, size = incoming.first_bytes(screening.DEEP)
        except OSError:  # its keeping reports the file's error
            return
        problem = screening.whole_problem(incoming.command.command, incoming.command.transfer_syntax, data, size)
        if problem is not None:
            self._refuse_malformed(incoming, problem)

    def _keep(self, incoming: Incoming) -> Awaitable[Kept]:
        """Start keeping the object now (its worker thread starts at once); the awaitable gives the
        status to answer, once the object's Events are the answer's to wait for."""
        if incoming.pending.refused is not None and incoming.refusal is None:
            return kept_now(Kept(incoming.status if incoming.status is not None else dimse.STATUS_NOT_AUTHORIZED))
        tickets: list[int] = []

        def publish(event: Event) -> None:  # also from the object checks' worker thread
            ticket = self.rx.publish(event)
            if ticket is not None:
                tickets.append(ticket)

        return self._kept_with_records(keep(self.rx, incoming, self._sender(), publish), tickets)

    async def _kept_with_records(self, keeping: Awaitable[Kept], tickets: list[int]) -> Kept:
        try:
            return await keeping
        finally:
            if tickets:
                self.outbox.ticket = max(self.outbox.ticket, *tickets)

    def _answer(self, incoming: Incoming, work: Any) -> None:
        """Answer ``incoming`` once ``work`` (the object's keeping, if any) is done and every earlier
        request is answered: responses go out in the order of their requests (PS3.7 D.3.3.3)."""
        before = self.answers[-1] if self.answers else None
        task = asyncio.get_running_loop().create_task(self._respond(incoming, work, before))
        self.answers.append(task)
        task.add_done_callback(self._answered)

    def _answered(self, task: asyncio.Task[None]) -> None:
        while self.answers and self.answers[0].done():
            self.answers.popleft()
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("route %s: internal error answering a request: %r", self.route.name, exc)
            self.abort(f"internal error: {type(exc).__name__}: {exc}", kind="internal-error")

    async def _respond(self, incoming: Incoming, work: Any, before: asyncio.Task[None] | None) -> None:
        kept = Kept(incoming.status if incoming.status is not None else dimse.STATUS_SUCCESS)
        if work is not None:
            kept = await work
        if before is not None and not before.done():
            # Awaited only when pending: waiting on a finished task still costs a turn of the loop,
            # and the object's record then reaches the journal one fdatasync before its answer's.
            await asyncio.wait([before])
        if kept.quarantine is not None:  # quarantine_sender: once its failure status is out
            self.quarantines.append(kept.quarantine)
            self.outbox.when_sent(self._quarantine_sender)
        if self.closed:
            if kept.meta is not None:  # committed, and its Success can no longer be sent
                self._withdraw(kept.meta)
            self._quarantine_sender()
            return
        if kept.meta is not None and self.rx.is_quarantined(self.adm.host, self.adm.calling_ae):
            # The source was quarantined while its object was synced and checked: it is cut off
            # (as enforcement would), and the object, never acknowledged, is withdrawn.
            self.abort(f"{self.adm.host} ({self.adm.calling_ae}) is quarantined", kind="quarantine")
            self._withdraw(kept.meta)
            return
        cmd = incoming.command.command
        if kept.refusal is not None:  # found once the data set was whole (its structure)
            incoming.pending.refuse(kept.refusal.reason, kept.refusal.rule, kept.refusal.status)
            incoming.comment = kept.refusal.comment
        if cmd.command_field == dimse.C_STORE_RQ and kept.status == dimse.STATUS_SUCCESS:
            self.stored += 1
        response = dimse.CommandSet(cmd.command_field | dimse.RESPONSE_BIT, status=kept.status,
                                    message_id_being_responded_to=cmd.message_id,
                                    affected_sop_class_uid=cmd.affected_sop_class_uid,
                                    affected_sop_instance_uid=cmd.affected_sop_instance_uid,
                                    command_data_set_type=dimse.NO_DATASET,
                                    error_comment=incoming.comment or None)
        self._record().answered(incoming.pending, response)
        frames = P.encode_dimse_message(incoming.command.context_id, dimse.encode_command_set(response), None,
                                        self.decoder.requestor_max_pdu_length)
        meta = kept.meta
        if meta is not None:
            self.unanswered[meta.id] = meta
        self.outbox.send(b"".join(frames))
        if self.credits is not None:  # dropped with the answer if the association ends first
            self.outbox.when_sent(self.credits.take())
        if meta is not None:
            self.outbox.when_sent(functools.partial(self._acknowledged, meta))
        why = kept.cut_off or incoming.abort_after
        if why:
            # After this answer reaches the requestor (it may wait for its record), A-ABORT.
            self.outbox.when_sent(lambda: self.abort(why, kind="policy"))

    def _quarantine_sender(self) -> None:
        """Quarantine the sending host as the object checks asked (`quarantine_sender`): the
        gateway then cuts off its other associations too (pacsguard.gateway.server.enforce)."""
        while self.quarantines:
            self.rx.quarantine_source(self.adm.host, self.quarantines.pop(0))

    def _acknowledged(self, meta: SpooledMeta) -> None:
        """The object's Success is sent (PS3.4 B.2.3): now, and only now, it is the forwarders'."""
        if self.unanswered.pop(meta.id, None) is not None:
            self.rx.queued(meta)

    def _withdraw(self, meta: SpooledMeta) -> None:
        """A committed object whose Success was never sent: not forwarded, withdrawn from the spool
        (off the loop: a folder fsync), and recorded. The modality sends it again."""
        self.unanswered.pop(meta.id, None)
        reason = "the association ended before its C-STORE-RSP was sent; the sender will send it again"
        self.rx.publish(records.discarded(meta, reason))
        log.info("route %s: %s from %s was not acknowledged (the association ended first): withdrawn",
                 self.route.name, meta.object.sop_instance_uid, self.adm.host)
        try:
            asyncio.get_running_loop().run_in_executor(None, self._withdraw_from_spool, meta.id)
        except RuntimeError:  # no loop runs (a route stopped from outside it): here, then
            self._withdraw_from_spool(meta.id)

    def _withdraw_from_spool(self, object_id: str) -> None:
        try:
            self.rx.spool.withdraw(object_id)
        except OSError as exc:  # left in objects/: forwarded after all (at-least-once), and said so
            log.error("route %s: cannot withdraw %s from the spool: %s", self.route.name, object_id, exc)

    # --- ending -----------------------------------------------------------------------------------

    def abort(self, reason: str, *, kind: str = "policy", notify: bool = True) -> None:
        """A-ABORT (PS3.8 9.3.8, source 2 = service-provider) and record why."""
        if self.closed:
            return
        client = self.client
        if notify and client is not None and client.transport is not None and not client.transport.is_closing() \
                and not self.outbox.holding:
            # With answers held for their records, closing is the abort: they acknowledged nothing yet.
            client.transport.write(P.encode_abort(P.ABORT_SOURCE_SERVICE_PROVIDER, P.ABORT_REASON_NOT_SPECIFIED))
        self._record().ended("aborted", severity=Severity.WARNING, outcome=Outcome.SERIOUS_FAILURE,
                             message=f"aborted by the gateway: {reason}", by="gateway", reason=reason, cause=kind,
                             **self._totals())
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.state = "closed"
        self.timer.cancel()
        self.outbox.drop()
        for meta in list(self.unanswered.values()):  # their Success never left: not acknowledged
            self._withdraw(meta)
        self._quarantine_sender()  # its failure status may not have left: quarantined all the same
        if self.incoming is not None:
            self.incoming.drop(self.rx.spool)
            self.incoming = None
        if self.client is not None and self.client.transport is not None:
            self.client.transport.close()
        self.live.discard(self)
        decide(self.rx.chain, "on_closed", self.adm)

    def _close_soon(self) -> None:
        """Close once the last answer is out (PS3.8: the requestor closes after an A-RELEASE-RP or
        an A-ASSOCIATE-RJ; a brief wait lets it reach the client first)."""
        self.outbox.when_sent(lambda: asyncio.get_running_loop().call_later(0.05, self.close))

    def _expired(self, why: str) -> None:
        if self.closed:
            return
        if self.state == "established":
            limits = self.route.limits
            slow, overdue = pdu_left({True: self.pdu_clock}, limits.artim_timeout, limits.min_pdu_rate)
            if slow <= 0.5:
                self.abort(overdue, kind="timeout")  # a PDU trickling in: idleness never comes
                return
            left, idle = idle_left(self.last_activity, limits.idle_timeout)
            if left > 0.5 or (self.answers and not self.answers[-1].done()):
                self.timer.arm(min(max(left, 1.0), slow), why)  # an object still being checked is not idleness
                return
            why = idle
        self.abort(why, kind="timeout")

    # --- protocol errors and records ------------------------------------------------------------------

    def decode_error(self, exc: DecodeError) -> None:
        decide(self.rx.chain, "on_decode_error", self.adm, True, exc)  # aborted below in any case
        self.protocol_error(exc.code, str(exc))

    def protocol_error(self, code: str, message: str, *, notify: bool = True) -> None:
        """A malformed or unexpected PDU (the violation table, pacsguard.gateway.violations): recorded,
        then A-ABORT."""
        adm = self.adm
        self.publish(violation_event(self.route.name, code, message, sender="client", state=self.state,
                                     actor=adm.client_party(), target=self._record().server))
        log.warning("route %s: protocol violation from %s:%d: %s", self.route.name, adm.host, adm.port, message)
        self.abort(f"protocol violation ({code}) from client", kind="protocol", notify=notify)

    def _decode(self, pdu: RawPDU) -> list[E.ProtocolEvent]:
        """The decoder's events for one PDU; tolerated deviations are recorded once and left out."""
        kept, tolerated = tolerated_apart(self.decoder.on_pdu(True, pdu))
        for ev in tolerated:
            self._warn(ev.code, ev.message)
        return kept

    def _warn(self, code: str, message: str) -> None:
        if code in self.warned:
            return
        self.warned.add(code)
        self.publish(warning_event(self.route.name, code, message, sender="client", state=self.state,
                                   handled="tolerated", actor=self.adm.client_party(), target=self._record().server))

    def publish(self, event: Event) -> None:
        self.refusals.publish(event)  # a refusal past limits.refusals_recorded_per_minute is only counted

    def _publish_now(self, event: Event) -> None:
        ticket = self.rx.publish(event)
        if ticket is not None:
            self.outbox.ticket = max(self.outbox.ticket, ticket)

    def _write(self, data: bytes | memoryview) -> None:
        if self.client is not None and self.client.transport is not None and not self.closed:
            self.client.transport.write(data)

    def _record(self) -> AssociationRecord:
        """The association's record; before an A-ASSOCIATE-RQ, one that names the route's AE title."""
        if self.adm.record is None:
            self.adm.record = self.adm.new_record(self.route.listen.ae_title)
        return self.adm.record

    def _sender(self) -> Sender:
        adm = self.adm
        return Sender(adm.calling_ae or "", adm.rq.called_ae_title if adm.rq else "", adm.host, adm.port,
                      adm.client_party().user or "")

    def _totals(self) -> dict[str, Any]:
        return {"duration_ms": round((time.monotonic() - self.started) * 1000, 3)}
