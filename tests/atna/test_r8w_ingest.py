"""What the receiver flags about a message it reads all the same (outside round 8, W1): an
EventOutcomeIndicator outside PS3.15 A.5.1's 0 4 8 12 (`bad-outcome`), an EventDateTime without a
zone (`no-time-zone`, read as UTC), both counted per sender by `atna sources`; and XML in UTF-16
with white space after its byte order mark, or in UTF-32 (XML 1.0 4.3.3, Appendix F.1), read."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from atna_corpus import every_event_id, fhir_patient_read
from receiver import free_port

from pacsguard.atna.ingest import Sender, frame_event
from pacsguard.atna.sources import count_sources
from pacsguard.events.model import Event, Outcome
from terminal import in_terminal

LOGGER = "/usr/bin/logger"
HOST = "127.0.91.1"  # the listener
UNICODE = "127.0.91.7"  # a sender writing UTF-16 and UTF-32
SENDER = Sender("127.0.91.5", 40000, "tcp", "octet-counting")
HEADER = b"<85>1 2026-12-03T09:30:15Z ws01 app - IHE+RFC-3881 - "


def patient_read(**attributes: str) -> str:
    """A.5 Patient Record message (no XML declaration) with EventIdentification's attributes replaced."""
    text = every_event_id()["110110"].decode().split("?>", 1)[1]
    for name, value in attributes.items():
        text, n = re.subn(f'{name}="[^"]*"', f'{name}="{value}"', text, count=1)
        assert n == 1, name
    return text


def received(payload: bytes) -> Event:
    return frame_event(SENDER, HEADER + payload)


# ------------------------------------------------------------------------------ bad-outcome


@pytest.mark.parametrize("indicator", ["1", "success", "", " "])
def test_an_outcome_outside_0_4_8_12_is_flagged_and_counted(indicator: str) -> None:
    ev = received(patient_read(EventOutcomeIndicator=indicator).encode())
    assert ev.kind == "atna.audit.patient-record" and ev.outcome is Outcome.UNKNOWN
    assert ev.details["flags"] == ["bad-outcome"]
    row = count_sources([ev])[0]
    assert (row.bad_outcome, row.parsed) == (1, 1)
    assert (row.last_error or "").startswith("bad-outcome: EventOutcomeIndicator")
    assert ("missing or empty" in (row.last_error or "")) is (not indicator.strip())


def test_a_missing_outcome_is_flagged_in_a5_not_in_fhir_where_it_is_optional() -> None:
    text = re.sub(' EventOutcomeIndicator="0"', "", patient_read())
    assert "EventOutcomeIndicator" not in text
    assert received(text.encode()).details["flags"] == ["bad-outcome"]
    resource = fhir_patient_read()
    del resource["outcome"]  # AuditEvent.outcome is 0..1 in FHIR R4
    assert "flags" not in received(orjson.dumps(resource)).details
    resource["outcome"] = "1"  # but bound to 0 4 8 12 when given
    ev = received(orjson.dumps(resource))
    assert ev.details["flags"] == ["bad-outcome"] and count_sources([ev])[0].bad_outcome == 1
    assert (count_sources([ev])[0].last_error or "").startswith("bad-outcome: AuditEvent.outcome '1', not 0")


def test_a_good_outcome_and_a_zoned_time_are_not_flagged() -> None:
    for indicator in ("0", "4", " 8 ", "12"):
        ev = received(patient_read(EventOutcomeIndicator=indicator).encode())
        assert "flags" not in ev.details, indicator
    for when in ("2026-12-03T10:00:00Z", "2026-12-03T10:00:00+01:00", "2026-12-03T10:00:00.123-05:00"):
        assert "flags" not in received(patient_read(EventDateTime=when).encode()).details, when
    row = count_sources([received(patient_read().encode())])[0]
    assert (row.bad_outcome, row.no_time_zone, row.last_error) == (0, 0, None)


# ------------------------------------------------------------------------------ no-time-zone


@pytest.mark.parametrize("when", ["2026-12-03T10:00:00", "2026-12-03T10:00:00.250", " 2026-12-03T10:00:00 "])
def test_a_time_without_zone_is_read_as_utc_flagged_and_counted(when: str) -> None:
    ev = received(patient_read(EventDateTime=when).encode())
    assert ev.kind == "atna.audit.patient-record"
    assert ev.time.replace(microsecond=0) == datetime(2026, 12, 3, 10, 0, 0, tzinfo=timezone.utc)
    assert ev.details["flags"] == ["no-time-zone"]
    row = count_sources([ev])[0]
    assert row.no_time_zone == 1 and (row.last_error or "").startswith("no-time-zone: EventDateTime")


def test_a_date_alone_is_bad_event_time_not_no_time_zone() -> None:
    ev = received(patient_read(EventDateTime="2026-12-03").encode())
    assert ev.details["flags"] == ["bad-event-time"]


# ------------------------------------------------------------------------------ UTF-16 and UTF-32


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"])
def test_xml_in_utf16_or_utf32_with_white_space_after_its_bom_is_read(codec: str) -> None:
    ev = received(("\ufeff\r\n  " + patient_read()).encode(codec))
    assert ev.kind == "atna.audit.patient-record", ev.details.get("error")
    assert ev.details["patients"][0]["id"] == "PID-0042" and "raw_base64" in ev.details


@pytest.mark.parametrize("declared", ["UTF-32", "utf-32le", "UTF32"])
def test_utf32_declaring_itself_is_read(declared: str) -> None:
    text = f"<?xml version='1.0' encoding='{declared}'?>" + patient_read()
    ev = received(text.encode("utf-32"))  # Python writes the native (little endian) mark
    assert ev.kind == "atna.audit.patient-record", ev.details.get("error")


