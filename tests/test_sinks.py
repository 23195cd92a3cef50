"""Sinks: the JSON-lines file, RFC 5424 formatting, and SyslogSink received by a real rsyslogd."""

from __future__ import annotations

import glob
import os
import re
import signal
import socket
import ssl
import stat
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterable

import pytest

from pacsguard.events.model import Event, Outcome, Party, Severity
from pacsguard.sinks import (
    SD_ID,
    JsonLinesSink,
    SyslogSink,
    escape_param_value,
    format_rfc5424,
    frame_octet_counted,
)
from pacsguard.tls import client_context, make_ca, make_cert
from peers.dcmtk import free_port

RSYSLOGD = "/usr/sbin/rsyslogd"
DEADLINE = 20.0  # upper bound for every wait in this file
BOM = b"\xef\xbb\xbf"
ID_RE = re.compile(rb'"id":"([0-9a-f]{32})"')


def _event(i: int = 0, **overrides: object) -> Event:
    fields: dict[str, object] = dict(
        kind="dicom.c-store",
        component="gateway",
        severity=Severity.WARNING,
        outcome=Outcome.SUCCESS,
        actor=Party(ae_title="CT_SCANNER_2", host="10.20.0.7", port=104),
        target=Party(ae_title="PACS", host="10.20.0.2", port=11112),
        patient_ids=(f"PAT{i:05d}",),
        study_uids=(f"1.2.826.0.1.3680043.8.498.{i}",),
        sop_instance_count=i,
        details={"transfer_syntax": "1.2.840.10008.1.2.1", "n": i},
        message=f"stored {i} instances",
    )
    fields.update(overrides)
    return Event(**fields)  # type: ignore[arg-type]


