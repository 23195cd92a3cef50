"""Alert limits and suppression (docs/ids.md, "Limits and suppression"): how many alert events a
rule writes per key per window, the aggregate written when a window closes, ids.suppress, and
that neither ever changes what an acting rule enforces."""

from __future__ import annotations

from typing import Any

import pytest
from test_engine import Session, make_engine

from pacsguard.ids import Alert, Engine, IdsSettings, RuleError
from pacsguard.ids.limit import AlertLimit
from pacsguard.ids.rules import parse_rules_text
from pacsguard.records.dicom import capture_time

RULE = """
- id: site-scu
  title: SCU called
  severity: notice
  protocol: dicom
  on: association-request
  match:
    calling_ae: {wildcard: 'SCU*'}
  limit: {count: 2, within: 60s, by: [client_host]}
  action: {action}
  reference: site policy
"""


def engine_with(action: str = "alert", **settings: Any) -> tuple[Engine, Any]:
    text = RULE.replace("{action}", action)
    if action == "quarantine":
        text += "  quarantine_for: 5m\n"
    rules, problems = parse_rules_text(text, "site.yaml")
    assert not problems, problems
    clock = _Clock()
    return Engine(rules, IdsSettings(**settings), clock=clock), clock


class _Clock:
    def __init__(self) -> None:
        self.t = 5000.0

    def __call__(self) -> float:
        return self.t


def hit(engine: Engine, client: str = "10.2.2.2", calling: str = "SCU1") -> list[Alert]:
    return Session(engine, client=client).associate(calling, "PACS", answer=False).alerts


def written(alerts: list[Alert]) -> list[Alert]:
    return [a for a in alerts if a.record]


def test_limit_parses_and_rejects_bad_values() -> None:
    rules, problems = parse_rules_text(RULE.replace("{action}", "alert"), "site.yaml")
    assert not problems and rules[0].limit is not None
    assert (rules[0].limit.count, rules[0].limit.within, rules[0].limit.by) == (2, 60.0, ("client_host",))
    bad = RULE.replace("{action}", "alert").replace("limit: {count: 2, within: 60s, by: [client_host]}",
                                                     "limit: {count: 0, within: soon, by: [nope], per: 1}")
    _, problems = parse_rules_text(bad, "site.yaml")
    assert {p.field for p in problems} == {"limit.count", "limit.within", "limit.by", "limit.per"}


def test_first_count_written_then_one_aggregate_at_window_close() -> None:
    engine, clock = engine_with()
    engine.to_wall = capture_time  # deterministic Event times for the comparison below
    out: list[Alert] = []
    for _ in range(7):
        clock.t += 5
        out += hit(engine)
    assert len(written(out)) == 2 and len(out) == 7  # every match returned, two written
    assert engine.limited == 5
    first_extra, last_extra = 5015.0, 5035.0
    # still inside the window (started at 5005): nothing more yet
    clock.t = 5005 + 59.9
    assert written(hit(engine, client="10.7.7.7", calling="OTHER")) == []
    # the first observation at/after the window's end closes it: one aggregate first
    clock.t = 5005 + 60
    after = hit(engine, client="10.7.7.7", calling="OTHER")
    (agg,) = [a for a in after if a.event.details.get("aggregate")]
    d = agg.event.details
    assert d["count"] == 5 and agg.action == "alert" and agg.record
    assert d["first"] == capture_time(first_extra).isoformat() and d["last"] == capture_time(last_extra).isoformat()
    assert d["limit"]["key"] == {"client_host": "10.2.2.2"} and d["limit"]["within_seconds"] == 60.0
    assert agg.event.kind == "ids.alert.site-scu" and "5 more match(es)" in agg.message
    # counts add up: written alerts (1 each) plus the aggregate's count are every match
    assert len(written(out)) + d["count"] == 7
    # a new window for the same key starts afresh
    assert len(written(hit(engine))) == 1


def test_window_without_extra_matches_writes_no_aggregate() -> None:
    engine, clock = engine_with()
    hit(engine)
    clock.t += 120
    assert not any(a.event.details.get("aggregate") for a in hit(engine))
    assert engine.flush() == []


def test_limit_is_per_key() -> None:
    engine, clock = engine_with()
    out: list[Alert] = []
    for client in ("10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.2", "10.0.0.1"):
        clock.t += 1
        out += hit(engine, client=client)
    assert [a.flow.client_host for a in written(out)] == ["10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.2"]
    aggs = engine.flush()
    assert [(a.event.details["limit"]["key"]["client_host"], a.event.details["count"]) for a in aggs] == [
        ("10.0.0.1", 1)]


def test_flush_emits_open_windows_aggregates() -> None:
    engine, clock = engine_with()
    for _ in range(4):
        clock.t += 1
        hit(engine)
    (agg,) = engine.flush()
    assert agg.event.details["count"] == 2 and agg.event.details["aggregate"] is True
    assert engine.flush() == []  # once


