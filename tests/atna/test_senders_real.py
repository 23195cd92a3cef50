"""Real senders: util-linux `logger` over TCP (octet counting and LF framing) and UDP; Debian's rsyslogd
forwarding over RFC 5425 TLS (GnuTLS and OpenSSL drivers, mutual TLS); Debian's syslog-ng forwarding
over RFC 5425 TLS (mutual TLS) into `pacsguard atna listen --tls`; plus hostile connections, each
recorded and none stopping the receiver."""

from __future__ import annotations

import socket
import sqlite3
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from atna_corpus import BILLION_LAUGHS, every_event_id
from receiver import DEADLINE, Repository, free_port, running

from pacsguard.events.model import Event
from pacsguard.store import EventQuery, EventStore
from pacsguard.tls import make_ca, make_cert

LOGGER = "/usr/bin/logger"
RSYSLOGD = "/usr/sbin/rsyslogd"
ROOT = Path(__file__).resolve().parents[2]
PATIENT = "PID-0042"
CX = "PID-0042^^^STMARY&1.2.840.99999.1&ISO"


def one_line(event_id: str) -> str:
    return every_event_id()[event_id].decode().replace("\n", "")


def logger(*args: str, message: str) -> None:
    if not Path(LOGGER).exists():
        pytest.fail(f"{LOGGER} (util-linux) is missing")
    subprocess.run([LOGGER, "--rfc5424", "--msgid", "IHE+RFC-3881", "--size", "300000", "-n", "127.0.0.1",
                    *args, message], check=True, timeout=DEADLINE)


@pytest.mark.parametrize("readers", [0, 2])
def test_logger_over_tcp_both_framings_and_udp(readers: int) -> None:
    port = free_port()
    with running({"tcp": {"port": port}, "udp": {"port": port}, "readers": readers}) as rx:
        logger("-T", "--octet-count", "-P", str(port), message=one_line("110110"))
        logger("-T", "-P", str(port), message=one_line("110104"))
        logger("-d", "-P", str(port), message=one_line("110112"))
        got = rx.wait(lambda evs: len([e for e in evs if e.kind.startswith("atna.audit.")]) == 3, "three audits")
    by_kind = {e.kind: e for e in got}
    transfer = by_kind["atna.audit.instances-transferred"]
    assert transfer.details["sender"]["transport"] == "tcp"
    assert transfer.details["sender"]["framing"] == "non-transparent"
    assert by_kind["atna.audit.patient-record"].details["sender"]["framing"] == "octet-counting"
    assert by_kind["atna.audit.query"].details["sender"]["transport"] == "udp"
    for ev in (transfer, by_kind["atna.audit.patient-record"]):
        assert ev.patient_ids[:2] == (PATIENT, CX)
        assert one_line(ev.details["event_id"]["code"]) in ev.details["raw"]
        assert ev.details["syslog"]["msgid"] == "IHE+RFC-3881"


@pytest.mark.parametrize("readers", [0, 2])
def test_python_logging_syslog_handler_over_tcp_ends_messages_with_nul(readers: int) -> None:
    """Python's own logging.handlers.SysLogHandler over TCP, as an application's audit logger: it
    ends each message with NUL and no LF (RFC 6587 3.4.2 names both trailers). Once, its messages
    ran together into one oversize line and were all lost; and a pretty-printed message (LFs inside,
    NUL at its end) was cut at its first LF."""
    import logging
    import logging.handlers

    port = free_port()
    with running({"tcp": {"port": port}, "readers": readers}) as rx:
        handler = logging.handlers.SysLogHandler(("127.0.0.1", port), socktype=socket.SOCK_STREAM)
        handler.setFormatter(logging.Formatter("1 %(asctime)s.000Z ris audit - IHE+RFC-3881 - %(message)s",
                                               "%Y-%m-%dT%H:%M:%S"))
        audit = logging.getLogger("pacsguard-test-audit")
        audit.propagate = False
        audit.addHandler(handler)
        try:
            for event_id in ("110110", "110112"):
                audit.warning("%s", one_line(event_id))
            audit.warning("%s", every_event_id()["110104"].decode().replace("><", ">\n  <"))  # pretty-printed
        finally:
            audit.removeHandler(handler)
            handler.close()
        got = rx.wait(lambda evs: len([e for e in evs if e.kind.startswith("atna.audit.")]) == 3, "three audits")
    audits = [e for e in got if e.kind.startswith("atna.audit.")]
    assert sorted(e.details["event_id"]["code"] for e in audits) == ["110104", "110110", "110112"]
    assert all(e.details["sender"]["framing"] == "non-transparent" for e in audits)
    assert not [e for e in got if e.kind == "atna.frame.rejected"]
    transfer = next(e for e in audits if e.details["event_id"]["code"] == "110104")
    assert transfer.patient_ids[:2] == (PATIENT, CX) and transfer.details["syslog"]["msgid"] == "IHE+RFC-3881"


