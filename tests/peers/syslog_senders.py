"""Syslog senders the repository has to take audit messages from, as real installations run them:
Python's logging.handlers.SysLogHandler (in a child interpreter), Apache log4j2's Syslog and
Socket appenders with the Rfc5424Layout (tests/peers/log4j_sender/AuditSender.java, compiled
here), and the local syslog daemons busybox syslogd and GNU inetutils syslogd relaying what
util-linux `logger` writes to their local socket. Each runs under a timeout; a missing tool fails
the test with what to install."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 20.0
LOG4J = (Path("/usr/share/java/log4j-api.jar"), Path("/usr/share/java/log4j-core.jar"))
JAVA_SOURCE = Path(__file__).resolve().parent / "log4j_sender" / "AuditSender.java"
LOGGER = Path("/usr/bin/logger")  # util-linux; busybox's applet of the same name is not it

#: The child interpreter's program: the messages (JSON on standard input) logged through one
#: SysLogHandler, then the handler closed (its socket with it).
_PYTHON_SENDER = textwrap.dedent("""
    import json, logging, logging.handlers, socket, sys, time
    host, port, transport, append_nul, header, linger = sys.argv[1:7]
    kind = socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM
    handler = logging.handlers.SysLogHandler((host, int(port)), facility="auth", socktype=kind)
    handler.append_nul = append_nul == "1"
    if header == "rfc5424":
        # What an application writing RFC 5424 through the handler puts after the handler's <PRI>.
        handler.setFormatter(logging.Formatter(
            "1 %(asctime)s.%(msecs)03dZ ris.example pyaudit %(process)d IHE+RFC-3881 - %(message)s",
            "%Y-%m-%dT%H:%M:%S"))
        handler.formatter.converter = __import__("time").gmtime
    audit = logging.getLogger("audit")
    audit.propagate = False
    audit.addHandler(handler)
    for message in json.load(sys.stdin):
        audit.warning("%s", message)
    time.sleep(float(linger))  # a long-running application keeps its connection open
    handler.close()
