"""PDU parsing/encoding: pynetdicom byte-exact comparisons, round trips, error codes."""

from __future__ import annotations

import struct

import pytest
from pynetdicom import pdu as pnd_pdu
from pynetdicom import pdu_primitives as prims
from pynetdicom.dimse_messages import C_ECHO_RQ as PndEchoRQ
from pynetdicom.dimse_primitives import C_ECHO as PndEcho
from pynetdicom.presentation import PresentationContext

from pacsguard.dicom import errors as E
from pacsguard.dicom import pdu as P
from pacsguard.dicom.errors import DecodeError

CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
IVLE = "1.2.840.10008.1.2"
EVLE = "1.2.840.10008.1.2.1"
APP_CONTEXT = "1.2.840.10008.3.1.1.1"


# ----------------------------------------------------------------- builders


def pnd_context(cid: int, abstract: str, syntaxes: list[str], result: int | None = None):
    cx = PresentationContext()
    cx.context_id = cid
    cx.abstract_syntax = abstract
    cx.transfer_syntax = syntaxes
    if result is not None:
        cx.result = result
    return cx


def pnd_user_info(identity_rq: bool) -> list:
    ml = prims.MaximumLengthNotification()
    ml.maximum_length_received = 16382
    ic = prims.ImplementationClassUIDNotification()
    ic.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.2.1"
    iv = prims.ImplementationVersionNameNotification()
    iv.implementation_version_name = "PACSGUARD_01"
    aw = prims.AsynchronousOperationsWindowNegotiation()
    aw.maximum_number_operations_invoked = 5
    aw.maximum_number_operations_performed = 3
    rs = prims.SCP_SCU_RoleSelectionNegotiation()
    rs.sop_class_uid = CT
    rs.scu_role = True
    rs.scp_role = False
    en = prims.SOPClassExtendedNegotiation()
    en.sop_class_uid = "1.2.840.10008.5.1.4.1.2.2.1"
    en.service_class_application_information = b"\x01\x00\x01"
    items = [ml, ic, iv, aw, rs, en]
    if identity_rq:
        ce = prims.SOPClassCommonExtendedNegotiation()
        ce.sop_class_uid = "1.2.840.10008.5.1.4.1.1.88.22"
        ce.service_class_uid = "1.2.840.10008.4.2"
        ce.related_general_sop_class_identification = [
            "1.2.840.10008.5.1.4.1.1.88.11",
            "1.2.840.10008.5.1.4.1.1.88.33",
        ]
        ui = prims.UserIdentityNegotiation()
        ui.user_identity_type = 2
        ui.positive_response_requested = True
        ui.primary_field = b"alice"
        ui.secondary_field = b"s3cret"
        items += [ce, ui]
    else:
        ui = prims.UserIdentityNegotiation()
        ui.server_response = b"ticket-ok"
        items.append(ui)
    return items


def pnd_associate_rq_bytes() -> bytes:
    prim = prims.A_ASSOCIATE()
    prim.application_context_name = APP_CONTEXT
    prim.calling_ae_title = "CT_SCANNER"
    prim.called_ae_title = "PACS_MAIN"
    prim.presentation_context_definition_list = [
        pnd_context(1, VERIFICATION, [IVLE]),
        pnd_context(3, CT, [EVLE, IVLE]),
        pnd_context(5, "1.2.840.10008.5.1.4.1.1.104.1", [IVLE]),
    ]
    prim.user_information = pnd_user_info(identity_rq=True)
    pdu = pnd_pdu.A_ASSOCIATE_RQ()
    pdu.from_primitive(prim)
    return pdu.encode()


