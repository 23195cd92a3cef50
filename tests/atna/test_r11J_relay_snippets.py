"""The relay configurations of docs/audit.md ("Pointing senders at pacsguard"), read from the page
and run as written (only paths, addresses and ports replaced) with Debian's rsyslog and syslog-ng,
forwarding over RFC 5425 mutual TLS into the repository: so the page cannot drift from what works.

A message longer than rsyslog's default maxMessageSize (8 KiB) must arrive whole, as one audit
event, not as two or three `atna.message.unparsed` pieces; syslog-ng's configuration must define
the source its log path names."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
from receiver import DEADLINE, Received, running
from test_senders_real import LOGGER, RSYSLOGD, syslog_ng

from pacsguard.tls import make_ca, make_cert
from peers.dcmtk import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
REPOSITORY = "127.0.120.10"  # this file's loopback addresses (round 11, helper J)
RELAY = "127.0.120.11"
PATIENT = "PID-0042"


def snippet(heading: str) -> str:
    """The first indented block after ``heading`` in docs/audit.md, unindented."""
    text = (ROOT / "docs" / "audit.md").read_text()
    after = text[text.index(f"\n{heading}\n"):]
    block = re.search(r"((?:\n    .*|\n)+)", after[after.index("\n    "):])
    assert block is not None, f"docs/audit.md: no configuration under {heading}"
    return "\n".join(line[4:] for line in block.group(1).strip("\n").split("\n")) + "\n"


def pki(base: Path) -> dict[str, str]:
    """The hospital CA, pacsguard's certificate (pacsguard.hospital, as the docs' PermittedPeers) and
    the relay's client certificate, at the paths the docs use."""
    ca, ca_key = make_ca(base, "Hospital CA", 1)
    cert, key = make_cert(base, "repository", ca, ca_key, hosts=["pacsguard.hospital", REPOSITORY],
                          server=True, days=1)
    relay, relay_key = make_cert(base, "relay", ca, ca_key, hosts=["relay.hospital"], client=True, days=1)
    return {"/etc/ssl/hospital-ca.crt": str(ca), "/etc/ssl/relay.crt": str(relay),
            "/etc/ssl/relay.key": str(relay_key), "cert": str(cert), "key": str(key)}


def replaced(text: str, paths: dict[str, str], pairs: list[tuple[str, str]]) -> str:
    """``text`` with the docs' paths and each ``pairs`` text replaced; a text not found fails."""
    for old, new in [(p, paths[p]) for p in paths if p.startswith("/etc/")] + pairs:
        assert old in text, f"docs/audit.md's configuration no longer has {old!r}:\n{text}"
        text = text.replace(old, new)
    return text


def big_message() -> str:
    """A pretty-printed A.5 message of some 20 KB: a transfer of 400 instances of one study."""
    instances = "".join(f'\n      <Instance UID="1.2.840.99999.3.{i}"/>' for i in range(400))
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<AuditMessage>
  <EventIdentification EventActionCode="R" EventDateTime="2026-12-05T09:30:15Z" EventOutcomeIndicator="0">
    <EventID csd-code="110104" codeSystemName="DCM" originalText="DICOM Instances Transferred"/>
  </EventIdentification>
  <ActiveParticipant UserID="relayuser" UserIsRequestor="true" NetworkAccessPointID="10.20.0.7"
      NetworkAccessPointTypeCode="2"/>
  <ActiveParticipant UserID="PACS@10.20.0.2" AlternativeUserID="AETITLES=PACS" UserIsRequestor="false"
      NetworkAccessPointID="10.20.0.2" NetworkAccessPointTypeCode="2">
    <RoleIDCode csd-code="110153" codeSystemName="DCM" originalText="Source Role ID"/>
  </ActiveParticipant>
  <AuditSourceIdentification AuditSourceID="PACS1"/>
  <ParticipantObjectIdentification ParticipantObjectID="1.2.840.99999.2.1" ParticipantObjectTypeCode="2"
      ParticipantObjectTypeCodeRole="3">
    <ParticipantObjectIDTypeCode csd-code="110180" codeSystemName="DCM" originalText="Study Instance UID"/>
    <ParticipantObjectDescription>
     <SOPClass UID="1.2.840.10008.5.1.4.1.1.2" NumberOfInstances="400">{instances}
     </SOPClass>
    </ParticipantObjectDescription>
  </ParticipantObjectIdentification>
  <ParticipantObjectIdentification ParticipantObjectID="{PATIENT}" ParticipantObjectTypeCode="1"
      ParticipantObjectTypeCodeRole="1">
    <ParticipantObjectIDTypeCode csd-code="2" codeSystemName="RFC-3881" originalText="Patient Number"/>
  </ParticipantObjectIdentification>
