"""DIMSE command sets: decoding, encoding and responses (PS3.7 6.3.1, 9.3, 10.3, Annex C, E.1).

A command set is a group 0000 data set, always Implicit VR Little Endian
(PS3.7 6.3.1): tag (4), value length (4), value.  Only the elements of PS3.7
Table E.1-1 are interpreted; unknown group 0000 elements are kept raw in
``CommandSet.other``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from . import errors as E
from .errors import DecodeError, Tolerate
from .pdu import Buffer

# --------------------------------------------------------------------------
# Command Field values (PS3.7 E.1, Table E.1-1 and 9.3 / 10.3)
# --------------------------------------------------------------------------
C_STORE_RQ: Final = 0x0001
C_STORE_RSP: Final = 0x8001
C_GET_RQ: Final = 0x0010
C_GET_RSP: Final = 0x8010
C_FIND_RQ: Final = 0x0020
C_FIND_RSP: Final = 0x8020
C_MOVE_RQ: Final = 0x0021
C_MOVE_RSP: Final = 0x8021
C_ECHO_RQ: Final = 0x0030
C_ECHO_RSP: Final = 0x8030
N_EVENT_REPORT_RQ: Final = 0x0100
N_EVENT_REPORT_RSP: Final = 0x8100
N_GET_RQ: Final = 0x0110
N_GET_RSP: Final = 0x8110
N_SET_RQ: Final = 0x0120
N_SET_RSP: Final = 0x8120
N_ACTION_RQ: Final = 0x0130
N_ACTION_RSP: Final = 0x8130
N_CREATE_RQ: Final = 0x0140
N_CREATE_RSP: Final = 0x8140
N_DELETE_RQ: Final = 0x0150
N_DELETE_RSP: Final = 0x8150
C_CANCEL_RQ: Final = 0x0FFF

#: Bit set in the Command Field of every response (PS3.7 E.1).
RESPONSE_BIT: Final = 0x8000

COMMAND_NAMES: Final = MappingProxyType(
    {
        C_STORE_RQ: "C-STORE-RQ",
        C_STORE_RSP: "C-STORE-RSP",
        C_GET_RQ: "C-GET-RQ",
        C_GET_RSP: "C-GET-RSP",
        C_FIND_RQ: "C-FIND-RQ",
        C_FIND_RSP: "C-FIND-RSP",
        C_MOVE_RQ: "C-MOVE-RQ",
        C_MOVE_RSP: "C-MOVE-RSP",
        C_ECHO_RQ: "C-ECHO-RQ",
        C_ECHO_RSP: "C-ECHO-RSP",
        N_EVENT_REPORT_RQ: "N-EVENT-REPORT-RQ",
        N_EVENT_REPORT_RSP: "N-EVENT-REPORT-RSP",
        N_GET_RQ: "N-GET-RQ",
        N_GET_RSP: "N-GET-RSP",
        N_SET_RQ: "N-SET-RQ",
        N_SET_RSP: "N-SET-RSP",
        N_ACTION_RQ: "N-ACTION-RQ",
        N_ACTION_RSP: "N-ACTION-RSP",
        N_CREATE_RQ: "N-CREATE-RQ",
        N_CREATE_RSP: "N-CREATE-RSP",
        N_DELETE_RQ: "N-DELETE-RQ",
        N_DELETE_RSP: "N-DELETE-RSP",
        C_CANCEL_RQ: "C-CANCEL-RQ",
    }
)

# --------------------------------------------------------------------------
# Status codes (PS3.7 Annex C, PS3.4 service class specific tables)
# --------------------------------------------------------------------------
STATUS_SUCCESS: Final = 0x0000
STATUS_PENDING: Final = 0xFF00
STATUS_PENDING_WARNING: Final = 0xFF01
STATUS_CANCEL: Final = 0xFE00
STATUS_WARNING: Final = 0x0001
STATUS_SOP_CLASS_NOT_SUPPORTED: Final = 0x0122
STATUS_NOT_AUTHORIZED: Final = 0x0124
STATUS_OUT_OF_RESOURCES: Final = 0xA700
STATUS_MOVE_DESTINATION_UNKNOWN: Final = 0xA801
STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS: Final = 0xA900
STATUS_CANNOT_UNDERSTAND: Final = 0xC000
STATUS_UNRECOGNIZED_OPERATION: Final = 0x0211
STATUS_PROCESSING_FAILURE: Final = 0x0110

#: Command Data Set Type value meaning "no data set" (PS3.7 E.1).
NO_DATASET: Final = 0x0101

#: Largest command set accepted.  Real ones are a few hundred bytes; the bound keeps
#: a peer from growing the assembly buffer without limit.
MAX_COMMAND_SET_LENGTH: Final = 64 * 1024

_ELEMENT_HEADER = struct.Struct("<HHI")
_US = struct.Struct("<H")
_UL = struct.Struct("<I")

# Tag -> (CommandSet attribute, VR, max value length) for PS3.7 Table E.1-1.
_US_VR, _UL_VR, _UI_VR, _AE_VR, _LO_VR = "US", "UL", "UI", "AE", "LO"
_KNOWN: Final = MappingProxyType(
    {
        0x00000000: ("group_length", _UL_VR),
        0x00000002: ("affected_sop_class_uid", _UI_VR),
        0x00000003: ("requested_sop_class_uid", _UI_VR),
        0x00000100: ("command_field", _US_VR),
        0x00000110: ("message_id", _US_VR),
        0x00000120: ("message_id_being_responded_to", _US_VR),
        0x00000600: ("move_destination", _AE_VR),
        0x00000700: ("priority", _US_VR),
        0x00000800: ("command_data_set_type", _US_VR),
        0x00000900: ("status", _US_VR),
        0x00000902: ("error_comment", _LO_VR),
        0x00000903: ("error_id", _US_VR),
        0x00001000: ("affected_sop_instance_uid", _UI_VR),
        0x00001001: ("requested_sop_instance_uid", _UI_VR),
        0x00001002: ("event_type_id", _US_VR),
        0x00001008: ("action_type_id", _US_VR),
        0x00001020: ("remaining_suboperations", _US_VR),
        0x00001021: ("completed_suboperations", _US_VR),
        0x00001022: ("failed_suboperations", _US_VR),
        0x00001023: ("warning_suboperations", _US_VR),
        0x00001030: ("move_originator_ae", _AE_VR),
        0x00001031: ("move_originator_message_id", _US_VR),
    }
)
_MAX_TEXT: Final = MappingProxyType({_UI_VR: 64, _AE_VR: 16, _LO_VR: 64})


def command_name(command_field: int) -> str:
    """``0x0001 -> "C-STORE-RQ"``; unknown values give ``"UNKNOWN-0xNNNN"``."""
    return COMMAND_NAMES.get(command_field, f"UNKNOWN-0x{command_field:04X}")


def status_category(status: int) -> str:
    """Classify a DIMSE status (PS3.7 Annex C).

    0000 success; FF00/FF01 pending; FE00 cancel; 0001, 0107, 0116 and Bxxx
    warning; everything else (Axxx, Cxxx, 01xx, 02xx and values the standard does
    not define) is treated as failure, which is the safe reading for a gateway.
    """
    if status == STATUS_SUCCESS:
        return "success"
    if status in (STATUS_PENDING, STATUS_PENDING_WARNING):
        return "pending"
    if status == STATUS_CANCEL:
        return "cancel"
    if status in (0x0001, 0x0107, 0x0116) or 0xB000 <= status <= 0xBFFF:
        return "warning"
    return "failure"


@dataclass(slots=True)
class CommandSet:
    """A decoded DIMSE command set (PS3.7 E.1, Table E.1-1).

    ``None`` means the element was absent.  ``other`` holds group 0000 elements
    this class does not model (e.g. Offending Element, Attribute Identifier
    List) as raw values keyed by tag.
    """

    command_field: int
    message_id: int | None = None
    message_id_being_responded_to: int | None = None
    affected_sop_class_uid: str | None = None
    requested_sop_class_uid: str | None = None
    affected_sop_instance_uid: str | None = None
    requested_sop_instance_uid: str | None = None
    priority: int | None = None
    command_data_set_type: int = NO_DATASET
    status: int | None = None
    move_destination: str | None = None
    move_originator_ae: str | None = None
    move_originator_message_id: int | None = None
    remaining_suboperations: int | None = None
    completed_suboperations: int | None = None
    failed_suboperations: int | None = None
    warning_suboperations: int | None = None
    error_comment: str | None = None
    error_id: int | None = None
    event_type_id: int | None = None
    action_type_id: int | None = None
    other: dict[int, bytes] = field(default_factory=dict)

    @property
    def has_dataset(self) -> bool:
        """A data set follows unless Command Data Set Type is 0101H (PS3.7 E.1)."""
        return self.command_data_set_type != NO_DATASET

    @property
    def is_response(self) -> bool:
        return bool(self.command_field & RESPONSE_BIT)

    @property
    def is_request(self) -> bool:
        return not self.command_field & RESPONSE_BIT

    @property
    def name(self) -> str:
        return command_name(self.command_field)

    @property
    def sop_class_uid(self) -> str | None:
        """Affected SOP Class UID, or Requested SOP Class UID for N-GET/SET/ACTION/DELETE."""
        return self.affected_sop_class_uid or self.requested_sop_class_uid

    @property
    def sop_instance_uid(self) -> str | None:
        return self.affected_sop_instance_uid or self.requested_sop_instance_uid

    @property
    def correlation_id(self) -> int | None:
        """Message ID of a request, Message ID Being Responded To of a response."""
        return self.message_id_being_responded_to if self.is_response else self.message_id


def _text(value: bytes, vr: str, tag: int, offset: int) -> str:
    if vr == _LO_VR:
        # Error Comment is free text; some stacks put non-ASCII in it. Never fail on it.
        return value.decode("latin-1").strip(" \x00")
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        raise DecodeError(
            E.COMMAND_ELEMENT_NOT_ASCII,
            f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {vr} value {value[:70]!r} is not ASCII",
            offset,
        ) from None
    # UI is padded with NUL, AE with spaces (PS3.5 6.2); strip both for tolerance.
    text = text.strip(" \x00")
    if len(text) > _MAX_TEXT[vr]:
        raise DecodeError(
            E.COMMAND_ELEMENT_BAD_LENGTH,
            f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {vr} value is {len(text)} characters, "
            f"more than {_MAX_TEXT[vr]}",
            offset,
        )
    return text


def decode_command_set(
    data: Buffer, *, require_group_length: bool = True, tolerate: Tolerate | None = None
) -> CommandSet:
    """Decode an Implicit VR Little Endian command set (PS3.7 6.3.1, E.1).

    Validates: every element is in group 0000 and in strictly ascending order
    (PS3.5 7.1), no value runs past the end, US/UL values have their exact size,
    UI/AE values are ASCII, Command Group Length (0000,0000) is present (unless
    *require_group_length* is False) and equals the bytes that follow it, and
    Command Field and Command Data Set Type are present.

    *tolerate* is offered two deviations peers live with, and decoding goes on
    when it returns True (otherwise the error is raised): elements of later
    groups after the group 0000 that the Command Group Length delimits (Orthanc
    puts a C-GET-RSP's Failed SOP Instance UID List there; they are not part of
    the command), and a Command Group Length that does not match (the elements
    delimit themselves; the group length is bookkeeping only).
    """
    size = len(data)
    if size > MAX_COMMAND_SET_LENGTH:
        raise DecodeError(
            E.COMMAND_SET_TOO_LARGE,
            f"command set of {size} bytes exceeds the limit of {MAX_COMMAND_SET_LENGTH}",
            None,
        )
    values: dict[str, object] = {}
    other: dict[int, bytes] = {}
    pos = 0
    previous = -1
    group_length: int | None = None
    group_end = -1  # where the Command Group Length says group 0000 ends
    mismatch: DecodeError | None = None  # a wrong group length, offered to *tolerate* at the end
    while pos < size:
        if size - pos < 8:
            raise DecodeError(
                E.COMMAND_ELEMENT_TRUNCATED,
                f"{size - pos} trailing byte(s), too short for an 8-byte element header",
                pos,
            )
        group, element, length = _ELEMENT_HEADER.unpack_from(data, pos)
        tag = (group << 16) | element
        if group != 0:
            if tolerate is not None and pos == group_end and _elements_fit(data, pos):
                trailing = DecodeError(
                    E.COMMAND_SET_TRAILING_ELEMENTS,
                    f"{size - pos} bytes of elements from ({group:04X},{element:04X}) on follow "
                    "the command group its group length delimits; not part of the command",
                    pos,
                )
                if tolerate(trailing):
                    mismatch = None  # the group length was right about group 0000
                    break
            raise DecodeError(
                E.COMMAND_SET_INVALID,
                f"element ({group:04X},{element:04X}) is not in command group 0000",
                pos,
            )
        if tag <= previous:
            raise DecodeError(
                E.COMMAND_ELEMENT_ORDER,
                f"element (0000,{element:04X}) follows (0000,{previous & 0xFFFF:04X}); "
                "elements must be unique and ascending",
                pos,
            )
        previous = tag
        start = pos + 8
        end = start + length
        if end > size:
            raise DecodeError(
                E.COMMAND_ELEMENT_TRUNCATED,
                f"element (0000,{element:04X}) announces {length} bytes but only "
                f"{size - start} remain",
                pos + 4,
            )
        known = _KNOWN.get(tag)
        if known is None:
            other[tag] = bytes(data[start:end])
        else:
            attr, vr = known
            if vr == _US_VR or vr == _UL_VR:
                width = 2 if vr == _US_VR else 4
                if length != width:
                    raise DecodeError(
                        E.COMMAND_ELEMENT_BAD_LENGTH,
                        f"element (0000,{element:04X}) {vr} has length {length}, expected {width}",
                        pos + 4,
                    )
                value: object = (_US if width == 2 else _UL).unpack_from(data, start)[0]
            else:
                value = _text(bytes(data[start:end]), vr, tag, start)
            if tag == 0:
                group_length = value  # type: ignore[assignment]
                group_end = end + group_length
                if group_length != size - end:
                    mismatch = DecodeError(
                        E.COMMAND_GROUP_LENGTH_MISMATCH,
                        f"Command Group Length (0000,0000) says {group_length} bytes but "
                        f"{size - end} bytes follow it",
                        start,
                    )
                    if tolerate is None:
                        raise mismatch
            else:
                values[attr] = value
        pos = end
    if mismatch is not None and (tolerate is None or not tolerate(mismatch)):
        raise mismatch
    if group_length is None and require_group_length:
        raise DecodeError(
            E.COMMAND_SET_INVALID,
            "Command Group Length (0000,0000) is missing (PS3.7 E.1: required)",
            0,
        )
    for attr, tag_name in (
        ("command_field", "Command Field (0000,0100)"),
        ("command_data_set_type", "Command Data Set Type (0000,0800)"),
    ):
        if attr not in values:
            raise DecodeError(E.COMMAND_SET_INVALID, f"{tag_name} is missing", None)
    return CommandSet(other=other, **values)  # type: ignore[arg-type]


def _elements_fit(data: Buffer, pos: int) -> bool:
    """Do ``data[pos:]`` split into whole elements of groups after 0000, in ascending order?
    (Implicit VR Little Endian, PS3.5 7.1.3: no undefined lengths in a command set.)"""
    size = len(data)
    previous = 0xFFFF
    while pos < size:
        if size - pos < 8:
            return False
        group, element, length = _ELEMENT_HEADER.unpack_from(data, pos)
        tag = (group << 16) | element
        if tag <= previous or pos + 8 + length > size:
            return False
        previous = tag
        pos += 8 + length
    return True


def _pad(raw: bytes, pad: bytes) -> bytes:
    # PS3.5 7.1.1: values have even length; UI pads with NUL, text VRs with space.
    return raw + pad if len(raw) % 2 else raw


def encode_command_set(command: CommandSet) -> bytes:
    """Encode *command* as Implicit VR Little Endian, group length first, tags ascending (PS3.7 E.1)."""
    elements: list[tuple[int, bytes]] = []
    for tag, (attr, vr) in _KNOWN.items():
        if tag == 0:
            continue
        value = getattr(command, attr)
        if value is None:
            continue
        if vr == _US_VR:
            raw = _US.pack(value)
        elif vr == _UL_VR:
            raw = _UL.pack(value)
        elif vr == _UI_VR:
            raw = _pad(value.encode("ascii"), b"\x00")
        else:
            raw = _pad(value.encode("ascii" if vr == _AE_VR else "latin-1"), b" ")
        elements.append((tag, raw))
    for tag, raw in command.other.items():
        if tag >> 16 != 0 or tag == 0 or tag in _KNOWN:
            raise ValueError(f"other[{tag:#010x}] is not an unmodelled group 0000 element")
        elements.append((tag, bytes(raw)))
    elements.sort()
    body = b"".join(
        _ELEMENT_HEADER.pack(0, tag & 0xFFFF, len(raw)) + raw for tag, raw in elements
    )
    return _ELEMENT_HEADER.pack(0, 0, 4) + _UL.pack(len(body)) + body


def _ascii_comment(text: str) -> str:
    # Error Comment is LO: at most 64 characters; keep it to the default repertoire.
    return text.encode("ascii", "replace").decode("ascii")[:64]


def has_response(request: CommandSet) -> bool:
    """Whether *request* can be answered with :func:`response_for` (PS3.7 9.3, 10.3): a known
    request other than C-CANCEL-RQ, carrying a Message ID."""
    field_ = request.command_field
    return (not field_ & RESPONSE_BIT and field_ != C_CANCEL_RQ and field_ in COMMAND_NAMES
            and request.message_id is not None)


def response_for(
    request: CommandSet, status: int, *, error_comment: str | None = None
) -> bytes:
    """Encode the -RSP command set answering *request* with *status* (PS3.7 9.3, 10.3).

    The response echoes the SOP Class / Instance UIDs (Requested ones become the
    Affected ones for N-GET/SET/ACTION/DELETE), sets Message ID Being Responded
    To and Command Data Set Type 0101H (the gateway never sends a data set with
    a refusal).  C-MOVE/C-GET responses carry zero sub-operation counts.
    Raises ``ValueError`` for a response or C-CANCEL-RQ, which have no response.
    """
    field_ = request.command_field
    if field_ & RESPONSE_BIT or field_ == C_CANCEL_RQ or field_ not in COMMAND_NAMES:
        raise ValueError(f"{command_name(field_)} has no response message")
    if request.message_id is None:
        raise ValueError(f"{command_name(field_)} has no Message ID to respond to")
    response = CommandSet(
        command_field=field_ | RESPONSE_BIT,
        command_data_set_type=NO_DATASET,
        message_id_being_responded_to=request.message_id,
        status=status,
        error_comment=_ascii_comment(error_comment) if error_comment else None,
    )
    response.affected_sop_class_uid = request.sop_class_uid
    if field_ in (C_STORE_RQ, N_EVENT_REPORT_RQ, N_GET_RQ, N_SET_RQ, N_ACTION_RQ, N_CREATE_RQ, N_DELETE_RQ):
        response.affected_sop_instance_uid = request.sop_instance_uid
    if field_ in (C_MOVE_RQ, C_GET_RQ):
        response.remaining_suboperations = 0
        response.completed_suboperations = 0
        response.failed_suboperations = 0
        response.warning_suboperations = 0
    if field_ == N_EVENT_REPORT_RQ:
        response.event_type_id = request.event_type_id
    if field_ == N_ACTION_RQ:
        response.action_type_id = request.action_type_id
    return encode_command_set(response)
