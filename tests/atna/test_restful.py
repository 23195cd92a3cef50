"""The RESTful ATNA endpoint: ITI-81 search answering FHIR R4 Bundles, POST /AuditEvent, and the
requests it refuses (no token, not FHIR, bad parameters), each recorded with the sender."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from atna_corpus import every_event_id, fhir_patient_read, record
from fhir.resources.R4B.bundle import Bundle
from receiver import free_port, running

from pacsguard.atna.ingest import Sender, frame_event
from store_helpers import make_events, new_store

TOKEN = "s3cret-token-for-tests"
SENDER = Sender("10.20.0.9", 40000, "tcp", "octet-counting")


def call(url: str, *, token: str | None = TOKEN, body: bytes | None = None,
         host: str | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                     headers={"Content-Type": "application/fhir+json",
                                              **({"Authorization": f"Bearer {token}"} if token else {}),
                                              **({"Host": host} if host else {})})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_iti81_search_and_post(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    store.append(make_events(20))
    frames = [frame_event(SENDER, b"<85>1 - h a - IHE+RFC-3881 - " + every_event_id()[e])
              for e in ("110110", "110104", "110114", "110113")]
    store.append(frames)
    port = free_port()
    with running({"http": {"port": port, "token": {"env": "ATNA_TOKEN"}}}, store) as rx:
        base = f"http://127.0.0.1:{port}/AuditEvent"
        status, bundle = call(f"{base}?patient=PID-0042")
        assert status == 200
        Bundle.model_validate(bundle)
        assert [e["resource"]["type"]["code"] for e in bundle["entry"]] == ["110110", "110104"]
        assert call(f"{base}?patient=Patient/PID-0042&date=ge2026-12-03&date=lt2026-12-04&agent-name=JSM")[1][
            "total"] == 2
        assert call(f"{base}?patient=PID-0042&date=2026-12-04")[1]["total"] == 0
        assert call(f"{base}?entity-type=2&outcome=0")[1]["total"] == 2  # the study (110104), the node (110113)
        first = call(f"{base}?patient=PID-0042&_count=1")[1]
        assert len(first["entry"]) == 1 and first["link"][0]["relation"] == "next"

        status, created = call(base, body=orjson.dumps(fhir_patient_read()))
        assert status == 201 and created["resourceType"] == "AuditEvent"
        assert created["entity"][0]["what"]["identifier"]["value"].startswith("PID-0042")

        assert call(base, token=None)[0] == 401
        assert call(base, token="wrong")[0] == 401
        status, problem = call(base, body=b'{"resourceType": "Patient", "id": "x"}')
        assert status == 400 and problem["resourceType"] == "OperationOutcome"
        assert call(base, body=b"<html>not fhir</html>")[0] == 400
        assert call(f"{base}?date=yesterday")[0] == 400
        assert call(f"http://127.0.0.1:{port}/Patient")[0] == 404
        events = list(rx.events)
    store.close()
    rejected = [e.details["problem"] for e in events if e.kind == "atna.http.rejected"]
    assert rejected == ["unauthorized", "unauthorized", "bad-request", "bad-request"]  # the date; GET /Patient
    unparsed = [e for e in events if e.kind == "atna.message.unparsed"]
    assert [e.details["problem"] for e in unparsed] == ["not-fhir", "not-audit-message"]
    assert unparsed[0].details["raw"] == '{"resourceType": "Patient", "id": "x"}'
    posted = [e for e in events if e.kind == "atna.audit.patient-record"]
    assert len(posted) == 1 and posted[0].details["syntax"] == "fhir" and posted[0].patient_ids[0] == "PID-0042"


def test_numbers_of_unicode_digits_and_the_last_day_there_is(tmp_path: Path, monkeypatch: Any) -> None:
    """"\u00b2" is a digit to str.isdigit but not to int(): a _count or a Content-Length made of it
    once raised out of the handler, and the client got no answer. They are refused as any other
    bad value; a date at the end of the year 9999 is a day like any other."""
    import socket

    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    port = free_port()
    with running({"http": {"port": port, "token": {"env": "ATNA_TOKEN"}}}, store):
        base = f"http://127.0.0.1:{port}/AuditEvent"
        status, problem = call(f"{base}?_count=%C2%B2")
        assert status == 400 and "_count" in json.dumps(problem)
        status, bundle = call(f"{base}?date=9999-12-31")
        assert status == 200 and bundle["total"] == 0
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(f"POST /AuditEvent HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n".encode()
                         + b"Content-Length: \xb2\r\n\r\n")
            assert conn.recv(4096).startswith(b"HTTP/1.1 411 ")
    store.close()


def test_a_chunked_body_is_read(tmp_path: Path, monkeypatch: Any, caplog: pytest.LogCaptureFixture) -> None:
    """RFC 9112 7.1: a recipient must parse the chunked transfer coding (it was answered 411).
    Chunk extensions and trailer fields are read past; a bad chunk size, Content-Length beside
    Transfer-Encoding (a smuggling vector, 6.3) and an unknown coding are refused and recorded."""
    store, body, port = token_endpoint(tmp_path, monkeypatch, caplog)
    head = f"POST /AuditEvent HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n".encode()
    chunks = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(body[i:i + 100]), body[i:i + 100])
                      for i in range(0, len(body), 100))
    with running({"http": {"port": port, "token": {"env": "ATNA_TOKEN"}}}, store) as rx:
        sent = head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\nX-Trailer: t\r\n\r\n"
        assert [a[0] for a in responses(exchange(port, sent + get()))] == [201, 200]  # and the next request
        assert responses(exchange(port, head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n"))[0][0] == 400
        both = head + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"
        assert responses(exchange(port, both))[0][0] == 400
        assert responses(exchange(port, head + b"Transfer-Encoding: br\r\n\r\n"))[0][0] == 501
        # A bare LF inside a field (a proxy ending lines at LF would see a Transfer-Encoding here), a
        # NUL: refused (RFC 9112 5.5). An HTTP/1.0 request with a Transfer-Encoding is answered, then
        # its connection closed, whatever it asked (6.1): the request after it is not served.
        hidden = head + b"X-A: a\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n{}"
        assert responses(exchange(port, hidden))[0][0] == 400
        assert responses(exchange(port, head + b"X-A: a\0b\r\nContent-Length: 2\r\n\r\n{}"))[0][0] == 400
        old = head.replace(b"HTTP/1.1", b"HTTP/1.0") + b"Connection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
        answers = responses(exchange(port, old + b"0\r\n\r\n" + get()))
        assert len(answers) == 1 and answers[0][1]["connection"] == "close"
        got = rx.wait(lambda evs: len(rx.audits()) == 1 and sum(e.kind == "atna.http.rejected" for e in evs) == 5,
                      "one stored, five refused")
    store.close()
    assert rx.audits()[0].patient_ids[0] == "PID-0042"
    assert sorted(e.details["error"][:20] for e in got if e.kind == "atna.http.rejected") == [
        "a CR or NUL inside a", "a line of the reques", "both Transfer-Encodi", "not a chunk size: b'",
        "transfer coding 'br'"]


def test_a_search_larger_than_a_page_is_read_page_by_page_through_next_links(tmp_path: Path,
                                                                            monkeypatch: Any) -> None:
    """"Who accessed this patient" with more answers than `_count`: each page links the next
    (FHIR R4 paging), following them gives every access once, in order; the total is only
    claimed when one page holds the whole answer (once it claimed the first page's size)."""
    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    read = b"<85>1 - h a - IHE+RFC-3881 - " + every_event_id()["110110"]
    for _ in range(5):  # 250 accesses to PID-0042, with other events between them
        store.append([frame_event(SENDER, read) for _ in range(50)] + make_events(7))
    port = free_port()
    with running({"http": {"port": port, "token": {"env": "ATNA_TOKEN"}}}, store):
        url: str | None = f"http://127.0.0.1:{port}/AuditEvent?patient=PID-0042&_count=100"
        pages: list[dict[str, Any]] = []
        while url is not None and len(pages) < 10:
            status, bundle = call(url)
            assert status == 200, bundle
            Bundle.model_validate(bundle)
            pages.append(bundle)
            url = next((link["url"] for link in bundle.get("link", ()) if link["relation"] == "next"), None)
        assert [len(p["entry"]) for p in pages] == [100, 100, 50]
        assert all("total" not in p for p in pages)  # more than one page: not counted
        ids = [e["resource"]["id"] for p in pages for e in p["entry"]]
        assert len(set(ids)) == 250
        assert "patient=PID-0042" in pages[0]["link"][0]["url"] and "_count=100" in pages[0]["link"][0]["url"]
        status, whole = call(f"http://127.0.0.1:{port}/AuditEvent?patient=PID-0042&_count=300")
        assert status == 200 and whole["total"] == 250
        assert [link["relation"] for link in whole["link"]] == ["self"]  # no next page
        assert [e["resource"]["id"] for e in whole["entry"]] == ids
        assert call(f"http://127.0.0.1:{port}/AuditEvent?patient=PID-0042&_cursor=abc")[0] == 400
        # Links name the endpoint as the client reached it (behind a name, under /fhir); a Host
        # header that is not a host is refused (RFC 9112 3.2), never echoed into a link.
        proxied = call(f"http://127.0.0.1:{port}/fhir/AuditEvent?patient=PID-0042&_count=100",
                       host="audit.hospital.example:8089")[1]
        assert proxied["link"][0]["url"].startswith("http://audit.hospital.example:8089/fhir/AuditEvent?")
        assert proxied["entry"][0]["fullUrl"].startswith("http://audit.hospital.example:8089/fhir/AuditEvent/")
        odd = call(f"http://127.0.0.1:{port}/fhir/AuditEvent?patient=PID-0042&_count=100", host="a<b>")
        assert odd[0] == 400 and "Host" in odd[1]["issue"][0]["diagnostics"]
    store.close()


def test_every_iti81_search_parameter_selects_what_it_names(tmp_path: Path, monkeypatch: Any) -> None:
    """The parameters an Audit Record Repository supports for ITI-81 (IHE RESTful ATNA 3.81.4.1.2.1):
    each, as a token (system|code), a reference (Type/id) or a comma-separated list, keeps only the
    messages that hold it; two parameters must both hold."""
    from dataclasses import replace

    from pacsguard.atna.message.build import to_xml

    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    frames = {e: frame_event(SENDER, b"<85>1 - h a - IHE+RFC-3881 - " + every_event_id()[e])
              for e in ("110110", "110104", "110114", "110113")}
    by_kim = record("110110")
    by_kim = replace(by_kim, participants=(replace(by_kim.participants[0], user_id="mkim", access_point="10.30.1.4"),
                                           *by_kim.participants[1:]))
    frames["kim"] = frame_event(SENDER, b"<85>1 - h a - IHE+RFC-3881 - " + to_xml(by_kim))
    store.append(list(frames.values()))
    names = {event.id: name for name, event in frames.items()}
    port = free_port()
    with running({"http": {"port": port, "token": {"env": "ATNA_TOKEN"}}}, store):
        def found(query: str) -> list[str]:
            status, bundle = call(f"http://127.0.0.1:{port}/AuditEvent?{query}")
            assert status == 200, bundle
            return sorted(names[e["resource"]["id"]] for e in bundle["entry"])

        dcm = "http://dicom.nema.org/resources/ontology/DCM"
        assert found("type=110113") == ["110113"]
        assert found(f"type={dcm}|110114,{dcm}|110113") == ["110113", "110114"]
        # A token's system is compared: DCM's URI, its name and its OID are one; another is not.
        assert found("type=DCM|110113") == found("type=urn:oid:1.2.840.10008.2.16.4|110113") == ["110113"]
        assert found("type=http://loinc.org|110113") == [] and found("type=|110113") == []
        assert found(f"subtype={dcm}|110122") == ["110114"] and found("subtype=http://snomed.info/sct|110122") == []
        assert found("subtype=110122") == ["110114"]
        assert found("entity-role=3") == ["110104"]
        assert found("entity-identifier=PID-0042") == ["110104", "110110", "kim"]
        assert found("entity-identifier=urn:oid:2.25|1.2.826.0.1.3680043.9.7777.1") == ["110104"]
        assert found("agent-identifier=mkim") == ["kim"]
        assert found("agent-identifier=AETITLES=CT01") == ["110104", "110110", "110113", "110114", "kim"]
        assert found("address=10.30.1.4") == ["kim"] and found("address=10.99.9.9") == []
        assert found("source=Device/VNA1") == ["110104", "110110", "110113", "110114", "kim"]
        assert found("action=E") == ["110113", "110114"]
        assert found("type=110110&entity-role=3") == []  # two parameters: both must hold
        assert found("type=110110&address=10.20.0.7") == ["110110"]
    store.close()


def _patients_store(tmp_path: Path) -> tuple[Any, dict[str, str]]:
    """A store of patient record reads of the same ID 123 from two assigning authorities and none,
    and of 456 from the first; event id -> the patient's CX."""
    from dataclasses import replace

    from pacsguard.atna.message.build import to_xml
    from pacsguard.atna.message.record import Code, ParticipantObject

    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    base = record("110110")
    names = {}
    for cx, when, user in (("123^^^HOSP&1.2.3.4&ISO", 3, "jsmith"), ("123^^^OTHER&9.9.9&ISO", 4, "mkim"),
                           ("123", 5, "jsmith"), ("456^^^HOSP&1.2.3.4&ISO", 6, "mkim")):
        patient = ParticipantObject(cx, Code("2", "RFC-3881", "Patient Number"), type_code="1", role="1")
        r = replace(base, time=base.time.replace(day=when), objects=(patient,),
                    participants=(replace(base.participants[0], user_id=user, user_name=None), *base.participants[1:]))
        ev = frame_event(SENDER, b"<85>1 - h a - IHE+RFC-3881 - " + to_xml(r))
        names[ev.id] = cx
        store.append([ev])
    return store, names


def test_a_patient_token_with_a_system_finds_only_that_authoritys_patient(tmp_path: Path, monkeypatch: Any) -> None:
    """FHIR token search (FHIR R4 search, token): ``system|value`` is the patient of that ID from the
    assigning authority the system names (``urn:oid:X``: universal ID X), ``|value`` the ID without
    an authority, ``value`` alone any authority, or the one its CX form names; ``patient`` and
    ``entity-identifier`` alike, as ``audit search --patient`` matches (the same ID from two
    authorities is two patients)."""
    from urllib.parse import urlencode

    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    store, names = _patients_store(tmp_path)
    port = free_port()
    with running({"http": {"port": port, "token": {"env": "ATNA_TOKEN"}}}, store):
        def found(**params: str) -> list[str]:
            query = urlencode([(k.replace("_", "-"), v) for k, v in params.items()])
            status, bundle = call(f"http://127.0.0.1:{port}/AuditEvent?{query}")
            assert status == 200, bundle
            return [names[e["resource"]["id"]] for e in bundle["entry"]]

        hosp, other, bare = "123^^^HOSP&1.2.3.4&ISO", "123^^^OTHER&9.9.9&ISO", "123"
        for name in ("patient", "entity_identifier"):
            assert found(**{name: "urn:oid:1.2.3.4|123"}) == [hosp], name
            assert found(**{name: "urn:oid:9.9.9|123"}) == [other], name
            assert found(**{name: "urn:oid:1.2.3.99|123"}) == [], name
            assert found(**{name: "|123"}) == [bare], name
            assert found(**{name: "123"}) == [hosp, other, bare], name
            assert found(**{name: "123^^^HOSP"}) == [hosp], name
            assert found(**{name: "123^^^&1.2.3.4&ISO"}) == [hosp], name
            assert found(**{name: hosp}) == [hosp], name
        assert found(patient="Patient/123") == [hosp, other, bare]
    store.close()


def test_a_fhir_patient_is_found_by_the_system_it_came_with() -> None:
    """A FHIR AuditEvent's patient identifier keeps its system as the assigning authority (an OID as
    type ISO, any other URI as type URI), and a token search with that system finds it, another
    system does not; a comma escaped (FHIR R4 search, "Escaping Search Parameters") is a comma."""
    from pacsguard.atna.ingest import payload_event
    from pacsguard.atna.query import AuditQuery

    def posted(system: str) -> Any:
        resource = fhir_patient_read()
        resource["entity"][0]["what"]["identifier"] = {"system": system, "value": "PID,42"}
        return payload_event({"sender": SENDER.to_dict()}, orjson.dumps(resource), [], SENDER)

    by_uri, by_oid = posted("http://hospital.example/mrn"), posted("urn:oid:1.2.3")
    assert "PID,42^^^&http://hospital.example/mrn&URI" in by_uri.patient_ids
    assert "PID,42^^^&1.2.3&ISO" in by_oid.patient_ids

    def found(value: str) -> list[bool]:
        q = AuditQuery.parse({"patient": [value]})
        return [q.matches(by_uri), q.matches(by_oid)]

    assert found("http://hospital.example/mrn|PID\\,42") == [True, False]
    assert found("urn:oid:1.2.3|PID\\,42") == [False, True]
    assert found("PID\\,42") == [True, True]
    assert found("PID,42") == [False, False]  # PID or 42
    assert found("http://other.example/mrn|PID\\,42") == [False, False]


def test_a_comma_is_or_and_a_repeated_parameter_is_and(tmp_path: Path, monkeypatch: Any) -> None:
    """FHIR R4 search ("Composite Search Parameters"): values joined by a comma are "or", the same
    parameter given twice is "and", for every parameter; a known parameter with a modifier is
    refused (none is supported, and leaving it out would widen the answer); an escaped comma is a
    comma. Paging through an "or" of patients gives each event once, in store order."""
    from urllib.parse import urlencode

    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    store, names = _patients_store(tmp_path)
    port = free_port()
    with running({"http": {"port": port, "token": {"env": "ATNA_TOKEN"}}}, store):
        def answer(*params: tuple[str, str]) -> tuple[int, dict[str, Any]]:
            return call(f"http://127.0.0.1:{port}/AuditEvent?{urlencode(params)}")

        def found(*params: tuple[str, str]) -> list[str]:
            status, bundle = answer(*params)
            assert status == 200, bundle
            return [names[e["resource"]["id"]] for e in bundle["entry"]]

        hosp, other, bare, second = "123^^^HOSP&1.2.3.4&ISO", "123^^^OTHER&9.9.9&ISO", "123", "456^^^HOSP&1.2.3.4&ISO"
        assert found(("patient", "123^^^HOSP,456^^^HOSP")) == [hosp, second]
        assert found(("patient", "456^^^HOSP,urn:oid:9.9.9|123,123^^^HOSP")) == [hosp, other, second]
        assert found(("patient", "123^^^HOSP"), ("patient", "456^^^HOSP")) == []  # no event names both
        assert found(("patient", "123"), ("patient", "urn:oid:1.2.3.4|123")) == [hosp]
        assert found(("entity-identifier", "123^^^HOSP,456^^^HOSP")) == [hosp, second]
        assert found(("entity-identifier", "123"), ("entity-identifier", "|123")) == [bare]
        assert found(("agent-name", "jsm,mki")) == [hosp, other, bare, second]
        assert found(("agent-name", "jsm"), ("agent-name", "mki")) == []
        assert found(("agent-identifier", "mkim"), ("agent-identifier", "AETITLES=CT01")) == [other, second]
        assert found(("date", "2026-12-03,2026-12-05")) == [hosp, bare]
        assert found(("date", "2026-12-03,2026-12-05"), ("date", "ge2026-12-04")) == [bare]
        assert found(("date", "ge2026-12-04"), ("date", "lt2026-12-06")) == [other, bare]
        assert found(("type", "110110,110112"), ("outcome", "0")) == [hosp, other, bare, second]
        assert found(("type", "110110"), ("type", "110112")) == []
        assert found(("agent-name", "jsm\\,mki")) == []  # one name, with a comma in it

        pages, url = [], f"http://127.0.0.1:{port}/AuditEvent?" + urlencode([("patient", "456^^^HOSP,123"),
                                                                              ("_count", "1")])
        while url:
            page = call(url)[1]
            pages += [names[e["resource"]["id"]] for e in page["entry"]]
            url = next((link["url"] for link in page.get("link", ()) if link["relation"] == "next"), "")
        assert pages == [hosp, other, bare, second]

        for modified in ("patient:missing", "agent-name:exact", "entity-identifier:not"):
            status, problem = answer((modified, "123"))
            assert status == 400 and "modifier" in problem["issue"][0]["diagnostics"], modified
    store.close()


def test_the_capability_statement_names_what_is_served(tmp_path: Path, monkeypatch: Any) -> None:
    """GET /metadata, which FHIR clients ask first (HAPI's before its first search): a valid R4
    CapabilityStatement with AuditEvent search and create and every search parameter the endpoint
    takes; like everything else there, only for a client with the token."""
    from fhir.resources.R4B.capabilitystatement import CapabilityStatement

    from pacsguard.atna.query import AuditQuery

    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    port = free_port()
    with running({"http": {"port": port, "token": {"env": "ATNA_TOKEN"}}}, store):
        status, statement = call(f"http://127.0.0.1:{port}/fhir/metadata")
        assert status == 200
        CapabilityStatement.model_validate(statement)
        assert statement["fhirVersion"] == "4.0.1"
        (resource,) = statement["rest"][0]["resource"]
        assert resource["type"] == "AuditEvent"
        assert {i["code"] for i in resource["interaction"]} == {"read", "search-type", "create"}
        params = [p["name"] for p in resource["searchParam"]]
        for name in params:  # each one named is one the search takes
            AuditQuery.parse({name: ["ge2026-01-01" if name == "date" else "x"]})
        assert call(f"http://127.0.0.1:{port}/metadata", token=None)[0] == 401
    store.close()


def test_a_fhir_client_as_the_audit_consumer(tmp_path: Path, monkeypatch: Any) -> None:
    """fhirpy, a FHIR client from PyPI, as an Audit Consumer: it creates an AuditEvent, searches with
    paging (it follows the next links itself), counts (_count=0), and a parameter the endpoint does
    not know is ignored with a warning unless the client asks for strict handling."""
    from fhirpy import SyncFHIRClient
    from fhirpy.base.exceptions import OperationOutcome

    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    read = b"<85>1 - h a - IHE+RFC-3881 - " + every_event_id()["110110"]
    store.append([frame_event(SENDER, read) for _ in range(130)] + make_events(5))
    port = free_port()
    with running({"http": {"port": port, "token": {"env": "ATNA_TOKEN"}}}, store) as rx:
        client = SyncFHIRClient(f"http://127.0.0.1:{port}/fhir", authorization=f"Bearer {TOKEN}")
        created = client.resource("AuditEvent", **fhir_patient_read())
        created.save()
        assert created["id"] and created["entity"][0]["what"]["identifier"]["value"].startswith("PID-0042")
        posted = [e for e in rx.wait(lambda events: any(e.details.get("syntax") == "fhir" for e in events),
                                     "the AuditEvent fhirpy created") if e.details.get("syntax") == "fhir"]
        store.append(posted)  # what serve's bus does with what the endpoint publishes
        accesses = client.resources("AuditEvent").search(patient="PID-0042").limit(50)
        every = accesses.fetch_all()
        assert len(every) == 131 and len({r["id"] for r in every}) == 131
        assert accesses.count() == 131
        by_kim = client.resources("AuditEvent").search(patient="PID-0042", **{"agent-identifier": "nurse.kim"})
        assert by_kim.count() == 1
        lenient = client.resources("AuditEvent").search(patient="PID-0042", color="blue").limit(200).fetch_raw()
        Bundle.model_validate(lenient)
        outcome = [e["resource"] for e in lenient["entry"] if e["search"]["mode"] == "outcome"]
        assert len(lenient["entry"]) == 132 and "'color' is not supported" in outcome[0]["issue"][0]["diagnostics"]
        strict = SyncFHIRClient(f"http://127.0.0.1:{port}/fhir", authorization=f"Bearer {TOKEN}",
                                extra_headers={"Prefer": "handling=strict"})
        with pytest.raises(OperationOutcome):
            strict.resources("AuditEvent").search(patient="PID-0042", color="blue").fetch()
    store.close()


def test_an_endpoint_full_of_connections_closes_the_next_ones_and_still_answers(tmp_path: Path,
                                                                               monkeypatch: Any) -> None:
    """Connections of clients that showed the token, as many as `max_connections`: the next ones
    are answered 503 with Retry-After and recorded once; the held ones are still answered.
    (Connections that have shown no token are closed to make room: test_outside_round4_receiver.)"""
    import socket

    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    port = free_port()
    request = f"GET /AuditEvent HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
    with running({"http": {"port": port, "token": {"env": "ATNA_TOKEN"}}, "max_connections": 2}, store) as rx:
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
        for s in held:  # authenticated, and kept open (HTTP/1.1 persistent connections)
            s.sendall(request)
            assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
        over = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
        answers = [read_all(s) for s in over]
        assert all(a.startswith(b"HTTP/1.1 503 ") and b"\r\nRetry-After: 5\r\n" in a for a in answers), answers
        got = rx.wait(lambda evs: any(e.details.get("problem") == "too-many-connections" for e in evs), "refusal")
        held[0].sendall(request)
        assert held[0].recv(4096).startswith(b"HTTP/1.1 200 ")
        for s in [*held, *over]:
            s.close()
    refusals = [e for e in got if e.details.get("problem") == "too-many-connections"]
    assert len(refusals) == 1 and refusals[0].kind == "atna.http.rejected"
    store.close()


def test_mutual_tls_instead_of_a_token(tmp_path: Path) -> None:
    import ssl

    from pacsguard.tls import make_ca, make_cert

    pki = tmp_path / "pki"
    ca, ca_key = make_ca(pki, "ATNA Test CA", 2)
    cert, key = make_cert(pki, "localhost", ca, ca_key, hosts=["localhost", "127.0.0.1"], server=True, days=1)
    client, client_key = make_cert(pki, "portal", ca, ca_key, hosts=["portal"], client=True, days=1)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    store.append([frame_event(SENDER, b"<85>1 - h a - IHE+RFC-3881 - " + every_event_id()["110110"])])
    port = free_port()
    section = {"http": {"port": port, "cert_file": cert, "key_file": key, "ca_file": ca, "require_client_cert": True},
               "max_connections": 3}
    with running(section, store) as rx:
        url = f"https://localhost:{port}/AuditEvent?patient=PID-0042"
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(client, client_key)
        with urllib.request.urlopen(url, context=context, timeout=20) as answer:
            assert json.loads(answer.read())["total"] == 1
        anonymous = ssl.create_default_context(cafile=str(ca))
        try:
            with urllib.request.urlopen(url, context=anonymous, timeout=20) as answer:
                refused = answer.status
        except (urllib.error.URLError, ssl.SSLError, ConnectionError):
            refused = 0
        assert refused == 0  # no client certificate: no TLS session, no answer
        with pytest.raises(OSError):  # plain HTTP to the HTTPS port: closed unanswered
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metadata", timeout=20)
        # Each failed handshake is recorded with the sender and OpenSSL's reason: the event loop's
        # own TLS once let them vanish.
        failed = rx.wait(lambda evs: len([e for e in evs if e.details.get("problem") == "tls-handshake-failed"]) == 2,
                         "two failed handshakes")
        # Connections that never begin their handshake hold places too: the fourth closes the first
        # (the longest waiting without a token or certificate) to make room.
        import socket

        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]
        assert idle[0].recv(16) == b""
        rx.wait(lambda evs: any(e.details.get("problem") == "too-many-connections" for e in evs), "the refusal")
        for conn in idle:
            conn.close()
        with urllib.request.urlopen(url, context=context, timeout=20) as answer:  # and then served again
            assert json.loads(answer.read())["total"] == 1
    store.close()
    reasons = [e.details["error"] for e in failed if e.details.get("problem") == "tls-handshake-failed"]
    assert any("CERTIFICATE" in r for r in reasons) and any("HTTP_REQUEST" in r for r in reasons), reasons
    assert all(e.kind == "atna.http.rejected" and e.details["sender"]["transport"] == "https" for e in failed
               if e.details.get("problem") == "tls-handshake-failed")


