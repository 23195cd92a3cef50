"""Outside tester, round 4: the `services` check on normalized requests and on the data set of a
refused request. Playbook tests (docs/gateway.md, "How a route judges traffic"): the exact PDUs
each side receives and the Events recorded, in memory, as tests/gateway/test_checks.py does.

- Storage commitment is N-ACTION (Action Type ID 1) and N-EVENT-REPORT on the Storage Commitment
  Push Model context (PS3.4 J.3); an N-CREATE, N-SET, N-GET or N-DELETE there is `N-*`, refused
  0x0124 on a route that allows storage commitment only, and never reaches the PACS.
- A DIMSE-N request naming another SOP class than its context's is refused 0x0122, as DIMSE-C
  requests are; a Print Management Meta SOP Class context still carries its component classes.
- A request refused for its SOP class has its data set swallowed and its refusal answered, not
  the association aborted when that (mismatching) data set arrives.
"""

from __future__ import annotations

from typing import Any

import pytest
from gateway_under_test import route
from playbook import (
    CT_STORAGE,
    MR_STORAGE,
    VERIFICATION,
    Playbook,
    Seen,
    echo_rq,
    play,
    request,
    response,
    route_config,
)

from pacsguard.dicom import dimse
from peers.dcmtk import free_port
from peers.pynetdicom_reactor import quiet_reactor

COMMITMENT = "1.2.840.10008.1.20.1"
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
AVAILABILITY = "1.2.840.10008.5.1.4.33"  # Instance Availability Notification SOP Class
GRAYSCALE_PRINT_META = "1.2.840.10008.5.1.1.9"
FILM_SESSION = "1.2.840.10008.5.1.1.1"
ONLY_COMMITMENT = {"services": ["C-ECHO", "storage-commitment"]}
#: (0008,1195) Transaction UID, Implicit VR Little Endian: the gist of a commitment request's data set.
TRANSACTION = b"\x08\x00\x95\x11\x06\x00\x00\x001.2.3\0"


def n_request(field: int, *, sop: str = COMMITMENT, dataset: bytes | None = None, **kw: int) -> bytes:
    """A DIMSE-N request naming *sop* where PS3.7 10.3 puts it (Affected for N-CREATE and
    N-EVENT-REPORT, Requested for the others)."""
    named = ({"affected_sop_class_uid": sop} if field in (dimse.N_CREATE_RQ, dimse.N_EVENT_REPORT_RQ)
             else {"requested_sop_class_uid": sop, "requested_sop_instance_uid": COMMITMENT_INSTANCE})
    command = dimse.CommandSet(field, message_id=3, command_data_set_type=0x0101 if dataset is None else 0,
                               **named, **kw)  # type: ignore[arg-type]
    return request(command, dataset)


NOT_COMMITMENT = [
    ("n-create", n_request(dimse.N_CREATE_RQ), "N-CREATE-RSP"),
    ("n-set", n_request(dimse.N_SET_RQ, dataset=TRANSACTION), "N-SET-RSP"),
    ("n-get", n_request(dimse.N_GET_RQ), "N-GET-RSP"),
    ("n-delete", n_request(dimse.N_DELETE_RQ), "N-DELETE-RSP"),
    ("n-action-type-2", n_request(dimse.N_ACTION_RQ, dataset=TRANSACTION, action_type_id=2), "N-ACTION-RSP"),
]


@pytest.mark.parametrize(("name", "rq", "rsp"), NOT_COMMITMENT, ids=[c[0] for c in NOT_COMMITMENT])
def test_other_n_requests_on_the_commitment_context_are_refused_with_0124(name: str, rq: bytes, rsp: str) -> None:
    """The outside tester's N-CREATE, N-SET, N-GET and N-DELETE on the Storage Commitment context
    reached the PACS of a route allowing [C-ECHO, storage-commitment]."""
    async def scenario(pb: Playbook) -> None:
        await pb.associate(COMMITMENT)
        await pb.client(rq)
        assert pb.to_upstream() == []
        assert pb.to_client() == [Seen("P-DATA-TF", ((rsp, dimse.STATUS_NOT_AUTHORIZED),))]

    pb = play(route_config(policy=ONLY_COMMITMENT), scenario)
    refused = [e for e in pb.events if e.details.get("decision") == "refused"]
    assert [e.details["rule"] for e in refused] == ["policy.services"]
    assert "(service N-*)" in refused[0].message and "Storage Commitment" in refused[0].message


