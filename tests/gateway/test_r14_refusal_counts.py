"""A refusal summary's recorded and suppressed add up to every refusal of its window: a refusal
whose request something else let through first (the IDS alert it set off) was recorded but counted
in neither (an outside probe: 436 refusals, a summary of 10 recorded and 425 suppressed)."""

from __future__ import annotations

from pacsguard.events import Event, Party
from pacsguard.records.dicom import REFUSALS_SUMMARY, RefusalFilter, RefusalLog


def _requested(n: int) -> Event:
    return Event(kind="dicom.association.requested", component="gateway", actor=Party(f"PROBE{n}", "10.9.9.9"))


def _rejected(n: int) -> Event:
    return Event(kind="dicom.association.rejected", component="gateway", actor=Party(f"PROBE{n}", "10.9.9.9"),
                 details={"by": "gateway", "rule": "policy.hosts", "route": "unit"})


def test_every_refusal_is_counted_once_recorded_or_suppressed() -> None:
    published: list[Event] = []
    log = RefusalLog(3, published.append)
    for n in range(20):
        refusals = RefusalFilter(log, published.append)  # one per association
        refusals.publish(_requested(n))
        if n == 7:  # the flood alert this refusal set off is published before its rejection
            refusals.publish(Event(kind="ids.alert.dicom-association-flood", component="ids",
                                   actor=Party(host="10.9.9.9")))
        refusals.publish(_rejected(n))
    log.flush()
    recorded = [e for e in published if e.kind == "dicom.association.rejected"]
    [summary] = [e for e in published if e.kind == REFUSALS_SUMMARY]
    assert len(recorded) == 4  # the first 3, and the one the alert let through
    assert summary.details["recorded"] == 4 and summary.details["suppressed"] == 16
    assert summary.details["recorded"] + summary.details["suppressed"] == 20
