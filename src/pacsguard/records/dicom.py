"""The record of one DICOM association, the same whether the gateway relayed it or the passive
sensor saw it in a capture: one Event per association phase (PS3.8 9.1: A-ASSOCIATE, A-RELEASE,
A-ABORT) and one per DIMSE request at its final response (PS3.7 9.1, 10.1), with the patients the
exchange disclosed. Who feeds it decides nothing: the gateway tells it what it refused, the
sensor what it saw; a SIEM reads one shape (docs/events.md).

Patients: `patient_ids` holds only the IDs an exchange actually disclosed: the Patient ID of a
stored object (C-STORE, also a C-GET's sub-operations), of each C-FIND match, of the objects a
C-GET's C-STORE sub-operations carried (named by the C-GET too), and, for a C-MOVE or C-GET whose
identifier names one exact patient, that patient once sub-operations completed, and for a
C-MOVE the patients of the objects its sub-operations delivered on another association (a
return route; records.moves), as far as the records share a MoveLedger. The
keys of a query stay in `details.query`: a key with wildcards (PS3.4 C.2.2.2.4: `*`, `?`), a list
or an empty (universal) key names nobody.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from pacsguard.dicom.association import AssociationDecoder
from pacsguard.dicom.dataset import MAX_IDENTIFIER_LENGTH, DatasetPeek, decode_identifier, walk_stop
from pacsguard.dicom.dimse import (
    C_CANCEL_RQ,
    C_GET_RQ,
    C_MOVE_RQ,
    C_STORE_RQ,
    N_ACTION_RQ,
    N_EVENT_REPORT_RQ,
    CommandSet,
    command_name,
    status_category,
)
from pacsguard.dicom.errors import DecodeError
from pacsguard.dicom.events import Aborted, DimseCommand, DimseDatasetEnd, DimseDatasetStart
from pacsguard.dicom.pdu import AssociateRJ, AssociateRQ, UserIdentityRQ, pdv_spans
from pacsguard.dicom.uids import IMPLICIT_VR_LITTLE_ENDIAN, STORAGE_COMMITMENT_PUSH
from pacsguard.events.model import Event, Outcome, Party, Severity, utc_now
from pacsguard.records.moves import MAX_DELIVERED_IDS, MoveLedger, OpenMove

MAX_IDS_PER_EVENT = 1000  # a C-FIND that returns more patients is summarised, not listed
#: PS3.7 Table D.3-14, User-Identity-Type: 1 and 2 name a user, 3-5 carry a token (a credential).
IDENTITY_TYPES = {1: "username", 2: "username-passcode", 3: "kerberos", 4: "saml", 5: "jwt"}
MAX_USERNAME = 256  # characters of a claimed username kept in the records (the field may hold 65,535 bytes)
_RETRIEVES = (C_MOVE_RQ, C_GET_RQ)
#: Instances whose patient and study a route remembers from its C-STOREs, for storage commitment
#: (StoredInstances): the most recent ones, ~300 bytes each (6 MB a route): a few large studies,
#: which a modality asks to commit soon after sending them; older ones count as patients_unknown.
MAX_STORED_INSTANCES = 20_000
#: Requests of one sender on one association that may wait for their final response at once. Each
#: is held (`AssociationRecord.pending`, ~3 KB) until answered, and a sender that does not read
#: the answers can send all 65,536 Message IDs (some 190 MB); the Asynchronous Operations Window
#: such a sender may negotiate is 1 unless both sides agree otherwise (PS3.7 D.3.3.3), and dcmtk,
#: pynetdicom and the usual modalities never ask for more.
MAX_OUTSTANDING = 128
_QUERY_KEYS = ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber", "Modality")


def single_value(key: str | None) -> bool:
    """Whether a matching key (a Patient ID, a Study Instance UID) selects exactly one value: not
    empty (universal matching), no wildcard `*` or `?` (PS3.4 C.2.2.2.4), no list of values (`\\`)."""
    if key is None:
        return False
    key = key.strip()
    return bool(key) and not any(ch in key for ch in "*?\\")


@dataclass(slots=True)
class Pending:
    """A DIMSE request in flight, until its final response."""

    command: CommandSet
    from_requestor: bool
    abstract_syntax: str | None
    transfer_syntax: str | None
    started: float = field(default_factory=time.monotonic)
    patient_ids: dict[str, None] = field(default_factory=dict)
    study_uids: dict[str, None] = field(default_factory=dict)
    sop_instance_uid: str | None = None
    series_uid: str | None = None
    level: str | None = None
    query: dict[str, str] | None = None
    matches: int = 0
    matched_patients: dict[str, None] = field(default_factory=dict)
    dataset_bytes: int = 0
    refused: str | None = None
    refused_rule: str | None = None
    refused_status: int | None = None
    rewritten: dict[str, int] = field(default_factory=dict)
    #: which identifiers of the request's data set were not read, and why (the walk stopped early)
    unread: str | None = None
    #: attribute -> (responses passed as received because they could not be examined, the first why)
    not_rewritten: dict[str, tuple[int, str]] = field(default_factory=dict)
    #: data sets whose Patient ID / Study Instance UID was left out of a full list (MAX_IDS_PER_EVENT)
    patients_omitted: int = 0
    studies_omitted: int = 0
    #: a storage commitment request's instances (PS3.4 J.3.2, J.3.3): `details.commitment`
    commitment: dict[str, Any] | None = None
    #: a C-MOVE's entry in the gateway's MoveLedger: what its sub-operations delivered elsewhere
    move: OpenMove | None = None

    def add_identifiers(self, patient_id: str | None, study_uid: str | None) -> None:
        if patient_id and patient_id not in self.patient_ids:
            if len(self.patient_ids) < MAX_IDS_PER_EVENT:
                self.patient_ids[patient_id] = None
            else:
                self.patients_omitted += 1
        if study_uid and study_uid not in self.study_uids:
            if len(self.study_uids) < MAX_IDS_PER_EVENT:
                self.study_uids[study_uid] = None
            else:
                self.studies_omitted += 1

    def refuse(self, reason: str, rule: str, status: int | None) -> None:
        self.refused, self.refused_rule, self.refused_status = reason, rule, status


def outcome_of_status(status: int | None) -> str:
    """PS3.7 Annex C status categories as PS3.15 A.5.3 outcomes."""
    if status is None:
        return Outcome.UNKNOWN
    category = status_category(status)
    if category == "success":
        return Outcome.SUCCESS
    if category in ("warning", "cancel"):
        return Outcome.MINOR_FAILURE
    return Outcome.SERIOUS_FAILURE


Publish = Callable[[Event], None]


def is_commitment_request(command: CommandSet, abstract_syntax: str | None) -> bool:
    """Whether ``command`` is a Storage Commitment Push request with a data set that names
    instances: the N-ACTION-RQ asking for commitment (PS3.4 J.3.2) or the N-EVENT-REPORT-RQ
    answering it (J.3.3)."""
    return (command.command_field in (N_ACTION_RQ, N_EVENT_REPORT_RQ) and command.has_dataset
            and (abstract_syntax or command.sop_class_uid) == STORAGE_COMMITMENT_PUSH)


class StoredInstances:
    """The patient and study of the SOP instances a route's C-STOREs stored (the most recent
    `capacity`), so that the storage commitment naming them (PS3.4 J.3.2: SOP Instance UIDs only)
    is recorded with the patients it concerns. Shared by the route's associations: a modality may
    ask for commitment on another association than the one that stored."""

    __slots__ = ("capacity", "_known")

    def __init__(self, capacity: int = MAX_STORED_INSTANCES) -> None:
        self.capacity = capacity
        self._known: dict[str, tuple[str | None, str | None]] = {}

    def remember(self, sop_instance: str, patient_id: str | None, study_uid: str | None) -> None:
        self._known.pop(sop_instance, None)  # stored again: now the most recent
        self._known[sop_instance] = (patient_id, study_uid)
        if len(self._known) > self.capacity:
            del self._known[next(iter(self._known))]

    def get(self, sop_instance: str) -> tuple[str | None, str | None] | None:
        return self._known.get(sop_instance)


@dataclass(slots=True)
class CommitmentTap:
    """A storage commitment request's data set being copied from its P-DATA-TF PDUs
    (AssociationRecord.p_data): whose request, in which transfer syntax, and how many bytes so far."""

    from_requestor: bool
    message_id: int
    transfer_syntax: str | None
    data: bytearray = field(default_factory=bytearray)
    size: int = 0


class AssociationRecord:
    """Turns what happened on one association into Events.

    `client` is the requestor, `server` the acceptor (for the gateway: its upstream). `clock`
    gives seconds for durations and `wallclock` the time of each Event; a capture passes its own
    (packet time), the gateway the defaults (now).
    """

    def __init__(self, publish: Publish, *, component: str, client: Party, server: Party,
                 route: str | None = None, called_ae: str | None = None, flow: str | None = None,
                 sensor: str | None = None, clock: Callable[[], float] = time.monotonic,
                 wallclock: Callable[[], datetime] | None = None, stored: StoredInstances | None = None,
                 moves: MoveLedger | None = None) -> None:
        self.publish = publish
        self.stored = stored
        self.moves = moves
        self.component = component
        self.client = client
        self.server = server
        self.called_ae = called_ae
        self.clock = clock
        self.wallclock = wallclock or utc_now
        self.pending: dict[tuple[bool, int], Pending] = {}
        self._positive_requested = False  # the User Identity RQ asked for a positive response
        # Per sender (True: the requestor): the storage commitment data set being copied (p_data).
        self._taps: dict[bool, CommitmentTap | None] = {True: None, False: None}
        self._common: dict[str, Any] = {"route": route}
        if flow is not None:
            self._common["flow"] = flow
        if sensor is not None:
            self._common["sensor"] = sensor

    # --- association phases (PS3.8 9.3) ------------------------------------------------------

    def association(self, phase: str, *, severity: Severity = Severity.INFO, outcome: str = Outcome.SUCCESS,
                    message: str = "", at: datetime | None = None, **details: Any) -> None:
        """One `dicom.association.<phase>` Event: requested, accepted, rejected, released, aborted.
        `at` is the Event time when it is not now (a capture records the end when the TCP
        connection closes, with the time of the PDU that ended the association)."""
        self._emit(Event(kind=f"dicom.association.{phase}", component=self.component, severity=severity,
                         outcome=outcome, actor=self.client, target=self.server, message=message,
                         details={**self._common, "called_ae": self.called_ae, **details},
                         time=at if at is not None else self.wallclock()))

    def ended(self, phase: str, *, severity: Severity = Severity.INFO, outcome: str = Outcome.SUCCESS,
              message: str = "", at: datetime | None = None, **details: Any) -> None:
        """Released, aborted or rejected: requests still in flight are recorded as aborted first."""
        self.abandon()
        self.association(phase, severity=severity, outcome=outcome, message=message, at=at, **details)

    def requested(self, rq: AssociateRQ, *, tls: bool, certificate: dict[str, Any] | None,
                  expected_by: dict[str, Any] | None = None) -> None:
        """The A-ASSOCIATE-RQ (PS3.8 9.3.2).  ``expected_by`` ({flow, message_id}) names the C-MOVE
        whose SCP opened this association to its Move Destination (PS3.4 C.4.2.2), when one did."""
        extra: dict[str, Any] = {"expected_by": expected_by} if expected_by is not None else {}
        identity = rq.user_information.user_identity if rq.user_information is not None else None
        if isinstance(identity, UserIdentityRQ):
            self._claimed(identity)
        self.association("requested", message=f"A-ASSOCIATE-RQ {rq.calling_ae_title} -> {rq.called_ae_title}",
                         contexts=len(rq.presentation_contexts), tls=tls, certificate=certificate, **extra)

    def _claimed(self, identity: UserIdentityRQ) -> None:
        """The user the requestor claimed in User Identity Negotiation (PS3.7 D.3.3.7.1), on every
        later Event of the association (`details.user_identity`): the type, and for types 1 and 2
        the username (UTF-8), which names the actor's user unless a client certificate already
        does (a verified name is not replaced by a claimed one). Never the passcode, nor a Kerberos
        ticket, SAML assertion or JWT (types 3-5): those are credentials. Nothing here verifies
        the claim."""
        claim: dict[str, Any] = {"type": IDENTITY_TYPES.get(identity.identity_type, identity.identity_type)}
        if identity.identity_type in (1, 2):
            username = identity.primary_field.decode("utf-8", "backslashreplace")
            if len(username) > MAX_USERNAME:
                claim["username_bytes"] = len(identity.primary_field)
                username = username[:MAX_USERNAME]
            claim["username"] = username
            if self.client.user is None and username:
                self.client = replace(self.client, user=username)
        self._common["user_identity"] = claim
        self._positive_requested = bool(identity.positive_response_requested)

    def accepted(self, decoder: AssociationDecoder, refused_by_policy: list[str], *,
                 identity_confirmed: bool = False) -> None:
        """The A-ASSOCIATE-AC (PS3.8 9.3.3): the abstract syntaxes of the accepted presentation contexts.
        ``identity_confirmed``: the AC carried a User Identity positive response (PS3.7 D.3.3.7.2),
        so the acceptor accepted the claimed identity; recorded from here on as
        `details.user_identity.confirmed` (True, or False when the requestor asked for a positive
        response and none came), never the response's value (a Kerberos or SAML server ticket)."""
        claim = self._common.get("user_identity")
        if claim is not None and (identity_confirmed or self._positive_requested):
            self._common["user_identity"] = {**claim, "confirmed": identity_confirmed}
        accepted = sorted({abstract for abstract, _ in decoder.contexts.values()})
        # Each SOP class once, as `accepted`: several contexts may propose one (one per transfer syntax).
        self.association("accepted", message=f"{len(accepted)} SOP classes accepted", accepted=accepted,
                         refused_by_policy=sorted(set(refused_by_policy)), max_pdu=decoder.acceptor_max_pdu_length)

    def upstream_rejected(self, rj: AssociateRJ | None, **details: Any) -> None:
        """An A-ASSOCIATE-RJ from the acceptor (PS3.8 9.3.4, Table 9-21: result, source, reason)."""
        self.ended("rejected", severity=Severity.WARNING, outcome=Outcome.SERIOUS_FAILURE,
                   message="rejected by the upstream", by="upstream", result=getattr(rj, "result", None),
                   source=getattr(rj, "source", None), reason_code=getattr(rj, "reason", None), **details)

    def peer_aborted(self, from_client: bool, ev: Aborted | None, **details: Any) -> None:
        """An A-ABORT from either peer (PS3.8 9.3.8: source and reason)."""
        who = "client" if from_client else "upstream"
        self.ended("aborted", severity=Severity.NOTICE, outcome=Outcome.MINOR_FAILURE,
                   message=f"A-ABORT from the {who}", by=who, source=getattr(ev, "source", None),
                   reason_code=getattr(ev, "reason", None), **details)

    def abandon(self) -> None:
        """Record every request still waiting for its final response as cut off."""
        for pending in self.pending.values():
            self._emit(self.dimse_event(pending, None, aborted=True))
        self.pending.clear()

    # --- DIMSE (PS3.7 9.1) -----------------------------------------------------------------

    def command(self, ev: DimseCommand) -> Pending | None:
        """Track a request (returned, so its judge can refuse it) or close one by its final response."""
        cmd = ev.command
        from_requestor = ev.from_requestor
        if cmd.is_response:
            key = (not from_requestor, cmd.message_id_being_responded_to or 0)
            pending = self.pending.get(key)
            if pending is None:
                return None
            if status_category(cmd.status or 0) == "pending":
                if cmd.command_field & 0x7FFF in _RETRIEVES:
                    pending.matches += 1
                return None
            del self.pending[key]
            self._emit(self.dimse_event(pending, cmd))
            return None
        if cmd.command_field == C_CANCEL_RQ:
            return None
        return self.track(self.request(ev))

    def request(self, ev: DimseCommand) -> Pending:
        """A request, not yet tracked: a judge may decide first whether it is recorded at all."""
        return Pending(ev.command, ev.from_requestor, ev.abstract_syntax, ev.transfer_syntax, started=self.clock())

    def reused_message_id(self, from_requestor: bool, command: CommandSet) -> str | None:
        """Why request ``command`` of this sender may not go on, or None: its Message ID is that of
        one of its requests still waiting for the final response (PS3.7 9.1.1), so the answers
        could not be told apart and one request would pass unrecorded; or the sender has
        MAX_OUTSTANDING requests waiting already (`_over_window`). A C-CANCEL-RQ names the
        request it cancels and has no Message ID of its own."""
        if not command.is_request or command.command_field == C_CANCEL_RQ:
            return None
        if (from_requestor, command.message_id or 0) in self.pending:
            return (f"{command_name(command.command_field)} reuses Message ID {command.message_id} of a request "
                    "still unanswered (PS3.7 9.1.1)")
        return self._over_window(from_requestor, command)

    def _over_window(self, from_requestor: bool, command: CommandSet) -> str | None:
        """Why ``command`` may not go on: its sender has MAX_OUTSTANDING requests unanswered already,
        far past any Asynchronous Operations Window (PS3.7 D.3.3.3) a peer asks for; else None. Each
        waiting request is held until its answer, so the table stays bounded per association."""
        if len(self.pending) < MAX_OUTSTANDING:  # cheap: the usual association has one request waiting
            return None
        waiting = sum(1 for sender, _ in self.pending if sender == from_requestor)
        if waiting < MAX_OUTSTANDING:
            return None
        return (f"{command_name(command.command_field)} Message ID {command.message_id}: {waiting} requests of "
                f"this sender still unanswered, the most one association may have waiting ({MAX_OUTSTANDING}; "
                "PS3.7 D.3.3.3 Asynchronous Operations Window)")

    def track(self, pending: Pending) -> Pending:
        """Wait for the final response to `pending`; its Event is published then (or at the end)."""
        self.pending[(pending.from_requestor, pending.command.message_id or 0)] = pending
        cmd = pending.command
        if self.moves is not None and pending.from_requestor and cmd.command_field == C_MOVE_RQ \
                and cmd.move_destination and pending.move is None:
            # Its sub-operations arrive on the destination's return route (PS3.4 C.4.2.2): see records.moves.
            pending.move = self.moves.open(requestor_ae=self.client.ae_title, message_id=cmd.message_id or 0,
                                           destination=cmd.move_destination, scp_ae=self.server.ae_title,
                                           route=self._common.get("route"), scp_host=self.server.host)
        return pending

    def dataset_start(self, ev: DimseDatasetStart) -> None:
        """A data set's identifiers: a stored object's patient, a query's keys, or a match."""
        peek = ev.peek
        # A response's data set answers the other side's request of that Message ID, never one of its
        # sender's own (PS3.7 9.1.1): each side numbers its own requests, so the acceptor's C-STORE or
        # N-EVENT-REPORT may carry the number of a C-FIND whose match this is.
        own = None if ev.response else self.pending.get((ev.from_requestor, ev.message_id or 0))
        if own is not None and own.from_requestor == ev.from_requestor and not own.command.is_response:
            own.unread = _unread(peek)
            if peek.query_retrieve_level:
                own.level = peek.query_retrieve_level
                own.query = {k: v for k, v in zip(_QUERY_KEYS, (peek.patient_id, peek.patient_name,
                                                                peek.study_instance_uid, peek.accession_number,
                                                                peek.modality), strict=True) if v is not None}
                if single_value(peek.study_instance_uid):
                    own.add_identifiers(None, peek.study_instance_uid)
                return
            own.add_identifiers(peek.patient_id, peek.study_instance_uid)
            own.sop_instance_uid = peek.sop_instance_uid or own.sop_instance_uid
            own.series_uid = peek.series_instance_uid or own.series_uid
            if not own.from_requestor:
                for retrieve in self._gets_served_by(own.command):
                    retrieve.add_identifiers(peek.patient_id, peek.study_instance_uid)
            return
        # A response's data set (a C-FIND match): what the acceptor disclosed, and about whom.
        answered = self.pending.get((not ev.from_requestor, ev.message_id or 0))
        if answered is not None:
            answered.matches += 1
            if peek.patient_id and peek.patient_id not in answered.matched_patients:
                if len(answered.matched_patients) < MAX_IDS_PER_EVENT:
                    answered.matched_patients[peek.patient_id] = None
                else:
                    answered.patients_omitted += 1
            if peek.study_instance_uid:
                answered.add_identifiers(None, peek.study_instance_uid)

    def _gets_served_by(self, store: CommandSet) -> list[Pending]:
        """The requestor's C-GETs a C-STORE request of the acceptor is a sub-operation of (PS3.4
        C.4.3.3: the acceptor sends the matching objects as C-STOREs on the same association), so
        that the C-GET's Event names the patients and studies it disclosed even when its
        identifier named none (a STUDY-level retrieve). A Move Originator Message ID (PS3.7
        9.1.1.1) that names one of them decides; without it, every C-GET still waiting, since
        the sub-operations of concurrent C-GETs (PS3.7 D.3.3.3) cannot be told apart and an
        object disclosed must not go unnamed."""
        if store.command_field != C_STORE_RQ:
            return []
        gets = [p for p in self.pending.values() if p.from_requestor and p.command.command_field == C_GET_RQ]
        named = [p for p in gets if store.move_originator_message_id is not None
                 and p.command.message_id == store.move_originator_message_id]
        return named or gets

    def dataset_end(self, ev: DimseDatasetEnd) -> None:
        # Only a request's own data set counts towards its bytes (a match is not its sender's request's).
        pending = None if ev.response else self.pending.get((ev.from_requestor, ev.message_id or 0))
        if pending is not None:
            pending.dataset_bytes += ev.total_bytes

    def tapping(self, from_requestor: bool) -> bool:
        """Whether the data set of a storage commitment request of this sender is being copied:
        every P-DATA-TF PDU it sends must then reach `p_data` (none may bypass the decoder)."""
        return self._taps[from_requestor] is not None

    def p_data(self, from_requestor: bool, raw: bytes, events: Iterable[object]) -> None:
        """One P-DATA-TF PDU (PS3.8 9.3.5) the requestor (True) or the acceptor sent, whole, after
        the events decoded from it were given to this record: the data set of a storage commitment
        request (an N-ACTION-RQ or N-EVENT-REPORT-RQ, PS3.4 J.3) is copied from its PDVs as they
        come, for `commitment` to name its instances; past MAX_IDENTIFIER_LENGTH bytes only its
        size is said. The gateway and the passive sensor both call it, so that the same bytes
        make the same record. A PDU's command PDVs end the commands decoded from it in the same
        order (the decoder reads one message at a time per direction, PS3.8 9.3.5.1)."""
        commands = [ev for ev in events if isinstance(ev, DimseCommand)]
        if self._taps[from_requestor] is None and not any(
                is_commitment_request(ev.command, ev.abstract_syntax) for ev in commands):
            return  # the common case: nothing to copy in this PDU
        pending_commands = iter(commands)
        for _context_id, mch, start, end in pdv_spans(raw):
            if mch & 0x01:  # a command fragment; the last one ends the next command decoded
                ev = next(pending_commands, None) if mch & 0x02 else None
                if ev is not None and ev.command.is_request \
                        and is_commitment_request(ev.command, ev.abstract_syntax):
                    self._taps[from_requestor] = CommitmentTap(ev.from_requestor, ev.command.message_id or 0,
                                                               ev.transfer_syntax)
                continue
            self._tap_fragment(from_requestor, raw, start, end, bool(mch & 0x02))

    def _tap_fragment(self, from_requestor: bool, raw: bytes, start: int, end: int, last: bool) -> None:
        """One data set fragment of the sender's tapped commitment request, if one is tapped."""
        tap = self._taps[from_requestor]
        if tap is None:
            return
        tap.size += end - start
        if tap.size <= MAX_IDENTIFIER_LENGTH:
            tap.data += raw[start:end]
        if last:
            self._taps[from_requestor] = None
            kept = bytes(tap.data) if tap.size <= MAX_IDENTIFIER_LENGTH else None
            self.commitment(tap.from_requestor, tap.message_id, kept, tap.transfer_syntax,
                            f"its data set of {tap.size:,} bytes is larger than the "
                            f"{MAX_IDENTIFIER_LENGTH:,} bytes read")

    def commitment(self, from_requestor: bool, message_id: int, data: bytes | None, transfer_syntax: str | None,
                   why: str = "") -> None:
        """The data set of storage commitment request *message_id* (`is_commitment_request`), whole,
        or None and *why* it was not kept: its event names the Transaction UID (0008,1195), the SOP
        instances of the Referenced SOP Sequence (0008,1199: to commit, or committed) and of the
        Failed SOP Sequence (0008,1198, with each Failure Reason), at most MAX_IDS_PER_EVENT of each
        listed and the rest counted, and the patients and studies of those instances this route
        stored (`stored`); `patients_unknown` counts the instances it did not."""
        pending = self.pending.get((from_requestor, message_id))
        if pending is None or pending.command.is_response:
            return
        if data is None:
            pending.unread = f"storage commitment instances not read: {why}"
            return
        try:
            ds = decode_identifier(data, transfer_syntax or IMPLICIT_VR_LITTLE_ENDIAN)
            referenced = [str(item.get("ReferencedSOPInstanceUID", ""))
                          for item in _items(ds, "ReferencedSOPSequence", "(0008,1199)")]
            failed = [(str(item.get("ReferencedSOPInstanceUID", "")), item.get("FailureReason"))
                      for item in _items(ds, "FailedSOPSequence", "(0008,1198)")]
            transaction = str(ds.get("TransactionUID", "")) or None
        except (DecodeError, TypeError, ValueError, AttributeError, KeyError) as exc:
            # A value of the wrong shape (a sequence where a UID belongs) is named, never raised.
            why = exc.detail if isinstance(exc, DecodeError) else f"{type(exc).__name__}: {exc}"
            pending.unread = f"storage commitment instances not read: {why}"
            return
        listed = "requested" if pending.command.command_field == N_ACTION_RQ else "committed"
        # An item without its Referenced SOP Instance UID is counted, and named by no UID.
        uids = [uid for uid in referenced if uid]
        details: dict[str, Any] = {"transaction_uid": transaction, listed: len(referenced),
                                   "sop_instances": uids[:MAX_IDS_PER_EVENT]}
        if len(uids) > MAX_IDS_PER_EVENT:
            details["sop_instances_omitted"] = len(uids) - MAX_IDS_PER_EVENT
        if failed or pending.command.command_field == N_EVENT_REPORT_RQ:
            details["failed"] = len(failed)
            details["failed_instances"] = [{"sop_instance": uid, "reason": _reason(reason)}
                                           for uid, reason in failed[:MAX_IDS_PER_EVENT]]
            if len(failed) > MAX_IDS_PER_EVENT:
                details["failed_instances_omitted"] = len(failed) - MAX_IDS_PER_EVENT
        unknown = 0
        for uid in [*referenced, *(uid for uid, _ in failed)]:
            known = self.stored.get(uid) if self.stored is not None and uid else None
            if known is None:
                unknown += 1
            else:
                pending.add_identifiers(*known)
        details["patients_unknown"] = unknown
        pending.commitment = details

    def rewrote(self, from_requestor: bool, message_id: int, keyword: str) -> None:
        """The gateway replaced attribute *keyword* in a response to request *message_id*, sent by
        the requestor (True) or the acceptor; the request's event counts it."""
        pending = self.pending.get((from_requestor, message_id))
        if pending is not None:
            pending.rewritten[keyword] = pending.rewritten.get(keyword, 0) + 1

    def not_rewritten(self, from_requestor: bool, message_id: int, keyword: str, why: str) -> None:
        """The gateway could not examine a response to request *message_id* for attribute *keyword*
        (*why*: too large to hold, an unreadable deflate stream) and passed it as received; the
        request's event says so, so that a response left unrewritten is never silent."""
        pending = self.pending.get((from_requestor, message_id))
        if pending is not None:
            count, _ = pending.not_rewritten.get(keyword, (0, why))
            pending.not_rewritten[keyword] = (count + 1, why)

    def answered(self, pending: Pending, response: CommandSet) -> None:
        """The final response to `pending` came from the gateway itself (a refusal)."""
        self.pending.pop((pending.from_requestor, pending.command.message_id or 0), None)
        self._emit(self.dimse_event(pending, response))

    def dimse_event(self, pending: Pending, response: CommandSet | None, *, aborted: bool = False) -> Event:
        cmd = pending.command
        name = command_name(cmd.command_field).removesuffix("-RQ")
        status = response.status if response is not None else None
        actor, target = (self.client, self.server) if pending.from_requestor else (self.server, self.client)
        details: dict[str, Any] = {
            **self._common, "message_id": cmd.message_id, "sop_class": pending.abstract_syntax or cmd.sop_class_uid,
            "duration_ms": round((self.clock() - pending.started) * 1000, 3),
        }
        if status is not None:
            details["status"] = f"0x{status:04X}"
        if pending.sop_instance_uid or cmd.affected_sop_instance_uid:
            details["sop_instance"] = pending.sop_instance_uid or cmd.affected_sop_instance_uid
        if pending.series_uid:
            details["series_uid"] = pending.series_uid  # a stored object's series (PS3.3 C.7.3.1)
        if pending.dataset_bytes:
            details["bytes"] = pending.dataset_bytes
        if pending.level:
            details["level"] = pending.level
        if pending.query is not None:
            details["query"] = pending.query
        if name in ("C-FIND", "C-GET", "C-MOVE") and pending.matches:
            details["responses"] = pending.matches
        if cmd.move_destination:
            details["move_destination"] = cmd.move_destination
        if cmd.move_originator_ae is not None or cmd.move_originator_message_id is not None:
            # A C-MOVE's sub-operation (PS3.7 9.1.1.1): links the object to the C-MOVE that asked for it.
            details["move_originator"] = {"ae_title": cmd.move_originator_ae,
                                          "message_id": cmd.move_originator_message_id}
        if name == "C-STORE" and status is not None and status_category(status) in ("success", "warning"):
            self._delivered(pending, details)
        completed = 0
        if response is not None and name in ("C-MOVE", "C-GET"):
            completed = response.completed_suboperations or 0
            details["suboperations"] = {"completed": response.completed_suboperations,
                                        "failed": response.failed_suboperations,
                                        "warning": response.warning_suboperations,
                                        "remaining": response.remaining_suboperations}
        if pending.rewritten:
            details["rewritten"] = dict(pending.rewritten)
        if pending.commitment is not None:
            details["commitment"] = pending.commitment
        if pending.refused:
            details["decision"] = "refused"
            details["rule"] = pending.refused_rule
        if aborted:
            details["decision"] = "aborted"
        patients = dict(pending.patient_ids)
        patients.update(pending.matched_patients)
        if completed and pending.query is not None and single_value(pending.query.get("PatientID")):
            patients[pending.query["PatientID"].strip()] = None  # the retrieve disclosed that patient's objects
        studies = dict(pending.study_uids)
        if pending.move is not None:
            self._moved(pending.move, details, patients, studies)
        # A list cut at MAX_IDS_PER_EVENT says so: the data sets whose identifier it left out.
        patients_omitted = pending.patients_omitted + max(0, len(patients) - MAX_IDS_PER_EVENT)
        if patients_omitted:
            details["patients_omitted"] = patients_omitted
        if pending.studies_omitted:
            details["studies_omitted"] = pending.studies_omitted
        outcome = outcome_of_status(status) if not aborted else Outcome.SERIOUS_FAILURE
        refused = pending.refused is not None
        sop_instance = details.get("sop_instance")
        if name == "C-STORE" and self.stored is not None and sop_instance and status is not None \
                and status_category(status) in ("success", "warning"):
            # Stored (a warning is a coercion, PS3.4 B.2.3): a later storage commitment names it.
            self.stored.remember(sop_instance, next(iter(pending.patient_ids), None),
                                 next(iter(pending.study_uids), None))
        sop_count = completed if name in ("C-MOVE", "C-GET") else int(name == "C-STORE" and outcome == Outcome.SUCCESS)
        message = pending.refused or f"{name} {'refused' if refused else ''}{'aborted' if aborted else ''}".strip()
        if status is not None and not refused:
            message = f"{name} status 0x{status:04X}"
        if pending.commitment is not None:
            commitment = pending.commitment
            said = (f"{commitment['requested']} instance(s) to commit" if "requested" in commitment
                    else f"{commitment['committed']} committed, {commitment['failed']} failed")
            message = f"{message}; storage commitment {commitment['transaction_uid']}: {said}"
        if pending.unread:
            # An empty patient_ids must not read as "no patient" when the patient was never read.
            message = f"{message}; {pending.unread}"
        for keyword, (count, why) in pending.not_rewritten.items():
            message = f"{message}; {keyword} not rewritten in {count} response(s), passed as received: {why}"
        return Event(kind=f"dicom.dimse.{name.lower()}", component=self.component,
                     severity=Severity.WARNING if refused or aborted else Severity.INFO,
                     outcome=outcome, actor=actor, target=target,
                     patient_ids=tuple(list(patients)[:MAX_IDS_PER_EVENT]),
                     study_uids=tuple(list(studies)[:MAX_IDS_PER_EVENT]), sop_instance_count=sop_count,
                     message=message, details=details, time=self.wallclock())

    def _delivered(self, pending: Pending, details: dict[str, Any]) -> None:
        """A C-STORE the destination acknowledged: credit the C-MOVEs it is a sub-operation of
        (records.moves; PS3.4 C.4.2.2). When it is one C-MOVE's, `details.c_move` names it (route,
        requestor, Message ID, what linked them) and flags a Move Originator AE Title that names
        someone else than the C-MOVE's requestor (PS3.7 9.1.1.1); `details.move_originator` stays
        what the SCP wrote."""
        if self.moves is None or not pending.from_requestor:
            return
        cmd = pending.command
        moves, linked_by = self.moves.sub_operation(destination=self.called_ae, caller_ae=self.client.ae_title,
                                                    originator_ae=cmd.move_originator_ae,
                                                    originator_message_id=cmd.move_originator_message_id)
        patient, study = next(iter(pending.patient_ids), None), next(iter(pending.study_uids), None)
        for move in moves:
            move.credit(details.get("sop_instance"), patient, study, self._common.get("route"),
                        cmd.move_originator_ae)
        # A capture of a gateway holds both legs of the C-MOVE: one is named (records.moves)
        named = self.moves.named(moves, caller_host=self.client.host, caller_ae=self.client.ae_title)
        if named is not None:
            details["c_move"] = {"route": named.route, "requestor_ae": named.requestor_ae,
                                 "message_id": named.message_id, "linked_by": linked_by,
                                 "originator_mismatch": named.mismatch(cmd.move_originator_ae)}

    def _moved(self, move: OpenMove, details: dict[str, Any], patients: dict[str, None],
               studies: dict[str, None]) -> None:
        """A C-MOVE's final response (or its end): the patients and studies its sub-operations
        delivered through a return route join its own, and `details.delivered` counts them (absent
        when none came through one: a refused C-MOVE, a destination reached directly). A C-MOVE the
        full ledger forgot (records.moves, evicted) has it in any case: what it counts may be short."""
        if self.moves is not None:
            self.moves.close(move)
        patients.update(move.patients)
        for study in move.studies:
            if len(studies) < MAX_DELIVERED_IDS:
                studies[study] = None
        if move.instances or move.evicted:
            details["delivered"] = move.details()

    # --- helpers ----------------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        self.publish(event)


