"""PS3.15 A.5 messages (every event ID), RFC 3881 and FHIR payloads to Events; hostile payloads."""

from __future__ import annotations

import base64
import random
import time
from datetime import datetime, timezone
from typing import Any

import orjson
import pytest
from atna_corpus import (
    BILLION_LAUGHS,
    EXTERNAL_ENTITY,
    LEGACY_RFC3881,
    PATIENT_CX,
    STUDY,
    every_event_id,
    fhir_patient_read,
    record,
)
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle
from hypothesis import given, settings
from hypothesis import strategies as st

from pacsguard.atna.ingest import Sender, frame_event, frame_events, payload_event
from pacsguard.atna.message import codes, dicom_xml, fhir, schema
from pacsguard.atna.message.mapping import record_from_event

SENDER = Sender("10.20.0.9", 50123, "tls", "octet-counting")


def syslog(payload: bytes, msgid: bytes = b"IHE+RFC-3881") -> bytes:
    return b"<85>1 2026-12-03T09:30:16Z vna1 audit 1 " + msgid + b" - " + payload


@pytest.mark.parametrize("event_id", sorted(codes.EVENT_IDS))
def test_every_event_id_passes_the_schema_check_and_becomes_its_event(event_id: str) -> None:
    xml = every_event_id()[event_id]
    assert schema.check(dicom_xml.parse_xml(xml)) == []
    frame = syslog(xml)
    ev = frame_event(SENDER, frame)
    meaning = codes.EVENT_IDS[event_id][0]
    assert ev.kind == "atna.audit." + codes.slug(meaning)
    assert ev.details["raw"].encode() == frame  # byte for byte
    assert ev.details["event_id"] == {"code": event_id, "system": "DCM", "meaning": meaning}
    assert ev.actor.user == "jsmith" and ev.actor.host == "10.20.0.7"
    assert ev.time == datetime(2026, 12, 3, 9, 30, 15, tzinfo=timezone.utc)
    assert ev.details["purposes"][0]["code"] == "TREAT"
    if event_id in schema.NEEDS_PATIENT:
        assert ev.patient_ids[:2] == ("PID-0042", "PID-0042^^^STMARY&1.2.840.99999.1&ISO")
        assert ev.details["patients"] == [{"id": "PID-0042", "authority": "STMARY&1.2.840.99999.1&ISO",
                                           "cx": PATIENT_CX}]
    if event_id in schema.NEEDS_STUDY:
        assert ev.study_uids == (STUDY,) and ev.sop_instance_count == 3
    # The stored details rebuild the same message.
    assert record_from_event(ev) == record(event_id)


def test_schema_check_finds_what_is_wrong() -> None:
    good = every_event_id()["110104"]
    broken = (good.replace(b'EventActionCode="C"', b'EventActionCode="E"')
              .replace(b'EventOutcomeIndicator="0"', b'EventOutcomeIndicator="3"')
              .replace(b"<Accession ", b"<Bogus "))
    problems = schema.check(dicom_xml.parse_xml(broken))
    assert any("EventOutcomeIndicator" in p for p in problems)
    assert any("<Bogus> is not allowed" in p for p in problems)
    no_patient = good.replace(b'csd-code="2" codeSystemName="RFC-3881"', b'csd-code="11" codeSystemName="RFC-3881"')
    wrong_action = good.replace(b'EventActionCode="C"', b'EventActionCode="E"')
    assert any("patient participant object" in p for p in schema.check(dicom_xml.parse_xml(no_patient)))
    assert any("EventActionCode E not allowed" in p for p in schema.check(dicom_xml.parse_xml(wrong_action)))


def test_legacy_rfc3881_form() -> None:
    ev = frame_event(SENDER, syslog(LEGACY_RFC3881, b"DICOM+RFC3881"))
    assert ev.kind == "atna.audit.user-authentication"
    assert ev.details["syntax"] == "rfc3881"
    assert ev.details["event_types"] == [{"code": "110122", "system": "DCM", "meaning": "Login"}]
    assert ev.outcome == "minor-failure"
    assert ev.actor.user == "tech7" and ev.actor.host == "ws-ct-3"
    assert ev.time == datetime(2026, 12, 3, 7, 15, tzinfo=timezone.utc)
    assert ev.details["source"] == {"id": "CTSCANNER3", "types": [{"code": "1"}]}


def test_billion_laughs_is_refused_cheaply_and_kept_raw() -> None:
    started = time.perf_counter()
    ev = frame_event(SENDER, syslog(BILLION_LAUGHS))
    assert time.perf_counter() - started < 0.05
    assert ev.kind == "atna.message.unparsed" and ev.details["problem"] == "entity-expansion"
    assert ev.details["raw"].encode() == syslog(BILLION_LAUGHS)
    ext = frame_event(SENDER, syslog(EXTERNAL_ENTITY))
    assert ext.details["problem"] == "entity-expansion" and "root:" not in ext.to_json()


