"""Round 7: every patient of an event reaches a collector's parsed structured data.

The SD element repeats `patient` once per patient ID (RFC 5424 6.3.3 allows it), but rsyslog's
mmpstrucdata (and syslog-ng's SDATA) keep only the last value of a repeated name: a SIEM filtering
on the parsed field saw one patient of a C-FIND answer about three. `patients` now carries all of
them, joined by DICOM's value delimiter."""

from __future__ import annotations

import json
import time
from pathlib import Path

from pacsguard.events.model import Event
from pacsguard.sinks import SyslogSink
from peers.rsyslog import tcp_collector

HOST = "127.0.0.1"
DEADLINE = 20.0


def test_rsyslogs_parsed_structured_data_names_every_patient(tmp_path: Path) -> None:
    base = tmp_path / "rsyslog"
    out = base / "sd.json"
    with tcp_collector(base, HOST, "%$!rfc5424-sd%\\n",
                       f'action(type="mmpstrucdata") action(type="omfile" file="{out}" template="t")',
                       modules=("mmpstrucdata",)) as rsyslog:
        port, end = rsyslog.port, time.monotonic() + DEADLINE
        sink = SyslogSink(HOST, port)
        sink.emit([Event(kind="dicom.dimse.c-find", component="gateway", patient_ids=("PID-A", 'P"B]', "PID-C")),
                   Event(kind="dicom.dimse.c-store", component="gateway", patient_ids=("PID-D",))])
        sink.close(DEADLINE / 2)
        while not out.exists() or len(out.read_text().splitlines()) < 2:
            assert time.monotonic() < end, rsyslog.console.read_text()
            time.sleep(0.05)
    several, one = (json.loads(line)["pacsguard@32473"] for line in out.read_text().splitlines())
    assert several["patient"] == "PID-C"  # what a repeated name leaves: the last one only
    assert several["patients"].split("\\") == ["PID-A", 'P"B]', "PID-C"]
    assert one["patient"] == "PID-D" and "patients" not in one  # one patient: as before