def pnd_associate_ac_bytes() -> bytes:
    prim = prims.A_ASSOCIATE()
    prim.application_context_name = APP_CONTEXT
    prim.calling_ae_title = "CT_SCANNER"
    prim.called_ae_title = "PACS_MAIN"
    prim.result = 0
    prim.presentation_context_definition_results_list = [
        pnd_context(1, VERIFICATION, [IVLE], result=0),
        pnd_context(3, CT, [EVLE], result=0),
        pnd_context(5, "1.2.840.10008.5.1.4.1.1.104.1", [IVLE], result=3),
    ]
    prim.user_information = pnd_user_info(identity_rq=False)
    pdu = pnd_pdu.A_ASSOCIATE_AC()
    pdu.from_primitive(prim)
    return pdu.encode()


def expected_user_info(request: bool) -> P.UserInformation:
    items: list = [
        P.MaximumLength(16382),
        P.ImplementationClassUID("1.2.826.0.1.3680043.9.3811.2.1"),
        P.ImplementationVersionName("PACSGUARD_01"),
        P.AsyncOperationsWindow(5, 3),
        P.RoleSelection(CT, 1, 0),
        P.SOPClassExtendedNegotiation("1.2.840.10008.5.1.4.1.2.2.1", b"\x01\x00\x01"),
    ]
    if request:
        items += [
            P.SOPClassCommonExtendedNegotiation(
                "1.2.840.10008.5.1.4.1.1.88.22",
                "1.2.840.10008.4.2",
                ["1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.88.33"],
            ),
            P.UserIdentityRQ(2, True, b"alice", b"s3cret"),
        ]
    else:
        items.append(P.UserIdentityAC(b"ticket-ok"))
    return P.UserInformation(items)


def expected_rq() -> P.AssociateRQ:
    return P.AssociateRQ(
        called_ae_title="PACS_MAIN",
        calling_ae_title="CT_SCANNER",
        presentation_contexts=[
            P.PresentationContextRQ(1, VERIFICATION, [IVLE]),
            P.PresentationContextRQ(3, CT, [EVLE, IVLE]),
            P.PresentationContextRQ(5, "1.2.840.10008.5.1.4.1.1.104.1", [IVLE]),
        ],
        user_information=expected_user_info(True),
    )


def expected_ac() -> P.AssociateAC:
    return P.AssociateAC(
        called_ae_title="PACS_MAIN",
        calling_ae_title="CT_SCANNER",
        presentation_contexts=[
            P.PresentationContextAC(1, 0, IVLE),
            P.PresentationContextAC(3, 0, EVLE),
            P.PresentationContextAC(5, 3, IVLE),
        ],
        user_information=expected_user_info(False),
    )


def item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def pdu(pdu_type: int, body: bytes, reserved: int = 0) -> bytes:
    return struct.pack(">BBI", pdu_type, reserved, len(body)) + body


def associate_fixed(called: bytes = b"PACS".ljust(16), calling: bytes = b"MOD".ljust(16)) -> bytes:
    return b"\x00\x01\x00\x00" + called + calling + bytes(32)


def pc_rq(cid: int, abstract: str = VERIFICATION, syntaxes: tuple[str, ...] = (IVLE,)) -> bytes:
    body = bytes((cid, 0, 0, 0)) + item(0x30, abstract.encode())
    body += b"".join(item(0x40, ts.encode()) for ts in syntaxes)
    return item(0x20, body)


def rq_bytes(*items: bytes, fixed: bytes | None = None) -> bytes:
    return pdu(0x01, (fixed or associate_fixed()) + b"".join(items))


APP = item(0x10, APP_CONTEXT.encode())
UI = item(0x50, item(0x51, struct.pack(">I", 16384)))


# ----------------------------------------------------- pynetdicom byte-exact


def test_associate_rq_matches_pynetdicom_bytes() -> None:
    raw = pnd_associate_rq_bytes()
    assert P.parse_associate_rq(raw) == expected_rq()
    assert P.encode_associate_rq(expected_rq()) == raw


def test_associate_ac_matches_pynetdicom_bytes() -> None:
    raw = pnd_associate_ac_bytes()
    assert P.parse_associate_ac(raw) == expected_ac()
    assert P.encode_associate_ac(expected_ac()) == raw


