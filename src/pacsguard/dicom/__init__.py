"""DICOM Upper Layer + DIMSE decoder shared by the gateway and the IDS.

Works on bytes only (no sockets) and depends on nothing but the standard
library and pydicom.  Modules: :mod:`.pdu` (PS3.8 9.3 PDUs), :mod:`.stream`
(PDU splitting), :mod:`.dimse` (PS3.7 command sets), :mod:`.dataset` (data set
identifiers), :mod:`.association` (state machine), :mod:`.events`,
:mod:`.uids`, :mod:`.errors`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pacsguard._lazy import lazy_exports

# Names are re-exported lazily (PEP 562): a tool that needs one module (the scanner reads UIDs and
# data sets) does not load the association state machine, the PDU codecs and the DIMSE tables.
if TYPE_CHECKING:
    from .association import (
        DEFAULT_VALUE_CAP,
        AssociationDecoder,
        AssociationState,
        DirectionCounters,
    )
    from .dataset import DatasetPeek, decode_identifier, peek_identifiers, transfer_syntax_encoding
    from .dimse import (
        COMMAND_NAMES,
        CommandSet,
        command_name,
        decode_command_set,
        encode_command_set,
        response_for,
        status_category,
    )
    from .errors import ERROR_CODES, DecodeError
    from .events import (
        Aborted,
        AssociationAccepted,
        AssociationRejected,
        AssociationRequested,
        DimseCommand,
        DimseDatasetEnd,
        DimseDatasetStart,
        ProtocolEvent,
        ProtocolViolation,
        ProtocolWarning,
        ReleaseCompleted,
        ReleaseRequested,
    )
    from .pdu import (
        PDV,
        Abort,
        AssociateAC,
        AssociateRJ,
        AssociateRQ,
        AsyncOperationsWindow,
        ImplementationClassUID,
        ImplementationVersionName,
        MaximumLength,
        ParsedPDU,
        PDataTF,
        PresentationContextAC,
        PresentationContextRQ,
        ReleaseRP,
        ReleaseRQ,
        RoleSelection,
        SOPClassCommonExtendedNegotiation,
        SOPClassExtendedNegotiation,
        UnknownSubItem,
        UserIdentityAC,
        UserIdentityRQ,
        UserInformation,
        encode_abort,
        encode_associate_ac,
        encode_associate_rj,
        encode_associate_rq,
        encode_dimse_message,
        encode_p_data_tf,
        encode_pdu,
        encode_release_rp,
        encode_release_rq,
        parse_abort,
        parse_associate_ac,
        parse_associate_rj,
        parse_associate_rq,
        parse_p_data_tf,
        parse_pdu,
        parse_release_rp,
        parse_release_rq,
        pdv_spans,
        with_called_ae,
        with_calling_ae,
    )
    from .stream import DEFAULT_MAX_PDU_LENGTH, PDUReader, RawPDU, looks_like_associate_rq
    from .uids import uid_name

__all__ = [
    "DEFAULT_MAX_PDU_LENGTH",
    "DEFAULT_VALUE_CAP",
    "COMMAND_NAMES",
    "ERROR_CODES",
    "PDV",
    "Abort",
    "Aborted",
    "AssociateAC",
    "AssociateRJ",
    "AssociateRQ",
    "AssociationAccepted",
    "AssociationDecoder",
    "AssociationRejected",
    "AssociationRequested",
    "AssociationState",
    "AsyncOperationsWindow",
    "CommandSet",
    "DatasetPeek",
    "DecodeError",
    "DimseCommand",
    "DimseDatasetEnd",
    "DimseDatasetStart",
    "DirectionCounters",
    "ImplementationClassUID",
    "ImplementationVersionName",
    "MaximumLength",
    "PDUReader",
    "PDataTF",
    "ParsedPDU",
    "PresentationContextAC",
    "PresentationContextRQ",
    "ProtocolEvent",
    "ProtocolViolation",
    "ProtocolWarning",
    "RawPDU",
    "ReleaseCompleted",
    "ReleaseRP",
    "ReleaseRQ",
    "ReleaseRequested",
    "RoleSelection",
    "SOPClassCommonExtendedNegotiation",
    "SOPClassExtendedNegotiation",
    "UnknownSubItem",
    "UserIdentityAC",
    "UserIdentityRQ",
    "UserInformation",
    "command_name",
    "decode_command_set",
    "decode_identifier",
    "encode_abort",
    "encode_associate_ac",
    "encode_associate_rj",
    "encode_associate_rq",
    "encode_command_set",
    "encode_dimse_message",
    "encode_p_data_tf",
    "encode_pdu",
    "encode_release_rp",
    "encode_release_rq",
    "looks_like_associate_rq",
    "parse_abort",
    "parse_associate_ac",
    "parse_associate_rj",
    "parse_associate_rq",
    "parse_p_data_tf",
    "parse_pdu",
    "parse_release_rp",
    "parse_release_rq",
    "pdv_spans",
    "peek_identifiers",
    "response_for",
    "status_category",
    "transfer_syntax_encoding",
    "uid_name",
    "with_called_ae",
    "with_calling_ae",
]

#: Where each name lives (module, names), for the lazy __getattr__.
_HOMES = (
    (".association", "DEFAULT_VALUE_CAP AssociationDecoder AssociationState DirectionCounters"),
    (".dataset", "DatasetPeek decode_identifier peek_identifiers transfer_syntax_encoding"),
    (".dimse", "COMMAND_NAMES CommandSet command_name decode_command_set encode_command_set response_for "
               "status_category"),
    (".errors", "ERROR_CODES DecodeError"),
    (".events", "Aborted AssociationAccepted AssociationRejected AssociationRequested DimseCommand DimseDatasetEnd "
                "DimseDatasetStart ProtocolEvent ProtocolViolation ProtocolWarning ReleaseCompleted ReleaseRequested"),
    (".pdu", "PDV Abort AssociateAC AssociateRJ AssociateRQ AsyncOperationsWindow ImplementationClassUID "
             "ImplementationVersionName MaximumLength ParsedPDU PDataTF PresentationContextAC "
             "PresentationContextRQ ReleaseRP ReleaseRQ RoleSelection SOPClassCommonExtendedNegotiation "
             "SOPClassExtendedNegotiation UnknownSubItem UserIdentityAC UserIdentityRQ UserInformation "
             "encode_abort encode_associate_ac encode_associate_rj encode_associate_rq encode_dimse_message "
             "encode_p_data_tf encode_pdu encode_release_rp encode_release_rq parse_abort parse_associate_ac "
             "parse_associate_rj parse_associate_rq parse_p_data_tf parse_pdu parse_release_rp parse_release_rq "
             "pdv_spans with_called_ae with_calling_ae"),
    (".stream", "DEFAULT_MAX_PDU_LENGTH PDUReader RawPDU looks_like_associate_rq"),
    (".uids", "uid_name"),
)

__getattr__ = lazy_exports(__name__, {name: home for home, names in _HOMES for name in names.split()})
