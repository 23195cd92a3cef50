"""Round 8, wave 2: ITI-81 search parameters that would answer every patient's audit trail, or
answer in a form the client did not ask for, sent with curl as a patient portal, an audit consumer
and a scanner send them. A parameter misspelt only in case or separators (``Patient``,
``patient_id``, ``patient-identifier``) is refused with 400 naming what was meant, even in lenient
handling (FHIR R4 search, "Handling Errors"), where it was ignored; a result parameter given twice
is refused, not the last taken; one parameter listing more than `MOST_VALUES` values is refused
(each patient was one store read); and a request that takes no JSON (``_format=xml``, ``Accept:
application/fhir+xml``) is answered 406 (FHIR R4 http.html#mime-type). Loopback 127.0.92.0/24."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

from fhir.resources.R4B.operationoutcome import OperationOutcome
from receiver import Received
from test_r8_http import OF_THE_PATIENT, TOKEN, codes, endpoint  # noqa: F401 - endpoint is a fixture


def curl(url: str, *headers: str) -> tuple[int, dict[str, Any], str]:
    """A GET by curl (the query sent as written, not re-encoded): status, JSON body, Content-Type."""
    assert shutil.which("curl"), "curl is needed"
    extra = [arg for header in headers for arg in ("-H", header)]
    done = subprocess.run(["curl", "-s", "-g", "-m", "15", "-H", f"Authorization: Bearer {TOKEN}", *extra,
                           "-w", "\n%{http_code} %{content_type}", url],
                          capture_output=True, text=True, timeout=20, check=True)
    body, _, status = done.stdout.rpartition("\n")
    code, _, media = status.partition(" ")
    return int(code), json.loads(body), media


def refused(answer: tuple[int, dict[str, Any], str], status: int = 400) -> str:
    """The diagnostics of a refusal, a valid OperationOutcome in JSON."""
    got, body, media = answer
    assert got == status, (got, json.dumps(body)[:300])
    assert media.startswith("application/fhir+json"), media
    OperationOutcome.model_validate(body)
    return str(body["issue"][0]["diagnostics"])


def test_a_misspelt_patient_parameter_is_refused_not_ignored_into_every_trail(
        endpoint: tuple[str, Received]) -> None:  # noqa: F811
    """Lenient handling ignored ``Patient=PID-0042`` as unknown and answered every patient's
    trail with only a warning. A name that is a known one but for case, ``-`` ``_`` ``.`` (or
    that begins as a parameter naming a patient) is refused, naming the name sent and the one
    meant; one like none stays ignored, with its warning."""
    url, rx = endpoint
    meant = {"Patient=PID-0042": "'patient'", "PATIENT=PID-0042": "'patient'",
             "patient_id=PID-0042": "'patient' or 'patient.identifier'",
             "patientId=PID-0042": "'patient' or 'patient.identifier'",
             "patient-identifier=PID-0042": "'patient.identifier'",
             "Patient.identifier=PID-0042": "'patient.identifier'",
             "Patient:exact=PID-0042": "'patient'", "Patient=": "'patient'",
             "entity_identifier=PID-0042": "'entity-identifier' or 'entity.identifier'",
             "Agent_Name=jsm": "'agent-name'",
             "_Count=2": "'_count'", "%EF%BD%90atient=PID-0042": "'patient'"}
    for query, name in meant.items():
        why = refused(curl(f"{url}?{query}"))
        sent = query.partition("=")[0].replace("%EF%BD%90", "\uff50")
        assert f"{sent!r} is not known" in why and f"did you mean {name}?" in why, (query, why)
    # In strict handling, too, by what was meant rather than as merely unsupported.
    assert "did you mean 'patient'" in refused(curl(f"{url}?Patient=PID-0042", "Prefer: handling=strict"))
    # A modifier on the identifier chain was ignored the same way.
    assert "modifier 'exact'" in refused(curl(f"{url}?patient.identifier:exact=PID-0042"))
    # The refusals are recorded (the first few one by one, the rest counted into a summary).
    rejected = [e.details["error"] for e in rx.events if e.kind == "atna.http.rejected"]
    assert rejected and "'Patient' is not known" in rejected[0], rejected
    # The right names still find the patient; a name like no parameter is ignored with its warning,
    # and so are FHIR's own _source and _type, which are no misspelt source or type.
    status, bundle, _ = curl(f"{url}?patient=PID-0042&colour=blue&_source=x&_type=AuditEvent")
    assert status == 200 and codes(bundle) == OF_THE_PATIENT
    warnings = [issue["diagnostics"] for e in bundle["entry"] if e["search"]["mode"] == "outcome"
                for issue in e["resource"]["issue"]]
    assert len(warnings) == 3 and "'colour'" in warnings[0], warnings


def test_a_result_parameter_given_twice_is_refused_not_the_last_taken(endpoint: tuple[str, Received]) -> None:  # noqa: F811
    """``_count=2&_count=10000`` took the last; which was meant is unknown (FHIR R4 search lets the
    server reject it): each of _count, _total, _cursor and _format is refused by name when repeated."""
    url, _ = endpoint
    for query in ("_count=2&_count=10000", "_total=accurate&_total=none", "_cursor=1&_cursor=5",
                  "_format=json&_format=application/fhir%2Bjson"):
        name = query.partition("=")[0]
        assert refused(curl(f"{url}?patient=PID-0042&{query}")) == f"{name}: given 2 times, it may be given once"
    status, bundle, _ = curl(f"{url}?patient=PID-0042&_count=2&_total=accurate")
    assert status == 200 and bundle["total"] == len(OF_THE_PATIENT) and len(codes(bundle)) == 2


def test_a_parameter_listing_too_many_values_is_refused_by_name_and_cap(endpoint: tuple[str, Received]) -> None:  # noqa: F811
    """``patient=`` with 2,700 comma-separated IDs made one store read per ID (seconds a request):
    more than 100 values in one parameter, by commas or repeats, are refused naming it and the cap;
    100 are answered."""
    url, _ = endpoint
    others = [f"X{n}" for n in range(2_699)]  # short: the whole request head fits in 16 KiB
    why = refused(curl(f"{url}?patient={','.join(['PID-0042', *others])}"))
    assert why.startswith("patient: 2700 values, at most 100"), why
    why = refused(curl(f"{url}?" + "&".join(f"agent-name=u{n}" for n in range(101))))
    assert why.startswith("agent-name: 101 values, at most 100"), why
    status, bundle, _ = curl(f"{url}?patient={','.join(['PID-0042', *others[:99]])}")
    assert status == 200 and codes(bundle) == OF_THE_PATIENT


def test_a_request_that_takes_no_json_is_answered_406(endpoint: tuple[str, Received]) -> None:  # noqa: F811
    """``_format=xml`` or ``Accept: application/fhir+xml`` was answered in JSON with 200, which an
    XML client cannot read as what it asked for: 406 with an OperationOutcome (in JSON, the one
    format there is). JSON asked for in any of its forms, ``*/*``, or nothing, is answered."""
    url, rx = endpoint
    search = f"{url}?patient=PID-0042"
    for asked in ("_format=xml", "_format=application/fhir%2Bxml", "_format=text/html"):
        assert "only FHIR JSON" in refused(curl(f"{search}&{asked}"), 406)
    for accept in ("application/fhir+xml", "application/xml, text/xml;q=0.9",
                   "application/fhir+xml, application/fhir+json;q=0"):
        assert "takes no FHIR JSON" in refused(curl(search, f"Accept: {accept}"), 406), accept
    # A read and the CapabilityStatement answer JSON only, too.
    metadata = url.removesuffix("/AuditEvent") + "/metadata"
    assert "only FHIR JSON" in refused(curl(f"{metadata}?_format=xml"), 406)
    assert "takes no FHIR JSON" in refused(curl(f"{url}/0123", "Accept: application/fhir+xml"), 406)
    rejected = [e.details["error"] for e in rx.events if e.kind == "atna.http.rejected"]
    assert rejected and "_format='xml'" in rejected[0], rejected
    # _format overrides Accept; its + sent unencoded is a space, and still JSON.
    for asked, accept in (("", "*/*"), ("", "application/json"), ("", "application/fhir+json; fhirVersion=4.0"),
                          ("", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
                          ("", "application/fhir+xml;q=1, application/fhir+json;q=0.5"), ("", "garbage"),
                          ("&_format=json", "application/fhir+xml"), ("&_format=application/fhir+json", ""),
                          ("&_format=application/json", "")):
        status, bundle, media = curl(f"{search}{asked}", *([f"Accept: {accept}"] if accept else []))
        assert status == 200 and codes(bundle) == OF_THE_PATIENT, (asked, accept, status)
        assert media.startswith("application/fhir+json")
    status, _, _ = curl(metadata, "Accept: application/fhir+json")
    assert status == 200
