"""Every protocol deviation code the relay can meet, driven through the in-memory relay: a tolerated
one passes with a `dicom.protocol.warning`, any other aborts both legs with a
`dicom.protocol.violation` (gateway/violations.py, docs/gateway.md "Protocol deviations")."""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Awaitable, Callable

import pytest
from playbook import (
    CT_STORAGE,
    IMPLICIT_LE,
    MAX_PDU,
    VERIFICATION,
    Playbook,
    Seen,
    associate_rq,
    echo_rq,
    play,
    request,
    route_config,
    split,
)

from pacsguard.dicom import dimse
from pacsguard.dicom import errors as E
from pacsguard.dicom import events as V
from pacsguard.dicom import pdu as P
from pacsguard.dicom.errors import DecodeError
from pacsguard.gateway.violations import DATA_BEFORE_AC, TOLERATED, VIOLATIONS, Handling

EXPLICIT_LE = "1.2.840.10008.1.2.1"
ROUTE_LIMIT = 65536
DOCS = Path(__file__).resolve().parents[2] / "docs" / "gateway.md"

Scenario = Callable[[Playbook], Awaitable[None]]


# --- raw PDUs, built field by field so that each can be wrong in exactly one way -----------------


def item(item_type: int, value: bytes) -> bytes:
    return bytes((item_type, 0)) + struct.pack(">H", len(value)) + value


def context_rq(context_id: int = 1, abstract: bytes = VERIFICATION.encode()) -> bytes:
    return item(P.ITEM_PRESENTATION_CONTEXT_RQ, bytes((context_id, 0, 0, 0)) + item(P.ITEM_ABSTRACT_SYNTAX, abstract)
                + item(P.ITEM_TRANSFER_SYNTAX, IMPLICIT_LE.encode()))


def user_info(*extra: bytes) -> bytes:
    return item(P.ITEM_USER_INFORMATION, item(P.SUB_ITEM_MAXIMUM_LENGTH, struct.pack(">I", MAX_PDU))
                + item(P.SUB_ITEM_IMPLEMENTATION_CLASS_UID, b"1.2.3") + b"".join(extra))


APP_CONTEXT = item(P.ITEM_APPLICATION_CONTEXT, b"1.2.840.10008.3.1.1.1")


def raw_rq(*items: bytes, calling: bytes = b"WS1") -> bytes:
    """An A-ASSOCIATE-RQ (PS3.8 9.3.2) with exactly *items* after its fixed part."""
    body = struct.pack(">HH", 1, 0) + b"PACSGUARD".ljust(16) + calling.ljust(16) + bytes(32) + b"".join(items)
    return bytes((P.PDU_ASSOCIATE_RQ, 0)) + struct.pack(">I", len(body)) + body


def command_pdu(raw_command: bytes, context_id: int = 1, last: bool = True) -> bytes:
    return P.encode_p_data_tf([P.PDV(context_id, True, last, raw_command)])


def element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0, tag, len(value)) + value


def with_group_length(body: bytes, declared: int | None = None) -> bytes:
    return element(0, struct.pack("<I", len(body) if declared is None else declared)) + body


ECHO_BODY = (element(0x0002, b"1.2.840.10008.1.1\x00") + element(0x0100, b"\x30\x00") + element(0x0110, b"\x07\x00")
             + element(0x0800, b"\x01\x01"))


def client(*pdus: bytes, setup: tuple[str, ...] | None = (VERIFICATION,)) -> Scenario:
    """An association on *setup*'s contexts (None: none), then *pdus* from the client."""
    async def scenario(pb: Playbook) -> None:
        if setup is not None:
            await pb.associate(*setup)
        await pb.client(*pdus)
    return scenario


def upstream_ac(*contexts: P.PresentationContextAC) -> Scenario:
    async def scenario(pb: Playbook) -> None:
        await pb.client(associate_rq("WS1", "PACSGUARD", VERIFICATION))
        info = P.UserInformation.build(max_length=MAX_PDU, implementation_class_uid="1.2.4")
        await pb.upstream(P.encode_associate_ac(P.AssociateAC("PACS", "WS1", list(contexts), info)))
        await pb.client(echo_rq())
    return scenario