def test_pynetdicom_decodes_our_associate_rq() -> None:
    decoded = pnd_pdu.A_ASSOCIATE_RQ()
    decoded.decode(P.encode_associate_rq(expected_rq()))
    assert decoded.called_ae_title == "PACS_MAIN"
    assert decoded.calling_ae_title == "CT_SCANNER"
    assert [cx.context_id for cx in decoded.presentation_context] == [1, 3, 5]
    assert decoded.user_information.maximum_length == 16382


@pytest.mark.parametrize("result,source,reason", [(1, 1, 7), (2, 3, 1), (1, 2, 2), (1, 1, 3)])
def test_associate_rj_matches_pynetdicom(result: int, source: int, reason: int) -> None:
    prim = prims.A_ASSOCIATE()
    prim.result = result
    prim.result_source = source
    prim.diagnostic = reason
    pnd = pnd_pdu.A_ASSOCIATE_RJ()
    pnd.from_primitive(prim)
    raw = pnd.encode()
    assert P.encode_associate_rj(result, source, reason) == raw
    assert P.parse_associate_rj(raw) == P.AssociateRJ(result, source, reason)


def test_p_data_tf_matches_pynetdicom() -> None:
    command = bytes(range(40))
    data = b"\x08\x00\x18\x00" * 100
    prim = prims.P_DATA()
    prim.presentation_data_value_list = [[1, b"\x03" + command], [3, b"\x00" + data], [5, b"\x02"]]
    pnd = pnd_pdu.P_DATA_TF()
    pnd.from_primitive(prim)
    raw = pnd.encode()
    ours = P.encode_p_data_tf(
        [P.PDV(1, True, True, command), P.PDV(3, False, False, data), P.PDV(5, False, True, b"")]
    )
    assert ours == raw
    parsed = P.parse_p_data_tf(raw)
    assert [(p.context_id, p.is_command, p.is_last, bytes(p.value)) for p in parsed.pdvs] == [
        (1, True, True, command),
        (3, False, False, data),
        (5, False, True, b""),
    ]


def test_p_data_tf_values_are_zero_copy_views() -> None:
    raw = P.encode_p_data_tf([P.PDV(7, False, True, b"abcdef")])
    value = P.parse_p_data_tf(raw).pdvs[0].value
    assert isinstance(value, memoryview)
    assert value.obj is raw


@pytest.mark.parametrize("source,reason", [(0, 0), (2, 1), (2, 2), (2, 6)])
def test_abort_matches_pynetdicom(source: int, reason: int) -> None:
    if source == 0:
        prim = prims.A_ABORT()
        prim.abort_source = 0
    else:
        prim = prims.A_P_ABORT()
        prim.provider_reason = reason
    pnd = pnd_pdu.A_ABORT_RQ()
    pnd.from_primitive(prim)
    raw = pnd.encode()
    assert P.encode_abort(source, reason) == raw
    assert P.parse_abort(raw) == P.Abort(source, reason)


def test_release_matches_pynetdicom() -> None:
    assert P.encode_release_rq() == pnd_pdu.A_RELEASE_RQ().encode()
    assert P.encode_release_rp() == pnd_pdu.A_RELEASE_RP().encode()
    assert P.parse_release_rq(P.encode_release_rq()) == P.ReleaseRQ()
    assert P.parse_release_rp(P.encode_release_rp()) == P.ReleaseRP()


@pytest.mark.parametrize("max_pdu", [0, 16, 64, 1000])
def test_encode_dimse_message_matches_pynetdicom_fragmentation(max_pdu: int) -> None:
    prim = PndEcho()
    prim.MessageID = 7
    prim.AffectedSOPClassUID = VERIFICATION
    msg = PndEchoRQ()
    msg.primitive_to_message(prim)
    theirs = []
    for p_data in msg.encode_msg(1, max_pdu):
        pnd = pnd_pdu.P_DATA_TF()
        pnd.from_primitive(p_data)
        theirs.append(pnd.encode())
    from pynetdicom.dsutils import encode

    command = encode(msg.command_set, True, True)
    assert P.encode_dimse_message(1, command, None, max_pdu) == theirs


