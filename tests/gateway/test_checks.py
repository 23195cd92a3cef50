"""Playbook tests of every check of a route (docs/gateway.md, "How a route judges traffic"): the
exact PDUs each side receives and the Events recorded, in memory, without sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from playbook import (
    CT_STORAGE,
    IMPLICIT_LE,
    MAX_PDU,
    MR_STORAGE,
    STUDY_MOVE,
    VERIFICATION,
    FakeEngine,
    Playbook,
    Seen,
    associate_ac,
    associate_rq,
    echo_rq,
    play,
    request,
    response,
    route_config,
)
from pydantic import ValidationError

from pacsguard.config.loader import problem_from_pydantic
from pacsguard.config.schema import CHECK_NAMES
from pacsguard.dicom import dimse
from pacsguard.dicom import pdu as P
from pacsguard.events import Outcome
from pacsguard.gateway.check import Check
from pacsguard.gateway.checks import FACTORIES
from pacsguard.gateway.quarantine import QuarantinePolicy, change_event

RJ = "A-ASSOCIATE-RJ"
USER_NO_REASON = (1, 1, 1)
LIMIT = (2, 3, 2)


def store_rq(message_id: int = 7) -> bytes:
    command = dimse.CommandSet(dimse.C_STORE_RQ, message_id=message_id, affected_sop_class_uid=CT_STORAGE,
                               affected_sop_instance_uid="1.2.3.4", priority=0, command_data_set_type=0x0000)
    # 64 bytes: Image Type (0008,0008) and the CT SOP Class UID (0008,0016), which a C-STORE's data set
    # must carry (PS3.3 C.12.1) to pass a relayed route
    return request(command, b"\x08\x00\x08\x00\x16\x00\x00\x00ORIGINAL\\PRIMARY\\AXIAL"
                            b"\x08\x00\x16\x00\x1a\x00\x00\x001.2.840.10008.5.1.4.1.1.2\0")


def move_rq(destination: str) -> bytes:
    command = dimse.CommandSet(dimse.C_MOVE_RQ, message_id=5, affected_sop_class_uid=STUDY_MOVE, priority=0,
                               move_destination=destination, command_data_set_type=0x0001)
    return request(command, b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")


async def rq_from(pb: Playbook, calling: str = "WS1", called: str = "PACSGUARD") -> None:
    await pb.client(associate_rq(calling, called))


def refused_by(pb: Playbook) -> tuple[list[Seen], list[Seen], list[Any]]:
    return pb.to_client(), pb.to_upstream(), pb.rules("dicom.association.rejected")


# --- association checks ---------------------------------------------------------------------------


def test_an_allowed_rq_reaches_the_upstream_and_the_ac_the_client():
    async def scenario(pb: Playbook) -> None:
        await rq_from(pb)
        assert pb.to_upstream() == [Seen("A-ASSOCIATE-RQ", ("WS1", "PACS"))]
        await pb.upstream(associate_ac())
        assert pb.to_client() == [Seen("A-ASSOCIATE-AC", ((1, 0),))]

    pb = play(route_config(policy={"hosts": ["127.0.0.0/8"], "calling_ae_titles": ["WS1"]}), scenario)
    assert pb.kinds()[:2] == ["dicom.association.requested", "dicom.association.accepted"]


@pytest.mark.parametrize("policy, calling, called, rj, rule", [
    ({"hosts": ["10.0.0.0/8"]}, "WS1", "PACSGUARD", USER_NO_REASON, "policy.hosts"),
    ({}, "WS1", "OTHER", (1, 1, 7), "listen.ae_title"),
    ({"calling_ae_titles": ["CT1"]}, "WS1", "PACSGUARD", (1, 1, 3), "policy.calling_ae_titles"),
    ({"cert_subjects": ["CN=modality"]}, "WS1", "PACSGUARD", USER_NO_REASON, "policy.cert_subjects"),
])
def test_association_refusals_answer_with_their_rj(policy, calling, called, rj, rule):
    async def scenario(pb: Playbook) -> None:
        await rq_from(pb, calling, called)
        to_client, to_upstream, rules = refused_by(pb)
        assert to_client == [Seen(RJ, rj)] and to_upstream == [] and rules == [rule]

    play(route_config(policy=policy), scenario)


def test_quarantine_is_refused_for_quarantine_even_if_also_outside_hosts():
    pb = Playbook(route_config(policy={"hosts": ["10.0.0.0/8"]}))
    pb.quarantined.apply(change_event("add", "127.0.0.1", reason="worm"))

    async def run() -> None:
        pb.connect()
        await rq_from(pb)
        to_client, to_upstream, rules = refused_by(pb)
        assert to_client == [Seen(RJ, USER_NO_REASON)] and to_upstream == [] and rules == ["quarantine"]
        assert "worm" in pb.events[-1].details["reason"]

    asyncio.run(run())


def test_a_custom_order_changes_which_rule_is_named():
    pb = Playbook(route_config(policy={"hosts": ["10.0.0.0/8"]}, checks=["hosts", "quarantine"]))
    pb.quarantined.apply(change_event("add", "WS1"))

    async def run() -> None:
        pb.connect()
        await rq_from(pb)
        assert refused_by(pb)[2] == ["policy.hosts"]

    asyncio.run(run())


def test_a_check_left_out_of_the_list_is_not_applied():
    async def scenario(pb: Playbook) -> None:
        await rq_from(pb, "ANYONE")
        assert pb.to_upstream() == [Seen("A-ASSOCIATE-RQ", ("ANYONE", "PACS"))]

    play(route_config(policy={"calling_ae_titles": ["CT1"]}, checks=["hosts", "limits"]), scenario)


def test_limits_per_source_and_per_route_until_an_association_closes():
    pb = Playbook(route_config(limits={"max_associations": 2, "max_associations_per_source": 1}))

    async def run() -> None:
        first = pb.connect(40001)
        await rq_from(pb)
        assert pb.to_upstream() == [Seen("A-ASSOCIATE-RQ", ("WS1", "PACS"))]
        pb.connect(40002)
        await rq_from(pb)
        assert pb.to_client() == [Seen(RJ, LIMIT)] and pb.to_upstream() == []
        pb.host = "127.0.0.2"
        pb.connect(40003)
        await rq_from(pb)
        assert pb.to_upstream() == [Seen("A-ASSOCIATE-RQ", ("WS1", "PACS"))]
        pb.host = "127.0.0.3"
        pb.connect(40004)
        await rq_from(pb)
        assert pb.to_client() == [Seen(RJ, LIMIT)]
        first.close()  # its place is free again
        pb.connect(40005)
        await rq_from(pb)
        assert pb.to_upstream() == [Seen("A-ASSOCIATE-RQ", ("WS1", "PACS"))]
        pb.close()

    asyncio.run(run())
    assert pb.rules("dicom.association.rejected") == ["limits.max_associations_per_source",
                                                      "limits.max_associations"]


# --- services: contexts, requests, C-MOVE destinations ----------------------------------------------


def test_contexts_the_policy_does_not_allow_are_user_rejected_in_the_ac():
    async def scenario(pb: Playbook) -> None:
        await pb.client(associate_rq("WS1", "PACSGUARD", VERIFICATION, CT_STORAGE, MR_STORAGE))
        pb.to_upstream()
        await pb.upstream(associate_ac(0, 0, 0))
        assert pb.to_client() == [Seen("A-ASSOCIATE-AC", ((1, 0), (3, 0), (5, P.PC_USER_REJECTION)))]

    pb = play(route_config(policy={"sop_classes": ["CTImageStorage"]}), scenario)
    accepted = [e for e in pb.events if e.kind == "dicom.association.accepted"][0]
    assert accepted.details["refused_by_policy"] == [MR_STORAGE]


def test_a_service_not_allowed_is_refused_with_0124_and_its_data_set_swallowed():
    async def scenario(pb: Playbook) -> None:
        # C-GET allows storage contexts whose SCP role the client offers (its sub-operations,
        # PS3.7 D.3.3.4), not a C-STORE from the client on them.
        contexts = [P.PresentationContextRQ(1, CT_STORAGE, [IMPLICIT_LE]),
                    P.PresentationContextRQ(3, VERIFICATION, [IMPLICIT_LE])]
        info = P.UserInformation.build(max_length=MAX_PDU, implementation_class_uid="1.2.3",
                                       role_selections=[P.RoleSelection(CT_STORAGE, 1, 1)])
        await pb.client(P.encode_associate_rq(P.AssociateRQ(called_ae_title="PACSGUARD", calling_ae_title="WS1",
                                                            presentation_contexts=contexts, user_information=info)))
        await pb.upstream(associate_ac(P.PC_ACCEPTANCE, P.PC_ACCEPTANCE))
        pb.to_client(), pb.to_upstream()
        await pb.client(store_rq())
        assert pb.to_upstream() == []
        assert pb.to_client() == [Seen("P-DATA-TF", (("C-STORE-RSP", dimse.STATUS_NOT_AUTHORIZED),))]
        await pb.client(echo_rq(8, context_id=3))  # the association goes on
        assert pb.to_upstream() == [Seen("P-DATA-TF", (("C-ECHO-RQ", None),))]

    pb = play(route_config(policy={"services": ["C-ECHO", "C-GET"]}, checks=["services"]), scenario)
    assert pb.rules("dicom.dimse.c-store") == ["policy.services"]


def test_an_allowed_store_is_forwarded_and_its_response_returned():
    async def scenario(pb: Playbook) -> None:
        await pb.associate(CT_STORAGE)
        rq = store_rq()
        await pb.client(rq)
        assert pb.to_upstream() == [Seen("P-DATA-TF", (("C-STORE-RQ", None),)), Seen("P-DATA-TF", (("data", 64),))]
        await pb.upstream(response(rq))
        assert pb.to_client() == [Seen("P-DATA-TF", (("C-STORE-RSP", 0),))]

    pb = play(route_config(), scenario)
    assert [e.outcome for e in pb.events if e.kind == "dicom.dimse.c-store"] == [Outcome.SUCCESS]


@pytest.mark.parametrize("destination, forwarded", [("WORKSTATION", True), ("EVIL", False)])
def test_c_move_destination(destination, forwarded):
    async def scenario(pb: Playbook) -> None:
        await pb.associate(STUDY_MOVE)
        await pb.client(move_rq(destination))
        if forwarded:
            assert pb.to_upstream()[0] == Seen("P-DATA-TF", (("C-MOVE-RQ", None),)) and pb.to_client() == []
        else:
            assert pb.to_upstream() == []
            assert pb.to_client() == [Seen("P-DATA-TF", (("C-MOVE-RSP", dimse.STATUS_MOVE_DESTINATION_UNKNOWN),))]

    pb = play(route_config(policy={"move_destinations": ["WORKSTATION"]}), scenario)
    assert pb.rules("dicom.dimse.c-move") == ([] if forwarded else ["policy.move_destinations"])


def test_rate_limit_refuses_requests_over_the_limit_with_a700():
    async def scenario(pb: Playbook) -> None:
        await pb.associate()
        await pb.client(echo_rq(1), echo_rq(2))
        assert pb.to_upstream() == [Seen("P-DATA-TF", (("C-ECHO-RQ", None),))] * 2
        await pb.client(echo_rq(3))
        assert pb.to_upstream() == []
        assert pb.to_client() == [Seen("P-DATA-TF", (("C-ECHO-RSP", dimse.STATUS_OUT_OF_RESOURCES),))]

    pb = play(route_config(limits={"requests_per_minute": 2}), scenario)
    assert pb.rules("dicom.dimse.c-echo") == ["limits.requests_per_minute"]


# --- the inline IPS -------------------------------------------------------------------------------


def test_ids_alert_passes_and_is_recorded():
    engine = FakeEngine(on="AssociationRequested", action="alert")

    async def scenario(pb: Playbook) -> None:
        await rq_from(pb)
        assert pb.to_upstream() == [Seen("A-ASSOCIATE-RQ", ("WS1", "PACS"))]

    pb = play(route_config(), scenario, engine=engine)
    assert "ids.alert.test-rule" in pb.kinds() and engine.observed[-1] == "flow-closed"


def test_ids_sees_the_rq_the_policy_refuses():
    engine = FakeEngine(on="AssociationRequested", action="drop")

    async def scenario(pb: Playbook) -> None:
        await rq_from(pb, "INTRUDER")
        assert refused_by(pb)[2] == ["policy.calling_ae_titles"]

    pb = play(route_config(policy={"calling_ae_titles": ["CT1"]}), scenario, engine=engine)
    assert "ids.alert.test-rule" in pb.kinds()
    assert "rejected:calling-ae-not-recognized" in engine.observed  # the gateway's own RJ fed the rules


def test_ids_drop_on_the_rq_is_an_rj():
    async def scenario(pb: Playbook) -> None:
        await rq_from(pb)
        to_client, to_upstream, rules = refused_by(pb)
        assert to_client == [Seen(RJ, USER_NO_REASON)] and to_upstream == [] and rules == ["ids:test-rule"]

    play(route_config(), scenario, engine=FakeEngine(on="AssociationRequested", action="drop"))


def test_ids_drop_on_a_request_is_0124_and_the_pacs_never_sees_it():
    async def scenario(pb: Playbook) -> None:
        await pb.associate()
        await pb.client(echo_rq(4))
        assert pb.to_upstream() == []
        assert pb.to_client() == [Seen("P-DATA-TF", (("C-ECHO-RSP", dimse.STATUS_NOT_AUTHORIZED),))]

    pb = play(route_config(), scenario, engine=FakeEngine(on="DimseCommand", action="drop"))
    assert pb.rules("dicom.dimse.c-echo") == ["ids:test-rule"]


def test_ids_drop_on_a_data_set_lets_it_pass():
    """Inside P-DATA a drop has only a request to refuse; the data set's command has passed."""
    async def scenario(pb: Playbook) -> None:
        await pb.associate(CT_STORAGE)
        await pb.client(store_rq())
        assert [s.name for s in pb.to_upstream()] == ["P-DATA-TF", "P-DATA-TF"] and pb.to_client() == []

    pb = play(route_config(), scenario, engine=FakeEngine(on="DimseDatasetStart", action="drop"))
    assert "ids.alert.test-rule" in pb.kinds()