@pytest.mark.parametrize("append_nul", [True, False])
def test_python_logging_syslog_handler_over_udp(append_nul: bool) -> None:
    """The same handler over UDP (its default transport) appends NUL to each datagram by default; the
    NUL is not part of the XML. Once, every such datagram was stored as unparsable XML."""
    import logging
    import logging.handlers

    port = free_port()
    with running({"udp": {"port": port}}) as rx:
        handler = logging.handlers.SysLogHandler(("127.0.0.1", port))
        handler.append_nul = append_nul
        handler.setFormatter(logging.Formatter("1 - ris audit - IHE+RFC-3881 - %(message)s"))
        audit = logging.getLogger("pacsguard-test-audit-udp")
        audit.propagate = False
        audit.addHandler(handler)
        try:
            audit.warning("%s", every_event_id()["110104"].decode())
        finally:
            audit.removeHandler(handler)
            handler.close()
        got = rx.wait(lambda evs: bool(evs), "one event")
    assert [e.kind for e in got] == ["atna.audit.instances-transferred"], got[0].details.get("error")
    assert got[0].patient_ids[:2] == (PATIENT, CX)


def test_a_large_message_over_tcp() -> None:
    port = free_port()
    big = one_line("110104").replace("</AuditMessage>", "<ParticipantObjectIdentification ParticipantObjectID=\""
                                     + "1.2.3." + "9" * 90_000 + "\"><ParticipantObjectIDTypeCode csd-code=\"110182\""
                                     " codeSystemName=\"DCM\" originalText=\"Node ID\"/>"
                                     "</ParticipantObjectIdentification></AuditMessage>")
    assert len(big) > 65_536
    with running({"tcp": {"port": port}}) as rx:
        logger("-T", "--octet-count", "-P", str(port), message=big)
        got = rx.wait(lambda evs: any(e.kind.startswith("atna.audit.") for e in evs), "the large message")
    assert big in got[0].details["raw"]


def _rsyslog_forwarder(base: Path, driver: str, target: int, pki: dict[str, Path]) -> tuple[subprocess.Popen[bytes],
                                                                                         int, Path]:
    if not Path(RSYSLOGD).exists() or not list(Path("/usr/lib").glob(f"*/rsyslog/lmnsd_{driver}.so")):
        pytest.fail(f"rsyslog's {driver} driver is missing: apt-get install rsyslog rsyslog-gnutls rsyslog-openssl")
    base.mkdir()
    (base / "work").mkdir()
    inbound = free_port()
    conf = base / "rsyslog.conf"
    conf.write_text(f'''
global(workDirectory="{base / "work"}" maxMessageSize="256k"
       DefaultNetstreamDriverCAFile="{pki["ca"]}" DefaultNetstreamDriverCertFile="{pki["cert"]}"
       DefaultNetstreamDriverKeyFile="{pki["key"]}")
module(load="imtcp")
ruleset(name="fwd") {{
  action(type="omfwd" target="127.0.0.1" port="{target}" protocol="tcp" StreamDriver="{driver}"
         StreamDriverMode="1" StreamDriverAuthMode="x509/name" StreamDriverPermittedPeers="localhost"
         TCP_Framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format")
}}
input(type="imtcp" port="{inbound}" address="127.0.0.1" ruleset="fwd")
''')
    console = base / "rsyslogd.out"
    with open(console, "ab") as out:
        proc = subprocess.Popen([RSYSLOGD, "-n", "-f", str(conf), "-i", str(base / "pid")], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    wait_listening(proc, inbound, console, "rsyslogd")
    return proc, inbound, console


def wait_listening(proc: subprocess.Popen[bytes], port: int, console: Path, name: str) -> None:
    """Until the relay ``proc`` accepts connections on ``port``; its ``console`` tells why it did not."""
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert proc.poll() is None, console.read_text(errors="replace")
            time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"{name} did not listen: {console.read_text(errors='replace')}")