# ------------------------------------------------------------- round trips


def all_pdus() -> list[P.ParsedPDU]:
    return [
        expected_rq(),
        expected_ac(),
        P.AssociateRJ(1, 1, 7),
        P.PDataTF([P.PDV(1, True, True, b"\x00\x00"), P.PDV(3, False, False, b"xyz")]),
        P.ReleaseRQ(),
        P.ReleaseRP(),
        P.Abort(2, 6),
        P.AssociateRQ("A", "B", [P.PresentationContextRQ(255, CT, [IVLE])]),
        P.AssociateAC(
            "A",
            "B",
            [P.PresentationContextAC(255, 4, None)],
            P.UserInformation([P.UnknownSubItem(0x7F, b"\x01\x02")]),
        ),
    ]


@pytest.mark.parametrize("value", all_pdus(), ids=lambda v: type(v).__name__)
def test_round_trip_every_pdu_type(value: P.ParsedPDU) -> None:
    raw = P.encode_pdu(value)
    parsed = P.parse_pdu(raw)
    if isinstance(value, P.PDataTF):
        assert [(p.context_id, p.is_command, p.is_last, bytes(p.value)) for p in parsed.pdvs] == [
            (p.context_id, p.is_command, p.is_last, bytes(p.value)) for p in value.pdvs
        ]
    else:
        assert parsed == value
    assert P.encode_pdu(parsed) == raw


def test_user_information_build_and_accessors() -> None:
    info = P.UserInformation.build(
        max_length=0,
        implementation_class_uid="1.2.3",
        implementation_version_name="X",
        async_operations_window=P.AsyncOperationsWindow(1, 1),
        role_selections=[P.RoleSelection(CT, 0, 1)],
        user_identity=P.UserIdentityRQ(1, False, b"bob"),
    )
    assert info.max_length == 0
    assert info.implementation_class_uid == "1.2.3"
    assert info.implementation_version_name == "X"
    assert info.async_operations_window == P.AsyncOperationsWindow(1, 1)
    assert info.role_selections == [P.RoleSelection(CT, 0, 1)]
    assert info.user_identity == P.UserIdentityRQ(1, False, b"bob")
    assert info.unknown == [] and info.extended_negotiations == []
    assert info.common_extended_negotiations == []
    rq = P.AssociateRQ("A", "B", [P.PresentationContextRQ(1, CT, [IVLE])], info)
    assert P.parse_associate_rq(P.encode_associate_rq(rq)) == rq
    assert rq.max_length == 0 and rq.context(1) is not None and rq.context(3) is None


def test_user_identity_repr_hides_secrets() -> None:
    text = repr(P.UserIdentityRQ(2, True, b"alice", b"hunter2")) + repr(P.UserIdentityAC(b"tok"))
    assert "hunter2" not in text and "alice" not in text and "tok" not in text
    assert "<7 bytes>" in text


def test_uid_padding_and_ae_padding_are_stripped() -> None:
    raw = rq_bytes(
        item(0x10, APP_CONTEXT.encode() + b"\x00"),
        pc_rq(1, VERIFICATION + "\x00"),
        UI,
        fixed=associate_fixed(b"  PACS\x00".ljust(16), b"MOD".ljust(16, b"\x00")),
    )
    rq = P.parse_associate_rq(raw)
    assert rq.called_ae_title == "PACS"
    assert rq.calling_ae_title == "MOD"
    assert rq.application_context_name == APP_CONTEXT
    assert rq.presentation_contexts[0].abstract_syntax == VERIFICATION


