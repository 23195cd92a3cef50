"""A FHIR AuditEvent whose type.code is white space only was accepted, stored, and answered over
ITI-81 as `{"display": "unknown"}`, which this endpoint's own POST refuses ("AuditEvent.type (a
Coding) is required"). FHIR R4's code type has no leading or trailing white space and is not
empty (2.24.0.1): such a message is refused as not-fhir, stored raw, as any refusal is."""

from __future__ import annotations

import pytest
from test_r11A_source_observer import OBSERVERS, _posted

from pacsguard.atna.message import fhir
from pacsguard.atna.message.dicom_xml import AuditMessageError


@pytest.mark.parametrize("code", [" ", "\t", "  \n"])
def test_a_type_code_of_white_space_is_refused(code: str) -> None:
    resource = _posted(OBSERVERS["reference"], 1)
    resource["type"]["code"] = code
    with pytest.raises(AuditMessageError, match=r"AuditEvent.type \(a Coding\) is required") as refused:
        fhir.parse(resource)
    assert refused.value.problem == "not-fhir"


def test_a_type_code_with_inner_space_is_read_as_before() -> None:
    resource = _posted(OBSERVERS["reference"], 1)
    assert fhir.parse(resource).event_id.code == "110110"
