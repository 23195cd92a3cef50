"""Scan results as Events (docs/events.md): each finding of a FileReport becomes a ``scan.finding``
with the patient ID and study UID the file carries, so the audit trail shows whose data carried
what (issue #19); a quarantined file becomes ``scan.quarantined``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pacsguard.events import Event, Outcome, Party, Severity
from pacsguard.scan.model import FileReport, Level
from pacsguard.scan.report import display_path

if TYPE_CHECKING:
    from pathlib import Path

#: Finding level -> RFC 5424 severity of its Event.
SEVERITY = {Level.INFO: Severity.INFO, Level.LOW: Severity.NOTICE, Level.MEDIUM: Severity.WARNING,
            Level.HIGH: Severity.ERROR, Level.CRITICAL: Severity.CRITICAL}


def _context(report: FileReport) -> dict[str, object]:
    return {"patient_ids": (report.patient_id,) if report.patient_id else (),
            "study_uids": (report.study_uid,) if report.study_uid else (),
            "sop_instance_count": 1 if report.sop_instance_uid else 0}


def finding_events(report: FileReport, *, route: str | None = None, action: str | None = None,
                   actor: Party | None = None, least: Level = Level.INFO) -> list[Event]:
    """One Event per finding at ``least`` or above."""
    out: list[Event] = []
    path = display_path(report.path)  # a name that is not UTF-8 must not fail the event sinks
    for finding in report.findings:
        if finding.level < least:
            continue
        details = {"file": path, "sha256": report.sha256, "size": report.size, "route": route,
                   "sop_instance_uid": report.sop_instance_uid or None, "rule": finding.rule,
                   "level": finding.level.label, "explanation": finding.explanation, "offset": finding.offset,
                   "reference": finding.reference, "tag": finding.tag, "inflated": finding.inflated,
                   "action": action}
        out.append(Event(kind="scan.finding", component="scan", severity=SEVERITY[finding.level],
                         outcome=Outcome.SUCCESS if finding.level <= Level.LOW else Outcome.MINOR_FAILURE,
                         actor=actor or Party(), message=f"{path}: {finding.rule}: {finding.explanation}",
                         details=details, **_context(report)))  # type: ignore[arg-type]
    return out


def quarantine_event(report: FileReport, where: Path, manifest: Path) -> Event:
    path, where_shown = display_path(report.path), display_path(str(where))
    details = {"file": path, "sha256": report.sha256, "size": report.size, "route": None,
               "sop_instance_uid": report.sop_instance_uid or None, "quarantine": where_shown,
               "manifest": display_path(str(manifest)), "rules": sorted({f.rule for f in report.findings})}
    return Event(kind="scan.quarantined", component="scan", severity=Severity.WARNING, outcome=Outcome.SUCCESS,
                 message=f"{path} moved to quarantine {where_shown}", details=details,
                 **_context(report))  # type: ignore[arg-type]