def test_rejected_context_transfer_syntax_is_not_tested() -> None:
    body = associate_fixed() + APP
    body += item(0x21, bytes((1, 0, 3, 0)) + item(0x40, b"\x01\x02garbage"))
    body += item(0x21, bytes((3, 0, 4, 0)))  # sub-item missing entirely
    ac = P.parse_associate_ac(pdu(0x02, body))
    assert ac.presentation_contexts == [
        P.PresentationContextAC(1, 3, None),
        P.PresentationContextAC(3, 4, None),
    ]
    # re-encoding always writes the (empty) sub-item the standard requires
    again = P.parse_associate_ac(P.encode_associate_ac(ac))
    assert again == ac


# ------------------------------------------------------------- with_called_ae


def test_with_called_ae_patches_only_the_title() -> None:
    raw = pnd_associate_rq_bytes()
    patched = P.with_called_ae(raw, "ARCHIVE")
    assert len(patched) == len(raw)
    assert patched[:10] == raw[:10] and patched[26:] == raw[26:]
    assert patched[10:26] == b"ARCHIVE".ljust(16)
    assert P.parse_associate_rq(patched).called_ae_title == "ARCHIVE"
    assert raw[10:26] == b"PACS_MAIN".ljust(16)  # the input is untouched
    calling = P.with_calling_ae(raw, "GW")
    assert P.parse_associate_rq(calling).calling_ae_title == "GW"
    ac = P.with_called_ae(bytearray(pnd_associate_ac_bytes()), "ARCHIVE")
    assert P.parse_associate_ac(ac).called_ae_title == "ARCHIVE"


@pytest.mark.parametrize("title", ["", "   ", "X" * 17, "BAD\\AE", "ÄRZTE"])
def test_with_called_ae_rejects_invalid_titles(title: str) -> None:
    with pytest.raises(ValueError):
        P.with_called_ae(pnd_associate_rq_bytes(), title)


def test_with_called_ae_rejects_other_pdus() -> None:
    with pytest.raises(DecodeError) as info:
        P.with_called_ae(P.encode_release_rq(), "X")
    assert info.value.code == E.UNEXPECTED_PDU
    assert "10 bytes" in str(info.value)


# ------------------------------------------------------------------ errors

_129_CONTEXTS = [pc_rq(cid) for cid in range(1, 256, 2)] + [pc_rq(1)]

