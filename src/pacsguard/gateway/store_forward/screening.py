"""What a C-STORE-RQ must be before a store-and-forward route spools it: a request the route could
forward as received. Each test runs once per object, on the command (PS3.7 9.1.1.1) and on the
first bytes of its data set, never per PDV; what fails is refused with a failure status and an
Error Comment (0000,0902) naming the problem (PS3.7 Annex C), and recorded as
`gateway.object.refused` (check ``reception``). A forwarded copy of such an object would have
failed at the destination for ever (docs/gateway.md, "What is refused at reception").

The transfer syntax test reads one data element header (PS3.5 7.1.2, 7.1.3): in an explicit VR
syntax bytes 4-5 are a VR of PS3.5 Table 6.2-1; in Implicit VR Little Endian they are the low half
of a 32-bit length, which spells a VR only for an element longer than 16 KiB whose length happens
to read as one (a data set's first element is a short one of group 0008). The rest of the data
set is not decoded: the scanner, when the route runs it, reads the whole object."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from pacsguard.dicom import dimse
from pacsguard.dicom.dataset import DatasetPeek, peek_identifiers, transfer_syntax_encoding
from pacsguard.dicom.dimse import CommandSet
from pacsguard.dicom.vr import VRS
from pacsguard.gateway.store_forward.structure import Flaw

CHECK = "reception"  # `check` of the refusal's event
#: Bytes of a data set read back, once it is whole, when its first fragments did not reach its SOP
#: Instance UID (`unseen_identity`): group 0008 comes first (PS3.5 7.1), so only a data set built
#: to hide the UID behind long elements takes that read, and one hiding it further is refused.
DEEP: Final = 16 * 1024 * 1024
HEADER: Final = 8  # bytes of a data element header read (tag, VR or length, PS3.5 7.1.2)
# PS3.7 Annex C: a failure status a C-STORE SCP may give for a request it cannot take.
STATUS_INVALID_ARGUMENT_VALUE: Final = 0x0115

# A file meta element (group 0002) some senders leave in the data set is Explicit VR Little Endian
# in any transfer syntax (PS3.10 7.1): not a sign of the data set's own encoding.
META_GROUP: Final = b"\x02\x00"

#: The value representations of PS3.5 Table 6.2-1, as the two bytes an explicit VR header holds.
VR_BYTES: Final = frozenset(vr.encode() for vr in VRS)


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a C-STORE is refused at reception: the status, the rule and reason of its event, and
    the Error Comment of its C-STORE-RSP (LO: at most 64 characters, PS3.5 6.2)."""

    status: int
    rule: str
    reason: str
    comment: str


def command_problem(command: CommandSet) -> Problem | None:
    """Affected SOP Class UID and Affected SOP Instance UID are mandatory in a C-STORE-RQ (PS3.7
    9.1.1.1, Table 9.1-1): the object is filed, proposed and asked about under them. An empty one
    is answered 0x0122 (SOP class not supported, PS3.7 Annex C) or 0x0115 (invalid argument
    value: the instance), not 0xA900, which says the data set is at fault."""
    if not command.affected_sop_class_uid:
        return Problem(dimse.STATUS_SOP_CLASS_NOT_SUPPORTED, "c-store.affected-sop-class-uid",
                       "the C-STORE-RQ has no Affected SOP Class UID (PS3.7 9.1.1.1)",
                       "Affected SOP Class UID missing")
    if not command.affected_sop_instance_uid:
        return Problem(STATUS_INVALID_ARGUMENT_VALUE, "c-store.affected-sop-instance-uid",
                       "the C-STORE-RQ has no Affected SOP Instance UID (PS3.7 9.1.1.1)",
                       "Affected SOP Instance UID missing")
    return None


def dataset_problem(command: CommandSet, transfer_syntax: str | None, first: bytes, size: int,
                    peek: DatasetPeek) -> Problem | None:
    """The data set as far as its first fragments show it: ``first`` its first `HEADER` bytes (or
    all of it, when shorter), ``size`` the bytes received so far, ``peek`` the decoder's look at its
    identifiers. Refused with 0xC000 (cannot understand, PS3.4 B.2.3): no data set at all, one in
    another transfer syntax than the presentation context's, or one whose SOP Instance UID
    (0008,0018) is not the command's Affected SOP Instance UID (PS3.4 B.2.2, PS3.7 9.1.1.1.4).
    One whose SOP Class UID (0008,0016) is not the command's Affected SOP Class UID is refused
    with 0xA900 (data set does not match SOP class, PS3.4 B.2.3): it would be filed, and
    forwarded, under a class it is not."""
    if size < HEADER:
        what = "empty" if size == 0 else f"{size} bytes, shorter than one data element"
        return Problem(dimse.STATUS_CANNOT_UNDERSTAND, "c-store.data-set-empty",
                       f"the C-STORE-RQ announced a data set but it is {what}", "data set empty")
    problem = encoding_problem(first, transfer_syntax)
    if problem is not None:
        return problem
    return identity_problem(command, peek)