# --- the connection itself: requests cut short, silent or slow clients, persistent connections ----------


def post(body: bytes, *, length: int | str | None = None, version: str = "HTTP/1.1", extra: str = "") -> bytes:
    """A POST /AuditEvent as a client writes it, its Content-Length ``length`` (default: the body's)."""
    return (f"POST /AuditEvent {version}\r\nHost: 127.0.0.1\r\nContent-Type: application/fhir+json\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body) if length is None else length}\r\n"
            f"{extra}\r\n").encode() + body


def get(target: str = "/metadata", *, version: str = "HTTP/1.1", extra: str = "") -> bytes:
    return f"GET {target} {version}\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n{extra}\r\n".encode()


def read_all(conn: Any) -> bytes:
    out = b""
    while chunk := conn.recv(65536):
        out += chunk
    return out


def exchange(port: int, data: bytes, *, shut: bool = True) -> bytes:
    """What the endpoint answers to ``data`` on one connection (with ``shut``, the client then
    closes its sending side), up to its close."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(data)
        if shut:
            conn.shutdown(socket.SHUT_WR)
        return read_all(conn)


def responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The whole responses one after another in ``raw`` (one still arriving is left out): status,
    header fields (names in lower case), body."""
    out = []
    while b"\r\n\r\n" in raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(fields["content-length"])
        if len(rest) < length:
            break
        out.append((int(lines[0].split(" ")[1]), fields, rest[:length]))
        raw = rest[length:]
    return out


