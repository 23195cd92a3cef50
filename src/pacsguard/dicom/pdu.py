"""DICOM Upper Layer PDUs: parsing and encoding (PS3.8 9.3, Annex D; PS3.7 D.3.3).

All multi-byte PDU fields are big endian (PS3.8 9.3.1).  Every parser takes the
complete PDU *including* its 6-byte header, validates every length it reads
against the bytes actually present (a length field is never trusted), and raises
only :class:`~pacsguard.dicom.errors.DecodeError`.  Encoders raise ``ValueError``
when asked to encode something the standard cannot represent (an AE title longer
than 16 characters, an item longer than 65535 bytes ...).

P-DATA-TF parsing is zero-copy: each PDV value is a ``memoryview`` slice of the
PDU buffer, so a relay can inspect PDV headers and forward the PDU unchanged.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Generic, Iterable, TypeAlias, TypeVar, Union

from . import errors as E
from .errors import DecodeError
from .uids import DICOM_APPLICATION_CONTEXT

Buffer: TypeAlias = Union[bytes, bytearray, memoryview]

# --------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------

# PDU types (PS3.8 9.3.1, Table 9-1 ... 9-26)
PDU_ASSOCIATE_RQ: Final = 0x01
PDU_ASSOCIATE_AC: Final = 0x02
PDU_ASSOCIATE_RJ: Final = 0x03
PDU_P_DATA_TF: Final = 0x04
PDU_RELEASE_RQ: Final = 0x05
PDU_RELEASE_RP: Final = 0x06
PDU_ABORT: Final = 0x07

PDU_TYPE_NAMES: Final = MappingProxyType(
    {
        PDU_ASSOCIATE_RQ: "A-ASSOCIATE-RQ",
        PDU_ASSOCIATE_AC: "A-ASSOCIATE-AC",
        PDU_ASSOCIATE_RJ: "A-ASSOCIATE-RJ",
        PDU_P_DATA_TF: "P-DATA-TF",
        PDU_RELEASE_RQ: "A-RELEASE-RQ",
        PDU_RELEASE_RP: "A-RELEASE-RP",
        PDU_ABORT: "A-ABORT",
    }
)

PDU_HEADER_LENGTH: Final = 6
#: Fixed part of A-ASSOCIATE-RQ/AC after the header: protocol version (2),
#: reserved (2), called AE (16), calling AE (16), reserved (32) - PS3.8 9.3.2.
ASSOCIATE_FIXED_LENGTH: Final = 68
#: Offset of the variable items in an A-ASSOCIATE-RQ/AC PDU.
ASSOCIATE_ITEMS_OFFSET: Final = PDU_HEADER_LENGTH + ASSOCIATE_FIXED_LENGTH
CALLED_AE_OFFSET: Final = 10
CALLING_AE_OFFSET: Final = 26
AE_TITLE_LENGTH: Final = 16
#: PDU-length of A-ASSOCIATE-RJ, A-RELEASE-RQ/RP and A-ABORT (PS3.8 9.3.4, 9.3.6-9.3.8).
FIXED_PDU_LENGTH: Final = 4
#: Smallest P-DATA-TF PDU-length: one PDV item header with an empty value (PS3.8 9.3.5).
MIN_P_DATA_TF_LENGTH: Final = 6

# Item types (PS3.8 9.3.2.1 - 9.3.3.3, Annex D; PS3.7 D.3.3)
ITEM_APPLICATION_CONTEXT: Final = 0x10
ITEM_PRESENTATION_CONTEXT_RQ: Final = 0x20
ITEM_PRESENTATION_CONTEXT_AC: Final = 0x21
ITEM_ABSTRACT_SYNTAX: Final = 0x30
ITEM_TRANSFER_SYNTAX: Final = 0x40
ITEM_USER_INFORMATION: Final = 0x50
SUB_ITEM_MAXIMUM_LENGTH: Final = 0x51
SUB_ITEM_IMPLEMENTATION_CLASS_UID: Final = 0x52
SUB_ITEM_ASYNC_OPERATIONS_WINDOW: Final = 0x53
SUB_ITEM_ROLE_SELECTION: Final = 0x54
SUB_ITEM_IMPLEMENTATION_VERSION_NAME: Final = 0x55
SUB_ITEM_SOP_CLASS_EXTENDED_NEGOTIATION: Final = 0x56
SUB_ITEM_SOP_CLASS_COMMON_EXTENDED_NEGOTIATION: Final = 0x57
SUB_ITEM_USER_IDENTITY_RQ: Final = 0x58
SUB_ITEM_USER_IDENTITY_AC: Final = 0x59
#: Every item and sub-item type PS3.8 9.3 and PS3.7 D.3.3 define.  A type outside this set is
#: "unrecognised": PS3.8 9.3.1 has a receiver ignore and skip it.  A defined type in the wrong
#: place (a user information sub-item inside a presentation context ...) is still an error.
KNOWN_ITEM_TYPES: Final = frozenset(
    {
        ITEM_APPLICATION_CONTEXT,
        ITEM_PRESENTATION_CONTEXT_RQ,
        ITEM_PRESENTATION_CONTEXT_AC,
        ITEM_ABSTRACT_SYNTAX,
        ITEM_TRANSFER_SYNTAX,
        ITEM_USER_INFORMATION,
        *range(SUB_ITEM_MAXIMUM_LENGTH, SUB_ITEM_USER_IDENTITY_AC + 1),
    }
)

# Presentation context result/reason (PS3.8 9.3.3.2, Table 9-18)
PC_ACCEPTANCE: Final = 0
PC_USER_REJECTION: Final = 1
PC_NO_REASON: Final = 2
PC_ABSTRACT_SYNTAX_NOT_SUPPORTED: Final = 3
PC_TRANSFER_SYNTAXES_NOT_SUPPORTED: Final = 4

# A-ASSOCIATE-RJ (PS3.8 9.3.4, Table 9-21)
RJ_RESULT_PERMANENT: Final = 1
RJ_RESULT_TRANSIENT: Final = 2
RJ_SOURCE_SERVICE_USER: Final = 1
RJ_SOURCE_SERVICE_PROVIDER_ACSE: Final = 2
RJ_SOURCE_SERVICE_PROVIDER_PRESENTATION: Final = 3
RJ_REASON_USER_NO_REASON: Final = 1
RJ_REASON_USER_APPLICATION_CONTEXT_NOT_SUPPORTED: Final = 2
RJ_REASON_USER_CALLING_AE_NOT_RECOGNIZED: Final = 3
RJ_REASON_USER_CALLED_AE_NOT_RECOGNIZED: Final = 7
RJ_REASON_ACSE_NO_REASON: Final = 1
RJ_REASON_ACSE_PROTOCOL_VERSION_NOT_SUPPORTED: Final = 2
RJ_REASON_PRESENTATION_TEMPORARY_CONGESTION: Final = 1
RJ_REASON_PRESENTATION_LOCAL_LIMIT_EXCEEDED: Final = 2

# A-ABORT (PS3.8 9.3.8, Table 9-26)
ABORT_SOURCE_SERVICE_USER: Final = 0
ABORT_SOURCE_SERVICE_PROVIDER: Final = 2
ABORT_REASON_NOT_SPECIFIED: Final = 0
ABORT_REASON_UNRECOGNIZED_PDU: Final = 1
ABORT_REASON_UNEXPECTED_PDU: Final = 2
ABORT_REASON_UNRECOGNIZED_PDU_PARAMETER: Final = 4
ABORT_REASON_UNEXPECTED_PDU_PARAMETER: Final = 5
ABORT_REASON_INVALID_PDU_PARAMETER_VALUE: Final = 6

# User identity types (PS3.7 D.3.3.7, Table D.3-14)
USER_IDENTITY_USERNAME: Final = 1
USER_IDENTITY_USERNAME_AND_PASSCODE: Final = 2
USER_IDENTITY_KERBEROS: Final = 3
USER_IDENTITY_SAML: Final = 4
USER_IDENTITY_JWT: Final = 5

# Sanity limits.  Presentation context IDs are odd integers 1..255 (PS3.8
# 9.3.2.2), hence at most 128 contexts; the others bound the work a hostile
# A-ASSOCIATE-RQ can cause and are far above anything a real AE sends.
MAX_PRESENTATION_CONTEXTS: Final = 128
MAX_TRANSFER_SYNTAXES_PER_CONTEXT: Final = 128
MAX_USER_INFORMATION_SUB_ITEMS: Final = 1024
MAX_RELATED_GENERAL_SOP_CLASSES: Final = 256
MAX_UID_LENGTH: Final = 64
MAX_IMPLEMENTATION_VERSION_NAME_LENGTH: Final = 16

_HEADER = struct.Struct(">BBI")
_ITEM_HEADER = struct.Struct(">BBH")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_PDV_HEADER = struct.Struct(">IBB")
_FIXED_PDU = struct.Struct(">BBIBBBB")

# A UID in a PDU is ISO 646 digits and '.' (PS3.8 Annex F); we accept any
# printable non-space ASCII so that a sloppy-but-harmless peer still decodes,
# and leave semantic checks to policy.
_PRINTABLE_TOKEN = re.compile(rb"[\x21-\x7e]*")
# AE titles: default character repertoire without control characters or
# backslash (PS3.5 6.2, VR AE); spaces are allowed inside.
_AE_CHARS = re.compile(rb"[\x20-\x5b\x5d-\x7e]*")


# --------------------------------------------------------------------------
# Data classes
# --------------------------------------------------------------------------


@dataclass(slots=True)
class PresentationContextRQ:
    """Presentation Context Item of an A-ASSOCIATE-RQ (PS3.8 9.3.2.2)."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: list[str]


