"""Round 6, the RESTful ATNA endpoint and FHIR AuditEvent intake (issue #18): refusals aggregated and
token guessing throttled, FHIR JSON read strictly (types, duplicate members, `recorded` an instant,
UTF-8), identifiers searched as they were posted, Bundles POSTed to the FHIR base (ITI-20's FHIR
feed), XML refused on /AuditEvent, and a client that reads no answer closed. Loopback 127.0.68.0/24."""

from __future__ import annotations

import contextlib
import copy
import json
import socket
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from atna_corpus import every_event_id, fhir_patient_read
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from receiver import running

from pacsguard.atna.ingest import Sender, payload_event
from pacsguard.atna.query import AuditQuery, QueryError
from pacsguard.atna.sources import count_sources
from pacsguard.events.model import Event
from store_helpers import new_store

TOKEN = "round6-fhir-token-0123456789"
SENDER = Sender("127.0.68.9", 40000, "http")


def endpoint(host: str, port: int) -> dict[str, Any]:
    return {"http": {"host": host, "port": port, "token": {"env": "ATNA_TOKEN"}}}


def request(host: str, port: int, method: str, target: str, body: bytes = b"", *, token: str = TOKEN,
            content_type: str = "application/fhir+json") -> tuple[int, dict[str, str], Any]:
    """One request on its own connection: status, header fields (lower case), the JSON body."""
    head = (f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.sendall(head.encode() + body)
        raw = b""
        while chunk := conn.recv(65536):
            raw += chunk
    head_text, _, answer = raw.partition(b"\r\n\r\n")
    lines = head_text.decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split(" ")[1]), fields, json.loads(answer) if answer else None


def audit_event(pid: str = "PX1", system: str | None = None) -> dict[str, Any]:
    event = fhir_patient_read()
    ident: dict[str, str] = {"value": pid, **({"system": system} if system else {})}
    event["entity"] = [{"what": {"identifier": ident}, "type": {"code": "1"}, "role": {"code": "1"}}]
    return event


def posted(resource: dict[str, Any] | bytes) -> Event:
    """The Event a POSTed body becomes (as the endpoint and the syslog listeners read it)."""
    body = resource if isinstance(resource, bytes) else json.dumps(resource).encode()
    return payload_event({"sender": SENDER.to_dict()}, body, [], SENDER)


def problem_of(event: Event) -> tuple[str, str]:
    assert event.kind == "atna.message.unparsed", event.kind
    return str(event.details["problem"]), str(event.details["error"])


def found(event: Event, patient: str) -> bool:
    return AuditQuery.parse({"patient": [patient]}).matches(event)


# --- item 7, 8, 6, 12: FHIR JSON read strictly ----------------------------------------------------------


def test_a_fhir_element_of_the_wrong_json_type_is_not_fhir() -> None:
    """FHIR R4 json.html: a code, a string, an identifier's value are JSON strings; a number or an
    object there was read as text (str(110110)) and stored as a valid AuditEvent."""
    cases: dict[str, Any] = {}
    a = audit_event()
    a["type"]["code"] = 110110
    cases["type.code a number"] = a
    a = audit_event()
    a["type"]["code"] = {"x": 1}
    cases["type.code an object"] = a
    a = audit_event()
    a["subtype"] = [{"code": 110120}]
    cases["subtype.code a number"] = a
    a = audit_event()
    a["entity"][0]["detail"] = [{"type": "x", "valueString": 5}]
    cases["detail.valueString a number"] = a
    a = audit_event()
    a["source"] = {"observer": {"identifier": {"value": 42}}}
    cases["observer.identifier.value a number"] = a
    for name, resource in cases.items():
        problem, error = problem_of(posted(resource))
        assert problem == "not-fhir", name
        assert "not a string" in error, (name, error)


def test_a_json_member_named_twice_is_refused() -> None:
    """FHIR R4 JSON: property names SHALL be unique; the patient PFIRST, then PSECOND in one object,
    was stored as PSECOND while the raw message names both."""
    body = json.dumps(audit_event("PFIRST")).replace('"value": "PFIRST"', '"value": "PFIRST", "value": "PSECOND"')
    problem, error = problem_of(posted(body.encode()))
    assert problem == "not-fhir" and "'value' is given twice" in error


