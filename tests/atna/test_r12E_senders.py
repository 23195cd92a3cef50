"""Syslog senders the repository had never met (outside round 12, helper E): Python's
logging.handlers.SysLogHandler, Apache log4j2's Syslog and Socket appenders (Rfc5424Layout, over
TCP, UDP and TLS), and the small syslog daemons busybox syslogd and GNU inetutils syslogd
relaying what `logger` hands them. Each sends PS3.15 A.5 audit messages, one over 8 KiB, one with
a patient named in non-ASCII letters; each must arrive once, with its patient, its bytes kept, the
flags it earns (legacy-bsd for an RFC 3164 header) and no others, and `atna sources`' counts
(`count_sources`, what the command prints) must name its sender with the right figures."""

from __future__ import annotations

import dataclasses
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from atna_corpus import CT, WHEN, fhir_patient_read, record
from receiver import DEADLINE, running

from pacsguard.atna.message.build import to_xml
from pacsguard.atna.message.record import AuditRecord, Code, Participant, ParticipantObject, SopClass
from pacsguard.atna.sources import count_sources
from pacsguard.events.model import Event
from pacsguard.tls import make_ca, make_cert
from peers import syslog_senders

HOST = "127.0.125.1"  # the repository; helper E's loopback addresses are 127.0.125.1-250
AUTHORITY = "STMARY&1.2.840.99999.1&ISO"
NAME = "MÜLLER^JÖRG=山田^太郎"  # PN with its ideographic group (PS3.5 6.2)


def _patient(rec: AuditRecord, pid: str, name: str | None = None) -> AuditRecord:
    objects = tuple(dataclasses.replace(o, object_id=f"{pid}^^^{AUTHORITY}", name=name or o.name) if o.role == "1"
                    else o for o in rec.objects)
    return dataclasses.replace(rec, objects=objects)


def messages() -> dict[str, str]:
    """Patient ID -> message: a one-line Patient Record, a pretty-printed (LF-indented) transfer of
    250 instances, over 8 KiB, and a Patient Record whose patient has a non-ASCII name."""
    uids = tuple(f"1.2.826.0.1.3680043.9.7777.1.{i}.{i * 7919}" for i in range(250))
    big = _patient(record("110104"), "PID-E002")
    big = dataclasses.replace(big, objects=tuple(
        dataclasses.replace(o, sop_classes=(SopClass(CT, len(uids), uids),)) if o.role == "3" else o
        for o in big.objects))
    out = {"PID-E001": to_xml(_patient(record("110110"), "PID-E001")).decode(),
           "PID-E002": to_xml(big).decode().replace("><", ">\n  <"),
           "PID-E003": to_xml(_patient(record("110110"), "PID-E003", NAME)).decode()}
    assert len(out["PID-E002"].encode()) > 8192 and "\n" in out["PID-E002"]
    return out


def compact(pid: str) -> str:
    """A Patient Record of under 1 KiB (the most busybox's and inetutils' syslogd pass on): one
    user, the patient with a non-ASCII name."""
    rec = AuditRecord("dicom", Code("110110", "DCM", "Patient Record"), "R", WHEN, "0", (),
                      participants=(Participant("jsmith", requestor=True, access_point="10.20.0.7",
                                                access_point_type="2"),), source_id="RIS1",
                      objects=(ParticipantObject(f"{pid}^^^{AUTHORITY}", Code("2", "RFC-3881", "Patient Number"),
                                                 type_code="1", role="1", name="MÜLLER^JÖRG"),))
    text = to_xml(rec).decode()
    assert len(text.encode()) < 900
    return text


def audits(events: list[Event]) -> list[Event]:
    return [e for e in events if e.kind.startswith("atna.audit.")]