@dataclass(slots=True)
class PresentationContextAC:
    """Presentation Context Item of an A-ASSOCIATE-AC (PS3.8 9.3.3.2).

    ``transfer_syntax`` is ``None`` when the context was not accepted and the
    Transfer Syntax sub-item was absent or empty: PS3.8 Table 9-18 says its value
    "shall not be tested" in that case.
    """

    context_id: int
    result: int
    transfer_syntax: str | None

    @property
    def accepted(self) -> bool:
        return self.result == PC_ACCEPTANCE


@dataclass(slots=True)
class MaximumLength:
    """Maximum Length sub-item 0x51 (PS3.8 D.1).

    Maximum PDU-length of the P-DATA-TF PDUs the sender is willing to receive;
    0 means no limit.
    """

    value: int


@dataclass(slots=True)
class ImplementationClassUID:
    """Implementation Class UID sub-item 0x52 (PS3.7 D.3.3.2)."""

    uid: str


@dataclass(slots=True)
class ImplementationVersionName:
    """Implementation Version Name sub-item 0x55 (PS3.7 D.3.3.2)."""

    name: str


@dataclass(slots=True)
class AsyncOperationsWindow:
    """Asynchronous Operations Window sub-item 0x53 (PS3.7 D.3.3.3)."""

    max_operations_invoked: int
    max_operations_performed: int


@dataclass(slots=True)
class RoleSelection:
    """SCP/SCU Role Selection sub-item 0x54 (PS3.7 D.3.3.4)."""

    sop_class_uid: str
    scu_role: int
    scp_role: int


@dataclass(slots=True)
class SOPClassExtendedNegotiation:
    """SOP Class Extended Negotiation sub-item 0x56 (PS3.7 D.3.3.5)."""

    sop_class_uid: str
    application_information: bytes


@dataclass(slots=True)
class SOPClassCommonExtendedNegotiation:
    """SOP Class Common Extended Negotiation sub-item 0x57 (PS3.7 D.3.3.6)."""

    sop_class_uid: str
    service_class_uid: str
    related_general_sop_classes: list[str] = field(default_factory=list)
    sub_item_version: int = 0


def _redacted(value: bytes) -> str:
    return f"<{len(value)} bytes>"


@dataclass(slots=True, repr=False)
class UserIdentityRQ:
    """User Identity Negotiation sub-item 0x58, request (PS3.7 D.3.3.7.1).

    ``repr`` never shows the fields: they carry passcodes, Kerberos tickets,
    SAML assertions or JWTs, and events end up in logs.
    """

    identity_type: int
    positive_response_requested: int  # 1 requested, 0 not (PS3.7 D.3.3.7.1); kept as sent
    primary_field: bytes
    secondary_field: bytes = b""

    def __repr__(self) -> str:
        return (
            f"UserIdentityRQ(identity_type={self.identity_type}, "
            f"positive_response_requested={self.positive_response_requested}, "
            f"primary_field={_redacted(self.primary_field)}, "
            f"secondary_field={_redacted(self.secondary_field)})"
        )


@dataclass(slots=True, repr=False)
class UserIdentityAC:
    """User Identity Negotiation sub-item 0x59, accept (PS3.7 D.3.3.7.2).

    ``repr`` hides the server response (it may be a Kerberos/SAML token).
    """

    server_response: bytes

    def __repr__(self) -> str:
        return f"UserIdentityAC(server_response={_redacted(self.server_response)})"


@dataclass(slots=True)
class UnknownSubItem:
    """An item or user information sub-item of a type this decoder does not know, kept verbatim
    (PS3.8 9.3.1: ignored and skipped by the receiver)."""

    item_type: int
    data: bytes


UserInfoSubItem: TypeAlias = Union[
    MaximumLength,
    ImplementationClassUID,
    ImplementationVersionName,
    AsyncOperationsWindow,
    RoleSelection,
    SOPClassExtendedNegotiation,
    SOPClassCommonExtendedNegotiation,
    UserIdentityRQ,
    UserIdentityAC,
    UnknownSubItem,
]


@dataclass(slots=True)
class UserInformation:
    """User Information item 0x50 (PS3.8 9.3.2.3, 9.3.3.3).

    Sub-items are kept in wire order so that a decoded PDU re-encodes to the
    same bytes; the properties give typed access.
    """

    items: list[UserInfoSubItem] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        *,
        max_length: int | None = None,
        implementation_class_uid: str | None = None,
        implementation_version_name: str | None = None,
        async_operations_window: AsyncOperationsWindow | None = None,
        role_selections: Iterable[RoleSelection] = (),
        extended_negotiations: Iterable[SOPClassExtendedNegotiation] = (),
        common_extended_negotiations: Iterable[SOPClassCommonExtendedNegotiation] = (),
        user_identity: UserIdentityRQ | UserIdentityAC | None = None,
    ) -> UserInformation:
        """Assemble the sub-items in the customary order (PS3.7 D.3.3)."""
        items: list[UserInfoSubItem] = []
        if max_length is not None:
            items.append(MaximumLength(max_length))
        if implementation_class_uid is not None:
            items.append(ImplementationClassUID(implementation_class_uid))
        if implementation_version_name is not None:
            items.append(ImplementationVersionName(implementation_version_name))
        if async_operations_window is not None:
            items.append(async_operations_window)
        items.extend(role_selections)
        items.extend(extended_negotiations)
        items.extend(common_extended_negotiations)
        if user_identity is not None:
            items.append(user_identity)
        return cls(items)

    def _first(self, kind: type) -> object | None:
        for item in self.items:
            if isinstance(item, kind):
                return item
        return None

    @property
    def max_length(self) -> int | None:
        item = self._first(MaximumLength)
        return item.value if isinstance(item, MaximumLength) else None

    @property
    def implementation_class_uid(self) -> str | None:
        item = self._first(ImplementationClassUID)
        return item.uid if isinstance(item, ImplementationClassUID) else None

    @property
    def implementation_version_name(self) -> str | None:
        item = self._first(ImplementationVersionName)
        return item.name if isinstance(item, ImplementationVersionName) else None

    @property
    def async_operations_window(self) -> AsyncOperationsWindow | None:
        item = self._first(AsyncOperationsWindow)
        return item if isinstance(item, AsyncOperationsWindow) else None

    @property
    def role_selections(self) -> list[RoleSelection]:
        return [i for i in self.items if isinstance(i, RoleSelection)]

    @property
    def extended_negotiations(self) -> list[SOPClassExtendedNegotiation]:
        return [i for i in self.items if isinstance(i, SOPClassExtendedNegotiation)]

    @property
    def common_extended_negotiations(self) -> list[SOPClassCommonExtendedNegotiation]:
        return [i for i in self.items if isinstance(i, SOPClassCommonExtendedNegotiation)]

    @property
    def user_identity(self) -> UserIdentityRQ | UserIdentityAC | None:
        for item in self.items:
            if isinstance(item, (UserIdentityRQ, UserIdentityAC)):
                return item
        return None

    @property
    def unknown(self) -> list[UnknownSubItem]:
        return [i for i in self.items if isinstance(i, UnknownSubItem)]