def test_ids_drop_outside_p_data_ends_the_association():
    async def scenario(pb: Playbook) -> None:
        await rq_from(pb)
        await pb.upstream(associate_ac())
        assert pb.to_client() == [Seen("A-ABORT", (2,))]
        assert pb.to_upstream()[-1] == Seen("A-ABORT", (2,))

    pb = play(route_config(), scenario, engine=FakeEngine(on="AssociationAccepted", action="drop"))
    aborted = [e for e in pb.events if e.kind == "dicom.association.aborted"]
    assert aborted[0].details["cause"] == "ids"


def test_ids_abort_on_a_request_aborts_both_legs():
    async def scenario(pb: Playbook) -> None:
        await pb.associate()
        await pb.client(echo_rq(4))
        assert pb.to_upstream() == [Seen("A-ABORT", (2,))]
        assert pb.to_client() == [Seen("A-ABORT", (2,))]

    pb = play(route_config(), scenario, engine=FakeEngine(on="DimseCommand", action="abort"))
    assert "dicom.dimse.c-echo" not in pb.kinds()  # never tracked: it did not pass


def test_ids_quarantine_quarantines_the_source_and_cuts_it_off():
    async def scenario(pb: Playbook) -> None:
        await pb.associate()
        await pb.client(echo_rq(4))
        assert pb.to_upstream() == [Seen("A-ABORT", (2,))]
        assert pb.to_client() == [Seen("A-ABORT", (2,))]
        pb.connect(40001)
        await rq_from(pb)
        assert refused_by(pb)[2] == ["quarantine"]

    # Whole-host quarantine is a deliberate setting (gateway.quarantine_scope: host).
    pb = play(route_config(), scenario, engine=FakeEngine(on="DimseCommand", action="quarantine"),
              quarantine_policy=QuarantinePolicy(scope="host"))
    added = [e for e in pb.events if e.kind == "gateway.quarantine.added"]
    assert added[0].details["target"] == "127.0.0.1" and added[0].component == "ids"


