"""`services`: which DIMSE services, SOP classes and C-MOVE destinations a route allows
(`policy.services`, `policy.sop_classes`, `policy.move_destinations`).

A presentation context for a service or SOP class not allowed is user-rejected in the
A-ASSOCIATE-AC (PS3.8 Table 9-18, result 1). A request for a service not allowed is refused with
0x0124 (not authorized), a C-MOVE to an unlisted destination with 0xA801 (PS3.4 C.4.2.1.4), a
request whose SOP class is not its context's abstract syntax (or, on a Meta SOP Class context, one
of its component classes), or a DIMSE-N request naming two different ones, with 0x0122 (SOP class
not supported). On a relayed route a C-STORE data set whose SOP Class UID is another class, cannot
be read, or is given twice, aborts the association (the command has gone on); so does one whose
Patient ID the walk stopped before (it could not be recorded), whichever side sends it: the
upstream's C-STORE-RQ of a C-GET sub-operation (PS3.4 C.4.3.3) too. A C-FIND, C-MOVE or C-GET
identifier whose walk stopped before its keys (its patient hidden from the checks) aborts it too.

`storage-commitment` is what Storage Commitment Push is made of (PS3.4 J.3): an N-ACTION-RQ with
Action Type ID 1 and the N-EVENT-REPORT-RQ (Event Type ID 1 or 2) that answers it, on a Storage
Commitment Push Model context. Any other normalized request, on that context too, is `N-*`."""

from __future__ import annotations

from functools import lru_cache

from pydicom.uid import UID

from pacsguard.config.schema import Route
from pacsguard.dicom import dimse
from pacsguard.dicom import pdu as P
from pacsguard.dicom.dataset import DatasetPeek, walk_stop
from pacsguard.dicom.events import DimseCommand, DimseDatasetStart, ProtocolEvent
from pacsguard.gateway.check import Association, Check
from pacsguard.gateway.verdict import ALLOW, Action, Verdict, refuse
from pacsguard.records.dicom import Pending

#: The rule that aborts a C-STORE whose Patient ID the walk could not reach (docs/gateway.md, Refusals).
PATIENT_RULE = "dimse.dataset-patient"
#: The rule that aborts a C-FIND/C-MOVE/C-GET whose identifier the walk could not read to its end.
IDENTIFIER_RULE = "dimse.dataset-identifier"
VERIFICATION = "1.2.840.10008.1.1"
STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"
MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
_REQUESTS = {dimse.C_ECHO_RQ: "C-ECHO", dimse.C_STORE_RQ: "C-STORE", dimse.C_FIND_RQ: "C-FIND",
             dimse.C_MOVE_RQ: "C-MOVE", dimse.C_GET_RQ: "C-GET"}
#: The DIMSE-N requests naming their SOP class in Affected SOP Class UID (PS3.7 10.1.1.1, 10.1.5.1); the
#: others name it in Requested SOP Class UID.
_N_BY_AFFECTED = (dimse.N_EVENT_REPORT_RQ, dimse.N_CREATE_RQ)
#: PS3.4 J.3.2: Request Storage Commitment; J.3.3: storage commitment request successful (1) or
#: complete with failures (2).
_COMMITMENT_ACTION = 1
_COMMITMENT_EVENTS = (1, 2)

_FILM_SESSION, _FILM_BOX, _PRINTER = "1.2.840.10008.5.1.1.1", "1.2.840.10008.5.1.1.2", "1.2.840.10008.5.1.1.16"
#: The optional Print Management SOP classes (PS3.4 Annex H), which printers also take on a Meta
#: context: Print Job, Basic Annotation Box, Presentation LUT, Printer Configuration Retrieval,
#: Image Overlay Box and Basic Print Image Overlay Box (retired).
_PRINT_OPTIONAL = ("1.2.840.10008.5.1.1.14", "1.2.840.10008.5.1.1.15", "1.2.840.10008.5.1.1.23",
                   "1.2.840.10008.5.1.1.16.376", "1.2.840.10008.5.1.1.24", "1.2.840.10008.5.1.1.24.1")
