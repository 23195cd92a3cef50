"""DIMSE command sets against pynetdicom's own encoder, responses, status, error codes."""

from __future__ import annotations

import struct
from io import BytesIO
from typing import Any

import pytest
from pynetdicom import dimse_messages, dimse_primitives
from pynetdicom.dsutils import encode

from pacsguard.dicom import dimse as D
from pacsguard.dicom import errors as E
from pacsguard.dicom.dimse import CommandSet
from pacsguard.dicom.errors import DecodeError

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
COMMIT = "1.2.840.10008.1.20.1"
COMMIT_INSTANCE = "1.2.840.10008.1.20.1.1"
MPPS = "1.2.840.10008.3.1.2.3.3"
SOP_INSTANCE = "1.2.826.0.1.3680043.8.498.1234567890.1"


def pnd_command_set(message: str, **attrs: Any) -> bytes:
    """Encode a command set the way pynetdicom does on the wire."""
    primitive = getattr(dimse_primitives, message.rsplit("_", 1)[0])()
    for name, value in attrs.items():
        setattr(primitive, name, value)
    msg = getattr(dimse_messages, message)()
    msg.primitive_to_message(primitive)
    raw = encode(msg.command_set, True, True)
    assert raw is not None
    return raw


DS = 0x0001  # pynetdicom's Command Data Set Type when a data set follows
NONE = 0x0101

