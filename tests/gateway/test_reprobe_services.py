"""Outside re-probe of the `services` check (playbook tests, as tests/gateway/test_outside_round4_services.py):

- A C-STORE data set whose identifier walk ends without a SOP Class UID (0008,0016) - out of order
  past (0020,000E), behind 200 nested sequences, behind the 100,000-header cap, past the 256 KiB a
  deflated data set is inflated to - or with (0008,0016) twice, is aborted on a relayed route: a
  composite instance always carries one (PS3.3 C.12.1, Type 1), and dcmtk stored an MR image so on
  a CT-only route. C-FIND identifiers, which have none, pass.
- DIMSE-N requests are judged by the SOP Class UID PS3.7 10.1 has them name (Requested for N-ACTION,
  N-GET, N-SET, N-DELETE; Affected for N-CREATE, N-EVENT-REPORT); one naming two different classes
  is refused 0x0122 (an N-ACTION requesting UPS Push under an Affected Storage Commitment passed as
  storage commitment).
"""

from __future__ import annotations

import struct
import zlib

import pytest
from playbook import (
    CT_STORAGE,
    MAX_PDU,
    MR_STORAGE,
    STUDY_FIND,
    Playbook,
    Seen,
    play,
    request,
    response,
    route_config,
)
from test_outside_round4_services import COMMITMENT, COMMITMENT_INSTANCE, ONLY_COMMITMENT, TRANSACTION, n_request

from pacsguard.dicom import dimse
from pacsguard.dicom import pdu as P
from pacsguard.events import Severity

UPS_PUSH = "1.2.840.10008.5.1.4.34.6.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
CT_ONLY = {"sop_classes": ["CTImageStorage", "StudyRootQueryRetrieveInformationModelFind"]}


