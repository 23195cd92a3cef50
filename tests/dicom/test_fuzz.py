"""Fuzzing: whatever the bytes, the decoder raises DecodeError or nothing at all."""

from __future__ import annotations

import struct
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pacsguard.dicom import dimse as D
from pacsguard.dicom import pdu as P
from pacsguard.dicom.association import AssociationDecoder
from pacsguard.dicom.dataset import decode_identifier, peek_identifiers
from pacsguard.dicom.errors import ERROR_CODES, DecodeError
from pacsguard.dicom.stream import PDUReader, looks_like_associate_rq

pytestmark = pytest.mark.filterwarnings("ignore")  # pydicom warns freely on garbage

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

IVLE = "1.2.840.10008.1.2"
EVLE = "1.2.840.10008.1.2.1"
SYNTAXES = [IVLE, EVLE, "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.4.50", None]


def element(tag: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"SQ", b"OB", b"UN"):
        return struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr + struct.pack("<H", len(value)) + value


def small_dataset() -> bytes:
    item = element(0x00081150, b"UI", b"1.2.3\x00")
    seq_value = struct.pack("<HHI", 0xFFFE, 0xE000, len(item)) + item
    return (
        element(0x00080016, b"UI", b"1.2.840.10008.5.1.4.1.1.7\x00")
        + element(0x00080018, b"UI", b"1.2.3.4.5\x00")
        + element(0x00081110, b"SQ", seq_value)
        + element(0x00100010, b"PN", b"Doe^Jane")
        + element(0x00100020, b"LO", b"PID-1 ")
        + element(0x0020000D, b"UI", b"1.2.3\x00")
        + element(0x7FE00010, b"OB", bytes(300))
    )


def rq_bytes() -> bytes:
    info = P.UserInformation(
        [
            P.MaximumLength(1024),
            P.ImplementationClassUID("1.2.3.4"),
            P.ImplementationVersionName("FUZZ"),
            P.AsyncOperationsWindow(1, 1),
            P.RoleSelection("1.2.840.10008.5.1.4.1.1.7", 1, 1),
            P.SOPClassExtendedNegotiation("1.2.840.10008.5.1.4.1.2.2.1", b"\x01"),
            P.SOPClassCommonExtendedNegotiation("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.4.2", ["1.2.3"]),
            P.UserIdentityRQ(2, True, b"user", b"pass"),
            P.UnknownSubItem(0x70, b"?"),
        ]
    )
    return P.encode_associate_rq(
        P.AssociateRQ(
            "PACS",
            "MOD",
            [
                P.PresentationContextRQ(1, "1.2.840.10008.1.1", [IVLE]),
                P.PresentationContextRQ(3, "1.2.840.10008.5.1.4.1.1.7", [EVLE, IVLE]),
            ],
            info,
        )
    )


def ac_bytes() -> bytes:
    info = P.UserInformation([P.MaximumLength(2048), P.ImplementationClassUID("1.2.3.5"), P.UserIdentityAC(b"ok")])
    return P.encode_associate_ac(
        P.AssociateAC(
            "PACS",
            "MOD",
            [P.PresentationContextAC(1, 0, IVLE), P.PresentationContextAC(3, 0, EVLE)],
            info,
        )
    )


def conversation() -> list[tuple[bool, bytes]]:
    echo = D.encode_command_set(D.CommandSet(D.C_ECHO_RQ, message_id=1, affected_sop_class_uid="1.2.840.10008.1.1"))
    store = D.encode_command_set(
        D.CommandSet(
            D.C_STORE_RQ,
            message_id=2,
            affected_sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
            affected_sop_instance_uid="1.2.3.4.5",
            priority=0,
            command_data_set_type=1,
        )
    )
    rsp = D.response_for(D.decode_command_set(store), 0)
    return [
        (True, rq_bytes()),
        (False, ac_bytes()),
        (True, P.encode_p_data_tf([P.PDV(1, True, True, echo)])),
        (False, P.encode_p_data_tf([P.PDV(1, True, True, D.response_for(D.decode_command_set(echo), 0))])),
        *[(True, raw) for raw in P.encode_dimse_message(3, store, small_dataset(), 200)],
        (False, P.encode_p_data_tf([P.PDV(3, True, True, rsp)])),
        (True, P.encode_release_rq()),
        (False, P.encode_release_rp()),
    ]


VALID_PDUS = [raw for _, raw in conversation()] + [
    P.encode_associate_rj(1, 1, 7),
    P.encode_abort(2, 6),
]
COMMAND_SETS = [
    D.encode_command_set(D.CommandSet(D.C_MOVE_RQ, message_id=3, affected_sop_class_uid="1.2.3",
                                      move_destination="DEST", priority=0, command_data_set_type=1)),
    D.response_for(D.CommandSet(D.C_GET_RQ, message_id=4, affected_sop_class_uid="1.2.3"), 0xA700, error_comment="x"),
]