def mutual_pki(base: Path) -> dict[str, Path]:
    """A CA, the repository's server certificate (localhost) and a sender's client certificate
    (CN=modality), for mutual TLS as IHE ITI-19 asks."""
    ca, ca_key = make_ca(base, "ATNA Test CA", 2)
    cert, key = make_cert(base, "localhost", ca, ca_key, hosts=["localhost", "127.0.0.1"], server=True, days=1)
    client, client_key = make_cert(base, "modality", ca, ca_key, hosts=["modality.local"], client=True, days=1)
    return {"ca": ca, "cert": cert, "key": key, "client": client, "client_key": client_key}


@pytest.mark.parametrize(("driver", "readers"), [("gtls", 0), ("ossl", 0), ("gtls", 2), ("ossl", 2)])
def test_rsyslog_forwards_over_mutual_tls(tmp_path: Path, driver: str, readers: int) -> None:
    pki = mutual_pki(tmp_path / "pki")
    port = free_port()
    section = {"tls": {"port": port, "cert_file": pki["cert"], "key_file": pki["key"], "ca_file": pki["ca"],
                       "require_client_cert": True}, "readers": readers}
    with running(section) as rx:
        proc, inbound, console = _rsyslog_forwarder(tmp_path / "rsyslog", driver, port,
                                                    {"ca": pki["ca"], "cert": pki["client"], "key": pki["client_key"]})
        try:
            send_through(inbound)
            got = rx.wait(lambda evs: len([e for e in evs if e.kind.startswith("atna.audit.")]) == 4,
                          f"four audits through rsyslog {driver}")
        finally:
            proc.terminate()
            proc.wait(DEADLINE)
    assert_forwarded(got)


def send_through(inbound: int) -> None:
    """What a modality's local syslog daemon is handed: three A.5 messages, a billion laughs, one more."""
    for event_id in ("110110", "110104", "110103"):
        logger("-T", "--octet-count", "-P", str(inbound), message=one_line(event_id))
    logger("-T", "--octet-count", "-P", str(inbound), message=BILLION_LAUGHS.decode())
    logger("-T", "--octet-count", "-P", str(inbound), message=one_line("110106"))


def assert_forwarded(got: list[Event]) -> None:
    """The four messages of `send_through` arrived once each over mutual TLS from CN=modality, each
    with its patient (bare ID and CX form) and its raw bytes; the billion laughs was refused. Not
    necessarily in the order sent: each comes from its own `logger` connection, and a syslog daemon
    promises no order across its inputs' connections (syslog-ng once forwarded the first third)."""
    audits = [e for e in got if e.kind.startswith("atna.audit.")]
    assert sorted(e.details["event_id"]["code"] for e in audits) == sorted(["110110", "110104", "110103", "110106"])
    for ev in audits:
        assert ev.details["sender"]["transport"] == "tls"
        assert ev.details["sender"]["framing"] == "octet-counting"
        assert "CN=modality" in ev.details["sender"]["certificate"]
        assert ev.patient_ids[:2] == (PATIENT, CX)
        assert "flags" not in ev.details
        assert one_line(ev.details["event_id"]["code"]) in ev.details["raw"]
    unparsed = [e for e in got if e.kind == "atna.message.unparsed"]
    assert [e.details["problem"] for e in unparsed] == ["entity-expansion"]