def _unread(peek: DatasetPeek) -> str | None:
    """Which of the identifiers a record keys on (Patient ID, Study Instance UID) a data set's walk
    stopped before, and why; None when the walk read them, or got past (0020,000E) without them
    (then the object has none: PS3.5 7.1, elements in ascending order)."""
    if peek.complete:
        return None
    missing = [name for name, value in (("Patient ID (0010,0020)", peek.patient_id),
                                        ("Study Instance UID (0020,000D)", peek.study_instance_uid))
               if value is None]
    if not missing:
        return None
    return f"{' and '.join(missing)} not read: {walk_stop(peek)}"


def _items(ds: Any, keyword: str, tag: str) -> list[Any]:
    """The items of sequence *keyword* of a decoded data set ([] when absent); ValueError naming
    the attribute when its value is not a sequence (another VR where PS3.4 J.3 has an SQ)."""
    value = ds.get(keyword, [])
    if isinstance(value, (str, bytes)) or not all(hasattr(item, "get") for item in value):
        raise ValueError(f"{keyword} {tag} is not a sequence of items")
    return list(value)


def _reason(value: Any) -> str | None:
    """A Failure Reason (0008,1197, US; PS3.4 J.3.3.1.1) as the hex a DICOM status is written in."""
    try:
        return f"0x{int(value):04X}" if value is not None and value != "" else None
    except (TypeError, ValueError):
        return str(value)[:64]


