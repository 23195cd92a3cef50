"""Outside round 7 on the syslog side of the repository: a pretty-printed audit message relayed
by an rsyslog with its default settings (its line feeds escaped as ``#012``) is read and found by
its patient; every connection a full listener refuses is counted by `atna sources`, also when the
flood stops before a second one is recorded; an RFC 3164 timestamp from just before New Year is
last year's. Real rsyslog, real sockets, the running service."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from atna_corpus import every_event_id, fhir_patient_read
from receiver import DEADLINE, running
from test_senders_real import LOGGER, RSYSLOGD, one_line, wait_listening

from pacsguard.atna.ingest import Sender, frame_event
from pacsguard.atna.sources import count_sources
from pacsguard.atna.syslog.listeners import REFUSALS_RECORDED_EVERY
from pacsguard.atna.syslog.rfc5424 import parse
from pacsguard.events.model import Event
from store_helpers import new_store

HOST = "127.0.63.1"  # any loopback address; this one keeps clear of other suites run beside this one
SENDER = Sender("10.20.0.9", 40000, "tcp", "octet-counting")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def pretty(xml: bytes) -> str:
    """An A.5 message as a sender that pretty-prints it writes it: a line feed after the XML
    declaration and an indented line for each element."""
    return xml.decode().replace("?><", "?>\n<").replace("><", ">\n  <")


def relayed(tmp_path: Path, template: str, messages: list[str]) -> list[Event]:
    """``messages`` sent by `logger` (RFC 5424, octet counting) to an rsyslog with its default
    settings, which forwards them over TCP with ``template`` to the repository; what it records."""
    if not Path(RSYSLOGD).exists() or not Path(LOGGER).exists():
        pytest.fail("rsyslogd and logger are needed: apt-get install rsyslog bsdutils")
    port, inbound = free_port(), free_port()
    base = tmp_path / "rsyslog"
    (base / "work").mkdir(parents=True)
    conf = base / "rsyslog.conf"
    conf.write_text(f'''
global(workDirectory="{base / "work"}" maxMessageSize="256k")
module(load="imtcp")
ruleset(name="fwd") {{
  action(type="omfwd" target="{HOST}" port="{port}" protocol="tcp" TCP_Framing="octet-counted"
         template="{template}")
}}
input(type="imtcp" port="{inbound}" address="{HOST}" ruleset="fwd")
''')
    console = base / "rsyslogd.out"
    with running({"tcp": {"host": HOST, "port": port}}) as rx:
        with open(console, "ab") as out:
            proc = subprocess.Popen([RSYSLOGD, "-n", "-f", str(conf), "-i", str(base / "pid")], stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            _wait_listening(proc, inbound, console)
            for message in messages:
                subprocess.run([LOGGER, "--rfc5424", "--msgid", "IHE+RFC-3881", "--size", "300000", "-n", HOST,
                                "-P", str(inbound), "-T", "--octet-count", "-t", "ctaudit", message], check=True,
                               timeout=DEADLINE)
            return rx.wait(lambda evs: len(evs) >= len(messages), f"the {len(messages)} relayed messages")
        finally:
            proc.terminate()
            proc.wait(DEADLINE)


def test_a_pretty_printed_message_through_a_default_rsyslog_relay_is_read_and_found_by_its_patient(
        tmp_path: Path) -> None:
    """rsyslog escapes the control characters it receives (escapeControlCharactersOnReceive, on by
    default): the line feed after the XML declaration arrives as ``#012``, which XML does not allow
    there. Before round 7 such a message was stored unparsed, without its patient, so `audit
    patient` never listed it; now it is read with the escapes undone and flagged, its raw bytes kept
    as they came. A pretty-printed FHIR AuditEvent relayed the same way is read too."""
    got = relayed(tmp_path, "RSYSLOG_SyslogProtocol23Format",
                  [pretty(every_event_id()["110110"]), json.dumps(fhir_patient_read(), indent=2)])
    by_syntax = {e.details.get("syntax"): e for e in got}
    assert set(by_syntax) == {"dicom", "fhir"}, [(e.kind, e.details.get("error")) for e in got]
    for ev in by_syntax.values():
        assert ev.kind == "atna.audit.patient-record"
        assert "PID-0042" in ev.patient_ids
        assert "relay-escaped" in ev.details["flags"]
        assert "#012" in ev.details["raw"]  # stored as it arrived
    assert by_syntax["dicom"].details["event_id"]["code"] == "110110"


def test_rsyslogs_forward_format_is_read_as_the_legacy_form_it_is(tmp_path: Path) -> None:
    """rsyslog's RSYSLOG_ForwardFormat template writes the RFC 3164 form with an RFC 3339
    TIMESTAMP and a TAG without a colon (``<13>2026-12-05T08:54:07.99+00:00 host root <?xml``).
    Before round 7 neither was recognised: the timestamp, host and tag were taken as the start of
    the message, and every message so relayed, one line or pretty-printed, was stored unparsed
    (``not-audit-message``) without its patient. Now each is read, flagged legacy-bsd."""
    got = relayed(tmp_path, "RSYSLOG_ForwardFormat",
                  [one_line("110110"), pretty(every_event_id()["110104"])])
    assert sorted(e.kind for e in got) == ["atna.audit.instances-transferred", "atna.audit.patient-record"], [
        (e.kind, e.details.get("error")) for e in got]
    for ev in got:
        assert "PID-0042" in ev.patient_ids and "legacy-bsd" in ev.details["flags"]
        header = ev.details["syslog"]
        assert header["app_name"] == "ctaudit"
        assert abs(datetime.fromisoformat(header["timestamp"]) - datetime.now(timezone.utc)) < timedelta(hours=1)


def test_the_legacy_form_without_a_colon_after_its_tag() -> None:
    """RFC 3164 4.1.3 ends the TAG at its first character that is not alphanumeric: a space before
    the audit message ends it too (a colon is usual, not required); the classic TIMESTAMP and the
    RFC 3339 one are both read; a message right after the TIMESTAMP (no HOSTNAME, no TAG) is not
    taken for a host name. A space-separated word before something else stays message."""
    xml = one_line("110110").encode()
    for head in (b"<85>Dec  5 08:40:35 ct01 ctaudit ", b"<85>2026-12-05T08:40:35.5+01:00 ct01 ctaudit ",
                 b"<85>Dec  5 08:40:35 ct01 ctaudit[77]: "):
        message = parse(head + xml)
        assert (message.hostname, message.app_name, message.msg) == ("ct01", "ctaudit", xml), head
        assert message.timestamp is not None and message.flags == ("legacy-bsd",)
    assert parse(b"<85>2026-12-05T08:40:35Z ct01 ctaudit {}").msg == b"{}"
    bare = parse(b"<85>Dec  5 08:40:35 " + xml)  # a device that sends neither HOSTNAME nor TAG
    assert (bare.hostname, bare.app_name, bare.msg) == (None, None, xml) and bare.timestamp is not None
    assert parse(b"<85>Dec  5 08:40:35 ct01 just some words").msg == b"just some words"


def _wait_listening(proc: subprocess.Popen[bytes], port: int, console: Path) -> None:
    """test_senders_real.wait_listening, on this module's loopback address."""
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            assert proc.poll() is None, console.read_text(errors="replace")
            time.sleep(0.05)
    wait_listening(proc, port, console, "rsyslogd")  # fails naming what rsyslogd said