# --- configuration ---------------------------------------------------------------------------------


def test_the_default_order_is_today_s():
    assert route_config().checks == ["quarantine", "hosts", "ae-titles", "limits", "services", "rate", "ids"]
    assert set(FACTORIES) == set(CHECK_NAMES)
    assert all(issubclass(type(c), Check) for c in Playbook(route_config()).checks.checks)


@pytest.mark.parametrize("checks, key, words", [
    (["hosts", "services", "firewall"], "checks.2", ["'quarantine'", "'ids'", "firewall"]),
    (["hosts", "rate", "hosts"], "checks", ["checks[2]", "listed twice", "quarantine, hosts"]),
])
def test_an_unknown_or_repeated_check_is_a_config_error(checks, key, words):
    with pytest.raises(ValidationError) as info:
        route_config(checks=checks)
    problems = [problem_from_pydantic(e) for e in info.value.errors()]
    assert [p.key for p in problems] == [key]
    assert all(w in problems[0].message for w in words)


# --- the inline IDS with the real engine: route ports, limits ---------------------------------------


def _real_ids(rules_text: str | None = None) -> Any:
    from pacsguard.ids import DicomAdapter, Engine, IdsSettings, load_rules
    from pacsguard.ids.rules import parse_rules_text

    if rules_text is None:
        rules = load_rules([])
    else:
        rules, problems = parse_rules_text(rules_text, "site.yaml")
        assert not problems, problems
    return DicomAdapter(Engine(rules, IdsSettings()))


