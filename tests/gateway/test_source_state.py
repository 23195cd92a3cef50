"""Per-source state in the gateway is bounded (issue #16, section 3): a flood of distinct source
addresses keeps every table at its cap, as the IDS's own (docs/ids.md, "Bounded state")."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace
from typing import Any

from playbook import Playbook, associate_rq, play, route_config

from pacsguard.dicom import dimse
from pacsguard.gateway import quarantine as q
from pacsguard.gateway.checks.ids import IdsCheck
from pacsguard.gateway.checks.rate import RateCheck
from pacsguard.ids import DicomAdapter, Engine, IdsSettings, load_rules


def _request(check: RateCheck, host: str) -> int | None:
    verdict = check.on_request(SimpleNamespace(host=host), None, None)  # type: ignore[arg-type]
    return verdict.status


def test_rate_windows_stay_at_the_cap_under_a_flood_of_sources() -> None:
    check = RateCheck(route_config(limits={"requests_per_minute": 2}), max_hosts=100)
    for i in range(5000):
        _request(check, f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}")
        assert len(check.windows) <= 100
    assert len(check.windows) == 100 and check.windows.evicted == 4900
    # A host that stays active is still limited: its window is the most recently used.
    assert [_request(check, "192.0.2.1") for _ in range(3)] == [None, None, dimse.STATUS_OUT_OF_RESOURCES]
    for i in range(50):
        _request(check, f"10.200.0.{i}")
    assert _request(check, "192.0.2.1") == dimse.STATUS_OUT_OF_RESOURCES


def test_expired_quarantine_entries_are_dropped_as_new_ones_arrive() -> None:
    quarantined = q.QuarantineList()
    for i in range(10 * q.PRUNE_AT):
        quarantined.apply(q.change_event("add", f"AE{i}@10.0.{i >> 8}.{i & 255}", duration=timedelta(seconds=-1)))
        assert len(quarantined) <= q.PRUNE_AT + 1
    quarantined.apply(q.change_event("add", "CT1@10.9.9.9", duration=timedelta(minutes=5)))
    assert quarantined.match("10.9.9.9", "CT1") is not None
    assert [e.target for e in quarantined.active()] == ["CT1@10.9.9.9"]


def test_a_flood_through_the_whole_chain_keeps_every_table_bounded() -> None:
    """2,000 sources, each rejected for its AE titles (feeding the IDS's per-host thresholds): the
    live-association tables are empty once the connections close, the IDS engine holds at most its
    caps, and the relays are all gone."""
    settings = IdsSettings(max_tracked_sources=64, max_tracked_flows=64)
    engine = Engine(load_rules([]), settings)
    adapter = DicomAdapter(engine)
    route = route_config(policy={"calling_ae_titles": ["CT1"]}, limits={"requests_per_minute": 100})

    async def scenario(pb: Playbook) -> None:
        for i in range(2000):
            pb.host = f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"
            pb.connect(40000 + i % 20000)
            await pb.client(associate_rq(f"X{i % 7}"))
            pb.close()

    pb = play(route, scenario, engine=adapter)  # type: ignore[arg-type]
    assert pb.relays == set()
    ids_check = next(c for c in pb.checks.checks if isinstance(c, IdsCheck))
    assert ids_check.flows == {}
    assert len(engine.flows) <= 64
    tracked: list[Any] = [rule.state for rule in engine._compiled.values() if rule.state is not None]
    brute = engine._compiled["dicom-ae-brute-force"].state
    assert brute is not None and len(brute) == 64 and brute.evicted > 0  # it did track per host, at its cap
    assert all(len(state) <= 64 for state in tracked)
    assert sum(1 for e in pb.events if e.kind == "dicom.association.rejected") == 2000