CASES: list[tuple[str, dict[str, Any], CommandSet]] = [
    (
        "C_ECHO_RQ",
        {"MessageID": 1, "AffectedSOPClassUID": VERIFICATION},
        CommandSet(D.C_ECHO_RQ, message_id=1, affected_sop_class_uid=VERIFICATION),
    ),
    (
        "C_ECHO_RSP",
        {"MessageIDBeingRespondedTo": 1, "AffectedSOPClassUID": VERIFICATION, "Status": 0},
        CommandSet(D.C_ECHO_RSP, message_id_being_responded_to=1, affected_sop_class_uid=VERIFICATION, status=0),
    ),
    (
        "C_STORE_RQ",
        {
            "MessageID": 7,
            "AffectedSOPClassUID": CT,
            "AffectedSOPInstanceUID": SOP_INSTANCE,
            "Priority": 2,
            "MoveOriginatorApplicationEntityTitle": "MOVESCU",
            "MoveOriginatorMessageID": 3,
            "DataSet": BytesIO(b"\x00"),
        },
        CommandSet(
            D.C_STORE_RQ,
            message_id=7,
            affected_sop_class_uid=CT,
            affected_sop_instance_uid=SOP_INSTANCE,
            priority=2,
            command_data_set_type=DS,
            move_originator_ae="MOVESCU",
            move_originator_message_id=3,
        ),
    ),
    (
        "C_STORE_RSP",
        {
            "MessageIDBeingRespondedTo": 7,
            "AffectedSOPClassUID": CT,
            "AffectedSOPInstanceUID": SOP_INSTANCE,
            "Status": 0xB000,
            "ErrorComment": "Coerced",
        },
        CommandSet(
            D.C_STORE_RSP,
            message_id_being_responded_to=7,
            affected_sop_class_uid=CT,
            affected_sop_instance_uid=SOP_INSTANCE,
            status=0xB000,
            error_comment="Coerced",
        ),
    ),
    (
        "C_FIND_RQ",
        {"MessageID": 9, "AffectedSOPClassUID": STUDY_FIND, "Priority": 0, "Identifier": BytesIO(b"\x00")},
        CommandSet(D.C_FIND_RQ, message_id=9, affected_sop_class_uid=STUDY_FIND, priority=0, command_data_set_type=DS),
    ),
    (
        "C_FIND_RSP",
        {"MessageIDBeingRespondedTo": 9, "AffectedSOPClassUID": STUDY_FIND, "Status": 0xFF00,
         "Identifier": BytesIO(b"\x00")},
        CommandSet(
            D.C_FIND_RSP,
            message_id_being_responded_to=9,
            affected_sop_class_uid=STUDY_FIND,
            status=0xFF00,
            command_data_set_type=DS,
        ),
    ),
    (
        "C_MOVE_RQ",
        {
            "MessageID": 11,
            "AffectedSOPClassUID": STUDY_MOVE,
            "Priority": 1,
            "MoveDestination": "STORESCP",
            "Identifier": BytesIO(b"\x00"),
        },
        CommandSet(
            D.C_MOVE_RQ,
            message_id=11,
            affected_sop_class_uid=STUDY_MOVE,
            priority=1,
            move_destination="STORESCP",
            command_data_set_type=DS,
        ),
    ),
    (
        "C_MOVE_RSP",
        {
            "MessageIDBeingRespondedTo": 11,
            "AffectedSOPClassUID": STUDY_MOVE,
            "Status": 0xFF00,
            "NumberOfRemainingSuboperations": 10,
            "NumberOfCompletedSuboperations": 5,
            "NumberOfFailedSuboperations": 1,
            "NumberOfWarningSuboperations": 2,
        },
        CommandSet(
            D.C_MOVE_RSP,
            message_id_being_responded_to=11,
            affected_sop_class_uid=STUDY_MOVE,
            status=0xFF00,
            remaining_suboperations=10,
            completed_suboperations=5,
            failed_suboperations=1,
            warning_suboperations=2,
        ),
    ),
    (
        "C_GET_RQ",
        {"MessageID": 13, "AffectedSOPClassUID": STUDY_GET, "Priority": 0, "Identifier": BytesIO(b"\x00")},
        CommandSet(D.C_GET_RQ, message_id=13, affected_sop_class_uid=STUDY_GET, priority=0, command_data_set_type=DS),
    ),
    (
        "C_GET_RSP",
        {
            "MessageIDBeingRespondedTo": 13,
            "AffectedSOPClassUID": STUDY_GET,
            "Status": 0xA702,
            "NumberOfRemainingSuboperations": 0,
            "NumberOfCompletedSuboperations": 3,
            "NumberOfFailedSuboperations": 4,
            "NumberOfWarningSuboperations": 0,
            "ErrorComment": "disk full",
        },
        CommandSet(
            D.C_GET_RSP,
            message_id_being_responded_to=13,
            affected_sop_class_uid=STUDY_GET,
            status=0xA702,
            remaining_suboperations=0,
            completed_suboperations=3,
            failed_suboperations=4,
            warning_suboperations=0,
            error_comment="disk full",
        ),
    ),
    (
        "C_CANCEL_RQ",
        {"MessageIDBeingRespondedTo": 11},
        CommandSet(D.C_CANCEL_RQ, message_id_being_responded_to=11),
    ),
    (
        "N_EVENT_REPORT_RQ",
        {
            "MessageID": 2,
            "AffectedSOPClassUID": COMMIT,
            "AffectedSOPInstanceUID": COMMIT_INSTANCE,
            "EventTypeID": 1,
            "EventInformation": BytesIO(b"\x00"),
        },
        CommandSet(
            D.N_EVENT_REPORT_RQ,
            message_id=2,
            affected_sop_class_uid=COMMIT,
            affected_sop_instance_uid=COMMIT_INSTANCE,
            event_type_id=1,
            command_data_set_type=DS,
        ),
    ),
    (
        "N_EVENT_REPORT_RSP",
        {
            "MessageIDBeingRespondedTo": 2,
            "AffectedSOPClassUID": COMMIT,
            "AffectedSOPInstanceUID": COMMIT_INSTANCE,
            "EventTypeID": 1,
            "Status": 0,
        },
        CommandSet(
            D.N_EVENT_REPORT_RSP,
            message_id_being_responded_to=2,
            affected_sop_class_uid=COMMIT,
            affected_sop_instance_uid=COMMIT_INSTANCE,
            event_type_id=1,
            status=0,
        ),
    ),
    (
        "N_GET_RQ",
        {
            "MessageID": 3,
            "RequestedSOPClassUID": MPPS,
            "RequestedSOPInstanceUID": SOP_INSTANCE,
            "AttributeIdentifierList": [0x00100010, 0x00100020],
        },
        CommandSet(
            D.N_GET_RQ,
            message_id=3,
            requested_sop_class_uid=MPPS,
            requested_sop_instance_uid=SOP_INSTANCE,
            other={0x00001005: struct.pack("<HHHH", 0x0010, 0x0010, 0x0010, 0x0020)},
        ),
    ),
    (
        "N_SET_RQ",
        {
            "MessageID": 4,
            "RequestedSOPClassUID": MPPS,
            "RequestedSOPInstanceUID": SOP_INSTANCE,
            "ModificationList": BytesIO(b"\x00"),
        },
        CommandSet(
            D.N_SET_RQ,
            message_id=4,
            requested_sop_class_uid=MPPS,
            requested_sop_instance_uid=SOP_INSTANCE,
            command_data_set_type=DS,
        ),
    ),
    (
        "N_SET_RSP",
        {
            "MessageIDBeingRespondedTo": 4,
            "AffectedSOPClassUID": MPPS,
            "AffectedSOPInstanceUID": SOP_INSTANCE,
            "Status": 0x0106,
            "ErrorID": 5,
        },
        CommandSet(
            D.N_SET_RSP,
            message_id_being_responded_to=4,
            affected_sop_class_uid=MPPS,
            affected_sop_instance_uid=SOP_INSTANCE,
            status=0x0106,
            error_id=5,
        ),
    ),
    (
        "N_ACTION_RQ",
        {
            "MessageID": 5,
            "RequestedSOPClassUID": COMMIT,
            "RequestedSOPInstanceUID": COMMIT_INSTANCE,
            "ActionTypeID": 1,
            "ActionInformation": BytesIO(b"\x00"),
        },
        CommandSet(
            D.N_ACTION_RQ,
            message_id=5,
            requested_sop_class_uid=COMMIT,
            requested_sop_instance_uid=COMMIT_INSTANCE,
            action_type_id=1,
            command_data_set_type=DS,
        ),
    ),
    (
        "N_CREATE_RQ",
        {
            "MessageID": 6,
            "AffectedSOPClassUID": MPPS,
            "AffectedSOPInstanceUID": SOP_INSTANCE,
            "AttributeList": BytesIO(b"\x00"),
        },
        CommandSet(
            D.N_CREATE_RQ,
            message_id=6,
            affected_sop_class_uid=MPPS,
            affected_sop_instance_uid=SOP_INSTANCE,
            command_data_set_type=DS,
        ),
    ),
    (
        "N_DELETE_RQ",
        {"MessageID": 8, "RequestedSOPClassUID": MPPS, "RequestedSOPInstanceUID": SOP_INSTANCE},
        CommandSet(D.N_DELETE_RQ, message_id=8, requested_sop_class_uid=MPPS, requested_sop_instance_uid=SOP_INSTANCE),
    ),
    (
        "N_DELETE_RSP",
        {"MessageIDBeingRespondedTo": 8, "AffectedSOPClassUID": MPPS, "AffectedSOPInstanceUID": SOP_INSTANCE,
         "Status": 0},
        CommandSet(
            D.N_DELETE_RSP,
            message_id_being_responded_to=8,
            affected_sop_class_uid=MPPS,
            affected_sop_instance_uid=SOP_INSTANCE,
            status=0,
        ),
    ),
]


