"""AssociationDecoder: a full association decoded into the exact event list, and violations."""

from __future__ import annotations

import random
import struct
from io import BytesIO
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pynetdicom import dimse_messages, dimse_primitives
from pynetdicom import pdu as pnd_pdu

from pacsguard.dicom import dimse as D
from pacsguard.dicom import errors as E
from pacsguard.dicom import events as ev
from pacsguard.dicom import pdu as P
from pacsguard.dicom.association import AssociationDecoder, AssociationState
from pacsguard.dicom.dataset import DatasetPeek
from pacsguard.dicom.dimse import CommandSet
from pacsguard.dicom.errors import DecodeError
from pacsguard.dicom.events import (
    Aborted,
    AssociationAccepted,
    AssociationRejected,
    AssociationRequested,
    DimseCommand,
    DimseDatasetEnd,
    DimseDatasetStart,
    ProtocolViolation,
    ReleaseCompleted,
    ReleaseRequested,
)
from pacsguard.dicom.stream import PDUReader, RawPDU

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
IVLE = "1.2.840.10008.1.2"
EVLE = "1.2.840.10008.1.2.1"
REQUESTOR_MAX = 16384
ACCEPTOR_MAX = 4096

_LONG_VRS = {b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR", b"OF", b"OD", b"OL", b"OV", b"SV", b"UV"}


# ------------------------------------------------------------------ fixtures


def ct_file() -> tuple[Any, bytes]:
    """CT_small.dcm: its pydicom reading and the Explicit VR LE data set bytes."""
    path = get_testdata_file("CT_small.dcm")
    data = open(path, "rb").read()
    pos = 132
    while True:
        group = struct.unpack_from("<H", data, pos)[0]
        if group != 2:
            break
        if data[pos + 4 : pos + 6] in _LONG_VRS:
            pos += 12 + struct.unpack_from("<I", data, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", data, pos + 6)[0]
    return dcmread(path), data[pos:]


CT_DS, CT_BODY = ct_file()


def offset_after_identifiers(body: bytes) -> int:
    """Offset of the first top level element past (0020,000E), walking defined lengths."""
    pos = 0
    while True:
        group, elem = struct.unpack_from("<HH", body, pos)
        if (group << 16 | elem) > 0x0020000E:
            return pos
        if body[pos + 4 : pos + 6] in _LONG_VRS:
            length = struct.unpack_from("<I", body, pos + 8)[0]
            assert length != 0xFFFFFFFF
            pos += 12 + length
        else:
            pos += 8 + struct.unpack_from("<H", body, pos + 6)[0]


def ct_peek() -> DatasetPeek:
    ds = CT_DS
    return DatasetPeek(
        patient_id=ds.PatientID,
        patient_name=str(ds.PatientName),
        study_instance_uid=ds.StudyInstanceUID,
        series_instance_uid=ds.SeriesInstanceUID,
        sop_instance_uid=ds.SOPInstanceUID,
        sop_class_uid=ds.SOPClassUID,
        modality=ds.Modality,
        query_retrieve_level=None,
        accession_number=ds.get("AccessionNumber") or (None if "AccessionNumber" not in ds else ""),
        specific_character_set=ds.get("SpecificCharacterSet"),
        complete=True,
        bytes_examined=offset_after_identifiers(CT_BODY),
    )


def rq() -> P.AssociateRQ:
    return P.AssociateRQ(
        "PACS",
        "CT_SCANNER",
        [
            P.PresentationContextRQ(1, VERIFICATION, [IVLE]),
            P.PresentationContextRQ(3, CT, [EVLE, IVLE]),
            P.PresentationContextRQ(5, MR, [EVLE]),
        ],
        P.UserInformation.build(max_length=REQUESTOR_MAX, implementation_class_uid="1.2.3.4"),
    )


def ac(contexts: list[P.PresentationContextAC] | None = None) -> P.AssociateAC:
    return P.AssociateAC(
        "PACS",
        "CT_SCANNER",
        contexts
        or [
            P.PresentationContextAC(1, 0, IVLE),
            P.PresentationContextAC(3, 0, EVLE),
            P.PresentationContextAC(5, 3, None),
        ],
        P.UserInformation.build(max_length=ACCEPTOR_MAX, implementation_class_uid="1.2.3.5"),
    )


def pnd_message(message: str, context_id: int, max_pdu: int, **attrs: Any) -> list[bytes]:
    """A DIMSE message fragmented and encoded by pynetdicom."""
    primitive = getattr(dimse_primitives, message.rsplit("_", 1)[0])()
    for name, value in attrs.items():
        setattr(primitive, name, value)
    msg = getattr(dimse_messages, message)()
    msg.primitive_to_message(primitive)
    out = []
    for p_data in msg.encode_msg(context_id, max_pdu):
        pdu = pnd_pdu.P_DATA_TF()
        pdu.from_primitive(p_data)
        out.append(pdu.encode())
    return out


def store_rq_command(message_id: int) -> CommandSet:
    return CommandSet(
        D.C_STORE_RQ,
        message_id=message_id,
        affected_sop_class_uid=CT,
        affected_sop_instance_uid=CT_DS.SOPInstanceUID,
        priority=0,
        command_data_set_type=0x0001,
    )


def store_rsp(message_id: int) -> list[bytes]:
    return pnd_message(
        "C_STORE_RSP",
        3,
        REQUESTOR_MAX,
        MessageIDBeingRespondedTo=message_id,
        AffectedSOPClassUID=CT,
        AffectedSOPInstanceUID=CT_DS.SOPInstanceUID,
        Status=0,
    )


def small_pdv_store(message_id: int) -> list[bytes]:
    """C-STORE-RQ encoded by hand: command split over 2 PDVs, 3 PDVs per PDU, 1000-byte data PDVs."""
    command = D.encode_command_set(store_rq_command(message_id))
    pdvs = [P.PDV(3, True, False, command[:30]), P.PDV(3, True, True, command[30:])]
    chunks = [CT_BODY[i : i + 1000] for i in range(0, len(CT_BODY), 1000)]
    pdvs += [P.PDV(3, False, i == len(chunks) - 1, c) for i, c in enumerate(chunks)]
    return [P.encode_p_data_tf(pdvs[i : i + 3]) for i in range(0, len(pdvs), 3)]


def conversation() -> list[tuple[bool, list[bytes]]]:
    """(from_requestor, PDUs) turns of a complete association."""
    return [
        (True, [P.encode_associate_rq(rq())]),
        (False, [P.encode_associate_ac(ac())]),
        (True, pnd_message("C_ECHO_RQ", 1, ACCEPTOR_MAX, MessageID=1, AffectedSOPClassUID=VERIFICATION)),
        (False, pnd_message("C_ECHO_RSP", 1, REQUESTOR_MAX, MessageIDBeingRespondedTo=1,
                            AffectedSOPClassUID=VERIFICATION, Status=0)),
        (
            True,
            pnd_message(
                "C_STORE_RQ",
                3,
                ACCEPTOR_MAX,
                MessageID=2,
                AffectedSOPClassUID=CT,
                AffectedSOPInstanceUID=CT_DS.SOPInstanceUID,
                Priority=0,
                DataSet=BytesIO(CT_BODY),
            ),
        ),
        (False, store_rsp(2)),
        (True, small_pdv_store(3)),
        (False, store_rsp(3)),
        (True, [P.encode_release_rq()]),
        (False, [P.encode_release_rp()]),
    ]


def expected_events() -> list[ev.ProtocolEvent]:
    store_rsp_cmd = lambda mid: CommandSet(  # noqa: E731
        D.C_STORE_RSP,
        message_id_being_responded_to=mid,
        affected_sop_class_uid=CT,
        affected_sop_instance_uid=CT_DS.SOPInstanceUID,
        status=0,
    )
    return [
        AssociationRequested(rq()),
        AssociationAccepted(ac()),
        DimseCommand(True, 1, VERIFICATION, IVLE,
                     CommandSet(D.C_ECHO_RQ, message_id=1, affected_sop_class_uid=VERIFICATION)),
        DimseCommand(
            False,
            1,
            VERIFICATION,
            IVLE,
            CommandSet(D.C_ECHO_RSP, message_id_being_responded_to=1, affected_sop_class_uid=VERIFICATION, status=0),
        ),
        DimseCommand(True, 3, CT, EVLE, store_rq_command(2)),
        DimseDatasetStart(True, 3, 2, ct_peek()),
        DimseDatasetEnd(True, 2, len(CT_BODY)),
        DimseCommand(False, 3, CT, EVLE, store_rsp_cmd(2)),
        DimseCommand(True, 3, CT, EVLE, store_rq_command(3)),
        DimseDatasetStart(True, 3, 3, ct_peek()),
        DimseDatasetEnd(True, 3, len(CT_BODY)),
        DimseCommand(False, 3, CT, EVLE, store_rsp_cmd(3)),
        ReleaseRequested(True),
        ReleaseCompleted(),
    ]


def run_on_pdu(decoder: AssociationDecoder, turns: list[tuple[bool, list[bytes]]]) -> list[ev.ProtocolEvent]:
    out: list[ev.ProtocolEvent] = []
    for from_requestor, pdus in turns:
        for raw in pdus:
            out += decoder.on_pdu(from_requestor, RawPDU(raw[0], raw))
    return out


# --------------------------------------------------------- full association


def test_fixture_sanity() -> None:
    turns = conversation()
    store = turns[4][1]
    assert len(store) > 5  # the data set really is fragmented
    assert all(len(raw) - 6 <= ACCEPTOR_MAX for _, pdus in turns[2:] for raw in pdus if raw[0] == 4)
    assert ct_peek().patient_id and ct_peek().specific_character_set


def test_full_association_pdu_by_pdu() -> None:
    decoder = AssociationDecoder()
    events = run_on_pdu(decoder, conversation())
    assert events == expected_events()
    assert decoder.state is AssociationState.CLOSED
    assert decoder.contexts == {1: (VERIFICATION, IVLE), 3: (CT, EVLE)}
    assert decoder.requestor_max_pdu_length == REQUESTOR_MAX
    assert decoder.acceptor_max_pdu_length == ACCEPTOR_MAX
    turns = conversation()
    sent_by_requestor = [raw for side, pdus in turns if side for raw in pdus]
    assert decoder.requestor.pdus == len(sent_by_requestor)
    assert decoder.requestor.bytes == sum(map(len, sent_by_requestor))
    assert decoder.requestor.commands == 3 and decoder.acceptor.commands == 3
    assert decoder.requestor.datasets == 2
    assert decoder.requestor.dataset_bytes == 2 * len(CT_BODY)
    assert decoder.acceptor.pdus == sum(len(p) for side, p in turns if not side)


def test_full_association_one_byte_at_a_time() -> None:
    decoder = AssociationDecoder()
    events: list[ev.ProtocolEvent] = []
    for from_requestor, pdus in conversation():
        stream = b"".join(pdus)
        for i in range(len(stream)):
            events += decoder.feed(from_requestor, stream[i : i + 1])
    assert events == expected_events()
    assert decoder.reader(True).pending_bytes == 0 and decoder.reader(False).pending_bytes == 0


@pytest.mark.parametrize("seed", range(8))
def test_full_association_random_chunks(seed: int) -> None:
    rng = random.Random(seed)
    decoder = AssociationDecoder()
    events: list[ev.ProtocolEvent] = []
    for from_requestor, pdus in conversation():
        stream = b"".join(pdus)
        pos = 0
        while pos < len(stream):
            size = rng.choice([1, 3, 6, 7, 13, 100, 1448, 1460, 5000, 65536])
            events += decoder.feed(from_requestor, stream[pos : pos + size])
            pos += size
    assert events == expected_events()


def test_resync_and_midstream_on_a_partial_capture() -> None:
    """The IDS joins in the middle of the first C-STORE's data set."""
    turns = conversation()
    first_store = turns[4][1]
    decoder = AssociationDecoder(resync=True, midstream=True)
    events: list[ev.ProtocolEvent] = []
    # start 100 bytes into the third data PDU of the first C-STORE
    events += decoder.feed(True, b"".join(first_store[2:])[100:])
    for from_requestor, pdus in turns[5:]:
        events += decoder.feed(from_requestor, b"".join(pdus))
    assert decoder.skipped_bytes == len(first_store[2]) - 100

    def unknown(e: DimseCommand) -> DimseCommand:
        return type(e)(*[None if f in ("abstract_syntax", "transfer_syntax") else getattr(e, f) for f in e.__slots__])

    expected = [unknown(e) if isinstance(e, DimseCommand) else e for e in expected_events()[7:]]
    assert events == expected


def test_command_is_reported_before_the_data_set() -> None:
    decoder = AssociationDecoder()
    run_on_pdu(decoder, conversation()[:2])
    store = conversation()[4][1]
    first = decoder.on_pdu(True, RawPDU(4, store[0]))
    assert first == [DimseCommand(True, 3, CT, EVLE, store_rq_command(2))]
    assert decoder.in_flight(True) == store_rq_command(2)
    assert decoder.in_flight(False) is None
    # the gateway can answer right away with a refusal
    refusal = D.response_for(first[0].command, D.STATUS_NOT_AUTHORIZED)
    assert D.decode_command_set(refusal).status == 0x0124


def test_dataset_start_waits_for_identifiers() -> None:
    decoder = AssociationDecoder()
    run_on_pdu(decoder, conversation()[:2])
    command = D.encode_command_set(store_rq_command(9))
    events = decoder.on_pdu(True, RawPDU(4, P.encode_p_data_tf([P.PDV(3, True, True, command)])))
    assert len(events) == 1
    starts = []
    pieces = [CT_BODY[i : i + 64] for i in range(0, len(CT_BODY), 64)]
    for i, piece in enumerate(pieces):
        raw = P.encode_p_data_tf([P.PDV(3, False, i == len(pieces) - 1, piece)])
        for event in decoder.on_pdu(True, RawPDU(4, raw)):
            starts.append((i, event))
    assert [type(e) for _, e in starts] == [DimseDatasetStart, DimseDatasetEnd]
    assert starts[0][0] == offset_after_identifiers(CT_BODY) // 64  # as soon as possible
    assert starts[0][1] == DimseDatasetStart(True, 3, 9, ct_peek())
    assert starts[1][1] == DimseDatasetEnd(True, 9, len(CT_BODY))


def test_value_cap_bounds_a_held_value_not_the_walk() -> None:
    """value_cap caps a wanted value held across fragments; the walk still reads the data set to its
    identifiers (it used to stop after that many bytes, when it was peek_bytes)."""
    decoder = AssociationDecoder(value_cap=100)
    events = run_on_pdu(decoder, conversation()[:5])
    [start] = [e for e in events if isinstance(e, DimseDatasetStart)]
    assert start.peek.complete and start.peek.bytes_examined > 100
    assert start.peek == ct_peek()


# ------------------------------------------------------------- violations


def established() -> AssociationDecoder:
    decoder = AssociationDecoder()
    run_on_pdu(decoder, conversation()[:2])
    return decoder


def pdata(*pdvs: P.PDV) -> RawPDU:
    raw = P.encode_p_data_tf(list(pdvs))
    return RawPDU(4, raw)


ECHO = D.encode_command_set(CommandSet(D.C_ECHO_RQ, message_id=5, affected_sop_class_uid=VERIFICATION))


def codes(events: list[ev.ProtocolEvent]) -> list[str]:
    return [e.code for e in events if isinstance(e, ProtocolViolation)]


def test_p_data_before_accept() -> None:
    decoder = AssociationDecoder()
    assert codes(decoder.on_pdu(True, pdata(P.PDV(1, True, True, ECHO)))) == [ev.VIOLATION_DATA_BEFORE_ASSOCIATION]
    decoder.on_pdu(True, RawPDU(1, P.encode_associate_rq(rq())))
    events = decoder.on_pdu(True, pdata(P.PDV(1, True, True, ECHO)))
    assert codes(events) == [ev.VIOLATION_DATA_BEFORE_ASSOCIATION]
    assert "awaiting-ac" in events[0].message


@pytest.mark.parametrize("context_id", [5, 7, 2])  # rejected, never proposed, even
def test_pdv_on_context_not_accepted(context_id: int) -> None:
    events = established().on_pdu(True, pdata(P.PDV(context_id, True, True, ECHO)))
    assert codes(events) == [ev.VIOLATION_CONTEXT_NOT_ACCEPTED]
    assert f"context {context_id}" in events[0].message
    # decoding still goes on, with unknown syntaxes
    assert isinstance(events[1], DimseCommand) and events[1].abstract_syntax is None


def test_command_while_dataset_expected() -> None:
    decoder = established()
    command = D.encode_command_set(store_rq_command(2))
    decoder.on_pdu(True, pdata(P.PDV(3, True, True, command), P.PDV(3, False, False, CT_BODY[:2000])))
    events = decoder.on_pdu(True, pdata(P.PDV(1, True, True, ECHO)))
    assert codes(events) == [ev.VIOLATION_COMMAND_WHILE_DATASET_EXPECTED]
    assert "message 2" in events[0].message
    assert isinstance(events[1], DimseCommand)


def test_dataset_without_command() -> None:
    decoder = established()
    assert codes(decoder.on_pdu(True, pdata(P.PDV(3, False, True, b"xx")))) == [ev.VIOLATION_DATASET_WITHOUT_COMMAND]
    echo = D.encode_command_set(CommandSet(D.C_ECHO_RQ, message_id=5, affected_sop_class_uid=VERIFICATION))
    events = decoder.on_pdu(True, pdata(P.PDV(1, True, True, echo), P.PDV(1, False, True, b"xx")))
    assert codes(events) == [ev.VIOLATION_DATASET_WITHOUT_COMMAND]
    events = decoder.on_pdu(True, pdata(P.PDV(1, True, False, echo[:10]), P.PDV(1, False, True, b"xx")))
    assert codes(events) == [ev.VIOLATION_DATASET_WITHOUT_COMMAND]
    assert "before its command set was complete" in events[0].message


def test_context_change_inside_a_message() -> None:
    decoder = established()
    command = D.encode_command_set(store_rq_command(2))
    decoder.on_pdu(True, pdata(P.PDV(3, True, True, command)))
    events = decoder.on_pdu(True, pdata(P.PDV(1, False, True, CT_BODY[:100])))
    assert codes(events) == [ev.VIOLATION_CONTEXT_CHANGED]
    # a new command on another context abandons the unfinished one
    events = decoder.on_pdu(True, pdata(P.PDV(3, True, False, ECHO[:8]), P.PDV(1, True, True, ECHO)))
    assert codes(events) == [ev.VIOLATION_CONTEXT_CHANGED]
    assert isinstance(events[1], DimseCommand) and events[1].context_id == 1


def test_pdu_larger_than_negotiated_maximum() -> None:
    decoder = established()
    command = D.encode_command_set(store_rq_command(2))
    too_big = pdata(P.PDV(3, True, True, command), P.PDV(3, False, False, bytes(ACCEPTOR_MAX)))
    events = decoder.on_pdu(True, too_big)
    assert codes(events) == [ev.VIOLATION_PDU_EXCEEDS_NEGOTIATED_MAX]
    assert str(ACCEPTOR_MAX) in events[0].message and str(too_big.length) in events[0].message
    # the acceptor may send up to the requestor's (larger) maximum
    ok = pdata(P.PDV(3, True, True, ECHO), P.PDV(1, False, False, bytes(8000)))
    assert ev.VIOLATION_PDU_EXCEEDS_NEGOTIATED_MAX not in codes(established().on_pdu(False, ok))


def test_unlimited_maximum() -> None:
    decoder = AssociationDecoder()
    unlimited_rq = rq()
    unlimited_rq.user_information = P.UserInformation.build(max_length=0)
    decoder.on_pdu(True, RawPDU(1, P.encode_associate_rq(unlimited_rq)))
    decoder.on_pdu(False, RawPDU(2, P.encode_associate_ac(ac())))
    events = decoder.on_pdu(False, pdata(P.PDV(1, True, True, ECHO), P.PDV(1, False, False, bytes(100_000))))
    assert ev.VIOLATION_PDU_EXCEEDS_NEGOTIATED_MAX not in codes(events)


def test_data_after_release_request() -> None:
    decoder = established()
    assert decoder.on_pdu(True, RawPDU(5, P.encode_release_rq())) == [ReleaseRequested(True)]
    # the acceptor may still send data until it answers (PS3.8 Sta7)
    assert codes(decoder.on_pdu(False, pdata(P.PDV(1, True, True, ECHO)))) == []
    events = decoder.on_pdu(True, pdata(P.PDV(1, True, True, ECHO)))
    assert codes(events) == [ev.VIOLATION_DATA_AFTER_RELEASE]
    assert decoder.on_pdu(False, RawPDU(6, P.encode_release_rp())) == [ReleaseCompleted()]
    assert codes(decoder.on_pdu(False, pdata(P.PDV(1, True, True, ECHO)))) == [ev.VIOLATION_DATA_AFTER_CLOSE]


def test_release_collision() -> None:
    decoder = established()
    assert decoder.on_pdu(True, RawPDU(5, P.encode_release_rq())) == [ReleaseRequested(True)]
    assert decoder.on_pdu(False, RawPDU(5, P.encode_release_rq())) == [ReleaseRequested(False)]
    assert decoder.on_pdu(True, RawPDU(6, P.encode_release_rp())) == []
    assert decoder.state is AssociationState.RELEASE_REQUESTED
    assert decoder.on_pdu(False, RawPDU(6, P.encode_release_rp())) == [ReleaseCompleted()]
    assert decoder.state is AssociationState.CLOSED


@pytest.mark.parametrize(
    "setup,from_requestor,raw",
    [
        (0, False, P.encode_associate_rq(rq())),  # RQ from the acceptor
        (1, True, P.encode_associate_rq(rq())),  # second RQ
        (1, True, P.encode_associate_ac(ac())),  # AC from the requestor
        (2, False, P.encode_associate_ac(ac())),  # second AC
        (2, False, P.encode_associate_rj(1, 1, 7)),  # RJ after AC
        (2, True, P.encode_release_rp()),  # RP without RQ
        (1, True, P.encode_release_rq()),  # release before AC
        (3, True, P.encode_abort()),  # abort after release
    ],
)
def test_unexpected_pdus(setup: int, from_requestor: bool, raw: bytes) -> None:
    decoder = AssociationDecoder()
    release = [(True, [P.encode_release_rq()]), (False, [P.encode_release_rp()])]
    prefix = {0: [], 1: conversation()[:1], 2: conversation()[:2], 3: conversation()[:2] + release}
    run_on_pdu(decoder, prefix[setup])
    state = decoder.state
    events = decoder.on_pdu(from_requestor, RawPDU(raw[0], raw))
    assert codes(events) == [ev.VIOLATION_UNEXPECTED_PDU]
    assert P.PDU_TYPE_NAMES[raw[0]] in events[0].message
    assert decoder.state is state  # an unexpected PDU does not move the state machine


def test_reject() -> None:
    decoder = AssociationDecoder()
    decoder.on_pdu(True, RawPDU(1, P.encode_associate_rq(rq())))
    rejected = decoder.on_pdu(False, RawPDU(3, P.encode_associate_rj(1, 1, 7)))
    assert rejected == [AssociationRejected(P.AssociateRJ(1, 1, 7))]
    assert decoder.state is AssociationState.CLOSED and decoder.rj == P.AssociateRJ(1, 1, 7)


@pytest.mark.parametrize("from_requestor,source,reason", [(True, 0, 0), (False, 2, 6)])
def test_abort(from_requestor: bool, source: int, reason: int) -> None:
    decoder = established()
    events = decoder.on_pdu(from_requestor, RawPDU(7, P.encode_abort(source, reason)))
    assert events == [Aborted(from_requestor, source, reason)]
    assert decoder.state is AssociationState.CLOSED


def test_accept_inconsistent_with_request() -> None:
    decoder = AssociationDecoder()
    decoder.on_pdu(True, RawPDU(1, P.encode_associate_rq(rq())))
    bad = ac([P.PresentationContextAC(1, 0, EVLE), P.PresentationContextAC(9, 0, IVLE)])
    events = decoder.on_pdu(False, RawPDU(2, P.encode_associate_ac(bad)))
    assert isinstance(events[0], AssociationAccepted)
    assert codes(events) == [ev.VIOLATION_TRANSFER_SYNTAX_NOT_PROPOSED, ev.VIOLATION_CONTEXT_NOT_PROPOSED]
    assert decoder.contexts == {1: (VERIFICATION, EVLE)}


# ----------------------------------------------------------- malformed bytes


def test_malformed_command_raises_with_partial_events() -> None:
    decoder = established()
    good = D.encode_command_set(CommandSet(D.C_ECHO_RQ, message_id=5, affected_sop_class_uid=VERIFICATION))
    bad = good[:-1]
    turn = P.encode_p_data_tf([P.PDV(1, True, True, good)]) + P.encode_p_data_tf([P.PDV(1, True, True, bad)])
    with pytest.raises(DecodeError) as info:
        decoder.feed(True, turn)
    assert info.value.code in (E.COMMAND_GROUP_LENGTH_MISMATCH, E.COMMAND_ELEMENT_TRUNCATED)
    assert [type(e) for e in info.value.partial] == [DimseCommand]


def test_oversized_command_set() -> None:
    decoder = established()
    chunk = P.PDV(1, True, False, bytes(4000))
    with pytest.raises(DecodeError) as info:
        for _ in range(20):
            decoder.on_pdu(True, pdata(chunk))
    assert info.value.code == E.COMMAND_SET_TOO_LARGE and "65536" in str(info.value)


def test_reader_errors_surface_through_feed() -> None:
    decoder = AssociationDecoder(max_pdu_length=100_000)
    rq_raw = P.encode_associate_rq(rq())
    with pytest.raises(DecodeError) as info:
        decoder.feed(True, rq_raw + struct.pack(">BBI", 4, 0, 200_000))
    assert info.value.code == E.PDU_LENGTH_EXCEEDS_MAXIMUM
    assert info.value.partial == [AssociationRequested(rq())]
    with pytest.raises(DecodeError) as again:
        decoder.feed(True, b"more")
    assert again.value.code == E.PDU_LENGTH_EXCEEDS_MAXIMUM and again.value.partial == []


def test_handmade_raw_pdu_with_unknown_type() -> None:
    with pytest.raises(DecodeError) as info:
        AssociationDecoder().on_pdu(True, RawPDU(9, b"\x09\x00\x00\x00\x00\x00"))
    assert info.value.code == E.UNKNOWN_PDU_TYPE


def test_reader_instances_are_per_direction() -> None:
    decoder = AssociationDecoder(max_pdu_length=70_000, strict=True)
    assert isinstance(decoder.reader(True), PDUReader)
    assert decoder.reader(True) is not decoder.reader(False)
    assert decoder.reader(True).max_pdu_length == 70_000 and decoder.reader(False).strict


def test_midstream_observer_that_sees_the_request_decodes_normally() -> None:
    decoder = AssociationDecoder(midstream=True)
    assert decoder.state is AssociationState.ESTABLISHED
    assert run_on_pdu(decoder, conversation()) == expected_events()


def test_tolerated_codes_become_warnings_and_others_still_raise() -> None:
    bad_length = bytearray(ECHO)
    struct.pack_into("<I", bad_length, 8, struct.unpack_from("<I", bad_length, 8)[0] + 84)
    decoder = AssociationDecoder(tolerate=frozenset({E.COMMAND_GROUP_LENGTH_MISMATCH, E.RESERVED_FIELD_NONZERO}))
    run_on_pdu(decoder, conversation()[:2])
    frame = bytearray(pdata(P.PDV(1, True, True, bytes(bad_length))).raw)
    frame[1] = 0x80
    events = decoder.on_pdu(True, RawPDU(4, bytes(frame)))
    assert [(type(e).__name__, getattr(e, "code", None)) for e in events] == [
        ("ProtocolWarning", E.RESERVED_FIELD_NONZERO), ("ProtocolWarning", E.COMMAND_GROUP_LENGTH_MISMATCH),
        ("DimseCommand", None)]
    assert isinstance(events[-1], DimseCommand) and events[-1].command.message_id == 5
    # Without the hook, the same bytes fail as they always did.
    with pytest.raises(DecodeError) as info:
        established().on_pdu(True, RawPDU(4, bytes(frame)))
    assert info.value.code == E.COMMAND_GROUP_LENGTH_MISMATCH