_UPS_PUSH, _UPS_PUSH_TRIAL = "1.2.840.10008.5.1.4.34.6.1", "1.2.840.10008.5.1.4.34.4.1"
#: The SOP classes a DIMSE-N request may name on a context other than its own class. A Print
#: Management Meta SOP Class context carries its component SOP classes (PS3.4 Annex H; the retired
#: Referenced ones the Referenced Image Box); the UPS Pull, Watch, Event and Query contexts carry
#: N-requests naming the UPS Push SOP Class (PS3.4 CC.3.1). Other Meta SOP Classes are retired and
#: not listed here: their contexts are not checked (see context_carries).
META_COMPONENTS: dict[str, frozenset[str]] = {
    "1.2.840.10008.5.1.1.9": frozenset({_FILM_SESSION, _FILM_BOX, "1.2.840.10008.5.1.1.4", _PRINTER,
                                        *_PRINT_OPTIONAL}),
    "1.2.840.10008.5.1.1.18": frozenset({_FILM_SESSION, _FILM_BOX, "1.2.840.10008.5.1.1.4.1", _PRINTER,
                                         *_PRINT_OPTIONAL}),
    "1.2.840.10008.5.1.1.9.1": frozenset({_FILM_SESSION, _FILM_BOX, "1.2.840.10008.5.1.1.4.2", _PRINTER,
                                          *_PRINT_OPTIONAL}),
    "1.2.840.10008.5.1.1.18.1": frozenset({_FILM_SESSION, _FILM_BOX, "1.2.840.10008.5.1.1.4.2", _PRINTER,
                                           *_PRINT_OPTIONAL}),
    **{f"1.2.840.10008.5.1.4.34.6.{n}": frozenset({_UPS_PUSH}) for n in (2, 3, 4, 5)},
    **{f"1.2.840.10008.5.1.4.34.4.{n}": frozenset({_UPS_PUSH_TRIAL}) for n in (2, 3, 4)},
}


@lru_cache(maxsize=4096)
def service_of_abstract_syntax(uid: str) -> str:
    """The policy service class that a presentation context's abstract syntax serves (PS3.4 Annex B-C)."""
    if uid == VERIFICATION:
        return "C-ECHO"
    if uid == STORAGE_COMMITMENT_PUSH:
        return "storage-commitment"
    name = UID(uid).name if UID(uid).is_valid else uid
    upper = name.upper()
    for suffix, service in (("- FIND", "C-FIND"), ("- MOVE", "C-MOVE"), ("- GET", "C-GET")):
        if upper.endswith(suffix):
            return service
    if uid == MODALITY_WORKLIST_FIND or "WORKLIST" in upper:
        return "C-FIND"
    # pydicom names three retired storage classes "... Storage SOP Class" (Stored Print, Hardcopy
    # Grayscale and Color Image Storage, PS3.4 B.5): C-STORE too, as storescp takes them.
    storage = upper.removesuffix(" SOP CLASS").endswith("STORAGE") and "COMMITMENT" not in upper
    if uid.startswith("1.2.840.10008.5.1.4.1.1.") or storage:
        return "C-STORE"
    return "N-*"


def service_of_command(command: dimse.CommandSet, abstract_syntax: str | None) -> str | None:
    """The policy service of a DIMSE request (PS3.7 9.1, 10.1); None for responses and C-CANCEL,
    which follow their request. Storage commitment is judged by what the request does, not only by
    the context it comes on (PS3.4 J.3): an N-CREATE there is `N-*` like anywhere else."""
    field = command.command_field
    base = field & 0x7FFF
    if field & 0x8000 or base == dimse.C_CANCEL_RQ:
        return None
    if base in _REQUESTS:
        return _REQUESTS[base]
    if abstract_syntax == STORAGE_COMMITMENT_PUSH and (
            field == dimse.N_ACTION_RQ and command.action_type_id == _COMMITMENT_ACTION
            or field == dimse.N_EVENT_REPORT_RQ and command.event_type_id in _COMMITMENT_EVENTS):
        return "storage-commitment"
    return "N-*"


def context_carries(abstract_syntax: str, sop_class: str) -> bool:
    """Whether a request naming *sop_class* belongs on a context for *abstract_syntax*: the same
    class (PS3.7 9.1, 10.1; PS3.8 7.1.1.13), or a component class of a Meta SOP Class context
    (PS3.4 Annex H). A retired Meta SOP Class whose components are not listed carries any."""
    if sop_class == abstract_syntax:
        return True
    components = META_COMPONENTS.get(abstract_syntax)
    return sop_class in components if components is not None else _is_meta(abstract_syntax)


@lru_cache(maxsize=1024)
def _is_meta(uid: str) -> bool:
    return UID(uid).type == "Meta SOP Class"