def _wait_until(check: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {deadline:.0f}s waiting for {what}")


# --------------------------------------------------------------------------------------------
# JSON lines
# --------------------------------------------------------------------------------------------

def test_jsonl_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "eve.json"
    events = [_event(i) for i in range(5)]
    events.append(_event(99, message="Überweisung\nzeile 2 \u2028 \"quoted\"", patient_ids=(),
                         details={"nested": {"list": [1, 2, 3]}, "empty": None}))
    sink = JsonLinesSink(path)
    sink.emit(events[:3])
    sink.emit([])
    sink.emit(events[3:])
    # Flushed per batch: readable before close.
    assert len(path.read_bytes().splitlines()) == len(events)
    sink.close()
    sink.close()  # idempotent

    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""  # every record ends with LF
    back = [Event.from_json(line) for line in lines[:-1]]
    assert [e.to_dict() for e in back] == [e.to_dict() for e in events]
    assert lines[0] == events[0].to_json()  # canonical form, byte for byte
    assert stat.S_IMODE(path.stat().st_mode) == 0o640

    with pytest.raises(ValueError, match="closed"):
        sink.emit(events[:1])


def test_jsonl_appends_and_mode_ignores_umask(tmp_path: Path) -> None:
    path = tmp_path / "eve.json"
    old = os.umask(0o077)
    try:
        with JsonLinesSink(path) as sink:
            sink.emit([_event(1)])
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640

    with JsonLinesSink(path) as sink:  # reopening appends, never truncates
        sink.emit([_event(2), _event(3)])
    ids = [Event.from_json(line).sop_instance_count for line in path.read_text().splitlines()]
    assert ids == [1, 2, 3]


def test_jsonl_concurrent_emitters_do_not_interleave(tmp_path: Path) -> None:
    path = tmp_path / "eve.json"
    sink = JsonLinesSink(path)
    big = "x" * 20_000  # larger than a pipe buffer, to catch torn writes

    def work(n: int) -> None:
        for i in range(50):
            sink.emit([_event(n * 1000 + i, message=big)])

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
    sink.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 200
    assert all(Event.from_json(line).message == big for line in lines)


# --------------------------------------------------------------------------------------------
# RFC 5424 formatting (golden)
# --------------------------------------------------------------------------------------------

GOLDEN_TIME = datetime(2024, 3, 5, 7, 8, 9, 12345, tzinfo=timezone.utc)


def test_format_rfc5424_golden() -> None:
    event = Event(
        kind="auth.login", component="gateway", severity=Severity.NOTICE,
        outcome=Outcome.MINOR_FAILURE, actor=Party(ae_title="WS1", host="10.0.0.9", user="dr.x"),
        patient_ids=("P-1",), time=GOLDEN_TIME, id="0123456789abcdef0123456789abcdef",
    )
    expected = (
        b'<85>1 2024-03-05T07:08:09.012345Z gw-1.example.org pacsguard 42 auth.login '
        b'[pacsguard@32473 kind="auth.login" outcome="minor-failure" actor="WS1@10.0.0.9 (dr.x)"'
        b' patient="P-1"] \xef\xbb\xbf'
        b'{"actor":{"ae_title":"WS1","host":"10.0.0.9","user":"dr.x"},"component":"gateway",'
        b'"details":{},"id":"0123456789abcdef0123456789abcdef","kind":"auth.login","message":"",'
        b'"outcome":"minor-failure","patient_ids":["P-1"],"severity":"notice",'
        b'"sop_instance_count":0,"study_uids":[],"target":{},'
        b'"time":"2024-03-05T07:08:09.012345Z"}'
    )
    assert format_rfc5424(event, hostname="gw-1.example.org", procid=42) == expected


def test_format_rfc5424_escaping_and_nil_values() -> None:
    assert escape_param_value('a"b\\c]d') == 'a\\"b\\\\c\\]d'
    event = _event(actor=Party(user='evil"] [x@1 y="z\\'), patient_ids=("A]1", 'B"2'),
                   time=GOLDEN_TIME)
    msg = format_rfc5424(event, hostname="", app_name="", procid=None)
    header, _, rest = msg.partition(b" [")
    assert header == b"<84>1 2024-03-05T07:08:09.012345Z - - - dicom.c-store"
    sd, _, body = ("[" + rest.decode()).partition("] \ufeff")
    assert sd == (f'[{SD_ID} kind="dicom.c-store" outcome="success" '
                  'actor=" (evil\\"\\] [x@1 y=\\"z\\\\)" patient="A\\]1" patient="B\\"2"'
                  # round 7: all of them once more, joined by DICOM's delimiter (collectors keep the last)
                  ' patients="A\\]1\\\\B\\"2"')
    assert Event.from_json(body).to_dict() == event.to_dict()


def test_format_rfc5424_pri_timestamp_msgid() -> None:
    cases = [(10, Severity.ERROR, b"<83>1 "), (16, Severity.DEBUG, b"<135>1 "),
             (0, Severity.EMERGENCY, b"<0>1 "), (23, Severity.DEBUG, b"<191>1 ")]
    for facility, severity, prefix in cases:
        msg = format_rfc5424(_event(severity=severity), hostname="h", facility=facility)
        assert msg.startswith(prefix), (facility, severity, msg[:10])
    with pytest.raises(ValueError, match="facility"):
        format_rfc5424(_event(), hostname="h", facility=24)

    # A non-UTC event time is written in UTC with 'Z' and six fraction digits.
    cet = timezone(timedelta(hours=1))
    msg = format_rfc5424(_event(time=datetime(2024, 1, 1, 0, 30, tzinfo=cet)), hostname="h")
    assert msg.split(b" ")[1] == b"2023-12-31T23:30:00.000000Z"

    # MSGID: printable US-ASCII only, at most 32 characters.
    long_kind = "ids.alert.a-very-long-kind-name-that-goes-on-and-on"
    fields = format_rfc5424(_event(kind=long_kind), hostname="h").split(b" ")
    assert fields[5] == long_kind[:32].encode()
    fields = format_rfc5424(_event(kind="bad kind\u00e9"), hostname="h").split(b" ")
    assert fields[5] == b"bad_kind_"

    # The MSG is BOM + canonical JSON, and the whole thing is valid UTF-8.
    event = _event(message="Grüße ]\"\\")
    msg = format_rfc5424(event, hostname="h")
    assert msg.count(BOM) == 1
    assert msg.split(BOM, 1)[1] == event.to_json().encode("utf-8")
    msg.decode("utf-8")


def test_octet_counted_frame_counts_bytes() -> None:
    assert frame_octet_counted(b"hello") == b"5 hello"
    text = "é€".encode()
    assert frame_octet_counted(text) == b"5 " + text


def test_syslog_sink_never_blocks_and_drops_oldest() -> None:
    # Nothing listens on this port: every connect fails, events must pile up and be capped.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = SyslogSink("127.0.0.1", port, queue_size=10, backoff_initial=0.05, backoff_max=0.2)
    started = time.monotonic()
    for i in range(25):
        sink.emit([_event(i)])
    assert time.monotonic() - started < 1.0
    assert sink.pending == 10 and sink.dropped == 15 and sink.sent == 0
    started = time.monotonic()
    sink.close(timeout=0.5)
    assert time.monotonic() - started < 3.0
    with pytest.raises(RuntimeError, match="closed"):
        sink.emit([_event()])
    with pytest.raises(ValueError):
        SyslogSink("127.0.0.1", port, transport="udp")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# A real collector: Debian's rsyslogd
# --------------------------------------------------------------------------------------------

def _require_rsyslog(tls: bool = False) -> None:
    if not Path(RSYSLOGD).exists():
        pytest.fail(f"{RSYSLOGD} is missing: these tests need a real collector; "
                    "run `apt-get install -y rsyslog rsyslog-gnutls`")
    if tls and not glob.glob("/usr/lib/*/rsyslog/lmnsd_gtls.so"):
        pytest.fail("rsyslog's GnuTLS driver (lmnsd_gtls.so) is missing: "
                    "run `apt-get install -y rsyslog-gnutls`")


class Rsyslog:
    """rsyslogd in the foreground (-n) with its own config, pid file and work directory; imtcp on
    127.0.0.1 writes every received raw message as one line to `raw.log`, and the fields its
    RFC 5424 parser extracted to `parsed.log`."""

    def __init__(self, base: Path, *, tls: dict[str, Path] | None = None) -> None:
        _require_rsyslog(tls is not None)
        self.base = base
        self.base.mkdir(parents=True, exist_ok=True)
        (base / "work").mkdir(exist_ok=True)
        self.port = free_port()
        self.raw = base / "raw.log"
        self.parsed = base / "parsed.log"
        self.conf = base / "rsyslog.conf"
        self.pidfile = base / "rsyslogd.pid"
        self.console = base / "rsyslogd.out"
        self.proc: subprocess.Popen[bytes] | None = None
        tls_globals = ""
        module = 'module(load="imtcp")'
        if tls is not None:
            tls_globals = (f' DefaultNetstreamDriver="gtls"'
                           f' DefaultNetstreamDriverCAFile="{tls["ca"]}"'
                           f' DefaultNetstreamDriverCertFile="{tls["cert"]}"'
                           f' DefaultNetstreamDriverKeyFile="{tls["key"]}"')
            module = ('module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" '
                      'StreamDriver.Authmode="anon")')
        self.conf.write_text(f'''
global(workDirectory="{base / "work"}" maxMessageSize="64k"{tls_globals})
{module}
template(name="raw" type="string" string="%rawmsg%\\n")
template(name="parsed" type="string"
         string="%pri%|%app-name%|%procid%|%msgid%|%hostname%|%structured-data%\\n")
ruleset(name="in") {{
  action(type="omfile" file="{self.raw}" template="raw")
  action(type="omfile" file="{self.parsed}" template="parsed")
}}
input(type="imtcp" port="{self.port}" address="127.0.0.1" ruleset="in")
''')
        check = subprocess.run([RSYSLOGD, "-N1", "-f", str(self.conf)], capture_output=True,
                               text=True, timeout=DEADLINE)
        assert check.returncode == 0, f"rsyslog rejected its test config:\n{check.stderr}"

    def start(self) -> None:
        with open(self.console, "ab") as console:
            self.proc = subprocess.Popen(
                [RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.pidfile)],
                stdout=console, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"rsyslogd exited with {self.proc.returncode}:\n"
                                     f"{self.console.read_text(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise AssertionError(f"rsyslogd did not listen on 127.0.0.1:{self.port} within "
                             f"{DEADLINE:.0f}s:\n{self.console.read_text(errors='replace')}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=DEADLINE / 2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=DEADLINE / 2)

    def received_ids(self) -> list[str]:
        if not self.raw.exists():
            return []
        return [m.decode() for m in ID_RE.findall(self.raw.read_bytes())]

    def wait_for(self, ids: Iterable[str]) -> list[str]:
        wanted = set(ids)
        got: list[str] = []

        def arrived() -> bool:
            nonlocal got
            got = self.received_ids()
            return wanted <= set(got)

        try:
            _wait_until(arrived, "events to reach rsyslog")
        except AssertionError:
            missing = len(wanted - set(got))
            raise AssertionError(
                f"{missing} of {len(wanted)} events never reached rsyslog within {DEADLINE:.0f}s;"
                f" rsyslogd said:\n{self.console.read_text(errors='replace')[-2000:]}") from None
        return got


@pytest.fixture
def rsyslog_factory(tmp_path: Path) -> Iterable[Callable[..., Rsyslog]]:
    started: list[Rsyslog] = []

    def make(name: str = "rsyslog", **kwargs: object) -> Rsyslog:
        server = Rsyslog(tmp_path / name, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def test_syslog_tcp_1000_events_reach_rsyslog(rsyslog_factory: Callable[..., Rsyslog]) -> None:
    collector = rsyslog_factory()
    collector.start()
    sink = SyslogSink("127.0.0.1", collector.port, transport="tcp", hostname="gw-test")
    events = [_event(i) for i in range(1000)]
    for start in range(0, 1000, 100):
        sink.emit(events[start:start + 100])
    sink.close(timeout=DEADLINE)
    assert sink.pending == 0 and sink.dropped == 0 and sink.sent == 1000

    got = collector.wait_for(e.id for e in events)
    assert len(got) == 1000  # each exactly once on a healthy connection
    # rsyslog's own RFC 5424 parser took the header and structured data apart as intended.
    first = collector.parsed.read_text().splitlines()[0].split("|", 5)
    assert first[:5] == ["84", "pacsguard", str(os.getpid()), "dicom.c-store", "gw-test"]
    assert first[5].startswith(f'[{SD_ID} kind="dicom.c-store" outcome="success" '
                               'actor="CT_SCANNER_2@10.20.0.7:104" patient="PAT')
    # The raw message still carries BOM + canonical JSON that parses back to the event.
    line = collector.raw.read_bytes().splitlines()[0]
    assert Event.from_json(line.split(BOM, 1)[1]).to_dict() == events[0].to_dict()


def test_syslog_tls_100_events_reach_rsyslog(rsyslog_factory: Callable[..., Rsyslog],
                                            tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    ca, ca_key = make_ca(pki, "Syslog Test CA", 2)
    cert, key = make_cert(pki, "collector", ca, ca_key, hosts=["127.0.0.1", "localhost"],
                          server=True, days=1)
    collector = rsyslog_factory(tls={"ca": ca, "cert": cert, "key": key})
    collector.start()
    ctx = client_context(ca_file=ca)
    sink = SyslogSink("127.0.0.1", collector.port, transport="tls", ssl_context=ctx,
                      server_hostname="127.0.0.1")
    events = [_event(i) for i in range(100)]
    sink.emit(events)
    _wait_until(lambda: sink.sent == 100, "the TLS sink to send 100 events")
    assert isinstance(sink._sock, ssl.SSLSocket)
    assert sink._sock.version() in ("TLSv1.2", "TLSv1.3")
    sink.close(timeout=DEADLINE)
    got = collector.wait_for(e.id for e in events)
    assert len(got) == 100 and sink.dropped == 0


def test_syslog_tls_refuses_collector_from_unknown_ca(rsyslog_factory: Callable[..., Rsyslog],
                                                      tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    ca, ca_key = make_ca(pki, "Collector CA", 2)
    cert, key = make_cert(pki, "collector", ca, ca_key, hosts=["127.0.0.1"], server=True, days=1)
    stranger, _ = make_ca(tmp_path / "other", "Someone Else", 2)
    collector = rsyslog_factory(tls={"ca": ca, "cert": cert, "key": key})
    collector.start()
    sink = SyslogSink("127.0.0.1", collector.port, transport="tls",
                      ssl_context=client_context(ca_file=stranger), backoff_max=0.2)
    sink.emit([_event(1)])
    time.sleep(1.0)
    assert sink.sent == 0 and sink.pending == 1 and not sink.connected
    sink.close(timeout=0.2)
    assert collector.received_ids() == []


def test_syslog_survives_collector_restart_mid_stream(
        rsyslog_factory: Callable[..., Rsyslog]) -> None:
    collector = rsyslog_factory()
    collector.start()
    sink = SyslogSink("127.0.0.1", collector.port, transport="tcp",
                      backoff_initial=0.05, backoff_max=0.5)
    events = [_event(i) for i in range(1500)]
    emitted = 0
    stopped_at: list[int] = []
    failures: list[BaseException] = []

    def kill_collector_while_streaming() -> None:
        try:
            _wait_until(lambda: len(collector.received_ids()) >= 100, "first events to arrive")
            stopped_at.append(emitted)
            collector.stop()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)

    stopper = threading.Thread(target=kill_collector_while_streaming)
    stopper.start()
    # A producer emits steadily (~1000 events/s) while another thread stops the collector.
    for start in range(0, len(events), 10):
        sink.emit(events[start:start + 10])
        emitted = start + 10
        time.sleep(0.01)
        if emitted == 1000:
            stopper.join(DEADLINE)
            assert not failures, failures
            assert stopped_at and stopped_at[0] < 1000, "collector was not stopped mid-stream"
            assert sink.pending > 0, "events emitted while the collector was down must queue"
            collector.start()  # same port, same output file
    got = collector.wait_for(e.id for e in events)
    sink.close(timeout=DEADLINE)
    assert set(got) >= {e.id for e in events}  # at least once; a resent window may repeat
    assert sink.connects >= 2 and sink.dropped == 0


def _complete_frames(data: bytes) -> list[bytes]:
    """Split an RFC 6587 octet-counted stream; a trailing partial frame is ignored."""
    frames, pos = [], 0
    while True:
        space = data.find(b" ", pos)
        if space < 0:
            return frames
        length = int(data[pos:space])
        if space + 1 + length > len(data):
            return frames
        frames.append(data[space + 1:space + 1 + length])
        pos = space + 1 + length


def test_syslog_replays_what_a_reset_collector_never_read() -> None:
    """A collector that dies with unread data resets the connection (RFC 9293 3.6.1); those
    messages had left the queue already, so only the replay window can bring them back."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(DEADLINE)
    port = listener.getsockname()[1]
    received: list[bytes] = []
    errors: list[BaseException] = []
    died = threading.Event()

    def collector() -> None:
        try:
            first, _ = listener.accept()
            first.settimeout(DEADLINE)
            received.append(first.recv(4096))  # read a little...
            time.sleep(0.5)  # ...let the sink push the rest into our receive buffer...
            first.close()  # ...and die with it unread: the kernel answers with RST
            died.set()
            second, _ = listener.accept()
            second.settimeout(DEADLINE)
            chunks = []
            while chunk := second.recv(65536):  # until the sink's half-close at close()
                chunks.append(chunk)
            received.append(b"".join(chunks))
            second.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=collector)
    thread.start()
    sink = SyslogSink("127.0.0.1", port, backoff_initial=0.05, backoff_max=0.2)
    events = [_event(i) for i in range(500)]
    sink.emit(events)
    _wait_until(lambda: sink.sent == 500, "the sink to hand all events to the kernel")
    assert died.wait(DEADLINE)
    sink.emit([_event(500)])  # the next send finds the connection reset
    _wait_until(lambda: sink.connects >= 2 and sink.pending == 0, "reconnect and resend")
    sink.close(timeout=DEADLINE)
    thread.join(DEADLINE)
    listener.close()
    assert not errors, errors
    ids = {m.decode() for part in received for frame in _complete_frames(part)
           for m in ID_RE.findall(frame)}
    assert ids >= {e.id for e in events}
    assert len(received[0]) == 4096  # the first connection really saw only a fraction
