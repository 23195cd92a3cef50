"""Round 5 fixes of the audit record repository (issue 18): outbound confirmation per burst, invalid
EventActionCodes, explanations (assigning authorities, failed orders, every patient on arrival, an
order received just before the access), FHIR AuditEvent patients and requestors, the daily report."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from dataclasses import replace
from datetime import date, datetime, timezone
from pathlib import Path

from atna_corpus import fhir_patient_read, record

from pacsguard.atna import daily
from pacsguard.atna.config import AtnaConfig
from pacsguard.atna.explain import ExplainSettings, explain_patient, explain_unstored, is_access
from pacsguard.atna.ingest import Sender, frame_event
from pacsguard.atna.message.build import to_xml
from pacsguard.atna.message.record import AuditRecord, Code, Participant, ParticipantObject
from pacsguard.atna.outbound.sender import OutboundSender
from pacsguard.atna.outbound.spool import Spool
from pacsguard.atna.service import AtnaService
from pacsguard.atna.sources import count_sources
from pacsguard.events.model import Event
from pacsguard.ids.audit.adapter import rule_files
from pacsguard.ids.engine import Engine
from pacsguard.ids.rules import load_rules
from pacsguard.ids.settings import IdsSettings
from pacsguard.tls import client_context, make_ca, make_cert
from store_helpers import new_store

SENDER = Sender("10.20.0.9", 40000, "tcp", "octet-counting")


def at(hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 12, 3, hour, minute, tzinfo=timezone.utc)


def person(user: str, requestor: bool = True) -> Participant:
    return Participant(user, requestor=requestor, access_point="10.20.0.7", access_point_type="2")


def patient(pid: str) -> ParticipantObject:
    return ParticipantObject(pid, Code("2", "RFC-3881", "Patient Number"), type_code="1", role="1", name="ROE^ANN")


def message(event_id: str, when: datetime, participants: tuple[Participant, ...], patients: tuple[str, ...],
            action: str, outcome: str = "0") -> Event:
    r: AuditRecord = replace(record(event_id), time=when, participants=participants, action=action,
                             outcome=outcome, objects=tuple(patient(p) for p in patients))
    return frame_event(SENDER, b"<85>1 - emr1 audit - IHE+RFC-3881 - " + to_xml(r))


def fhir_event(resource: dict[str, object]) -> Event:
    return frame_event(SENDER, b"<85>1 - ehr audit - IHE+FHIR - " + json.dumps(resource).encode())


# ------------------------------------------------------------------------------ outbound


class _Sink:
    """A TLS server that reads and discards what a client sends (a repository that stays up)."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            raw, _ = self.server.accept()
        except OSError:
            return
        with self.context.wrap_socket(raw, server_side=True) as conn:
            while conn.recv(65536):
                pass

    def close(self) -> None:
        self.server.close()


def test_a_burst_is_confirmed_confirm_after_its_own_acknowledgement(tmp_path: Path) -> None:
    """A burst written while an earlier message waits out confirm_after is delivered confirm_after
    after its own acknowledgement, not after the earlier message's confirmation (a repository
    stopping in between would otherwise get it twice)."""
    ca, ca_key = make_ca(tmp_path / "pki", "Round5 CA", 2)
    cert, key = make_cert(tmp_path / "pki", "localhost", ca, ca_key, hosts=["localhost"], server=True, days=1)
    sink = _Sink(cert, key)
    spool = Spool(tmp_path / "spool.db")
    sender = OutboundSender(spool, "site-a", "127.0.0.1", sink.port, client_context(ca_file=ca),
                            server_name="localhost", retry=0.2, confirm_after=2.0)
    sender.start()
    try:
        spool.add([b"<AuditMessage>first</AuditMessage>"])
        time.sleep(1.0)
        spool.add([b"<AuditMessage>burst %d</AuditMessage>" % i for i in range(8)])
        start = time.monotonic()
        time.sleep(2.5)  # the burst's acknowledgement is 2.5 s old; the first was confirmed 1.5 s ago
        delivered = spool.delivered()
        assert time.monotonic() - start < 2.9, "the machine is too slow for this timing"
        assert delivered == 9
    finally:
        sender.stop()
        spool.close()
        sink.close()


# ------------------------------------------------------------------------------ invalid action codes


def test_an_invalid_action_code_is_flagged_counted_and_judged_as_an_access() -> None:
    ev = message("110110", at(9), (person("mallory"),), ("PID-88",), action="read")
    assert ev.kind == "atna.audit.patient-record" and ev.details["action"] == "read"
    assert "bad-action-code" in ev.details["flags"]
    assert is_access(ev)
    row = count_sources([ev])[0]
    assert row.bad_action_code == 1 and (row.last_error or "").startswith("bad-action-code")
    fine = message("110110", at(9), (person("kim"),), ("PID-88",), action="R")
    assert "flags" not in fine.details and count_sources([fine])[0].bad_action_code == 0