def test_ids_route_ports_are_dicom_ports() -> None:
    """A route on non-standard ports (listen 14104, upstream 14105): no dicom-unexpected-port alert."""
    from pacsguard.ids import Flow

    ids = _real_ids()
    route = route_config(listen={"host": "127.0.0.1", "port": 14104, "ae_title": "PACSGUARD"},
                         upstream={"host": "127.0.0.1", "port": 14105, "ae_title": "PACS"})

    async def scenario(pb: Playbook) -> None:
        await rq_from(pb)
        assert pb.to_upstream() == [Seen("A-ASSOCIATE-RQ", ("WS1", "PACS"))]

    pb = play(route, scenario, engine=ids)
    assert "ids.alert.dicom-unexpected-port" not in pb.kinds()
    assert {14104, 14105} <= set(ids.engine.setting_values("dicom_ports"))
    # any other port is still unexpected for the same engine
    flow = Flow("127.0.0.1", 40000, "127.0.0.1", 14999, sensor="inline", id="other")
    alerts = ids.observe(flow, pb_rq_event())
    assert "dicom-unexpected-port" in {a.rule_id for a in alerts}


def pb_rq_event() -> Any:
    from pacsguard.dicom import AssociationDecoder

    (ev,) = AssociationDecoder().feed(True, associate_rq())
    return ev


