"""Protocol fidelity of the relay, in memory: the Maximum Length each leg is told (PS3.8 D.1) and
items of unrecognised types (PS3.8 9.3.1), with the exact PDUs each side received."""

from __future__ import annotations

from typing import Any

import pytest
from playbook import (
    IMPLICIT_LE,
    STUDY_FIND,
    VERIFICATION,
    Playbook,
    Seen,
    client_data_sets,
    echo_rq,
    play,
    response,
    route_config,
    split,
)

from dicom_corpus import el_implicit
from pacsguard.dicom import dimse
from pacsguard.dicom import pdu as P

OWN_LIMIT = 4 * 1024 * 1024


def rq_with(max_length: int | None, *extra_items: bytes) -> bytes:
    info = P.UserInformation.build(max_length=max_length, implementation_class_uid="1.2.3")
    contexts = [P.PresentationContextRQ(1, VERIFICATION, [IMPLICIT_LE])]
    raw = P.encode_associate_rq(P.AssociateRQ("PACSGUARD", "WS1", contexts, info))
    return _append_items(raw, *extra_items)


def ac_with(max_length: int | None, *extra_items: bytes) -> bytes:
    info = P.UserInformation.build(max_length=max_length, implementation_class_uid="1.2.4")
    raw = P.encode_associate_ac(P.AssociateAC("PACS", "WS1", [P.PresentationContextAC(1, 0, IMPLICIT_LE)], info))
    return _append_items(raw, *extra_items)


def _append_items(raw: bytes, *items: bytes) -> bytes:
    body = raw[6:] + b"".join(items)
    return bytes((raw[0], 0)) + len(body).to_bytes(4, "big") + body


def unknown_item(item_type: int = 0x7F, value: bytes = b"\x01\x02\x03") -> bytes:
    return bytes((item_type, 0)) + len(value).to_bytes(2, "big") + value


def forwarded_rq(pb: Playbook) -> bytes:
    return split(bytes(pb.upstream_wire.out))[0]


def forwarded_ac(pb: Playbook) -> P.AssociateAC:
    return P.parse_associate_ac(split(bytes(pb.client_wire.out))[0])


@pytest.mark.parametrize("client_max, upstream_max, to_upstream, to_client", [
    (0, 0, OWN_LIMIT, OWN_LIMIT),
    (None, None, OWN_LIMIT, OWN_LIMIT),
    (4096, 4096, 4096, 4096),
    (16 * 1024 * 1024, 16 * 1024 * 1024, OWN_LIMIT, OWN_LIMIT),
    (16384, 0, 16384, OWN_LIMIT),
])
def test_each_leg_is_told_at_most_what_the_gateway_reads(client_max, upstream_max, to_upstream, to_client):
    async def scenario(pb: Playbook) -> None:
        await pb.client(rq_with(client_max))
        await pb.upstream(ac_with(upstream_max))

    pb = play(route_config(), scenario)
    assert P.parse_associate_rq(forwarded_rq(pb)).max_length == to_upstream
    assert forwarded_ac(pb).max_length == to_client
    # What the client was told is what the relay holds it to.
    assert pb.relay is not None and pb.relay.decoder.acceptor_max_pdu_length == to_client


def test_a_route_limit_is_what_the_legs_are_told():
    async def scenario(pb: Playbook) -> None:
        await pb.client(rq_with(0))
        await pb.upstream(ac_with(0))

    pb = play(route_config(limits={"max_pdu_length": 65536}), scenario)
    assert P.parse_associate_rq(forwarded_rq(pb)).max_length == 65536
    assert forwarded_ac(pb).max_length == 65536


def test_a_request_within_the_limit_reaches_the_upstream_byte_for_byte():
    async def scenario(pb: Playbook) -> None:
        await pb.client(rq_with(16384))

    pb = play(route_config(), scenario)
    assert forwarded_rq(pb) == P.with_called_ae(rq_with(16384), "PACS")


def test_an_unrecognised_item_is_ignored_and_not_passed_on():
    async def scenario(pb: Playbook) -> None:
        await pb.client(rq_with(16384, unknown_item()))
        assert pb.to_upstream() == [Seen("A-ASSOCIATE-RQ", ("WS1", "PACS"))]
        await pb.upstream(ac_with(16384, unknown_item(0x6E)))
        assert pb.to_client() == [Seen("A-ASSOCIATE-AC", ((1, 0),))]
        await pb.client(echo_rq())
        await pb.upstream(response(echo_rq()))
        assert pb.to_client() == [Seen("P-DATA-TF", (("C-ECHO-RSP", 0),))]

    pb = play(route_config(), scenario)
    assert forwarded_rq(pb) == P.with_called_ae(rq_with(16384), "PACS")
    assert "dicom.protocol.violation" not in pb.kinds()