# ------------------------------------------------------------------------------ explanations


def test_an_order_for_another_authoritys_patient_explains_nothing(tmp_path: Path) -> None:
    store, _ = new_store(str(tmp_path / "s.db"), tmp_path)
    orders = (person("orderdesk"), person("lee", False))
    store.append([
        message("110109", at(8), orders, ("PID-0042^^^OTHER&1.2.3.4&ISO",), action="C"),
        message("110110", at(9), (person("lee"),), ("PID-0042^^^STMARY&1.2.840.99999.1&ISO",), action="R"),
        message("110109", at(8), orders, ("PID-7^^^OTHER&1.2.3.4&ISO",), action="C"),
        message("110110", at(9), (person("lee"),), ("PID-7^^^&1.2.3.4&ISO",), action="R"),  # the same OID
        message("110109", at(8), orders, ("PID-8",), action="C"),  # no authority: may be the same patient
        message("110110", at(9), (person("lee"),), ("PID-8^^^STMARY&1.2.840.99999.1&ISO",), action="R"),
    ])
    try:
        verdicts = {p: [v.template for v in explain_patient(store, p, None, None, ExplainSettings())]
                    for p in ("PID-0042", "PID-0042^^^STMARY&1.2.840.99999.1&ISO", "PID-7", "PID-8")}
    finally:
        store.close()
    assert verdicts == {"PID-0042": [None], "PID-0042^^^STMARY&1.2.840.99999.1&ISO": [None],
                        "PID-7": ["order-names-user"], "PID-8": ["order-names-user"]}


def test_a_failed_order_explains_nothing(tmp_path: Path) -> None:
    store, _ = new_store(str(tmp_path / "s.db"), tmp_path)
    store.append([
        message("110109", at(8), (person("mallory"),), ("PID-77",), action="C", outcome="8"),
        message("110110", at(8, 5), (person("mallory"),), ("PID-77",), action="R"),
        message("110109", at(8), (person("kim"),), ("PID-78",), action="C", outcome="0"),
        message("110110", at(8, 5), (person("kim"),), ("PID-78",), action="R"),
    ])
    try:
        failed = [v.template for v in explain_patient(store, "PID-77", None, None, ExplainSettings())]
        done = [v.template for v in explain_patient(store, "PID-78", None, None, ExplainSettings())]
    finally:
        store.close()
    assert failed == [None] and done == ["order-names-user"]


def test_on_arrival_every_patient_of_the_access_is_judged(tmp_path: Path) -> None:
    store, _ = new_store(str(tmp_path / "s.db"), tmp_path)
    store.append([message("110109", at(8), (person("orderdesk"), person("lee", False)), ("PID-A",), action="C")])
    try:
        both = explain_unstored(store, message("110112", at(9), (person("lee"),), ("PID-A", "PID-B"), action="E"),
                                ExplainSettings())
        one = explain_unstored(store, message("110112", at(9), (person("lee"),), ("PID-A",), action="E"),
                               ExplainSettings())
    finally:
        store.close()
    assert both is not None and not both.explained and both.patient == "PID-B"
    assert one is not None and one.explained


def test_on_arrival_an_order_received_just_before_the_access_counts(tmp_path: Path) -> None:
    """The order reaches the store a moment after it is published: the access that follows it on
    the same connection is judged with it all the same."""
    store, _ = new_store(str(tmp_path / "s.db"), tmp_path)
    delivered: list[Event] = []  # published, never stored: the store writer has not taken them yet
    config = AtnaConfig.model_validate({"enabled": True, "privacy": {"explain": {"on_arrival": True}}})
    service = AtnaService(config, delivered.append, store)
    service.use_privacy_rules(Engine(load_rules(rule_files(unexplained=True), builtin=False), IdsSettings()))
    try:
        service.publish(message("110109", at(8), (person("orderdesk"), person("lee", False)), ("E1",), action="C"))
        service.publish(message("110110", at(9), (person("lee"),), ("E1",), action="R"))
        lee = [e.kind for e in delivered if e.kind.startswith("ids.alert.")]
        service.publish(message("110110", at(9), (person("mallory"),), ("E1",), action="R"))
    finally:
        store.close()
    assert lee == []
    assert [e.kind for e in delivered if e.kind.startswith("ids.alert.")] == ["ids.alert.audit-unexplained-access"]