_Context = TypeVar("_Context", PresentationContextRQ, PresentationContextAC)


class _AssociateFields(Generic[_Context]):
    """What A-ASSOCIATE-RQ and -AC share (PS3.8 9.3.2, 9.3.3): the Maximum Length sub-item and
    lookup of a presentation context by its ID."""

    __slots__ = ()
    user_information: UserInformation | None
    presentation_contexts: list[_Context]

    @property
    def max_length(self) -> int | None:
        """Maximum P-DATA-TF PDU-length the sender accepts (0 = unlimited)."""
        return self.user_information.max_length if self.user_information else None

    def context(self, context_id: int) -> _Context | None:
        for pc in self.presentation_contexts:
            if pc.context_id == context_id:
                return pc
        return None


@dataclass(slots=True)
class AssociateRQ(_AssociateFields[PresentationContextRQ]):
    """A-ASSOCIATE-RQ PDU (PS3.8 9.3.2)."""

    called_ae_title: str
    calling_ae_title: str
    presentation_contexts: list[PresentationContextRQ]
    user_information: UserInformation | None = None
    application_context_name: str = DICOM_APPLICATION_CONTEXT
    protocol_version: int = 1
    #: Items of unrecognised types (PS3.8 9.3.1), in wire order: decoded, never acted on.
    unknown_items: list[UnknownSubItem] = field(default_factory=list)


@dataclass(slots=True)
class AssociateAC(_AssociateFields[PresentationContextAC]):
    """A-ASSOCIATE-AC PDU (PS3.8 9.3.3).

    ``called_ae_title``/``calling_ae_title`` are the reserved fields that PS3.8
    says "shall be sent with a value identical to" the RQ's and "shall not be
    tested when received"; they are decoded leniently for information only.
    """

    called_ae_title: str
    calling_ae_title: str
    presentation_contexts: list[PresentationContextAC]
    user_information: UserInformation | None = None
    application_context_name: str = DICOM_APPLICATION_CONTEXT
    protocol_version: int = 1
    #: Items of unrecognised types (PS3.8 9.3.1), in wire order: decoded, never acted on.
    unknown_items: list[UnknownSubItem] = field(default_factory=list)


@dataclass(slots=True)
class AssociateRJ:
    """A-ASSOCIATE-RJ PDU (PS3.8 9.3.4): result, source and reason/diag."""

    result: int
    source: int
    reason: int


@dataclass(slots=True)
class PDV:
    """Presentation Data Value item (PS3.8 9.3.5.1, Annex E.2).

    ``value`` is the PDV payload without the message control header; when
    parsed it is a zero-copy ``memoryview`` into the PDU.
    """

    context_id: int
    is_command: bool
    is_last: bool
    value: Buffer

    @property
    def message_control_header(self) -> int:
        return (1 if self.is_command else 0) | (2 if self.is_last else 0)


@dataclass(slots=True)
class PDataTF:
    """P-DATA-TF PDU (PS3.8 9.3.5)."""

    pdvs: list[PDV]


@dataclass(slots=True)
class ReleaseRQ:
    """A-RELEASE-RQ PDU (PS3.8 9.3.6)."""


@dataclass(slots=True)
class ReleaseRP:
    """A-RELEASE-RP PDU (PS3.8 9.3.7)."""


@dataclass(slots=True)
class Abort:
    """A-ABORT PDU (PS3.8 9.3.8): source and reason/diag."""

    source: int = ABORT_SOURCE_SERVICE_USER
    reason: int = ABORT_REASON_NOT_SPECIFIED


ParsedPDU: TypeAlias = Union[
    AssociateRQ, AssociateAC, AssociateRJ, PDataTF, ReleaseRQ, ReleaseRP, Abort
]


# --------------------------------------------------------------------------
# Decoding helpers
# --------------------------------------------------------------------------


def _check_header(buf: Buffer, expected: int, *, strict: bool) -> int:
    """Validate the 6-byte header of *buf* against *expected*; return PDU-length."""
    name = PDU_TYPE_NAMES[expected]
    size = len(buf)
    if size < PDU_HEADER_LENGTH:
        raise DecodeError(
            E.TRUNCATED_PDU,
            f"{name}: {size} bytes is shorter than the {PDU_HEADER_LENGTH}-byte PDU header",
            0,
        )
    length: int
    pdu_type, reserved, length = _HEADER.unpack_from(buf, 0)
    if pdu_type != expected:
        got = PDU_TYPE_NAMES.get(pdu_type, "unknown")
        raise DecodeError(
            E.UNEXPECTED_PDU,
            f"expected {name} (type 0x{expected:02X}) but PDU type is 0x{pdu_type:02X} ({got})",
            0,
        )
    if length != size - PDU_HEADER_LENGTH:
        raise DecodeError(
            E.PDU_LENGTH_MISMATCH,
            f"{name}: PDU-length field announces {length} bytes but {size - PDU_HEADER_LENGTH} "
            "bytes follow the header",
            2,
        )
    if strict and reserved != 0:
        raise DecodeError(
            E.RESERVED_FIELD_NONZERO, f"{name}: reserved header byte is 0x{reserved:02X}", 1
        )
    return length


def _items(
    buf: Buffer, start: int, end: int, where: str
) -> list[tuple[int, int, int, int]]:
    """Split ``buf[start:end]`` into items (PS3.8 9.3.1: type, reserved, 2-byte length).

    Returns ``(item_type, value_start, value_end, item_offset)`` per item.
    """
    out: list[tuple[int, int, int, int]] = []
    pos = start
    while pos < end:
        if end - pos < 4:
            raise DecodeError(
                E.TRUNCATED_ITEM,
                f"{where}: {end - pos} trailing byte(s), too short for a 4-byte item header",
                pos,
            )
        item_type, _, length = _ITEM_HEADER.unpack_from(buf, pos)
        value_start = pos + 4
        value_end = value_start + length
        if value_end > end:
            raise DecodeError(
                E.TRUNCATED_ITEM,
                f"{where}: item 0x{item_type:02X} announces {length} bytes but only "
                f"{end - value_start} remain in the enclosing field",
                pos + 2,
            )
        out.append((item_type, value_start, value_end, pos))
        pos = value_end
    return out


def _uid(buf: Buffer, start: int, end: int, what: str, *, allow_empty: bool = False) -> str:
    """Decode a UID field (PS3.8 Annex F); tolerate the trailing NUL/space some stacks add."""
    raw = bytes(buf[start:end]).rstrip(b"\x00 ")
    if not raw and not allow_empty:
        raise DecodeError(E.BAD_UID, f"{what} is empty", start)
    if len(raw) > MAX_UID_LENGTH:
        raise DecodeError(
            E.BAD_UID, f"{what} is {len(raw)} characters long, more than {MAX_UID_LENGTH}", start
        )
    if _PRINTABLE_TOKEN.fullmatch(raw) is None:
        raise DecodeError(E.BAD_UID, f"{what} contains non-printable bytes {raw[:70]!r}", start)
    return raw.decode("ascii")


def _ae_title(buf: Buffer, offset: int, what: str, *, lenient: bool) -> str:
    """Decode a 16-byte AE title field (PS3.8 9.3.2): strip padding spaces (and NULs)."""
    raw = bytes(buf[offset : offset + AE_TITLE_LENGTH])
    if lenient:
        # A-ASSOCIATE-AC echo fields "shall not be tested" (PS3.8 9.3.3).
        return raw.decode("ascii", "replace").strip(" \x00")
    stripped = raw.strip(b" \x00")
    if _AE_CHARS.fullmatch(stripped) is None:
        raise DecodeError(
            E.BAD_AE_TITLE, f"{what} contains bytes outside the AE character set: {raw!r}", offset
        )
    return stripped.decode("ascii")