@pytest.mark.parametrize("recorded", ["2026-12-03T10:00:00", "2026-12-03", "2026-12-03T10:00Z",
                                      "20261203T100000Z", "2026-W49-4T10:00:00Z", "2026-12-03 10:00:00Z",
                                      "2026-02-30T10:00:00Z"])
def test_recorded_must_be_a_fhir_instant(recorded: str) -> None:
    """AuditEvent.recorded is an instant (R4 2.24.0.1): a zone required, to the second. A time
    without a zone was taken as UTC (hours off for a sender in local time), a date as midnight."""
    a = audit_event()
    a["recorded"] = recorded
    problem, error = problem_of(posted(a))
    assert problem == "not-fhir" and f"recorded {recorded!r}" in error


def test_a_leap_second_and_a_fraction_with_an_offset_are_instants() -> None:
    a = audit_event()
    a["recorded"] = "2026-12-31T23:59:60Z"
    leap = posted(a)
    assert leap.kind == "atna.audit.patient-record"
    assert leap.time.isoformat().startswith("2026-12-31T23:59:59.999999")
    a["recorded"] = "2026-12-03T10:00:00.123456789+01:00"
    assert posted(a).time.isoformat() == "2026-12-03T09:00:00.123456+00:00"


def test_a_body_not_in_utf8_is_bad_encoding_and_a_byte_order_mark_is_ignored() -> None:
    """RFC 8259 8.1: JSON between systems is UTF-8, and a parser may ignore a BOM. A Latin-1 body
    was refused as "str is not valid UTF-8: surrogates not allowed" (not-fhir), a BOM as "neither
    XML nor JSON"."""
    a = audit_event()
    a["agent"][0]["who"]["identifier"]["value"] = "Jos\u00e9"
    latin1 = json.dumps(a, ensure_ascii=False).encode("latin-1")
    problem, error = problem_of(posted(latin1))
    at = latin1.index(b"\xe9")
    assert problem == "bad-encoding" and f"not UTF-8 (RFC 8259 8.1): octet {at} (e9" in error
    assert "surrogate" not in error
    counts = count_sources([posted(latin1)])[0]
    assert counts.not_fhir == 1 and counts.unparsable_xml == 0  # no XML was sent
    with_bom = posted(b"\xef\xbb\xbf" + json.dumps(audit_event("BOM1")).encode())
    assert with_bom.kind == "atna.audit.patient-record" and "BOM1" in with_bom.patient_ids


# --- items 4, 5 and the empty patient: searched as posted -----------------------------------------------


def test_a_posted_identifier_with_hl7_delimiters_is_found_by_its_token() -> None:
    """The POST escapes ^ & ~ in a patient identifier (HL7 v2.5 2.7.4); the search token
    system|value did not, so the patient posted was not found by the same token."""
    for value in ("123^45", "A&B", "C~D"):
        event = posted(audit_event(value, "urn:oid:1.2.3.4"))
        assert found(event, f"urn:oid:1.2.3.4|{value}"), value
        assert not found(event, f"urn:oid:1.2.3.5|{value}")
    event = posted(audit_event("U2", "http://h.example/mrn?a=1&b=2"))
    assert found(event, "http://h.example/mrn?a=1&b=2|U2")
    assert found(posted(audit_event("E^F")), "|E^F")


def test_an_entity_named_by_reference_and_identifier_is_found_by_either() -> None:
    """entity.what may carry both (FHIR R4 2.3.0); only the identifier was kept, so
    patient=Patient/REF77 did not find the access."""
    a = audit_event("MRN77", "urn:oid:1.2.840.99")
    a["entity"][0]["what"]["reference"] = "Patient/REF77"
    event = posted(a)
    assert found(event, "Patient/REF77") and found(event, "REF77")
    assert found(event, "urn:oid:1.2.840.99|MRN77") and found(event, "MRN77")
    assert event.patient_ids[0] == "MRN77"  # the identifier stays the first patient named


@pytest.mark.parametrize("value", ["", "Patient/", "urn:oid:1.2.3|", "|", "A,,B", ","])
def test_an_empty_patient_value_is_refused(value: str) -> None:
    with pytest.raises(QueryError, match="empty|without an id"):
        AuditQuery.parse({"patient": [value]})
    if value != "Patient/":  # a reference only for patient: an entity ID "Patient/" is a value
        with pytest.raises(QueryError):
            AuditQuery.parse({"entity-identifier": [value]})


