"""The DICOM adapter: decoder events in, DICOM observations to the engine, alerts out.

A sensor (the passive capture reader, the inline gateway) owns the sockets or the capture and
the flow's :class:`~pacsguard.dicom.AssociationDecoder`; it hands every decoder event to
:meth:`DicomAdapter.observe`, plus the few things the decoder cannot see: bytes that are not
DICOM (:meth:`~DicomAdapter.non_dicom`), decode errors (:meth:`~DicomAdapter.decode_error`),
an outcome the sensor decided itself such as the gateway's own A-ASSOCIATE-RJ
(:meth:`~DicomAdapter.association_result`), and the end of the connection
(:meth:`~DicomAdapter.flow_closed`).  Each becomes at most one observation of a kind in
:mod:`.kinds` (PS3.8 association and PDU events, PS3.7 DIMSE messages).

The adapter holds no state of its own: per-connection state is a :class:`.state.DicomFlowState`
in the engine's :attr:`~pacsguard.ids.engine.Engine.flows`, so any number of adapters over one
engine see the same flows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from pacsguard.dicom import pdu as P
from pacsguard.dicom.dimse import COMMAND_NAMES, CommandSet, status_category
from pacsguard.dicom.errors import DecodeError
from pacsguard.dicom.events import (
    Aborted,
    AssociationAccepted,
    AssociationRejected,
    AssociationRequested,
    DimseCommand,
    DimseDatasetEnd,
    DimseDatasetStart,
    ProtocolEvent,
    ProtocolViolation,
    ReleaseCompleted,
    ReleaseRequested,
)
from pacsguard.dicom.reasons import RJ_REASONS, RJ_RESULTS, RJ_SOURCES, rj_reason
from pacsguard.ids.engine import Alert, CompiledRule, Engine
from pacsguard.ids.expect import Expectation
from pacsguard.ids.observation import Flow
from pacsguard.ids.sniff import guess_protocol

from .kinds import PROTOCOL
from .state import MAX_FLOW_IDS, MAX_RETRIEVES, MAX_SERVICES, DicomFlowState

__all__ = ["DicomAdapter", "reason_slug"]

_REASON_SLUGS: Final = frozenset(RJ_REASONS.values())


def reason_slug(reason: str) -> str:
    """A rejection reason as a Table 9-21 name: a name passes, free text that names the calling
    or called AE title maps to that reason, anything else is ``other``."""
    text = reason.strip()
    if text in _REASON_SLUGS:
        return text
    low = text.lower()
    if "calling" in low and "ae" in low:
        return RJ_REASONS[(P.RJ_SOURCE_SERVICE_USER, P.RJ_REASON_USER_CALLING_AE_NOT_RECOGNIZED)]
    if "called" in low and "ae" in low:
        return RJ_REASONS[(P.RJ_SOURCE_SERVICE_USER, P.RJ_REASON_USER_CALLED_AE_NOT_RECOGNIZED)]
    return "other"


def _service(name: str) -> str:
    for suffix in ("-RQ", "-RSP"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


#: command field -> (command name, service)
_COMMANDS: Final = {cf: (name, _service(name)) for cf, name in COMMAND_NAMES.items()}
_RETRIEVES: Final = frozenset({"C-MOVE", "C-GET"})
# Characters of a key value that restrict no match: the wildcards `*` and `?` (PS3.4 C.2.2.2.4; a
# value of only `*` is universal matching), and the component and group delimiters and padding of a
# Person Name (PS3.5 6.2.1), so that `*^*` or `*=*` is no name either.
_WILDCARD_ONLY: Final = frozenset("*?^= ")
#: The value delimiter of a multi-valued string element (PS3.5 6.4, Value Multiplicity).
_VALUE_SEPARATOR: Final = "\\"
#: The field that names the queried patient; rules that test, count or group by it see every patient of a list.
_QUERIED: Final = "queried_patient"
#: Values of one key run through those rules at most (a rule whose threshold counts more raises it).
MAX_LISTED_PATIENTS: Final = 1024


def _named_patients(value: str | None) -> list[str]:
    """The patients one key names, once each and in order: every value of a backslash-separated
    list (PS3.5 6.4; an archive may answer each value as its own match) that is not empty and
    not only wildcards, which restrict nothing (PS3.4 C.2.2.2.4)."""
    if not value:
        return []
    values = dict.fromkeys(v.strip() for v in value.split(_VALUE_SEPARATOR))
    return [v for v in values if v and not set(v) <= _WILDCARD_ONLY]


def _per_patient(compiled: CompiledRule) -> bool:
    """Whether ``compiled`` tests, counts or groups by the queried patient: it then runs once per
    patient a query lists, so that one C-FIND naming 60 patients counts as 60."""
    t = compiled.threshold
    if t is not None and (t.distinct == _QUERIED or _QUERIED in t.by):
        return True
    return any(cond.field == _QUERIED for cond in compiled.rule.conditions)


Handler = Callable[[Flow, DicomFlowState, Any, float], list[Alert]]


class DicomAdapter:
    """Feeds one :class:`~pacsguard.ids.engine.Engine` with DICOM observations.

    Every method takes the :class:`~pacsguard.ids.observation.Flow` (the TCP connection) and an
    optional ``now`` (seconds on the engine's time scale; default: the engine's clock) and
    returns the alerts that fired.
    """

    __slots__ = ("_clock", "_flows", "_handlers", "_rules", "_run", "engine")

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # bound once: the per-event path then costs what the engine's own dispatch did
        self._clock = engine.clock
        self._flows = engine.flows
        self._rules = engine.rules_for(PROTOCOL)
        self._run = engine.run
        self._handlers: dict[type, Handler] = {
            AssociationRequested: self._on_rq,
            AssociationAccepted: self._on_ac,
            AssociationRejected: self._on_rj,
            ReleaseRequested: self._on_release,
            ReleaseCompleted: self._on_release,
            Aborted: self._on_abort,
            DimseCommand: self._on_command,
            DimseDatasetStart: self._on_dataset,
            DimseDatasetEnd: self._on_nothing,
            ProtocolViolation: self._on_violation,
        }

    def _state(self, flow: Flow, now: float) -> DicomFlowState:
        # a flow key carries one protocol's state: a DICOM connection's is a DicomFlowState
        return self._flows.get_or_create(flow.key(), now, lambda: DicomFlowState(now))  # type: ignore[return-value]

    # ------------------------------------------------------------------ sensor API

    def observe(self, flow: Flow, ev: ProtocolEvent, now: float | None = None) -> list[Alert]:
        """Every event of the flow's AssociationDecoder, in order."""
        t: float = self._clock() if now is None else now
        self.engine.observations += 1
        st: DicomFlowState = self._flows.get_or_create(flow.key(), t, lambda: DicomFlowState(t))  # type: ignore[assignment]
        handler = self._handlers.get(type(ev))
        if handler is None:
            return []
        return handler(flow, st, ev, t)

    def decode_error(self, flow: Flow, from_client: bool, err: DecodeError, now: float | None = None) -> list[Alert]:
        """The decoder raised DecodeError on bytes of this flow."""
        t: float = self._clock() if now is None else now
        self.engine.observations += 1
        st = self._state(flow, t)
        rules = self._rules.get("decode-error")
        if not rules:
            return []
        fields = {"calling_ae": st.calling_ae, "called_ae": st.called_ae, "from_client": from_client,
                  "code": err.code, "message": err.detail, "offset": err.offset}
        return self._run(rules, "decode-error", PROTOCOL, fields, flow, t, st)

    def non_dicom(self, flow: Flow, first_bytes: bytes, now: float | None = None) -> list[Alert]:
        """The first bytes a client sent to a DICOM port are not an A-ASSOCIATE-RQ."""
        t: float = self._clock() if now is None else now
        self.engine.observations += 1
        rules = self._rules.get("non-dicom")
        if not rules:
            return []
        head = bytes(first_bytes[:16])
        fields = {"length": len(first_bytes), "protocol_guess": guess_protocol(head), "first_bytes": head.hex()}
        return self._run(rules, "non-dicom", PROTOCOL, fields, flow, t, None)

    def association_result(self, flow: Flow, *, rejected: bool, reason: str, by: str,
                           now: float | None = None) -> list[Alert]:
        """An association's outcome the decoder does not see, e.g. the gateway's own A-ASSOCIATE-RJ.

        ``reason`` is a Table 9-21 name (see :func:`pacsguard.dicom.reasons.rj_reason`:
        ``calling-ae-not-recognized``, ``called-ae-not-recognized`` ...); free text that names a
        calling/called AE title is mapped to those (:func:`reason_slug`).  Only the first result
        of a flow counts, so a sensor that also feeds the decoder's AssociationRejected for the
        same flow is not counted twice.
        """
        t: float = self._clock() if now is None else now
        self.engine.observations += 1
        st = self._state(flow, t)
        slug = reason_slug(reason) if rejected else ""
        return self._result(flow, st, t, rejected=rejected,
                            result=RJ_RESULTS[P.RJ_RESULT_PERMANENT] if rejected else "accepted",
                            source=by if rejected else "", reason=slug, reason_text=reason, by=by)

    def add_dicom_ports(self, ports: list[int]) -> None:
        """Ports the sensor knows to carry DICOM (the gateway's route listen and upstream ports):
        they join ``$dicom_ports`` as the rules test it (PS3.8 9.1: any TCP port may be configured)."""
        self.engine.extend_setting("dicom_ports", ports)

    def expected(self, flow: Flow, called_ae: str | None, now: float | None = None) -> Expectation | None:
        """The C-MOVE that announced an association from ``flow``'s client to ``called_ae``
        (PS3.4 C.4.2.2: the C-MOVE SCP opens it to the Move Destination), if one did and it is
        still valid; a sensor names it in the association's record."""
        return self.engine.expected.match(flow.client_host, called_ae, self._clock() if now is None else now)

    def flow_closed(self, flow: Flow, now: float | None = None) -> list[Alert]:
        """The connection ended (FIN/RST, eviction, end of capture): the ``flow-closed`` rules run
        over its summary, also for a connection no event was seen on."""
        return self.engine.flow_closed(flow, now, new_state=DicomFlowState)

    # ------------------------------------------------------------------ decoder events

    def _on_nothing(self, flow: Flow, st: DicomFlowState, ev: Any, now: float) -> list[Alert]:
        return []

    def _on_rq(self, flow: Flow, st: DicomFlowState, ev: AssociationRequested, now: float) -> list[Alert]:
        rq = ev.rq
        st.calling_ae = rq.calling_ae_title
        st.called_ae = rq.called_ae_title
        st.associated = True
        st.started = now
        rules = self._rules.get("association-request")
        if not rules:
            return []
        announced = self.engine.expected.match(flow.client_host, rq.called_ae_title, now)
        ui = rq.user_information
        identity = ui.user_identity if ui is not None else None
        fields = {
            "calling_ae": rq.calling_ae_title,
            "called_ae": rq.called_ae_title,
            "ae_titles": [rq.calling_ae_title, rq.called_ae_title],
            "abstract_syntaxes": [pc.abstract_syntax for pc in rq.presentation_contexts],
            "context_count": len(rq.presentation_contexts),
            "max_pdu_length": ui.max_length if ui is not None else None,
            "implementation_class_uid": ui.implementation_class_uid if ui is not None else None,
            "implementation_version_name": ui.implementation_version_name if ui is not None else None,
            "user_identity_type": getattr(identity, "identity_type", None),
            "application_context": rq.application_context_name,
            "expected_by": announced.label() if announced is not None else None,
        }
        return self._run(rules, "association-request", PROTOCOL, fields, flow, now, st)

    def _on_ac(self, flow: Flow, st: DicomFlowState, ev: AssociationAccepted, now: float) -> list[Alert]:
        return self._result(flow, st, now, rejected=False, result="accepted", source="", reason="",
                            reason_text="", by="acceptor")

    def _on_rj(self, flow: Flow, st: DicomFlowState, ev: AssociationRejected, now: float) -> list[Alert]:
        rj = ev.rj
        return self._result(flow, st, now, rejected=True,
                            result=RJ_RESULTS.get(rj.result, RJ_RESULTS[P.RJ_RESULT_PERMANENT]),
                            source=RJ_SOURCES.get(rj.source, str(rj.source)),
                            reason=rj_reason(rj.source, rj.reason), reason_text="", by="acceptor")

    def _result(self, flow: Flow, st: DicomFlowState, now: float, *, rejected: bool, result: str, source: str,
                reason: str, reason_text: str, by: str) -> list[Alert]:
        if st.result_seen:
            return []
        st.result_seen = True
        if rejected:
            st.rejected = True
        else:
            st.accepted = True
        rules = self._rules.get("association-result")
        if not rules:
            return []
        fields = {
            "calling_ae": st.calling_ae, "called_ae": st.called_ae, "ae_pair": st.ae_pair(),
            "rejected": rejected, "result": result, "source": source or None, "reason": reason or None,
            "reason_text": reason_text or None, "by": by,
        }
        return self._run(rules, "association-result", PROTOCOL, fields, flow, now, st)

    def _on_release(self, flow: Flow, st: DicomFlowState, ev: Any, now: float) -> list[Alert]:
        st.released = True
        return []

    def _on_abort(self, flow: Flow, st: DicomFlowState, ev: Aborted, now: float) -> list[Alert]:
        st.aborted = True
        rules = self._rules.get("abort")
        if not rules:
            return []
        fields = {"calling_ae": st.calling_ae, "called_ae": st.called_ae, "from_requestor": ev.from_requestor,
                  "source": ev.source, "reason": ev.reason}
        return self._run(rules, "abort", PROTOCOL, fields, flow, now, st)

    def _on_command(self, flow: Flow, st: DicomFlowState, ev: DimseCommand, now: float) -> list[Alert]:
        cmd: CommandSet = ev.command
        cf = cmd.command_field
        known = _COMMANDS.get(cf)
        name, service = known if known is not None else (f"UNKNOWN-0x{cf:04X}", f"UNKNOWN-0x{cf & 0x7FFF:04X}")
        sop_class = cmd.affected_sop_class_uid or cmd.requested_sop_class_uid
        from_rq = ev.from_requestor
        if from_rq:
            st.cmd_rq = (name, service, sop_class)
        else:
            st.cmd_ac = (name, service, sop_class)
        sender = st.calling_ae if from_rq else st.called_ae
        if not cf & 0x8000:  # a request (PS3.7 E.1: responses have bit 15 set)
            if from_rq:
                st.requests += 1
                if service != "C-ECHO":
                    st.non_echo = True
                if len(st.services) < MAX_SERVICES:
                    st.services[service] = None
                if service in _RETRIEVES and cmd.message_id is not None and len(st.retrieves) < MAX_RETRIEVES:
                    st.retrieves.add(cmd.message_id)
                if service == "C-MOVE" and cmd.move_destination:
                    self._announce(flow, st, cmd, now)
            rules = self._rules.get("dimse-request")
            if not rules:
                return []
            fields = {
                "calling_ae": st.calling_ae, "called_ae": st.called_ae, "from_requestor": from_rq,
                "command": name, "service": service, "sop_class_uid": sop_class,
                "sop_instance_uid": cmd.affected_sop_instance_uid or cmd.requested_sop_instance_uid,
                "abstract_syntax": ev.abstract_syntax, "transfer_syntax": ev.transfer_syntax,
                "message_id": cmd.message_id, "priority": cmd.priority, "move_destination": cmd.move_destination,
                "sender_ae": sender, "has_dataset": cmd.command_data_set_type != 0x0101,
            }
            return self._run(rules, "dimse-request", PROTOCOL, fields, flow, now, st)
        announced = None
        if service == "C-MOVE" and not from_rq and st.moves:
            self._move_response(st, cmd, now)
        if service in _RETRIEVES and not from_rq:
            mid = cmd.message_id_being_responded_to
            if mid is not None and mid in st.retrieves:
                st.retrieves.discard(mid)
                parts = (cmd.remaining_suboperations, cmd.completed_suboperations,
                         cmd.failed_suboperations, cmd.warning_suboperations)
                if any(p is not None for p in parts):
                    announced = sum(p for p in parts if p is not None)
        rules = self._rules.get("dimse-response")
        if not rules:
            return []
        status = cmd.status
        fields = {
            "calling_ae": st.calling_ae, "called_ae": st.called_ae, "from_requestor": from_rq,
            "command": name, "service": service, "sop_class_uid": sop_class,
            "message_id": cmd.message_id_being_responded_to, "status": status,
            "status_category": status_category(status) if status is not None else None,
            "remaining": cmd.remaining_suboperations, "completed": cmd.completed_suboperations,
            "failed": cmd.failed_suboperations, "warning": cmd.warning_suboperations,
            "suboperations_announced": announced,
        }
        return self._run(rules, "dimse-response", PROTOCOL, fields, flow, now, st)

    def _announce(self, flow: Flow, st: DicomFlowState, cmd: CommandSet, now: float) -> None:
        """A C-MOVE-RQ: its SCP (this flow's acceptor) will associate with the Move Destination
        (PS3.4 C.4.2.2); that association is expected while the C-MOVE runs and a while after."""
        key = self.engine.expected.expect(flow.acceptor_host or flow.server_host, cmd.move_destination or "",
                                          flow.id or f"{flow.client_host}:{flow.client_port}", cmd.message_id, now)
        if cmd.message_id is not None and (cmd.message_id in st.moves or len(st.moves) < MAX_RETRIEVES):
            st.moves[cmd.message_id] = key

    def _move_response(self, st: DicomFlowState, cmd: CommandSet, now: float) -> None:
        """A C-MOVE-RSP (PS3.4 C.4.2.1.5): the retrieve is still going, or ends after a grace period."""
        mid = cmd.message_id_being_responded_to
        key = st.moves.get(mid) if mid is not None else None
        if key is None:
            return
        self.engine.expected.refresh(key, now)
        status = cmd.status
        if status is None or status_category(status) != "pending":
            del st.moves[mid]  # type: ignore[arg-type]

    def _on_dataset(self, flow: Flow, st: DicomFlowState, ev: DimseDatasetStart, now: float) -> list[Alert]:
        peek = ev.peek
        pid, study = peek.patient_id, peek.study_instance_uid
        if pid and pid not in st.patient_ids and len(st.patient_ids) < MAX_FLOW_IDS:
            st.patient_ids[pid] = None
        if study and study not in st.study_uids and len(st.study_uids) < MAX_FLOW_IDS:
            st.study_uids[study] = None
        rules = self._rules.get("dataset")
        if not rules:
            return []
        from_rq = ev.from_requestor
        cmd = st.cmd_rq if from_rq else st.cmd_ac
        name, service, sop_class = cmd if cmd is not None else (None, None, None)
        pname = peek.patient_name
        # the patients the data set names: by Patient ID, else by Patient's Name
        named = _named_patients(pid) or _named_patients(pname)
        fields = {
            "calling_ae": st.calling_ae, "called_ae": st.called_ae, "from_requestor": from_rq,
            "command": name, "service": service, "sender_ae": st.calling_ae if from_rq else st.called_ae,
            "sop_class_uid": peek.sop_class_uid or sop_class, "sop_instance_uid": peek.sop_instance_uid,
            "patient_id": pid, "patient_name": pname, "study_instance_uid": study,
            "series_instance_uid": peek.series_instance_uid, "accession_number": peek.accession_number,
            "modality": peek.modality, "query_level": peek.query_retrieve_level,
            # absent, empty and wildcard-only keys alike match every patient (PS3.4 C.2.2.2.3, C.2.2.2.4)
            "patient_keys_empty": not named, _QUERIED: named[0] if named else None,
            "complete": peek.complete, "anomaly": peek.anomaly,
        }
        alerts = self._run(rules, "dataset", PROTOCOL, fields, flow, now, st)
        if len(named) > 1:
            alerts += self._listed_patients(rules, named[1:], fields, flow, now, st)
        return alerts

    def _listed_patients(self, rules: list[CompiledRule], others: list[str], fields: dict[str, Any], flow: Flow,
                         now: float, st: DicomFlowState) -> list[Alert]:
        """The rules on the queried patient, once for each further patient a key lists (PS3.5 6.4):
        a threshold on distinct patients counts them all. Bounded: past the largest such count,
        one query already fires the threshold on its own."""
        per_patient = [r for r in rules if _per_patient(r)]
        if not per_patient:
            return []
        most = max([MAX_LISTED_PATIENTS] + [int(r.threshold.count) for r in per_patient if r.threshold is not None])
        alerts: list[Alert] = []
        for value in others[:most]:
            alerts += self._run(per_patient, "dataset", PROTOCOL, {**fields, _QUERIED: value}, flow, now, st)
        return alerts

    def _on_violation(self, flow: Flow, st: DicomFlowState, ev: ProtocolViolation, now: float) -> list[Alert]:
        rules = self._rules.get("protocol-violation")
        if not rules:
            return []
        fields = {"calling_ae": st.calling_ae, "called_ae": st.called_ae, "from_requestor": ev.from_requestor,
                  "code": ev.code, "message": ev.message}
        return self._run(rules, "protocol-violation", PROTOCOL, fields, flow, now, st)
