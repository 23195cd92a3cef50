"""SIEM formats (CEF, LEEF, ECS): every kind of event, with hostile values, parsed back by strict
parsers written here from the vendors' published grammars, and ECS checked against the types
and allowed values of the ECS field reference."""

from __future__ import annotations

import ipaddress
import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson
import pytest

from pacsguard import __version__
from pacsguard.config.schema import JsonLinesConfig, SyslogConfig
from pacsguard.events.model import NOBODY, Event, Outcome, Party, Severity
from pacsguard.sinks import JsonLinesSink, SyslogSink, format_rfc5424
from pacsguard.sinks.formats import FORMAT_NAMES, format_cef, format_ecs, format_leef, formatter
from test_sinks import Rsyslog

# --------------------------------------------------------------------------------------------
# Representative events: every kind docs/events.md lists, with hostile values
# --------------------------------------------------------------------------------------------

T0 = datetime(2026, 11, 23, 22, 51, 0, 123456, tzinfo=timezone.utc)
HOSTILE = "a|b\\c=d\ne\rf\tg ü 医 = \\= \\n|"
MODALITY = Party(ae_title="CT|SCAN=1\\x", host="10.20.0.7", port=51234, user="dr=müller\nsmith")
PACS = Party(ae_title="PACS", host="fd00::2", port=104)
NAMED = Party(ae_title="WS 1", host="ws1.hospital.local", port=11112, user="Überweiser|1")


def _events() -> list[Event]:
    def make(kind: str, **fields: Any) -> Event:
        fields.setdefault("component", "gateway")
        fields.setdefault("time", T0 + timedelta(microseconds=len(made)))
        made.append(Event(kind=kind, **fields))
        return made[-1]

    made: list[Event] = []
    make("pacsguard.service.started", component="serve", message="pacsguard 0.1.0 started",
         details={"config": "/etc/pacsguard/pacsguard.yaml"})
    make("pacsguard.service.stopped", component="serve", message="")
    make("dicom.association.requested", actor=MODALITY, target=PACS,
         details={"route": "ct", "called_ae": "PACS", "contexts": 3, "tls": False})
    make("dicom.association.accepted", actor=MODALITY, target=PACS, details={"accepted": ["1.2.840.10008.1.1"]})
    make("dicom.association.rejected", severity=Severity.WARNING, outcome=Outcome.SERIOUS_FAILURE,
         actor=Party(ae_title="INTRUDER", host="10.3.0.9", port=40000), target=PACS,
         message=f"rejected: {HOSTILE}", details={"by": "gateway", "rule": "calling_ae_titles", "reason": HOSTILE})
    make("dicom.association.released", actor=MODALITY, target=PACS, details={"bytes_from_client": 123})
    make("dicom.association.aborted", severity=Severity.NOTICE, outcome=Outcome.MINOR_FAILURE,
         actor=NAMED, target=PACS, details={"by": "gateway", "cause": "timeout"})
    make("dicom.dimse.c-store", actor=MODALITY, target=PACS,
         patient_ids=("PAT|1=x", "Müller\nHans", "患者-7"), study_uids=("1.2.826.0.1.3680043.8.498.1", "1.2.3"),
         sop_instance_count=2, message="C-STORE CT|Image = ok", details={"status": 0, "sop_class": "1.2"})
    make("dicom.dimse.c-find", severity=Severity.WARNING, outcome=Outcome.SERIOUS_FAILURE, actor=NAMED,
         target=PACS, patient_ids=("P=1",), details={"decision": "refused", "rule": "services"},
         message="refused by policy")
    make("dicom.protocol.violation", severity=Severity.WARNING, outcome=Outcome.SERIOUS_FAILURE,
         actor=MODALITY, target=PACS, details={"code": "pdu-length", "from": "client", "raw": b"\x00\x01|="})
    make("gateway.upstream.unreachable", severity=Severity.ERROR, outcome=Outcome.MAJOR_FAILURE,
         actor=MODALITY, target=Party(host="pacs.hospital.local", port=104), details={"error": "timed out"})
    make("gateway.quarantine.added", severity=Severity.WARNING, actor=Party(user="admin"),
         target=Party(host="10.20.0.7"), details={"target": "10.20.0.7", "until": None, "reason": HOSTILE})
    make("gateway.quarantine.removed", severity=Severity.NOTICE, actor=Party(user="admin"),
         target=Party(host="10.20.0.7"))
    make("gateway.quarantine.enforced", severity=Severity.WARNING, actor=MODALITY, target=PACS)
    make("tls.handshake.failed", severity=Severity.WARNING, outcome=Outcome.SERIOUS_FAILURE,
         actor=Party(host="::ffff:10.0.0.1", port=5555), details={"error": "no certificate"})
    make("ids.alert.dicom-c-find-sweep", component="ids", severity=Severity.CRITICAL, outcome=Outcome.UNKNOWN,
         actor=MODALITY, target=PACS, patient_ids=("PAT|1=x",),
         message="C-FIND sweep: 50 patients (CT|SCAN=1\\x@10.20.0.7:51234 -> PACS@fd00::2:104)",
         details={"rule_id": "dicom-c-find-sweep", "title": "C-FIND sweep", "action": "block"})
    make("ids.alert.dicom-echo-scan", component="ids", severity=Severity.ALERT, outcome=Outcome.UNKNOWN,
         actor=Party(host="10.3.0.9"), details={"rule_id": "dicom-echo-scan", "title": "echo", "action": "alert"})
    make("dicom.association.released", component="ids", actor=MODALITY, target=PACS,
         details={"route": None, "capture": {"commands": {"C-ECHO": 1}}})
    make("store.verify.failed", component="store", severity=Severity.EMERGENCY, outcome=Outcome.MAJOR_FAILURE,
         message="\n\nleading newlines", actor=NOBODY, target=Party(ae_title=""))
    make("debug.trace", severity=Severity.DEBUG, message=HOSTILE)
    return made