@pytest.mark.parametrize("message,attrs,expected", CASES, ids=[c[0] for c in CASES])
def test_decodes_pynetdicom_command_sets(message: str, attrs: dict[str, Any], expected: CommandSet) -> None:
    raw = pnd_command_set(message, **attrs)
    decoded = D.decode_command_set(raw)
    assert decoded == expected
    assert decoded.name == message.replace("_", "-")
    assert decoded.has_dataset == (expected.command_data_set_type != NONE)
    # and our encoder produces the very same bytes
    assert D.encode_command_set(decoded) == raw


def test_command_set_properties() -> None:
    rq = CommandSet(D.N_ACTION_RQ, message_id=5, requested_sop_class_uid=COMMIT, requested_sop_instance_uid="1.2")
    assert rq.is_request and not rq.is_response
    assert rq.sop_class_uid == COMMIT and rq.sop_instance_uid == "1.2"
    assert rq.correlation_id == 5
    rsp = CommandSet(D.C_STORE_RSP, message_id_being_responded_to=9)
    assert rsp.is_response and rsp.correlation_id == 9


def test_command_names() -> None:
    assert D.command_name(0x0001) == "C-STORE-RQ"
    assert D.command_name(0x8021) == "C-MOVE-RSP"
    assert D.command_name(0x0FFF) == "C-CANCEL-RQ"
    assert D.command_name(0x8150) == "N-DELETE-RSP"
    assert D.command_name(0x1234) == "UNKNOWN-0x1234"
    assert len(D.COMMAND_NAMES) == 23


