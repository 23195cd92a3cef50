"""Round 5 (issues 15/16), the relay and deflated data sets (PS3.5 A.5), in memory:

- C-FIND responses on a Deflated Explicit VR Little Endian context name the gateway as Retrieve AE
  Title (0008,0054) on a route that maps AE titles, as on any other context: the identifier is
  inflated within the bound of any identifier the gateway holds, rewritten and deflated again.
- A C-STORE data set whose walk stops before its Patient ID (0010,0020) - past the 256 KiB a
  deflated data set is walked through, behind a limit, or cut - is aborted on a relayed route, as
  one whose SOP Class UID cannot be read is (rule `dimse.dataset-patient`); its record says which
  identifiers were not read and why, and the inline IDS raises `dicom-dataset-walk-stopped`.
"""

from __future__ import annotations

import struct
import zlib

import pytest
from playbook import (
    CT_STORAGE,
    MAX_PDU,
    STUDY_FIND,
    Playbook,
    Seen,
    client_data_sets,
    play,
    request,
    response,
    route_config,
    split,
)

from pacsguard.dicom import dimse
from pacsguard.dicom import pdu as P
from pacsguard.dicom.dataset import MAX_IDENTIFIER_LENGTH, PEEK_INFLATE_LIMIT

DEFLATED = "1.2.840.10008.1.2.1.99"
EXPLICIT = "1.2.840.10008.1.2.1"
_SHORT_VRS = {b"AE", b"CS", b"DA", b"LO", b"PN", b"SH", b"TM", b"UI", b"US"}


def el(tag: int, vr: bytes, value: bytes, pad: bytes = b" ") -> bytes:
    """An Explicit VR Little Endian element (PS3.5 7.1.2), padded to even length."""
    value += pad * (len(value) % 2)
    if vr in _SHORT_VRS:
        return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value
    return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr, 0, len(value)) + value


