"""Names of the Upper Layer results, sources and reasons (PS3.8 Tables 9-18, 9-21 and 9-26).

The numbers are the constants of :mod:`pacsguard.dicom.pdu`; this module gives each the one
lower-case name the rest of pacsguard writes into observations, rules and records, so the
standard's vocabulary is spelled out in exactly one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from . import pdu as P

__all__ = [
    "ABORT_REASONS",
    "ABORT_SOURCES",
    "PC_RESULTS",
    "RJ_REASONS",
    "RJ_RESULTS",
    "RJ_SOURCES",
    "abort_reason",
    "rj_reason",
]

#: Presentation context Result/Reason of an A-ASSOCIATE-AC (PS3.8 9.3.3.2, Table 9-18).
PC_RESULTS: Final[Mapping[int, str]] = MappingProxyType({
    P.PC_ACCEPTANCE: "acceptance",
    P.PC_USER_REJECTION: "user-rejection",
    P.PC_NO_REASON: "no-reason",
    P.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED: "abstract-syntax-not-supported",
    P.PC_TRANSFER_SYNTAXES_NOT_SUPPORTED: "transfer-syntaxes-not-supported",
})

#: A-ASSOCIATE-RJ Result (PS3.8 9.3.4, Table 9-21).
RJ_RESULTS: Final[Mapping[int, str]] = MappingProxyType({
    P.RJ_RESULT_PERMANENT: "rejected-permanent",
    P.RJ_RESULT_TRANSIENT: "rejected-transient",
})

#: A-ASSOCIATE-RJ Source (PS3.8 9.3.4, Table 9-21).
RJ_SOURCES: Final[Mapping[int, str]] = MappingProxyType({
    P.RJ_SOURCE_SERVICE_USER: "service-user",
    P.RJ_SOURCE_SERVICE_PROVIDER_ACSE: "service-provider-acse",
    P.RJ_SOURCE_SERVICE_PROVIDER_PRESENTATION: "service-provider-presentation",
})

#: A-ASSOCIATE-RJ (Source, Reason/Diag.) -> name (PS3.8 9.3.4, Table 9-21): the reason's
#: meaning depends on the source.
RJ_REASONS: Final[Mapping[tuple[int, int], str]] = MappingProxyType({
    (P.RJ_SOURCE_SERVICE_USER, P.RJ_REASON_USER_NO_REASON): "no-reason",
    (P.RJ_SOURCE_SERVICE_USER, P.RJ_REASON_USER_APPLICATION_CONTEXT_NOT_SUPPORTED): "application-context-not-supported",
    (P.RJ_SOURCE_SERVICE_USER, P.RJ_REASON_USER_CALLING_AE_NOT_RECOGNIZED): "calling-ae-not-recognized",
    (P.RJ_SOURCE_SERVICE_USER, P.RJ_REASON_USER_CALLED_AE_NOT_RECOGNIZED): "called-ae-not-recognized",
    (P.RJ_SOURCE_SERVICE_PROVIDER_ACSE, P.RJ_REASON_ACSE_NO_REASON): "no-reason",
    (P.RJ_SOURCE_SERVICE_PROVIDER_ACSE,
     P.RJ_REASON_ACSE_PROTOCOL_VERSION_NOT_SUPPORTED): "protocol-version-not-supported",
    (P.RJ_SOURCE_SERVICE_PROVIDER_PRESENTATION, P.RJ_REASON_PRESENTATION_TEMPORARY_CONGESTION): "temporary-congestion",
    (P.RJ_SOURCE_SERVICE_PROVIDER_PRESENTATION, P.RJ_REASON_PRESENTATION_LOCAL_LIMIT_EXCEEDED): "local-limit-exceeded",
})

#: A-ABORT Source (PS3.8 9.3.8, Table 9-26); 1 is reserved.
ABORT_SOURCES: Final[Mapping[int, str]] = MappingProxyType({
    P.ABORT_SOURCE_SERVICE_USER: "service-user",
    1: "reserved",
    P.ABORT_SOURCE_SERVICE_PROVIDER: "service-provider",
})

#: A-ABORT Reason/Diag. (PS3.8 9.3.8, Table 9-26), significant when the source is the provider.
ABORT_REASONS: Final[Mapping[int, str]] = MappingProxyType({
    P.ABORT_REASON_NOT_SPECIFIED: "reason-not-specified",
    P.ABORT_REASON_UNRECOGNIZED_PDU: "unrecognized-pdu",
    P.ABORT_REASON_UNEXPECTED_PDU: "unexpected-pdu",
    P.ABORT_REASON_UNRECOGNIZED_PDU_PARAMETER: "unrecognized-pdu-parameter",
    P.ABORT_REASON_UNEXPECTED_PDU_PARAMETER: "unexpected-pdu-parameter",
    P.ABORT_REASON_INVALID_PDU_PARAMETER_VALUE: "invalid-pdu-parameter-value",
})


def rj_reason(source: int, reason: int) -> str:
    """The name of an A-ASSOCIATE-RJ reason (PS3.8 Table 9-21); ``reason-S-R`` for a pair the
    table does not define."""
    return RJ_REASONS.get((source, reason), f"reason-{source}-{reason}")


def abort_reason(reason: int) -> str:
    """The name of an A-ABORT reason (PS3.8 Table 9-26); ``reason-N`` for a reserved value."""
    return ABORT_REASONS.get(reason, f"reason-{reason}")