@pytest.mark.parametrize(
    "status,category",
    [
        (0x0000, "success"),
        (0xFF00, "pending"),
        (0xFF01, "pending"),
        (0xFE00, "cancel"),
        (0x0001, "warning"),
        (0x0107, "warning"),
        (0x0116, "warning"),
        (0xB000, "warning"),
        (0xB007, "warning"),
        (0x0122, "failure"),
        (0x0124, "failure"),
        (0x0110, "failure"),
        (0x0211, "failure"),
        (0xA700, "failure"),
        (0xA801, "failure"),
        (0xA900, "failure"),
        (0xC000, "failure"),
        (0xCFFF, "failure"),
        (0x0300, "failure"),
    ],
)
def test_status_category(status: int, category: str) -> None:
    assert D.status_category(status) == category


# ------------------------------------------------------------- responses


def decoded_request(message: str, **attrs: Any) -> CommandSet:
    return D.decode_command_set(pnd_command_set(message, **attrs))


@pytest.mark.parametrize(
    "request_case,status,comment,rsp_message,rsp_attrs",
    [
        (0, 0x0000, None, "C_ECHO_RSP",
         {"MessageIDBeingRespondedTo": 1, "AffectedSOPClassUID": VERIFICATION, "Status": 0}),
        (
            2,
            D.STATUS_NOT_AUTHORIZED,
            "blocked by pacsguard",
            "C_STORE_RSP",
            {
                "MessageIDBeingRespondedTo": 7,
                "AffectedSOPClassUID": CT,
                "AffectedSOPInstanceUID": SOP_INSTANCE,
                "Status": 0x0124,
                "ErrorComment": "blocked by pacsguard",
            },
        ),
        (4, D.STATUS_OUT_OF_RESOURCES, None, "C_FIND_RSP",
         {"MessageIDBeingRespondedTo": 9, "AffectedSOPClassUID": STUDY_FIND, "Status": 0xA700}),
        (
            6,
            D.STATUS_MOVE_DESTINATION_UNKNOWN,
            None,
            "C_MOVE_RSP",
            {
                "MessageIDBeingRespondedTo": 11,
                "AffectedSOPClassUID": STUDY_MOVE,
                "Status": 0xA801,
                "NumberOfRemainingSuboperations": 0,
                "NumberOfCompletedSuboperations": 0,
                "NumberOfFailedSuboperations": 0,
                "NumberOfWarningSuboperations": 0,
            },
        ),
        (
            8,
            D.STATUS_SOP_CLASS_NOT_SUPPORTED,
            None,
            "C_GET_RSP",
            {
                "MessageIDBeingRespondedTo": 13,
                "AffectedSOPClassUID": STUDY_GET,
                "Status": 0x0122,
                "NumberOfRemainingSuboperations": 0,
                "NumberOfCompletedSuboperations": 0,
                "NumberOfFailedSuboperations": 0,
                "NumberOfWarningSuboperations": 0,
            },
        ),
        (
            11,
            D.STATUS_PROCESSING_FAILURE,
            None,
            "N_EVENT_REPORT_RSP",
            {
                "MessageIDBeingRespondedTo": 2,
                "AffectedSOPClassUID": COMMIT,
                "AffectedSOPInstanceUID": COMMIT_INSTANCE,
                "EventTypeID": 1,
                "Status": 0x0110,
            },
        ),
        (
            16,
            D.STATUS_NOT_AUTHORIZED,
            None,
            "N_ACTION_RSP",
            {
                "MessageIDBeingRespondedTo": 5,
                "AffectedSOPClassUID": COMMIT,
                "AffectedSOPInstanceUID": COMMIT_INSTANCE,
                "ActionTypeID": 1,
                "Status": 0x0124,
            },
        ),
        (
            13,
            D.STATUS_UNRECOGNIZED_OPERATION,
            None,
            "N_GET_RSP",
            {"MessageIDBeingRespondedTo": 3, "AffectedSOPClassUID": MPPS, "AffectedSOPInstanceUID": SOP_INSTANCE,
             "Status": 0x0211},
        ),
        (
            14,
            D.STATUS_CANNOT_UNDERSTAND,
            None,
            "N_SET_RSP",
            {"MessageIDBeingRespondedTo": 4, "AffectedSOPClassUID": MPPS, "AffectedSOPInstanceUID": SOP_INSTANCE,
             "Status": 0xC000},
        ),
        (
            17,
            D.STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
            None,
            "N_CREATE_RSP",
            {"MessageIDBeingRespondedTo": 6, "AffectedSOPClassUID": MPPS, "AffectedSOPInstanceUID": SOP_INSTANCE,
             "Status": 0xA900},
        ),
        (
            18,
            D.STATUS_NOT_AUTHORIZED,
            None,
            "N_DELETE_RSP",
            {"MessageIDBeingRespondedTo": 8, "AffectedSOPClassUID": MPPS, "AffectedSOPInstanceUID": SOP_INSTANCE,
             "Status": 0x0124},
        ),
    ],
)
def test_response_for_matches_pynetdicom(
    request_case: int, status: int, comment: str | None, rsp_message: str, rsp_attrs: dict[str, Any]
) -> None:
    message, attrs, _ = CASES[request_case]
    request = decoded_request(message, **attrs)
    ours = D.response_for(request, status, error_comment=comment)
    assert ours == pnd_command_set(rsp_message, **rsp_attrs)
    decoded = D.decode_command_set(ours)
    assert decoded.command_field == request.command_field | 0x8000
    assert decoded.message_id_being_responded_to == request.message_id
    assert decoded.command_data_set_type == 0x0101 and not decoded.has_dataset
    assert decoded.status == status