EVENTS = _events()
IDS = [e.kind for e in EVENTS]
RFC5424_TO_10 = {0: 10, 1: 9, 2: 8, 3: 7, 4: 5, 5: 3, 6: 2, 7: 1}


def _canonical(event: Event) -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(event.to_json())
    return out


def _ms(event: Event) -> int:
    return int((event.time - datetime(1970, 1, 1, tzinfo=timezone.utc)) / timedelta(milliseconds=1))


# --------------------------------------------------------------------------------------------
# A strict CEF parser (ArcSight "Implementing ArcSight CEF", revision 25)
# --------------------------------------------------------------------------------------------

# The CEF keys this test accepts: the Extension Dictionary's (abridged to the names a producer of
# network security events can meet) and the custom fields' labels. Unknown keys are errors.
CEF_KEYS = {
    "act", "app", "cat", "cnt", "cs1", "cs1Label", "cs2", "cs2Label", "cs3", "cs3Label", "cs4", "cs4Label",
    "cs5", "cs5Label", "cs6", "cs6Label", "cn1", "cn1Label", "cn2", "cn2Label", "cn3", "cn3Label",
    "c6a1", "c6a1Label", "c6a2", "c6a2Label", "c6a3", "c6a3Label", "c6a4", "c6a4Label",
    "dhost", "dpt", "dst", "duser", "duid", "dvc", "dvchost", "end", "externalId", "msg", "outcome",
    "proto", "reason", "request", "rt", "shost", "spt", "src", "start", "suser", "suid",
}
CEF_KEY_RE = re.compile(r"[A-Za-z0-9_]+")


class CefError(ValueError):
    pass