CRAFTED: list[tuple[str, bytes, str, int | None, tuple[str, ...]]] = [
    # (code, raw, parser, offset, substrings the message must contain)
    (E.TRUNCATED_PDU, b"\x01\x00\x00", "rq", 0, ("3 bytes",)),
    (E.UNEXPECTED_PDU, P.encode_release_rq(), "rq", 0, ("0x05",)),
    (E.PDU_LENGTH_MISMATCH, b"\x05\x00\x00\x00\x00\x09" + bytes(4), "release_rq", 2, ("9", "4")),
    (E.BAD_PDU_LENGTH, pdu(0x05, b"\x00\x00"), "release_rq", 2, ("2", "4")),
    (E.BAD_PDU_LENGTH, pdu(0x01, bytes(20)), "rq", 2, ("20", "68")),
    (E.BAD_PDU_LENGTH, pdu(0x04, b""), "pdata", 2, ("0", "6")),
    (E.UNKNOWN_PDU_TYPE, pdu(0x09, bytes(4)), "any", 0, ("0x09",)),
    (E.TRUNCATED_ITEM, rq_bytes(APP, b"\x20\x00\x00"), "rq", 99, ("3 trailing",)),
    (E.TRUNCATED_ITEM, rq_bytes(APP, b"\x20\x00\x01\x00" + bytes(8)), "rq", 101, ("256", "8")),
    (E.TRUNCATED_ITEM, pdu(0x04, struct.pack(">IBB", 50, 1, 0) + bytes(10)), "pdata", 6, ("50", "12")),
    (E.TRUNCATED_ITEM, pdu(0x04, struct.pack(">IBB", 2, 1, 0) + b"\x00"), "pdata", 12, ("1 trailing",)),
    (E.BAD_ITEM_LENGTH, pdu(0x04, struct.pack(">IBB", 1, 1, 0)), "pdata", 6, ("length 1",)),
    (E.BAD_ITEM_LENGTH, rq_bytes(APP, pc_rq(1), item(0x50, item(0x51, b"\x00\x00"))), "rq", None,
     ("is 2, expected 4",)),
    (E.BAD_ITEM_LENGTH, rq_bytes(APP, item(0x20, b"\x01\x00")), "rq", None, ("length 2",)),
    (E.BAD_ITEM_LENGTH, rq_bytes(APP, pc_rq(1), item(0x50, item(0x54, b"\x00\x05abc\x01\x00"))), "rq", None,
     ("UID length 5",)),
    (E.BAD_ITEM_LENGTH, rq_bytes(APP, pc_rq(1), item(0x50, item(0x58, b"\x01\x00\x00\x09ab\x00\x00"))), "rq", None,
     ("primary field length 9",)),
    (E.BAD_ITEM_LENGTH, rq_bytes(APP, pc_rq(1), item(0x50, item(0x57, b"\x00\x03"))), "rq", None,
     ("SOP class UID length 3",)),
    (E.UNEXPECTED_ITEM, rq_bytes(APP, item(0x21, bytes(4))), "rq", 99, ("0x21",)),
    (E.UNEXPECTED_ITEM, rq_bytes(APP, item(0x20, bytes((1, 0, 0, 0)) + item(0x55, b"x"))), "rq", None, ("0x55",)),
    (E.UNEXPECTED_ITEM, rq_bytes(APP, pc_rq(1), item(0x50, item(0x59, b"\x00\x00"))), "rq", None,
     ("0x59", "A-ASSOCIATE-RQ")),
    (E.MISSING_ITEM, rq_bytes(pc_rq(1), UI), "rq", None, ("application context",)),
    (E.MISSING_ITEM, rq_bytes(APP, UI), "rq", None, ("no presentation context",)),
    (E.MISSING_ITEM, rq_bytes(APP, item(0x20, bytes((1, 0, 0, 0)) + item(0x30, b"1.2"))), "rq", 99,
     ("transfer syntax",)),
    (E.MISSING_ITEM, rq_bytes(APP, item(0x20, bytes((1, 0, 0, 0)) + item(0x40, b"1.2"))), "rq", 99,
     ("abstract syntax",)),
    (E.DUPLICATE_ITEM, rq_bytes(APP, APP, pc_rq(1)), "rq", 99, ("second application context",)),
    (E.DUPLICATE_ITEM, rq_bytes(APP, pc_rq(1), UI, UI), "rq", None, ("second user information",)),
    (E.DUPLICATE_ITEM, rq_bytes(APP, pc_rq(1), item(0x50, item(0x52, b"1.2") * 2)), "rq", None,
     ("0x52", "more than once")),
    (E.TOO_MANY_PRESENTATION_CONTEXTS, rq_bytes(APP, *_129_CONTEXTS), "rq", None, ("128",)),
    (E.TOO_MANY_ITEMS, rq_bytes(APP, item(0x20, bytes((1, 0, 0, 0)) + item(0x30, b"1.2") + item(0x40, b"1.2") * 129)),
     "rq", None, ("128",)),
    (E.BAD_CONTEXT_ID, rq_bytes(APP, pc_rq(2)), "rq", 103, ("context ID 2",)),
    (E.BAD_CONTEXT_ID, rq_bytes(APP, pc_rq(0)), "rq", 103, ("context ID 0",)),
    (E.DUPLICATE_CONTEXT_ID, rq_bytes(APP, pc_rq(3), pc_rq(3)), "rq", None, ("ID 3 used twice",)),
    (E.BAD_UID, rq_bytes(item(0x10, b""), pc_rq(1)), "rq", 78, ("empty",)),
    (E.BAD_UID, rq_bytes(APP, pc_rq(1, "1." * 40)), "rq", None, ("80 characters", "64")),
    (E.BAD_UID, rq_bytes(APP, pc_rq(1, "1.2\x01.3")), "rq", None, ("non-printable",)),
    (E.BAD_AE_TITLE, rq_bytes(APP, pc_rq(1), fixed=associate_fixed(called=b"PA\x07CS".ljust(16))), "rq", 10,
     ("called AE title",)),
    (E.BAD_AE_TITLE, rq_bytes(APP, pc_rq(1), fixed=associate_fixed(calling=b"M\xc3\x84D".ljust(16))), "rq", 26,
     ("calling AE title",)),
    (E.BAD_ITEM_VALUE, rq_bytes(APP, pc_rq(1), item(0x50, item(0x55, b"X" * 17))), "rq", None,
     ("implementation version name",)),
]