def _check_context_id(context_id: int, offset: int) -> None:
    # PS3.8 9.3.2.2: "an odd integer between 1 and 255"
    if context_id % 2 == 0:
        raise DecodeError(
            E.BAD_CONTEXT_ID,
            f"presentation context ID {context_id} is not an odd integer 1..255",
            offset,
        )


def _parse_pc_rq(buf: Buffer, start: int, end: int, item_offset: int) -> PresentationContextRQ:
    if end - start < 4:
        raise DecodeError(
            E.BAD_ITEM_LENGTH,
            f"presentation context item length {end - start} is shorter than its 4 fixed bytes",
            item_offset + 2,
        )
    context_id = buf[start]
    _check_context_id(context_id, start)
    where = f"presentation context {context_id}"
    abstract: str | None = None
    transfer: list[str] = []
    for sub_type, s, e, off in _items(buf, start + 4, end, where):
        if sub_type == ITEM_ABSTRACT_SYNTAX:
            if abstract is not None:
                raise DecodeError(E.DUPLICATE_ITEM, f"{where}: second abstract syntax sub-item", off)
            abstract = _uid(buf, s, e, f"{where} abstract syntax")
        elif sub_type == ITEM_TRANSFER_SYNTAX:
            if len(transfer) >= MAX_TRANSFER_SYNTAXES_PER_CONTEXT:
                raise DecodeError(
                    E.TOO_MANY_ITEMS,
                    f"{where}: more than {MAX_TRANSFER_SYNTAXES_PER_CONTEXT} transfer syntaxes",
                    off,
                )
            transfer.append(_uid(buf, s, e, f"{where} transfer syntax"))
        elif sub_type not in KNOWN_ITEM_TYPES:
            continue  # PS3.8 9.3.1, 9.3.2.2: a sub-item of an unrecognised type is ignored
        else:
            raise DecodeError(
                E.UNEXPECTED_ITEM, f"{where}: unexpected sub-item type 0x{sub_type:02X}", off
            )
    if abstract is None:
        raise DecodeError(E.MISSING_ITEM, f"{where} has no abstract syntax sub-item", item_offset)
    if not transfer:
        raise DecodeError(E.MISSING_ITEM, f"{where} has no transfer syntax sub-item", item_offset)
    return PresentationContextRQ(context_id, abstract, transfer)


def _parse_pc_ac(buf: Buffer, start: int, end: int, item_offset: int) -> PresentationContextAC:
    if end - start < 4:
        raise DecodeError(
            E.BAD_ITEM_LENGTH,
            f"presentation context item length {end - start} is shorter than its 4 fixed bytes",
            item_offset + 2,
        )
    context_id = buf[start]
    result = buf[start + 2]
    _check_context_id(context_id, start)
    where = f"presentation context {context_id}"
    transfer: str | None = None
    seen = False
    for sub_type, s, e, off in _items(buf, start + 4, end, where):
        if sub_type not in KNOWN_ITEM_TYPES:
            continue  # PS3.8 9.3.1, 9.3.3.2: a sub-item of an unrecognised type is ignored
        if sub_type != ITEM_TRANSFER_SYNTAX:
            raise DecodeError(
                E.UNEXPECTED_ITEM, f"{where}: unexpected sub-item type 0x{sub_type:02X}", off
            )
        if seen:
            raise DecodeError(E.DUPLICATE_ITEM, f"{where}: second transfer syntax sub-item", off)
        seen = True
        if result == PC_ACCEPTANCE:
            transfer = _uid(buf, s, e, f"{where} transfer syntax")
        else:
            # Not significant for a rejected context: keep it if readable, never fail on it.
            try:
                transfer = _uid(buf, s, e, f"{where} transfer syntax", allow_empty=True) or None
            except DecodeError:
                transfer = None
    if result == PC_ACCEPTANCE and transfer is None:
        raise DecodeError(
            E.MISSING_ITEM, f"accepted {where} has no transfer syntax sub-item", item_offset
        )
    return PresentationContextAC(context_id, result, transfer)


def _exact(length: int, expected: int, what: str, offset: int) -> None:
    if length != expected:
        raise DecodeError(
            E.BAD_ITEM_LENGTH,
            f"{what}: item length is {length}, expected {expected}",
            offset + 2,
        )


def _parse_role_selection(buf: Buffer, s: int, e: int, off: int) -> RoleSelection:
    what = "SCP/SCU role selection sub-item"
    if e - s < 2:
        raise DecodeError(E.BAD_ITEM_LENGTH, f"{what}: item length {e - s} < 2", off + 2)
    uid_len = _U16.unpack_from(buf, s)[0]
    _exact(e - s, 2 + uid_len + 2, f"{what} with UID length {uid_len}", off)
    uid = _uid(buf, s + 2, s + 2 + uid_len, f"{what} SOP class UID")
    return RoleSelection(uid, buf[e - 2], buf[e - 1])


def _parse_extended(buf: Buffer, s: int, e: int, off: int) -> SOPClassExtendedNegotiation:
    what = "SOP class extended negotiation sub-item"
    if e - s < 2:
        raise DecodeError(E.BAD_ITEM_LENGTH, f"{what}: item length {e - s} < 2", off + 2)
    uid_len = _U16.unpack_from(buf, s)[0]
    if 2 + uid_len > e - s:
        raise DecodeError(
            E.BAD_ITEM_LENGTH,
            f"{what}: SOP class UID length {uid_len} exceeds item length {e - s}",
            s,
        )
    uid = _uid(buf, s + 2, s + 2 + uid_len, f"{what} SOP class UID")
    return SOPClassExtendedNegotiation(uid, bytes(buf[s + 2 + uid_len : e]))


def _parse_common_extended(
    buf: Buffer, s: int, e: int, off: int
) -> SOPClassCommonExtendedNegotiation:
    what = "SOP class common extended negotiation sub-item"
    pos = s
    fields: list[tuple[int, int]] = []
    # Three length-prefixed fields: SOP class UID, service class UID, related id list.
    for name in ("SOP class UID", "service class UID", "related general SOP class list"):
        if e - pos < 2:
            raise DecodeError(
                E.BAD_ITEM_LENGTH, f"{what}: no room for the {name} length field", pos
            )
        length = _U16.unpack_from(buf, pos)[0]
        if pos + 2 + length > e:
            raise DecodeError(
                E.BAD_ITEM_LENGTH,
                f"{what}: {name} length {length} exceeds the {e - pos - 2} bytes left",
                pos,
            )
        fields.append((pos + 2, pos + 2 + length))
        pos += 2 + length
    if pos != e:
        raise DecodeError(
            E.BAD_ITEM_LENGTH, f"{what}: {e - pos} unexplained trailing byte(s)", pos
        )
    sop = _uid(buf, *fields[0], f"{what} SOP class UID")
    service = _uid(buf, *fields[1], f"{what} service class UID")
    related: list[str] = []
    rpos, rend = fields[2]
    while rpos < rend:
        if len(related) >= MAX_RELATED_GENERAL_SOP_CLASSES:
            raise DecodeError(E.TOO_MANY_ITEMS, f"{what}: too many related SOP classes", rpos)
        if rend - rpos < 2:
            raise DecodeError(E.TRUNCATED_ITEM, f"{what}: truncated related UID length", rpos)
        length = _U16.unpack_from(buf, rpos)[0]
        if rpos + 2 + length > rend:
            raise DecodeError(
                E.TRUNCATED_ITEM,
                f"{what}: related UID length {length} exceeds the {rend - rpos - 2} bytes left",
                rpos,
            )
        related.append(_uid(buf, rpos + 2, rpos + 2 + length, f"{what} related SOP class UID"))
        rpos += 2 + length
    return SOPClassCommonExtendedNegotiation(sop, service, related, buf[off + 1])