def test_an_n_action_of_another_sop_class_on_the_commitment_context_is_refused_with_0122() -> None:
    async def scenario(pb: Playbook) -> None:
        await pb.associate(COMMITMENT)
        await pb.client(n_request(dimse.N_ACTION_RQ, sop=AVAILABILITY, dataset=TRANSACTION, action_type_id=1))
        assert pb.to_upstream() == []
        assert pb.to_client() == [Seen("P-DATA-TF", (("N-ACTION-RSP", dimse.STATUS_SOP_CLASS_NOT_SUPPORTED),))]

    pb = play(route_config(policy=ONLY_COMMITMENT), scenario)
    (refused,) = [e for e in pb.events if e.details.get("decision") == "refused"]
    assert refused.details["rule"] == "dimse.context-sop-class"
    assert "Instance Availability Notification" in refused.message


@pytest.mark.parametrize("event_type", [1, 2])
def test_storage_commitment_itself_passes(event_type: int) -> None:
    """The request (N-ACTION, type 1) and, on an association the performer opened, its report
    (N-EVENT-REPORT, type 1 or 2) reach the other side and their responses come back."""
    action = n_request(dimse.N_ACTION_RQ, dataset=TRANSACTION, action_type_id=1)
    report = n_request(dimse.N_EVENT_REPORT_RQ, dataset=TRANSACTION, event_type_id=event_type)

    async def scenario(pb: Playbook) -> None:
        await pb.associate(COMMITMENT)
        for rq, name in ((action, "N-ACTION"), (report, "N-EVENT-REPORT")):
            await pb.client(rq)
            assert [s.fields[0][0] for s in pb.to_upstream()][:1] == [f"{name}-RQ"]
            await pb.upstream(response(rq))
            assert pb.to_client() == [Seen("P-DATA-TF", ((f"{name}-RSP", 0),))]

    pb = play(route_config(policy=ONLY_COMMITMENT), scenario)
    assert not [e for e in pb.events if e.details.get("decision") == "refused"]


def test_n_star_allows_other_n_requests_but_not_another_sop_class() -> None:
    """With `N-*` allowed an N-GET on the commitment context is that route's business; naming another
    class than the context's is still refused 0x0122 (and not by the policy's services)."""
    get = n_request(dimse.N_GET_RQ)

    async def scenario(pb: Playbook) -> None:
        await pb.associate(COMMITMENT)
        await pb.client(get)
        assert [s.fields[0][0] for s in pb.to_upstream()] == ["N-GET-RQ"]
        await pb.upstream(response(get))
        pb.to_client()
        await pb.client(n_request(dimse.N_GET_RQ, sop=AVAILABILITY))
        assert pb.to_upstream() == []
        assert pb.to_client() == [Seen("P-DATA-TF", (("N-GET-RSP", dimse.STATUS_SOP_CLASS_NOT_SUPPORTED),))]

    play(route_config(policy={"services": ["C-ECHO", "storage-commitment", "N-*"]}), scenario)


def test_a_print_meta_context_carries_its_component_classes() -> None:
    """PS3.4 Annex H: a Basic Film Session N-CREATE on the Basic Grayscale Print Management Meta
    context is how printing works; a Storage Commitment N-ACTION there is not."""
    session = n_request(dimse.N_CREATE_RQ, sop=FILM_SESSION)

    async def scenario(pb: Playbook) -> None:
        await pb.associate(GRAYSCALE_PRINT_META)
        await pb.client(session)
        assert [s.fields[0][0] for s in pb.to_upstream()] == ["N-CREATE-RQ"]
        await pb.upstream(response(session))
        pb.to_client()
        await pb.client(n_request(dimse.N_ACTION_RQ, dataset=TRANSACTION, action_type_id=1))
        assert pb.to_upstream() == []
        assert pb.to_client() == [Seen("P-DATA-TF", (("N-ACTION-RSP", dimse.STATUS_SOP_CLASS_NOT_SUPPORTED),))]

    play(route_config(policy={"services": ["N-*"]}), scenario)


def mr_dataset() -> bytes:
    mr = MR_STORAGE.encode() + b"\0" * (len(MR_STORAGE) % 2)
    return b"\x08\x00\x16\x00" + len(mr).to_bytes(4, "little") + mr + b"\x08\x00\x18\x00\x08\x00\x00\x001.2.3.5\0"


@pytest.mark.parametrize(("policy", "rule"), [({"sop_classes": ["CTImageStorage"]}, "policy.sop_classes"),
                                              ({}, "dimse.context-sop-class")], ids=["refused-class", "any-class"])
def test_a_refused_store_has_its_mismatching_data_set_swallowed_and_is_answered(policy: dict, rule: str) -> None:
    """The outside tester's MR C-STORE on the CT context was refused 0x0122 and recorded so, but
    its MR data set then aborted both legs: the modality never got the 0x0122."""
    command = dimse.CommandSet(dimse.C_STORE_RQ, message_id=9, affected_sop_class_uid=MR_STORAGE,
                               affected_sop_instance_uid="1.2.3.5", priority=0, command_data_set_type=0x0000)

    async def scenario(pb: Playbook) -> None:
        await pb.associate(CT_STORAGE, VERIFICATION)
        await pb.client(request(command, mr_dataset()))
        assert pb.to_upstream() == []
        assert pb.to_client() == [Seen("P-DATA-TF", (("C-STORE-RSP", dimse.STATUS_SOP_CLASS_NOT_SUPPORTED),))]

    pb = play(route_config(policy=policy), scenario)
    assert pb.rules("dicom.dimse.c-store") == [rule]
    assert "dicom.association.aborted" not in pb.kinds()