class ServicesCheck(Check):
    name = "services"

    def __init__(self, route: Route) -> None:
        policy = route.policy
        self.services = set(policy.services)
        self.sop_classes = None if policy.sop_classes is None else set(policy.sop_classes)
        self.move_destinations = set(policy.move_destinations)
        self.store_and_forward = route.mode == "store-and-forward"
        # Per association, the client's last request announcing a data set, as on_request saw it:
        # its data set follows it (PS3.7 6.3.1, messages are not interleaved), and one the gateway
        # refused is swallowed, not judged (see on_data_event).
        self._announced: dict[Association, Pending] = {}
        # Per association, the upstream's last command announcing a data set (a C-GET's C-STORE
        # sub-operation, a C-FIND match): its data set follows it as the client's follows its request.
        self._upstream_announced: dict[Association, dimse.CommandSet] = {}
        # Per association, the SOP classes whose SCP role the requestor proposed (PS3.7 D.3.3.4).
        self._scp_roles: dict[Association, frozenset[str]] = {}

    def on_associate(self, assoc: Association, rq: P.AssociateRQ, events: list[ProtocolEvent]) -> Verdict:
        info = rq.user_information
        scp = frozenset(r.sop_class_uid for r in info.role_selections if r.scp_role == 1) if info else frozenset()
        if scp:
            self._scp_roles[assoc] = scp
        return ALLOW

    def on_context(self, assoc: Association, abstract_syntax: str) -> Verdict:
        service = service_of_abstract_syntax(abstract_syntax)
        # C-GET retrieves over storage contexts the requestor proposes in the SCP role (PS3.4 C.4.3);
        # without a role selection item the requestor is SCU only (PS3.7 D.3.3.4): a C-STORE context.
        needed = {service}
        if (service == "C-STORE" and "C-STORE" not in self.services and "C-GET" in self.services
                and abstract_syntax in self._scp_roles.get(assoc, ())):
            needed = {"C-GET"}
        if not needed & self.services:
            return refuse(f"service {service} ({_name(abstract_syntax)}) is not allowed", "policy.services",
                          status=dimse.STATUS_SOP_CLASS_NOT_SUPPORTED)
        if (self.sop_classes is not None and abstract_syntax not in self.sop_classes
                and abstract_syntax != VERIFICATION):
            return refuse(f"SOP class {_name(abstract_syntax)} is not allowed", "policy.sop_classes",
                          status=dimse.STATUS_SOP_CLASS_NOT_SUPPORTED)
        return ALLOW

    def on_request(self, assoc: Association, pending: Pending, event: DimseCommand) -> Verdict:
        command = event.command
        if command.has_dataset and not self.store_and_forward:
            self._announced[assoc] = pending
        service = service_of_command(command, event.abstract_syntax)
        if service is None:
            return ALLOW
        if service not in self.services:
            return refuse(f"{_service_name(command, service, event.abstract_syntax)} is not allowed on this route",
                          "policy.services", status=dimse.STATUS_NOT_AUTHORIZED)
        # A request names its SOP class, which must be the abstract syntax of the context it comes on
        # (PS3.7 9.1, 10.1, PS3.8 7.1.1.13): else an MR image rides an accepted CT context, or the
        # Verification one, past the contexts the policy refused, and an N-ACTION of any class rides
        # the Storage Commitment one. A Meta SOP Class context carries its component classes (PS3.4 H).
        dimse_c = command.command_field in _REQUESTS
        what = service if dimse_c else dimse.command_name(command.command_field)
        named = _named_sop_classes(command, dimse_c)
        if len(named) > 1:
            # Which one the SCP acts on is its own reading: hold the request to neither.
            return refuse(f"{what} naming two SOP classes, {_name(named[0])} and {_name(named[1])} (PS3.7 10.1)",
                          "dimse.context-sop-class", status=dimse.STATUS_SOP_CLASS_NOT_SUPPORTED)
        sop = named[0] if named else None
        if sop and event.abstract_syntax and not context_carries(event.abstract_syntax, sop):
            return refuse(f"{what} of {_name(sop)} on a presentation context for {_name(event.abstract_syntax)}",
                          "policy.sop_classes" if self.sop_classes is not None and sop not in self.sop_classes
                          else "dimse.context-sop-class", status=dimse.STATUS_SOP_CLASS_NOT_SUPPORTED)
        if service == "C-MOVE":
            dest = (command.move_destination or "").strip()
            if dest not in self.move_destinations:
                return refuse(f"C-MOVE destination {dest!r} is not allowed", "policy.move_destinations",
                              status=dimse.STATUS_MOVE_DESTINATION_UNKNOWN)
        return ALLOW

    def on_closed(self, assoc: Association) -> Verdict:
        self._announced.pop(assoc, None)
        self._upstream_announced.pop(assoc, None)
        self._scp_roles.pop(assoc, None)
        return ALLOW

    def on_data_event(self, assoc: Association, event: ProtocolEvent) -> Verdict:
        """A requestor's C-STORE data set whose SOP Class UID (0008,0016), in its first fragments, is not
        the class of the context it comes on (which on_request held to the command's): an MR image
        under a CT command on a route allowing CT only; a C-STORE data set whose SOP Class UID or
        Patient ID cannot be read; a query or retrieve identifier not read to its end; and of the
        upstream, a C-GET sub-operation whose Patient ID cannot be read. A relayed route has passed
        the command on already, so the association is aborted (PS3.8 9.3.8); a store-and-forward
        route refuses the object itself at reception (0xA900, store_forward.screening)."""
        if self.store_and_forward:
            return ALLOW
        if isinstance(event, DimseCommand) and not event.from_requestor:
            self._upstream_command(assoc, event.command)
            return ALLOW
        if not isinstance(event, DimseDatasetStart):
            return ALLOW
        if not event.from_requestor:
            return self._judge_suboperation(assoc, event)
        # The data set of a refused request is swallowed: the PACS never sees it, and the client gets
        # the refusal once it is in, as docs/gateway.md says. A request on_request never saw was
        # refused by a check before this one (decide() stops there).
        announced = self._announced.pop(assoc, None)
        if announced is None or announced.refused is not None:
            return ALLOW
        unread = _unheld_store(announced, event)
        if unread is not None:
            return Verdict(Action.ABORT, f"a C-STORE data set whose SOP Class UID (0008,0016) cannot be read: "
                           f"{unread}, PS3.3 C.12.1 (dimse.dataset-sop-class)", "dimse.dataset-sop-class")
        unread = _unrecorded_patient(announced.command, event.peek)
        if unread is not None:
            return Verdict(Action.ABORT, f"a C-STORE data set whose Patient ID (0010,0020) cannot be read: "
                           f"{unread}, PS3.3 C.7.1.1 ({PATIENT_RULE})", PATIENT_RULE)
        unread = _unread_identifier(announced.command, event.peek)
        if unread is not None:
            service = _REQUESTS[announced.command.command_field]
            return Verdict(Action.ABORT, f"a {service} identifier whose keys cannot all be read: {unread}; "
                           f"its patient is hidden from the checks, PS3.4 C.4 ({IDENTIFIER_RULE})", IDENTIFIER_RULE)
        if announced.command.command_field != dimse.C_STORE_RQ:
            # In a query or retrieve identifier, SOP Class UID is a matching key of the instance level
            # (PS3.4 C.6.1.1.5): an IMAGE level C-FIND for CT images names CT Image Storage on the FIND
            # context, and is no object sent on the wrong context.
            return ALLOW
        theirs, context = event.peek.sop_class_uid, assoc.abstract_syntax(event.context_id)
        if not theirs or not context or theirs == context or context == VERIFICATION:
            return ALLOW
        rule = "policy.sop_classes" if self.sop_classes is not None and theirs not in self.sop_classes \
            else "dimse.dataset-sop-class"
        return Verdict(Action.ABORT, f"a data set of {_name(theirs)} sent on a presentation context for "
                       f"{_name(context)}, PS3.4 B.2.3 ({rule})", rule)

    def _upstream_command(self, assoc: Association, command: dimse.CommandSet) -> None:
        """Note the upstream's command whose data set comes next (PS3.7 6.3.1: not interleaved)."""
        if command.has_dataset:
            self._upstream_announced[assoc] = command
        else:
            self._upstream_announced.pop(assoc, None)

    def _judge_suboperation(self, assoc: Association, event: DimseDatasetStart) -> Verdict:
        """The upstream's data set of a C-STORE sub-operation on a C-GET association (PS3.4 C.4.3.3),
        judged as a modality's C-STORE is: the client is about to get an object whose patient the
        gateway could not record. The C-STORE-RQ has gone on to the client, so the association is
        aborted (PS3.8 9.3.8). A C-MOVE's sub-operations come on their own association, from the
        archive as requestor: a route in front of the move destination judges them as any C-STORE."""
        command = self._upstream_announced.pop(assoc, None)
        if command is None:
            return ALLOW
        unread = _unrecorded_patient(command, event.peek)
        if unread is None:
            return ALLOW
        return Verdict(Action.ABORT, f"a C-GET sub-operation (the upstream's C-STORE-RQ) whose Patient ID (0010,0020) "
                       f"cannot be read: {unread}, PS3.3 C.7.1.1 ({PATIENT_RULE})", PATIENT_RULE)


