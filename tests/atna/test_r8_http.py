"""Round 8, the HTTP side of the audit repository (issue #18), with curl and Python's http.client
as a patient portal, an audit consumer and a scanner use them. A chained patient parameter
(``patient.identifier``, ``entity.identifier``) names the patient instead of being ignored into
every patient's trail; the searchset Bundle carries the self link with the parameters used (FHIR
R4 search); the date prefixes sa and eb are taken, ne and ap refused by name, a zone's unencoded
``+`` explained; HEAD is a GET without content (RFC 9110 9.3.2); a 405 carries Allow, an unknown
method is 501, and each is recorded; an empty body or a JSON array is named as such; an action
outside FHIR's value set is left out of the AuditEvent. Loopback 127.0.81.0/24."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from atna_corpus import every_event_id, fhir_patient_read
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.operationoutcome import OperationOutcome
from receiver import Received, running

from pacsguard.atna.ingest import Sender, frame_event
from pacsguard.atna.sources import count_sources
from store_helpers import new_store

TOKEN = "round8-http-token-0123456789"
HOST = "127.0.81.2"
SENDER = Sender("10.20.0.9", 40000, "tcp", "octet-counting")
#: The corpus's messages that name patient PID-0042 (every A.5.3 message with a patient object).
OF_THE_PATIENT = ["110102", "110103", "110104", "110105", "110106", "110107", "110109", "110110", "110111"]


def _port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def endpoint(tmp_path: Path, monkeypatch: Any) -> Iterator[tuple[str, Received]]:
    """The endpoint over a store of one A.5 message per event ID (PID-0042's and others'): its
    AuditEvent URL and what it published."""
    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    store.append([frame_event(SENDER, b"<85>1 - h a - IHE+RFC-3881 - " + m) for m in every_event_id().values()])
    port = _port()
    with running({"http": {"host": HOST, "port": port, "token": {"env": "ATNA_TOKEN"}}}, store) as rx:
        yield f"http://{HOST}:{port}/AuditEvent", rx
    store.close()


def curl(url: str) -> tuple[int, dict[str, Any]]:
    """A GET by curl (the query sent as written, not re-encoded): status and JSON body."""
    assert shutil.which("curl"), "curl is needed"
    done = subprocess.run(["curl", "-s", "-g", "-m", "15", "-H", f"Authorization: Bearer {TOKEN}",
                           "-w", "\n%{http_code}", url], capture_output=True, text=True, timeout=20, check=True)
    body, _, status = done.stdout.rpartition("\n")
    return int(status), json.loads(body)


def codes(bundle: dict[str, Any]) -> list[str]:
    Bundle.model_validate(bundle)
    return [e["resource"]["type"]["code"] for e in bundle["entry"] if e["search"]["mode"] == "match"]


def refused(answer: tuple[int, dict[str, Any]]) -> str:
    """The diagnostics of a 400 answer, a valid OperationOutcome."""
    status, body = answer
    assert status == 400, (status, json.dumps(body)[:300])
    OperationOutcome.model_validate(body)
    return str(body["issue"][0]["diagnostics"])


def test_a_chained_patient_identifier_names_the_patient_not_every_patient(
        endpoint: tuple[str, Received]) -> None:
    """patient.identifier=system|value is how a FHIR client names a patient by identifier (FHIR R4
    search, chaining), entity.identifier how ITI-81's national extensions (CH:ATC) do. Both were
    unknown, so ignored (lenient handling): the portal asking for one patient got all fifteen
    messages, every patient's. Other chains on a patient or entity reference are refused as
    modifiers are, in lenient handling too."""
    url, rx = endpoint
    for query in ("patient.identifier=urn:oid:1.2.840.99999.1|PID-0042", "patient.identifier=PID-0042",
                  "entity.identifier=PID-0042", "entity.identifier=PID-0042^^^STMARY",
                  "patient.identifier=PID-0042,NOBODY"):
        status, bundle = curl(f"{url}?{query}")
        assert status == 200 and codes(bundle) == OF_THE_PATIENT, (query, codes(bundle))
    for query in ("patient.identifier=urn:oid:9.9.9|PID-0042", "patient.identifier=NOBODY",
                  "entity.identifier=|PID-0042"):  # another authority; no one; an ID without one
        status, bundle = curl(f"{url}?{query}")
        assert status == 200 and codes(bundle) == [] and bundle["total"] == 0, query
    assert "empty identifier" in refused(curl(f"{url}?patient.identifier="))
    for query in ("patient.name=DOE", "entity.name=DOE", "patient.identifier:exact=PID-0042",
                  "source.identifier=h"):
        assert "not supported" in refused(curl(f"{url}?{query}")), query
    rejected = [e.details["error"] for e in rx.events if e.kind == "atna.http.rejected"]
    assert len(rejected) == 5 and "patient.name" in rejected[1], rejected


def test_the_bundle_carries_a_self_link_with_the_parameters_used(endpoint: tuple[str, Received]) -> None:
    """FHIR R4 search: the server SHALL return the parameters it actually used, in the Bundle's
    self link, so that a client sees one it sent was not. There was no self link at all."""
    url, _ = endpoint
    status, bundle = curl(f"{url}?patient=PID-0042&_count=4&unknown-one=x&date=ge2026-12-03")
    assert status == 200 and len(codes(bundle)) == 4
    links = {link["relation"]: link["url"] for link in bundle["link"]}
    used = links["self"]
    assert used.startswith(f"{url}?") and "patient=PID-0042" in used and "_count=4" in used
    assert "date=ge2026-12-03" in used and "unknown-one" not in used
    assert "unknown-one" not in links["next"]
    # The self link is a search that answers the same page, and the next page's its own cursor.
    assert codes(curl(used)[1]) == codes(bundle)
    status, last = curl(links["next"])
    assert codes(last) == OF_THE_PATIENT[4:8]
    assert {link["relation"]: link["url"] for link in last["link"]}["self"] == links["next"]
    status, everything = curl(url)
    assert status == 200 and everything["link"] == [{"relation": "self", "url": url}]


def test_date_prefixes_sa_and_eb_are_taken_ne_and_ap_refused_by_name(endpoint: tuple[str, Received]) -> None:
    """FHIR R4 search defines nine prefixes; sa (starts after) and eb (ends before) are, for an
    event's instant, gt and lt. They, ne and ap were refused as "not a FHIR date", the date
    itself blamed. A zone's "+" sent unencoded is a space in a query: the refusal says so."""
    url, _ = endpoint
    assert len(codes(curl(f"{url}?date=sa2026-12-02")[1])) == 15
    assert codes(curl(f"{url}?date=sa2026-12-03")[1]) == []  # the messages are of that day
    assert codes(curl(f"{url}?date=eb2026-12-03")[1]) == []
    assert len(codes(curl(f"{url}?date=eb2026-12-04&date=sa2026-12-02")[1])) == 15
    for prefix in ("ne", "ap"):
        why = refused(curl(f"{url}?date={prefix}2026-12-03"))
        assert f"prefix {prefix!r}" in why and "not a FHIR date" not in why, why
    assert "%2B" in refused(curl(f"{url}?date=2026-12-03T10:30:15+01:00"))
    assert len(codes(curl(f"{url}?date=2026-12-03T10:30:15%2B01:00")[1])) == 15


