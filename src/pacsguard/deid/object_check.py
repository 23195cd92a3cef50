"""The ``deidentify`` object check of store-and-forward routes (gateway/objects.py): every object
is de-identified with the part's settings before it leaves, or refused (withheld) naming why. Each
object's original and new identifiers are recorded as an Event under the key's fingerprint, so
whoever holds the key, and no one else, can answer a re-identification request."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pacsguard.deid.build import make_engine
from pacsguard.deid.config import DeidConfig
from pacsguard.deid.engine import Engine
from pacsguard.deid.files import deidentify_file
from pacsguard.deid.keys import DeidKey, load_key
from pacsguard.events import Event, Outcome, Party, Severity
from pacsguard.gateway.objects import ObjectAction, ObjectVerdict, ReceivedObject

if TYPE_CHECKING:
    from pacsguard.runtime.part import ServiceContext

_KEYWORDS = {"study_uid": "StudyInstanceUID", "series_uid": "SeriesInstanceUID",
             "sop_instance_uid": "SOPInstanceUID", "patient_id": "PatientID"}


class DeidentifyCheck:
    name = "deidentify"

    def __init__(self, engine: Engine, key: DeidKey) -> None:
        self.engine = engine
        self.fingerprint = key.fingerprint

    def inspect(self, obj: ReceivedObject) -> ObjectVerdict:
        out = obj.path.with_name(obj.path.name + ".deid")
        result = deidentify_file(self.engine, obj.path, out)
        common: dict[str, Any] = {"route": obj.route, "key_fingerprint": self.fingerprint,
                                  "sop_class_uid": obj.sop_class_uid}
        actor = Party(ae_title=obj.calling_ae, host=obj.peer_host)
        target = Party(ae_title=obj.called_ae)
        ids = result.report.identities
        original = {k: ids[w][0] for k, w in _KEYWORDS.items() if w in ids}
        if result.output is None:
            original.setdefault("sop_instance_uid", obj.sop_instance_uid)
            event = Event(kind="deid.object.withheld", component="deid", severity=Severity.WARNING,
                          outcome=Outcome.MINOR_FAILURE, actor=actor, target=target,
                          patient_ids=tuple(filter(None, [original.get("patient_id")])),
                          study_uids=tuple(filter(None, [original.get("study_uid")])), sop_instance_count=1,
                          details={**common, "reason": result.withheld, "original": original},
                          message=f"withheld: {result.withheld}")
            return ObjectVerdict(ObjectAction.REFUSE, check=self.name, rule="withheld", reason=result.withheld,
                                 events=(event,))
        new = {k: ids[w][1] for k, w in _KEYWORDS.items() if w in ids}
        event = Event(kind="deid.object.deidentified", component="deid", actor=actor, target=target,
                      patient_ids=tuple(filter(None, [original.get("patient_id")])),
                      study_uids=tuple(filter(None, [original.get("study_uid")])), sop_instance_count=1,
                      details={**common, "original": original, "new": new,
                               "options": sorted(o.value for o in self.engine.settings.options),
                               "pixels": result.report.pixels, "edition": self.engine.table.edition},
                      message="de-identified")
        return ObjectVerdict(ObjectAction.FORWARD, check=self.name, replacement=result.output, events=(event,))


def make_check(ctx: ServiceContext) -> DeidentifyCheck:
    """The factory Part.object_checks names: the part's section gives options, key and pixel settings."""
    config: DeidConfig = ctx.section
    key_file = ctx.resolve(config.key_file) if config.key_file is not None else None
    key = load_key(key_file, config.key_env)
    return DeidentifyCheck(make_engine(key, config.options, config), key)