@pytest.mark.parametrize("readers", [0, 2])
def test_hostile_connections_never_stop_the_receiver(tmp_path: Path, readers: int) -> None:
    pki = tmp_path / "pki"
    ca, ca_key = make_ca(pki, "ATNA Test CA", 2)
    cert, key = make_cert(pki, "localhost", ca, ca_key, hosts=["localhost", "127.0.0.1"], server=True, days=1)
    port, tls_port = free_port(), free_port()
    good = b"<85>1 - h a - IHE+RFC-3881 - " + one_line("110110").encode()  # one line: LF framing splits lines
    framed = b"%d %s" % (len(good), good)
    with running({"tcp": {"port": port}, "idle_timeout": 1.0, "readers": readers,
                  "tls": {"port": tls_port, "cert_file": cert, "key_file": key}}) as rx:
        with socket.create_connection(("127.0.0.1", port)) as s:  # silent, then gone
            time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port)) as s:  # silent until the idle timeout
            rx.wait(lambda evs: sum(e.details.get("problem") == "silent" for e in evs) >= 2, "two silent senders")
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"\x16\x03\x01garbage\n" + framed + b"12x4 bad count\n" + framed)
            s.sendall(b"50 truncated")
        with socket.create_connection(("127.0.0.1", port)) as s:  # an oversize count swallows what it claims
            s.sendall(b"99999999 " + b"z" * 1000)
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"<85>1 - h a - - - " + BILLION_LAUGHS + b"\n" + good + b"\n")
        context = ssl.create_default_context(cafile=str(ca))
        with socket.create_connection(("127.0.0.1", tls_port)) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(good + b"\n")  # LF framing over TLS: read, flagged
        got = rx.wait(lambda evs: len(rx.audits()) == 4 and any(e.details.get("problem") == "oversize" for e in evs),
                      "the four good messages")
    problems = [e.details.get("problem") for e in got if not e.kind.startswith("atna.audit.")]
    assert problems.count("silent") == 2
    assert problems.count("malformed-frame") == 2
    assert "truncated" in problems and "entity-expansion" in problems and "oversize" in problems
    tls_msg = [e for e in rx.audits() if e.details["sender"]["transport"] == "tls"]
    assert tls_msg[0].details["flags"] == ["wrong-framing"]
    missing = [e for e in got if "missing-msgid" in e.details.get("flags", ())]
    assert len(missing) == 1 and missing[0].kind == "atna.message.unparsed"


@pytest.mark.parametrize("readers", [0, 1])
def test_a_listener_full_of_connections_closes_the_next_ones_and_records_them_counted(readers: int) -> None:
    """A flood of connections (or senders that never hang up) against `max_connections`: the ones
    over it are closed at once, recorded once (the rest counted into the next record), and the
    open ones still deliver; once one closes, a new sender gets in."""
    port = free_port()
    good = b"<85>1 - h a - IHE+RFC-3881 - " + one_line("110110").encode()
    framed = b"%d %s" % (len(good), good)
    with running({"tcp": {"port": port}, "readers": readers, "max_connections": 3}) as rx:
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
        for s in held:  # each accepted and reading before the next ones come
            s.sendall(framed)
        rx.wait(lambda evs: len(rx.audits()) == 3, "the three open connections' messages")
        over = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]
        assert [s.recv(16) for s in over] == [b""] * 4  # closed at once
        got = rx.wait(lambda evs: any(e.details.get("problem") == "too-many-connections" for e in evs),
                      "the refusal recorded")
        held[0].sendall(framed)
        held[1].close()
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as late:
            late.sendall(framed)
            got = rx.wait(lambda evs: len(rx.audits()) == 5, "a message on a held and on a new connection")
        for s in [*held, *over]:
            s.close()
    refusals = [e for e in got if e.details.get("problem") == "too-many-connections"]
    assert len(refusals) == 1 and refusals[0].kind == "atna.frame.rejected"
    assert "3 connections already open" in refusals[0].details["error"]
    assert not [e for e in got if e.details.get("problem") == "silent"]  # the refused are not silent senders