def _parse_user_identity_rq(buf: Buffer, s: int, e: int, off: int) -> UserIdentityRQ:
    what = "user identity (RQ) sub-item"
    if e - s < 6:
        raise DecodeError(E.BAD_ITEM_LENGTH, f"{what}: item length {e - s} < 6", off + 2)
    identity_type = buf[s]
    positive = buf[s + 1]
    primary_len = _U16.unpack_from(buf, s + 2)[0]
    pos = s + 4 + primary_len
    if pos + 2 > e:
        raise DecodeError(
            E.BAD_ITEM_LENGTH,
            f"{what}: primary field length {primary_len} exceeds item length {e - s}",
            s + 2,
        )
    secondary_len = _U16.unpack_from(buf, pos)[0]
    _exact(e - s, 6 + primary_len + secondary_len, f"{what} with field lengths "
           f"{primary_len}/{secondary_len}", off)
    return UserIdentityRQ(
        identity_type, positive, bytes(buf[s + 4 : pos]), bytes(buf[pos + 2 : e])
    )


def _parse_user_identity_ac(buf: Buffer, s: int, e: int, off: int) -> UserIdentityAC:
    what = "user identity (AC) sub-item"
    if e - s < 2:
        raise DecodeError(E.BAD_ITEM_LENGTH, f"{what}: item length {e - s} < 2", off + 2)
    length = _U16.unpack_from(buf, s)[0]
    _exact(e - s, 2 + length, f"{what} with server response length {length}", off)
    return UserIdentityAC(bytes(buf[s + 2 : e]))


_SINGLE_SUB_ITEMS: Final = frozenset(
    {
        SUB_ITEM_MAXIMUM_LENGTH,
        SUB_ITEM_IMPLEMENTATION_CLASS_UID,
        SUB_ITEM_IMPLEMENTATION_VERSION_NAME,
        SUB_ITEM_ASYNC_OPERATIONS_WINDOW,
        SUB_ITEM_USER_IDENTITY_RQ,
        SUB_ITEM_USER_IDENTITY_AC,
    }
)


def _parse_user_information(
    buf: Buffer, start: int, end: int, *, request: bool
) -> UserInformation:
    items: list[UserInfoSubItem] = []
    seen: set[int] = set()
    # Role selection and extended negotiation: one sub-item per SOP class each (PS3.7 D.3.3.4-6).
    per_class: set[tuple[int, str]] = set()
    wrong_identity = SUB_ITEM_USER_IDENTITY_AC if request else SUB_ITEM_USER_IDENTITY_RQ
    for sub_type, s, e, off in _items(buf, start, end, "user information item"):
        if len(items) >= MAX_USER_INFORMATION_SUB_ITEMS:
            raise DecodeError(
                E.TOO_MANY_ITEMS,
                f"user information: more than {MAX_USER_INFORMATION_SUB_ITEMS} sub-items",
                off,
            )
        if sub_type in _SINGLE_SUB_ITEMS:
            if sub_type in seen:
                raise DecodeError(
                    E.DUPLICATE_ITEM,
                    f"user information: sub-item 0x{sub_type:02X} appears more than once",
                    off,
                )
            seen.add(sub_type)
        item: UserInfoSubItem
        if sub_type == SUB_ITEM_MAXIMUM_LENGTH:
            _exact(e - s, 4, "maximum length sub-item", off)
            item = MaximumLength(_U32.unpack_from(buf, s)[0])
        elif sub_type == SUB_ITEM_IMPLEMENTATION_CLASS_UID:
            item = ImplementationClassUID(_uid(buf, s, e, "implementation class UID"))
        elif sub_type == SUB_ITEM_IMPLEMENTATION_VERSION_NAME:
            raw = bytes(buf[s:e]).rstrip(b"\x00 ")
            if len(raw) > MAX_IMPLEMENTATION_VERSION_NAME_LENGTH or _AE_CHARS.fullmatch(raw) is None:
                raise DecodeError(
                    E.BAD_ITEM_VALUE,
                    f"implementation version name {raw[:40]!r} is not 1-16 printable characters",
                    s,
                )
            item = ImplementationVersionName(raw.decode("ascii"))
        elif sub_type == SUB_ITEM_ASYNC_OPERATIONS_WINDOW:
            _exact(e - s, 4, "asynchronous operations window sub-item", off)
            item = AsyncOperationsWindow(
                _U16.unpack_from(buf, s)[0], _U16.unpack_from(buf, s + 2)[0]
            )
        elif sub_type == SUB_ITEM_ROLE_SELECTION:
            item = _parse_role_selection(buf, s, e, off)
        elif sub_type == SUB_ITEM_SOP_CLASS_EXTENDED_NEGOTIATION:
            item = _parse_extended(buf, s, e, off)
        elif sub_type == SUB_ITEM_SOP_CLASS_COMMON_EXTENDED_NEGOTIATION:
            item = _parse_common_extended(buf, s, e, off)
        elif sub_type == wrong_identity:
            pdu = "A-ASSOCIATE-RQ" if request else "A-ASSOCIATE-AC"
            raise DecodeError(
                E.UNEXPECTED_ITEM, f"user identity sub-item 0x{sub_type:02X} in an {pdu}", off
            )
        elif sub_type == SUB_ITEM_USER_IDENTITY_RQ:
            item = _parse_user_identity_rq(buf, s, e, off)
        elif sub_type == SUB_ITEM_USER_IDENTITY_AC:
            item = _parse_user_identity_ac(buf, s, e, off)
        else:
            # PS3.7 D.3.3: unknown sub-items are ignored by receivers; keep them so
            # the IDS can report them and re-encoding stays faithful.
            item = UnknownSubItem(sub_type, bytes(buf[s:e]))
        if isinstance(item, (RoleSelection, SOPClassExtendedNegotiation, SOPClassCommonExtendedNegotiation)):
            key = (sub_type, item.sop_class_uid)
            if key in per_class:  # two answers for one class: peers may act on different ones
                raise DecodeError(
                    E.DUPLICATE_ITEM,
                    f"user information: sub-item 0x{sub_type:02X} appears more than once for SOP class "
                    f"{item.sop_class_uid}",
                    off,
                )
            per_class.add(key)
        items.append(item)
    return UserInformation(items)