""")


def python_handler(host: str, port: int, messages: list[str], *, transport: str = "tcp", append_nul: bool = True,
                   rfc5424: bool = False, linger: float = 0.0) -> None:
    """``messages`` logged by logging.handlers.SysLogHandler in a child interpreter: its own
    ``<PRI>`` only (the handler's default), or an RFC 5424 header written by a formatter; over
    TCP each message is followed by a NUL unless ``append_nul`` is off (then by nothing). The
    connection is closed ``linger`` seconds after the last message."""
    done = subprocess.run([sys.executable, "-c", _PYTHON_SENDER, host, str(port), transport,
                           "1" if append_nul else "0", "rfc5424" if rfc5424 else "bsd", str(linger)],
                          input=json.dumps(messages), capture_output=True, text=True, timeout=DEADLINE)
    assert done.returncode == 0 and not done.stderr, done.stderr


def _log4j_classes(base: Path) -> Path:
    """AuditSender compiled against Debian's log4j2 into ``base``."""
    javac = shutil.which("javac")
    if javac is None or not all(jar.exists() for jar in LOG4J):
        pytest.fail("log4j2's peer needs a JDK and log4j2: apt-get install default-jdk-headless liblog4j2-java")
    if _COMPILED:
        return _COMPILED[0]
    classes = base / "classes"
    classes.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([javac, "-d", str(classes), "-cp", ":".join(map(str, LOG4J)), str(JAVA_SOURCE)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    _COMPILED.append(classes)
    return classes


#: The classes compiled by the first test that needed them (its tmp_path lives as long as the run).
_COMPILED: list[Path] = []


def log4j_appender(*, kind: str, host: str, port: int, protocol: str, new_line: bool,
                   trust_store: Path | None = None, key_store: Path | None = None) -> str:
    """A log4j2 appender named "audit" writing RFC 5424 (MSGID IHE+RFC-3881): ``kind`` "Syslog" (the
    SyslogAppender, format RFC5424) or "Socket" (a SocketAppender with the Rfc5424Layout); over
    SSL it trusts the PKCS12 ``trust_store`` and shows the client certificate of ``key_store``."""
    ssl = ""
    if protocol == "SSL":
        assert trust_store is not None
        keys = f'<KeyStore location="{key_store}" password="changeit" type="PKCS12"/>' if key_store else ""
        ssl = (f'<SSL protocol="TLSv1.2">{keys}<TrustStore location="{trust_store}" password="changeit" '
               'type="PKCS12"/></SSL>')
    fields = (f'appName="risaudit" messageId="IHE+RFC-3881" id="audit" facility="AUTH" '
              f'newLine="{str(new_line).lower()}" includeMDC="false"')
    where = f'name="audit" host="{host}" port="{port}" protocol="{protocol}" connectTimeoutMillis="5000"'
    if kind == "Syslog":
        return f'<Syslog {where} format="RFC5424" {fields}>{ssl}</Syslog>'
    tls_frame = "true" if protocol == "SSL" else "false"  # RFC 5425 4.3: octet counting over TLS
    return f'<Socket {where}>{ssl}<Rfc5424Layout {fields} useTlsMessageFormat="{tls_frame}"/></Socket>'


def log4j_send(base: Path, appender: str, messages: list[str]) -> str:
    """``messages`` logged at INFO by a Java application through log4j2's ``appender``; its output."""
    classes = _log4j_classes(base)
    conf = base / "log4j2.xml"
    conf.write_text(f'<?xml version="1.0"?><Configuration status="warn"><Appenders>{appender}</Appenders>'
                    '<Loggers><Root level="info"><AppenderRef ref="audit"/></Root></Loggers></Configuration>')
    files = _write(base, messages)
    java = shutil.which("java") or "java"
    done = subprocess.run([java, "-cp", ":".join(map(str, (classes, *LOG4J))), "AuditSender", str(conf),
                           *map(str, files)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and f"sent {len(messages)}" in done.stdout, done.stdout + done.stderr
    assert "ERROR" not in done.stderr, done.stderr  # log4j2 reports a failed connection and goes on
    return done.stdout + done.stderr


def trust_store(ca: Path, base: Path) -> Path:
    """A PKCS12 trust store holding ``ca`` (password changeit), made by the JDK's keytool."""
    keytool = shutil.which("keytool")
    if keytool is None:
        pytest.fail("keytool is missing: apt-get install default-jdk-headless")
    store = base / "trust.p12"
    subprocess.run([keytool, "-importcert", "-noprompt", "-alias", "hospital-ca", "-file", str(ca), "-keystore",
                    str(store), "-storetype", "PKCS12", "-storepass", "changeit"], check=True, capture_output=True,
                   timeout=DEADLINE)
    return store


def key_store(cert: Path, key: Path, base: Path) -> Path:
    """A PKCS12 key store (password changeit) of the client certificate ``cert`` and its ``key``,
    for log4j2's SSL KeyStore (IHE ITI-19: the sender shows its certificate)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, load_pem_private_key, pkcs12

    private = load_pem_private_key(key.read_bytes(), None)
    store = base / "client.p12"
    store.write_bytes(pkcs12.serialize_key_and_certificates(
        b"client", private, x509.load_pem_x509_certificate(cert.read_bytes()), None,  # type: ignore[arg-type]
        BestAvailableEncryption(b"changeit")))
    return store


def _logger_lines(socket_path: str, messages: list[Path]) -> str:
    """Shell lines: each message file written by util-linux logger to the local ``socket_path``."""
    return "\n".join(f'{LOGGER} -u {socket_path} --size 1048576 -t ctaudit -p auth.notice "$(cat {m})"'
                     for m in messages)


def _write(base: Path, messages: list[str]) -> list[Path]:
    files = []
    for i, message in enumerate(messages):
        files.append(base / f"message{i}.xml")
        files[-1].write_text(message, encoding="utf-8")
    return files


def busybox_relay(base: Path, host: str, port: int, messages: list[str], delivered: Callable[[], bool]) -> None:
    """busybox syslogd forwarding to ``host``:``port`` (UDP) what ``logger`` writes to it. busybox's
    syslogd has no option for its socket (it is /dev/log): it runs in a mount namespace of its own
    (`unshare --map-root-user --mount`) with a private /dev, so the machine's /dev/log, if any, is
    never touched. It is stopped once ``delivered()`` is true (or after DEADLINE): a relay stopped
    as soon as ``logger`` returns may not have sent the last message yet."""
    busybox = shutil.which("busybox")
    unshare = shutil.which("unshare")
    if busybox is None or not LOGGER.exists() or unshare is None:
        pytest.fail("the busybox relay needs busybox, util-linux's logger and unshare: apt-get install busybox "
                    "util-linux bsdutils")
    base.mkdir(parents=True, exist_ok=True)
    files = _write(base, messages)
    script = base / "relay.sh"
    script.write_text(f"""set -e
mount -t tmpfs pacsguard-test-dev /dev
touch /dev/null
{busybox} syslogd -n -R {host}:{port} -O {base / "syslogd.log"} &
relay=$!
i=0; while [ ! -S /dev/log ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
{_logger_lines("/dev/log", files)}
i=0; while [ ! -e {base / "stop"} ] && [ $i -lt {int(DEADLINE * 20)} ]; do sleep 0.05; i=$((i+1)); done
kill $relay
wait $relay || true
""")
    with subprocess.Popen([unshare, "--map-root-user", "--mount", "sh", str(script)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as run:
        _wait_for(delivered, run)
        (base / "stop").touch()
        _, stderr = run.communicate(timeout=DEADLINE)
    if run.returncode != 0:
        pytest.fail(f"busybox syslogd could not run in a mount namespace of its own (unshare: user namespaces "
                    f"disabled?): {stderr}")


def _wait_for(delivered: Callable[[], bool], relay: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    """Until ``delivered()`` (the receiver has what the relay was given), the relay ends, or DEADLINE."""
    end = time.monotonic() + DEADLINE
    while not delivered() and relay.poll() is None and time.monotonic() < end:
        time.sleep(0.05)


def inetutils_syslogd() -> Path:
    """GNU inetutils' syslogd: /usr/sbin/syslogd when Debian's inetutils-syslogd is installed, else
    the package unpacked (`apt-get download`, `dpkg -x`) into .peers/inetutils-syslogd, as
    tools/syslog-ng-peer does for syslog-ng: inetutils-syslogd conflicts with rsyslog, also a peer."""
    installed = Path("/usr/sbin/syslogd")
    if installed.exists() and "inetutils" in _version(installed):
        return installed
    peer = ROOT / ".peers" / "inetutils-syslogd"
    binary = peer / "usr" / "sbin" / "syslogd"
    if not binary.exists():
        (peer / "debs").mkdir(parents=True, exist_ok=True)
        got = subprocess.run(["apt-get", "download", "inetutils-syslogd"], cwd=peer / "debs", capture_output=True,
                             text=True, timeout=120)
        debs = list((peer / "debs").glob("inetutils-syslogd_*.deb"))
        if got.returncode != 0 or not debs:
            pytest.fail(f"inetutils-syslogd cannot be fetched (apt-get download inetutils-syslogd): {got.stderr}")
        subprocess.run(["dpkg", "-x", str(debs[0]), str(peer)], check=True, timeout=60)
    if "inetutils" not in _version(binary):
        pytest.fail(f"{binary} does not run")
    return binary


def _version(binary: Path) -> str:
    try:
        return subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return ""


def inetutils_relay(base: Path, host: str, bind: str, messages: list[str], delivered: Callable[[], bool]) -> None:
    """inetutils syslogd forwarding `auth.*` to ``@host`` (UDP port 514: its configuration names no
    port) what ``logger`` writes to its socket in ``base``; its own UDP socket, which it sends
    from, bound to ``bind`` (never the machine's port 514), no kernel log, no /dev/log. Stopped once
    ``delivered()`` is true (or after DEADLINE), as busybox_relay is."""
    syslogd = inetutils_syslogd()
    if not LOGGER.exists():
        pytest.fail("util-linux's logger is missing: apt-get install bsdutils")
    base.mkdir(parents=True, exist_ok=True)
    files = _write(base, messages)
    conf = base / "syslog.conf"
    conf.write_text(f"auth.*\t@{host}\n")  # the audit facility: not syslogd's own lines
    sock = base / "log"
    out = base / "syslogd.out"
    with out.open("wb") as console:
        relay = subprocess.Popen(["timeout", str(int(DEADLINE)), str(syslogd), "-n", "--no-klog", "-r", "-b", bind,
                                  "-B", "5514", "-p", str(sock), "-f", str(conf), "-D", str(base / "syslog.d"),
                                  "-P", str(base / "pid")], stdout=console, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists() or relay.poll() is not None:
                break
            subprocess.run(["sleep", "0.05"], timeout=5)
        assert sock.exists(), out.read_text(errors="replace")
        done = subprocess.run(["sh", "-ec", _logger_lines(str(sock), files)], capture_output=True, text=True,
                              timeout=DEADLINE)
        assert done.returncode == 0, done.stderr
        _wait_for(delivered, relay)
    finally:
        relay.terminate()
        relay.wait(DEADLINE)