def problems(events: list[Any]) -> list[tuple[str, str]]:
    return [(e.details["problem"], e.details["error"]) for e in events if e.kind == "atna.http.rejected"]


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing reached asyncio's log of unhandled exceptions, nor any log with a traceback."""
    bad = [r for r in caplog.records if r.name.startswith("asyncio") or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


def token_endpoint(tmp_path: Path, monkeypatch: Any, caplog: pytest.LogCaptureFixture) -> tuple[Any, bytes, int]:
    """A store, a FHIR AuditEvent body and a free port for an endpoint with a bearer token; warnings
    and worse captured."""
    caplog.set_level("WARNING")
    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    return store, orjson.dumps(fhir_patient_read()), free_port()


def test_a_request_cut_short_is_answered_and_recorded_and_logs_no_traceback(
        tmp_path: Path, monkeypatch: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A body shorter than its Content-Length (the client closes, or resets), a head cut short,
    and heads that once raised out of the handler (a Content-Length of 5,000 digits, a target
    urlsplit refuses): each is answered if the client still listens, recorded with the sender,
    and nothing reaches asyncio's log of unhandled exceptions (it once logged an
    IncompleteReadError, and the client got no answer)."""
    import socket
    import struct

    store, body, port = token_endpoint(tmp_path, monkeypatch, caplog)
    with running({"http": {"port": port, "token": {"env": "ATNA_TOKEN"}}}, store) as rx:
        ((status, fields, answer),) = responses(exchange(port, post(body, length=len(body) + 100)))
        assert status == 400 and fields["connection"] == "close"
        assert f"{len(body)} of the {len(body) + 100} octets" in answer.decode()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:  # reset mid-body
            conn.sendall(post(body)[:-50])
            time.sleep(0.2)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        assert responses(exchange(port, post(body)[:40]))[0][0] == 400  # closed its side in the head
        assert responses(exchange(port, post(body, length="9" * 5000)))[0][0] == 413
        assert responses(exchange(port, get("//[")))[0][0] == 400
        assert responses(exchange(port, get(extra="no colon here\r\n")))[0][0] == 400
        assert responses(exchange(port, get(extra="Content-Length: 3\r\nContent-Length: 4\r\n")))[0][0] == 411
        got = rx.wait(lambda evs: len(problems(evs)) >= 7, "seven records")
    store.close()
    recorded = problems(got)
    assert [p for p, _ in recorded] == ["truncated", "truncated", "truncated", "bad-request", "bad-request",
                                        "bad-request", "bad-request"]
    assert f"body of {len(body)} of the {len(body) + 100} octets of its Content-Length" in recorded[0][1]
    assert f"body of {len(body) - 50} of the {len(body)} octets" in recorded[1][1]
    assert "request head" in recorded[2][1] and "(5000 digits)" in recorded[3][1]
    assert not [e for e in got if e.kind.startswith("atna.audit.")]
    no_tracebacks(caplog)


def test_silent_and_slow_clients_are_recorded(tmp_path: Path, monkeypatch: Any,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """A connection that sends nothing (closed at once, or left open past the timeout) is recorded
    as silent, as the syslog listeners do; a head or a body that does not arrive within the
    timeout (slowloris) is answered 408 Request Timeout (RFC 9110 15.5.9), closed and recorded."""
    import socket

    from pacsguard.atna import http

    caplog.set_level("WARNING")
    monkeypatch.setattr(http, "TIMEOUT", 1.0)
    monkeypatch.setattr(http, "HEAD_TIMEOUT", 1.0)
    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    port = free_port()
    with running({"http": {"port": port, "token": {"env": "ATNA_TOKEN"}}}, store) as rx:
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
        rx.wait(lambda evs: len(problems(evs)) == 1, "the connection closed at once")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as idle:
            started = time.monotonic()
            assert read_all(idle) == b"" and time.monotonic() - started < 5
        rx.wait(lambda evs: len(problems(evs)) == 2, "the idle connection")
        assert exchange(port, b"\r\n") == b""  # an empty line is no request either
        for slow in (b"POST /AuditEvent HTTP/1.1\r\nHost: x\r\n", post(b"x" * 100)[:-90]):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                conn.sendall(slow)
                ((status, fields, _),) = responses(read_all(conn))
                assert status == 408 and fields["connection"] == "close"
        got = rx.wait(lambda evs: len(problems(evs)) == 5, "five records")
    store.close()
    assert problems(got) == [("silent", "connected and sent nothing"), ("silent", "connected and sent nothing for 1 s"),
                             ("silent", "connected and sent only empty lines"),
                             ("truncated", "request head not complete after 1 s"),
                             ("truncated", "body of 10 of the 100 octets of its Content-Length after 1 s")]
    no_tracebacks(caplog)


def test_pipelined_requests_are_each_served_in_order_on_a_persistent_connection(
        tmp_path: Path, monkeypatch: Any, caplog: pytest.LogCaptureFixture) -> None:
    """RFC 9112 9.3: an HTTP/1.1 connection carries requests one after another until the client
    says "close"; pipelined requests are answered in the order sent, and every POST among them is
    stored (the second was once dropped unread). HTTP/1.0 keeps the connection only when asked to.
    A connection serves at most MAX_REQUESTS; a refused request ends it."""
    import socket

    from pacsguard.atna import http

    store, body, port = token_endpoint(tmp_path, monkeypatch, caplog)
    with running({"http": {"port": port, "token": {"env": "ATNA_TOKEN"}}}, store) as rx:
        pipelined = (post(body.replace(b"nurse.kim", b"pipe.one")) + post(body.replace(b"nurse.kim", b"pipe.two"))
                     + get(extra="Connection: close\r\n") + get())  # the last is after "close": not served
        answers = responses(exchange(port, pipelined, shut=False))
        assert [a[0] for a in answers] == [201, 201, 200]
        assert [a[1].get("connection") for a in answers] == [None, None, "close"]
        assert [json.loads(a[2])["agent"][0]["who"]["identifier"]["value"] for a in answers[:2]] == ["pipe.one",
                                                                                                   "pipe.two"]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:  # idle between two requests
            conn.sendall(get())
            time.sleep(0.3)
            conn.sendall(post(body.replace(b"nurse.kim", b"later"), extra="Connection: close\r\n"))
            assert [a[0] for a in responses(read_all(conn))] == [200, 201]
        old = responses(exchange(port, get(version="HTTP/1.0") + get(version="HTTP/1.0"), shut=False))
        assert [(a[0], a[1]["connection"]) for a in old] == [(200, "close")]
        kept = responses(exchange(port, get(version="HTTP/1.0", extra="Connection: keep-alive\r\n") * 2))
        assert [(a[0], a[1]["connection"]) for a in kept] == [(200, "keep-alive"), (200, "keep-alive")]
        refused = get().replace(TOKEN.encode(), b"wrong") + get()
        assert [a[0] for a in responses(exchange(port, refused, shut=False))] == [401]
        monkeypatch.setattr(http, "MAX_REQUESTS", 3)
        bounded = responses(exchange(port, get() * 5, shut=False))
        assert [(a[0], a[1].get("connection")) for a in bounded] == [(200, None), (200, None), (200, "close")]
        rx.wait(lambda evs: len(rx.audits()) == 3, "three AuditEvents")
    store.close()
    stored = [json.loads(e.details["raw"])["agent"][0]["who"]["identifier"]["value"] for e in rx.audits()]
    assert stored == ["pipe.one", "pipe.two", "later"]
    assert [p for p, _ in problems(rx.events)] == ["unauthorized"]
    no_tracebacks(caplog)


def test_over_tls_a_request_cut_short_is_recorded_and_the_connection_persists(
        tmp_path: Path, monkeypatch: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The same over TLS: two requests on one session, then a body cut short by a client that
    drops the connection without a TLS close_notify; recorded, no traceback."""
    import socket
    import ssl

    from pacsguard.tls import make_ca, make_cert

    caplog.set_level("WARNING")
    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    pki = tmp_path / "pki"
    ca, ca_key = make_ca(pki, "ATNA Test CA", 2)
    cert, key = make_cert(pki, "localhost", ca, ca_key, hosts=["localhost", "127.0.0.1"], server=True, days=1)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    body = orjson.dumps(fhir_patient_read())
    port = free_port()
    section = {"http": {"port": port, "cert_file": cert, "key_file": key, "token": {"env": "ATNA_TOKEN"}}}
    with running(section, store) as rx:
        context = ssl.create_default_context(cafile=str(ca))
        conn = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                   server_hostname="localhost")
        conn.sendall(get() + post(body))
        seen = b""
        while len(responses(seen)) < 2:
            chunk = conn.recv(65536)
            assert chunk, seen  # closed after the first answer: not persistent
            seen += chunk
        assert [a[0] for a in responses(seen)] == [200, 201]
        conn.sendall(post(body)[:-20])
        time.sleep(0.2)
        conn.close()  # no unwrap(): the TCP connection ends without a TLS close_notify
        got = rx.wait(lambda evs: len(problems(evs)) == 1, "the body cut short")
    store.close()
    assert problems(got)[0][0] == "truncated" and f"of the {len(body)} octets" in problems(got)[0][1]
    no_tracebacks(caplog)