def test_an_unrecognised_presentation_context_sub_item_is_ignored():
    subs = (unknown_item(0x33, b"x") + unknown_item(0x30, VERIFICATION.encode())
            + unknown_item(0x40, IMPLICIT_LE.encode()) + unknown_item(0x4F, b"yz"))
    body = bytes((1, 0, 0, 0)) + subs
    context = bytes((0x20, 0)) + len(body).to_bytes(2, "big") + body
    app = unknown_item(0x10, b"1.2.840.10008.3.1.1.1")
    info = P.encode_user_information(P.UserInformation.build(max_length=16384))
    fixed = b"\x00\x01\x00\x00" + b"PACSGUARD".ljust(16) + b"WS1".ljust(16) + bytes(32)
    payload = fixed + app + context + info
    raw = bytes((1, 0)) + len(payload).to_bytes(4, "big") + payload
    rq = P.parse_associate_rq(raw)
    assert rq.presentation_contexts == [P.PresentationContextRQ(1, VERIFICATION, [IMPLICIT_LE])]

    async def scenario(pb: Playbook) -> None:
        await pb.client(raw)

    pb = play(route_config(), scenario)
    forwarded = P.parse_associate_rq(forwarded_rq(pb))
    assert forwarded.presentation_contexts == rq.presentation_contexts
    assert b"yz" not in forwarded_rq(pb) and len(forwarded_rq(pb)) == len(raw) - 5 - 6



# --- Retrieve AE Title (0008,0054) in C-FIND responses -------------------------------------------

FIND = dimse.CommandSet(dimse.C_FIND_RQ, message_id=3, affected_sop_class_uid=STUDY_FIND, priority=0,
                        command_data_set_type=0x0001)
QUERY = el_implicit(0x00080052, b"STUDY", pad=b" ") + el_implicit(0x00080054, b"") + el_implicit(0x0020000D, b"")


def match(retrieve_ae: bytes) -> bytes:
    return (el_implicit(0x00080052, b"STUDY", pad=b" ") + el_implicit(0x00080054, retrieve_ae, pad=b" ")
            + el_implicit(0x0020000D, b"1.2.3.4", pad=b"\0"))


def find_response(status: int, dataset: bytes | None, max_pdu: int) -> bytes:
    command = dimse.CommandSet(dimse.C_FIND_RSP, message_id_being_responded_to=3, affected_sop_class_uid=STUDY_FIND,
                               status=status, command_data_set_type=0x0101 if dataset is None else 0x0001)
    return b"".join(P.encode_dimse_message(1, dimse.encode_command_set(command), dataset, max_pdu))


def find_through(route: Any, client_max: int, upstream_pdu: int, *matches: bytes) -> tuple[Playbook, list[bytes]]:
    """A C-FIND answered by *matches* (the upstream fragments each into PDUs of *upstream_pdu*, in one
    write with the final response); returns the data sets the client received."""
    async def scenario(pb: Playbook) -> None:
        await pb.client(_find_rq(client_max))
        await pb.upstream(_find_ac())
        await pb.client(b"".join(P.encode_dimse_message(1, dimse.encode_command_set(FIND), QUERY, 16384)))
        await pb.upstream(b"".join(find_response(0xFF00, m, upstream_pdu) for m in matches)
                          + find_response(0x0000, None, upstream_pdu))

    pb = play(route, scenario)
    return pb, client_data_sets(pb, (client_max or OWN_LIMIT))


def _find_rq(client_max: int) -> bytes:
    info = P.UserInformation.build(max_length=client_max, implementation_class_uid="1.2.3")
    return P.encode_associate_rq(P.AssociateRQ("PACSGUARD", "WS1", [P.PresentationContextRQ(1, STUDY_FIND,
                                                                                             [IMPLICIT_LE])], info))


def _find_ac() -> bytes:
    info = P.UserInformation.build(max_length=16384, implementation_class_uid="1.2.4")
    return P.encode_associate_ac(P.AssociateAC("PACS", "WS1", [P.PresentationContextAC(1, 0, IMPLICIT_LE)], info))


@pytest.mark.parametrize("client_max, upstream_pdu", [(16384, 16384), (0, 16384), (16384, 20), (64, 64)])
def test_c_find_responses_name_the_gateway_as_retrieve_ae(client_max, upstream_pdu):
    pb, received = find_through(route_config(), client_max, upstream_pdu, match(b"PACS"), match(b"PACS"), match(b""))
    assert received == [match(b"PACSGUARD"), match(b"PACSGUARD"), match(b"PACSGUARD")]
    (find,) = [e for e in pb.events if e.kind == "dicom.dimse.c-find"]
    assert find.details["rewritten"] == {"RetrieveAETitle": 3} and find.details["responses"] == 3


def test_without_a_retrieve_ae_or_with_the_rewrite_off_responses_pass_unchanged():
    without = el_implicit(0x00080052, b"STUDY", pad=b" ") + el_implicit(0x0020000D, b"1.2.3.4", pad=b"\0")
    pb, received = find_through(route_config(), 16384, 16384, without)
    assert received == [without]
    assert "rewritten" not in [e for e in pb.events if e.kind == "dicom.dimse.c-find"][0].details
    pb, received = find_through(route_config(rewrite_retrieve_ae_title=False), 16384, 16384, match(b"PACS"))
    assert received == [match(b"PACS")]
    same = route_config(upstream={"host": "127.0.0.1", "port": 11113, "ae_title": "PACSGUARD"})
    assert not same.rewrites_retrieve_ae_title and route_config().rewrites_retrieve_ae_title