</AuditMessage>"""


def repository(paths: dict[str, str]) -> dict[str, object]:
    """The repository's `atna:` section: mutual TLS on this file's address."""
    return {"tls": {"host": REPOSITORY, "port": free_port(REPOSITORY), "cert_file": paths["cert"],
                    "key_file": paths["key"], "ca_file": paths["/etc/ssl/hospital-ca.crt"],
                    "require_client_cert": True}}


def relay(argv: list[str], base: Path, port: int, name: str) -> subprocess.Popen[bytes]:
    """The relay daemon in the foreground (bounded by `timeout`), once it accepts on ``port``."""
    console = base / "console"
    with console.open("wb") as out:
        proc = subprocess.Popen(["timeout", "60", *argv], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    if not wait_for_port(RELAY, port, DEADLINE, proc):
        proc.kill()
        proc.wait(DEADLINE)
        pytest.fail(f"{name} with docs/audit.md's configuration did not start: {console.read_text(errors='replace')}")
    return proc


def deliver_and_check(rx: Received, port: int, proc: subprocess.Popen[bytes], console: Path) -> None:
    """A 20 KB message and a short one through the relay: two audit events, nothing unparsed."""
    message = big_message()
    try:
        for text in (message, message.replace("relayuser", "second")):
            subprocess.run([LOGGER, "--msgid", "IHE+RFC-3881", "--size", "1048576", "-T", "--octet-count",
                            "-n", RELAY, "-P", str(port), text], check=True, timeout=DEADLINE)
        rx.wait(lambda evs: len(evs) >= 2, "two messages through the relay")
        time.sleep(0.3)  # a third record (a piece of a cut message) would come right after
    finally:
        proc.terminate()
        proc.wait(DEADLINE)
    done = list(rx.events)
    assert [(e.kind, e.details.get("problem")) for e in done] == [("atna.audit.instances-transferred", None)] * 2, \
        console.read_text(errors="replace")
    assert message in done[0].details["raw"]  # whole, line feeds and all
    assert done[0].patient_ids[0] == PATIENT
    assert done[0].details["syslog"]["msgid"] == "IHE+RFC-3881"
    assert "CN=relay" in done[0].details["sender"]["certificate"]


def test_rsyslog_relay_configuration_as_documented_forwards_a_20_kb_message_whole(tmp_path: Path) -> None:
    if not Path(RSYSLOGD).exists() or not list(Path("/usr/lib").glob("*/rsyslog/lmnsd_gtls.so")):
        pytest.fail("rsyslog's gtls driver is missing: apt-get install rsyslog rsyslog-gnutls")
    paths = pki(tmp_path / "pki")
    base = tmp_path / "rsyslog"
    (base / "work").mkdir(parents=True)
    section = repository(paths)
    inbound = free_port(RELAY)
    conf = snippet("### rsyslog as a relay")
    if 'type="imtcp"' not in conf:  # a page whose configuration has no input: give it one, as before
        conf = f'module(load="imtcp")\ninput(type="imtcp" port="601")\n{conf}'
    if "workDirectory" not in conf:
        conf = f'global(workDirectory="/var/spool/rsyslog")\n{conf}'
    tls = section["tls"]
    assert isinstance(tls, dict)
    conf = replaced(conf, paths, [("/var/spool/rsyslog", str(base / "work")),
                                  ('target="pacsguard.hospital"', f'target="{REPOSITORY}"'),
                                  ('port="6514"', f'port="{tls["port"]}"'),
                                  ('port="601"', f'address="{RELAY}" port="{inbound}"')])
    (base / "rsyslog.conf").write_text(conf)
    with running(section) as rx:
        proc = relay([RSYSLOGD, "-n", "-f", str(base / "rsyslog.conf"), "-i", str(base / "pid")], base, inbound,
                     "rsyslogd")
        deliver_and_check(rx, inbound, proc, base / "console")


def test_syslog_ng_relay_configuration_as_documented_forwards_a_20_kb_message_whole(tmp_path: Path) -> None:
    peer = syslog_ng()
    paths = pki(tmp_path / "pki")
    base = tmp_path / "syslog-ng"
    base.mkdir()
    section = repository(paths)
    tls = section["tls"]
    assert isinstance(tls, dict)
    inbound = free_port(RELAY)
    conf = replaced(snippet("### syslog-ng as a relay"), paths,
                    [('"pacsguard.hospital" port(6514)', f'"{REPOSITORY}" port({tls["port"]})')])
    if "port(601)" in conf:
        conf = conf.replace("port(601)", f'ip("{RELAY}") port({inbound})')
    (base / "syslog-ng.conf").write_text(conf if conf.startswith("@version") else f"@version: 3.38\n{conf}")
    modules = next((peer / "usr" / "lib" / "syslog-ng").glob("*/libafsocket.so")).parent
    with running(section) as rx:
        proc = relay([str(peer / "env"), str(peer / "usr" / "sbin" / "syslog-ng"), "-F", "-e", "-f",
                      str(base / "syslog-ng.conf"), "--no-caps", "-R", str(base / "persist"), "-p", str(base / "pid"),
                      "-c", str(base / "ctl"), "--module-path", str(modules)], base, inbound, "syslog-ng")
        deliver_and_check(rx, inbound, proc, base / "console")