def test_utf32_faults_are_bad_encoding_naming_where() -> None:
    document = ("\ufeff" + patient_read()).encode("utf-32-le")
    broken = received(document[:40] + b"\x00\x00\x11\x00" + document[44:])
    assert broken.details["problem"] == "bad-encoding"
    assert broken.details["error"].startswith("XML: octet 40 (00 00 11 00) is no UTF-32-LE character")
    text = "<?xml version='1.0' encoding='ISO-8859-1'?>" + patient_read()
    contradicted = received(("\ufeff" + text).encode("utf-32-be"))
    assert contradicted.details["problem"] == "bad-encoding"
    assert "'ISO-8859-1'" in contradicted.details["error"] and "UTF-32-BE" in contradicted.details["error"]
    row = count_sources([broken, contradicted])[0]
    assert row.unparsable_xml == 2


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-32-be"])
def test_json_in_utf16_or_utf32_is_bad_encoding_not_neither_xml_nor_json(codec: str) -> None:
    """A FHIR AuditEvent written by a .NET client in Encoding.Unicode was "neither XML nor JSON";
    it is JSON in the wrong encoding (RFC 8259 8.1), and `atna sources` counts it as not FHIR."""
    ev = received(("\ufeff " + orjson.dumps(fhir_patient_read()).decode()).encode(codec))
    assert ev.details["problem"] == "bad-encoding"
    assert ev.details["error"].startswith(f"JSON: in {codec.upper()} (byte order mark ")
    row = count_sources([ev])[0]
    assert (row.not_fhir, row.unparsable_xml) == (1, 0)


# ------------------------------------------------------------------------------ end to end


def _accepts(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1).close()
    except OSError:
        return False
    return True


def _sources(store: Path) -> list[dict[str, Any]]:
    out = subprocess.run([sys.executable, "-m", "pacsguard.cli", "atna", "sources", "--store", str(store),
                          "--format", "json"], capture_output=True, text=True, timeout=60, check=True)
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


def test_real_senders_flags_reach_atna_sources(tmp_path: Path) -> None:
    """util-linux `logger` sends a message with outcome `success` and one whose EventDateTime has
    no zone; a sender on 127.0.91.7 sends UTF-32 and UTF-16 XML (with white space after the mark)
    octet-counted; `atna listen` stores them all, and `atna sources` counts both flags, in its JSON
    and as the last error in an 80-column table."""
    if not Path(LOGGER).exists():
        pytest.fail(f"{LOGGER} (util-linux) is missing")
    port, store, log = free_port(), tmp_path / "audit.db", tmp_path / "listen.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pacsguard.cli", "atna", "listen", "--tcp", f"{HOST}:{port}",
                                 "--store", str(store)], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "COLUMNS": "200"})
    try:
        end = time.monotonic() + 30
        while not _accepts(port):
            assert proc.poll() is None and time.monotonic() < end, log.read_text()
            time.sleep(0.1)
        for message in (patient_read(EventOutcomeIndicator="success"),
                        patient_read(EventDateTime="2026-12-03T10:00:00")):
            subprocess.run([LOGGER, "--rfc5424", "--msgid", "IHE+RFC-3881", "--size", "300000", "-n", HOST,
                            "-P", str(port), "-T", "--octet-count", message], check=True, timeout=20)
        with socket.create_connection((HOST, port), timeout=10, source_address=(UNICODE, 0)) as conn:
            for payload in (("\ufeff\n" + patient_read()).encode("utf-32-be"),
                            ("\ufeff  " + patient_read()).encode("utf-16-le")):
                frame = HEADER + payload
                conn.sendall(b"%d " % len(frame) + frame)
        end = time.monotonic() + 30
        while True:
            rows = {r["sender"]: r for r in _sources(store)}
            if sum(r["messages"] for r in rows.values()) >= 4:
                break
            assert time.monotonic() < end, rows
            time.sleep(0.3)
        table = in_terminal("atna", "sources", "--store", str(store), cwd=tmp_path, columns=80)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert "Traceback" not in log.read_text()
    unicode_row = rows.pop(UNICODE)
    assert (unicode_row["messages"], unicode_row["parsed"], unicode_row["last_error"]) == (2, 2, None)
    (logged,) = rows.values()  # logger's own address
    assert (logged["messages"], logged["parsed"], logged["bad_outcome"], logged["no_time_zone"]) == (2, 2, 1, 1)
    assert logged["last_error"].split(":")[0] in ("bad-outcome", "no-time-zone")
    assert all(len(line) <= 80 for line in table.splitlines()), table
    assert "bad-outcome" in table or "no-time-zone" in table, table


def test_a_utf16_document_s_xml_fault_is_unparsable_xml_not_bad_encoding() -> None:
    """A UTF-16 message with a mismatched end tag was `bad-encoding` (its octets are no UTF-8),
    sending its vendor after the wrong fault; its encoding is right, its XML is not."""
    wrong = ("\ufeff" + patient_read().replace("</AuditMessage>", "</AuditMsg>")).encode("utf-16-be")
    ev = received(wrong)
    assert (ev.details["problem"], ev.details["error"].split(":")[1].strip()) == ("unparsable-xml", "mismatched tag")
    lone = ("\ufeff" + patient_read()).encode("utf-16-le")
    ev = received(lone[:20] + b"\x00\xd8" + lone[22:])  # a high surrogate followed by no low one
    assert ev.details["problem"] == "bad-encoding"
    assert ev.details["error"].startswith("XML: octet 20 (00 d8") and "UTF-16-LE" in ev.details["error"]
