"""Round 7: every patient of an event reaches a collector's parsed structured data.

The SD element repeats `patient` once per patient ID (RFC 5424 6.3.3 allows it), but rsyslog's
mmpstrucdata (and syslog-ng's SDATA) keep only the last value of a repeated name: a SIEM filtering
on the parsed field saw one patient of a C-FIND answer about three. `patients` now carries all of
them, joined by DICOM's value delimiter."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

from pacsguard.events.model import Event
from pacsguard.sinks import SyslogSink

RSYSLOGD = "/usr/sbin/rsyslogd"
HOST = "127.0.0.1"
DEADLINE = 20.0


def test_rsyslogs_parsed_structured_data_names_every_patient(tmp_path: Path) -> None:
    base = tmp_path / "rsyslog"
    (base / "work").mkdir(parents=True)
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    out = base / "sd.json"
    conf = base / "rsyslog.conf"
    conf.write_text(f'''
global(workDirectory="{base / "work"}")
module(load="imtcp")
module(load="mmpstrucdata")
template(name="sd" type="string" string="%$!rfc5424-sd%\\n")
ruleset(name="in") {{ action(type="mmpstrucdata") action(type="omfile" file="{out}" template="sd") }}
input(type="imtcp" port="{port}" address="{HOST}" ruleset="in")
''')
    with open(base / "console", "wb") as console:
        proc = subprocess.Popen(["timeout", "60", RSYSLOGD, "-n", "-f", str(conf), "-i", str(base / "pid")],
                                stdout=console, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        end = time.monotonic() + DEADLINE
        while True:
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < end and proc.poll() is None, (base / "console").read_text()
                time.sleep(0.05)
        sink = SyslogSink(HOST, port)
        sink.emit([Event(kind="dicom.dimse.c-find", component="gateway", patient_ids=("PID-A", 'P"B]', "PID-C")),
                   Event(kind="dicom.dimse.c-store", component="gateway", patient_ids=("PID-D",))])
        sink.close(DEADLINE / 2)
        while not out.exists() or len(out.read_text().splitlines()) < 2:
            assert time.monotonic() < end, (base / "console").read_text()
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(DEADLINE)
    several, one = (json.loads(line)["pacsguard@32473"] for line in out.read_text().splitlines())
    assert several["patient"] == "PID-C"  # what a repeated name leaves: the last one only
    assert several["patients"].split("\\") == ["PID-A", 'P"B]', "PID-C"]
    assert one["patient"] == "PID-D" and "patients" not in one  # one patient: as before