def deflate(raw: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = packer.compress(raw) + packer.flush()
    return out + b"\0" * (len(out) % 2)


def inflate(data: bytes) -> bytes:
    return zlib.decompressobj(-zlib.MAX_WBITS).decompress(data)


def rq(*contexts: tuple[int, str, str]) -> bytes:
    info = P.UserInformation.build(max_length=MAX_PDU, implementation_class_uid="1.2.3")
    return P.encode_associate_rq(P.AssociateRQ("PACSGUARD", "WS1", [P.PresentationContextRQ(cid, uid, [ts])
                                                                    for cid, uid, ts in contexts], info))


def ac(*contexts: tuple[int, str, str]) -> bytes:
    info = P.UserInformation.build(max_length=MAX_PDU, implementation_class_uid="1.2.4")
    return P.encode_associate_ac(P.AssociateAC("PACS", "WS1", [P.PresentationContextAC(cid, 0, ts)
                                                               for cid, _, ts in contexts], info))


async def associate(pb: Playbook, *contexts: tuple[int, str, str]) -> None:
    await pb.client(rq(*contexts))
    await pb.upstream(ac(*contexts))
    pb.to_client(), pb.to_upstream()


# --- Retrieve AE Title (0008,0054) in deflated C-FIND responses ------------------------------------

FIND = dimse.CommandSet(dimse.C_FIND_RQ, message_id=3, affected_sop_class_uid=STUDY_FIND, priority=0,
                        command_data_set_type=0x0001)
QUERY = el(0x00080052, b"CS", b"STUDY") + el(0x00080054, b"AE", b"") + el(0x0020000D, b"UI", b"")


def match(retrieve_ae: bytes, *, filler: int = 0) -> bytes:
    """A C-FIND match in Explicit VR Little Endian; *filler* bytes of a private OB value before it all."""
    private = el(0x00091010, b"OB", b"\0" * filler, pad=b"\0") if filler else b""
    return (el(0x00080052, b"CS", b"STUDY") + el(0x00080054, b"AE", retrieve_ae) + private
            + el(0x00100020, b"LO", b"P0") + el(0x0020000D, b"UI", b"1.2.3.4", pad=b"\0"))


def find_response(status: int, dataset: bytes | None, max_pdu: int = MAX_PDU) -> bytes:
    command = dimse.CommandSet(dimse.C_FIND_RSP, message_id_being_responded_to=3, affected_sop_class_uid=STUDY_FIND,
                               status=status, command_data_set_type=0x0101 if dataset is None else 0x0001)
    return b"".join(P.encode_dimse_message(1, dimse.encode_command_set(command), dataset, max_pdu))


def deflated_find(route: object, *matches: bytes) -> tuple[Playbook, list[bytes]]:
    """A C-FIND on a deflated context answered by *matches* (deflated by the upstream); the data sets
    the client received, as they came (still deflated)."""
    context = (1, STUDY_FIND, DEFLATED)

    async def scenario(pb: Playbook) -> None:
        await associate(pb, context)
        await pb.client(request(FIND, deflate(QUERY)))
        await pb.upstream(b"".join(find_response(0xFF00, deflate(m)) for m in matches)
                          + find_response(0x0000, None))

    pb = play(route, scenario)  # type: ignore[arg-type]
    return pb, client_data_sets(pb, MAX_PDU)


def test_deflated_c_find_responses_name_the_gateway_as_retrieve_ae() -> None:
    """The issue's repro in memory: the client gets a deflated identifier (the syntax the peers
    negotiated) whose Retrieve AE Title is the gateway's; the rest of it is byte for byte the PACS's."""
    pb, received = deflated_find(route_config(), match(b"PACS"), match(b"HIDDENPACS"), match(b""))
    assert [inflate(r) for r in received] == [match(b"PACSGUARD")] * 3
    assert all(len(r) % 2 == 0 for r in received)
    (find,) = [e for e in pb.events if e.kind == "dicom.dimse.c-find"]
    assert find.details["rewritten"] == {"RetrieveAETitle": 3} and find.details["responses"] == 3
    assert find.patient_ids == ("P0",)


def test_a_deflated_response_spanning_pdus_is_rewritten_and_refragmented() -> None:
    """Incompressible filler makes the deflated match span several PDUs each way."""
    import random

    filler = bytes(random.Random(5).randrange(256) for _ in range(40_000))
    big = (el(0x00080052, b"CS", b"STUDY") + el(0x00080054, b"AE", b"PACS") + el(0x00091010, b"OB", filler)
           + el(0x0020000D, b"UI", b"1.2.3.4", pad=b"\0"))
    pb, received = deflated_find(route_config(), big)
    assert [inflate(r) for r in received] == [big.replace(el(0x00080054, b"AE", b"PACS"),
                                                          el(0x00080054, b"AE", b"PACSGUARD"))]


def test_a_deflated_response_that_cannot_be_rewritten_passes_as_it_came() -> None:
    """Within bounds only: one that inflates past MAX_IDENTIFIER_LENGTH (a few KB deflated) or a damaged
    stream is not rewritten, as a response too large to hold is not; the rewrite off, none is."""
    bomb = match(b"PACS", filler=MAX_IDENTIFIER_LENGTH)
    pb, received = deflated_find(route_config(), bomb, match(b"PACS"))
    assert received[0] == deflate(bomb) and inflate(received[1]) == match(b"PACSGUARD")
    (find,) = [e for e in pb.events if e.kind == "dicom.dimse.c-find"]
    assert find.details["rewritten"] == {"RetrieveAETitle": 1}
    # ... and the record says one was passed as received, and why: never silent.
    assert "RetrieveAETitle not rewritten in 1 response(s), passed as received: deflated identifier inflates " \
        f"to more than {MAX_IDENTIFIER_LENGTH}" in find.message, find.message
    pb, received = deflated_find(route_config(rewrite_retrieve_ae_title=False), match(b"PACS"))
    assert [inflate(r) for r in received] == [match(b"PACS")]
    (find,) = [e for e in pb.events if e.kind == "dicom.dimse.c-find"]
    assert "rewritten" not in find.details and find.message == "C-FIND status 0x0000"


def test_a_damaged_deflated_response_passes_as_it_came() -> None:
    context = (1, STUDY_FIND, DEFLATED)
    cut = deflate(match(b"PACS"))[:-6]

    async def scenario(pb: Playbook) -> None:
        await associate(pb, context)
        await pb.client(request(FIND, deflate(QUERY)))
        await pb.upstream(find_response(0xFF00, cut) + find_response(0x0000, None))

    pb = play(route_config(), scenario)
    data = b"".join(bytes(p.value) for raw in split(bytes(pb.client_wire.out))[1:]
                    for p in P.parse_p_data_tf(raw).pdvs if not p.is_command)
    assert data == cut
    (find,) = [e for e in pb.events if e.kind == "dicom.dimse.c-find"]
    assert "RetrieveAETitle not rewritten in 1 response(s)" in find.message, find.message


def test_a_response_too_large_to_hold_is_recorded_as_not_rewritten() -> None:
    """Not deflated: a match over MAX_IDENTIFIER_LENGTH passes as it came (docs/gateway.md), and the
    C-FIND's record now says so."""
    big = match(b"PACS", filler=MAX_IDENTIFIER_LENGTH + 100_000)
    context = (1, STUDY_FIND, EXPLICIT)

    async def scenario(pb: Playbook) -> None:
        await associate(pb, context)
        await pb.client(request(FIND, QUERY))
        await pb.upstream(find_response(0xFF00, big) + find_response(0x0000, None))

    pb = play(route_config(), scenario)
    (find,) = [e for e in pb.events if e.kind == "dicom.dimse.c-find"]
    assert f"passed as received: larger than the {MAX_IDENTIFIER_LENGTH:,} bytes held" in find.message


def test_a_deflated_query_whose_keys_lie_past_the_limit_is_aborted_and_recorded_as_unread() -> None:
    """The C-FIND is aborted (round 6: its patient would be hidden from the checks, rule
    dimse.dataset-identifier), and its record says its Patient ID was not read rather than showing an
    empty query."""
    query = (el(0x00080052, b"CS", b"STUDY") + el(0x00091010, b"OB", b"\0" * (400 * 1024))
             + el(0x00100020, b"LO", b"SECRETPAT") + el(0x0020000D, b"UI", b""))

    async def scenario(pb: Playbook) -> None:
        await associate(pb, (1, STUDY_FIND, DEFLATED))
        await pb.client(request(FIND, deflate(query)))

    pb = play(route_config(), scenario)
    (aborted,) = [e for e in pb.events if e.kind == "dicom.association.aborted"]
    assert "(dimse.dataset-identifier)" in aborted.details["reason"], aborted.details
    (find,) = [e for e in pb.events if e.kind == "dicom.dimse.c-find"]
    assert find.details["decision"] == "aborted"
    assert "Patient ID (0010,0020) and Study Instance UID (0020,000D) not read" in find.message
    assert "inflate-limit" in find.message and find.details["query"] == {}


# --- a C-STORE whose Patient ID the walk did not reach ---------------------------------------------

SOP = el(0x00080016, b"UI", CT_STORAGE.encode(), pad=b"\0")
INSTANCE = el(0x00080018, b"UI", b"1.2.3.5")
PATIENT = el(0x00100020, b"LO", b"PAT-DEFLATED")
STUDY_SERIES = el(0x0020000D, b"UI", b"1.2.3.7") + el(0x0020000E, b"UI", b"1.2.3.8")


def ct(before_patient: bytes) -> bytes:
    """A CT data set (Explicit VR LE) with *before_patient* (group 0009) between its UIDs and its patient."""
    return SOP + INSTANCE + before_patient + PATIENT + STUDY_SERIES


def store_command() -> dimse.CommandSet:
    return dimse.CommandSet(dimse.C_STORE_RQ, message_id=9, affected_sop_class_uid=CT_STORAGE,
                            affected_sop_instance_uid="1.2.3.5", priority=0, command_data_set_type=0x0000)


def store(dataset: bytes, transfer_syntax: str, **play_kw: object) -> Playbook:
    context = (1, CT_STORAGE, transfer_syntax)
    message = request(store_command(), dataset)

    async def scenario(pb: Playbook) -> None:
        await associate(pb, context)
        await pb.client(message)
        if pb.to_upstream()[-1] != Seen("A-ABORT", (2,)):
            await pb.upstream(response(message))

    return play(route_config(), scenario, **play_kw)  # type: ignore[arg-type]


def zeros(n: int) -> bytes:
    return el(0x00091010, b"OB", b"\0" * n, pad=b"\0")


def test_a_deflated_c_store_with_its_patient_past_256_kib_inflated_is_aborted_and_says_why() -> None:
    """The issue's repro in memory: 400 KiB of zeros (a few hundred bytes deflated) before the patient."""
    pb = store(deflate(ct(zeros(400 * 1024))), DEFLATED)
    assert pb.to_client() == [Seen("A-ABORT", (2,))]
    (aborted,) = [e for e in pb.events if e.kind == "dicom.association.aborted"]
    reason = aborted.details["reason"]
    assert "Patient ID (0010,0020) cannot be read" in reason and "(dimse.dataset-patient)" in reason, reason
    assert f"byte {PEEK_INFLATE_LIMIT:,} inflated (inflate-limit" in reason and "256 KiB" in reason, reason
    (record,) = [e for e in pb.events if e.kind == "dicom.dimse.c-store"]
    assert record.details["decision"] == "aborted" and record.patient_ids == ()
    assert "Patient ID (0010,0020) and Study Instance UID (0020,000D) not read" in record.message
    assert "inflate-limit" in record.message, record.message


def test_the_same_object_with_its_patient_within_reach_passes_and_is_recorded() -> None:
    for dataset, ts in ((deflate(ct(zeros(200 * 1024))), DEFLATED), (ct(zeros(400 * 1024)), EXPLICIT)):
        pb = store(dataset, ts)
        assert "dicom.association.aborted" not in pb.kinds()
        (record,) = [e for e in pb.events if e.kind == "dicom.dimse.c-store"]
        assert record.patient_ids == ("PAT-DEFLATED",) and record.study_uids == ("1.2.3.7",)
        assert record.message == "C-STORE status 0x0000" and "decision" not in record.details


def nested(depth: int) -> bytes:
    """*depth* nested undefined-length sequences and items (PS3.5 7.5), explicit VR."""
    seq = struct.pack("<HH2sHI", 0x0009, 0x1020, b"SQ", 0, 0xFFFFFFFF)
    item, item_end = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF), struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    seq_end = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return (seq + item) * depth + (item_end + seq_end) * depth