def test_recent_messages_are_kept_by_patient_for_a_while_and_a_number() -> None:
    from pacsguard.atna.service import RecentEvents  # new in round 5: the other tests run on older code

    recent = RecentEvents(keep=10.0, most=2)
    one, two, three = (message("110110", at(9), (person("kim"),), pids, action="R")
                       for pids in (("P1",), ("P1", "P2"), ("P3",)))
    recent.add(one, 0.0)
    recent.add(two, 5.0)
    assert recent.of("P1", 5.0) == [one, two] and recent.of("P2", 5.0) == [two]
    assert recent.of("P1", 12.0) == [two]  # one is older than keep
    recent.add(three, 13.0)
    recent.add(message("110110", at(9), (person("kim"),), ("P4",), action="R"), 13.0)
    assert recent.of("P1", 13.0) == [] and recent.of("P3", 13.0) == [three]  # at most two kept


# ------------------------------------------------------------------------------ FHIR AuditEvent


def _with_entity(what: dict[str, object]) -> dict[str, object]:
    resource = fhir_patient_read()
    entity = dict(resource["entity"][0])  # type: ignore[index]
    entity["what"] = what
    resource["entity"] = [entity]
    return resource


def test_a_patient_named_by_an_absolute_or_versioned_reference_is_its_id() -> None:
    for reference in ("Patient/PX1", "http://ehr.example.org/fhir/Patient/PX1", "Patient/PX1/_history/2",
                      "https://ehr.example.org/fhir/Patient/PX1/_history/7"):
        ev = fhir_event(_with_entity({"reference": reference}))
        assert ev.kind == "atna.audit.patient-record", ev.details
        assert ev.patient_ids == ("PX1",), reference


def test_a_caret_in_a_fhir_identifier_value_is_escaped_not_read_as_cx() -> None:
    ev = fhir_event(_with_entity({"identifier": {"system": "urn:oid:1.2.3.4", "value": "123^45"}}))
    assert ev.patient_ids == ("123\\S\\45", "123\\S\\45^^^&1.2.3.4&ISO")
    plain = fhir_event(_with_entity({"identifier": {"value": "123^45"}}))
    assert plain.patient_ids == ("123\\S\\45",)
    cx = fhir_event(_with_entity({"identifier": {"value": "PID-0042^^^STMARY&1.2.840.99999.1&ISO"}}))
    assert "PID-0042^^^STMARY&1.2.840.99999.1&ISO" in cx.patient_ids  # a whole CX without a system: as sent
    a5 = message("110110", at(11), (person("kim"),), ("123\\S\\45^^^&1.2.3.4&ISO",), action="R")
    assert set(ev.patient_ids) <= set(a5.patient_ids)  # the same patient as ITI-20 writes it


def test_a_requestor_that_is_not_a_json_boolean_is_not_fhir() -> None:
    resource = fhir_patient_read()
    server = {"who": {"identifier": {"value": "PACS-SERVER"}}, "requestor": "false"}
    resource["agent"] = [server, *resource["agent"]]  # type: ignore[misc]
    ev = fhir_event(resource)
    assert ev.kind == "atna.message.unparsed" and ev.details["problem"] == "not-fhir"
    assert "requestor" in ev.details["error"]
    for wrong in ({"outcome": 0}, {"agent": [{"who": {"identifier": {"value": 123}}, "requestor": True}]}):
        bad = fhir_event({**fhir_patient_read(), **wrong})
        assert bad.details.get("problem") == "not-fhir", wrong


# ------------------------------------------------------------------------------ the daily report


def test_the_daily_report_lists_no_security_alert_as_after_hours_access() -> None:
    alert = replace(message("110113", at(2), (person("ids-sensor"),), ("PID-1",), action="E"))
    ids = Event(kind="ids.alert.audit-watched-patient", component="ids", time=at(2, 1), patient_ids=("PID-1",))
    read = message("110110", at(2, 5), (person("nurse"),), ("PID-2",), action="R")
    created = message("110110", at(3), (person("nurse"),), ("PID-3",), action="C")
    report = daily.summarise([alert, ids, read, created], date(2026, 12, 3))
    assert [e["patients"][0] for e in report["after_hours_access"]] == ["PID-2", "PID-3"]
    assert report["counts"]["after_hours_access"] == 2


def test_the_daily_report_counts_what_its_lists_cut() -> None:
    failed = [message("110114", at(10, i // 60), (person(f"u{i}"),), (), action="E", outcome="4")
              for i in range(250)]
    report = daily.summarise(failed, date(2026, 12, 3))
    assert len(report["failed_authentications"]) == 200 and report["counts"]["failed_authentications"] == 250
    page = daily.to_html(report)
    assert "<h2>Failed authentications (250)</h2><p>The first 200 of 250 are listed.</p>" in page
    assert "<h2>Security alerts (0)</h2><table>" in page