def test_head_is_a_get_without_content_and_the_connection_stays_in_step(endpoint: tuple[str, Received]) -> None:
    """RFC 9110 9.3.2, RFC 9112 6.3: an answer to HEAD has no content. HEAD was answered 404 or 405
    with an OperationOutcome after its head, which a client reads as the start of the next answer:
    on a persistent connection, Python's http.client then failed on the GET after it."""
    import http.client
    from urllib.parse import urlsplit

    url, _ = endpoint
    where = urlsplit(url)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=10)
    try:
        for target in ("/metadata", "/AuditEvent?patient=PID-0042", "/fhir/AuditEvent?type=110110"):
            conn.request("HEAD", target, headers=auth)
            head = conn.getresponse()
            assert (head.status, head.read()) == (200, b""), target
            conn.request("GET", target, headers=auth)
            got = conn.getresponse()
            body = got.read()
            assert got.status == 200 and json.loads(body)["resourceType"] in ("CapabilityStatement", "Bundle")
            if target != "/metadata":  # the same answer: the length the GET's content has
                assert head.getheader("Content-Length") == str(len(body))
        conn.request("HEAD", "/AuditEvent", headers={"Authorization": "Bearer wrong"})
        refused = conn.getresponse()
        assert (refused.status, refused.read()) == (401, b"")
    finally:
        conn.close()


