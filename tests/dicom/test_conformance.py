"""Which A-ASSOCIATE-RQ fields the service provider cannot accept (PS3.8 9.2 AE-6, 9.3.2; PS3.5 6.2,
9.1; PS3.7 D.3.3.4), and that requests of real stacks are acceptable."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pacsguard.dicom import pdu as P
from pacsguard.dicom.conformance import associate_rq_faults, uid_problem

sys.path.insert(0, str(Path(__file__).parents[1] / "gateway"))
from malformed_rq import IMPLICIT_LE, VERIFICATION, build, cases  # noqa: E402


@pytest.mark.parametrize("case", cases("T"), ids=lambda c: c.name)
def test_each_fault_names_its_field_value_and_answer(case) -> None:
    faults = associate_rq_faults(P.parse_associate_rq(case.raw))
    assert [(f.field, f.value, f.rj) for f in faults] == [(case.field, case.value, case.rj)]


@pytest.mark.parametrize("uid, fine", [
    ("1.2.840.10008.1.2", True), ("0", True), ("1.0.3", True), ("1" + ".2" * 31, True),
    ("", False), ("1.", False), (".1", False), ("1..2", False), ("1.02", False), ("1.2a", False),
    ("1.2 ", False), ("1." + "2" * 63, False),
])
def test_uids_as_ps3_5_9_1_defines_them(uid: str, fine: bool) -> None:
    assert (uid_problem(uid) is None) is fine


def test_only_bit_0_of_the_protocol_version_is_tested() -> None:
    # PS3.8 9.3.2: "a receiver ... shall only test that bit 0 is set".
    assert associate_rq_faults(P.parse_associate_rq(build("WS1", version=0x8001))) == []
    assert associate_rq_faults(P.parse_associate_rq(build("WS1", version=3))) == []


def test_unknown_sub_items_in_the_extension_range_and_a_missing_maximum_length_are_acceptable() -> None:
    info = P.UserInformation([P.ImplementationClassUID("1.2.3"), P.UnknownSubItem(0x7F, b"vendor"),
                              P.RoleSelection(VERIFICATION, 1, 0)])
    assert associate_rq_faults(P.parse_associate_rq(build("WS1", info=info))) == []


def test_several_faults_are_all_listed_in_pdu_order() -> None:
    raw = build("WS1", version=0, transfer="1.2.x", info=None)
    assert [f.field for f in associate_rq_faults(P.parse_associate_rq(raw))] == [
        "protocol-version", "presentation-context-1.transfer-syntax", "user-information"]


def test_requests_of_real_stacks_are_acceptable() -> None:
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import A_ASSOCIATE, ImplementationClassUIDNotification, MaximumLengthNotification
    from pynetdicom.presentation import build_context
    from pynetdicom.transport import AddressInformation

    primitive = A_ASSOCIATE()
    primitive.application_context_name = P.DICOM_APPLICATION_CONTEXT
    primitive.calling_ae_title = "STORESCU"
    primitive.called_ae_title = "ANY-SCP"
    primitive.calling_presentation_address = AddressInformation("127.0.0.1", 1)
    primitive.called_presentation_address = AddressInformation("127.0.0.1", 2)
    context = build_context(VERIFICATION, [IMPLICIT_LE])
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16382
    impl = ImplementationClassUIDNotification()
    impl.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.2.0.2"
    primitive.user_information = [max_length, impl]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    assert associate_rq_faults(P.parse_associate_rq(pdu.encode())) == []
