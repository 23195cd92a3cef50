"""Two paths that once ended in "internal error" with a traceback (issue #16, section 3): each now
ends in a recorded, named refusal, and nothing of it reaches the upstream."""

from __future__ import annotations

import struct

from playbook import Playbook, associate_rq, echo_rq, play, request, route_config

from pacsguard.config.schema import Route
from pacsguard.dicom import dimse
from pacsguard.events import Event
from pacsguard.ids import DicomAdapter, Engine, IdsSettings, load_rules


def real_ids() -> DicomAdapter:
    """The built-in IDS rules behind their DICOM adapter, as `serve` runs them inline."""
    return DicomAdapter(Engine(load_rules([]), IdsSettings()))


def test_invalid_rq_then_bad_header_in_one_read() -> None:
    """An A-ASSOCIATE-RQ that does not decode, followed in the same read by a PDU header of an
    unknown type: the first fault is reported (protocol violation, association aborted, the
    malformed-PDU rule fires), the second is not raised while handling it."""
    rq = bytearray(associate_rq("WS1"))
    # The calling AE title (PS3.8 9.3.2, bytes 26-41) with a control character: a DecodeError.
    rq[26:42] = b"W\x01S1" + b" " * 12
    garbage = bytes([0x55, 0]) + struct.pack(">I", 4) + b"oops"

    async def scenario(pb: Playbook) -> None:
        await pb.client(bytes(rq) + garbage)

    pb = play(route_config(), scenario, engine=real_ids())
    kinds = pb.kinds()
    assert "dicom.protocol.violation" in kinds
    violation = next(e for e in pb.events if e.kind == "dicom.protocol.violation")
    assert violation.details["code"] == "bad-ae-title"
    assert "dicom.association.aborted" in kinds
    assert "ids.alert.dicom-malformed-pdu" in kinds
    assert pb.to_upstream() == []
    assert [s.name for s in pb.to_client()] == ["A-ABORT"]


def _unknown_command(message_id: int | None = 7) -> bytes:
    command = dimse.CommandSet(0x0002, message_id=message_id, affected_sop_class_uid="1.2.840.10008.1.1",
                               command_data_set_type=0x0101)
    return request(command)


def _refusing_rate_route() -> Route:
    # One request per minute: the second request is refused by the rate check (PS3.7 C.4 0xA700).
    return route_config(limits={"requests_per_minute": 1})


def test_refusing_a_request_without_a_response_message_aborts() -> None:
    """A request of an unknown command field, refused by the services check, has no -RSP to refuse
    it with (PS3.7 9.3): the association is aborted and recorded, no ValueError escapes, and the
    upstream sees only the A-ABORT."""

    async def scenario(pb: Playbook) -> None:
        await pb.associate()
        await pb.client(_unknown_command(1))

    pb = play(route_config(), scenario)
    aborted = [e for e in pb.events if e.kind == "dicom.association.aborted"]
    assert len(aborted) == 1
    reason = str(aborted[0].details["reason"])
    assert "is not allowed on this route; UNKNOWN-0x0002 has no response message" in reason
    assert [s.name for s in pb.to_upstream()] == ["A-ABORT"]
    assert [s.name for s in pb.to_client()] == ["A-ABORT"]


def test_request_without_message_id_refused_by_abort() -> None:
    async def scenario(pb: Playbook) -> None:
        await pb.associate()
        await pb.client(echo_rq(1))  # allowed: the first request of the minute
        assert [s.name for s in pb.to_upstream()] == ["P-DATA-TF"]
        # refused by the rate check, and without a Message ID there is no response to refuse it with
        await pb.client(request(dimse.CommandSet(dimse.C_ECHO_RQ, affected_sop_class_uid="1.2.840.10008.1.1",
                                                 command_data_set_type=0x0101)))

    pb = play(_refusing_rate_route(), scenario)
    events: list[Event] = [e for e in pb.events if e.kind == "dicom.association.aborted"]
    assert len(events) == 1 and "has no response message" in str(events[0].details["reason"])
    assert [s.name for s in pb.to_upstream()] == ["A-ABORT"]


def test_an_ac_with_a_mangled_echo_is_answered_with_the_client_s_own_ae_titles() -> None:
    """PS3.8 9.3.3: the AE titles an A-ASSOCIATE-AC echoes "shall not be tested"; the gateway re-encodes
    the AC with the client's own calling AE title, not the upstream's bytes (found by the fuzzer: a
    non-ASCII byte there was a UnicodeEncodeError, a NUL inside it a ValueError)."""
    from playbook import Seen, associate_ac

    from pacsguard.dicom import pdu as P

    for mangled in (b"W\xb31".ljust(16), b"WS1\x00       !".ljust(16)):
        ac = associate_ac(calling="WS1")
        ac = ac[:P.CALLING_AE_OFFSET] + mangled + ac[P.CALLING_AE_OFFSET + 16:]

        async def scenario(pb: Playbook, ac: bytes = ac) -> None:
            await pb.client(associate_rq("WS1"))
            await pb.upstream(ac)

        pb = play(route_config(), scenario)
        assert pb.to_client() == [Seen("A-ASSOCIATE-AC", ((1, 0),))]
        assert P.parse_associate_ac(bytes(pb.client_wire.out)).calling_ae_title == "WS1"