PARSERS: list[Callable[[bytes], object]] = [
    P.parse_pdu,
    P.parse_associate_rq,
    P.parse_associate_ac,
    P.parse_associate_rj,
    P.parse_p_data_tf,
    P.parse_release_rq,
    P.parse_release_rp,
    P.parse_abort,
    lambda raw: P.parse_pdu(raw, strict=True),
    lambda raw: P.pdv_spans(raw, strict=True),
]


def only_decode_error(fn: Callable[..., object], *args: Any, **kwargs: Any) -> None:
    """Call ``fn(*args, **kwargs)``: it may only fail with a DecodeError of a known code."""
    try:
        fn(*args, **kwargs)
    except DecodeError as exc:
        assert exc.code in ERROR_CODES
        assert str(exc)


@st.composite
def mutated(draw: st.DrawFn, corpus: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(corpus)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "huge", "zero", "insert", "delete"]))
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[pos:]
        elif kind in ("huge", "zero"):
            width = draw(st.sampled_from([1, 2, 4]))
            fill = 0xFF if kind == "huge" else 0x00
            data[pos : pos + width] = bytes([fill]) * min(width, len(data) - pos)
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[pos : pos + draw(st.integers(1, 8))]
    # Usually keep the PDU length field consistent so the mutation reaches the body.
    if len(data) >= 6 and draw(st.booleans()):
        data[2:6] = struct.pack(">I", len(data) - 6)
    return bytes(data)


# ---------------------------------------------------------------- PDU level


@FUZZ
@given(st.binary(max_size=600))
def test_parsers_on_random_bytes(data: bytes) -> None:
    for parse in PARSERS:
        only_decode_error(parse, data)
    looks_like_associate_rq(data)


@FUZZ
@given(mutated(VALID_PDUS))
def test_parsers_on_mutated_pdus(data: bytes) -> None:
    for parse in PARSERS:
        only_decode_error(parse, data)
    looks_like_associate_rq(data)


@FUZZ
@given(st.lists(st.one_of(st.binary(max_size=64), mutated(VALID_PDUS)), max_size=6), st.integers(1, 50))
def test_reader_on_random_streams(parts: list[bytes], chunk: int) -> None:
    stream = b"".join(parts)

    def run(reader: PDUReader) -> None:
        total = 0
        for pos in range(0, len(stream), chunk):
            for pdu in reader.feed(stream[pos : pos + chunk]):
                assert pdu.raw[0] == pdu.pdu_type and len(pdu.raw) >= 6
                total += len(pdu.raw)
        assert total + reader.pending_bytes + reader.skipped_bytes == len(stream)

    for reader in (PDUReader(), PDUReader(strict=True), PDUReader(max_pdu_length=256), PDUReader(resync=True)):
        if reader.resync:
            run(reader)  # resync mode never raises
        else:
            only_decode_error(run, reader)


# --------------------------------------------------------------- DIMSE level


@FUZZ
@given(st.one_of(st.binary(max_size=300), mutated(COMMAND_SETS)))
def test_command_set_decoder(data: bytes) -> None:
    only_decode_error(lambda: D.decode_command_set(data))
    only_decode_error(lambda: D.decode_command_set(data, require_group_length=False))


@FUZZ
@given(st.one_of(st.binary(max_size=400), mutated([small_dataset()])), st.sampled_from(SYNTAXES), st.booleans())
def test_peek_never_raises(data: bytes, syntax: str | None, final: bool) -> None:
    peek = peek_identifiers(data, syntax, final=final)
    # the catch-all inside peek_identifiers must never be what saved us
    assert peek.anomaly != "internal-error"
    assert peek.bytes_examined >= 0


@FUZZ
@given(st.one_of(st.binary(max_size=200), mutated([small_dataset()])), st.sampled_from([s for s in SYNTAXES if s]))
def test_identifier_decoder(data: bytes, syntax: str) -> None:
    only_decode_error(lambda: decode_identifier(data, syntax))


# --------------------------------------------------------- association level


@FUZZ
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=120)), max_size=8))
def test_association_on_random_bytes(turns: list[tuple[bool, bytes]]) -> None:
    for decoder in (AssociationDecoder(), AssociationDecoder(resync=True, midstream=True, value_cap=64)):
        # keep feeding after an error: later calls must fail the same clean way
        for from_requestor, data in turns:
            only_decode_error(decoder.feed, from_requestor, data)


@FUZZ
@given(st.data())
def test_association_on_mutated_conversation(data: st.DataObject) -> None:
    turns = conversation()
    index = data.draw(st.integers(0, len(turns) - 1))
    side, raw = turns[index]
    turns[index] = (side, data.draw(mutated([raw])))
    chunk = data.draw(st.sampled_from([1, 7, 64, 100_000]))
    for decoder in (AssociationDecoder(), AssociationDecoder(strict=True, value_cap=32),
                    AssociationDecoder(resync=True)):
        for from_requestor, stream in turns:
            for pos in range(0, len(stream), chunk):
                only_decode_error(decoder.feed, from_requestor, stream[pos : pos + chunk])
