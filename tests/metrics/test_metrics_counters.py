"""The metrics part's counters: which Event moves which metric, by how much and under which labels."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from pacsguard.events import Event
from pacsguard.metrics.counters import EventCounters, dimse_status, where


def _counters(*events: tuple[str, dict[str, Any]]) -> CollectorRegistry:
    registry = CollectorRegistry()
    counters = EventCounters(registry)
    for kind, details in events:
        counters.observe(Event(kind=kind, component="test", details=details))
    return registry


def test_an_association_moves_its_events_and_its_bytes_once_it_ends() -> None:
    route = {"route": "ct", "flow": "f1", "called_ae": "PACS"}
    registry = _counters(("dicom.association.requested", route), ("dicom.association.accepted", route),
                         ("dicom.association.released", {**route, "bytes_from_client": 5000,
                                                         "bytes_from_upstream": 300}),
                         ("dicom.association.requested", route),
                         ("dicom.association.aborted", {**route, "by": "client", "bytes_from_client": 12,
                                                        "bytes_from_upstream": 0}))
    value = registry.get_sample_value
    assert value("pacsguard_associations_total", {"route": "ct", "event": "requested"}) == 2
    assert value("pacsguard_associations_total", {"route": "ct", "event": "accepted"}) == 1
    assert value("pacsguard_associations_total", {"route": "ct", "event": "aborted"}) == 1
    assert value("pacsguard_bytes_total", {"route": "ct", "direction": "from_client"}) == 5012
    assert value("pacsguard_bytes_total", {"route": "ct", "direction": "from_upstream"}) == 300
    assert value("pacsguard_upstream_up", {"route": "ct"}) == 1


def test_requests_count_by_service_and_status_category_and_refusals_by_rule() -> None:
    base = {"route": "ct", "flow": "f", "message_id": 1, "sop_class": "1.2", "duration_ms": 1.0}
    registry = _counters(("dicom.dimse.c-store", {**base, "status": "0x0000"}),
                         ("dicom.dimse.c-store", {**base, "status": "0xB007"}),
                         ("dicom.dimse.c-store", {**base, "status": "0xA700"}),
                         ("dicom.dimse.c-find", {**base, "status": "0xA900", "decision": "refused",
                                                 "rule": "services"}),
                         ("dicom.dimse.c-echo", base),
                         ("dicom.association.rejected", {"route": "ct", "flow": "g", "by": "gateway",
                                                         "rule": "hosts"}),
                         ("dicom.association.rejected", {"route": "ct", "flow": "h", "by": "upstream"}))
    value = registry.get_sample_value
    for status, count in (("success", 1), ("warning", 1), ("failure", 1)):
        assert value("pacsguard_dimse_requests_total", {"route": "ct", "service": "C-STORE", "status": status}) == count
    assert value("pacsguard_dimse_requests_total", {"route": "ct", "service": "C-FIND", "status": "refused"}) == 1
    assert value("pacsguard_dimse_requests_total", {"route": "ct", "service": "C-ECHO", "status": "none"}) == 1
    assert value("pacsguard_refusals_total", {"route": "ct", "stage": "request", "rule": "services"}) == 1
    assert value("pacsguard_refusals_total", {"route": "ct", "stage": "association", "rule": "hosts"}) == 1
    # The PACS rejecting is not the gateway refusing.
    assert value("pacsguard_associations_total", {"route": "ct", "event": "rejected"}) == 2
    assert value("pacsguard_refusals_total", {"route": "ct", "stage": "association", "rule": "none"}) is None


def test_alerts_count_by_rule_and_an_unreachable_upstream_drops_to_zero_until_it_accepts_again() -> None:
    alert = {"rule_id": "dicom-brute", "title": "t", "action": "alert", "protocol": "dicom", "on": "association",
             "observation": {}}
    route = {"route": "ct", "flow": "f", "called_ae": "PACS"}
    registry = _counters(("ids.alert.dicom-brute", alert), ("ids.alert.dicom-brute", alert),
                         ("dicom.association.accepted", route),
                         ("gateway.upstream.unreachable", {"route": "ct", "error": "refused"}))
    assert registry.get_sample_value("pacsguard_alerts_total", {"rule": "dicom-brute", "action": "alert"}) == 2
    assert registry.get_sample_value("pacsguard_upstream_up", {"route": "ct"}) == 0
    counters = EventCounters(registry2 := CollectorRegistry())
    for kind in ("gateway.upstream.unreachable", "dicom.association.accepted"):
        counters.observe(Event(kind=kind, component="test", details={**route, "error": "x"}))
    assert registry2.get_sample_value("pacsguard_upstream_up", {"route": "ct"}) == 1


def test_a_passive_sensors_records_are_labelled_by_sensor_and_statuses_by_category() -> None:
    assert where({"route": None, "sensor": "eth1"}) == "sensor:eth1"
    assert where({"route": "ct", "sensor": None}) == "ct"
    assert where({}) == ""
    assert dimse_status({"status": "0xFF00"}) == "pending"
    assert dimse_status({"status": "0xFE00"}) == "cancel"
    assert dimse_status({"status": "0x0000", "decision": "aborted"}) == "aborted"