def check_arrived(events: list[Event], sent: dict[str, str], *, transport: str, framing: str | None,
                  flags: tuple[str, ...] = ()) -> None:
    """Every message of ``sent`` arrived exactly once as an audit Event of its patient, its XML in
    the raw bytes kept, read with ``framing``, flagged ``flags`` and nothing else; nothing rejected
    or unparsed; `atna sources` names the one sender with as many messages, all parsed."""
    got = audits(events)
    assert sorted(e.patient_ids[0] for e in got) == sorted(sent), [(e.kind, e.details.get("error")) for e in events]
    assert len(events) == len(got), [(e.kind, e.details.get("problem"), e.details.get("error")) for e in events]
    for ev in got:
        pid = ev.patient_ids[0]
        assert ev.patient_ids[:2] == (pid, f"{pid}^^^{AUTHORITY}")
        assert sent[pid] in ev.details["raw"]  # the message kept as sent, byte for byte (UTF-8)
        assert ev.details["sender"]["transport"] == transport
        assert ev.details["sender"].get("framing") == framing
        assert tuple(ev.details.get("flags", ())) == flags, ev.details.get("flags")
        patient = next(o for o in ev.details["objects"] if o["role"] == "1")
        assert patient.get("name") in (None, "DOE^JANE", NAME, "MÜLLER^JÖRG")
    named = [e for e in got if e.patient_ids[0] in ("PID-E003", "PID-E101", "PID-E102")]
    for ev in named:
        assert next(o for o in ev.details["objects"] if o["role"] == "1")["name"] in (NAME, "MÜLLER^JÖRG")
    rows = count_sources(events)
    assert len(rows) == 1, rows
    row = rows[0]
    assert (row.transports, row.messages, row.parsed, row.malformed_frames, row.unparsable_xml) == \
        ([transport], len(sent), len(sent), 0, 0), row
    assert row.legacy_bsd == (len(sent) if "legacy-bsd" in flags else 0) and row.wrong_framing == 0
    assert row.missing_msgid == (len(sent) if "missing-msgid" in flags else 0) and row.last_error is None


def section(**listeners: dict[str, object]) -> dict[str, object]:
    return {name: {"host": HOST, "port": 0, **extra} for name, extra in listeners.items()}


# --- Python's logging.handlers.SysLogHandler -------------------------------------------------------


@pytest.mark.parametrize(("transport", "append_nul", "rfc5424"), [
    ("tcp", True, False), ("tcp", True, True), ("udp", True, False), ("udp", False, True)])
def test_python_syslog_handler(transport: str, append_nul: bool, rfc5424: bool) -> None:
    """SysLogHandler writes ``<PRI>`` and the formatted record, then a NUL (append_nul, the
    default) and, over TCP, nothing else: no LF, no octet count. Its own header is the PRI alone
    (read as the RFC 3164 form, flagged legacy-bsd, the message not lost); an application may
    write an RFC 5424 header in its formatter. The pretty-printed message's LFs stay in it."""
    sent = messages()
    with running(section(**{transport: {}})) as rx:
        syslog_senders.python_handler(HOST, rx.address(transport)[1], list(sent.values()), transport=transport,
                                      append_nul=append_nul, rfc5424=rfc5424)
        events = rx.wait(lambda evs: len(evs) >= 3, "three messages")
    check_arrived(events, sent, transport=transport, framing="non-transparent" if transport == "tcp" else None,
                  flags=() if rfc5424 else ("legacy-bsd",))
    if rfc5424:
        assert {e.details["syslog"]["msgid"] for e in events} == {"IHE+RFC-3881"}
        assert {e.details["syslog"]["app_name"] for e in events} == {"pyaudit"}


def unframed_while_open(sent: list[str], *, rfc5424: bool) -> list[Event]:
    """The Events of ``sent`` logged by SysLogHandler over TCP with append_nul off (no TRAILER,
    no count), all received while the sender still holds its connection open."""
    with running(section(tcp={})) as rx:
        sender = threading.Thread(target=syslog_senders.python_handler, daemon=True, kwargs={
            "host": HOST, "port": rx.address("tcp")[1], "messages": sent, "append_nul": False,
            "rfc5424": rfc5424, "linger": 4.0})
        sender.start()
        try:
            events = rx.wait(lambda evs: len(evs) >= len(sent), "every message, the connection still open", deadline=3)
            assert sender.is_alive()  # they arrived before the sender closed its connection
        finally:
            sender.join(DEADLINE)
    return events


@pytest.mark.parametrize("rfc5424", [False, True])
def test_python_syslog_handler_without_nul_over_tcp(rfc5424: bool) -> None:
    """append_nul=False over TCP leaves the messages with no TRAILER and no count: no RFC 6587
    framing at all (rsyslog and syslog-ng read such a stream as one message, up to an LF). Each
    message is told by where the next one's `<PRI>` follows its end, and the last one by its end
    tag with nothing after it, while the application keeps its connection open: once, all were
    one unparsed message, held until the sender closed (or lost as too slow after frame_timeout)."""
    sent = messages()
    events = unframed_while_open(list(sent.values()), rfc5424=rfc5424)
    check_arrived(events, sent, transport="tcp", framing="non-transparent", flags=() if rfc5424 else ("legacy-bsd",))