def test_escapes_are_undone_only_where_the_message_does_not_read_as_received() -> None:
    """A message that reads as it came keeps a literal ``#012`` (a room number) and is not
    flagged; one that reads neither way is stored unparsed with the fault as received (line and
    column in what the sender sent); an HTTP body is never rewritten (no relay in between)."""
    xml = every_event_id()["110110"].decode()
    named = xml.replace("<ParticipantObjectIdentification", "<ParticipantObjectIdentification><"
                        "ParticipantObjectName>Room #012</ParticipantObjectName></ParticipantObjectIdentification>"
                        "<ParticipantObjectIdentification", 1)
    ev = frame_event(SENDER, b"<85>1 - h a - IHE+RFC-3881 - " + named.encode())
    assert ev.kind == "atna.audit.patient-record" and "flags" not in ev.details
    assert any(o.get("name") == "Room #012" for o in ev.details["objects"])

    broken = xml.replace("?><", "?>#012<", 1).replace("</AuditMessage>", "<x></AuditMessage>")
    ev = frame_event(SENDER, b"<85>1 - h a - IHE+RFC-3881 - " + broken.encode())
    assert ev.kind == "atna.message.unparsed" and ev.details["problem"] == "unparsable-xml"
    assert "line 1, column" in ev.details["error"]  # the fault where the sender put it

    from pacsguard.atna.ingest import fhir_body_event

    body = json.dumps(fhir_patient_read(), indent=2).replace("\n", "#012").encode()
    ev = fhir_body_event({"sender": SENDER.to_dict()}, body, SENDER)
    assert ev.kind == "atna.message.unparsed" and ev.details["problem"] == "not-fhir"


