"""The scanner as a store-and-forward route's object check ``scan`` (pacsguard.gateway.objects):
an object with a finding at or above the route's fail-on level is quarantined with a failure
status (PS3.4 Table B.2-1, 0xC000 "cannot understand") naming the rule; otherwise forwarded.
Every finding above a note is an Event either way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pacsguard.events import Party
from pacsguard.gateway.objects import STATUS_CANNOT_UNDERSTAND, ObjectAction, ObjectVerdict, ReceivedObject
from pacsguard.scan.events import finding_events
from pacsguard.scan.model import Level

if TYPE_CHECKING:
    from pacsguard.runtime.part import ServiceContext
    from pacsguard.scan.scanner import Scanner


@dataclass(frozen=True, slots=True)
class ScanCheck:
    """The ``scan`` object check: one shared Scanner, and the level at which an object is quarantined."""

    scanner: Scanner
    fail_on: Level = Level.MEDIUM
    name: str = "scan"

    def inspect(self, obj: ReceivedObject) -> ObjectVerdict:
        try:
            report = self.scanner.scan_file(obj.path, name=str(obj.path))
        except Exception as exc:  # the protocol says never raise: an object nobody could judge is refused
            return ObjectVerdict(ObjectAction.REFUSE, self.name, "scan.error", f"the scanner failed: {exc!r}",
                                 STATUS_CANNOT_UNDERSTAND)
        actor = Party(ae_title=obj.calling_ae, host=obj.peer_host)
        if report.skipped:
            return ObjectVerdict(ObjectAction.REFUSE, self.name, "scan.skipped", report.skipped,
                                 STATUS_CANNOT_UNDERSTAND)
        failing = [f for f in report.findings if f.level >= self.fail_on and f.level > Level.INFO]
        action = ObjectAction.QUARANTINE if failing else ObjectAction.FORWARD
        # Notes (a TIFF preamble) are left out: a modality writing them would add one per object.
        events = tuple(finding_events(report, route=obj.route, action=action.value, actor=actor, least=Level.LOW))
        if not failing:
            return ObjectVerdict(ObjectAction.FORWARD, self.name, events=events)
        worst = failing[0]  # findings are sorted worst first
        return ObjectVerdict(action, self.name, worst.rule, f"{worst.rule}: {worst.explanation}",
                             STATUS_CANNOT_UNDERSTAND, events=events)


def make_check(ctx: ServiceContext) -> ScanCheck:
    """The factory `Part.object_checks` names: the scanner of the `scan:` section."""
    from pacsguard.scan.scanner import Scanner

    settings = ctx.section
    base = ctx.loaded.path.parent if ctx.loaded.path else None
    return ScanCheck(Scanner.from_settings(settings, base), Level.parse(settings.fail_on))
