"""What the gateway does with each way a peer can break the DICOM protocol: the one table that
sorts every decoder error code (pacsguard.dicom.errors), every state violation code
(pacsguard.dicom.events) and the relay's own code into *tolerated* and *aborting*.

Tolerated: bookkeeping that the receiving stacks (dcmtk, pynetdicom, Orthanc) do not rely on and
that the standard tells a receiver not to test (PS3.8 9.3.1 reserved fields; PS3.7 E.1 group
length, redundant with the self-delimiting elements). The bytes pass; the association records a
``dicom.protocol.warning`` once per code and direction. Aborting: anything that could make the
gateway and the receiver read the bytes differently, or hurt the receiver (lengths beyond what
holds them, resource bombs, PS3.8 9.2 state table violations): A-ABORT both legs, as before.
docs/gateway.md lists the table for administrators; a test checks the two agree.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Mapping

from pacsguard.dicom import errors as E
from pacsguard.dicom import events as V
from pacsguard.events import Event, Outcome, Party, Severity

# The relay's own code: more than one PDU's worth of bytes before the upstream accepted.
DATA_BEFORE_AC: Final = "data-before-ac"


class Handling(enum.Enum):
    TOLERATE = "tolerate"
    ABORT = "abort"


@dataclass(frozen=True, slots=True)
class Classification:
    handling: Handling
    reason: str

    @property
    def tolerated(self) -> bool:
        return self.handling is Handling.TOLERATE


def _abort(reason: str) -> Classification:
    return Classification(Handling.ABORT, reason)


def _tolerate(reason: str) -> Classification:
    return Classification(Handling.TOLERATE, reason)


VIOLATIONS: Final[Mapping[str, Classification]] = MappingProxyType({
    # PDU framing (PS3.8 9.3.1)
    E.PDU_LENGTH_EXCEEDS_MAXIMUM: _abort("PDU larger than the gateway accepts (--max-pdu)"),
    E.UNKNOWN_PDU_TYPE: _abort("not DICOM: the stream cannot be framed"),
    E.BAD_PDU_LENGTH: _abort("PDU-length too short for the PDU's fixed fields"),
    E.PDU_LENGTH_MISMATCH: _abort("PDU-length disagrees with the bytes framed"),
    E.RESERVED_FIELD_NONZERO: _tolerate("PS3.8 9.3.1: reserved fields are not tested on receipt"),
    E.UNEXPECTED_PDU: _abort("PDU not allowed in this state (PS3.8 9.2)"),
    E.TRUNCATED_PDU: _abort("connection ended inside a PDU"),
    # Items and sub-items (PS3.8 9.3.2-9.3.5, Annex D)
    E.TRUNCATED_ITEM: _abort("item length runs past its PDU or item"),
    E.BAD_ITEM_LENGTH: _abort("item length does not fit its fields"),
    E.UNEXPECTED_ITEM: _abort("known item in a PDU that must not hold it"),
    E.MISSING_ITEM: _abort("mandatory item missing: peers disagree on the association"),
    E.DUPLICATE_ITEM: _abort("item given twice: peers may read different ones"),
    E.TOO_MANY_ITEMS: _abort("item flood: resource exhaustion"),
    E.TOO_MANY_PRESENTATION_CONTEXTS: _abort("more than 128 presentation contexts"),
    E.BAD_CONTEXT_ID: _abort("presentation context ID not odd (PS3.8 9.3.2.2)"),
    E.DUPLICATE_CONTEXT_ID: _abort("context ID twice: ambiguous negotiation"),
    E.BAD_UID: _abort("UID empty, too long or not printable"),
    E.BAD_AE_TITLE: _abort("AE title outside the character set: policy input"),
    E.BAD_ITEM_VALUE: _abort("sub-item value out of range; it is re-encoded"),
    # DIMSE command sets (PS3.7 6.3.1, E.1)
    E.COMMAND_SET_INVALID: _abort("foreign group, or a required element missing"),
    E.COMMAND_SET_TOO_LARGE: _abort("command set over 64 KiB: resource exhaustion"),
    E.COMMAND_GROUP_LENGTH_MISMATCH: _tolerate("PS3.7 E.1 group length is bookkeeping; elements delimit themselves"),
    E.COMMAND_SET_TRAILING_ELEMENTS: _tolerate("elements after the command group; receivers ignore them"),
    E.COMMAND_ELEMENT_TRUNCATED: _abort("element value runs past the command set"),
    E.COMMAND_ELEMENT_BAD_LENGTH: _abort("US/UL of the wrong size, or text over its VR maximum"),
    E.COMMAND_ELEMENT_ORDER: _abort("repeated or unordered element: ambiguous values"),
    E.COMMAND_ELEMENT_NOT_ASCII: _abort("UID or AE title not ASCII: policy input"),
    # Identifiers (PS3.4 C.4)
    E.IDENTIFIER_INVALID: _abort("identifier does not decode"),
    E.IDENTIFIER_TOO_LARGE: _abort("identifier over 1 MiB: resource exhaustion"),
    # State table (PS3.8 9.2) and negotiation results
    V.VIOLATION_DATA_BEFORE_ASSOCIATION: _abort("P-DATA-TF before the A-ASSOCIATE-AC"),
    V.VIOLATION_DATA_AFTER_RELEASE: _abort("P-DATA-TF after this side asked to release"),
    V.VIOLATION_DATA_AFTER_CLOSE: _abort("P-DATA-TF after the association ended"),
    V.VIOLATION_CONTEXT_NOT_ACCEPTED: _abort("PDV on a context that was not accepted"),
    V.VIOLATION_CONTEXT_CHANGED: _abort("message switches context midway"),
    V.VIOLATION_COMMAND_WHILE_DATASET_EXPECTED: _abort("command while a data set is due"),
    V.VIOLATION_DATASET_WITHOUT_COMMAND: _abort("data set PDV that no command announced"),
    V.VIOLATION_DATASET_NOT_ALLOWED: _abort("C-ECHO, C-STORE-RSP or C-CANCEL-RQ announcing a data set"),
    V.VIOLATION_MESSAGE_ID_IN_USE: _abort("Message ID of a request still unanswered: answers ambiguous"),
    V.VIOLATION_UNSOLICITED_RESPONSE: _abort("response to no outstanding request of the other side (PS3.7 9.1)"),
    V.VIOLATION_PDU_EXCEEDS_NEGOTIATED_MAX: _abort("PDU over the receiver's Maximum Length (PS3.8 D.1)"),
    V.VIOLATION_CONTEXT_NOT_PROPOSED: _tolerate("the requestor cannot use a context it never proposed"),
    V.VIOLATION_TRANSFER_SYNTAX_NOT_PROPOSED: _abort("accepted transfer syntax never proposed"),
    DATA_BEFORE_AC: _abort("over one PDU of data before the A-ASSOCIATE-AC"),
})

#: The codes the relay's decoder reports as warnings instead of raising.
TOLERATED: Final[frozenset[str]] = frozenset(code for code, c in VIOLATIONS.items() if c.tolerated)


def classify(code: str) -> Classification:
    """The handling of *code*; a code not in the table (none should be) aborts."""
    return VIOLATIONS.get(code) or _abort("unclassified code")


def tolerated_apart(
        events: list[V.ProtocolEvent]) -> tuple[list[V.ProtocolEvent], list[V.ProtocolWarning | V.ProtocolViolation]]:
    """The decoder's events for one PDU split into those to act on and the tolerated deviations
    (warnings, and the violations `TOLERATED` lets pass), each in its order."""
    if not any(type(ev) is V.ProtocolWarning or type(ev) is V.ProtocolViolation for ev in events):
        return events, []  # the usual case, on every PDU: nothing to sort
    kept: list[V.ProtocolEvent] = []
    tolerated: list[V.ProtocolWarning | V.ProtocolViolation] = []
    for ev in events:
        if isinstance(ev, V.ProtocolWarning) or (isinstance(ev, V.ProtocolViolation) and ev.code in TOLERATED):
            tolerated.append(ev)
        else:
            kept.append(ev)
    return kept, tolerated


def violation_event(route: str, code: str, message: str, *, sender: str, state: str, actor: Party,
                    target: Party) -> Event:
    """``dicom.protocol.violation``: what ``sender`` ("client" or "upstream") broke; the
    association is aborted after it."""
    return Event(kind="dicom.protocol.violation", component="gateway", severity=Severity.WARNING,
                 outcome=Outcome.SERIOUS_FAILURE, actor=actor, target=target, message=f"{code}: {message}",
                 details={"route": route, "code": code, "from": sender, "state": state})


def warning_event(route: str, code: str, message: str, *, sender: str, state: str, actor: Party, target: Party,
                  handled: str) -> Event:
    """``dicom.protocol.warning``: a tolerated deviation of ``sender``; ``handled`` says what became
    of the bytes ("passed on" by a relay, "tolerated" where the gateway is the receiver)."""
    return Event(kind="dicom.protocol.warning", component="gateway", severity=Severity.NOTICE,
                 outcome=Outcome.SUCCESS, actor=actor, target=target,
                 message=f"{code} from {sender}, {handled}: {message}",
                 details={"route": route, "code": code, "from": sender, "state": state,
                          "reason": classify(code).reason})