def _named_sop_classes(command: dimse.CommandSet, dimse_c: bool) -> list[str]:
    """The SOP Class UIDs a request names, the one it is judged by first (PS3.7 9.1, 10.1): a DIMSE-C
    request its Affected SOP Class UID; N-ACTION, N-GET, N-SET and N-DELETE their Requested SOP Class
    UID, N-CREATE and N-EVENT-REPORT their Affected one. The other field, if present too and different,
    follows: an SCP may act on it (an N-ACTION requesting UPS Push under an Affected Storage Commitment)."""
    affected, requested = command.affected_sop_class_uid, command.requested_sop_class_uid
    if dimse_c:
        return [affected] if affected else []
    if command.command_field in _N_BY_AFFECTED:
        affected, requested = requested, affected
    named = [uid for uid in (requested, affected) if uid]
    return named[:1] if len(named) == 2 and named[0] == named[1] else named


def _unheld_store(announced: Pending, event: DimseDatasetStart) -> str | None:
    """Why a C-STORE's data set cannot be held to the policy, or None. A composite instance carries its
    SOP Class UID (0008,0016), Type 1 (PS3.3 C.12.1): a walk that ended without one (a structural
    problem, a limit, or the element out of order past (0020,000E), where a PACS that sorts still finds
    it), or read one of two copies (PS3.5 7.1: the PACS may keep the other), leaves the gateway blind
    to what the PACS will store. C-FIND/C-MOVE/C-GET identifiers have no SOP class."""
    if announced.command.command_field != dimse.C_STORE_RQ:
        return None
    peek = event.peek
    if peek.anomaly == "repeated-element":
        return "an identifying element occurs twice (repeated-element), PS3.5 7.1"
    if peek.sop_class_uid:
        return None
    if peek.complete:
        return "no SOP Class UID before (0020,000E)"
    return walk_stop(peek)