def _parse_associate(buf: Buffer, request: bool, strict: bool) -> AssociateRQ | AssociateAC:
    pdu_type = PDU_ASSOCIATE_RQ if request else PDU_ASSOCIATE_AC
    name = PDU_TYPE_NAMES[pdu_type]
    length = _check_header(buf, pdu_type, strict=strict)
    if length < ASSOCIATE_FIXED_LENGTH:
        raise DecodeError(
            E.BAD_PDU_LENGTH,
            f"{name}: PDU-length {length} is shorter than the {ASSOCIATE_FIXED_LENGTH}-byte fixed part",
            2,
        )
    version = _U16.unpack_from(buf, 6)[0]
    called = _ae_title(buf, CALLED_AE_OFFSET, "called AE title", lenient=not request)
    calling = _ae_title(buf, CALLING_AE_OFFSET, "calling AE title", lenient=not request)
    app_context: str | None = None
    contexts_rq: list[PresentationContextRQ] = []
    contexts_ac: list[PresentationContextAC] = []
    context_ids: set[int] = set()
    user_info: UserInformation | None = None
    unknown: list[UnknownSubItem] = []
    pc_type = ITEM_PRESENTATION_CONTEXT_RQ if request else ITEM_PRESENTATION_CONTEXT_AC
    for item_type, s, e, off in _items(buf, ASSOCIATE_ITEMS_OFFSET, len(buf), name):
        if item_type == ITEM_APPLICATION_CONTEXT:
            if app_context is not None:
                raise DecodeError(E.DUPLICATE_ITEM, f"{name}: second application context item", off)
            app_context = _uid(buf, s, e, "application context name")
        elif item_type == pc_type:
            if len(context_ids) >= MAX_PRESENTATION_CONTEXTS:
                raise DecodeError(
                    E.TOO_MANY_PRESENTATION_CONTEXTS,
                    f"{name}: more than {MAX_PRESENTATION_CONTEXTS} presentation contexts",
                    off,
                )
            if request:
                pc_rq = _parse_pc_rq(buf, s, e, off)
                context_id = pc_rq.context_id
                contexts_rq.append(pc_rq)
            else:
                pc_ac = _parse_pc_ac(buf, s, e, off)
                context_id = pc_ac.context_id
                contexts_ac.append(pc_ac)
            if context_id in context_ids:
                raise DecodeError(
                    E.DUPLICATE_CONTEXT_ID,
                    f"{name}: presentation context ID {context_id} used twice",
                    s,
                )
            context_ids.add(context_id)
        elif item_type == ITEM_USER_INFORMATION:
            if user_info is not None:
                raise DecodeError(E.DUPLICATE_ITEM, f"{name}: second user information item", off)
            user_info = _parse_user_information(buf, s, e, request=request)
        elif item_type not in KNOWN_ITEM_TYPES:
            # PS3.8 9.3.1: "ignored and skipped"; kept so a record or the IDS can report it.
            if len(unknown) >= MAX_USER_INFORMATION_SUB_ITEMS:
                raise DecodeError(E.TOO_MANY_ITEMS, f"{name}: more than {len(unknown)} unrecognised items", off)
            unknown.append(UnknownSubItem(item_type, bytes(buf[s:e])))
        else:
            raise DecodeError(
                E.UNEXPECTED_ITEM, f"{name}: unexpected item type 0x{item_type:02X}", off
            )
    if app_context is None:
        raise DecodeError(E.MISSING_ITEM, f"{name} has no application context item", None)
    if request:
        if not contexts_rq:
            raise DecodeError(E.MISSING_ITEM, f"{name} proposes no presentation context", None)
        return AssociateRQ(called, calling, contexts_rq, user_info, app_context, version, unknown)
    return AssociateAC(called, calling, contexts_ac, user_info, app_context, version, unknown)


def _parse_fixed(buf: Buffer, pdu_type: int, strict: bool) -> tuple[int, int, int, int]:
    """Header + 4 bytes of A-ASSOCIATE-RJ / A-RELEASE-RQ/RP / A-ABORT (PS3.8 9.3.4, 9.3.6-8)."""
    length = _check_header(buf, pdu_type, strict=strict)
    if length < FIXED_PDU_LENGTH or (strict and length != FIXED_PDU_LENGTH):
        raise DecodeError(
            E.BAD_PDU_LENGTH,
            f"{PDU_TYPE_NAMES[pdu_type]}: PDU-length is {length}, expected {FIXED_PDU_LENGTH}",
            2,
        )
    return buf[6], buf[7], buf[8], buf[9]


# --------------------------------------------------------------------------
# Public parsers
# --------------------------------------------------------------------------


def parse_associate_rq(raw: Buffer, *, strict: bool = False) -> AssociateRQ:
    """Parse an A-ASSOCIATE-RQ PDU (PS3.8 9.3.2)."""
    result = _parse_associate(raw, True, strict)
    assert isinstance(result, AssociateRQ)
    return result


def parse_associate_ac(raw: Buffer, *, strict: bool = False) -> AssociateAC:
    """Parse an A-ASSOCIATE-AC PDU (PS3.8 9.3.3)."""
    result = _parse_associate(raw, False, strict)
    assert isinstance(result, AssociateAC)
    return result


def parse_associate_rj(raw: Buffer, *, strict: bool = False) -> AssociateRJ:
    """Parse an A-ASSOCIATE-RJ PDU (PS3.8 9.3.4)."""
    _, result, source, reason = _parse_fixed(raw, PDU_ASSOCIATE_RJ, strict)
    return AssociateRJ(result, source, reason)


def parse_release_rq(raw: Buffer, *, strict: bool = False) -> ReleaseRQ:
    """Parse an A-RELEASE-RQ PDU (PS3.8 9.3.6)."""
    _parse_fixed(raw, PDU_RELEASE_RQ, strict)
    return ReleaseRQ()


def parse_release_rp(raw: Buffer, *, strict: bool = False) -> ReleaseRP:
    """Parse an A-RELEASE-RP PDU (PS3.8 9.3.7)."""
    _parse_fixed(raw, PDU_RELEASE_RP, strict)
    return ReleaseRP()


def parse_abort(raw: Buffer, *, strict: bool = False) -> Abort:
    """Parse an A-ABORT PDU (PS3.8 9.3.8)."""
    _, _, source, reason = _parse_fixed(raw, PDU_ABORT, strict)
    return Abort(source, reason)


def pdv_spans(raw: Buffer, *, strict: bool = False) -> list[tuple[int, int, int, int]]:
    """Locate the PDV items of a P-DATA-TF PDU without copying (PS3.8 9.3.5, E.2).

    Returns ``(context_id, message_control_header, value_start, value_end)`` per
    PDV, offsets into *raw*.  This is the hot path of the relay: one header check
    and one ``unpack_from`` per PDV, payload bytes are never touched.
    """
    length = _check_header(raw, PDU_P_DATA_TF, strict=strict)
    if length < MIN_P_DATA_TF_LENGTH:
        raise DecodeError(
            E.BAD_PDU_LENGTH,
            f"P-DATA-TF: PDU-length {length} cannot hold a PDV item (minimum {MIN_P_DATA_TF_LENGTH})",
            2,
        )
    end = len(raw)
    pos = PDU_HEADER_LENGTH
    spans: list[tuple[int, int, int, int]] = []
    while pos < end:
        if end - pos < 6:
            raise DecodeError(
                E.TRUNCATED_ITEM,
                f"P-DATA-TF: {end - pos} trailing byte(s), too short for a 6-byte PDV header",
                pos,
            )
        item_length, context_id, mch = _PDV_HEADER.unpack_from(raw, pos)
        if item_length < 2:
            raise DecodeError(
                E.BAD_ITEM_LENGTH,
                f"PDV item length {item_length} is less than 2 (context ID + control header)",
                pos,
            )
        value_end = pos + 4 + item_length
        if value_end > end:
            raise DecodeError(
                E.TRUNCATED_ITEM,
                f"PDV item announces {item_length} bytes but only {end - pos - 4} remain in the PDU",
                pos,
            )
        if strict and mch & 0xFC:
            raise DecodeError(
                E.RESERVED_FIELD_NONZERO,
                f"PDV message control header 0x{mch:02X} has reserved bits 2-7 set",
                pos + 5,
            )
        spans.append((context_id, mch, pos + 6, value_end))
        pos = value_end
    return spans


def parse_p_data_tf(raw: Buffer, *, strict: bool = False) -> PDataTF:
    """Parse a P-DATA-TF PDU (PS3.8 9.3.5); PDV values are memoryviews into *raw*."""
    view = memoryview(raw)
    return PDataTF(
        [
            PDV(context_id, bool(mch & 1), bool(mch & 2), view[start:end])
            for context_id, mch, start, end in pdv_spans(raw, strict=strict)
        ]
    )


def parse_pdu(raw: Buffer, *, strict: bool = False) -> ParsedPDU:
    """Parse any PDU by its type byte (PS3.8 9.3)."""
    if len(raw) < 1:
        raise DecodeError(E.TRUNCATED_PDU, "empty buffer, no PDU type", 0)
    pdu_type = raw[0]
    if pdu_type == PDU_P_DATA_TF:
        return parse_p_data_tf(raw, strict=strict)
    if pdu_type == PDU_ASSOCIATE_RQ:
        return parse_associate_rq(raw, strict=strict)
    if pdu_type == PDU_ASSOCIATE_AC:
        return parse_associate_ac(raw, strict=strict)
    if pdu_type == PDU_ASSOCIATE_RJ:
        return parse_associate_rj(raw, strict=strict)
    if pdu_type == PDU_RELEASE_RQ:
        return parse_release_rq(raw, strict=strict)
    if pdu_type == PDU_RELEASE_RP:
        return parse_release_rp(raw, strict=strict)
    if pdu_type == PDU_ABORT:
        return parse_abort(raw, strict=strict)
    raise DecodeError(E.UNKNOWN_PDU_TYPE, f"unknown PDU type 0x{pdu_type:02X}", 0)