def test_capture_clock_places_first_and_last() -> None:
    """Passively the engine's times are capture times: the aggregate's first/last are those."""
    engine, clock = engine_with()
    engine.to_wall = capture_time
    for t in (1_700_000_000.0, 1_700_000_001.0, 1_700_000_002.0, 1_700_000_030.0):
        clock.t = t
        hit(engine)
    (agg,) = engine.flush()
    assert agg.event.details["first"] == "2023-11-14T22:13:22+00:00"
    assert agg.event.details["last"] == "2023-11-14T22:13:50+00:00"
    assert agg.event.time == capture_time(1_700_000_030.0)


@pytest.mark.parametrize("action", ["drop", "abort", "quarantine"])
def test_limits_never_change_enforcement(action: str) -> None:
    engine, clock = engine_with(action)
    out: list[Alert] = []
    for _ in range(6):
        clock.t += 1
        out += hit(engine)
    assert len(out) == 6 and all(a.action == action for a in out)  # every match acts
    assert len(written(out)) == 2
    (agg,) = engine.flush()
    assert agg.action == "alert" and "quarantine_seconds" not in agg.event.details  # a summary never acts


def test_settings_limit_overrides_the_rule() -> None:
    engine, clock = engine_with(limits={"site-scu": {"count": 1, "within": "1h"}})
    limit = engine.effective_limit("site-scu")
    assert limit is not None and (limit.count, limit.within) == (1, 3600.0)
    out: list[Alert] = []
    for _ in range(3):
        clock.t += 600
        out += hit(engine)
    assert len(written(out)) == 1


def test_settings_name_loaded_rules_only() -> None:
    with pytest.raises(RuleError) as err:
        engine_with(limits={"nope": {"count": 1}}, suppress=[{"rule": "nope", "values": ["10.0.0.1"]}])
    assert {(p.rule_id, p.field) for p in err.value.problems} == {("nope", "limits"), ("nope", "suppress")}
    with pytest.raises(RuleError) as err:
        engine_with(suppress=[{"rule": "site-scu", "track": "patient_id", "values": ["X"]}])
    assert err.value.problems[0].field == "suppress.track"


def test_suppress_silences_a_known_source_but_still_acts() -> None:
    engine, clock = engine_with("drop", suppress=[{"rule": "site-scu", "values": ["10.5.0.0/16"]},
                                                 {"rule": "site-scu", "track": "calling_ae", "values": ["SCUTEST"]}])
    quiet = hit(engine, client="10.5.1.1") + hit(engine, client="10.9.1.1", calling="SCUTEST")
    assert len(quiet) == 2 and not written(quiet) and all(a.action == "drop" for a in quiet)
    assert engine.silenced == {"site-scu": 2} and engine.limited == 0
    assert len(written(hit(engine, client="10.9.1.1"))) == 1  # anyone else: written
    assert engine.flush() == []  # silenced matches make no aggregate


def test_limit_state_is_bounded() -> None:
    limit = AlertLimit(1, 60.0, cap=100)
    for i in range(10_000):
        limit.admit((f"h{i}",), float(i) / 1000, None)
        limit.admit((f"h{i}",), float(i) / 1000, "held")
    assert len(limit) == 100
    # windows closed early by the bound still report what they held back
    closed = limit.due(0.0)
    assert len(closed) == 9_900 and all(w.extra == 1 for w in closed)


def test_builtin_noisy_rules_have_default_limits() -> None:
    engine, _ = make_engine()
    for rule_id in ("dicom-tool-default-ae-title", "dicom-ae-brute-force", "dicom-scan-echo-probe",
                    "dicom-association-flood", "dicom-cleartext-from-external"):
        limit = engine.effective_limit(rule_id)
        assert limit is not None and limit.count == 1 and limit.within == 600.0, rule_id


def test_tool_scan_gives_a_handful_of_alerts_with_counts() -> None:
    """120 associations of a scanning tool from one source: one alert and one aggregate."""
    engine, clock = make_engine()
    out: list[Alert] = []
    for i in range(120):
        clock.t += 1
        out += Session(engine, client="10.66.0.1").associate("ECHOSCU", f"GUESS{i}", answer=False).alerts
    out += engine.flush()
    tool = [a for a in out if a.rule_id == "dicom-tool-default-ae-title" and a.record]
    assert len(tool) == 2
    assert sum(a.event.details.get("count", 1) for a in tool) == 120


def test_the_gateway_writes_open_aggregates_on_a_timer_and_at_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inline, a limit window also closes without traffic (the gateway's timer) and at stop()."""
    import asyncio

    from pacsguard.config.schema import GatewayConfig
    from pacsguard.gateway import server

    monkeypatch.setattr(server, "ALERT_WINDOW_TICK", 0.01)
    engine, clock = engine_with()
    published: list[Any] = []

    async def run() -> None:
        gw = server.Gateway(GatewayConfig(), published.append, engine=engine)
        await gw.start()
        for _ in range(5):
            hit(engine)  # 2 written, 3 held back (what the relay would have published: not here)
        clock.t += 61  # the window is over: the timer writes its aggregate
        await asyncio.sleep(0.1)
        assert [e.details["count"] for e in published] == [3]
        for _ in range(4):
            hit(engine)
        await gw.stop()  # a window still open: its aggregate is written at shutdown
        assert [e.details["count"] for e in published] == [3, 2]

    asyncio.run(run())
    assert all(e.kind == "ids.alert.site-scu" and e.details["aggregate"] for e in published)