def test_a_method_not_taken_is_405_with_allow_and_an_unknown_one_501(endpoint: tuple[str, Received]) -> None:
    """RFC 9110 15.5.6: a 405 MUST carry Allow; 9.1: a method is case-sensitive, one not
    implemented is 501. PUT /AuditEvent was 405 without Allow; POST /metadata, GET of the FHIR
    base and "get" were 404 "only /AuditEvent (and /metadata) is served", naming /metadata too.
    None of them was recorded: a PUT or DELETE of an audit event, or a scan of paths, left no
    trace in `atna sources`; each is now a bad-request naming the method and path."""
    import http.client
    from urllib.parse import urlsplit

    url, rx = endpoint
    where = urlsplit(url)
    expected = {("PUT", "/AuditEvent"): (405, "GET, HEAD, POST"), ("DELETE", "/AuditEvent/abc"): (405, "GET, HEAD"),
                ("POST", "/metadata"): (405, "GET, HEAD"), ("GET", "/fhir"): (405, "POST"),
                ("OPTIONS", "/fhir/metadata"): (405, "GET, HEAD"), ("get", "/metadata"): (501, None),
                ("BREW", "/AuditEvent"): (501, None)}
    for (method, target), (status, allow) in expected.items():
        conn = http.client.HTTPConnection(where.hostname, where.port, timeout=10)
        try:
            conn.request(method, target, body=b"{}" if method in ("PUT", "POST") else None,
                         headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/fhir+json"})
            answer = conn.getresponse()
            problem = json.loads(answer.read())
        finally:
            conn.close()
        assert (answer.status, answer.getheader("Allow")) == (status, allow), (method, target)
        OperationOutcome.model_validate(problem)
        assert method in problem["issue"][0]["diagnostics"], problem
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=10)
    conn.request("GET", "/Patient/1", headers={"Authorization": f"Bearer {TOKEN}"})
    assert conn.getresponse().status == 404
    conn.close()
    rejected = rx.wait(lambda evs: sum(e.kind == "atna.http.rejected" for e in evs) == len(expected) + 1,
                       "each refused request recorded")
    recorded = [(e.details["method"], e.details["path"], e.details["problem"]) for e in rejected
                if e.kind == "atna.http.rejected"]
    assert recorded == [(m, t, "bad-request") for m, t in [*expected, ("GET", "/Patient/1")]]
    [row] = count_sources(rejected)
    assert row.http_refused == len(expected) + 1


def test_an_empty_body_or_a_json_array_is_named_as_such(endpoint: tuple[str, Received]) -> None:
    """A POST /AuditEvent with no body, or with a JSON array (of AuditEvents, say), was answered
    "the payload is neither XML nor JSON", blaming valid JSON; each is named for what it is,
    stored raw as not-fhir, and counted as such."""
    url, rx = endpoint
    one = json.dumps(fhir_patient_read())
    bodies = {b"": "an empty body", b"  \r\n": "an empty body", b"[]": "a JSON array",
              f"[{one}]".encode(): "a JSON array", b"\xef\xbb\xbf [" + one.encode() + b"]": "a JSON array"}
    for body, named in bodies.items():
        done = subprocess.run(["curl", "-s", "-m", "15", "-H", f"Authorization: Bearer {TOKEN}", "-H",
                               "Content-Type: application/fhir+json", "--data-binary", "@-", "-w", "\n%{http_code}",
                               url], input=body, capture_output=True, timeout=20, check=True)
        answer, _, status = done.stdout.decode().rpartition("\n")
        assert named in refused((int(status), json.loads(answer))), body[:20]
    unparsed = rx.wait(lambda evs: sum(e.kind == "atna.message.unparsed" for e in evs) == 5, "five stored raw")
    assert [e.details["raw"] for e in unparsed if e.kind == "atna.message.unparsed"][2:4] == ["[]", f"[{one}]"]
    [row] = count_sources(unparsed)
    assert row.not_fhir == 5 and row.unparsable_xml == 0


def test_an_action_outside_its_value_set_is_left_out_of_the_audit_event(tmp_path: Path, monkeypatch: Any) -> None:
    """AuditEvent.action is bound to C R U D E (required, FHIR R4), as outcome is to 0 4 8 12. An
    A.5 message's EventActionCode "read" is stored flagged bad-action-code, a POSTed AuditEvent's
    action "Z" stored as sent; the search answered them as "action": "read" and "Z", AuditEvents
    no FHIR validator takes. They are left out, as an outcome outside its set is; the raw keeps
    them."""
    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    message = every_event_id()["110110"].replace(b'EventActionCode="C"', b'EventActionCode="read"')
    store.append([frame_event(SENDER, b"<85>1 - h a - IHE+RFC-3881 - " + message)])
    port = _port()
    url = f"http://{HOST}:{port}/AuditEvent"
    with running({"http": {"host": HOST, "port": port, "token": {"env": "ATNA_TOKEN"}}}, store) as rx:
        posted = {**fhir_patient_read(), "action": "Z", "outcome": "2"}
        done = subprocess.run(["curl", "-s", "-m", "15", "-H", f"Authorization: Bearer {TOKEN}", "-H",
                               "Content-Type: application/fhir+json", "--data-binary", json.dumps(posted),
                               "-w", "\n%{http_code}", url], capture_output=True, text=True, timeout=20, check=True)
        assert done.stdout.endswith("\n201")
        [stored] = rx.wait(lambda evs: len(rx.audits()) == 1, "the POST stored")
        store.append([stored])
        status, bundle = curl(f"{url}?patient=PID-0042")
    store.close()
    assert status == 200 and len(codes(bundle)) == 2
    read, posted_back = (entry["resource"] for entry in bundle["entry"])
    assert "action" not in read and read["outcome"] == "0"
    assert "action" not in posted_back and "outcome" not in posted_back
    assert json.loads(stored.details["raw"])["action"] == "Z"
