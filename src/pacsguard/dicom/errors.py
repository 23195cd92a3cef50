"""The single exception type raised by the DICOM decoder.

Every decoding entry point of :mod:`pacsguard.dicom` raises :class:`DecodeError`
and nothing else when the bytes it is given are malformed, whatever those bytes
are.  Callers therefore need one ``except DecodeError`` to turn a hostile or
broken peer into an A-ABORT (gateway) or an alert (IDS).

``code`` is a short, stable slug meant for rules, metrics and alert
deduplication; the human readable message says what was wrong and where.
"""

from __future__ import annotations

from typing import Any, Callable, TypeAlias

# Stable error codes.  They are part of the public API (IDS rules match on them),
# so they are spelled out once here instead of as ad-hoc strings in each module.

# Stream / PDU header level (PS3.8 9.3.1)
PDU_LENGTH_EXCEEDS_MAXIMUM = "pdu-length-exceeds-maximum"
UNKNOWN_PDU_TYPE = "unknown-pdu-type"
BAD_PDU_LENGTH = "bad-pdu-length"
PDU_LENGTH_MISMATCH = "pdu-length-mismatch"
RESERVED_FIELD_NONZERO = "reserved-field-nonzero"
UNEXPECTED_PDU = "unexpected-pdu"
TRUNCATED_PDU = "truncated-pdu"

# Item level (PS3.8 9.3.2 - 9.3.5, Annex D)
TRUNCATED_ITEM = "truncated-item"
BAD_ITEM_LENGTH = "bad-item-length"
UNEXPECTED_ITEM = "unexpected-item"
MISSING_ITEM = "missing-item"
DUPLICATE_ITEM = "duplicate-item"
TOO_MANY_ITEMS = "too-many-items"
TOO_MANY_PRESENTATION_CONTEXTS = "too-many-presentation-contexts"
BAD_CONTEXT_ID = "bad-context-id"
DUPLICATE_CONTEXT_ID = "duplicate-context-id"
BAD_UID = "bad-uid"
BAD_AE_TITLE = "bad-ae-title"
BAD_ITEM_VALUE = "bad-item-value"

# DIMSE command set (PS3.7 6.3.1, 9.3, 10.3, Annex E)
COMMAND_SET_INVALID = "command-set-invalid"
COMMAND_SET_TOO_LARGE = "command-set-too-large"
COMMAND_GROUP_LENGTH_MISMATCH = "command-group-length-mismatch"
COMMAND_ELEMENT_TRUNCATED = "command-element-truncated"
COMMAND_ELEMENT_BAD_LENGTH = "command-element-bad-length"
COMMAND_ELEMENT_ORDER = "command-element-order"
COMMAND_ELEMENT_NOT_ASCII = "command-element-not-ascii"
# Only offered to a decoder's Tolerate hook: refused, it is raised as COMMAND_SET_INVALID.
COMMAND_SET_TRAILING_ELEMENTS = "command-set-trailing-elements"

# Data sets
IDENTIFIER_INVALID = "identifier-invalid"
IDENTIFIER_TOO_LARGE = "identifier-too-large"

ERROR_CODES: frozenset[str] = frozenset(
    {
        PDU_LENGTH_EXCEEDS_MAXIMUM,
        UNKNOWN_PDU_TYPE,
        BAD_PDU_LENGTH,
        PDU_LENGTH_MISMATCH,
        RESERVED_FIELD_NONZERO,
        UNEXPECTED_PDU,
        TRUNCATED_PDU,
        TRUNCATED_ITEM,
        BAD_ITEM_LENGTH,
        UNEXPECTED_ITEM,
        MISSING_ITEM,
        DUPLICATE_ITEM,
        TOO_MANY_ITEMS,
        TOO_MANY_PRESENTATION_CONTEXTS,
        BAD_CONTEXT_ID,
        DUPLICATE_CONTEXT_ID,
        BAD_UID,
        BAD_AE_TITLE,
        BAD_ITEM_VALUE,
        COMMAND_SET_INVALID,
        COMMAND_SET_TOO_LARGE,
        COMMAND_GROUP_LENGTH_MISMATCH,
        COMMAND_ELEMENT_TRUNCATED,
        COMMAND_ELEMENT_BAD_LENGTH,
        COMMAND_ELEMENT_ORDER,
        COMMAND_ELEMENT_NOT_ASCII,
        COMMAND_SET_TRAILING_ELEMENTS,
        IDENTIFIER_INVALID,
        IDENTIFIER_TOO_LARGE,
    }
)


class DecodeError(Exception):
    """Malformed DICOM Upper Layer / DIMSE / data set bytes.

    Attributes:
        code: stable slug from :data:`ERROR_CODES` (e.g. ``"truncated-item"``).
        offset: byte offset of the offending field, relative to the buffer the
            failing function was given (PDU start for PDU parsers, stream start
            for :class:`~pacsguard.dicom.stream.PDUReader`), or ``None`` when no
            single position is to blame.
        detail: the message without the code/offset decoration.
        partial: results produced before the failure by a batch API (for
            ``AssociationDecoder.feed`` the events of the PDUs that decoded
            fine), so a caller can still act on them.
        head: the first bytes (up to 16) where a PDU header was expected, when
            they are no PDU at all (``unknown-pdu-type``): at a stream's offset 0
            they tell what the peer speaks instead (HTTP, TLS, SSH...).
    """

    code: str
    offset: int | None
    detail: str
    partial: list[Any]
    head: bytes

    def __init__(self, code: str, detail: str, offset: int | None = None) -> None:
        self.code = code
        self.offset = offset
        self.detail = detail
        self.partial = []
        self.head = b""
        where = f" at offset {offset}" if offset is not None else ""
        super().__init__(f"[{code}]{where}: {detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        # The default Exception pickling replays self.args into __init__, which
        # would not match our signature (needed when errors cross process pools).
        return (type(self), (self.code, self.detail, self.offset))


#: A decoder's hook for deviations it can step over (PS3.8 9.3.1 "shall not be tested", PS3.7 E.1
#: bookkeeping): called with the error it would raise; True means "recorded, carry on", False
#: means raise it.  Only codes a decoder can continue past are ever offered.
Tolerate: TypeAlias = Callable[[DecodeError], bool]