# --- over the endpoint ---------------------------------------------------------------------------------


def test_an_empty_patient_parameter_is_answered_400_not_every_patient(tmp_path: Path, monkeypatch: Any) -> None:
    """parse_qs dropped "patient=": the search then answered every patient's trail."""
    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    store.append([posted(audit_event("PX1")), posted(audit_event("PX2"))])
    host, port = "127.0.68.21", 29621
    with running(endpoint(host, port), store):
        status, _, body = request(host, port, "GET", "/AuditEvent?patient=")
        assert status == 400 and "empty identifier" in body["issue"][0]["diagnostics"]
        assert request(host, port, "GET", "/AuditEvent?patient=PX1")[2]["total"] == 1
        assert request(host, port, "GET", "/AuditEvent?agent-name=")[2]["total"] == 2  # no condition: ignored
    store.close()


def test_refusals_are_recorded_a_few_then_counted_and_token_guessing_is_throttled(
        tmp_path: Path, monkeypatch: Any) -> None:
    """Each 401 was a sealed event: 2,000 bad tokens, 2,000 events. Now the first RECORDED_EACH of
    a problem from a host in an interval are recorded, the rest counted in one record; after
    MOST_GUESSES failures a host is answered 429 unchecked (the right token too), recorded once."""
    from pacsguard.atna import http
    from pacsguard.atna.repeats import RECORDED_EACH

    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    host, port = "127.0.68.22", 29622
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    with running(endpoint(host, port), store) as rx:
        answers = [request(host, port, "GET", "/AuditEvent", token=f"guess{i}")[:2] for i in range(45)]
        status, fields, _ = request(host, port, "GET", "/metadata")  # the right token, while throttled
        during = list(rx.events)
    store.close()
    assert [s for s, _ in answers] == [401] * http.MOST_GUESSES + [429] * (45 - http.MOST_GUESSES)
    assert status == 429 and 1 <= int(fields["retry-after"]) <= http.GUESS_WINDOW
    rejected = [e for e in during if e.kind == "atna.http.rejected"]
    assert len(rejected) == RECORDED_EACH + 1  # ten 401s, one 429
    assert "answered 429 unchecked" in rejected[-1].details["error"]
    summaries = [e for e in rx.events if e.kind == "atna.http.rejected"][len(rejected):]  # made at close
    errors = sorted(str(e.details["error"]) for e in summaries)
    assert len(errors) == 2
    assert errors[0].startswith(f"{http.MOST_GUESSES - RECORDED_EACH} more in 60 s after the first 10")
    assert errors[1].startswith(f"{45 + 1 - http.MOST_GUESSES - 1} more in 60 s after the first 1 recorded")
    # The 429s are named as such, and `atna sources` counts every request a summary stands for.
    assert rejected[-1].details["problem"] == "throttled"
    assert sorted(e.details["repeats"] for e in summaries) == sorted(
        [http.MOST_GUESSES - RECORDED_EACH, 45 + 1 - http.MOST_GUESSES - 1])
    [row] = count_sources([e for e in rx.events if e.kind == "atna.http.rejected"])
    assert row.http_refused == 45 + 1