def capture_time(seconds: float) -> datetime:
    """A packet time (seconds since the epoch) as an Event time."""
    return datetime.fromtimestamp(seconds, timezone.utc)


# --- refusal floods --------------------------------------------------------------------------

REFUSALS_SUMMARY = "gateway.refusals.summary"
REFUSAL_WINDOW = 60.0  # seconds: `limits.refusals_recorded_per_minute` counts per window
MAX_AE_TITLES = 32  # calling AE titles listed in one summary; a brute force shows in the first ones
MAX_SOURCES = 10_000  # (host, rule) windows kept at once; past it, refusals are recorded one by one


@dataclass(slots=True)
class _Window:
    """One (source host, rule)'s refusals since `started` (monotonic)."""

    started: float
    recorded: int = 0
    suppressed: int = 0
    first: datetime | None = None
    last: datetime | None = None
    route: Any = None
    target: Party | None = None
    ae_titles: dict[str, None] = field(default_factory=dict)
    handle: asyncio.TimerHandle | None = None


class RefusalLog:
    """A route's own refusals of associations (A-ASSOCIATE-RJ, PS3.8 9.3.4), counted per (source
    host, rule): the first `per_minute` of each window of REFUSAL_WINDOW seconds are recorded one
    by one (requested + rejected, enough to tell who and why), the others only counted; one
    `gateway.refusals.summary` Event per window then says how many were not recorded, between
    which times, with which calling AE titles. An unauthenticated flood of refusals so costs a
    bounded number of records a minute instead of filling the audit store, whose full disk would
    refuse every modality (record before response). Accepted associations never pass here, and
    the route's checks (the inline IDS counting floods) still see every refusal."""

    def __init__(self, per_minute: int, publish: Callable[[Event], object], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.publish = publish
        self.clock = clock
        self.windows: dict[tuple[str, str], _Window] = {}

    def admit(self, rejected: Event) -> bool:
        """Whether this `dicom.association.rejected` Event (and its `requested`) is to be recorded;
        False: it is counted in its source's summary instead."""
        window = self._window(rejected)
        if window is None:
            return True  # never silently lose a refusal for want of room to count it
        if window.recorded < self.per_minute:
            window.recorded += 1
            return True
        window.suppressed += 1
        window.first = window.first or rejected.time
        window.last = rejected.time
        window.route, window.target = rejected.details.get("route"), rejected.target
        if rejected.actor.ae_title and len(window.ae_titles) < MAX_AE_TITLES:
            window.ae_titles[rejected.actor.ae_title] = None
        return False

    def recorded(self, rejected: Event) -> None:
        """A refusal recorded whatever the count (what was published before it, an IDS alert it set
        off, let its request through): counted among those recorded, so that a summary's recorded
        and suppressed add up to every refusal of its window."""
        window = self._window(rejected)
        if window is not None:
            window.recorded += 1

    def _window(self, rejected: Event) -> _Window | None:
        """The open window of the refusal's (source host, rule), one begun now if none is; None when
        there is no room for another."""
        details = rejected.details
        key = (rejected.actor.host or "?", str(details.get("rule") or details.get("reason") or "?"))
        now = self.clock()
        window = self.windows.get(key)
        if window is not None and now - window.started >= REFUSAL_WINDOW:
            self._close(key, window)  # its timer is late (a busy loop): the next window starts here
            window = None
        if window is None:
            if len(self.windows) >= MAX_SOURCES:
                return None
            window = self.windows[key] = _Window(now)
            window.handle = _call_later(REFUSAL_WINDOW, self._close, key, window)
        return window

    def flush(self) -> None:
        """Record the summary of every open window now (the gateway stops)."""
        for key, window in list(self.windows.items()):
            self._close(key, window)

    def _close(self, key: tuple[str, str], window: _Window) -> None:
        if self.windows.get(key) is not window:
            return
        del self.windows[key]
        if window.handle is not None:
            window.handle.cancel()
        if window.suppressed:
            self.publish(self._summary(key, window))

    def _summary(self, key: tuple[str, str], window: _Window) -> Event:
        host, rule = key
        assert window.first is not None and window.last is not None
        titles = list(window.ae_titles)
        return Event(kind=REFUSALS_SUMMARY, component="gateway", severity=Severity.WARNING,
                     outcome=Outcome.SERIOUS_FAILURE, actor=Party(host=host), target=window.target or Party(),
                     message=f"{window.suppressed} more associations from {host} refused by rule {rule} between "
                             f"{window.first.isoformat()} and {window.last.isoformat()}, not recorded one by one "
                             f"(the first {window.recorded} were: limits.refusals_recorded_per_minute)",
                     details={"route": window.route, "host": host, "rule": rule, "suppressed": window.suppressed,
                              "recorded": window.recorded, "first": window.first.isoformat(),
                              "last": window.last.isoformat(), "calling_ae_titles": titles,
                              "window_s": REFUSAL_WINDOW},
                     time=window.last)


def _call_later(delay: float, callback: Callable[..., None], *args: Any) -> asyncio.TimerHandle | None:
    """``callback`` in ``delay`` seconds on the running loop; None without one (then the next
    refusal of the same source closes the window)."""
    try:
        return asyncio.get_running_loop().call_later(delay, callback, *args)
    except RuntimeError:
        return None


class RefusalFilter:
    """Between one association's Events and the store: its `dicom.association.requested` waits
    until the association is judged, so that a refusal past the route's per-minute count
    (`RefusalLog`) leaves neither record. Anything else published first lets it through, in order."""

    __slots__ = ("log", "publish_now", "_held")

    def __init__(self, log: RefusalLog | None, publish_now: Publish) -> None:
        self.log = log
        self.publish_now = publish_now
        self._held: Event | None = None

    def publish(self, event: Event) -> None:
        if self.log is not None and event.kind == "dicom.association.requested" and self._held is None:
            self._held = event
            return
        if event.kind == "dicom.association.rejected" and event.details.get("by") == "gateway" \
                and self.log is not None:
            if self._held is None:
                self.log.recorded(event)
            else:
                held, self._held = self._held, None
                if not self.log.admit(event):
                    return
                self.publish_now(held)
        self.flush()
        self.publish_now(event)

    def flush(self) -> None:
        """Record the held A-ASSOCIATE-RQ now: the association was let through."""
        held, self._held = self._held, None
        if held is not None:
            self.publish_now(held)