def test_response_for_truncates_and_sanitises_comment() -> None:
    request = CASES[2][2]
    decoded = D.decode_command_set(D.response_for(request, 0xA700, error_comment="é" + "x" * 100))
    assert decoded.error_comment == "?" + "x" * 63


@pytest.mark.parametrize("case", [1, 10])  # a response and C-CANCEL-RQ
def test_response_for_refuses_messages_without_response(case: int) -> None:
    with pytest.raises(ValueError):
        D.response_for(CASES[case][2], 0)


# ------------------------------------------------------------------ errors


def element(elem: int, value: bytes, group: int = 0) -> bytes:
    return struct.pack("<HHI", group, elem, len(value)) + value


def with_group_length(body: bytes) -> bytes:
    return element(0x0000, struct.pack("<I", len(body))) + body


ECHO_BODY = element(0x0002, b"1.2.840.10008.1.1\x00") + element(0x0100, b"\x30\x00") + element(
    0x0110, b"\x01\x00"
) + element(0x0800, b"\x01\x01")


def test_valid_handmade_command_set() -> None:
    decoded = D.decode_command_set(with_group_length(ECHO_BODY))
    assert decoded == CommandSet(D.C_ECHO_RQ, message_id=1, affected_sop_class_uid=VERIFICATION)
    assert D.decode_command_set(ECHO_BODY, require_group_length=False) == decoded


CRAFTED = [
    # (code, raw, offset, needles)
    (E.COMMAND_SET_INVALID, with_group_length(ECHO_BODY + element(0x0010, b"", group=8)), 68, ("(0008,0010)",)),
    (E.COMMAND_SET_INVALID, ECHO_BODY, 0, ("(0000,0000)",)),
    (E.COMMAND_SET_INVALID, with_group_length(element(0x0800, b"\x01\x01")), None, ("Command Field",)),
    (E.COMMAND_SET_INVALID, with_group_length(element(0x0100, b"\x30\x00")), None, ("Command Data Set Type",)),
    (E.COMMAND_SET_TOO_LARGE, with_group_length(element(0x1234, bytes(70000))), None, ("70020", "65536")),
    (E.COMMAND_GROUP_LENGTH_MISMATCH, element(0, struct.pack("<I", 99)) + ECHO_BODY, 8, ("99", str(len(ECHO_BODY)))),
    (E.COMMAND_ELEMENT_TRUNCATED, element(0, struct.pack("<I", 10)) + struct.pack("<HHI", 0, 0x0100, 10) + b"\x30\x00",
     16, ("announces 10 bytes but only 2 remain",)),
    (E.COMMAND_ELEMENT_TRUNCATED, ECHO_BODY + b"\x00\x00\x00", 56, ("3 trailing",)),
    (E.COMMAND_ELEMENT_BAD_LENGTH, with_group_length(element(0x0100, b"\x30\x00\x00\x00")), 16,
     ("length 4, expected 2",)),
    (E.COMMAND_ELEMENT_BAD_LENGTH, element(0, b"\x00\x00"), 4, ("length 2, expected 4",)),
    (E.COMMAND_ELEMENT_BAD_LENGTH, with_group_length(element(0x0600, b"A" * 18)), 20, ("18 characters", "16")),
    (E.COMMAND_ELEMENT_ORDER, with_group_length(element(0x0100, b"\x30\x00") + element(0x0002, b"1.2\x00")), 22,
     ("(0000,0002) follows (0000,0100)",)),
    (E.COMMAND_ELEMENT_ORDER, with_group_length(element(0x0100, b"\x30\x00") * 2), 22, ("unique",)),
    (E.COMMAND_ELEMENT_NOT_ASCII, with_group_length(element(0x0002, b"1.2\xc3\x84")), 20, ("not ASCII",)),
]