def test_bad_encodings_and_junk_are_stored_raw() -> None:
    latin1_claiming_utf8 = b'<?xml version="1.0" encoding="UTF-8"?><AuditMessage><X a="M\xfcller"/></AuditMessage>'
    ev = frame_event(SENDER, syslog(latin1_claiming_utf8))
    assert ev.details["problem"] == "bad-encoding"
    assert base64.b64decode(ev.details["raw_base64"]) == syslog(latin1_claiming_utf8)
    assert frame_event(SENDER, syslog(b"<AuditMessage><EventIdent")).details["problem"] == "unparsable-xml"
    assert frame_event(SENDER, syslog(b"<Other/>")).details["problem"] == "not-audit-message"
    assert frame_event(SENDER, b"no pri at all").details["problem"] == "not-syslog"
    assert frame_event(SENDER, syslog(b'{"resourceType": "Patient"}')).details["problem"] == "not-fhir"


@pytest.mark.parametrize(("where", "value"), [
    ("action", True), ("outcomeDesc", ["x"]), ("agent.name", 5), ("agent.network.address", {"ip": 1}),
    ("entity.name", 1.5), ("entity.type.code", 1), ("type.display", False), ("source.site", [])])
def test_a_fhir_element_of_the_wrong_json_type_is_not_fhir_and_kept_raw(where: str, value: object) -> None:
    """FHIR's strings, codes and uris are JSON strings (FHIR R4 2.24.0.1): another type (once, a bool
    `action` raised a TypeError out of the reader, losing the frames read with it) is refused as
    not-fhir, naming the element, and the message is kept raw."""
    resource = fhir_patient_read()
    element: object = resource
    *path, key = where.split(".")
    for step in path:
        element = element[step]  # type: ignore[index]
        if isinstance(element, list):
            element = element[0]
    element[key] = value  # type: ignore[index]
    frame = syslog(orjson.dumps(resource))
    ev = frame_event(SENDER, frame)
    assert ev.kind == "atna.message.unparsed" and ev.details["problem"] == "not-fhir", ev.details
    assert f"{key} is a JSON" in ev.details["error"]
    assert ev.details["raw"].encode() == frame