def parse_cef(line: str) -> tuple[list[str], dict[str, str]]:
    """Header fields (7: version, vendor, product, version, signature id, name, severity) and
    the extension as a dict, with every escape undone; raises CefError on any deviation."""
    if not line.startswith("CEF:"):
        raise CefError("no CEF: prefix")
    if "\n" in line or "\r" in line:
        raise CefError("a raw line break in the record")
    header: list[str] = []
    field: list[str] = []
    i = 4
    while len(header) < 7:
        if i >= len(line):
            raise CefError(f"only {len(header)} header fields")
        ch = line[i]
        if ch == "\\":
            if i + 1 >= len(line) or line[i + 1] not in "\\|":
                raise CefError(f"bad header escape at {i}")
            field.append(line[i + 1])
            i += 2
            continue
        if ch == "|":
            header.append("".join(field))
            field = []
        else:
            field.append(ch)
        i += 1
    if header[0] != "0":
        raise CefError(f"version {header[0]!r}")
    if not (header[6].isdigit() and 0 <= int(header[6]) <= 10):
        raise CefError(f"severity {header[6]!r}")
    return header, _parse_extension(line[i:])


def _parse_extension(text: str) -> dict[str, str]:
    # An unescaped '=' ends a key; the key is the word before it, which starts the text or
    # follows the single space that ends the previous value.
    equals: list[int] = []
    i = 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == "=":
            equals.append(i)
        i += 1
    starts: list[tuple[int, int, str]] = []  # (key start, '=' position, key)
    for eq in equals:
        j = eq
        while j > 0 and CEF_KEY_RE.fullmatch(text[j - 1]):
            j -= 1
        key = text[j:eq]
        if not key or (j > 0 and text[j - 1] != " "):
            raise CefError(f"unescaped '=' in a value at {eq}")
        starts.append((j, eq, key))
    if text and (not starts or starts[0][0] != 0):
        raise CefError("the extension does not start with a key")
    out: dict[str, str] = {}
    for n, (_, eq, key) in enumerate(starts):
        end = starts[n + 1][0] - 1 if n + 1 < len(starts) else len(text)
        if key in out:
            raise CefError(f"duplicate key {key}")
        if key not in CEF_KEYS:
            raise CefError(f"{key} is not a CEF dictionary key")
        out[key] = _unescape(text[eq + 1:end], {"\\": "\\", "=": "=", "n": "\n", "r": "\r"})
    return out


def _unescape(value: str, escapes: dict[str, str]) -> str:
    out: list[str] = []
    i = 0
    while i < len(value):
        if value[i] == "\\":
            if i + 1 >= len(value) or value[i + 1] not in escapes:
                raise CefError(f"bad escape in value {value!r}")
            out.append(escapes[value[i + 1]])
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def test_cef_parser_reads_a_valid_record() -> None:
    assert parse_cef("CEF:0|v|p|1|sig|name|5|src=10.0.0.1 msg=a b\\=c")[1] == {"src": "10.0.0.1", "msg": "a b=c"}


@pytest.mark.parametrize("event", EVENTS, ids=IDS)
def test_cef_round_trip(event: Event) -> None:
    header, ext = parse_cef(format_cef(event))
    assert header[1:4] == ["pacsguard", "pacsguard", __version__]
    assert header[4] == event.kind
    assert header[5] and "\n" not in header[5]
    assert int(header[6]) == RFC5424_TO_10[int(event.severity)]
    assert ext["rt"] == str(_ms(event))
    assert ext["externalId"] == event.id and len(ext["externalId"]) <= 40
    assert ext["cat"] == event.kind and ext["outcome"] == event.outcome
    assert ext.get("msg", "") == event.message
    assert ext["cs5"] == event.component and ext["cs5Label"] == "Component"
    assert ext.get("cs1", "") == "\\".join(event.patient_ids)
    assert (ext.get("cs1", "").split("\\") if event.patient_ids else []) == list(event.patient_ids)
    assert (ext.get("cs2", "").split("\\") if event.study_uids else []) == list(event.study_uids)
    assert ext.get("cs3") == (event.actor.ae_title or None)
    assert ext.get("cs4") == (event.target.ae_title or None)
    assert int(ext.get("cn1", "0")) == event.sop_instance_count
    assert orjson.loads(ext.get("cs6", "{}")) == _canonical(event)["details"]
    for party, ip4, ip6, host, port, user in ((event.actor, "src", "c6a2", "shost", "spt", "suser"),
                                              (event.target, "dst", "c6a3", "dhost", "dpt", "duser")):
        address = ext.get(ip4) or ext.get(ip6) or ext.get(host)
        assert address == party.host
        if ip4 in ext:
            assert ipaddress.ip_address(ext[ip4]).version == 4
        if ip6 in ext:
            assert ipaddress.ip_address(ext[ip6]).version == 6 and ext[f"{ip6}Label"].endswith("IPv6 Address")
        assert ext.get(port) == (str(party.port) if party.port is not None else None)
        assert ext.get(user) == party.user
    if event.kind.startswith("ids.alert."):
        assert ext["act"] == event.details["action"]