@pytest.mark.parametrize("code,raw,offset,needles", CRAFTED, ids=[f"{c[0]}-{i}" for i, c in enumerate(CRAFTED)])
def test_crafted_command_sets(code: str, raw: bytes, offset: int | None, needles: tuple[str, ...]) -> None:
    with pytest.raises(DecodeError) as info:
        D.decode_command_set(raw)
    err = info.value
    assert err.code == code, str(err)
    if offset is not None:
        assert err.offset == offset, str(err)
        assert f"offset {offset}" in str(err)
    for needle in needles:
        assert needle in str(err), str(err)


def test_unknown_elements_are_kept_and_re_encoded() -> None:
    body = ECHO_BODY + element(0x0901, b"\x10\x00\x20\x00")
    decoded = D.decode_command_set(with_group_length(body), require_group_length=True)
    assert decoded.other == {0x00000901: b"\x10\x00\x20\x00"}
    assert D.encode_command_set(decoded) == with_group_length(body)


def test_encoder_rejects_foreign_other_tags() -> None:
    with pytest.raises(ValueError):
        D.encode_command_set(CommandSet(D.C_ECHO_RQ, other={0x00080016: b"x"}))


# --- deviations a caller may tolerate (the gateway: gateway/violations.py) -------------------------

TRAILING = element(0x0000, struct.pack("<I", 10), group=8) + element(0x0058, b"1\x00", group=8)


def collecting(accept: bool) -> tuple[list[DecodeError], Any]:
    offered: list[DecodeError] = []

    def tolerate(err: DecodeError) -> bool:
        offered.append(err)
        return accept

    return offered, tolerate


def test_a_tolerated_group_length_mismatch_decodes_the_elements() -> None:
    offered, tolerate = collecting(True)
    raw = element(0, struct.pack("<I", 99)) + ECHO_BODY
    assert D.decode_command_set(raw, tolerate=tolerate) == D.decode_command_set(with_group_length(ECHO_BODY))
    assert [(e.code, e.offset) for e in offered] == [(E.COMMAND_GROUP_LENGTH_MISMATCH, 8)]


def test_elements_after_the_delimited_command_group_are_offered_then_ignored() -> None:
    offered, tolerate = collecting(True)
    decoded = D.decode_command_set(with_group_length(ECHO_BODY) + TRAILING, tolerate=tolerate)
    assert decoded == D.decode_command_set(with_group_length(ECHO_BODY)) and decoded.other == {}
    assert [(e.code, e.offset) for e in offered] == [(E.COMMAND_SET_TRAILING_ELEMENTS, 12 + len(ECHO_BODY))]


def test_refused_deviations_raise_as_without_a_hook() -> None:
    for raw, code in ((element(0, struct.pack("<I", 99)) + ECHO_BODY, E.COMMAND_GROUP_LENGTH_MISMATCH),
                      (with_group_length(ECHO_BODY) + TRAILING, E.COMMAND_SET_INVALID)):
        offered, tolerate = collecting(False)
        with pytest.raises(DecodeError) as info:
            D.decode_command_set(raw, tolerate=tolerate)
        assert info.value.code == code and len(offered) == 1


def test_trailing_elements_are_tolerable_only_when_well_formed_and_where_the_group_length_ends() -> None:
    cases = [with_group_length(ECHO_BODY) + TRAILING[:-1],  # truncated value
             with_group_length(ECHO_BODY) + TRAILING[12:] + TRAILING[:12],  # descending tags
             element(0, struct.pack("<I", 20)) + ECHO_BODY + TRAILING]  # group length ends elsewhere
    for raw in cases:
        offered, tolerate = collecting(True)
        with pytest.raises(DecodeError) as info:
            D.decode_command_set(raw, tolerate=tolerate)
        assert info.value.code == E.COMMAND_SET_INVALID
        assert E.COMMAND_SET_TRAILING_ELEMENTS not in [e.code for e in offered]