def test_a_message_the_reader_fails_on_unexpectedly_is_kept_raw_as_unreadable(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Whatever a reader raises on one message (a bug, not a rule), that message is stored raw as
    unreadable and the frames read with it are not lost."""
    from pacsguard.atna import ingest

    def broken(details, time):  # type: ignore[no-untyped-def]
        if details["event_id"]["code"] == "110110":
            raise ValueError("a reader bug")
        return real(details, time)

    real = ingest.event_of
    monkeypatch.setattr(ingest, "event_of", broken)
    good = every_event_id()["110112"]
    frames = [syslog(good), syslog(orjson.dumps(fhir_patient_read())), syslog(good)]
    events = frame_events(SENDER, frames)
    assert [e.kind for e in events][::2] == [frame_event(SENDER, frames[0]).kind] * 2
    assert events[1].kind == "atna.message.unparsed" and events[1].details["problem"] == "unreadable"
    assert events[1].details["error"] == "ValueError: a reader bug"
    assert events[1].details["raw"].encode() == frames[1]


_ODD_JSON: list[object] = [None, 0, -1, 1.5, 1e300, True, "", "x" * 300, [], {}, [None], {"a": 1}]
_ODD_XML = [b"<", b">", b"&", b'"', b"\x00", b"]]>", b"<!--", b"&#0;", b"&#x110000;", b"\xff\xfe", b"<a>" * 40]


def _mutate_json(rnd: random.Random, value: object) -> object:
    """``value`` (a JSON document) with one or two of its members, at any depth, dropped or
    replaced by a JSON value of another type: one wrong member at a time, so that it is the one
    the reader meets."""
    places: list[tuple[dict[str, object] | list[object], str | int]] = []

    def walk(node: object) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, child in items:
            places.append((node, key))  # type: ignore[arg-type]
            walk(child)

    walk(value)
    for container, key in rnd.sample(places, min(len(places), rnd.randint(1, 2))):
        if isinstance(container, dict) and rnd.random() < 0.2:
            container.pop(key, None)  # type: ignore[call-overload]
        else:
            container[key] = rnd.choice(_ODD_JSON)  # type: ignore[index]
    return value


def _mutate_bytes(rnd: random.Random, data: bytes) -> bytes:
    """``data`` with a few bytes changed, cut out, or markup and copies of itself put in."""
    out = bytearray(data)
    for _ in range(rnd.randint(1, 8)):
        at = rnd.randrange(len(out) + 1)
        op = rnd.random()
        if op < 0.3 and at < len(out):
            out[at] = rnd.randrange(256)
        elif op < 0.5:
            del out[at:at + rnd.randint(1, 50)]
        elif op < 0.75:
            out[at:at] = rnd.choice(_ODD_XML)
        else:
            start = rnd.randrange(len(out) + 1)
            out[at:at] = out[start:start + rnd.randint(1, 200)]
    return bytes(out)


@settings(max_examples=500, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32))
def test_mutated_messages_always_become_an_event(seed: int) -> None:
    """FHIR AuditEvents with members of the wrong JSON type, A.5 and RFC 3881 XML with bytes
    changed, cut or inserted: each frame becomes one Event (read or unparsed), none raises. (A
    seeded PRNG, not st.randoms(): Hypothesis's own leans towards its first choices.)"""
    rnd = random.Random(seed)
    xml = rnd.choice([*every_event_id().values(), LEGACY_RFC3881])
    payloads = [orjson.dumps(_mutate_json(rnd, fhir_patient_read())), _mutate_bytes(rnd, xml),
                _mutate_bytes(rnd, orjson.dumps(fhir_patient_read()))]
    events = frame_events(SENDER, [syslog(p) for p in payloads])
    assert len(events) == len(payloads)
    for ev in events:
        assert ev.kind.startswith("atna.") and ev.to_json()
        if ev.kind == "atna.message.unparsed":
            assert ev.details["problem"] != "unreadable", ev.details["error"]


def test_latin1_declared_is_read() -> None:
    xml = LEGACY_RFC3881.replace(b'<?xml version="1.0"?>', b'<?xml version="1.0" encoding="ISO-8859-1"?>') \
        .replace(b'UserID="tech7"', b'UserID="M\xfcller"')
    ev = frame_event(SENDER, syslog(xml))
    assert ev.actor.user == "Müller"
    assert base64.b64decode(ev.details["raw_base64"]) == syslog(xml)


def test_fhir_auditevent_in_and_out_is_valid_r4() -> None:
    resource = fhir_patient_read()
    AuditEvent.model_validate(resource)  # the corpus itself is valid
    ev = payload_event({"sender": SENDER.to_dict()}, orjson.dumps(resource), [], SENDER)
    assert ev.kind == "atna.audit.patient-record"
    assert ev.patient_ids[0] == "PID-0042" and "PID-0042^^^&1.2.840.99999.1&ISO" in ev.patient_ids
    # The agent's identity (who.identifier) is the user; its name is a display name, kept beside it.
    assert ev.actor.user == "nurse.kim" and ev.actor.host == "10.30.1.4"
    assert ev.details["participants"][0]["user_name"] == "Kim"
    out = fhir.render(record_from_event(ev), ev.id)
    AuditEvent.model_validate(out)
    for event_id in sorted(codes.EVENT_IDS):
        AuditEvent.model_validate(fhir.render(record(event_id), "x" + event_id))
    Bundle.model_validate(fhir.bundle([out], "https://repo.example/fhir"))


def test_the_user_is_the_user_id_and_the_display_name_is_kept_beside_it() -> None:
    """UserID is the user's unique identity, UserName a display name (PS3.15 A.5.2.1, RFC 3881
    5.2.1): the Event's user is the UserID. In a FHIR AuditEvent it is who.identifier.value, else
    who.reference; who.display only when there is nothing else, and otherwise the display name
    when the agent has no name."""
    xml = every_event_id()["110110"].replace(b'UserID="jsmith" UserName="jsmith"',
                                             b'UserID="jsmith" UserName="John Smith"')
    assert b"John Smith" in xml
    ev = frame_event(SENDER, syslog(xml))
    assert ev.actor.user == "jsmith" and "jsmith" in ev.message
    assert ev.details["participants"][0]["user_name"] == "John Smith"

    def agent_of(**agent: Any) -> tuple[str | None, str | None]:
        resource = fhir_patient_read()
        resource["agent"] = [{"requestor": True, **agent}]
        got = payload_event({"sender": SENDER.to_dict()}, orjson.dumps(resource), [], SENDER)
        return got.actor.user, got.details["participants"][0].get("user_name")

    assert agent_of(who={"identifier": {"value": "kim7"}, "display": "Kim Park"}) == ("kim7", "Kim Park")
    assert agent_of(who={"identifier": {"value": "kim7"}, "display": "K. P."}, name="Kim Park") == ("kim7", "Kim Park")
    assert agent_of(who={"reference": "Practitioner/17", "display": "Kim Park"}) == ("Practitioner/17", "Kim Park")
    assert agent_of(who={"display": "Kim Park"}) == ("Kim Park", None)


def test_fhir_rendering_of_details_and_of_an_entity_without_an_id_type() -> None:
    """ITI-81's AuditEvent: an A.5 ParticipantObjectDetail value, xs:base64Binary (PS3.15 A.5.1),
    is entity.detail.valueBase64Binary (FHIR R4 AuditEvent.entity.detail.value[x]); a FHIR patient
    entity sent without an identifier type gets none made up (its type, 1 Person, and role, 1
    Patient, say it is the patient), and keeps its system as the patient's assigning authority."""
    query = frame_event(SENDER, syslog(every_event_id()["110112"]))
    (entity,) = fhir.render(record_from_event(query), query.id)["entity"]
    assert entity["detail"] == [{"type": "TransferSyntax",
                                 "valueBase64Binary": base64.b64encode(b"1.2.840.10008.1.2").decode()}]
    AuditEvent.model_validate(fhir.render(record_from_event(query), query.id))

    ev = payload_event({"sender": SENDER.to_dict()}, orjson.dumps(fhir_patient_read()), [], SENDER)
    out = fhir.render(record_from_event(ev), ev.id)
    (patient,) = out["entity"]
    assert "type" not in patient["what"]["identifier"]
    assert patient["type"] == {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"}
    assert patient["what"]["identifier"]["value"] == "PID-0042^^^&1.2.840.99999.1&ISO"
    assert ev.details["patients"] == [{"id": "PID-0042", "authority": "&1.2.840.99999.1&ISO",
                                       "cx": "PID-0042^^^&1.2.840.99999.1&ISO"}]
    AuditEvent.model_validate(out)


def test_a_time_outside_the_datetime_range_once_in_utc_is_flagged_not_fatal() -> None:
    """0001-01-01T00:00:00+05:00 is a valid RFC 3339 / xsd:dateTime whose UTC instant falls before
    year 1: converting it raised OverflowError, which lost the whole read with a traceback."""
    early = "0001-01-01T00:00:00+05:00"
    message = every_event_id()["110104"].replace(b'EventDateTime="', b'EventDateTime="' + early.encode() + b'" x="')
    frames = [b"<85>1 " + early.encode() + b" h a - IHE+RFC-3881 - " + every_event_id()["110110"],
              syslog(message), syslog(every_event_id()["110112"])]
    events = frame_events(Sender("10.0.0.9", 514, "udp"), frames)
    assert [e.kind for e in events] == ["atna.audit.patient-record", "atna.audit.instances-transferred",
                                        "atna.audit.query"]
    assert "bad-timestamp" in events[0].details["flags"]
    assert events[1].details["flags"] == ["bad-event-time"]  # stored at its time of receipt
    assert events[1].time.year >= 2026 and events[1].patient_ids[0] == "PID-0042"


def test_a_cx_patient_is_found_by_each_spelling_of_its_assigning_authority(tmp_path: Any) -> None:
    """ID^^^NAMESPACE&OID&ISO is also found as ID^^^NAMESPACE and ID^^^&OID&ISO (the spellings PIX
    and XDS consumers use); once, only the bare ID and the full CX found it. Another authority
    does not find it."""
    from pacsguard.store import EventQuery, EventStore

    store = EventStore.open(str(tmp_path / "s.db"), create=True)
    try:
        store.append([frame_event(SENDER, syslog(every_event_id()["110104"]))])
        for spelling, found in [("PID-0042", 1), ("PID-0042^^^STMARY&1.2.840.99999.1&ISO", 1),
                                ("PID-0042^^^STMARY", 1), ("PID-0042^^^&1.2.840.99999.1&ISO", 1),
                                ("PID-0042^^^OTHER", 0), ("PID-0042^^^&1.2.3&ISO", 0)]:
            assert len(list(store.search(EventQuery(patient=spelling, limit=None)))) == found, spelling
    finally:
        store.close()


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_xml_in_utf16_with_its_byte_order_mark_is_read(codec: str) -> None:
    """XML 1.0 4.3.3: an entity in UTF-16 begins with a byte order mark. It was stored unread as
    not-audit-message."""
    text = every_event_id()["110104"].decode().replace("encoding='utf-8'", "encoding='UTF-16'")
    bom = b"\xff\xfe" if codec.endswith("le") else b"\xfe\xff"
    event = frame_event(SENDER, syslog(bom + text.encode(codec)))
    assert event.kind == "atna.audit.instances-transferred" and event.patient_ids[0] == "PID-0042"
    assert "raw_base64" in event.details  # the evidence kept byte for byte