def _flood(port: int, count: int) -> None:
    """``count`` connections, each sending one octet of a frame and held open meanwhile: a sender
    that sends is never the one closed to make room, so the ones beyond the places are refused."""
    held = []
    try:
        for _ in range(count):
            s = socket.create_connection((HOST, port), timeout=5)
            held.append(s)
            try:
                s.sendall(b"1")
            except OSError:
                pass  # refused under the send: that is the point
    finally:
        for s in held:
            s.close()


@pytest.mark.parametrize("readers", [0, 2])
def test_every_connection_a_full_listener_refuses_is_counted(readers: int) -> None:
    """Before round 7, of a flood of connections on a full syslog listener one was recorded every
    10 s and the others were only named in the text of the next record: when the flood stopped
    before it, they were never counted, and `atna sources` counted none of them anyway. Now the
    others are recorded as one summary per sender (details.repeats) when the 10 s are over, or
    when the listener stops, and `atna sources` counts every one (``refused_connections``): each
    of the connections is either counted as refused or was read (its frame cut short)."""
    port = free_port()
    flood = 30
    with running({"tcp": {"host": HOST, "port": port}, "max_connections": 2, "readers": readers}) as rx:
        _flood(port, flood)
        if readers == 0:  # the summary comes when the interval is over, without waiting for the stop
            rx.wait(lambda evs: any(e.details.get("repeats") for e in evs), "the summary of the interval",
                    deadline=REFUSALS_RECORDED_EVERY + DEADLINE)
        rx.wait(lambda evs: sum(e.details.get("problem") == "truncated" for e in evs) >= 2, "the held ones ended")
    events = list(rx.events)
    refusals = [e for e in events if e.details.get("problem") == "too-many-connections"]
    summaries = [e for e in refusals if e.details.get("repeats")]
    assert summaries and all("counted in this record" in e.details["error"] for e in summaries)
    # A summary of one problem from the host (round 17: the first 10 a minute one by one) stands for its repeats.
    read = sum(e.details.get("repeats", 1) for e in events if e.details.get("problem") == "truncated")
    [row] = count_sources(events)
    assert row.refused_connections == sum(e.details.get("repeats", 1) for e in refusals)
    assert row.refused_connections + read == flood, (row, read)
    assert row.malformed_frames == read


def test_every_connection_the_full_http_endpoint_turns_away_is_counted(tmp_path: Path, monkeypatch: Any) -> None:
    """The same for the RESTful endpoint: of three connections answered 503, one is recorded at once
    and two in the summary written when the endpoint stops; `atna sources` counts three."""
    monkeypatch.setenv("ATNA_TOKEN", "r7-token")
    port = free_port()
    request = b"GET /AuditEvent HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer r7-token\r\n\r\n"
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    with running({"http": {"host": HOST, "port": port, "token": {"env": "ATNA_TOKEN"}}, "max_connections": 2},
                 store) as rx:
        held = [socket.create_connection((HOST, port), timeout=5) for _ in range(2)]
        for s in held:  # authenticated, and kept open
            s.sendall(request)
            assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
        for _ in range(3):
            with socket.create_connection((HOST, port), timeout=5) as s:
                assert s.recv(4096).startswith(b"HTTP/1.1 503 ")
        for s in held:
            s.close()
    store.close()
    refusals = [e for e in rx.events if e.details.get("problem") == "too-many-connections"]
    assert [e.details.get("repeats") for e in refusals] == [None, 2]
    [row] = count_sources(rx.events)
    assert row.http_refused == 3 and row.refused_connections == 0


