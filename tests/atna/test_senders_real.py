"""Real senders: util-linux `logger` over TCP (octet counting and LF framing) and UDP, and Debian's
rsyslogd forwarding over RFC 5425 TLS (GnuTLS and OpenSSL drivers, mutual TLS); plus hostile
connections, each recorded and none stopping the receiver."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from atna_corpus import BILLION_LAUGHS, every_event_id
from receiver import DEADLINE, free_port, running

from pacsguard.tls import make_ca, make_cert

LOGGER = "/usr/bin/logger"
RSYSLOGD = "/usr/sbin/rsyslogd"
PATIENT = "PID-0042"
CX = "PID-0042^^^STMARY&1.2.840.99999.1&ISO"


def one_line(event_id: str) -> str:
    return every_event_id()[event_id].decode().replace("\n", "")


def logger(*args: str, message: str) -> None:
    if not Path(LOGGER).exists():
        pytest.fail(f"{LOGGER} (util-linux) is missing")
    subprocess.run([LOGGER, "--rfc5424", "--msgid", "IHE+RFC-3881", "--size", "300000", "-n", "127.0.0.1",
                    *args, message], check=True, timeout=DEADLINE)


def test_logger_over_tcp_both_framings_and_udp() -> None:
    port = free_port()
    with running({"tcp": {"port": port}, "udp": {"port": port}}) as rx:
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
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", inbound), timeout=1).close()
            return proc, inbound, console
        except OSError:
            assert proc.poll() is None, console.read_text(errors="replace")
            time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"rsyslogd did not listen: {console.read_text(errors='replace')}")


@pytest.mark.parametrize("driver", ["gtls", "ossl"])
def test_rsyslog_forwards_over_mutual_tls(tmp_path: Path, driver: str) -> None:
    pki = tmp_path / "pki"
    ca, ca_key = make_ca(pki, "ATNA Test CA", 2)
    server_cert, server_key = make_cert(pki, "localhost", ca, ca_key, hosts=["localhost", "127.0.0.1"], server=True,
                                        days=1)
    client_cert, client_key = make_cert(pki, "modality", ca, ca_key, hosts=["modality.local"], client=True, days=1)
    port = free_port()
    section = {"tls": {"port": port, "cert_file": server_cert, "key_file": server_key, "ca_file": ca,
                       "require_client_cert": True}}
    with running(section) as rx:
        proc, inbound, console = _rsyslog_forwarder(tmp_path / "rsyslog", driver, port,
                                                    {"ca": ca, "cert": client_cert, "key": client_key})
        try:
            for event_id in ("110110", "110104", "110103"):
                logger("-T", "--octet-count", "-P", str(inbound), message=one_line(event_id))
            logger("-T", "--octet-count", "-P", str(inbound), message=BILLION_LAUGHS.decode())
            logger("-T", "--octet-count", "-P", str(inbound), message=one_line("110106"))
            got = rx.wait(lambda evs: len([e for e in evs if e.kind.startswith("atna.audit.")]) == 4,
                          f"four audits through rsyslog {driver}")
        finally:
            proc.terminate()
            proc.wait(DEADLINE)
    audits = [e for e in got if e.kind.startswith("atna.audit.")]
    assert [e.details["event_id"]["code"] for e in audits] == ["110110", "110104", "110103", "110106"]
    for ev in audits:
        assert ev.details["sender"]["transport"] == "tls"
        assert ev.details["sender"]["framing"] == "octet-counting"
        assert "CN=modality" in ev.details["sender"]["certificate"]
        assert ev.patient_ids[:2] == (PATIENT, CX)
        assert "flags" not in ev.details
        assert one_line(ev.details["event_id"]["code"]) in ev.details["raw"]
    unparsed = [e for e in got if e.kind == "atna.message.unparsed"]
    assert [e.details["problem"] for e in unparsed] == ["entity-expansion"]


def test_hostile_connections_never_stop_the_receiver(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    ca, ca_key = make_ca(pki, "ATNA Test CA", 2)
    cert, key = make_cert(pki, "localhost", ca, ca_key, hosts=["localhost", "127.0.0.1"], server=True, days=1)
    port, tls_port = free_port(), free_port()
    good = b"<85>1 - h a - IHE+RFC-3881 - " + one_line("110110").encode()  # one line: LF framing splits lines
    framed = b"%d %s" % (len(good), good)
    with running({"tcp": {"port": port}, "idle_timeout": 1.0,
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
