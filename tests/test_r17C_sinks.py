"""Round 17, area C: what leaves pacsguard for a SIEM, probed from outside.

- An event holding a lone surrogate (a name decoded with surrogateescape, a YAML escape in an IDS
  rule's title) made the ECS formatter raise: the JSON-lines file in `format: ecs` and the syslog
  output in `format: ecs` lost the whole batch it was in, every good event of it too. The event is
  now written with the surrogate as its escape text, as the canonical JSON writes it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from pathlib import Path

from pacsguard.events.model import Event, Party, Severity
from pacsguard.sinks import JsonLinesSink, SyslogSink
from peers.rsyslog import tcp_collector

HOST = "127.0.73.1"  # this helper's loopback address (round 17, area C)
DEADLINE = 20.0


def _batch() -> list[Event]:
    """A good event, one whose texts hold lone surrogates, and another good one."""
    odd = Event(kind="ids.alert.r17c", component="ids", severity=Severity.WARNING,
                actor=Party(ae_title="MOD", host="10.0.0.7", user="dr\udcffx"),
                message="file \udcfe.dcm: rule hit", details={"rule_id": "r17c", "title": "t\ud800"})
    return [Event(kind="dicom.dimse.c-echo", component="gateway", message="first"), odd,
            Event(kind="dicom.dimse.c-echo", component="gateway", message="last")]


def test_an_ecs_json_lines_file_keeps_every_event_of_a_batch_with_a_surrogate(tmp_path: Path) -> None:
    path = tmp_path / "events.json"
    with JsonLinesSink(path, message_format="ecs") as sink:
        sink.emit(_batch())
    docs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [d["message"] for d in docs] == ["first", "file \\udcfe.dcm: rule hit", "last"]
    alert = docs[1]
    assert alert["user"]["name"] == "dr\\udcffx" and alert["rule"] == {"id": "r17c", "name": "t\\ud800"}
    assert sink.lost == 0


def test_rsyslog_receives_every_ecs_event_of_a_batch_with_a_surrogate(tmp_path: Path) -> None:
    base = tmp_path / "rsyslog"
    out = base / "msg.txt"
    with tcp_collector(base, HOST, "%msg%\\n", f'action(type="omfile" file="{out}" template="t")') as rsyslog:
        sink = SyslogSink(HOST, rsyslog.port, message_format="ecs")
        sink.emit(_batch())
        sink.close(DEADLINE / 2)
        end = time.monotonic() + DEADLINE
        while not out.exists() or len(out.read_text(encoding="utf-8").splitlines()) < 3:
            assert time.monotonic() < end, rsyslog.console.read_text(errors="replace")
            time.sleep(0.05)
    docs = [json.loads(line.lstrip("\ufeff")) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [d["message"] for d in docs] == ["first", "file \\udcfe.dcm: rule hit", "last"]
    assert sink.sent == 3 and sink.dropped == 0


# --------------------------------------------------------------------------------------------
# The syslog queue while the collector is away: bounded in octets, not only in messages.
# 100,000 messages of up to 8,096 octets is 810 MB; an attacker who makes every event nearly that
# large (a user identity of 3,400 octets per A-ASSOCIATE-RQ, PS3.7 D.3.3.7, sent whole) during a
# SIEM outage grew the gateway's memory by that much. The queue now also holds at most
# `queue_bytes` octets (128 MiB by default), dropping the oldest, counted in `dropped`.
# --------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _large(i: int) -> Event:
    return Event(kind="dicom.association.requested", component="gateway",
                 actor=Party(ae_title="MOD", host="10.0.0.7", user=f"{i:06d}" + "u" * 3_400),
                 details={"user_identity": "x" * 200, "n": i})


def _drained(sink: SyslogSink, server: socket.socket) -> bytes:
    """What ``sink`` sends to ``server`` until it is closed: close() sends what is queued, then
    half-closes, and the collector reads to that end."""
    received = bytearray()
    conn, _ = server.accept()
    closing = threading.Thread(target=sink.close, args=(DEADLINE / 2,))
    closing.start()
    with conn:
        conn.settimeout(DEADLINE)
        while chunk := conn.recv(65536):
            received += chunk
    closing.join(DEADLINE)
    return bytes(received)


def _frames(data: bytes) -> list[bytes]:
    """The messages of an octet-counted stream (RFC 6587 3.4.1)."""
    out = []
    while data:
        length, _, rest = data.partition(b" ")
        out.append(rest[:int(length)])
        data = rest[int(length):]
    return out


def test_the_syslog_queue_is_bounded_in_octets_by_default() -> None:
    sink = SyslogSink(HOST, _free_port(), backoff_initial=30)  # nobody listens there
    try:
        assert sink.queue_bytes <= 128 * 1024 * 1024
        sink.emit([_large(0)])
        assert sink.pending == 1 and 7000 < sink.pending_bytes <= 8096 + 5  # sent whole, not shortened
    finally:
        sink.close(0)


def test_an_outage_with_large_events_keeps_the_newest_within_the_octet_bound() -> None:
    port = _free_port()
    limit = 1024 * 1024
    sink = SyslogSink(HOST, port, queue_bytes=limit, backoff_initial=0.05, backoff_max=0.2)
    received = bytearray()
    try:
        for start in range(0, 400, 50):  # ~7.5 KiB each: 400 of them are 3 MiB
            sink.emit([_large(i) for i in range(start, start + 50)])
            assert sink.pending_bytes <= limit
        assert sink.dropped > 250 and sink.sent == 0
        queued = sink.pending
        # The collector comes up only now: what is queued reaches it, the newest event last.
        with socket.create_server((HOST, port)) as server:
            server.settimeout(DEADLINE)
            received += _drained(sink, server)
        frames = _frames(bytes(received))
        assert len(frames) >= queued and sink.dropped + queued == 400
        newest = json.loads(frames[-1].split(b"\xef\xbb\xbf", 1)[1])
        assert newest["details"]["n"] == 399
    finally:
        sink.close(1)


# --------------------------------------------------------------------------------------------
# The JSON-lines file on a file system that fills up (a real 64 KiB tmpfs), then rotated by
# logrotate's copytruncate: the half line the full disk left was gone with the truncation, yet the
# next batch still began with the newline meant to end it, so the fresh file's first line was
# empty (a strict JSON-lines reader fails on it). Now the separator is written only when the file
# still holds the half line.
# --------------------------------------------------------------------------------------------

LOGROTATE = "/usr/sbin/logrotate"


def _jsonl_event(n: int) -> Event:
    return Event(kind="dicom.association.requested", component="gateway", message=f"event {n}",
                 details={"n": n, "pad": "x" * 300})


def test_after_a_full_disk_and_copytruncate_the_file_starts_with_an_event(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(disk)],
                             capture_output=True, text=True, timeout=30)
    assert mounted.returncode == 0, f"a tmpfs mount needs root: {mounted.stderr}"
    try:
        path = disk / "events.json"
        with JsonLinesSink(path) as sink:
            failed = 0
            for n in range(400):  # ~500 octets each: 64 KiB fills on the way
                try:
                    sink.emit([_jsonl_event(n)])
                except OSError as exc:
                    assert "No space left on device" in str(exc)
                    failed += 1
            assert failed and sink.lost == failed
            assert not path.read_bytes().endswith(b"\n")  # the full disk cut a line in half
            conf = tmp_path / "logrotate.conf"
            conf.write_text(f"{path} {{\n  rotate 3\n  copytruncate\n  olddir {tmp_path}\n  nocompress\n}}\n")
            done = subprocess.run([LOGROTATE, "-f", "-s", str(tmp_path / "state"), str(conf)],
                                  capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stderr
            sink.emit([_jsonl_event(1000), _jsonl_event(1001)])
        lines = path.read_bytes().split(b"\n")
        assert lines[-1] == b"" and [json.loads(line)["message"] for line in lines[:-1]] == ["event 1000",
                                                                                         "event 1001"]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True, timeout=30)


# --------------------------------------------------------------------------------------------
# CEF and LEEF records with control characters from the wire. Neither grammar has an escape for
# NUL, ESC or DEL, and they went out raw: a collector or parser in C ends a value at a NUL, so an
# AE title or a patient ID holding one hid the fields after it from the SIEM, and an escape
# sequence reached the analyst's terminal. They are now replaced by U+FFFD in both formats (the
# store and the JSON formats keep the exact text).
# --------------------------------------------------------------------------------------------

def _controls_event() -> Event:
    return Event(kind="dicom.association.requested", component="gateway",
                 actor=Party(ae_title="EVIL\x00cs4=PACS", host="10.0.0.9", port=104),
                 target=Party(ae_title="PACS"), patient_ids=("P\x1b[2J1\x7f",),
                 message="association from EVIL\x00 hidden\x07")


def test_cef_and_leef_records_on_the_wire_hold_no_control_characters() -> None:
    from test_sink_formats import parse_cef, parse_leef

    port = _free_port()
    received = bytearray()
    with socket.create_server((HOST, port)) as server:
        server.settimeout(DEADLINE)
        sinks = [SyslogSink(HOST, port, message_format=fmt) for fmt in ("cef", "leef")]
        for sink in sinks:
            sink.emit([_controls_event()])
            received += _drained(sink, server)
    cef_message, leef_message = _frames(bytes(received))
    for message, delimiter in ((cef_message, None), (leef_message, 0x09)):  # LEEF's is the tab
        controls = [b for b in message if (b < 0x20 or b == 0x7F) and b != delimiter]
        assert controls == [], message
    cef = cef_message.decode("utf-8")
    header, ext = parse_cef(cef[cef.index("CEF:"):])
    assert header[5] == "association from EVIL\ufffd hidden\ufffd"
    assert ext["cs3"] == "EVIL\ufffdcs4=PACS" and ext["cs4"] == "PACS" and ext["cs1"] == "P\ufffd[2J1\ufffd"
    leef = leef_message.decode("utf-8")
    _, attributes = parse_leef(leef[leef.index("LEEF:"):])
    assert attributes["srcAETitle"] == "EVIL\ufffdcs4=PACS" and attributes["dstAETitle"] == "PACS"
    assert attributes["msg"] == "association from EVIL\ufffd hidden\ufffd"
