"""Round 5 fixes of the audit record repository (issue 18), second wave: an outbound feed whose
repository refuses pacsguard's client certificate after the TLS 1.3 handshake is a named, recorded
failure; ITI-81 renders no empty FHIR strings; open-ended dates in the reports are no internal
error. Real peers: a TLS 1.3 server of Python's ssl module (OpenSSL) and Debian's rsyslogd (gtls)."""

from __future__ import annotations

import logging
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from atna_corpus import record
from fhir.resources.R4B.auditevent import AuditEvent
from receiver import DEADLINE, free_port
from test_senders_real import RSYSLOGD, wait_listening
from typer.testing import CliRunner

from pacsguard.atna.explain import ExplainSettings, explain_patient, explain_unstored
from pacsguard.atna.ingest import Sender, frame_event
from pacsguard.atna.message import fhir
from pacsguard.atna.message.build import to_xml
from pacsguard.atna.message.mapping import record_from_event
from pacsguard.atna.message.record import AuditRecord, Code, Participant, ParticipantObject
from pacsguard.atna.outbound.sender import EARLY_CLOSE, Failure, OutboundSender
from pacsguard.atna.outbound.spool import Spool
from pacsguard.atna.sources import recorded
from pacsguard.atna.zone import SiteZone
from pacsguard.cli import main
from pacsguard.events.model import Event
from pacsguard.tls import make_ca, make_cert
from store_helpers import new_store

SENDER = Sender("10.20.0.9", 40000, "tcp", "octet-counting")


def until(check: Callable[[], Any], what: str, seconds: float = DEADLINE) -> Any:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if found := check():
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# ------------------------------------------------------------------------------ outbound: refused certificate


@pytest.fixture
def two_pkis(tmp_path: Path) -> dict[str, Path]:
    """The repository's CA and server certificate, pacsguard's client certificate from its own CA
    (one the repository does not trust), and one from the repository's CA."""
    ca, ca_key = make_ca(tmp_path / "pki", "Repository CA", 2)
    cert, key = make_cert(tmp_path / "pki", "localhost", ca, ca_key, hosts=["localhost", "127.0.0.1"],
                          server=True, days=1)
    good, good_key = make_cert(tmp_path / "pki", "pacsguard-site", ca, ca_key, client=True, days=1)
    other_ca, other_key = make_ca(tmp_path / "other", "Another CA", 2)
    bad, bad_key = make_cert(tmp_path / "other", "pacsguard-site", other_ca, other_key, client=True, days=1)
    return {"ca": ca, "cert": cert, "key": key, "good": good, "good_key": good_key, "bad": bad,
            "bad_key": bad_key}


class _MutualTlsRepository:
    """A TLS 1.3 server asking for a client certificate of its CA (OpenSSL): one of another CA
    completes the client's handshake and is answered with an alert (unknown ca) right after."""

    def __init__(self, pki: dict[str, Path]) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_3
        self.context.load_cert_chain(pki["cert"], pki["key"])
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.load_verify_locations(pki["ca"])
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.refused = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(raw,), daemon=True).start()

    def _one(self, raw: socket.socket) -> None:
        try:
            with self.context.wrap_socket(raw, server_side=True) as conn:
                while conn.recv(65536):
                    pass
        except ssl.SSLError:
            self.refused += 1
        except OSError:
            pass
        finally:
            raw.close()

    def close(self) -> None:
        self.server.close()