# --------------------------------------------------------------------------------------------
# A strict LEEF 2.0 parser (IBM "Log Event Extended Format (LEEF)" guide, version 2.0)
# --------------------------------------------------------------------------------------------

LEEF_KEY_RE = re.compile(r"[A-Za-z0-9_]+")
LEEF_ESCAPES = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def _leef_delimiter(field: str) -> str:
    match = re.fullmatch(r"(?:0x|x)([0-9A-Fa-f]{1,4})", field)
    if match:
        return chr(int(match.group(1), 16))
    if len(field) == 1:
        return field
    raise CefError(f"bad delimiter field {field!r}")


def parse_leef(line: str) -> tuple[list[str], dict[str, str]]:
    """Header (LEEF:2.0, vendor, product, version, event id, delimiter) and attributes."""
    if "\n" in line or "\r" in line:
        raise CefError("a raw line break in the record")
    parts = line.split("|", 6)
    if len(parts) != 7 or parts[0] != "LEEF:2.0":
        raise CefError("not a LEEF:2.0 header of six fields")
    delimiter = _leef_delimiter(parts[5])
    attributes: dict[str, str] = {}
    for item in parts[6].split(delimiter):
        key, sep, value = item.partition("=")
        if not sep or not LEEF_KEY_RE.fullmatch(key):
            raise CefError(f"attribute {item!r} is not key=value")
        if key in attributes:
            raise CefError(f"duplicate key {key}")
        attributes[key] = _unescape(value, LEEF_ESCAPES)
    return parts[:6], attributes


def _simple_date_format(pattern: str) -> str:
    """The Java SimpleDateFormat letters LEEF's devTimeFormat uses, as strptime directives."""
    out = pattern.replace("'T'", "T")
    for java, c in (("yyyy", "%Y"), ("MM", "%m"), ("dd", "%d"), ("HH", "%H"), ("mm", "%M"),
                    ("ss", "%S"), ("SSS", "%f"), ("Z", "%z")):
        out = out.replace(java, c)
    return out


def test_leef_parser_reads_a_valid_record() -> None:
    assert parse_leef("LEEF:2.0|v|p|1|e|^|a=1^b=x=y")[1] == {"a": "1", "b": "x=y"}


