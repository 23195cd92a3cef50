"""The Events the gateway records: one per association phase and one per DIMSE request
(PS3.15 A.5 thinking: who, what, which patient, what outcome), built from relay state.

Event kinds (docs/events.md): dicom.association.{requested,accepted,rejected,released,aborted},
dicom.dimse.<service> (c-echo, c-store, c-find, c-move, c-get, n-action, ...), dicom.protocol.violation,
gateway.upstream.unreachable, tls.handshake.failed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pacsguard.dicom.dimse import CommandSet, command_name, status_category
from pacsguard.events import Event, Outcome, Party, Severity

MAX_PATIENTS_PER_EVENT = 1000  # a C-FIND that returns more is summarised, not listed


@dataclass(slots=True)
class Peers:
    """The two parties of one association as the gateway sees them."""

    route: str
    client: Party  # the requestor: calling AE, source host/port, certificate subject as user
    server: Party  # the upstream: its AE title, host, port
    called_ae: str  # the AE title the client called (the route's, unless rejected for it)

    def actor_target(self, from_requestor: bool) -> tuple[Party, Party]:
        return (self.client, self.server) if from_requestor else (self.server, self.client)


@dataclass(slots=True)
class Pending:
    """A DIMSE request in flight, until its final response."""

    command: CommandSet
    from_requestor: bool
    abstract_syntax: str | None
    transfer_syntax: str | None
    started: float = field(default_factory=time.monotonic)
    patient_ids: dict[str, None] = field(default_factory=dict)
    study_uids: dict[str, None] = field(default_factory=dict)
    sop_instance_uid: str | None = None
    level: str | None = None
    query: dict[str, str] | None = None
    matches: int = 0
    matched_patients: dict[str, None] = field(default_factory=dict)
    dataset_bytes: int = 0
    refused: str | None = None
    refused_rule: str | None = None
    refused_status: int | None = None

    def add_identifiers(self, patient_id: str | None, study_uid: str | None) -> None:
        if patient_id and len(self.patient_ids) < MAX_PATIENTS_PER_EVENT:
            self.patient_ids[patient_id] = None
        if study_uid and len(self.study_uids) < MAX_PATIENTS_PER_EVENT:
            self.study_uids[study_uid] = None


def outcome_of_status(status: int | None) -> str:
    if status is None:
        return Outcome.UNKNOWN
    category = status_category(status)
    if category == "success":
        return Outcome.SUCCESS
    if category in ("warning", "cancel"):
        return Outcome.MINOR_FAILURE
    return Outcome.SERIOUS_FAILURE


def association_event(kind: str, peers: Peers, *, severity: Severity = Severity.INFO,
                      outcome: str = Outcome.SUCCESS, message: str = "", **details: Any) -> Event:
    return Event(kind=f"dicom.association.{kind}", component="gateway", severity=severity, outcome=outcome,
                 actor=peers.client, target=peers.server, message=message,
                 details={"route": peers.route, "called_ae": peers.called_ae, **details})


def dimse_event(peers: Peers, pending: Pending, response: CommandSet | None, *, aborted: bool = False) -> Event:
    cmd = pending.command
    name = command_name(cmd.command_field).removesuffix("-RQ")
    status = response.status if response is not None else None
    actor, target = peers.actor_target(pending.from_requestor)
    details: dict[str, Any] = {
        "route": peers.route, "message_id": cmd.message_id, "sop_class": pending.abstract_syntax or cmd.sop_class_uid,
        "duration_ms": round((time.monotonic() - pending.started) * 1000, 3),
    }
    if status is not None:
        details["status"] = f"0x{status:04X}"
    if pending.sop_instance_uid or cmd.affected_sop_instance_uid:
        details["sop_instance"] = pending.sop_instance_uid or cmd.affected_sop_instance_uid
    if pending.dataset_bytes:
        details["bytes"] = pending.dataset_bytes
    if pending.level:
        details["level"] = pending.level
    if pending.query is not None:
        details["query"] = pending.query
    if name in ("C-FIND", "C-GET", "C-MOVE") and pending.matches:
        details["responses"] = pending.matches
    if cmd.move_destination:
        details["move_destination"] = cmd.move_destination
    if response is not None and name in ("C-MOVE", "C-GET"):
        details["suboperations"] = {"completed": response.completed_suboperations,
                                    "failed": response.failed_suboperations,
                                    "warning": response.warning_suboperations,
                                    "remaining": response.remaining_suboperations}
    if pending.refused:
        details["decision"] = "refused"
        details["rule"] = pending.refused_rule
    if aborted:
        details["decision"] = "aborted"
    patients = dict(pending.patient_ids)
    patients.update(pending.matched_patients)
    outcome = outcome_of_status(status) if not aborted else Outcome.SERIOUS_FAILURE
    refused = pending.refused is not None
    sop_count = 1 if name == "C-STORE" and outcome == Outcome.SUCCESS else 0
    if response is not None and name in ("C-MOVE", "C-GET"):
        sop_count = response.completed_suboperations or 0
    message = pending.refused or f"{name} {'refused' if refused else ''}{'aborted' if aborted else ''}".strip()
    if status is not None and not refused:
        message = f"{name} status 0x{status:04X}"
    return Event(kind=f"dicom.dimse.{name.lower()}", component="gateway",
                 severity=Severity.WARNING if refused or aborted else Severity.INFO,
                 outcome=outcome, actor=actor, target=target,
                 patient_ids=tuple(list(patients)[:MAX_PATIENTS_PER_EVENT]),
                 study_uids=tuple(pending.study_uids), sop_instance_count=sop_count,
                 message=message, details=details)
