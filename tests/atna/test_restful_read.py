"""FHIR read (`GET /AuditEvent/ID`) on the RESTful ATNA endpoint: the fullUrl of every entry of
an ITI-81 search Bundle, and the Location of a POST, answer that one AuditEvent."""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from atna_corpus import every_event_id, fhir_patient_read
from fhir.resources.R4B.auditevent import AuditEvent
from receiver import free_port, running
from test_restful import SENDER, TOKEN, call

from pacsguard.atna.ingest import frame_event
from pacsguard.events.model import Event, new_event_id
from store_helpers import make_events, new_store


def fetch(url: str, *, token: str | None = TOKEN, method: str = "GET") -> tuple[int, str, dict[str, Any]]:
    """Status, Content-Type and JSON body of a request without a body."""
    request = urllib.request.Request(url, method=method,
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, response.headers["Content-Type"], json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], json.loads(exc.read())


def test_a_bundles_full_urls_and_a_posts_location_read_the_audit_event(tmp_path: Path, monkeypatch: Any) -> None:
    """FHIR R4 read (3.1.0.1): a client following an entry's fullUrl, with or without the /fhir
    prefix the search was made under, gets that entry's resource (200, application/fhir+json);
    the Location of a POST reads what was posted, once stored. An id that names no AuditEvent
    (unknown, malformed, another kind of Event's) gets 404 with an OperationOutcome; the token is
    needed as for the search."""
    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    read = b"<85>1 - h a - IHE+RFC-3881 - " + every_event_id()["110110"]
    others = make_events(20)
    store.append(others[:10] + [frame_event(SENDER, read) for _ in range(3)] + others[10:])
    port = free_port()
    with running({"http": {"port": port, "token": {"env": "ATNA_TOKEN"}}}, store) as rx:
        root = f"http://127.0.0.1:{port}"
        status, created = call(f"{root}/AuditEvent", body=orjson.dumps(fhir_patient_read()))
        assert status == 201
        rx.wait(lambda evs: len(rx.audits()) == 1, "the POSTed AuditEvent")
        store.append(rx.audits() + make_events(5, start=20))  # what the bus does with it in a running pacsguard
        for prefix in ("", "/fhir"):
            status, bundle = call(f"{root}{prefix}/AuditEvent?patient=PID-0042")
            assert status == 200 and len(bundle["entry"]) == 4
            for entry in bundle["entry"]:
                assert entry["fullUrl"] == f"{root}{prefix}/AuditEvent/{entry['resource']['id']}"
                status, kind, resource = fetch(entry["fullUrl"])
                assert (status, kind) == (200, "application/fhir+json")
                assert resource == entry["resource"]
                AuditEvent.model_validate(resource)
        assert fetch(f"{root}/AuditEvent/{created['id']}/")[2] == created  # a trailing slash, as on search
        posted = bundle["entry"][-1]["resource"]
        assert posted["id"] == created["id"] and posted["agent"][0]["who"]["identifier"]["value"] == "nurse.kim"

        bogus = ["nonesuch", "0" * 32, new_event_id(), others[3].id, created["id"].upper() + "0", "%2E%2E", "x" * 5000]
        for rid in bogus:
            status, kind, problem = fetch(f"{root}/AuditEvent/{rid}")
            assert (status, kind, problem["resourceType"]) == (404, "application/fhir+json", "OperationOutcome"), rid
            assert problem["issue"][0]["code"] == "not-found"
        assert fetch(f"{root}/AuditEvent/{created['id']}", token=None)[0] == 401
        assert fetch(f"{root}/AuditEvent/{created['id']}", token="wrong")[0] == 401
        assert fetch(f"{root}/AuditEvent/{created['id']}", method="DELETE")[0] == 405
    store.close()


@pytest.mark.parametrize("chunk", [1, 7, 256])
def test_an_event_is_found_by_its_id_wherever_the_reading_processes_put_it(tmp_path: Path, monkeypatch: Any,
                                                                          chunk: int) -> None:
    """The store has no index by id: the id's own time (UUIDv7) finds where its event was stored,
    and the events around it are read until one made further off than the store's disorder: so an
    event handed over late (stored after events made after it), or early, is found too, and an id
    of no event stops the reading there."""
    from pacsguard.atna import query
    from pacsguard.atna.query import stored_by_id

    monkeypatch.setattr(query, "_READ_CHUNK", chunk)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    read = b"<85>1 - h a - IHE+RFC-3881 - " + every_event_id()["110110"]
    minute = 60_000 << 80

    def made(event: Event, minutes: int) -> Event:
        """``event`` with the id of one made ``minutes`` later."""
        return dataclasses.replace(event, id=f"{int(event.id, 16) + minutes * minute:032x}")

    # One audit event every two minutes; one made at minute 41 handed over 59 minutes late (after
    # the one of minute 100), one of minute 159 as early: each within the disorder of an hour.
    audits = [made(frame_event(SENDER, read), i) for i in range(0, 200, 2)]
    late, early = made(audits[20], 1), made(audits[79], 1)
    store.append(audits[:51] + [late, early] + audits[51:])
    for event in [*audits, late, early]:
        found = stored_by_id(store, event.id)
        assert found is not None and found.event.id == event.id
    assert stored_by_id(store, made(audits[10], 1).id) is None
    assert stored_by_id(store, "not-an-id") is None
    store.close()
