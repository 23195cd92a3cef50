"""The Upper Layer vocabulary matches PS3.8 (spot values of each table)."""

from __future__ import annotations

from pacsguard.dicom import pdu as P
from pacsguard.dicom.reasons import (
    ABORT_REASONS,
    ABORT_SOURCES,
    PC_RESULTS,
    RJ_REASONS,
    RJ_RESULTS,
    RJ_SOURCES,
    abort_reason,
    rj_reason,
)


def test_presentation_context_results_table_9_18() -> None:
    assert PC_RESULTS[0] == "acceptance"
    assert PC_RESULTS[1] == "user-rejection"
    assert PC_RESULTS[3] == "abstract-syntax-not-supported"
    assert PC_RESULTS[4] == "transfer-syntaxes-not-supported"
    assert set(PC_RESULTS) == {0, 1, 2, 3, 4}


def test_associate_rj_table_9_21() -> None:
    assert RJ_RESULTS == {1: "rejected-permanent", 2: "rejected-transient"}
    assert RJ_SOURCES[1] == "service-user"
    assert RJ_SOURCES[2] == "service-provider-acse"
    assert RJ_SOURCES[3] == "service-provider-presentation"
    # the reason's meaning depends on the source
    assert rj_reason(1, 3) == "calling-ae-not-recognized"
    assert rj_reason(1, 7) == "called-ae-not-recognized"
    assert rj_reason(2, 2) == "protocol-version-not-supported"
    assert rj_reason(3, 1) == "temporary-congestion"
    assert rj_reason(3, 2) == "local-limit-exceeded"
    assert rj_reason(1, 2) == "application-context-not-supported"
    assert rj_reason(1, 4) == "reason-1-4"  # 4-6 are reserved for the service user
    assert len(RJ_REASONS) == 8
    assert rj_reason(P.RJ_SOURCE_SERVICE_USER, P.RJ_REASON_USER_CALLED_AE_NOT_RECOGNIZED) == "called-ae-not-recognized"


def test_abort_table_9_26() -> None:
    assert ABORT_SOURCES == {0: "service-user", 1: "reserved", 2: "service-provider"}
    assert abort_reason(0) == "reason-not-specified"
    assert abort_reason(2) == "unexpected-pdu"
    assert abort_reason(6) == "invalid-pdu-parameter-value"
    assert abort_reason(3) == "reason-3"  # reserved
    assert set(ABORT_REASONS) == {0, 1, 2, 4, 5, 6}