MALFORMED = [
    (parse_cef, "CEF:0|v|p|1|sig|name|5"),                    # six header fields
    (parse_cef, "CEF:1|v|p|1|sig|name|5|"),                   # unknown version
    (parse_cef, "CEF:0|v|p|1|sig|name|11|"),                  # severity out of range
    (parse_cef, "CEF:0|v|p\\x|1|sig|name|5|"),                # undefined header escape
    (parse_cef, "CEF:0|v|p|1|sig|name|5|msg=a=b"),            # unescaped '=' in a value
    (parse_cef, "CEF:0|v|p|1|sig|name|5|msg=a\\tb"),          # undefined extension escape
    (parse_cef, "CEF:0|v|p|1|sig|name|5|msg=a\nb"),           # raw newline
    (parse_cef, "CEF:0|v|p|1|sig|name|5|msg=a msg=b"),        # duplicate key
    (parse_cef, "CEF:0|v|p|1|sig|name|5|patient=1"),          # not a dictionary key
    (parse_cef, "CEF:0|v|p|1|sig|name|5| msg=a"),             # extension starts with a space
    (parse_leef, "LEEF:1.0|v|p|1|e|a=1"),                     # not LEEF 2.0
    (parse_leef, "LEEF:2.0|v|p|1|e|xZZ|a=1"),                 # bad delimiter field
    (parse_leef, "LEEF:2.0|v|p|1|e|x09|a=1\tnovalue"),        # attribute without '='
    (parse_leef, "LEEF:2.0|v|p|1|e|x09|a=1\ta=2"),            # duplicate key
    (parse_leef, "LEEF:2.0|v|p|1|e|x09|a=\\q"),               # undefined escape
    (parse_leef, "LEEF:2.0|v|p|1|e|x09|a=1\n"),               # raw newline
]


@pytest.mark.parametrize(("parse", "record"), MALFORMED)
def test_strict_parsers_reject_malformed_records(parse: Callable[[str], object], record: str) -> None:
    with pytest.raises(CefError):
        parse(record)