def el(tag: int, value: bytes) -> bytes:
    """An Implicit VR Little Endian element (PS3.5 7.1.3), padded to even length."""
    value += b"\0" * (len(value) % 2)
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def nested(content: bytes, depth: int) -> bytes:
    """*content* inside *depth* nested undefined-length sequences and items (PS3.5 7.5)."""
    for _ in range(depth):
        content = (struct.pack("<HHI", 0x0008, 0x1140, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
                   + content + struct.pack("<HHIHHI", 0xFFFE, 0xE00D, 0, 0xFFFE, 0xE0DD, 0))
    return content


SOP, SERIES, PID = el(0x00080016, MR_STORAGE.encode()), el(0x0020000E, b"1.2.3.8"), el(0x00100020, b"PID-RE")
TAIL = el(0x00080018, b"1.2.3.5") + PID + SERIES + el(0x00200010, b"1")
CASES = [
    ("out-of-order", el(0x00080018, b"1.2.3.5") + PID + SERIES + el(0x00200010, b"1") + SOP,
     "no SOP Class UID before (0020,000E)"),
    ("repeated", SOP + el(0x00080016, CT_STORAGE.encode()) + TAIL, "(repeated-element)"),
    ("nesting", nested(b"", 200) + SOP + TAIL, "(nesting-too-deep)"),
    ("header-cap", nested(b"".join(el(0x00091010, b"") for _ in range(100_001)), 1) + SOP + TAIL,
     "(too-many-elements)"),
]


def store_command(sop_class: str = CT_STORAGE) -> dimse.CommandSet:
    return dimse.CommandSet(dimse.C_STORE_RQ, message_id=9, affected_sop_class_uid=sop_class,
                            affected_sop_instance_uid="1.2.3.5", priority=0, command_data_set_type=0x0000)


def assert_aborted(pb: Playbook, why: str) -> None:
    (store,) = [e for e in pb.events if e.kind == "dicom.dimse.c-store"]
    assert store.details["decision"] == "aborted"
    (aborted,) = [e for e in pb.events if e.kind == "dicom.association.aborted"]
    reason = aborted.details["reason"]
    assert why in reason and "PS3.3 C.12.1 (dimse.dataset-sop-class)" in reason, reason


@pytest.mark.parametrize(("name", "data", "why"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("policy", [CT_ONLY, {}], ids=["ct-only", "any-class"])
def test_a_c_store_data_set_without_a_readable_sop_class_is_aborted(name: str, data: bytes, why: str,
                                                                     policy: dict) -> None:
    async def scenario(pb: Playbook) -> None:
        await pb.associate(CT_STORAGE)
        await pb.client(request(store_command(), data))
        assert pb.to_upstream()[-1] == Seen("A-ABORT", (2,))
        assert pb.to_client() == [Seen("A-ABORT", (2,))]

    pb = play(route_config(policy=policy), scenario)
    assert_aborted(pb, why)
    if name == "out-of-order":  # what was read is recorded
        (store,) = [e for e in pb.events if e.kind == "dicom.dimse.c-store"]
        assert store.patient_ids == ("PID-RE",)


def test_a_deflated_c_store_with_its_sop_class_past_256_kib_inflated_is_aborted() -> None:
    """PS3.5 A.5: 300 KB of zeros (a few hundred bytes deflated) ahead of an MR class."""
    explicit = struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, 300_000) + b"\0" * 300_000 + b"".join(
        struct.pack("<HH2sH", t >> 16, t & 0xFFFF, b"UI", len(v)) + v
        for t, v in ((0x00080016, MR_STORAGE.encode()), (0x0020000E, b"1.2.3.8\0")))
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = packer.compress(explicit) + packer.flush()

    rq = P.encode_associate_rq(P.AssociateRQ(
        called_ae_title="PACSGUARD", calling_ae_title="WS1",
        presentation_contexts=[P.PresentationContextRQ(1, CT_STORAGE, [DEFLATED])],
        user_information=P.UserInformation.build(max_length=MAX_PDU, implementation_class_uid="1.2.3")))
    ac = P.encode_associate_ac(P.AssociateAC("PACS", "WS1", [P.PresentationContextAC(1, P.PC_ACCEPTANCE, DEFLATED)],
                                             P.UserInformation.build(max_length=MAX_PDU,
                                                                     implementation_class_uid="1.2.4")))

    async def scenario(pb: Playbook) -> None:
        await pb.client(rq)
        await pb.upstream(ac)
        pb.to_client(), pb.to_upstream()
        await pb.client(request(store_command(), deflated))
        assert pb.to_upstream()[-1] == Seen("A-ABORT", (2,))

    pb = play(route_config(policy=CT_ONLY), scenario)
    assert_aborted(pb, "256 KiB")


def test_an_ordinary_ct_and_a_c_find_identifier_without_a_sop_class_pass() -> None:
    """The control: a CT with its class in order passes, and C-FIND identifiers have no (0008,0016)."""
    store = request(store_command(), el(0x00080016, CT_STORAGE.encode()) + TAIL)
    find = request(dimse.CommandSet(dimse.C_FIND_RQ, message_id=5, affected_sop_class_uid=STUDY_FIND, priority=0,
                                    command_data_set_type=0x0000),
                   el(0x00080052, b"STUDY ") + el(0x00100010, b"DOE^JOHN") + el(0x0020000D, b""), context_id=3)

    async def scenario(pb: Playbook) -> None:
        await pb.associate(CT_STORAGE, STUDY_FIND)
        await pb.client(store)
        assert [s.name for s in pb.to_upstream()] == ["P-DATA-TF", "P-DATA-TF"]
        await pb.upstream(response(store))
        await pb.client(find)
        assert [s.name for s in pb.to_upstream()] == ["P-DATA-TF", "P-DATA-TF"]

    pb = play(route_config(policy=CT_ONLY), scenario)
    assert "dicom.association.aborted" not in pb.kinds()


# --- DIMSE-N: the SOP Class UID each request names ---------------------------------------------------------


def n_both(field: int, affected: str, requested: str, **kw: int) -> bytes:
    command = dimse.CommandSet(field, message_id=3, command_data_set_type=0, affected_sop_class_uid=affected,
                               requested_sop_class_uid=requested, requested_sop_instance_uid=COMMITMENT_INSTANCE,
                               **kw)  # type: ignore[arg-type]
    return request(command, TRANSACTION)


def refused_0122(rq: bytes, rsp: str, policy: dict) -> str:
    async def scenario(pb: Playbook) -> None:
        await pb.associate(COMMITMENT)
        await pb.client(rq)
        assert pb.to_upstream() == []
        assert pb.to_client() == [Seen("P-DATA-TF", ((rsp, dimse.STATUS_SOP_CLASS_NOT_SUPPORTED),))]

    pb = play(route_config(policy=policy), scenario)
    (refused,) = [e for e in pb.events if e.details.get("decision") == "refused"]
    assert refused.details["rule"] == "dimse.context-sop-class"
    return refused.message


def test_an_n_action_requesting_ups_push_under_an_affected_storage_commitment_is_refused() -> None:
    """The outside tester's N-ACTION (type 1): Requested UPS Push, Affected Storage Commitment."""
    message = refused_0122(n_both(dimse.N_ACTION_RQ, COMMITMENT, UPS_PUSH, action_type_id=1), "N-ACTION-RSP",
                           ONLY_COMMITMENT)
    assert "two SOP classes" in message and "Unified Procedure Step" in message


@pytest.mark.parametrize(("field", "rsp", "kw"), [
    (dimse.N_EVENT_REPORT_RQ, "N-EVENT-REPORT-RSP", {"event_type_id": 1}),
    (dimse.N_CREATE_RQ, "N-CREATE-RSP", {}),
    (dimse.N_SET_RQ, "N-SET-RSP", {}),
], ids=["n-event-report", "n-create", "n-set"])
def test_any_n_request_naming_two_classes_is_refused(field: int, rsp: str, kw: dict) -> None:
    refused_0122(n_both(field, UPS_PUSH, COMMITMENT, **kw), rsp, {"services": ["storage-commitment", "N-*"]})


def test_an_n_event_report_is_judged_by_its_affected_sop_class() -> None:
    """An N-EVENT-REPORT naming UPS Push in the field PS3.7 10.1.1.1 has it name its class (and the
    commitment class in the other, ignored one) is UPS Push's; so is an N-ACTION's Requested one."""
    report = n_request(dimse.N_EVENT_REPORT_RQ, sop=UPS_PUSH, dataset=TRANSACTION, event_type_id=1)
    assert "Unified Procedure Step" in refused_0122(report, "N-EVENT-REPORT-RSP", ONLY_COMMITMENT)
    action = request(dimse.CommandSet(dimse.N_ACTION_RQ, message_id=3, command_data_set_type=0, action_type_id=1,
                                      requested_sop_class_uid=UPS_PUSH,
                                      requested_sop_instance_uid=COMMITMENT_INSTANCE), TRANSACTION)
    assert "Unified Procedure Step" in refused_0122(action, "N-ACTION-RSP", ONLY_COMMITMENT)


def test_a_commitment_n_action_naming_its_class_in_both_fields_passes() -> None:
    action = n_both(dimse.N_ACTION_RQ, COMMITMENT, COMMITMENT, action_type_id=1)

    async def scenario(pb: Playbook) -> None:
        await pb.associate(COMMITMENT)
        await pb.client(action)
        assert [s.fields[0][0] for s in pb.to_upstream()][:1] == ["N-ACTION-RQ"]

    pb = play(route_config(policy=ONLY_COMMITMENT), scenario)
    assert not [e for e in pb.events if e.details.get("decision") == "refused"]


# --- the inline IDS: a data set whose walk stopped at a limit -------------------------------------------------


EMPTY_ITEMS = b"".join(struct.pack("<HHIHHI", 0xFFFE, 0xE000, 0xFFFFFFFF, 0xFFFE, 0xE00D, 0) for _ in range(50_001))


@pytest.mark.parametrize(("anomaly", "before"), [
    ("nesting-too-deep", nested(b"", 200)),
    ("too-many-elements", struct.pack("<HHI", 0x0008, 0x1140, 0xFFFFFFFF) + EMPTY_ITEMS
     + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)),
], ids=["nesting", "items"])
def test_a_c_find_whose_walk_stops_at_a_limit_alerts_inline(anomaly: str, before: bytes) -> None:
    """The built-in rule dicom-dataset-walk-stopped, with the real engine: the alert names the anomaly,
    and the C-FIND, whose keys the walk did not read, is aborted (round 6, rule dimse.dataset-identifier)."""
    from test_checks import _real_ids

    find = request(dimse.CommandSet(dimse.C_FIND_RQ, message_id=5, affected_sop_class_uid=STUDY_FIND, priority=0,
                                    command_data_set_type=0x0000),
                   before + el(0x00080052, b"STUDY ") + el(0x00100010, b"*") + el(0x0020000D, b""))

    async def scenario(pb: Playbook) -> None:
        await pb.associate(STUDY_FIND)
        await pb.client(find)
        assert pb.to_client() == [Seen("A-ABORT", (2,))]

    pb = play(route_config(), scenario, engine=_real_ids())
    (alert,) = [e for e in pb.events if e.kind == "ids.alert.dicom-dataset-walk-stopped"]
    assert f"anomaly={anomaly}" in alert.message and alert.severity == Severity.WARNING
    (aborted,) = [e for e in pb.events if e.kind == "dicom.association.aborted"]
    assert "(dimse.dataset-identifier)" in aborted.details["reason"] and f"({anomaly})" in aborted.details["reason"]
