"""The Events of a store-and-forward route's objects (declared in pacsguard.gateway.kinds): each
object received, refused, quarantined, discarded unacknowledged, forwarded or undeliverable, a
destination that failed, the spool past its high-water mark, and a purge. Each names the
object's patient and study (PS3.15 A.5: the audit trail is patient-specific)."""

from __future__ import annotations

from typing import Any

from pacsguard.events import Event, Outcome, Party, Severity
from pacsguard.gateway.store_forward.spool import SpooledMeta, Usage
from pacsguard.runtime.children import how_it_ended

RECEIVED = "gateway.object.received"
REFUSED = "gateway.object.refused"
QUARANTINED = "gateway.object.quarantined"
DISCARDED = "gateway.object.discarded"
FORWARDED = "gateway.object.forwarded"
UNDELIVERABLE = "gateway.object.undeliverable"
DELAYED = "gateway.object.delayed"
IN_DOUBT = "gateway.object.in-doubt"
RESTARTED = "gateway.forwarding.restarted"
HIGH_WATER = "gateway.spool.high-water"
PURGED = "gateway.spool.purged"
DAMAGED = "gateway.spool.damaged"


def _patients(meta: SpooledMeta) -> dict[str, Any]:
    return {"patient_ids": (meta.patient_id,) if meta.patient_id else (),
            "study_uids": (meta.study_uid,) if meta.study_uid else (), "sop_instance_count": 1}


def _uid(meta: SpooledMeta) -> str:
    """The object's SOP Instance UID as the modality sent it: a replaced (de-identified) copy's new
    UID never appears beside the patient in an event (it is sealed in deid.object.deidentified)."""
    return meta.received_sop_instance_uid or meta.object.sop_instance_uid


def _object(meta: SpooledMeta) -> dict[str, Any]:
    obj = meta.object
    return {"route": obj.route, "spool_id": meta.id, "sop_class": obj.sop_class_uid,
            "sop_instance": _uid(meta), "transfer_syntax": obj.transfer_syntax_uid, "bytes": meta.bytes}


def _sender(meta: SpooledMeta) -> Party:
    return Party(ae_title=meta.object.calling_ae or None, host=meta.object.peer_host or None,
                 user=meta.object.user or None)


def received(meta: SpooledMeta) -> Event:
    return Event(kind=RECEIVED, component="gateway", actor=_sender(meta), target=Party(ae_title=meta.object.called_ae),
                 message=f"spooled {_uid(meta)} ({meta.bytes:,} bytes) "
                         f"for {', '.join(meta.destinations)}",
                 details={**_object(meta), "destinations": list(meta.destinations), "replaced_by": meta.replaced_by},
                 **_patients(meta))


def refused(meta: SpooledMeta, *, status: int, check: str, rule: str, reason: str,
            quarantine: str | None = None) -> Event:
    """An object answered with a failure status: refused, or quarantined when ``quarantine`` names
    where it was kept."""
    kind = QUARANTINED if quarantine is not None else REFUSED
    verb = "quarantined" if quarantine is not None else "refused"
    details: dict[str, Any] = {**_object(meta), "status": f"0x{status:04X}", "check": check, "rule": rule,
                               "reason": reason}
    if quarantine is not None:
        details["quarantine"] = quarantine
    return Event(kind=kind, component="gateway", severity=Severity.WARNING, outcome=Outcome.SERIOUS_FAILURE,
                 actor=_sender(meta), target=Party(ae_title=meta.object.called_ae),
                 message=f"{verb} {_uid(meta) or 'an object'} "
                         f"from {meta.object.calling_ae or '?'}: {reason}",
                 details=details, **_patients(meta))


def discarded(meta: SpooledMeta, reason: str) -> Event:
    """A received and committed object whose C-STORE-RSP could not be sent (the association ended
    first): withdrawn from the spool, never forwarded; the modality, which saw no Success, sends it
    again (docs/gateway.md, "What it guarantees")."""
    return Event(kind=DISCARDED, component="gateway", severity=Severity.NOTICE, outcome=Outcome.MINOR_FAILURE,
                 actor=_sender(meta), target=Party(ae_title=meta.object.called_ae),
                 message=f"discarded {_uid(meta)} from {meta.object.calling_ae or '?'}, "
                         f"received but not acknowledged: {reason}",
                 details={**_object(meta), "reason": reason}, **_patients(meta))


def undeliverable(meta: SpooledMeta, destination: str, target: Party, reason: str) -> Event:
    """A spooled object the forwarder will not send as it is (its file holds no data set): nothing
    was sent; it stays spooled until purged, and is not retried before the next start."""
    return Event(kind=UNDELIVERABLE, component="gateway", severity=Severity.ERROR, outcome=Outcome.SERIOUS_FAILURE,
                 actor=_sender(meta), target=target,
                 message=f"{destination}: {_uid(meta)} cannot be sent: {reason}",
                 details={**_object(meta), "destination": destination, "reason": reason}, **_patients(meta))