def identity_problem(command: CommandSet, peek: DatasetPeek) -> Problem | None:
    """The data set's SOP Instance and SOP Class UIDs, where ``peek`` found them, against the
    command's Affected ones (PS3.4 B.2.2, B.2.3)."""
    theirs, ours = peek.sop_instance_uid, command.affected_sop_instance_uid
    if theirs and theirs != ours:
        return Problem(dimse.STATUS_CANNOT_UNDERSTAND, "c-store.sop-instance-mismatch",
                       f"the data set's SOP Instance UID {theirs} is not the Affected SOP Instance UID {ours} "
                       "of the C-STORE-RQ (PS3.4 B.2.2)", "SOP Instance UID differs from the command's")
    theirs, ours = peek.sop_class_uid, command.affected_sop_class_uid
    if theirs and theirs != ours:
        return Problem(dimse.STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS, "c-store.sop-class-mismatch",
                       f"the data set's SOP Class UID {theirs} is not the Affected SOP Class UID {ours} "
                       "of the C-STORE-RQ (PS3.4 B.2.3)", "SOP Class UID differs from the command's")
    return None


def unseen_identity(command: CommandSet, peek: DatasetPeek | None) -> bool:
    """Whether the decoder's look at the data set's first fragments stopped before its SOP Instance
    UID: a walk that ended (complete) found none, so there is nothing more to see."""
    return peek is not None and not peek.sop_instance_uid and not peek.complete and bool(
        command.affected_sop_instance_uid)


def whole_problem(command: CommandSet, transfer_syntax: str | None, data: bytes, size: int) -> Problem | None:
    """The identity of a data set whose first fragments did not show it (`unseen_identity`), from
    its first ``len(data)`` bytes read back (of ``size``): a SOP Instance UID hidden past 64 KiB
    behind long elements went through unchecked, and the destination filed the object under
    another UID than the gateway's records and spool."""
    peek = peek_identifiers(data, transfer_syntax, final=len(data) == size)
    problem = identity_problem(command, peek)
    if problem is None and not peek.sop_instance_uid and not peek.complete:
        # Where the walk stopped says why: at a limit of its own (a flood of headers, deep nesting,
        # a repeated element) or past the bytes read back.
        where = (f"the walk of its first {len(data):,} bytes (of {size:,}) stopped at offset "
                 f"{peek.bytes_examined:,}: {peek.anomaly}" if peek.anomaly
                 else f"it is not within its first {len(data):,} bytes (of {size:,})")
        return Problem(dimse.STATUS_CANNOT_UNDERSTAND, "c-store.sop-instance-unseen",
                       f"the data set's SOP Instance UID (0008,0018) was not read: {where}; it cannot be "
                       "checked against the command's", "SOP Instance UID not found")
    return problem


def encoding_problem(first: bytes, transfer_syntax: str | None) -> Problem | None:
    """Whether the first data element header reads in ``transfer_syntax`` (PS3.5 7.1.2 explicit,
    7.1.3 implicit). Deflated data (PS3.5 A.5), an unknown syntax and a first element of group
    0002 are not looked at."""
    implicit, _, deflated = transfer_syntax_encoding(transfer_syntax)
    if implicit is None or deflated or len(first) < HEADER or first[:2] == META_GROUP:
        return None
    spelled = first[4:6] in VR_BYTES
    if spelled is not implicit:
        return None
    found, agreed = ("Explicit VR", "Implicit VR") if implicit else ("Implicit VR", "Explicit VR")
    return Problem(dimse.STATUS_CANNOT_UNDERSTAND, "c-store.transfer-syntax",
                   f"the data set is encoded in {found}, not in the presentation context's transfer syntax "
                   f"{transfer_syntax} ({agreed}, PS3.5 7.1)", f"data set not in {agreed}")


def structure_problem(flaw: Flaw) -> Problem:
    """A whole data set that does not hold together (structure.walk_file, PS3.5 7.1, 7.5): refused
    with 0xC000 (cannot understand, PS3.4 B.2.3), as dcmtk's storescp and Orthanc refuse it; an
    acknowledged one could never be delivered."""
    return Problem(dimse.STATUS_CANNOT_UNDERSTAND, "c-store.data-set-structure",
                   f"the data set does not hold together at byte {flaw.offset:,}: {flaw.reason}",
                   f"data set malformed at byte {flaw.offset}"[:64])