def _client(pki: dict[str, Path], which: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    context.load_cert_chain(pki[which], pki[f"{which}_key"])
    return context


@pytest.fixture
def warnings_logged(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[], list[str]]]:
    caplog.set_level(logging.INFO, logger="pacsguard.atna.outbound")
    yield lambda: [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_tls13_alert_after_the_handshake_is_a_named_recorded_failure(
        tmp_path: Path, two_pkis: dict[str, Path], warnings_logged: Callable[[], list[str]]) -> None:
    """The repository refuses pacsguard's certificate with an alert its client reads only after
    the handshake: once, every retry "connected" and the feed died without a word. Now the alert
    is the reason, recorded once however many retries, logged at WARNING once, nothing is marked
    delivered; with a certificate it accepts, everything arrives and a new refusal is news again."""
    repository = _MutualTlsRepository(two_pkis)
    spool = Spool(tmp_path / "spool.db")
    failures: list[Failure] = []
    # confirm_after well above the alert's few milliseconds, on a loaded machine too
    sender = OutboundSender(spool, "site-a", "127.0.0.1", repository.port, _client(two_pkis, "bad"),
                            server_name="localhost", retry=0.1, confirm_after=2.0, on_failed=failures.append)
    sender.start()
    try:
        spool.add([b"<AuditMessage>m%d</AuditMessage>" % i for i in range(3)])
        until(lambda: sender.connections >= 4 and repository.refused >= 4, "four refused connections")
    finally:
        sender.stop()
    assert spool.delivered() == 0 and spool.pending() == 3
    assert [f.reason for f in failures] == [
        "TLS alert from the repository: unknown ca (it refuses pacsguard's client certificate)"]
    assert not failures[0].certificate  # the repository's own certificate verified
    assert warnings_logged() == [f"outbound to 127.0.0.1:{repository.port}: {failures[0].reason} "
                                 "(audit messages wait in the spool: 3)"]

    # The administrator installs a certificate the repository trusts.
    sender = OutboundSender(spool, "site-a", "127.0.0.1", repository.port, _client(two_pkis, "good"),
                            server_name="localhost", retry=0.1, confirm_after=0.5, on_failed=failures.append)
    sender.failing = failures[0].reason  # as the refused feed left it
    sender.start()
    try:
        until(lambda: spool.delivered() == 3, "delivery")
        until(lambda: sender.failing is None, "the connection to count as working")
    finally:
        sender.stop()
        spool.close()
        repository.close()
    assert len(failures) == 1


def _rsyslog_refusing(base: Path, pki: dict[str, Path], port: int) -> subprocess.Popen[bytes]:
    """rsyslogd with gtls and mutual TLS whose PermittedPeer names someone else: GnuTLS completes
    the handshake, then rsyslog checks the name and closes the connection (no alert)."""
    if not Path(RSYSLOGD).exists() or not list(Path("/usr/lib").glob("*/rsyslog/lmnsd_gtls.so")):
        pytest.fail("rsyslog's gtls driver is missing: apt-get install rsyslog rsyslog-gnutls")
    (base / "work").mkdir(parents=True)
    conf = base / "rsyslog.conf"
    conf.write_text(f'''
global(workDirectory="{base}/work" DefaultNetstreamDriverCAFile="{pki["ca"]}"
       DefaultNetstreamDriverCertFile="{pki["cert"]}" DefaultNetstreamDriverKeyFile="{pki["key"]}")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="x509/name"
       PermittedPeer=["someone-else"])
template(name="raw" type="string" string="%rawmsg%\\n")
ruleset(name="in") {{ action(type="omfile" file="{base}/received.log" template="raw") }}
input(type="imtcp" port="{port}" address="127.0.0.1" ruleset="in")
''')
    console = base / "console.log"
    with console.open("wb") as out:
        proc = subprocess.Popen([RSYSLOGD, "-n", "-f", str(conf), "-i", str(base / "pid")], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    wait_listening(proc, port, console, "rsyslogd")
    return proc


def test_rsyslog_refusing_the_client_certificate_is_a_recorded_failure(
        tmp_path: Path, two_pkis: dict[str, Path], warnings_logged: Callable[[], list[str]]) -> None:
    """rsyslog (gtls, AuthMode x509/name) closing the connection right after the handshake because
    its PermittedPeer does not name pacsguard: once silent reconnections for ever; now a failure
    saying so, recorded once, and nothing marked delivered."""
    port = free_port()
    proc = _rsyslog_refusing(tmp_path / "rsyslog", two_pkis, port)
    spool = Spool(tmp_path / "spool.db")
    failures: list[Failure] = []
    sender = OutboundSender(spool, "site-a", "127.0.0.1", port, _client(two_pkis, "good"), server_name="localhost",
                            retry=0.2, confirm_after=2.0, on_failed=failures.append)
    try:
        sender.start()
        spool.add([b"<AuditMessage>m%d</AuditMessage>" % i for i in range(3)])
        until(lambda: sender.connections >= 3 and failures, "three connections and a failure")
    finally:
        sender.stop()
        proc.send_signal(signal.SIGTERM)
        proc.wait(DEADLINE)
    console = (tmp_path / "rsyslog" / "console.log").read_text(errors="replace")
    assert "not permitted to talk to it" in console
    assert [f.reason for f in failures] == [EARLY_CLOSE] and spool.delivered() == 0 and spool.pending() == 3
    assert len(warnings_logged()) == 1
    spool.close()


# ------------------------------------------------------------------------------ ITI-81: no empty strings


def _user(user_id: str, roles: tuple[Code, ...] = ()) -> Participant:
    return Participant(user_id, user_name="Lee", requestor=True, access_point="10.20.0.7", access_point_type="2",
                       roles=roles)


def _rendered(r: AuditRecord) -> dict[str, Any]:
    event = frame_event(SENDER, b"<85>1 - emr1 audit - IHE+RFC-3881 - " + to_xml(r))
    resource = fhir.render(record_from_event(event), event.id)
    AuditEvent.model_validate(resource)  # FHIR R4: "string values SHALL NOT be empty"
    return resource


def test_an_unknown_patient_id_renders_as_an_identifier_without_a_value() -> None:
    """pacsguard's own 110104 for an object without Patient ID carries the Patient with an empty
    ParticipantObjectID: once rendered as identifier.value "", which FHIR forbids."""
    transferred = record("110104")
    unknown = ParticipantObject("", Code("2", "RFC-3881", "Patient Number"), type_code="1", role="1")
    out = _rendered(replace(transferred, objects=(unknown, *transferred.objects[1:])))
    assert out["entity"][0]["what"] == {"identifier": {"type": {"coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "2", "display": "Patient Number"}]}}}
    assert out["entity"][0]["type"]["code"] == "1"


def test_empty_attributes_leave_their_elements_out() -> None:
    """An empty UserID, role code, detail type or value, event code, source type code, and an object
    with nothing at all: each left out, so the AuditEvent stays valid FHIR."""
    base = record("110110")
    empty_role = Code("", "DCM", None)
    nothing = ParticipantObject("", Code("", "DCM", None))
    details = ParticipantObject("PID-1", Code("2", "RFC-3881", "Patient Number"), type_code="1", role="1",
                                details=(("", ""), ("", "eA=="), ("note", ""), ("kept", "eA==")))
    out = _rendered(replace(base, event_id=Code("", "DCM", "Something"), participants=(_user("", (empty_role,)),),
                            source_types=(Code("", "DCM", None),), objects=(details, nothing)))
    assert out["type"] == {"system": fhir.DCM, "display": "Something"}
    assert out["agent"] == [{"requestor": True, "name": "Lee", "network": {"address": "10.20.0.7", "type": "2"}}]
    assert "type" not in out["source"]
    assert len(out["entity"]) == 1 and out["entity"][0]["detail"] == [{"type": "kept", "valueBase64Binary": "eA=="}]


def test_codes_are_rendered_as_tokens() -> None:
    """A.5's codes are xs:token, whitespace-collapsed; FHIR's code type allows no outer or repeated
    whitespace."""
    role = Code(" 110153 ", "DCM", "Source Role ID")
    patient = ParticipantObject("PID-1", Code(" 2", "RFC-3881", "Patient Number"), type_code=" 1 ", role="1",
                                life_cycle=" 6")
    out = _rendered(replace(record("110110"), participants=(_user("lee", (role,)),), objects=(patient,)))
    assert out["agent"][0]["role"][0]["coding"][0]["code"] == "110153"
    assert out["entity"][0]["type"]["code"] == "1" and out["entity"][0]["lifecycle"]["code"] == "6"


# ------------------------------------------------------------------------------ dates at the ends of time


def _access(when: datetime) -> Event:
    patient = ParticipantObject("D1", Code("2", "RFC-3881", "Patient Number"), type_code="1", role="1")
    r = replace(record("110110"), time=when, participants=(_user("lee"),), objects=(patient,), action="R")
    return frame_event(SENDER, b"<85>1 - emr1 audit - IHE+RFC-3881 - " + to_xml(r))


def test_explanation_windows_stop_at_the_ends_of_time(tmp_path: Path) -> None:
    """`audit patient --until 9999-12-31...` or `--since 0001-01-02...`, and an access dated at the
    end of 9999 judged on arrival: the evidence window beyond them was an OverflowError."""
    store, _ = new_store(str(tmp_path / "s.db"), tmp_path)
    store.append([_access(datetime(2026, 12, 3, 9, tzinfo=timezone.utc))])
    try:
        late = explain_patient(store, "D1", None, datetime(9999, 12, 31, tzinfo=timezone.utc), ExplainSettings())
        early = explain_patient(store, "D1", datetime(1, 1, 2, tzinfo=timezone.utc), None, ExplainSettings())
        last = explain_unstored(store, _access(datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)),
                                ExplainSettings())
        first = explain_unstored(store, _access(datetime(1, 1, 1, tzinfo=timezone.utc)), ExplainSettings())
        since_year_one = list(recorded(store, datetime(1, 1, 1, 0, 30, tzinfo=timezone.utc)))
    finally:
        store.close()
    assert len(late) == len(early) == 1 and last is not None and first is not None
    assert [e.kind for e in since_year_one] == ["atna.audit.patient-record"]


def test_the_last_day_there_is_has_a_report(tmp_path: Path) -> None:
    utc = SiteZone.named("UTC")
    assert utc.day_span(date.max) == (datetime(9999, 12, 31, tzinfo=timezone.utc), None)
    assert utc.day_span(date(2026, 12, 3))[1] == datetime(2026, 12, 4, tzinfo=timezone.utc)
    target = str(tmp_path / "store.db")
    store, _ = new_store(target, tmp_path)
    store.append([_access(datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=timezone.utc)),
                  _access(datetime(2026, 12, 3, 9, tzinfo=timezone.utc))])
    store.close()
    runner = CliRunner()
    for args in (["audit", "report", "--day", "9999-12-31", "--format", "json", "--time-zone", "UTC"],
                 ["audit", "patient", "D1", "--until", "9999-12-31T00:00:00Z", "--format", "json"],
                 ["audit", "patient", "D1", "--since", "0001-01-02T00:00:00Z", "--format", "json"],
                 ["atna", "sources", "--since", "0001-01-01T00:00:00Z"]):
        out = runner.invoke(main.app, [*args, "--store", target])
        assert out.exit_code == 0, (args, out.output)
    out = runner.invoke(main.app, ["audit", "report", "--day", "9999-12-31", "--format", "json", "--time-zone", "UTC",
                                   "--store", target])
    assert '"events": 1' in out.output
