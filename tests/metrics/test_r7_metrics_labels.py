"""Round 7: a label value that is not valid UTF-8 text no longer breaks every scrape.

A rule id with a lone surrogate (a YAML rules file may spell one as "\\ud800") made
generate_latest raise UnicodeEncodeError on every scrape from then on: /metrics answered 500 for
all metrics until the restart. A status that is not hexadecimal made the counter's observe raise."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pacsguard.events.model import Event
from pacsguard.metrics.counters import EventCounters


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode("utf-8")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_lone_surrogate_in_a_rule_id_is_written_as_its_escape() -> None:
    registry = CollectorRegistry()
    counters = EventCounters(registry)
    counters.observe(Event(kind="ids.alert.x", component="ids", details={"rule_id": "r\ud800", "action": "alert"}))
    counters.observe(Event(kind="ids.alert.x", component="ids", details={"rule_id": "ok", "action": "block"}))
    samples = _samples(registry)
    assert samples[("pacsguard_alerts_total", (("action", "alert"), ("rule", "r\\ud800")))] == 1
    assert samples[("pacsguard_alerts_total", (("action", "block"), ("rule", "ok")))] == 1


def test_a_status_that_is_not_a_number_is_counted_without_a_category() -> None:
    registry = CollectorRegistry()
    counters = EventCounters(registry)
    for status in ("0xZZZZ", "0x0000", 0xA700):
        counters.observe(Event(kind="dicom.dimse.c-store", component="gateway",
                               details={"route": "ct", "status": status}))
    samples = _samples(registry)
    key = "pacsguard_dimse_requests_total"
    assert samples[(key, (("route", "ct"), ("service", "C-STORE"), ("status", "none")))] == 1
    assert samples[(key, (("route", "ct"), ("service", "C-STORE"), ("status", "success")))] == 1
    assert samples[(key, (("route", "ct"), ("service", "C-STORE"), ("status", "failure")))] == 1