@pytest.mark.parametrize("event", EVENTS, ids=IDS)
def test_leef_round_trip(event: Event) -> None:
    header, attrs = parse_leef(format_leef(event))
    assert header[1:4] == ["pacsguard", "pacsguard", __version__]
    assert header[4] == event.kind and _leef_delimiter(header[5]) == "\t"
    when = datetime.strptime(attrs["devTime"], _simple_date_format(attrs["devTimeFormat"]))
    assert when == event.time.replace(microsecond=event.time.microsecond // 1000 * 1000)
    assert 1 <= int(attrs["sev"]) <= 10 and int(attrs["sev"]) == RFC5424_TO_10[int(event.severity)]
    assert attrs["cat"] == event.kind and attrs["eventId"] == event.id and attrs["outcome"] == event.outcome
    assert attrs.get("msg", "") == event.message
    assert attrs["component"] == event.component
    assert (attrs["patientIds"].split("\\") if "patientIds" in attrs else []) == list(event.patient_ids)
    assert (attrs["studyUids"].split("\\") if "studyUids" in attrs else []) == list(event.study_uids)
    assert int(attrs.get("sopInstances", "0")) == event.sop_instance_count
    assert orjson.loads(attrs.get("details", "{}")) == _canonical(event)["details"]
    for party, prefix, user in ((event.actor, "src", "usrName"), (event.target, "dst", "dstUsrName")):
        assert (attrs.get(prefix) or attrs.get(f"{prefix}HostName")) == party.host
        if prefix in attrs:
            ipaddress.ip_address(attrs[prefix])
        assert attrs.get(f"{prefix}Port") == (str(party.port) if party.port is not None else None)
        assert attrs.get(user) == party.user
        assert attrs.get(f"{prefix}AETitle") == (party.ae_title or None)


# --------------------------------------------------------------------------------------------
# ECS: field types and allowed values from the ECS 8.x field reference
# --------------------------------------------------------------------------------------------

# Every ECS field pacsguard writes, with its ECS type (ECS field reference, 8.x).
ECS_FIELDS = {
    "@timestamp": "date", "message": "match_only_text", "labels": "object", "ecs.version": "keyword",
    "event.id": "keyword", "event.kind": "keyword", "event.category": "keyword", "event.type": "keyword",
    "event.action": "keyword", "event.outcome": "keyword", "event.severity": "long", "event.dataset": "keyword",
    "event.module": "keyword", "event.provider": "keyword",
    "log.level": "keyword", "log.syslog.severity.code": "long", "log.syslog.severity.name": "keyword",
    "observer.vendor": "keyword", "observer.product": "keyword", "observer.version": "keyword",
    "source.address": "keyword", "source.ip": "ip", "source.domain": "keyword", "source.port": "long",
    "destination.address": "keyword", "destination.ip": "ip", "destination.domain": "keyword",
    "destination.port": "long",
    "user.name": "keyword", "user.target.name": "keyword", "rule.id": "keyword", "rule.name": "keyword",
}
ECS_ARRAYS = {"event.category", "event.type"}
ECS_KINDS = {"alert", "asset", "enrichment", "event", "metric", "state", "pipeline_error", "signal"}
ECS_OUTCOMES = {"failure", "success", "unknown"}
# event.category -> the event.type values the ECS reference expects with it.
ECS_CATEGORY_TYPES = {
    "configuration": {"access", "change", "creation", "deletion", "info"},
    "intrusion_detection": {"allowed", "denied", "info"},
    "network": {"access", "allowed", "connection", "denied", "end", "info", "protocol", "start"},
    "process": {"access", "change", "end", "info", "start"},
}
CUSTOM_NAMESPACE = "pacsguard"


def _flatten(doc: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if name == "labels" or name == CUSTOM_NAMESPACE:
            yield name, value
        elif isinstance(value, dict):
            yield from _flatten(value, f"{name}.")
        else:
            yield name, value


def _check_ecs_type(name: str, kind: str, value: Any) -> None:
    values = value if name in ECS_ARRAYS else [value]
    assert isinstance(values, list) and values, name
    for item in values:
        if kind in ("keyword", "match_only_text"):
            assert isinstance(item, str) and item, name
        elif kind == "long":
            assert isinstance(item, int) and not isinstance(item, bool), name
        elif kind == "ip":
            ipaddress.ip_address(item)
        elif kind == "date":
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z", item), item
        elif kind == "object":
            assert isinstance(item, dict) and all(isinstance(v, str) and "." not in k for k, v in item.items())


@pytest.mark.parametrize("event", EVENTS, ids=IDS)
def test_ecs_fields_are_real_and_typed(event: Event) -> None:
    doc = orjson.loads(format_ecs(event))
    for name, value in _flatten(doc):
        if name == CUSTOM_NAMESPACE:
            continue  # custom fields, only under the namespace ECS leaves to users
        assert name in ECS_FIELDS, f"{name} is not an ECS field pacsguard may write"
        _check_ecs_type(name, ECS_FIELDS[name], value)
    ev = doc["event"]
    assert ev["kind"] in ECS_KINDS and ev["outcome"] in ECS_OUTCOMES
    for category in ev["category"]:
        assert set(ev["type"]) <= ECS_CATEGORY_TYPES[category], (category, ev["type"])
    assert doc["ecs"]["version"].startswith("8.")

    canonical = _canonical(event)
    assert doc["@timestamp"] == canonical["time"] and ev["id"] == event.id and ev["action"] == event.kind
    assert ev["outcome"] == {"success": "success", "unknown": "unknown"}.get(event.outcome, "failure")
    assert doc["log"]["syslog"]["severity"]["code"] == int(event.severity)
    assert doc.get("message", "") == event.message
    for field in ("actor", "target", "patient_ids", "study_uids", "sop_instance_count", "details"):
        assert doc[CUSTOM_NAMESPACE][field] == canonical[field]
    assert doc[CUSTOM_NAMESPACE]["outcome"] == event.outcome
    for party, side in ((event.actor, "source"), (event.target, "destination")):
        assert doc.get(side, {}).get("address") == party.host
        assert doc.get(side, {}).get("port") == party.port
    assert doc.get("user", {}).get("name") == event.actor.user
    assert doc.get("user", {}).get("target", {}).get("name") == event.target.user
    if event.kind.startswith("ids.alert."):
        assert ev["kind"] == "alert" and doc["rule"]["id"] == event.details["rule_id"]
        assert "intrusion_detection" in ev["category"]


def test_ecs_document_is_valid_utf8_json_with_sorted_keys() -> None:
    text = format_ecs(EVENTS[7])
    assert text == orjson.dumps(orjson.loads(text), option=orjson.OPT_SORT_KEYS).decode()
    assert "\n" not in text  # one document per line in a JSON-lines file


# --------------------------------------------------------------------------------------------
# The sinks with a format
# --------------------------------------------------------------------------------------------

def test_formatter_names() -> None:
    assert FORMAT_NAMES == ("json", "cef", "leef", "ecs")
    assert formatter("json")(EVENTS[0]) == EVENTS[0].to_json()
    with pytest.raises(ValueError, match="unknown event format"):
        formatter("xml")


def test_config_format_keys() -> None:
    assert SyslogConfig(host="siem").format == "json"
    assert SyslogConfig(host="siem", format="leef").format == "leef"
    assert JsonLinesConfig(path=Path("x")).format == "json"
    with pytest.raises(ValueError):
        JsonLinesConfig(path=Path("x"), format="cef")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SyslogConfig(host="siem", format="xml")  # type: ignore[arg-type]


def test_rfc5424_msg_per_format() -> None:
    event = EVENTS[7]
    default = format_rfc5424(event, hostname="gw", procid=1)
    assert default == format_rfc5424(event, hostname="gw", procid=1, message_format="json")
    head, _, msg = format_rfc5424(event, hostname="gw", procid=1, message_format="cef").partition(b"] CEF:0|")
    assert head.startswith(b"<86>1 ") and b"[pacsguard@32473 kind=" in head  # the SD element stays
    assert parse_cef("CEF:0|" + msg.decode("utf-8"))[1]["externalId"] == event.id
    leef = format_rfc5424(event, hostname="gw", message_format="leef")
    assert b"\xef\xbb\xbf" not in leef and leef.split(b"] ", 1)[1].startswith(b"LEEF:2.0|")
    ecs = format_rfc5424(event, hostname="gw", message_format="ecs")
    assert orjson.loads(ecs.split(b"\xef\xbb\xbf", 1)[1])["event"]["id"] == event.id


def test_jsonl_ecs_lines(tmp_path: Path) -> None:
    path = tmp_path / "ecs.json"
    with JsonLinesSink(path, message_format="ecs") as sink:
        sink.emit(EVENTS)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [orjson.loads(line)["event"]["id"] for line in lines] == [e.id for e in EVENTS]
    with pytest.raises(ValueError, match="'json' or 'ecs'"):
        JsonLinesSink(tmp_path / "x", message_format="cef")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown event format"):
        SyslogSink("127.0.0.1", 9, message_format="xml")  # type: ignore[arg-type]


def test_syslog_cef_reaches_rsyslog(tmp_path: Path) -> None:
    collector = Rsyslog(tmp_path / "rsyslog")
    collector.start()
    try:
        sink = SyslogSink("127.0.0.1", collector.port, transport="tcp", hostname="gw-cef", message_format="cef")
        sink.emit(EVENTS)
        sink.close(timeout=20)
        assert sink.sent == len(EVENTS) and sink.dropped == 0
        end = time.monotonic() + 20
        lines: list[bytes] = []
        while time.monotonic() < end:
            lines = collector.raw.read_bytes().splitlines() if collector.raw.exists() else []
            if len(lines) >= len(EVENTS):
                break
            time.sleep(0.05)
    finally:
        collector.stop()
    assert len(lines) == len(EVENTS), collector.console.read_text(errors="replace")[-2000:]
    for line, event in zip(lines, EVENTS, strict=True):
        # rsyslog got one RFC 5424 message per event whose MSG is the whole CEF record.
        record = line.decode("utf-8").split("] ", 1)[1]
        header, ext = parse_cef(record)
        assert header[4] == event.kind and ext["externalId"] == event.id
        # CEF leaves a tab raw; rsyslog writes received control characters as #ooo.
        assert ext.get("msg", "") == event.message.replace("\t", "#011")
        assert ext.get("suser") == event.actor.user
    parsed = collector.parsed.read_text().splitlines()
    assert [p.split("|")[3] for p in parsed] == [e.kind[:32] for e in EVENTS]