LIMITED_DROP = """
- id: site-no-ws1
  title: WS1 is retired
  severity: warning
  protocol: dicom
  on: association-request
  match:
    calling_ae: WS1
  limit: {count: 1, within: 1h}
  action: drop
  reference: site policy
"""


def test_ids_limit_thins_alerts_never_enforcement() -> None:
    ids = _real_ids(LIMITED_DROP)
    pbs = []
    for _ in range(3):
        async def scenario(pb: Playbook) -> None:
            await rq_from(pb)
            assert pb.to_upstream() == []  # refused every time, written or not

        pbs.append(play(route_config(), scenario, engine=ids))
    assert [pb.kinds().count("ids.alert.site-no-ws1") for pb in pbs] == [1, 0, 0]
    assert all("dicom.association.rejected" in pb.kinds() for pb in pbs)
    (agg,) = ids.engine.flush()
    assert agg.event.details["count"] == 2


def test_ids_names_the_c_move_on_its_sub_association_record() -> None:
    """A C-MOVE relayed by one route (upstream PACS at 10.9.9.9) announces the association the PACS
    opens to the Move Destination (PS3.4 C.4.2.2): arriving on the return route from 10.9.9.9, its
    `requested` record names the C-MOVE, and no dicom-unexpected-port fires on port 11500; another
    host calling the same route is not expected."""
    ids = _real_ids()
    main = route_config(upstream={"host": "10.9.9.9", "port": 104, "ae_title": "PACS"},
                        policy={"move_destinations": ["WORKSTATION"]})

    async def move(pb: Playbook) -> None:
        await pb.associate(STUDY_MOVE)
        rq = move_rq("WORKSTATION")
        await pb.client(rq)
        assert [s.name for s in pb.to_upstream()] == ["P-DATA-TF", "P-DATA-TF"]
        await pb.upstream(response(rq))

    moved = play(main, move, engine=ids)
    (c_move,) = [e for e in moved.events if e.kind == "dicom.dimse.c-move"]

    retrieve = route_config(name="retrieve",
                            listen={"host": "127.0.0.1", "port": 11500, "ae_title": "WORKSTATION"},
                            upstream={"host": "127.0.0.1", "port": 11501, "ae_title": "WORKSTATION"})
    sub = Playbook(retrieve, engine=ids, host="10.9.9.9")
    stranger = Playbook(retrieve, engine=ids, host="10.6.6.6")
    for pb in (sub, stranger):
        async def scenario(pb: Playbook = pb) -> None:
            pb.connect()
            await pb.client(associate_rq("PACS", "WORKSTATION", CT_STORAGE))
            pb.close()

        asyncio.run(scenario())
    (requested,) = [e for e in sub.events if e.kind == "dicom.association.requested"]
    by = requested.details["expected_by"]
    assert by["message_id"] == c_move.details["message_id"] == 5
    assert by["flow"].startswith(f"unit/127.0.0.1:{c_move.actor.port}/")
    (other,) = [e for e in stranger.events if e.kind == "dicom.association.requested"]
    assert "expected_by" not in other.details
    # route ports are DICOM ports inline anyway; what the expectation changes is the record
    assert "ids.alert.dicom-unexpected-port" not in sub.kinds() + stranger.kinds()