# --- log4j2 ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("pki")
    ca, ca_key = make_ca(base, "ATNA Test CA", 2)
    cert, key = make_cert(base, "localhost", ca, ca_key, hosts=["localhost", HOST], server=True, days=1)
    client, client_key = make_cert(base, "ris01", ca, ca_key, hosts=["ris01.local"], client=True, days=1)
    return {"ca": ca, "cert": cert, "key": key, "trust": syslog_senders.trust_store(ca, base),
            "keys": syslog_senders.key_store(client, client_key, base)}


@pytest.mark.parametrize(("kind", "protocol", "new_line"), [
    ("Syslog", "TCP", True), ("Syslog", "TCP", False), ("Syslog", "UDP", False), ("Syslog", "SSL", False),
    ("Socket", "SSL", True), ("Socket", "TCP", True)])
def test_log4j2_rfc5424(tmp_path: Path, pki: dict[str, Path], kind: str, protocol: str, new_line: bool) -> None:
    """log4j2 2.19's RFC 5424 writers: over TCP ended by LF (newLine) or by nothing at all (newLine's
    default, false: no RFC 6587 framing; read as Python's handler without NUL is, each message
    once; once, all were one unparsed message), over UDP one per datagram, over
    SSL octet-counted (TlsSyslogFrame counts the UTF-8 octets; with newLine the LF is inside the
    count), with the client certificate of its KeyStore (mutual TLS, IHE ITI-19). MSGID and
    APP-NAME as configured, no flag."""
    transport = {"TCP": "tcp", "UDP": "udp", "SSL": "tls"}[protocol]
    extra = {"cert_file": str(pki["cert"]), "key_file": str(pki["key"]), "ca_file": str(pki["ca"]),
             "require_client_cert": True} if transport == "tls" else {}
    sent = messages()
    with running(section(**{transport: extra})) as rx:
        appender = syslog_senders.log4j_appender(kind=kind, host=HOST, port=rx.address(transport)[1],
                                                 protocol=protocol, new_line=new_line, trust_store=pki["trust"],
                                                 key_store=pki["keys"])
        syslog_senders.log4j_send(tmp_path, appender, list(sent.values()))
        events = rx.wait(lambda evs: len(evs) >= 3, "three messages")
    framing = {"tcp": "non-transparent", "tls": "octet-counting", "udp": None}[transport]
    check_arrived(events, sent, transport=transport, framing=framing)
    assert {(e.details["syslog"]["msgid"], e.details["syslog"]["app_name"]) for e in events} == \
        {("IHE+RFC-3881", "risaudit")}
    assert {e.details["sender"].get("certificate") for e in events} == {"CN=ris01" if transport == "tls" else None}


# --- syslog daemons relaying what logger writes to their local socket -----------------------------


def test_busybox_syslogd_relays_short_messages_and_cuts_long_ones(tmp_path: Path) -> None:
    """busybox syslogd -R forwards over UDP in the RFC 3164 form without HOSTNAME (`<PRI>Mmm dd
    hh:mm:ss TAG: MSG`): the TAG is the tag, not the host name (rsyslog reads it so; pacsguard once
    stored `ctaudit:` as the host name and no tag). It cuts what it reads at about 1 KiB: a long
    audit message arrives once, cut, stored unparsed with its bytes, not as several."""
    sent = {"PID-E101": compact("PID-E101"), "PID-E102": compact("PID-E102")}
    long = messages()["PID-E002"]
    with running(section(udp={})) as rx:
        syslog_senders.busybox_relay(tmp_path / "busybox", HOST, rx.address("udp")[1], [*sent.values(), long],
                                     delivered=lambda: len(rx.events) >= 3)
        events = rx.wait(lambda evs: len(evs) >= 3, "three datagrams")
    cut = [e for e in events if e.kind == "atna.message.unparsed"]
    assert len(cut) == 1 and cut[0].details["problem"] == "unparsable-xml"
    assert long.startswith(cut[0].details["raw"].split("ctaudit: ", 1)[1]) and len(cut[0].details["raw"]) < 1100
    check_arrived([e for e in events if e not in cut], sent, transport="udp", framing=None, flags=("legacy-bsd",))
    for ev in events:
        assert (ev.details["syslog"].get("hostname"), ev.details["syslog"].get("app_name")) == (None, "ctaudit")