def test_a_store_refused_by_a_later_check_has_its_data_set_swallowed_too() -> None:
    """An MR data set under a CT command, refused by `rate` (after `services`): swallowed and answered
    0xA700, as any refused request's data set."""
    command = dimse.CommandSet(dimse.C_STORE_RQ, message_id=9, affected_sop_class_uid=CT_STORAGE,
                               affected_sop_instance_uid="1.2.3.5", priority=0, command_data_set_type=0x0000)

    echo = echo_rq(context_id=3)

    async def scenario(pb: Playbook) -> None:
        await pb.associate(CT_STORAGE, VERIFICATION)
        await pb.client(echo)  # the one request a minute the route allows
        await pb.upstream(response(echo, context_id=3))
        pb.to_upstream(), pb.to_client()
        await pb.client(request(command, mr_dataset()))
        assert pb.to_upstream() == []
        assert pb.to_client() == [Seen("P-DATA-TF", (("C-STORE-RSP", dimse.STATUS_OUT_OF_RESOURCES),))]

    pb = play(route_config(limits={"requests_per_minute": 1}, checks=["services", "rate"]), scenario)
    assert "dicom.association.aborted" not in pb.kinds()


# --- with real peers: pynetdicom on both sides of a running gateway -----------------------------------


@pytest.mark.peers
@pytest.mark.timeout(60)
def test_pynetdicom_commits_through_the_gateway_and_its_n_create_is_refused(gateway) -> None:
    """A pynetdicom SCU asks a pynetdicom SCP for storage commitment through a route allowing
    [C-ECHO, storage-commitment]: the N-ACTION is answered by the SCP, the N-CREATE and an N-ACTION
    naming another class by the gateway; the SCP sees only the commitment request."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import StorageCommitmentPushModel

    seen: list[str] = []

    def received(event: Any) -> None:
        seen.append(type(event.message).__name__)

    def commit(event: Any) -> tuple[int, None]:
        return 0x0000, None

    scp = AE(ae_title="ARCHIVE")
    scp.add_supported_context(StorageCommitmentPushModel)
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False,
                              evt_handlers=[(evt.EVT_DIMSE_RECV, received), (evt.EVT_N_ACTION, commit)])
    try:
        gw = gateway(route("main", port, upstream_ae="ARCHIVE", policy=ONLY_COMMITMENT))
        scu = AE(ae_title="CT1")
        scu.add_requested_context(StorageCommitmentPushModel)
        assoc = scu.associate("127.0.0.1", gw.port(), ae_title="PACSGUARD")
        assert assoc.is_established
        try:
            request_ds = Dataset()
            request_ds.TransactionUID = "1.2.3"
            quiet_reactor(assoc)
            status, _ = assoc.send_n_action(request_ds, 1, COMMITMENT, COMMITMENT_INSTANCE)
            assert status.Status == 0x0000
            quiet_reactor(assoc)
            status, _ = assoc.send_n_create(None, COMMITMENT, "1.2.3.4")
            assert status.Status == dimse.STATUS_NOT_AUTHORIZED
            quiet_reactor(assoc)
            status, _ = assoc.send_n_get([0x00081195], COMMITMENT, COMMITMENT_INSTANCE)
            assert status.Status == dimse.STATUS_NOT_AUTHORIZED
        finally:
            assoc.release()
            scu.shutdown()
    finally:
        server.shutdown()
    assert seen == ["N_ACTION_RQ"]
    refused = gw.events("dicom.dimse.*")
    assert sorted(e.details.get("rule", "") for e in refused if e.details.get("decision") == "refused") == [
        "policy.services", "policy.services"]


@pytest.mark.parametrize("uid", ["1.2.840.10008.5.1.1.27", "1.2.840.10008.5.1.1.29", "1.2.840.10008.5.1.1.30"],
                         ids=["stored-print", "hardcopy-grayscale", "hardcopy-color"])
def test_retired_print_storage_classes_are_storage(uid: str) -> None:
    """Stored Print and Hardcopy Grayscale/Color Image Storage (retired, PS3.4 B.5) are Storage SOP
    Classes, accepted by the default policy as storescp accepts them; pydicom names them "... Storage
    SOP Class", which read as no storage class and fell to N-* (refused by default)."""
    from pacsguard.gateway.checks.services import service_of_abstract_syntax

    assert service_of_abstract_syntax(uid) == "C-STORE"