def mr_store_rq(context_id: int) -> bytes:
    command = dimse.CommandSet(dimse.C_STORE_RQ, message_id=9, affected_sop_class_uid=MR_STORAGE,
                               affected_sop_instance_uid="1.2.3.5", priority=0, command_data_set_type=0x0000)
    return request(command, b"\x08\x00\x16\x00\x00\x00\x00\x00" * 8, context_id=context_id)


@pytest.mark.parametrize(("policy", "rule"), [({"sop_classes": ["CTImageStorage"]}, "policy.sop_classes"),
                                              ({}, "dimse.context-sop-class")], ids=["refused-class", "any-class"])
@pytest.mark.parametrize("context_id", [1, 3], ids=["ct-context", "verification-context"])
def test_a_c_store_of_another_sop_class_than_its_context_is_refused_with_0122(policy, rule, context_id):
    """An outside tester's MR image went through a route that allows only CT, on the accepted CT
    context or on the Verification one (always accepted), and reached the archive."""
    async def scenario(pb: Playbook) -> None:
        await pb.associate(CT_STORAGE, VERIFICATION)
        await pb.client(mr_store_rq(context_id))
        assert pb.to_upstream() == []
        assert pb.to_client() == [Seen("P-DATA-TF", (("C-STORE-RSP", dimse.STATUS_SOP_CLASS_NOT_SUPPORTED),))]
        await pb.client(store_rq())  # the association goes on; a CT on its context passes
        assert pb.to_upstream() == [Seen("P-DATA-TF", (("C-STORE-RQ", None),)), Seen("P-DATA-TF", (("data", 64),))]

    pb = play(route_config(policy=policy), scenario)
    assert pb.rules("dicom.dimse.c-store") == [rule]


@pytest.mark.parametrize(("policy", "rule"), [({"sop_classes": ["CTImageStorage"]}, "policy.sop_classes"),
                                              ({}, "dimse.dataset-sop-class")], ids=["refused-class", "any-class"])
def test_a_data_set_of_another_sop_class_than_its_context_aborts_a_relayed_association(policy, rule):
    """An outside tester's MR data set under a CT command, on the CT context: the command agrees
    with its context, so only the data set tells; a PACS that does not compare them stored an MR
    image on a route allowing CT only. The command is on its way upstream by then: A-ABORT."""
    mr = MR_STORAGE.encode() + b"\0" * (len(MR_STORAGE) % 2)
    dataset = b"\x08\x00\x16\x00" + len(mr).to_bytes(4, "little") + mr + b"\x08\x00\x18\x00\x08\x00\x00\x001.2.3.4\0"
    command = dimse.CommandSet(dimse.C_STORE_RQ, message_id=7, affected_sop_class_uid=CT_STORAGE,
                               affected_sop_instance_uid="1.2.3.4", priority=0, command_data_set_type=0x0000)

    async def scenario(pb: Playbook) -> None:
        await pb.associate(CT_STORAGE)
        await pb.client(request(command, dataset))
        assert pb.to_client()[-1:] == [Seen("A-ABORT", (2,))]
        assert pb.to_upstream()[-1:] == [Seen("A-ABORT", (2,))]

    pb = play(route_config(policy=policy), scenario)
    aborted = [e for e in pb.events if e.kind == "dicom.association.aborted"]
    assert aborted and "MR Image Storage" in aborted[0].details["reason"], aborted
    assert f"({rule})" in aborted[0].details["reason"]
