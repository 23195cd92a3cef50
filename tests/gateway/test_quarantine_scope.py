"""Safer quarantine defaults (issue #16, section 4): an inline rule that quarantines takes only the
(calling AE title, host) pair it caught, never a host listed in gateway.admin_hosts; a whole host only
with gateway.quarantine_scope: host. A refusal caused by quarantine says so: in the A-ASSOCIATE-RJ's
reason (PS3.8 Table 9-21) and in the event."""

from __future__ import annotations

from datetime import timedelta
from ipaddress import ip_network

import pytest
from playbook import FakeEngine, Playbook, Seen, associate_rq, echo_rq, play, route_config
from pydantic import ValidationError

from pacsguard.config.schema import GatewayConfig
from pacsguard.dicom import pdu as P
from pacsguard.gateway import quarantine as q
from pacsguard.gateway.checks.quarantine import quarantine_rj

RJ_PAIR_FOR_A_WHILE = (P.RJ_RESULT_TRANSIENT, P.RJ_SOURCE_SERVICE_USER, P.RJ_REASON_USER_CALLING_AE_NOT_RECOGNIZED)


def _caught(pb: Playbook) -> list[str]:
    return [str(e.details["target"]) for e in pb.events if e.kind == q.ADDED]


def test_by_default_only_the_pair_is_quarantined_and_says_so() -> None:
    async def scenario(pb: Playbook) -> None:
        await pb.associate(calling="CT1")
        await pb.client(echo_rq(4))  # the rule fires: quarantine
        assert pb.to_client() == [Seen("A-ABORT", (2,))]
        pb.connect(40001)
        await pb.client(associate_rq("CT1"))  # the caught pair: refused, saying why
        assert pb.to_client() == [Seen("A-ASSOCIATE-RJ", RJ_PAIR_FOR_A_WHILE)]
        pb.connect(40002)
        await pb.client(associate_rq("MR1"))  # another AE title on the same host: not affected
        assert pb.to_upstream() == [Seen("A-ASSOCIATE-RQ", ("MR1", "PACS"))]

    pb = play(route_config(), scenario, engine=FakeEngine(on="DimseCommand", action="quarantine"))
    assert _caught(pb) == ["CT1@127.0.0.1"]
    added = next(e for e in pb.events if e.kind == q.ADDED)
    assert (added.target.ae_title, added.target.host) == ("CT1", "127.0.0.1")
    (rejected,) = [e for e in pb.events if e.kind == "dicom.association.rejected"]
    assert rejected.details["rule"] == "quarantine"
    assert rejected.details["reason"].startswith("quarantined: CT1@127.0.0.1 until ")
    assert (rejected.details["result"], rejected.details["reason_code"]) == (P.RJ_RESULT_TRANSIENT, 3)


def test_an_admin_host_is_never_quarantined_but_still_refused() -> None:
    async def scenario(pb: Playbook) -> None:
        await pb.associate(calling="ADMINWS")
        await pb.client(echo_rq(4))
        assert pb.to_client() == [Seen("A-ABORT", (2,))]  # the rule still acts on this association
        pb.connect(40001)
        await pb.client(associate_rq("ADMINWS"))
        assert pb.to_upstream() == [Seen("A-ASSOCIATE-RQ", ("ADMINWS", "PACS"))]

    policy = q.QuarantinePolicy("host", (ip_network("127.0.0.0/8"),))
    pb = play(route_config(), scenario, engine=FakeEngine(on="DimseCommand", action="quarantine"),
              quarantine_policy=policy)
    assert _caught(pb) == []
    assert "ids.alert.test-rule" in pb.kinds()  # the alert is recorded all the same
    (spared,) = [e for e in pb.events if e.kind == q.SPARED]
    assert spared.details["why"] == "127.0.0.1 is listed in gateway.admin_hosts"
    assert spared.actor.ae_title == "ADMINWS" and spared.details["reason"].startswith("IDS rule test-rule")


def test_pair_scope_quarantines_nothing_without_a_calling_ae_title() -> None:
    policy = q.QuarantinePolicy()
    assert policy.target("10.1.2.3", None) == (None, "no calling AE title is known on this connection from "
                                                     "10.1.2.3, and gateway.quarantine_scope is pair")
    assert policy.target("10.1.2.3", "CT1") == ("CT1@10.1.2.3", "")
    assert q.QuarantinePolicy("host").target("10.1.2.3", "CT1") == ("10.1.2.3", "")
    assert q.QuarantinePolicy("host").target("not-an-address", "CT1")[0] is None


def test_pairs_match_only_their_own_ae_title_and_host() -> None:
    quarantined = q.QuarantineList()
    quarantined.apply(q.change_event("add", "CT@1@10.0.0.5", duration=timedelta(minutes=5)))
    assert q.split_pair("CT@1@10.0.0.5") == ("CT@1", "10.0.0.5")
    assert q.split_pair("CT@1") is None and q.split_pair("10.0.0.5") is None
    assert quarantined.match("10.0.0.5", "CT@1") is not None
    assert quarantined.match("10.0.0.6", "CT@1") is None
    assert quarantined.match("10.0.0.5", "MR1") is None
    assert quarantined.match("10.0.0.5", None) is None


@pytest.mark.parametrize("target, until, rj", [
    ("10.0.0.5", None, (P.RJ_RESULT_PERMANENT, P.RJ_SOURCE_SERVICE_USER, P.RJ_REASON_USER_NO_REASON)),
    ("10.0.0.5", timedelta(minutes=1), (P.RJ_RESULT_TRANSIENT, P.RJ_SOURCE_SERVICE_USER, P.RJ_REASON_USER_NO_REASON)),
    ("CT1", None, (P.RJ_RESULT_PERMANENT, P.RJ_SOURCE_SERVICE_USER, P.RJ_REASON_USER_CALLING_AE_NOT_RECOGNIZED)),
    ("CT1@10.0.0.5", timedelta(minutes=1), RJ_PAIR_FOR_A_WHILE),
])
def test_the_rj_of_each_kind_of_quarantine(target: str, until: timedelta | None, rj: tuple[int, int, int]) -> None:
    quarantined = q.QuarantineList()
    quarantined.apply(q.change_event("add", target, duration=until))
    (entry,) = quarantined.active()
    assert quarantine_rj(entry) == rj


def test_configuration_of_scope_and_admin_hosts() -> None:
    config = GatewayConfig.model_validate({"admin_hosts": ["10.9.0.0/24", "192.168.1.7"]})
    assert config.quarantine_scope == "pair"
    assert [str(n) for n in config.admin_hosts] == ["10.9.0.0/24", "192.168.1.7/32"]
    with pytest.raises(ValidationError):
        GatewayConfig.model_validate({"quarantine_scope": "network"})
    with pytest.raises(ValidationError, match="expected an IP address or CIDR"):
        GatewayConfig.model_validate({"admin_hosts": ["admin-pc"]})