def test_inetutils_syslogd_relays_short_messages_with_their_tag(tmp_path: Path) -> None:
    """GNU inetutils syslogd forwarding `auth.*` to @HOST (UDP 514) writes the RFC 3164 form without
    HOSTNAME too; its sender is the address it is bound to. Like busybox it cuts a message at 1 KiB."""
    repository, relay = "127.0.125.20", "127.0.125.21"
    sent = {"PID-E101": compact("PID-E101"), "PID-E102": compact("PID-E102")}
    try:
        context = running({"udp": {"host": repository, "port": 514}})
        rx = context.__enter__()
    except PermissionError:
        pytest.fail("inetutils syslogd forwards to port 514 only: the test needs root or CAP_NET_BIND_SERVICE")
    try:
        syslog_senders.inetutils_relay(tmp_path / "inetutils", repository, relay, list(sent.values()),
                                       delivered=lambda: len(rx.events) >= 2)
        events = rx.wait(lambda evs: len(evs) >= 2, "two datagrams")
    finally:
        context.__exit__(None, None, None)
    check_arrived(events, sent, transport="udp", framing=None, flags=("legacy-bsd",))
    assert {e.details["sender"]["host"] for e in events} == {relay}
    for ev in events:
        assert (ev.details["syslog"].get("hostname"), ev.details["syslog"].get("app_name")) == (None, "ctaudit")


# --- `pacsguard atna sources` over what two of them sent to `pacsguard atna listen` ----------------


def _stored(store: Path) -> int:
    """Events in the listening repository's store so far, read beside it (read-only)."""
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1) as db:
            return int(db.execute("SELECT size FROM tree_state").fetchone()[0])
    except (sqlite3.Error, TypeError):
        return 0


def test_atna_sources_names_each_sender(tmp_path: Path) -> None:
    """`pacsguard atna listen` takes Python's handler without NUL over TCP (from 127.0.0.1) and the
    inetutils relay over UDP (from the address it is bound to); `pacsguard atna sources` lists the
    two with their messages, all parsed, all RFC 3164 (legacy_bsd), nothing malformed."""
    repository, relay = "127.0.125.30", "127.0.125.31"
    with socket.socket() as probe:
        probe.bind((repository, 0))
        tcp = probe.getsockname()[1]
    store, log = tmp_path / "audit.db", tmp_path / "listen.log"
    with log.open("w") as out:
        listen = subprocess.Popen([sys.executable, "-m", "pacsguard.cli", "atna", "listen", "--tcp",
                                   f"{repository}:{tcp}", "--udp", f"{repository}:514", "--store", str(store)],
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + DEADLINE
        while "ATNA syslog" not in log.read_text():
            assert listen.poll() is None and time.monotonic() < end, log.read_text()
            time.sleep(0.1)
        sent = messages()
        syslog_senders.python_handler(repository, tcp, list(sent.values()), append_nul=False)
        syslog_senders.inetutils_relay(tmp_path / "inetutils", repository, relay,
                                       [compact("PID-E101"), compact("PID-E102")],
                                       delivered=lambda: _stored(store) >= 5)
        while _stored(store) < 5:
            assert time.monotonic() < end, f"{_stored(store)} of 5 stored: {log.read_text()}"
            time.sleep(0.1)
    finally:
        listen.send_signal(signal.SIGTERM)
        listen.wait(DEADLINE)
    assert "Traceback" not in log.read_text()
    done = subprocess.run([sys.executable, "-m", "pacsguard.cli", "atna", "sources", "--store", str(store), "--format",
                           "json"], capture_output=True, text=True, timeout=60, check=True)
    rows = {row["sender"]: row for row in json.loads(done.stdout)}
    figures = {sender: (row["transports"], row["messages"], row["parsed"], row["legacy_bsd"], row["malformed_frames"],
                        row["unparsable_xml"], row["last_error"]) for sender, row in rows.items()}
    assert figures == {"127.0.0.1": (["tcp"], 3, 3, 3, 0, 0, None), relay: (["udp"], 2, 2, 2, 0, 0, None)}


def test_python_syslog_handler_without_nul_sends_fhir_json() -> None:
    """FHIR AuditEvents (JSON, IHE RESTful ATNA's resource) logged through SysLogHandler with
    append_nul off: no TRAILER, no count. Each message ends where the next `<PRI>` follows its
    '}', and the last where nothing follows its closing '}' while the connection stays open: it
    waited for the sender to close."""
    sent = {}
    for pid in ("PID-J001", "PID-J002", "PID-J003"):
        resource = fhir_patient_read()
        resource["entity"][0]["what"]["identifier"]["value"] = pid  # type: ignore[index]
        sent[pid] = json.dumps(resource, separators=(",", ":"))
    events = unframed_while_open(list(sent.values()), rfc5424=True)
    got = audits(events)
    assert sorted(e.patient_ids[0] for e in got) == sorted(sent) and len(got) == len(events)
    for ev in got:
        assert sent[ev.patient_ids[0]] in ev.details["raw"]
        assert ev.details["sender"]["framing"] == "non-transparent"