def syslog_ng() -> Path:
    """Debian's syslog-ng unpacked by tools/syslog-ng-peer (it conflicts with rsyslog, so it is not
    installed); fetched on first use, and the test fails when it cannot be run."""
    done = subprocess.run([str(ROOT / "tools" / "syslog-ng-peer"), str(ROOT / ".peers" / "syslog-ng")],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"syslog-ng cannot be run (tools/syslog-ng-peer): {done.stderr}")
    return Path(done.stdout.strip())


def _syslog_ng_forwarder(base: Path, target: int, pki: dict[str, Path]) -> tuple[subprocess.Popen[bytes], int, Path]:
    """syslog-ng receiving RFC 5424 over TCP and forwarding with its syslog() destination over RFC 5425
    TLS (octet counting), presenting the client certificate and verifying the repository's."""
    peer = syslog_ng()
    base.mkdir()
    inbound = free_port()
    conf = base / "syslog-ng.conf"
    conf.write_text(f"""@version: 3.38
options {{ log-msg-size(262144); stats-freq(0); }};
source s_local {{ syslog(ip("127.0.0.1") port({inbound}) transport("tcp")); }};
destination d_repository {{
  syslog("127.0.0.1" port({target}) transport("tls")
         tls(ca-file("{pki["ca"]}") cert-file("{pki["client"]}") key-file("{pki["client_key"]}")
             peer-verify(required-trusted)));
}};
log {{ source(s_local); destination(d_repository); flags(flow-control); }};
""")
    console = base / "syslog-ng.out"
    modules = next((peer / "usr" / "lib" / "syslog-ng").glob("*/libafsocket.so")).parent
    with open(console, "ab") as out:
        proc = subprocess.Popen([str(peer / "env"), str(peer / "usr" / "sbin" / "syslog-ng"), "-F", "-e",
                                 "-f", str(conf), "--no-caps", "-R", str(base / "persist"), "-p", str(base / "pid"),
                                 "-c", str(base / "ctl"), "--module-path", str(modules)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    wait_listening(proc, inbound, console, "syslog-ng")
    return proc, inbound, console


@pytest.mark.parametrize("readers", [0, 2])
def test_syslog_ng_forwards_over_mutual_tls_into_atna_listen(tmp_path: Path, readers: int) -> None:
    pki = mutual_pki(tmp_path / "pki")
    port = free_port()
    repository = Repository(tmp_path, port, pki, readers=readers)
    repository.start()
    try:
        proc, inbound, console = _syslog_ng_forwarder(tmp_path / "syslog-ng", port, pki)
        try:
            send_through(inbound)
            end = time.monotonic() + DEADLINE
            while stored(repository.store) < 5:
                assert time.monotonic() < end, f"{stored(repository.store)} of 5 stored; syslog-ng said: " \
                    + console.read_text(errors="replace")
                time.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait(DEADLINE)
    finally:
        repository.stop()
    store = EventStore.open(str(repository.store))
    try:
        got = [s.event for s in store.search(EventQuery(kind="atna.*", limit=None))]
    finally:
        store.close()
    assert_forwarded(got)
    for ev in got:
        assert ev.details["syslog"]["msgid"] == "IHE+RFC-3881"  # syslog-ng keeps the MSGID logger gave
        if ev.kind.startswith("atna.audit."):
            assert ev.details["patients"][0] == {"id": PATIENT, "authority": "STMARY&1.2.840.99999.1&ISO", "cx": CX}
    assert store_finds(repository.store, CX) == store_finds(repository.store, PATIENT) == 4


def stored(path: Path) -> int:
    """Events in the repository's store so far, read from outside while it writes."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
            return int(db.execute("SELECT size FROM tree_state").fetchone()[0])
    except (sqlite3.Error, TypeError):
        return 0


def store_finds(path: Path, patient: str) -> int:
    """How many events `--patient` finds in the store."""
    store = EventStore.open(str(path))
    try:
        return len(list(store.search(EventQuery(patient=patient, limit=None))))
    finally:
        store.close()
