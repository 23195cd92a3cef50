"""Protocol events emitted by :class:`~pacsguard.dicom.association.AssociationDecoder`.

Events describe what the peers *did* (PS3.8 9.2 service primitives as seen on
the wire); ``ProtocolViolation`` describes what they did wrong.  They are plain
immutable data so that the gateway, the IDS and the audit trail can share them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias, Union

from .dataset import DatasetPeek
from .dimse import CommandSet
from .pdu import AssociateAC, AssociateRJ, AssociateRQ


@dataclass(slots=True, frozen=True)
class AssociationRequested:
    """A-ASSOCIATE-RQ received from the requestor (PS3.8 9.3.2)."""

    rq: AssociateRQ


@dataclass(slots=True, frozen=True)
class AssociationAccepted:
    """A-ASSOCIATE-AC received from the acceptor (PS3.8 9.3.3)."""

    ac: AssociateAC


@dataclass(slots=True, frozen=True)
class AssociationRejected:
    """A-ASSOCIATE-RJ received from the acceptor (PS3.8 9.3.4)."""

    rj: AssociateRJ


@dataclass(slots=True, frozen=True)
class ReleaseRequested:
    """A-RELEASE-RQ (PS3.8 9.3.6); both sides may send one (release collision)."""

    from_requestor: bool


@dataclass(slots=True, frozen=True)
class ReleaseCompleted:
    """Every A-RELEASE-RQ has been answered by an A-RELEASE-RP (PS3.8 9.3.7)."""


@dataclass(slots=True, frozen=True)
class Aborted:
    """A-ABORT (PS3.8 9.3.8) with its source and reason/diag fields."""

    from_requestor: bool
    source: int
    reason: int


@dataclass(slots=True, frozen=True)
class DimseCommand:
    """A complete DIMSE command set (PS3.7 6.3.1).

    Emitted before any data set PDV of the message, so that an inline gateway
    can refuse the request before the data set is forwarded.  ``abstract_syntax``
    and ``transfer_syntax`` are None when the context is unknown (mid-stream
    capture or a context that was never accepted).
    """

    from_requestor: bool
    context_id: int
    abstract_syntax: str | None
    transfer_syntax: str | None
    command: CommandSet


@dataclass(slots=True, frozen=True)
class DimseDatasetStart:
    """The identifiers of a data set, from its first fragment(s).

    ``message_id`` is the Message ID of the request the data set belongs to (PS3.7 9.1.1): its own
    for a request's data set, the Message ID Being Responded To for a response's (a C-FIND match).
    ``response`` tells the two apart: each side numbers its own requests, so on an association where
    the acceptor sends requests too (C-GET sub-operations, an N-EVENT-REPORT, PS3.7 D.3.3.3 with
    asynchronous operations) the same number can name a request of either side."""

    from_requestor: bool
    context_id: int
    message_id: int | None
    peek: DatasetPeek
    response: bool = False


@dataclass(slots=True, frozen=True)
class DimseDatasetEnd:
    """The last fragment of a data set was seen; *total_bytes* is its encoded size; ``message_id``
    and ``response`` as in DimseDatasetStart."""

    from_requestor: bool
    message_id: int | None
    total_bytes: int
    response: bool = False


@dataclass(slots=True, frozen=True)
class ProtocolViolation:
    """A PDU that is well-formed but not allowed here (PS3.8 9.2 state table).

    The decoder keeps going; the caller decides whether to A-ABORT.
    """

    from_requestor: bool
    code: str
    message: str


@dataclass(slots=True, frozen=True)
class ProtocolWarning:
    """A deviation the decoder was asked to step over (``AssociationDecoder(tolerate=...)``):
    bookkeeping the peers ignore, such as a wrong Command Group Length (PS3.7 E.1) or a reserved
    field that is not zero (PS3.8 9.3.1: not tested on receipt).  ``code`` is a DecodeError code.
    """

    from_requestor: bool
    code: str
    message: str


ProtocolEvent: TypeAlias = Union[
    AssociationRequested,
    AssociationAccepted,
    AssociationRejected,
    ReleaseRequested,
    ReleaseCompleted,
    Aborted,
    DimseCommand,
    DimseDatasetStart,
    DimseDatasetEnd,
    ProtocolViolation,
    ProtocolWarning,
]


# ProtocolViolation codes (stable, like the DecodeError codes).
VIOLATION_UNEXPECTED_PDU = "unexpected-pdu"
VIOLATION_DATA_BEFORE_ASSOCIATION = "data-before-association"
VIOLATION_DATA_AFTER_RELEASE = "data-after-release"
VIOLATION_DATA_AFTER_CLOSE = "data-after-close"
VIOLATION_CONTEXT_NOT_ACCEPTED = "context-not-accepted"
VIOLATION_CONTEXT_CHANGED = "context-changed-mid-message"
VIOLATION_COMMAND_WHILE_DATASET_EXPECTED = "command-while-dataset-expected"
VIOLATION_DATASET_WITHOUT_COMMAND = "dataset-without-command"
#: A command that takes no data set announcing one (PS3.7 9.3: C-ECHO, C-STORE-RSP, C-CANCEL-RQ).
VIOLATION_DATASET_NOT_ALLOWED = "dataset-not-allowed"
#: A request whose Message ID is that of a request of the same sender still unanswered (PS3.7 9.1.1).
VIOLATION_MESSAGE_ID_IN_USE = "message-id-in-use"
#: A response answering no request of the other side still outstanding (PS3.7 9.1, 9.3): no Message ID
#: Being Responded To that the other side sent as a request of that command and is still waiting on.
VIOLATION_UNSOLICITED_RESPONSE = "unsolicited-response"
VIOLATION_PDU_EXCEEDS_NEGOTIATED_MAX = "pdu-exceeds-negotiated-max"
VIOLATION_CONTEXT_NOT_PROPOSED = "context-not-proposed"
VIOLATION_TRANSFER_SYNTAX_NOT_PROPOSED = "transfer-syntax-not-proposed"