def truncated_then_gone(pb: Playbook) -> Awaitable[None]:
    async def scenario() -> None:
        await client(echo_rq()[:20])(pb)
        assert pb.relay is not None
        pb.relay.connection_lost(True, None)
    return scenario()


def released_then(*pdus: bytes, answered: bool) -> Scenario:
    async def scenario(pb: Playbook) -> None:
        await pb.associate(VERIFICATION)
        await pb.client(P.encode_release_rq())
        if answered:
            await pb.upstream(P.encode_release_rp())
        await pb.client(*pdus)
    return scenario


def early_data(pb: Playbook) -> Awaitable[None]:
    async def scenario() -> None:
        assert pb.relay is not None
        pb.relay.data_received(True, associate_rq())  # the upstream connection is still being made
        pb.relay.data_received(True, echo_rq() * (ROUTE_LIMIT // len(echo_rq()) + 1))
    return scenario()


def injected(code: str) -> Scenario:
    """For the codes the relay's framing cannot produce: its handling of the decoder's error."""
    async def scenario(pb: Playbook) -> None:
        await pb.associate(VERIFICATION)
        assert pb.relay is not None
        pb.relay.decode_error(True, DecodeError(code, "injected", 0))
    return scenario


def _store(message_id: int) -> dimse.CommandSet:
    return dimse.CommandSet(dimse.C_STORE_RQ, message_id=message_id, affected_sop_class_uid=CT_STORAGE,
                            affected_sop_instance_uid=f"1.2.3.{message_id}", priority=0, command_data_set_type=0)


def _echo_claiming_a_data_set() -> bytes:
    return command_pdu(with_group_length(ECHO_BODY[:-2] + b"\x02\x02"))


_BIG_FRAGMENT = command_pdu(b"\x00" * 16000, last=False)

SCENARIOS: dict[str, Scenario] = {
    E.PDU_LENGTH_EXCEEDS_MAXIMUM: client(b"\x04\x00" + struct.pack(">I", 10 * ROUTE_LIMIT) + bytes(64)),
    E.UNKNOWN_PDU_TYPE: client(b"\x09\x00" + struct.pack(">I", 4) + bytes(4)),
    E.BAD_PDU_LENGTH: client(b"\x05\x00" + struct.pack(">I", 2) + bytes(2)),
    E.PDU_LENGTH_MISMATCH: injected(E.PDU_LENGTH_MISMATCH),
    E.RESERVED_FIELD_NONZERO: client(b"\x04\xFF" + echo_rq()[2:]),
    E.UNEXPECTED_PDU: client(P.encode_release_rp()),
    E.TRUNCATED_PDU: truncated_then_gone,
    E.TRUNCATED_ITEM: client(echo_rq()[:6] + struct.pack(">I", len(echo_rq()) - 6) + echo_rq()[10:]),
    E.BAD_ITEM_LENGTH: client(b"\x04\x00" + struct.pack(">IIBB", 6, 1, 1, 3)),
    E.UNEXPECTED_ITEM: client(raw_rq(APP_CONTEXT, context_rq(), item(P.ITEM_PRESENTATION_CONTEXT_AC, bytes(4)),
                                     user_info()), setup=None),
    E.MISSING_ITEM: client(raw_rq(APP_CONTEXT, user_info()), setup=None),
    E.DUPLICATE_ITEM: client(raw_rq(APP_CONTEXT, APP_CONTEXT, context_rq(), user_info()), setup=None),
    E.TOO_MANY_ITEMS: client(raw_rq(APP_CONTEXT, context_rq(), user_info(), *[item(0x7F, b"")] * 1100),
                             setup=None),
    E.TOO_MANY_PRESENTATION_CONTEXTS: client(raw_rq(APP_CONTEXT, *[context_rq(2 * i + 1 & 0xFF) for i in range(129)],
                                                    user_info()), setup=None),
    E.BAD_CONTEXT_ID: client(raw_rq(APP_CONTEXT, context_rq(2), user_info()), setup=None),
    E.DUPLICATE_CONTEXT_ID: client(raw_rq(APP_CONTEXT, context_rq(1), context_rq(1), user_info()), setup=None),
    E.BAD_UID: client(raw_rq(APP_CONTEXT, context_rq(abstract=b"1." * 40), user_info()), setup=None),
    E.BAD_AE_TITLE: client(raw_rq(APP_CONTEXT, context_rq(), user_info(), calling=b"WS\x01"), setup=None),
    E.BAD_ITEM_VALUE: client(raw_rq(APP_CONTEXT, context_rq(),
                                    user_info(item(P.SUB_ITEM_IMPLEMENTATION_VERSION_NAME, b"V" * 20))), setup=None),
    E.COMMAND_SET_INVALID: client(command_pdu(with_group_length(ECHO_BODY + struct.pack("<HHI", 8, 0x10, 0)))),
    E.COMMAND_SET_TOO_LARGE: client(*[_BIG_FRAGMENT] * 5),
    E.COMMAND_GROUP_LENGTH_MISMATCH: client(command_pdu(with_group_length(ECHO_BODY, declared=len(ECHO_BODY) - 18))),
    E.COMMAND_SET_TRAILING_ELEMENTS: client(command_pdu(with_group_length(ECHO_BODY) + struct.pack("<HHI", 8, 0, 10)
                                                        + struct.pack("<HHI", 8, 0x58, 2) + b"1\x00")),
    E.COMMAND_ELEMENT_TRUNCATED: client(command_pdu(with_group_length(ECHO_BODY) + b"\x00\x00\x00")),
    E.COMMAND_ELEMENT_BAD_LENGTH: client(command_pdu(with_group_length(
        ECHO_BODY[:26] + element(0x0100, b"\x30\x00\x00\x00") + ECHO_BODY[36:]))),
    E.COMMAND_ELEMENT_ORDER: client(command_pdu(with_group_length(ECHO_BODY[26:36] + ECHO_BODY))),
    E.COMMAND_ELEMENT_NOT_ASCII: client(command_pdu(with_group_length(element(0x0002, b"1.2\xc3\x84")
                                                                     + ECHO_BODY[26:]))),
    E.IDENTIFIER_INVALID: injected(E.IDENTIFIER_INVALID),
    E.IDENTIFIER_TOO_LARGE: injected(E.IDENTIFIER_TOO_LARGE),
    V.VIOLATION_DATA_BEFORE_ASSOCIATION: client(associate_rq() + echo_rq(), setup=None),
    V.VIOLATION_DATA_AFTER_RELEASE: released_then(echo_rq(), answered=False),
    V.VIOLATION_DATA_AFTER_CLOSE: released_then(echo_rq(), answered=True),
    V.VIOLATION_CONTEXT_NOT_ACCEPTED: client(echo_rq(context_id=3)),
    V.VIOLATION_CONTEXT_CHANGED: client(command_pdu(with_group_length(ECHO_BODY)[:20], last=False),
                                        command_pdu(with_group_length(ECHO_BODY), context_id=3),
                                        setup=(VERIFICATION, VERIFICATION)),
    V.VIOLATION_COMMAND_WHILE_DATASET_EXPECTED: client(request(_store(1)), request(_store(2)), setup=(CT_STORAGE,)),
    V.VIOLATION_DATASET_NOT_ALLOWED: client(_echo_claiming_a_data_set()),
    V.VIOLATION_MESSAGE_ID_IN_USE: client(echo_rq(message_id=3), echo_rq(message_id=3)),
    V.VIOLATION_UNSOLICITED_RESPONSE: client(request(dimse.CommandSet(
        dimse.C_ECHO_RSP, message_id_being_responded_to=1, affected_sop_class_uid=VERIFICATION,
        command_data_set_type=0x0101, status=0))),
    V.VIOLATION_DATASET_WITHOUT_COMMAND: client(P.encode_p_data_tf([P.PDV(1, False, True, bytes(10))])),
    V.VIOLATION_PDU_EXCEEDS_NEGOTIATED_MAX: client(P.encode_p_data_tf([P.PDV(1, False, True, bytes(MAX_PDU + 100))])),
    V.VIOLATION_CONTEXT_NOT_PROPOSED: upstream_ac(P.PresentationContextAC(1, 0, IMPLICIT_LE),
                                                  P.PresentationContextAC(5, 0, IMPLICIT_LE)),
    V.VIOLATION_TRANSFER_SYNTAX_NOT_PROPOSED: upstream_ac(P.PresentationContextAC(1, 0, EXPLICIT_LE)),
    DATA_BEFORE_AC: early_data,
}


def forwarded_commands(pb: Playbook) -> list[int]:
    """The Command Field of each command the upstream received after the A-ASSOCIATE-RQ, decoded
    as leniently as the receivers the tolerated codes are for."""
    commands = []
    for raw in split(bytes(pb.upstream_wire.out))[1:]:
        for pdv in P.parse_p_data_tf(raw).pdvs:
            if pdv.is_command:
                commands.append(dimse.decode_command_set(bytes(pdv.value), tolerate=lambda _: True).command_field)
    return commands


def all_codes() -> set[str]:
    violation_codes = {v for k, v in vars(V).items() if k.startswith("VIOLATION_")}
    return set(E.ERROR_CODES) | violation_codes | {DATA_BEFORE_AC}


def test_the_table_classifies_every_code() -> None:
    assert set(VIOLATIONS) == all_codes()
    assert set(SCENARIOS) == all_codes()
    assert TOLERATED == {E.RESERVED_FIELD_NONZERO, E.COMMAND_GROUP_LENGTH_MISMATCH, E.COMMAND_SET_TRAILING_ELEMENTS,
                         V.VIOLATION_CONTEXT_NOT_PROPOSED}


@pytest.mark.parametrize("code", sorted(VIOLATIONS))
def test_each_code_is_handled_as_the_table_says(code: str) -> None:
    pb = play(route_config(limits={"max_pdu_length": ROUTE_LIMIT}), SCENARIOS[code])
    warnings = [e for e in pb.events if e.kind == "dicom.protocol.warning"]
    violations = [e for e in pb.events if e.kind == "dicom.protocol.violation"]
    if VIOLATIONS[code].handling is Handling.TOLERATE:
        assert [w.details["code"] for w in warnings] == [code]
        assert warnings[0].details["reason"] == VIOLATIONS[code].reason
        assert violations == [] and "A-ABORT" not in {s.name for s in pb.to_client()}
        assert forwarded_commands(pb) == [dimse.C_ECHO_RQ]
        assert pb.relay is not None and pb.relay.state == "established"
    else:
        assert [v.details["code"] for v in violations] == [code], [e.message for e in pb.events]
        assert warnings == []
        assert pb.to_client()[-1] == Seen("A-ABORT", (P.ABORT_SOURCE_SERVICE_PROVIDER,))
        ended = [e for e in pb.events if e.kind == "dicom.association.aborted"]
        assert ended and ended[-1].details["cause"] == "protocol"


def test_a_mismatched_group_length_passes_byte_for_byte_and_is_recorded_once() -> None:
    bad = with_group_length(ECHO_BODY, declared=106)
    # The second under another Message ID: one still unanswered may not be reused (message-id-in-use).
    bad2 = with_group_length(ECHO_BODY.replace(element(0x0110, b"\x07\x00"), element(0x0110, b"\x08\x00")),
                             declared=106)

    async def scenario(pb: Playbook) -> None:
        await pb.associate(VERIFICATION)
        await pb.client(command_pdu(bad), command_pdu(bad2))

    pb = play(route_config(), scenario)
    sent = split(bytes(pb.upstream_wire.out))[-2:]
    assert sent == [command_pdu(bad), command_pdu(bad2)]
    assert [e.details["code"] for e in pb.events if e.kind == "dicom.protocol.warning"] == [
        E.COMMAND_GROUP_LENGTH_MISMATCH]


def test_reserved_control_header_bits_pass_with_a_warning() -> None:
    frame = bytearray(echo_rq())
    frame[11] |= 0x40  # a reserved bit of the PDV message control header (PS3.8 E.2)

    async def scenario(pb: Playbook) -> None:
        await pb.associate(VERIFICATION)
        await pb.client(bytes(frame))

    pb = play(route_config(), scenario)
    assert pb.to_upstream() == [Seen("P-DATA-TF", (("C-ECHO-RQ", None),))]
    warning, = [e for e in pb.events if e.kind == "dicom.protocol.warning"]
    assert warning.details["code"] == E.RESERVED_FIELD_NONZERO and warning.details["from"] == "client"


def test_an_upstream_response_with_a_mismatched_group_length_reaches_the_client() -> None:
    rsp = dimse.response_for(
        dimse.CommandSet(dimse.C_ECHO_RQ, message_id=1, affected_sop_class_uid=VERIFICATION), dimse.STATUS_SUCCESS)
    group_length = struct.unpack_from("<I", rsp, 8)[0]
    bad = rsp[:8] + struct.pack("<I", group_length + 84) + rsp[12:]

    async def scenario(pb: Playbook) -> None:
        await pb.associate(VERIFICATION)
        await pb.client(echo_rq())
        await pb.upstream(command_pdu(bad))

    pb = play(route_config(), scenario)
    assert split(bytes(pb.client_wire.out))[-1] == command_pdu(bad)
    warning, = [e for e in pb.events if e.kind == "dicom.protocol.warning"]
    assert warning.details["from"] == "upstream"
    done = [e for e in pb.events if e.kind == "dicom.dimse.c-echo"]
    assert done and done[-1].details["status"] == "0x0000"


def test_the_administrator_table_lists_every_code_with_its_handling() -> None:
    text = DOCS.read_text()
    section = text[text.index("### Protocol deviations"):text.index("## C-MOVE through the gateway")]
    rows = dict(re.findall(r"^- `([a-z-]+)` \((tolerate|abort)\): ", section, re.M))
    assert rows == {code: c.handling.value for code, c in VIOLATIONS.items()}
    assert all(len(line) <= 80 for line in section.splitlines())


def test_the_association_still_works_after_a_tolerated_deviation() -> None:
    async def scenario(pb: Playbook) -> None:
        await pb.associate(VERIFICATION)
        await pb.client(command_pdu(with_group_length(ECHO_BODY, declared=1)))
        await pb.client(echo_rq(message_id=8))

    pb = play(route_config(), scenario)
    assert forwarded_commands(pb) == [dimse.C_ECHO_RQ] * 2
    assert [e.kind for e in pb.events].count("dicom.dimse.c-echo") == 0  # no response yet: both in flight
    assert pb.relay is not None and pb.relay.state == "established"


def test_a_release_rp_that_crosses_the_clients_abort_is_ignored() -> None:
    """getscu sends A-RELEASE-RQ and then A-ABORT; the PACS's A-RELEASE-RP arrives after the abort.
    PS3.8 9.2.3 (Sta13, AA-6): ignored. The association has one ending, the client's abort."""

    async def scenario(pb: Playbook) -> None:
        await pb.associate(VERIFICATION)
        await pb.client(P.encode_release_rq())
        await pb.client(P.encode_abort(0, 0))
        await pb.upstream(P.encode_release_rp())

    pb = play(route_config(), scenario)
    ended = [e for e in pb.events if e.kind in ("dicom.association.aborted", "dicom.association.released")]
    assert [(e.kind, e.details["by"]) for e in ended] == [("dicom.association.aborted", "client")]
    assert [e for e in pb.events if e.kind == "dicom.protocol.violation"] == []