def forwarded(meta: SpooledMeta, destination: str, target: Party, status: int) -> Event:
    return Event(kind=FORWARDED, component="gateway", actor=_sender(meta), target=target,
                 message=f"forwarded {_uid(meta)} to {destination} (0x{status:04X})",
                 details={**_object(meta), "destination": destination, "status": f"0x{status:04X}"},
                 **_patients(meta))


def delayed(route: str, destination: str, target: Party, error: str, *, retry_in: float,
            meta: SpooledMeta | None = None, attempts: int = 0, waiting: int | None = None) -> Event:
    """A destination could not take an object (or could not be reached: ``attempts`` then counts its
    failures in a row, ``waiting`` the objects queued for it): it stays spooled."""
    details: dict[str, Any] = {"route": route, "destination": destination, "error": error,
                               "retry_in": round(retry_in, 3)}
    extra: dict[str, Any] = {}
    if attempts:
        details["attempts"] = attempts
    if waiting is not None:
        details["waiting"] = waiting
    if meta is not None:
        details.update(_object(meta), attempts=attempts)
        extra = _patients(meta)
    what = _uid(meta) if meta is not None else "spooled objects"
    return Event(kind=DELAYED, component="gateway", severity=Severity.WARNING, outcome=Outcome.MINOR_FAILURE,
                 target=target, message=f"{destination}: {what} not forwarded yet: {error}", details=details, **extra)


def in_doubt(meta: SpooledMeta, destination: str, target: Party, answer: str, reason: str, *,
             at_least_once: bool) -> Event:
    """An object whose last send to ``destination`` had no recorded answer, and what asking the
    destination (C-FIND, PS3.4 C.4.1) said before it is sent again, or not."""
    return Event(kind=IN_DOUBT, component="gateway", actor=_sender(meta), target=target,
                 severity=Severity.WARNING if at_least_once else Severity.NOTICE,
                 outcome=Outcome.MINOR_FAILURE if at_least_once else Outcome.SUCCESS,
                 message=f"{destination}: {_uid(meta)}: {reason}",
                 details={**_object(meta), "destination": destination, "answer": answer, "reason": reason},
                 **_patients(meta))


def high_water(route: str, usage: Usage, mark_mib: float) -> Event:
    """The spool's objects (waiting and quarantined: both fill its disk) passed the high-water mark."""
    held = f"{usage.bytes / 2**20:,.1f} MiB in {usage.objects} objects"
    if usage.quarantined:
        held += f" ({usage.quarantined_bytes / 2**20:,.1f} MiB in {usage.quarantined} quarantined)"
    return Event(kind=HIGH_WATER, component="gateway", severity=Severity.WARNING, outcome=Outcome.MINOR_FAILURE,
                 message=f"route {route}: the spool holds {held} (high-water mark {mark_mib:g} MiB)",
                 details={"route": route, "bytes": usage.bytes, "objects": usage.objects, "high_water_mib": mark_mib})


def purged(route: str, metas: list[SpooledMeta], user: str, states: list[str]) -> Event:
    patients = sorted({m.patient_id for m in metas if m.patient_id})
    studies = sorted({m.study_uid for m in metas if m.study_uid})
    return Event(kind=PURGED, component="gateway", severity=Severity.NOTICE, actor=Party(user=user),
                 message=f"route {route}: {user} purged {len(metas)} spooled object(s)",
                 patient_ids=tuple(patients), study_uids=tuple(studies), sop_instance_count=len(metas),
                 details={"route": route, "spool_ids": [m.id for m in metas], "states": states,
                          "sop_instances": [_uid(m) for m in metas]})


def damaged(route: str, spool_id: str, reason: str, path: str, meta: SpooledMeta | None = None) -> Event:
    """A spooled object that cannot be forwarded: its ID.json cannot be read (its destinations,
    patient and study are unknown), or its file is gone (``meta``: what its ID.json says, with the
    patient and study); listed as damaged until an administrator purges it."""
    return Event(kind=DAMAGED, component="gateway", severity=Severity.ERROR, outcome=Outcome.SERIOUS_FAILURE,
                 actor=_sender(meta) if meta is not None else Party(),
                 message=f"route {route}: spooled object {spool_id} is damaged and not forwarded: {reason}",
                 details={"route": route, "spool_id": spool_id, "reason": reason, "path": path},
                 **(_patients(meta) if meta is not None else {}))


def forwarding_restarted(route: str, exit_code: int | None, restart_in: float) -> Event:
    """The route's forwarding process ended while the gateway still ran (``exit_code`` as
    subprocess reports it: negative for the signal that ended it)."""
    sig, how = how_it_ended(exit_code)
    return Event(kind=RESTARTED, component="gateway", severity=Severity.ERROR, outcome=Outcome.MAJOR_FAILURE,
                 message=f"route {route}: the forwarding process ended ({how}); starting it again in {restart_in:g} s",
                 details={"route": route, "exit_code": exit_code, "signal": sig, "restart_in": restart_in})