def test_a_bundle_posted_to_the_fhir_base_is_each_of_its_audit_events(tmp_path: Path, monkeypatch: Any) -> None:
    """ITI-20's FHIR feed: a batch or transaction Bundle POSTed to the base. It was answered 404 and
    left no trace."""
    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    host, port = "127.0.68.23", 29623

    def bundle(kind: str, *resources: dict[str, Any]) -> bytes:
        return json.dumps({"resourceType": "Bundle", "type": kind, "entry": [
            {"resource": r, "request": {"method": "POST", "url": "AuditEvent"}} for r in resources]}).encode()

    bad = audit_event("BAD1")
    bad["recorded"] = "yesterday"
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    with running(endpoint(host, port), store) as rx:
        status, _, answer = request(host, port, "POST", "/fhir", bundle("transaction", audit_event("B1"),
                                                                        audit_event("B2")))
        assert status == 200 and answer["type"] == "transaction-response"
        Bundle.model_validate(answer)
        assert [e["response"]["status"] for e in answer["entry"]] == ["201 Created", "201 Created"]
        status, _, answer = request(host, port, "POST", "/", bundle("batch", audit_event("B3"), bad))
        assert status == 200 and answer["type"] == "batch-response"
        Bundle.model_validate(answer)
        assert [e["response"]["status"] for e in answer["entry"]] == ["201 Created", "400 Bad Request"]
        status, _, answer = request(host, port, "POST", "/fhir/", bundle("transaction", audit_event("B4"), bad))
        assert status == 400 and "transaction Bundle entry 1" in answer["issue"][0]["diagnostics"]
        status, _, answer = request(host, port, "POST", "/fhir", json.dumps(audit_event("B5")).encode())
        assert status == 400 and "POST one AuditEvent to /AuditEvent" in answer["issue"][0]["diagnostics"]
        statement = request(host, port, "GET", "/fhir/metadata")[2]
        CapabilityStatement.model_validate(statement)
        assert {i["code"] for i in statement["rest"][0]["interaction"]} == {"transaction", "batch"}
        events = rx.wait(lambda evs: len(evs) >= 6, "six events")
    store.close()
    audits = [e for e in events if e.kind.startswith("atna.audit.")]
    assert [e.patient_ids[0] for e in audits] == ["B1", "B2", "B3"]
    assert orjson.loads(audits[0].details["raw"])["entity"][0]["what"]["identifier"]["value"] == "B1"
    unparsed = [problem_of(e)[0] for e in events if e.kind == "atna.message.unparsed"]
    assert unparsed == ["not-fhir", "not-fhir", "not-fhir"]  # the batch's bad entry, the transaction, B5
    (row,) = count_sources(events)
    assert row.messages == 6 and row.parsed == 3 and row.not_fhir == 3


def test_xml_posted_to_audit_event_is_refused(tmp_path: Path, monkeypatch: Any) -> None:
    """POST /AuditEvent takes FHIR AuditEvent JSON only: an A.5 XML message was answered 201."""
    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    host, port = "127.0.68.24", 29624
    a5 = every_event_id()["110110"]
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    with running(endpoint(host, port), store) as rx:
        status, _, answer = request(host, port, "POST", "/AuditEvent", a5)
        assert status == 400 and "not a FHIR AuditEvent" in answer["issue"][0]["diagnostics"]
        status, _, answer = request(host, port, "POST", "/AuditEvent", json.dumps(audit_event()).encode(),
                                    content_type="application/fhir+xml; charset=utf-8")
        assert status == 415 and "FHIR XML is not supported" in answer["issue"][0]["diagnostics"]
        assert request(host, port, "POST", "/AuditEvent", json.dumps(audit_event()).encode(),
                       content_type="application/json")[0] == 201
        events = rx.wait(lambda evs: len(evs) >= 3, "three events")
    store.close()
    assert [e.kind for e in events] == ["atna.message.unparsed", "atna.message.unparsed", "atna.audit.patient-record"]
    assert [problem_of(e)[0] for e in events[:2]] == ["not-fhir", "not-fhir"]
    assert events[0].details["raw"] == a5.decode()


def test_a_client_that_reads_no_answer_is_closed(tmp_path: Path, monkeypatch: Any) -> None:
    """Pipelined searches never read: the answers filled the buffers and the connection was held for
    ever (no write timeout). Now it is aborted after WRITE_TIMEOUT and recorded as too-slow."""
    from pacsguard.atna import http

    monkeypatch.setattr(http, "WRITE_TIMEOUT", 1.0)
    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    big = audit_event("BIG")
    big["entity"] = [copy.deepcopy(big["entity"][0]) for _ in range(3000)]
    for i, entity in enumerate(big["entity"]):
        entity["what"]["identifier"]["value"] = f"M{i}"
    store.append([posted(big)])
    host, port = "127.0.68.25", 29625
    search = f"GET /AuditEvent?patient=M2999 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
    with running(endpoint(host, port), store) as rx:
        with socket.socket() as conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            conn.connect((host, port))
            conn.sendall(search * 40)
            got = rx.wait(lambda evs: any(e.details.get("problem") == "too-slow" for e in evs), "a too-slow record")
            conn.settimeout(10)
            started = time.monotonic()
            with contextlib.suppress(ConnectionResetError):  # aborted: what was unsent is dropped
                while conn.recv(65536):
                    pass
            assert time.monotonic() - started < 10  # closed, not held: recv saw its end
    store.close()
    (slow,) = [e for e in got if e.details.get("problem") == "too-slow"]
    assert "took none of an answer for 1 s" in slow.details["error"]