PARSERS = {
    "rq": P.parse_associate_rq,
    "ac": P.parse_associate_ac,
    "release_rq": P.parse_release_rq,
    "pdata": P.parse_p_data_tf,
    "any": P.parse_pdu,
}


@pytest.mark.parametrize(
    "code,raw,parser,offset,needles", CRAFTED, ids=[f"{c[0]}-{i}" for i, c in enumerate(CRAFTED)]
)
def test_crafted_inputs_raise_the_right_code(
    code: str, raw: bytes, parser: str, offset: int | None, needles: tuple[str, ...]
) -> None:
    with pytest.raises(DecodeError) as info:
        PARSERS[parser](raw)
    err = info.value
    assert err.code == code, str(err)
    assert err.code in E.ERROR_CODES
    if offset is not None:
        assert err.offset == offset, str(err)
        assert f"offset {offset}" in str(err)
    for needle in needles:
        assert needle in str(err), str(err)


def test_strict_mode_checks_reserved_fields() -> None:
    lenient = pdu(0x05, bytes(4), reserved=0x40)
    assert P.parse_release_rq(lenient) == P.ReleaseRQ()
    with pytest.raises(DecodeError) as info:
        P.parse_release_rq(lenient, strict=True)
    assert info.value.code == E.RESERVED_FIELD_NONZERO and info.value.offset == 1
    long_abort = pdu(0x07, bytes(6))
    assert P.parse_abort(long_abort) == P.Abort(0, 0)
    with pytest.raises(DecodeError) as info:
        P.parse_abort(long_abort, strict=True)
    assert info.value.code == E.BAD_PDU_LENGTH and "6" in str(info.value)
    odd_mch = pdu(0x04, struct.pack(">IBB", 2, 1, 0x83))
    assert P.parse_p_data_tf(odd_mch).pdvs[0].is_last
    with pytest.raises(DecodeError) as info:
        P.parse_p_data_tf(odd_mch, strict=True)
    assert info.value.code == E.RESERVED_FIELD_NONZERO and info.value.offset == 11


def test_unknown_user_information_sub_items_are_kept() -> None:
    raw = rq_bytes(APP, pc_rq(1), item(0x50, item(0x51, bytes(4)) + item(0x7A, b"vendor")))
    info = P.parse_associate_rq(raw).user_information
    assert info is not None and info.unknown == [P.UnknownSubItem(0x7A, b"vendor")]
    assert P.encode_associate_rq(P.parse_associate_rq(raw)) == raw


def test_encoders_reject_unrepresentable_values() -> None:
    with pytest.raises(ValueError):
        P.encode_associate_rq(P.AssociateRQ("A", "B", [P.PresentationContextRQ(1, "1" * 65, [IVLE])]))
    with pytest.raises(ValueError):
        P.encode_p_data_tf([])
    with pytest.raises(ValueError):
        P.encode_dimse_message(1, b"x", None, 6)
    ui = P.UserInformation([P.UserIdentityRQ(1, False, b"x" * 70000)])
    with pytest.raises(ValueError):
        P.encode_user_information(ui)


