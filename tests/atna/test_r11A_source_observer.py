"""Round 11, helper A: ITI-81's ``source`` and the observer it answers, asked of a real
``pacsguard atna listen --http`` by curl, fed by curl (FHIR POST) and util-linux ``logger`` (A.5
over syslog TCP); every answer validated with fhir.resources (R4B, whose AuditEvent,
Bundle and CapabilityStatement are R4's in what is checked here).

1. GET /metadata listed ``source`` as a reference, nothing more, while it is also searched as a
   token of the observer's identifier: a client had no way to learn ``system|value``. It now
   says so (searchParam.documentation), and FHIR R4's own way to name a reference by its
   identifier, ``source:identifier=system|value``, is taken (it was refused, 400).
2. A FHIR observer sent as a reference (``{"reference": "Device/abc"}``) or as an identifier
   without a system was answered as a display; it is now answered as it came.
3. An A.5 AuditSourceID ``hospital/pacs1`` was found by ``source=pacs1`` and ``Device/pacs1``
   (any text after a ``/`` was taken for a reference's id); it is now compared whole, and only
   a FHIR observer sent as a reference is found by that reference's id.

Loopback 127.0.111.0/24."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from peers.dcmtk import free_port

HOST = "127.0.111.31"
TOKEN = "r11a-source-observer-0123456789abcdef"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
#: The hospital's register of audit sources.
SOURCES = "urn:oid:1.2.3.111.1"
#: How each POSTed AuditEvent names its source (source.observer), by the name the tests use.
OBSERVERS: dict[str, dict[str, Any]] = {
    "reference": {"reference": "Device/abc"},
    "bare-identifier": {"identifier": {"value": "pacs9"}},
    "everything": {"reference": "Device/r11a-dev", "type": "Device",
                   "identifier": {"system": SOURCES, "value": "r11a-dev-id"}, "display": "R11A modality"},
    "identifier": {"identifier": {"system": SOURCES, "value": "pacs1"}},
}
#: The AuditSourceIDs of the A.5 messages sent by logger.
A5_SOURCES = {"a5-slash": "hospital/pacs1", "a5-plain": "pacs1"}


def _posted(observer: dict[str, Any], minute: int) -> dict[str, Any]:
    return {"resourceType": "AuditEvent", "type": {"system": DCM, "code": "110110"}, "action": "R",
            "recorded": f"2026-12-05T11:{minute:02d}:00Z", "outcome": "0",
            "agent": [{"who": {"identifier": {"value": "r11a.user"}}, "requestor": True}],
            "source": {"observer": observer},
            "entity": [{"what": {"identifier": {"value": "R11A-P1"}},
                        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
                        "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"}}]}


def _a5(source_id: str, minute: int) -> str:
    return ('<?xml version="1.0" encoding="UTF-8"?><AuditMessage>'
            f'<EventIdentification EventActionCode="R" EventDateTime="2026-12-05T12:{minute:02d}:00Z" '
            'EventOutcomeIndicator="0"><EventID csd-code="110110" codeSystemName="DCM" originalText="Patient Record"/>'
            '</EventIdentification><ActiveParticipant UserID="r11a.jones" UserIsRequestor="true"/>'
            f'<AuditSourceIdentification AuditSourceID="{source_id}"/>'
            '<ParticipantObjectIdentification ParticipantObjectID="R11A-P1" ParticipantObjectTypeCode="1" '
            'ParticipantObjectTypeCodeRole="1"><ParticipantObjectIDTypeCode csd-code="2" codeSystemName="RFC-3881" '
            'originalText="Patient Number"/></ParticipantObjectIdentification></AuditMessage>')


def curl(url: str, *args: str) -> tuple[int, Any]:
    """curl's answer (status, JSON body) to a request with the endpoint's token."""
    found = shutil.which("curl")
    assert found, "curl is needed (Debian package curl)"
    done = subprocess.run([found, "-sS", "-m", "10", "-w", "\n%{http_code}", "-H", f"Authorization: Bearer {TOKEN}",
                           "-H", "Content-Type: application/fhir+json", *args, url],
                          capture_output=True, text=True, timeout=15)
    assert done.returncode == 0, done.stderr
    body, _, status = done.stdout.rpartition("\n")
    return int(status), json.loads(body) if body else None


class Repository:
    """The running ``pacsguard atna listen``: its base URL, and a search naming what it found."""

    def __init__(self, base: str, names: dict[str, str]) -> None:
        self.base, self.names = base, names

    def search(self, *params: str) -> tuple[list[str], dict[str, Any]]:
        """The names of the messages a search finds (sorted), and its Bundle (valid FHIR)."""
        status, bundle = curl(f"{self.base}/AuditEvent", "-G", *[a for p in params for a in ("--data-urlencode", p)])
        assert status == 200, bundle
        Bundle.model_validate(bundle)
        found = sorted(self.names.get(e["resource"]["id"], e["resource"]["id"]) for e in bundle["entry"]
                       if e["resource"]["resourceType"] == "AuditEvent")
        return found, bundle

    def observer(self, name: str, bundle: dict[str, Any]) -> Any:
        ident = next(i for i, n in self.names.items() if n == name)
        return next(e["resource"]["source"]["observer"] for e in bundle["entry"] if e["resource"]["id"] == ident)


def _wait(what: Callable[[], bool], message: str, deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    while not what():
        assert time.monotonic() < end, message
        time.sleep(0.1)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repository]:
    """``pacsguard atna listen`` (HTTP and syslog TCP) holding four POSTed AuditEvents (one per
    `OBSERVERS`) and two A.5 messages sent by logger (`A5_SOURCES`)."""
    logger = shutil.which("logger") or "/usr/bin/logger"
    assert Path(logger).exists(), "logger (util-linux) is needed"
    tmp = tmp_path_factory.mktemp("r11a")
    http, tcp = free_port(HOST), free_port(HOST)
    env = {**os.environ, "R11A_TOKEN": TOKEN, "PACSGUARD_KEY_DIR": str(tmp)}
    with open(tmp / "listen.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pacsguard.cli", "atna", "listen", "--http", f"{HOST}:{http}",
                                 "--http-token-env", "R11A_TOKEN", "--tcp", f"{HOST}:{tcp}",
                                 "--store", str(tmp / "store.db")], stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://{HOST}:{http}"
    try:
        def up() -> bool:
            assert proc.poll() is None, (tmp / "listen.log").read_text()
            done = subprocess.run(["curl", "-s", "-o", "/dev/null", "-m", "2", base + "/metadata"], timeout=5)
            return done.returncode == 0
        _wait(up, "pacsguard atna listen did not start")
        names: dict[str, str] = {}
        for minute, (name, observer) in enumerate(OBSERVERS.items()):
            status, created = curl(f"{base}/AuditEvent", "--data-binary", json.dumps(_posted(observer, minute)))
            assert status == 201, created
            AuditEvent.model_validate(created)
            names[created["id"]] = name
        for minute, source_id in enumerate(A5_SOURCES.values()):
            subprocess.run([logger, "--rfc5424", "--msgid", "IHE+RFC-3881", "-n", HOST, "-T", "--octet-count",
                            "-P", str(tcp), _a5(source_id, minute)], check=True, timeout=10)
        repository = Repository(base, names)

        def stored() -> bool:
            return len(repository.search("patient=R11A-P1")[0]) == len(OBSERVERS) + len(A5_SOURCES)
        _wait(stored, "the six audit messages were not all stored")
        for ident, resource in ((e["resource"]["id"], e["resource"]) for e in repository.search("patient=R11A-P1")[1]
                                ["entry"]):
            if ident not in names:  # an A.5 message: named by its AuditSourceID
                names[ident] = next(n for n, s in A5_SOURCES.items() if resource["source"]["observer"]["display"] == s)
        yield repository
    finally:
        proc.terminate()
        proc.wait(20)


def test_the_capability_statement_tells_how_source_is_searched(repo: Repository) -> None:
    """GET /metadata: ``source`` is FHIR R4's reference parameter and says what else it takes;
    each form it names works as told, ``source:identifier`` (FHIR R4's modifier) among them."""
    status, statement = curl(f"{repo.base}/metadata")
    assert status == 200
    CapabilityStatement.model_validate(statement)
    params = {p["name"]: p for p in statement["rest"][0]["resource"][0]["searchParam"]}
    source = params["source"]
    assert source["type"] == "reference"
    for form in ("`Device/ID`", "`system|value`", "`|value`", "`source:identifier=`", "hospital/pacs1"):
        assert form in source["documentation"], form
    assert "`system|value`" in params["patient"]["documentation"]
    assert repo.search("source=Device/abc")[0] == ["reference"]
    assert repo.search(f"source={SOURCES}|r11a-dev-id")[0] == ["everything"]
    assert repo.search(f"source:identifier={SOURCES}|r11a-dev-id")[0] == ["everything"]
    assert repo.search("source:identifier=pacs9")[0] == ["bare-identifier"]
    # The identifier modifier compares identifiers: a reference's id is none.
    assert repo.search("source:identifier=abc")[0] == repo.search("source=|Device/abc")[0] == []
    assert repo.search("source=|pacs9")[0] == ["bare-identifier"]
    # Any other modifier is still refused, and so is an empty value.
    assert curl(f"{repo.base}/AuditEvent?source:missing=true")[0] == 400
    assert curl(f"{repo.base}/AuditEvent?source=abc,")[0] == 400


def test_the_observer_is_answered_as_it_came(repo: Repository) -> None:
    """A reference stays a reference, an identifier (with or without a system) an identifier, a
    display a display, in the search's Bundle and in a read; A.5's AuditSourceID is a display."""
    _, bundle = repo.search("patient=R11A-P1")
    for name, sent in OBSERVERS.items():
        assert repo.observer(name, bundle) == sent, name
    assert repo.observer("a5-slash", bundle) == {"display": "hospital/pacs1"}
    ident = next(i for i, n in repo.names.items() if n == "reference")
    status, read = curl(f"{repo.base}/AuditEvent/{ident}")
    assert status == 200
    assert AuditEvent.model_validate(read).source.observer.reference == "Device/abc"


def test_an_audit_source_id_with_a_slash_is_compared_whole(repo: Repository) -> None:
    """``source=pacs1`` finds the sources whose ID is pacs1, not ``hospital/pacs1``; that one is
    found by itself alone; ``Device/pacs1`` finds the sources whose ID is pacs1 (and an observer
    sent as that reference); an observer sent as ``Device/abc`` is found by its reference, its
    URL and its id, not by another type's reference."""
    assert repo.search("source=pacs1")[0] == ["a5-plain", "identifier"]
    assert repo.search("source=hospital/pacs1")[0] == ["a5-slash"]
    assert repo.search("source=Device/pacs1")[0] == ["a5-plain", "identifier"]
    assert repo.search(f"source={SOURCES}|pacs1")[0] == ["a5-plain", "identifier"]
    assert repo.search("source=Hospital/pacs1")[0] == []
    for query in ("source=Device/abc", "source=http://ehr.example.org/fhir/Device/abc", "source=abc"):
        assert repo.search(query)[0] == ["reference"], query
    assert repo.search("source=Practitioner/abc")[0] == []
    assert repo.search("source=Device/r11a-dev")[0] == ["everything"]