# --------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------


def encode_ae_title(title: str) -> bytes:
    """Encode an AE title as the 16-byte space padded field of PS3.8 9.3.2."""
    raw = title.encode("ascii").strip(b" ")
    if not 1 <= len(raw) <= AE_TITLE_LENGTH or _AE_CHARS.fullmatch(raw) is None:
        raise ValueError(f"invalid AE title {title!r}: need 1-16 ASCII characters, no backslash")
    return raw.ljust(AE_TITLE_LENGTH, b" ")


def _uid_bytes(uid: str) -> bytes:
    # PS3.8 Annex F: UIDs in PDUs are not padded.
    raw = uid.encode("ascii")
    if len(raw) > MAX_UID_LENGTH:
        raise ValueError(f"UID {uid!r} is longer than {MAX_UID_LENGTH} characters")
    return raw


def _item(item_type: int, value: bytes, reserved: int = 0) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError(f"item 0x{item_type:02X} value of {len(value)} bytes exceeds 65535")
    return _ITEM_HEADER.pack(item_type, reserved, len(value)) + value


def _u16_prefixed(value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError(f"field of {len(value)} bytes exceeds 65535")
    return _U16.pack(len(value)) + value


def _encode_sub_item(item: UserInfoSubItem) -> bytes:
    if isinstance(item, MaximumLength):
        return _item(SUB_ITEM_MAXIMUM_LENGTH, _U32.pack(item.value))
    if isinstance(item, ImplementationClassUID):
        return _item(SUB_ITEM_IMPLEMENTATION_CLASS_UID, _uid_bytes(item.uid))
    if isinstance(item, ImplementationVersionName):
        name = item.name.encode("ascii")
        if not 1 <= len(name) <= MAX_IMPLEMENTATION_VERSION_NAME_LENGTH:
            raise ValueError(f"implementation version name {item.name!r} is not 1-16 characters")
        return _item(SUB_ITEM_IMPLEMENTATION_VERSION_NAME, name)
    if isinstance(item, AsyncOperationsWindow):
        return _item(
            SUB_ITEM_ASYNC_OPERATIONS_WINDOW,
            _U16.pack(item.max_operations_invoked) + _U16.pack(item.max_operations_performed),
        )
    if isinstance(item, RoleSelection):
        return _item(
            SUB_ITEM_ROLE_SELECTION,
            _u16_prefixed(_uid_bytes(item.sop_class_uid)) + bytes((item.scu_role, item.scp_role)),
        )
    if isinstance(item, SOPClassExtendedNegotiation):
        return _item(
            SUB_ITEM_SOP_CLASS_EXTENDED_NEGOTIATION,
            _u16_prefixed(_uid_bytes(item.sop_class_uid)) + bytes(item.application_information),
        )
    if isinstance(item, SOPClassCommonExtendedNegotiation):
        related = b"".join(
            _u16_prefixed(_uid_bytes(uid)) for uid in item.related_general_sop_classes
        )
        return _item(
            SUB_ITEM_SOP_CLASS_COMMON_EXTENDED_NEGOTIATION,
            _u16_prefixed(_uid_bytes(item.sop_class_uid))
            + _u16_prefixed(_uid_bytes(item.service_class_uid))
            + _u16_prefixed(related),
            reserved=item.sub_item_version,
        )
    if isinstance(item, UserIdentityRQ):
        return _item(
            SUB_ITEM_USER_IDENTITY_RQ,
            bytes((item.identity_type, int(item.positive_response_requested)))
            + _u16_prefixed(bytes(item.primary_field))
            + _u16_prefixed(bytes(item.secondary_field)),
        )
    if isinstance(item, UserIdentityAC):
        return _item(SUB_ITEM_USER_IDENTITY_AC, _u16_prefixed(bytes(item.server_response)))
    if isinstance(item, UnknownSubItem):
        return _item(item.item_type, bytes(item.data))
    raise TypeError(f"not a user information sub-item: {item!r}")


def encode_user_information(info: UserInformation) -> bytes:
    """Encode a User Information item 0x50 (PS3.8 9.3.2.3)."""
    return _item(ITEM_USER_INFORMATION, b"".join(_encode_sub_item(i) for i in info.items))


def _encode_associate(
    pdu_type: int,
    called: str,
    calling: str,
    version: int,
    app_context: str,
    contexts: list[bytes],
    user_information: UserInformation | None,
) -> bytes:
    body = [
        _U16.pack(version),
        b"\x00\x00",
        encode_ae_title(called),
        encode_ae_title(calling),
        bytes(32),
        _item(ITEM_APPLICATION_CONTEXT, _uid_bytes(app_context)),
        *contexts,
    ]
    if user_information is not None:
        body.append(encode_user_information(user_information))
    payload = b"".join(body)
    return _HEADER.pack(pdu_type, 0, len(payload)) + payload


def encode_associate_rq(rq: AssociateRQ) -> bytes:
    """Encode an A-ASSOCIATE-RQ PDU (PS3.8 9.3.2)."""
    contexts = [
        _item(
            ITEM_PRESENTATION_CONTEXT_RQ,
            bytes((pc.context_id, 0, 0, 0))
            + _item(ITEM_ABSTRACT_SYNTAX, _uid_bytes(pc.abstract_syntax))
            + b"".join(_item(ITEM_TRANSFER_SYNTAX, _uid_bytes(ts)) for ts in pc.transfer_syntaxes),
        )
        for pc in rq.presentation_contexts
    ]
    return _encode_associate(
        PDU_ASSOCIATE_RQ,
        rq.called_ae_title,
        rq.calling_ae_title,
        rq.protocol_version,
        rq.application_context_name,
        contexts,
        rq.user_information,
    )


def encode_associate_ac(ac: AssociateAC) -> bytes:
    """Encode an A-ASSOCIATE-AC PDU (PS3.8 9.3.3).

    A context without a transfer syntax is encoded with an empty Transfer Syntax
    sub-item, because Table 9-18 requires the sub-item even when not significant.
    """
    contexts = [
        _item(
            ITEM_PRESENTATION_CONTEXT_AC,
            bytes((pc.context_id, 0, pc.result, 0))
            + _item(ITEM_TRANSFER_SYNTAX, _uid_bytes(pc.transfer_syntax or "")),
        )
        for pc in ac.presentation_contexts
    ]
    return _encode_associate(
        PDU_ASSOCIATE_AC,
        ac.called_ae_title,
        ac.calling_ae_title,
        ac.protocol_version,
        ac.application_context_name,
        contexts,
        ac.user_information,
    )


def _encode_fixed(pdu_type: int, b1: int, b2: int, b3: int) -> bytes:
    return _FIXED_PDU.pack(pdu_type, 0, FIXED_PDU_LENGTH, 0, b1, b2, b3)


def encode_associate_rj(result: int, source: int, reason: int) -> bytes:
    """Encode an A-ASSOCIATE-RJ PDU (PS3.8 9.3.4)."""
    return _encode_fixed(PDU_ASSOCIATE_RJ, result, source, reason)


def encode_release_rq() -> bytes:
    """Encode an A-RELEASE-RQ PDU (PS3.8 9.3.6)."""
    return _encode_fixed(PDU_RELEASE_RQ, 0, 0, 0)


def encode_release_rp() -> bytes:
    """Encode an A-RELEASE-RP PDU (PS3.8 9.3.7)."""
    return _encode_fixed(PDU_RELEASE_RP, 0, 0, 0)


def encode_abort(
    source: int = ABORT_SOURCE_SERVICE_USER, reason: int = ABORT_REASON_NOT_SPECIFIED
) -> bytes:
    """Encode an A-ABORT PDU (PS3.8 9.3.8)."""
    return _encode_fixed(PDU_ABORT, 0, source, reason)


def encode_p_data_tf(pdvs: Iterable[PDV]) -> bytes:
    """Encode a P-DATA-TF PDU carrying *pdvs* (PS3.8 9.3.5, Annex E.2)."""
    parts: list[Buffer] = [b""]
    total = 0
    for pdv in pdvs:
        size = len(pdv.value)
        parts.append(_PDV_HEADER.pack(size + 2, pdv.context_id, pdv.message_control_header))
        parts.append(pdv.value)
        total += size + 6
    if total == 0:
        raise ValueError("a P-DATA-TF PDU carries at least one PDV")
    if total > 0xFFFFFFFF:
        raise ValueError(f"P-DATA-TF payload of {total} bytes exceeds the 32-bit PDU-length")
    parts[0] = _HEADER.pack(PDU_P_DATA_TF, 0, total)
    return b"".join(parts)


def encode_dimse_message(
    context_id: int,
    command_set: Buffer | None,
    dataset: Buffer | None = None,
    max_pdu_length: int = 0,
) -> list[bytes]:
    """Fragment a DIMSE message into P-DATA-TF PDUs, one PDV per PDU (PS3.8 E.2, PS3.7 6.3.1).
    A *command_set* of None fragments the data set alone (its command was sent already).

    *max_pdu_length* is the peer's negotiated Maximum Length (0 = unlimited): each
    PDU-length stays within it.  The command set and the data set are never mixed in
    one PDV and the last fragment of each carries the "last" bit.
    """
    if max_pdu_length and max_pdu_length < 7:
        raise ValueError(f"max_pdu_length {max_pdu_length} leaves no room for PDV data")
    pdus: list[bytes] = []
    for is_command, data in ((True, command_set), (False, dataset)):
        if data is None:
            continue
        view = memoryview(data)
        size = len(view)
        step = (max_pdu_length - 6) if max_pdu_length else max(size, 1)
        start = 0
        while True:
            chunk = view[start : start + step]
            start += step
            last = start >= size
            pdus.append(encode_p_data_tf([PDV(context_id, is_command, last, chunk)]))
            if last:
                break
    return pdus


def encode_pdu(pdu: ParsedPDU) -> bytes:
    """Encode any PDU data class."""
    if isinstance(pdu, PDataTF):
        return encode_p_data_tf(pdu.pdvs)
    if isinstance(pdu, AssociateRQ):
        return encode_associate_rq(pdu)
    if isinstance(pdu, AssociateAC):
        return encode_associate_ac(pdu)
    if isinstance(pdu, AssociateRJ):
        return encode_associate_rj(pdu.result, pdu.source, pdu.reason)
    if isinstance(pdu, ReleaseRQ):
        return encode_release_rq()
    if isinstance(pdu, ReleaseRP):
        return encode_release_rp()
    if isinstance(pdu, Abort):
        return encode_abort(pdu.source, pdu.reason)
    raise TypeError(f"not a PDU: {pdu!r}")


def _patch_ae(raw: Buffer, offset: int, title: str) -> bytes:
    if len(raw) < ASSOCIATE_ITEMS_OFFSET or raw[0] not in (PDU_ASSOCIATE_RQ, PDU_ASSOCIATE_AC):
        raise DecodeError(
            E.UNEXPECTED_PDU,
            f"AE titles can only be patched in an A-ASSOCIATE-RQ/AC of at least "
            f"{ASSOCIATE_ITEMS_OFFSET} bytes (got type 0x{raw[0] if len(raw) else 0:02X}, "
            f"{len(raw)} bytes)",
            0,
        )
    view = memoryview(raw)
    # One join = one copy of the PDU; the lengths are unchanged because the field is fixed size.
    return b"".join((view[:offset], encode_ae_title(title), view[offset + AE_TITLE_LENGTH :]))


def with_called_ae(raw: Buffer, new_title: str) -> bytes:
    """Return a copy of an A-ASSOCIATE-RQ/AC with bytes 10..26 (Called AE title) replaced.

    Cheap: no parsing, the PDU length does not change (PS3.8 9.3.2 field is 16 bytes).
    """
    return _patch_ae(raw, CALLED_AE_OFFSET, new_title)


def with_calling_ae(raw: Buffer, new_title: str) -> bytes:
    """Return a copy of an A-ASSOCIATE-RQ/AC with bytes 26..42 (Calling AE title) replaced."""
    return _patch_ae(raw, CALLING_AE_OFFSET, new_title)


def capped_max_length(advertised: int | None, own_limit: int) -> int:
    """The Maximum Length a relay forwards for a peer that advertised *advertised* (PS3.8 D.1).

    A relay passes P-DATA-TF PDUs on unchanged, so what the far peer may send is bounded both by
    what the near peer accepts and by what the relay itself reads: the smaller of the two, where
    an absent value or 0 means "no limit".
    """
    return min(advertised, own_limit) if advertised else own_limit


def with_max_length(info: UserInformation | None, value: int) -> UserInformation:
    """A copy of *info* whose Maximum Length sub-item (PS3.8 D.1) is *value*; added first if absent."""
    items = list(info.items) if info is not None else []
    for i, item in enumerate(items):
        if isinstance(item, MaximumLength):
            items[i] = MaximumLength(value)
            return UserInformation(items)
    return UserInformation([MaximumLength(value), *items])


def _sub_items(buf: Buffer, start: int, end: int, where: str, *, known_only: bool) -> list[bytes]:
    """The sub-items of ``buf[start:end]`` verbatim; with *known_only*, those of defined types."""
    return [bytes(buf[off:e]) for sub_type, _, e, off in _items(buf, start, end, where)
            if not known_only or sub_type in KNOWN_ITEM_TYPES]


def rewrite_associate_rq(raw: Buffer, *, called_ae: str, max_length: int,
                         withheld: frozenset[int] = frozenset()) -> bytes:
    """The A-ASSOCIATE-RQ a relay forwards (PS3.8 9.3.2): *raw* with the Called AE title replaced,
    the Maximum Length sub-item (PS3.8 D.1) set to *max_length* (added if absent), and the items
    and presentation context sub-items of unrecognised types left out, since the relay ignores
    them (PS3.8 9.3.1, 9.3.2).  User information sub-items are the application entities' own
    extension point (PS3.7 D.3.3): unknown ones pass, as when the relay decodes and re-encodes.

    The presentation contexts whose IDs are in *withheld* are left out (the relay refuses them
    itself, so the acceptor never accepts them, PS3.8 9.3.2.2).

    Everything else is copied byte for byte: a request that needs no change comes out identical
    but for the Called AE title.  *raw* must have passed :func:`parse_associate_rq`.
    """
    _check_header(raw, PDU_ASSOCIATE_RQ, strict=False)
    body = [bytes(raw[PDU_HEADER_LENGTH:CALLED_AE_OFFSET]), encode_ae_title(called_ae),
            bytes(raw[CALLING_AE_OFFSET:ASSOCIATE_ITEMS_OFFSET])]
    has_user_information = False
    for item_type, s, e, off in _items(raw, ASSOCIATE_ITEMS_OFFSET, len(raw), "A-ASSOCIATE-RQ"):
        if item_type == ITEM_PRESENTATION_CONTEXT_RQ:
            if raw[s] in withheld:
                continue
            subs = _sub_items(raw, s + 4, e, "presentation context", known_only=True)
            body.append(_item(item_type, bytes(raw[s : s + 4]) + b"".join(subs)))
        elif item_type == ITEM_USER_INFORMATION:
            has_user_information = True
            maximum = _item(SUB_ITEM_MAXIMUM_LENGTH, _U32.pack(max_length))
            subs = _sub_items(raw, s, e, "user information item", known_only=False)
            kept = [maximum if sub[0] == SUB_ITEM_MAXIMUM_LENGTH else sub for sub in subs]
            if maximum not in kept:
                kept.insert(0, maximum)
            body.append(_item(item_type, b"".join(kept)))
        elif item_type in KNOWN_ITEM_TYPES:
            body.append(bytes(raw[off:e]))
    if not has_user_information:
        body.append(encode_user_information(UserInformation([MaximumLength(max_length)])))
    payload = b"".join(body)
    return _HEADER.pack(PDU_ASSOCIATE_RQ, raw[1], len(payload)) + payload