def test_decode_error_pickles() -> None:
    import pickle

    err = DecodeError(E.TRUNCATED_ITEM, "boom", 12)
    again = pickle.loads(pickle.dumps(err))
    assert (again.code, again.offset, str(again)) == (err.code, err.offset, str(err))


def test_error_code_catalogue_is_complete() -> None:
    constants = {v for k, v in vars(E).items() if k.isupper() and isinstance(v, str)}
    assert constants == set(E.ERROR_CODES)


def test_well_known_uids_are_real() -> None:
    from pydicom.uid import UID_dictionary

    from pacsguard.dicom.uids import WELL_KNOWN_UIDS, uid_name

    for uid in WELL_KNOWN_UIDS:
        assert uid in UID_dictionary, uid
    assert uid_name("1.2.840.10008.5.1.4.1.1.104.1") == "Encapsulated PDF Storage"
    assert uid_name("1.2.840.10008.5.1.4.1.1.104.2") == "Encapsulated CDA Storage"
    assert uid_name("1.2.840.10008.1.20.1") == "Storage Commitment Push Model SOP Class"
    assert uid_name("1.2.840.10008.5.1.4.1.1.128") == "Positron Emission Tomography Image Storage"
    assert uid_name("1.2.840.10008.5.1.4.1.1.66") == "Raw Data Storage"  # via pydicom
    assert uid_name("1.2.3.4.5.6") == "1.2.3.4.5.6"


def test_items_of_unrecognised_types_are_ignored_and_kept_aside() -> None:
    # PS3.8 9.3.1: an item of an unrecognised type is ignored and skipped, in the RQ and the AC.
    rq = P.parse_associate_rq(rq_bytes(APP, pc_rq(1), UI, item(0x7F, b"\x01\x02")))
    assert [pc.context_id for pc in rq.presentation_contexts] == [1] and rq.max_length == 16384
    assert rq.unknown_items == [P.UnknownSubItem(0x7F, b"\x01\x02")]
    ac_context = item(0x21, bytes((1, 0, 0, 0)) + item(0x4E, b"?") + item(0x40, IVLE.encode()))
    ac = P.parse_associate_ac(pdu(0x02, associate_fixed() + APP + item(0x60, b"") + ac_context))
    assert ac.presentation_contexts == [P.PresentationContextAC(1, 0, IVLE)]
    assert ac.unknown_items == [P.UnknownSubItem(0x60, b"")]
    # Re-encoding leaves them out: the encoder writes what the decoder understood.
    assert P.parse_associate_ac(P.encode_associate_ac(ac)).unknown_items == []


def test_rewrite_associate_rq_sets_the_maximum_length_and_drops_unrecognised_items() -> None:
    raw = rq_bytes(APP, item(0x7F, b"junk"), pc_rq(1), item(0x50, item(0x52, b"1.2") + item(0x51, bytes(4))))
    out = P.rewrite_associate_rq(raw, called_ae="UP", max_length=65536)
    rq = P.parse_associate_rq(out)
    assert rq.called_ae_title == "UP" and rq.max_length == 65536 and rq.unknown_items == []
    assert rq.user_information is not None and rq.user_information.implementation_class_uid == "1.2"
    assert len(out) == len(raw) - 8
    # Without a user information item, one carrying the Maximum Length is added.
    added = P.parse_associate_rq(P.rewrite_associate_rq(rq_bytes(APP, pc_rq(1)), called_ae="UP", max_length=4096))
    assert added.max_length == 4096


@pytest.mark.parametrize("advertised, expected", [(None, 8192), (0, 8192), (4096, 4096), (8192, 8192), (9000, 8192)])
def test_capped_max_length(advertised: int | None, expected: int) -> None:
    assert P.capped_max_length(advertised, 8192) == expected
    assert P.with_max_length(None, expected).max_length == expected
