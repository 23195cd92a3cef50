"""Elastic Common Schema (ECS 8.x) JSON, one document per Event.

Standard fields carry what ECS has a name for (@timestamp; event.kind/category/type/action/outcome/
severity/id/dataset/module/provider; source/destination address, ip, domain, port; user.name and
user.target.name; log.level and log.syslog.severity; rule.id for IDS alerts; message; labels).
Everything pacsguard-specific (patients, studies, AE titles, the outcome in PS3.15 words, details)
sits under the custom top-level `pacsguard` object, as the ECS guide on custom fields advises: a
name ECS will not take, so no future ECS field collides. event.category and event.type use only
the allowed values of the ECS categorization fields.
"""

from __future__ import annotations

from typing import Any

import orjson

from pacsguard.events.model import NOBODY, Event, Outcome, Party
from pacsguard.sinks.formats.common import PRODUCT, PRODUCT_VERSION, VENDOR, decision, endpoint, severity_0_10

ECS_VERSION = "8.11.0"
DATASET = "pacsguard.events"
NAMESPACE = "pacsguard"

_OUTCOMES = {Outcome.SUCCESS: "success", Outcome.UNKNOWN: "unknown"}  # the *-failure ones: "failure"


def categorize(event: Event) -> tuple[str, list[str], list[str]]:
    """(event.kind, event.category, event.type) for a pacsguard kind, from the ECS allowed values,
    each type one the ECS reference expects for the chosen category."""
    kind = event.kind
    act = decision(event)
    if kind.startswith("ids.alert."):
        return "alert", ["intrusion_detection", "network"], ["denied" if act in ("block", "quarantine") else "info"]
    if kind.startswith("pacsguard.service."):
        return "event", ["process"], ["end" if kind.endswith(".stopped") else "start"]
    if kind.startswith("gateway.quarantine."):
        if kind.endswith(".enforced"):
            return "event", ["network"], ["connection", "denied"]
        if kind.endswith(".spared"):  # a quarantine not applied: no change to the configuration
            return "event", ["configuration"], ["info"]
        return "event", ["configuration"], ["creation" if kind.endswith(".added") else "deletion"]
    if kind.startswith("dicom.association."):
        types = {"requested": ["connection", "start"], "accepted": ["connection", "allowed"],
                 "rejected": ["connection", "denied"]}.get(kind.rsplit(".", 1)[-1], ["connection", "end"])
        return "event", ["network"], types
    if kind.startswith("dicom.dimse."):
        return "event", ["network"], ["protocol", "denied"] if act == "refused" else ["protocol"]
    if kind == "tls.handshake.failed":
        return "event", ["network"], ["connection", "denied"]
    if kind.startswith("ids.dicom."):
        return "event", ["network"], ["connection", "protocol"]
    return "event", ["network"], ["info"]


def _endpoint(party: Party) -> dict[str, Any]:
    side = endpoint(party)
    out: dict[str, Any] = {}
    if party.host:
        out["address"] = party.host
    if side.ip is not None:
        out["ip"] = side.ip
    if side.hostname:
        out["domain"] = side.hostname
    if side.port is not None:
        out["port"] = side.port
    return out


def ecs_document(event: Event) -> dict[str, Any]:
    """The ECS document of `event` as Python values."""
    kind, category, types = categorize(event)
    # The canonical JSON's values (details as Event.to_json writes them: bytes as hex, sets as lists).
    canonical = orjson.loads(event.to_json())
    doc: dict[str, Any] = {
        "@timestamp": canonical["time"],
        "ecs": {"version": ECS_VERSION},
        "event": {
            "id": event.id, "kind": kind, "category": category, "type": types, "action": event.kind,
            "outcome": _OUTCOMES.get(event.outcome, "failure"), "severity": severity_0_10(event.severity),
            "dataset": DATASET, "module": NAMESPACE, "provider": event.component,
        },
        "log": {"level": event.severity.name.lower(),
                "syslog": {"severity": {"code": int(event.severity), "name": event.severity.name.lower()}}},
        "observer": {"vendor": VENDOR, "product": PRODUCT, "version": PRODUCT_VERSION},
        "labels": {"component": event.component},
        NAMESPACE: {
            "kind": event.kind,
            "outcome": event.outcome,
            **{key: canonical[key] for key in ("actor", "target", "patient_ids", "study_uids",
                                               "sop_instance_count", "details")},
        },
    }
    if event.message:
        doc["message"] = event.message
    for party, field in ((event.actor, "source"), (event.target, "destination")):
        if party is not NOBODY and (side := _endpoint(party)):
            doc[field] = side
    user: dict[str, Any] = {}
    if event.actor.user:
        user["name"] = event.actor.user
    if event.target.user:
        user["target"] = {"name": event.target.user}
    if user:
        doc["user"] = user
    rule = event.details.get("rule_id")
    if kind == "alert" and isinstance(rule, str):
        doc["rule"] = {"id": rule}
        if isinstance(event.details.get("title"), str):
            doc["rule"]["name"] = event.details["title"]
    return doc


def valid_text(value: Any) -> Any:
    """`value` with each string that is not valid UTF-8 (a lone surrogate: a name decoded with
    surrogateescape, a YAML escape in a rule title) written as its escape text, ``\\udcff``, as the
    canonical JSON writes it. JSON text is UTF-8 (RFC 8259 8.1): orjson refuses such a string, and
    one event of a batch would cost the output the whole batch."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value
    if isinstance(value, dict):
        return {valid_text(k): valid_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [valid_text(v) for v in value]
    return value


def format_ecs(event: Event) -> str:
    """The ECS document as compact JSON with sorted keys (UTF-8 text, no trailing newline)."""
    doc = ecs_document(event)
    try:
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:  # rare: only a lone surrogate gets here, so the common case pays no walk
        return orjson.dumps(valid_text(doc), option=orjson.OPT_SORT_KEYS).decode()
