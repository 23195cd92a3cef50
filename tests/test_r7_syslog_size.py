"""Round 7: no syslog message is longer than a collector takes (RFC 5425 4.3.1).

Debian's rsyslog, in its default configuration (maxMessageSize 8096), reads the rest of a longer
octet-counted frame as a message of its own: text inside an event reached the SIEM as a forged
syslog message with another host and program name. Every message now fits, shortened when needed,
with `truncated="OCTETS"` in its structured data and the event's id kept."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from pacsguard.events.model import Event, Party, Severity
from pacsguard.sinks import SyslogSink, format_rfc5424
from pacsguard.sinks.syslog import BOM
from peers.rsyslog import tcp_collector
from test_sink_formats import parse_cef, parse_leef

HOST = "127.0.0.1"
DEADLINE = 20.0
MAX_MESSAGE = 8096  # rsyslog's default maxMessageSize, the sink's default limit
# A syslog message an attacker would like the SIEM to believe, from another host and program.
FORGED = "<10>1 2026-01-01T00:00:00Z pacs-admin-ws sshd - - - Accepted password for root from 10.9.9.9 "


def _huge(pad: int) -> Event:
    return Event(kind="ids.alert.r7", component="ids", severity=Severity.WARNING,
                 actor=Party(ae_title="MOD", host="10.0.0.7", port=104, user="u" * 20_000),
                 patient_ids=tuple(f"PID{i}" for i in range(40)), message="m" * 5000,
                 details={"rule_id": "r7", "value": "A" * pad + FORGED + "B" * 50, "n": 3})


def _forgery(pad: int) -> Event:
    return Event(kind="ids.alert.r7", component="ids", severity=Severity.WARNING, message="m",
                 actor=Party(ae_title="MOD", host="10.0.0.7"), details={"value": "A" * pad + FORGED + "B" * 50})


def _place_forgery_at(offset: int) -> Event:
    """An event whose whole message (as SyslogSink(hostname="gw1") formats it) has the forged text
    at `offset`, where rsyslog starts a message of its own."""

    def at(event: Event) -> int:
        return format_rfc5424(event, hostname="gw1", procid=os.getpid()).index(FORGED.encode())

    event = _forgery(9000 - (at(_forgery(9000)) - offset))
    assert at(event) == offset
    return event


@pytest.mark.parametrize("message_format", ["json", "cef", "leef", "ecs"])
def test_a_huge_event_is_sent_shortened_in_every_format(message_format: str) -> None:
    sink = SyslogSink(HOST, 9, message_format=message_format, backoff_initial=30)  # type: ignore[arg-type]
    try:
        event = _huge(30_000)
        message = sink.format(event)
    finally:
        sink.close(0)
    assert len(message) <= MAX_MESSAGE and sink.truncated == 1
    header, _, rest = message.partition(b"] ")
    assert re.search(rb' truncated="(\d+)"', header)
    assert int(re.search(rb' truncated="(\d+)"', header).group(1)) > 30_000  # type: ignore[union-attr]
    body = rest.removeprefix(BOM).decode("utf-8")
    if message_format in ("json", "ecs"):
        doc = json.loads(body)  # still one whole record, not a cut one
        assert (doc["id"] if message_format == "json" else doc["event"]["id"]) == event.id
    elif message_format == "cef":
        _, ext = parse_cef(body)
        assert ext["externalId"] == event.id
    else:
        _, attrs = parse_leef(body)
        assert attrs["eventId"] == event.id
    assert FORGED.encode() not in message


def test_a_message_limit_below_rfc5424s_minimum_is_refused_and_other_messages_are_cut() -> None:
    with pytest.raises(ValueError, match="at least 480 octets"):
        SyslogSink(HOST, 9, max_message_size=100)
    sink = SyslogSink(HOST, 9, max_message_size=600, backoff_initial=30)
    try:
        sink.send_messages(["<13>1 - - - - - - é".encode() * 100])
        assert sink.pending == 1
        frame = sink._pending[0]
        length, _, message = frame.partition(b" ")
        assert int(length) == len(message) <= 600
        message.decode("utf-8")  # never cut inside a character
    finally:
        sink.close(0)


def test_rsyslog_in_its_default_configuration_gets_no_forged_message(tmp_path: Path) -> None:
    base = tmp_path / "rsyslog"
    raw = base / "raw.log"
    # No maxMessageSize: rsyslog's default, as a SIEM relay installed from Debian has it.
    with tcp_collector(base, HOST, "%hostname%|%app-name%|%structured-data%|%msg%\\n",
                       f'action(type="omfile" file="{raw}" template="t")') as rsyslog:
        port, console, end = rsyslog.port, rsyslog.console, time.monotonic() + DEADLINE
        sink = SyslogSink(HOST, port, hostname="gw1")
        huge = _place_forgery_at(8097)  # where this rsyslog starts the second message
        after = Event(kind="dicom.association.requested", component="gateway", message="after")
        sink.emit([huge, after])
        sink.close(DEADLINE / 2)
        assert sink.pending == 0
        while after.id not in (raw.read_text(errors="replace") if raw.exists() else ""):
            assert time.monotonic() < end, console.read_text(errors="replace")
            time.sleep(0.05)
    lines = raw.read_text(encoding="utf-8").splitlines()
    assert [line.split("|", 2)[:2] for line in lines] == [["gw1", "pacsguard"], ["gw1", "pacsguard"]], lines
    assert "pacs-admin-ws" not in raw.read_text(encoding="utf-8")
    assert "oversize" not in console.read_text(errors="replace")
    first = lines[0].split("|", 3)
    assert 'truncated="' in first[2]
    assert json.loads(first[3].removeprefix("\ufeff"))["id"] == huge.id