def _unrecorded_patient(command: dimse.CommandSet, peek: DatasetPeek) -> str | None:
    """Why a C-STORE's Patient ID cannot be recorded, or None. The Patient Module gives every composite
    instance a Patient ID (0010,0020), Type 2 (PS3.3 C.7.1.1): a walk that got past (0020,000E)
    without one read an object that has none, and that is what the record says; a walk that stopped
    before it (at a limit, a malformed element, past the 256 KiB a deflated data set is inflated to)
    leaves the gateway unable to say whose object the PACS files, so, as for an unread SOP class,
    the object does not go through unrecorded."""
    if command.command_field != dimse.C_STORE_RQ:
        return None
    if peek.patient_id is not None or peek.complete:
        return None
    return walk_stop(peek)


def _unread_identifier(command: dimse.CommandSet, peek: DatasetPeek) -> str | None:
    """Why a C-FIND, C-MOVE or C-GET identifier (PS3.7 9.1.2-9.1.4) cannot be held to the checks, or
    None. A query or retrieve identifier is a handful of keys in a few hundred bytes (PS3.4 C.4): one
    whose walk stopped before its end (past the 256 KiB a deflated one is inflated to, 128 nested
    sequences, 100,000 headers, a key longer than 64 KiB, a key given twice, or cut) has no reason to
    be so, and hides the keys the SCP still matches on, its patient first, from the checks, the
    inline IDS and the record."""
    if command.command_field not in (dimse.C_FIND_RQ, dimse.C_MOVE_RQ, dimse.C_GET_RQ) or peek.complete:
        return None
    return walk_stop(peek)


def _service_name(command: dimse.CommandSet, service: str, abstract_syntax: str | None) -> str:
    """How a refusal names the request: its service, and for `N-*` the command and its context."""
    if service != "N-*":
        return service
    where = f" on a presentation context for {_name(abstract_syntax)}" if abstract_syntax else ""
    return f"{dimse.command_name(command.command_field)}{where} (service N-*)"


def _name(uid: str) -> str:
    try:
        name = UID(uid).name
    except Exception:  # noqa: BLE001 - a hostile UID string must not break the message
        return uid
    return f"{name} [{uid}]" if name != uid else uid
