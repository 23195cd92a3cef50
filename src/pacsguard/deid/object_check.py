"""The ``deidentify`` object check of store-and-forward routes (gateway/objects.py): every object
is de-identified with the part's settings before it leaves, or refused (withheld) naming why.

Each forwarded object is recorded as an Event under the key's fingerprint, with its original and
new identifiers sealed under the key (AES-256-GCM, keys.seal). The store thus holds no
re-identification table that anyone who reads it (an auditor, a report, the ATNA feed) could use:
whoever holds the key, and no one else, opens the link (``pacsguard deid reidentify``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pacsguard.deid.build import make_engine
from pacsguard.deid.config import DeidConfig
from pacsguard.deid.engine import Engine
from pacsguard.deid.files import deidentify_file
from pacsguard.deid.keys import DeidKey, KeyProblem, load_key, seal, unseal
from pacsguard.events import Event, Outcome, Party, Severity
from pacsguard.gateway.objects import ObjectAction, ObjectVerdict, ReceivedObject

if TYPE_CHECKING:
    from pacsguard.runtime.part import ServiceContext

_KEYWORDS = {"study_uid": "StudyInstanceUID", "series_uid": "SeriesInstanceUID",
             "sop_instance_uid": "SOPInstanceUID", "patient_id": "PatientID"}
DEIDENTIFIED = "deid.object.deidentified"


def _seal_context(route: str, fingerprint: str, *bound: str) -> bytes:
    """What a sealed value is bound to (AES-GCM associated data): its kind of record, the route,
    the key's fingerprint and any sealed value it belongs with."""
    return json.dumps([DEIDENTIFIED, route, fingerprint, *bound], separators=(",", ":")).encode("utf-8")


def seal_link(key: DeidKey, route: str, original: Mapping[str, str],
              new: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The ``original`` and ``new`` of a deidentified Event, each sealed under ``key``; the
    original is bound to its new identifiers' sealed value, so neither can be moved onto
    another record. Either in clear would link a patient to a pseudonym for any reader of the
    store: the gateway's own Events name the object's original patient and study (PS3.15 A.5),
    and the recipient holds the pseudonyms."""
    fingerprint = key.fingerprint
    new_sealed = seal(key, _canonical(new), _seal_context(route, fingerprint))
    original_sealed = seal(key, _canonical(original), _seal_context(route, fingerprint, new_sealed))
    return {"sealed": original_sealed}, {"sealed": new_sealed}


def open_link(key: DeidKey, details: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """The original and new identifiers of a deidentified Event's ``details``, opened with
    ``key``; KeyProblem when sealed under another key, or altered."""
    if details.get("key_fingerprint") != key.fingerprint:
        raise KeyProblem(f"sealed under key {details.get('key_fingerprint')}, not {key.fingerprint}")
    original_sealed = (details.get("original") or {}).get("sealed")
    new_sealed = (details.get("new") or {}).get("sealed")
    if not isinstance(original_sealed, str) or not isinstance(new_sealed, str):
        raise KeyProblem("the record holds no sealed identifiers")
    route = str(details.get("route", ""))
    new = json.loads(unseal(key, new_sealed, _seal_context(route, key.fingerprint)))
    original = json.loads(unseal(key, original_sealed, _seal_context(route, key.fingerprint, new_sealed)))
    return dict(original), dict(new)


def _canonical(ids: Mapping[str, str]) -> bytes:
    return json.dumps(dict(ids), sort_keys=True, separators=(",", ":")).encode("utf-8")


class DeidentifyCheck:
    name = "deidentify"

    def __init__(self, engine: Engine, key: DeidKey) -> None:
        self.engine = engine
        self.fingerprint = key.fingerprint
        self._key = key  # seals the originals in the Event; DeidKey's repr shows only the fingerprint

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
        # Nothing in clear links a patient to a pseudonym: the link is sealed under the key, and
        # the Event names no patient or study (the gateway's Events for the object name the
        # original ones, for the patient's audit trail).
        sealed_original, sealed_new = seal_link(self._key, obj.route, original, new)
        event = Event(kind=DEIDENTIFIED, component="deid", actor=actor, target=target, sop_instance_count=1,
                      details={**common, "original": sealed_original, "new": sealed_new,
                               "options": sorted(o.value for o in self.engine.settings.options),
                               "pixels": result.report.pixels, "edition": self.engine.table.edition},
                      message="de-identified")
        return ObjectVerdict(ObjectAction.FORWARD, check=self.name, replacement=result.output, events=(event,))


def make_check(ctx: ServiceContext) -> DeidentifyCheck:
    """The factory Part.object_checks names: the part's section gives options, key and pixel settings.
    A key that cannot be loaded is a configuration error (``serve`` exits 2 naming the setting),
    and no route that lists the check starts: nothing leaves unchecked."""
    from pacsguard.config.loader import ConfigError, ConfigProblem

    config: DeidConfig = ctx.section
    key_file = ctx.resolve(config.key_file) if config.key_file is not None else None
    try:
        key = load_key(key_file, config.key_env)
    except KeyProblem as exc:
        setting = "deid.key_file" if key_file is not None else "deid.key_env"
        raise ConfigError(str(ctx.loaded.path or "pacsguard.yaml"), [ConfigProblem(setting, str(exc))]) from None
    return DeidentifyCheck(make_engine(key, config.options, config), key)