@pytest.mark.parametrize(("name", "dataset", "why"), [
    ("nesting", ct(nested(200)), "(nesting-too-deep)"),
    ("cut", SOP + INSTANCE + el(0x00091010, b"OB", b"\0" * 64)[:-10], "the data set ended"),
])
def test_any_walk_stopped_before_the_patient_aborts_the_c_store(name: str, dataset: bytes, why: str) -> None:
    """The same decision for every limit: the SOP class was read, the patient was not."""
    pb = store(dataset, EXPLICIT)
    assert pb.to_client() == [Seen("A-ABORT", (2,))]
    (aborted,) = [e for e in pb.events if e.kind == "dicom.association.aborted"]
    assert "(dimse.dataset-patient)" in aborted.details["reason"] and why in aborted.details["reason"]


def test_an_object_without_a_patient_id_passes_its_walk_read_it_all() -> None:
    """Patient ID is Type 2 (PS3.3 C.7.1.1): an object whose walk got past (0020,000E) without one has
    none, and the record says nothing is missing."""
    pb = store(SOP + INSTANCE + STUDY_SERIES, EXPLICIT)
    assert "dicom.association.aborted" not in pb.kinds()
    (record,) = [e for e in pb.events if e.kind == "dicom.dimse.c-store"]
    assert record.patient_ids == () and record.message == "C-STORE status 0x0000"


def test_the_inline_ids_alerts_on_a_deflated_data_set_walked_to_the_limit() -> None:
    """The built-in rule dicom-dataset-walk-stopped, with the real engine: anomaly=inflate-limit."""
    from test_checks import _real_ids

    pb = store(deflate(ct(zeros(400 * 1024))), DEFLATED, engine=_real_ids())
    (alert,) = [e for e in pb.events if e.kind == "ids.alert.dicom-dataset-walk-stopped"]
    assert "anomaly=inflate-limit" in alert.message
