"""Round 6 (outside testing with other peers): negotiation items given twice for one SOP class,
and commands that take no data set announcing one, are refused by the one DICOM decoder."""

from __future__ import annotations

import pytest
from test_association import CT, VERIFICATION, codes, established, pdata, rq

from pacsguard.dicom import dimse as D
from pacsguard.dicom import errors as E
from pacsguard.dicom import events as ev
from pacsguard.dicom import pdu as P
from pacsguard.dicom.dimse import CommandSet
from pacsguard.dicom.errors import DecodeError

MR = "1.2.840.10008.5.1.4.1.1.4"


def _rq_with(items: list[P.UserInfoSubItem]) -> bytes:
    request = rq()
    request.user_information.items.extend(items)
    return P.encode_associate_rq(request)


@pytest.mark.parametrize("pair", [
    (P.RoleSelection(CT, 1, 0), P.RoleSelection(CT, 0, 1)),
    (P.SOPClassExtendedNegotiation(CT, b"\x01"), P.SOPClassExtendedNegotiation(CT, b"\x00")),
    (P.SOPClassCommonExtendedNegotiation(CT, "1.2.840.10008.4.2"),
     P.SOPClassCommonExtendedNegotiation(CT, "1.2.840.10008.4.2")),
], ids=["role-selection", "extended", "common-extended"])
def test_a_sub_item_given_twice_for_one_sop_class_is_a_duplicate(pair: tuple[P.UserInfoSubItem, ...]) -> None:
    """PS3.7 D.3.3.4-6: one per SOP class; two that disagree (SCU-only, then SCP-only) let the PACS
    and the gateway act on different ones."""
    with pytest.raises(DecodeError) as raised:
        P.parse_pdu(_rq_with(list(pair)))
    assert raised.value.code == E.DUPLICATE_ITEM and CT in str(raised.value)


def test_one_sub_item_per_sop_class_is_fine() -> None:
    parsed = P.parse_pdu(_rq_with([P.RoleSelection(CT, 1, 1), P.RoleSelection(MR, 1, 0)]))
    assert isinstance(parsed, P.AssociateRQ)
    roles = [i for i in parsed.user_information.items if isinstance(i, P.RoleSelection)]
    assert [r.sop_class_uid for r in roles] == [CT, MR]


@pytest.mark.parametrize("command", [
    CommandSet(D.C_CANCEL_RQ, message_id_being_responded_to=3),
    CommandSet(D.C_ECHO_RQ, message_id=5, affected_sop_class_uid=VERIFICATION),
], ids=["c-cancel-rq", "c-echo-rq"])
def test_a_command_that_takes_no_data_set_announcing_one_is_a_violation(command: CommandSet) -> None:
    """PS3.7 9.3.2.3: a C-CANCEL-RQ's Command Data Set Type is 0x0101; one that announces a data set
    carried it to the PACS unjudged (Orthanc aborted, pynetdicom ignored it)."""
    command.command_data_set_type = 0x0102
    events = established().on_pdu(True, pdata(P.PDV(1, True, True, D.encode_command_set(command)),
                                              P.PDV(1, False, True, b"\x10\x00\x20\x00\x08\x00SMUGGLED")))
    assert codes(events) == [ev.VIOLATION_DATASET_NOT_ALLOWED], events
    assert "0x0102" in next(e.message for e in events if isinstance(e, ev.ProtocolViolation))


def test_the_same_command_without_a_data_set_passes() -> None:
    command = CommandSet(D.C_CANCEL_RQ, message_id_being_responded_to=3)
    assert codes(established().on_pdu(True, pdata(P.PDV(1, True, True, D.encode_command_set(command))))) == []