def test_an_rfc3164_timestamp_is_never_a_year_ahead() -> None:
    """RFC 3164 4.1.2 sends no year. Before round 7 the year of receipt was assumed: "Dec 31
    23:59:59" received a few seconds into 1 January was dated a year ahead, and a message two days
    ahead of the receiver's clock was taken as this year's. Now the year is the latest that is not
    more than a day ahead: last year's for both; a sender a little fast at the end of the year is
    in the next; a backlog is in the past."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    message = parse(now.strftime("<13>%b %d %H:%M:%S host tag: m").encode())
    assert message.timestamp == now and message.flags == ("legacy-bsd",)
    ahead = now + timedelta(days=2)
    stamp = parse(ahead.strftime("<13>%b %d %H:%M:%S host tag: m").encode()).timestamp
    assert stamp is not None and stamp <= now + timedelta(days=1), stamp

    from pacsguard.atna.syslog.rfc5424 import _bsd_time

    new_year = datetime(2027, 1, 1, 0, 0, 5, tzinfo=timezone.utc)
    assert _bsd_time(12, 31, 23, 59, 59, new_year) == datetime(2026, 12, 31, 23, 59, 59, tzinfo=timezone.utc)
    eve = datetime(2026, 12, 31, 23, 59, 58, tzinfo=timezone.utc)
    assert _bsd_time(1, 1, 0, 0, 1, eve) == datetime(2027, 1, 1, 0, 0, 1, tzinfo=timezone.utc)
    assert _bsd_time(6, 5, 8, 0, 0, eve) == datetime(2026, 6, 5, 8, 0, tzinfo=timezone.utc)
    assert _bsd_time(2, 29, 8, 0, 0, eve) is None  # 2025, 2026 and 2027 have none
    assert _bsd_time(2, 30, 8, 0, 0, eve) is None


def test_a_reader_that_cannot_start_says_why_in_one_line_and_is_retried_ever_later(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """The certificate file replaced by one that does not load while the repository runs, then a
    reading process killed: before round 7 the new one printed a Python traceback and was started
    again every second for ever, an Event each time. Now it logs one line naming the file and what
    is wrong, ends with exit code 2, and each restart waits twice as long as the last (1, 2, 4 s,
    up to a minute)."""
    from test_readers import readers_of
    from test_senders_real import mutual_pki

    pki = mutual_pki(tmp_path / "pki")
    cert = tmp_path / "server.crt"
    shutil.copy(pki["cert"], cert)
    port = free_port()
    section = {"tls": {"host": HOST, "port": port, "cert_file": cert, "key_file": pki["key"]}, "readers": 1}
    with running(section) as rx:
        cert.write_text("not a certificate\n")
        os.kill(readers_of(rx).children[0].process.pid, signal.SIGKILL)
        got = rx.wait(lambda evs: sum(e.kind == "atna.reader.restarted" for e in evs) >= 3, "three restarts",
                      deadline=3 * DEADLINE)
        restarts = [e for e in got if e.kind == "atna.reader.restarted"]
        assert [e.details["restart_in"] for e in restarts[:3]] == [1.0, 2.0, 4.0]
        assert [e.details["exit_code"] for e in restarts[:3]] == [-9, 2, 2]
        assert "could not start" in restarts[1].message and "after 2 s" in restarts[1].message
    err = capfd.readouterr().err
    assert "Traceback" not in err, err
    assert f"the tls listener's reading process cannot start: cert file {cert}: no PEM certificate found" in err
