"""Round 6, soak findings 2 and 5: refusal floods filling the audit store, associations that trickle.

2. Every association a route refuses was two records (requested + rejected), however many a host
   sent: an unauthenticated host at 100 refusals/s filled the store's disk in a day, and then
   `record_before_response` refused every modality. Now, per (source host, rule), the first
   `limits.refusals_recorded_per_minute` are recorded one by one and the rest counted in one
   `gateway.refusals.summary` a minute; the route's checks (the inline IDS) still see each one,
   and accepted associations are never aggregated.
5. An accepted association that sent one byte every (idle_timeout - 1) s was never cut off,
   relayed or store-and-forward: a PDU must now arrive whole within `limits.artim_timeout` plus its
   length at `limits.min_pdu_rate` (PS3.8 9.3.1), else A-ABORT with a recorded reason naming both.

The relay runs in memory (tests/gateway/playbook.py); the store-and-forward route as a real
`pacsguard serve` on 127.0.66.0/24, ports 28500-28999.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from playbook import CT_STORAGE, IMPLICIT_LE, FakeEngine, Playbook, associate_ac, associate_rq, route_config
from pydantic import ValidationError
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from event_schema import check_event
from pacsguard.config.schema import Route
from pacsguard.dicom import dimse
from pacsguard.dicom import pdu as P
from pacsguard.events import Event, Party

pytestmark = pytest.mark.timeout(120)

HOST = "127.0.66.7"


def refused_route() -> Route:
    """A relay route that refuses every host but one (policy.hosts); limits.refusals_recorded_per_minute
    is left at its default, 10."""
    return route_config(policy={"hosts": ["127.0.66.200/32"]})


async def refusals(pb: Playbook, count: int) -> None:
    """``count`` associations from pb.host, each an A-ASSOCIATE-RQ the route rejects (AE titles vary)."""
    for i in range(count):
        pb.connect(40000 + i)
        await pb.client(associate_rq(f"PROBE{i % 5}"))
        assert [s.name for s in pb.to_client()] == ["A-ASSOCIATE-RJ"]
    await asyncio.sleep(0.1)  # each closes 50 ms after its A-ASSOCIATE-RJ


def kinds(pb: Playbook, kind: str) -> list[Event]:
    return [e for e in pb.events if e.kind == kind]


# --- 2. refusal floods ----------------------------------------------------------------------------


def test_refusal_flood_records_the_first_per_minute_and_one_summary() -> None:
    """30 refusals from one host: 10 recorded whole (requested + rejected), 20 counted in one summary
    naming the AE titles tried, the first and last time; the IDS saw all 30."""
    engine = FakeEngine(on="never")
    pb = Playbook(refused_route(), engine=engine, host=HOST)
    summary: list[Event] = []

    async def run() -> None:
        await refusals(pb, 30)
        assert len(kinds(pb, "dicom.association.requested")) == 10
        assert len(kinds(pb, "dicom.association.rejected")) == 10
        pb.refusals.flush()  # the window's end (60 s) comes early: the gateway stops, say
        summary.extend(kinds(pb, "gateway.refusals.summary"))

    asyncio.run(run())
    assert len(pb.events) == 10 * 2 + 1, [e.kind for e in pb.events]
    assert len([w for w in engine.observed if w.startswith("rejected:")]) == 30  # every refusal judged
    [event] = summary
    check_event(event, "the refusal summary")
    details = event.details
    assert details["suppressed"] == 20 and details["recorded"] == 10
    assert details["host"] == HOST and details["rule"] == "policy.hosts" and details["route"] == "unit"
    assert sorted(details["calling_ae_titles"]) == [f"PROBE{i}" for i in range(5)]
    assert datetime.fromisoformat(details["first"]) <= datetime.fromisoformat(details["last"])
    assert event.actor.host == HOST and "20 more" in event.message


def test_each_host_and_rule_counts_apart() -> None:
    """A second host's refusals start their own count: one flood does not hide another source."""
    pb = Playbook(refused_route(), host=HOST)

    async def run() -> None:
        await refusals(pb, 15)
        pb.host = "127.0.66.8"
        await refusals(pb, 15)

    asyncio.run(run())
    hosts = [e.actor.host for e in kinds(pb, "dicom.association.rejected")]
    assert hosts == [HOST] * 10 + ["127.0.66.8"] * 10


def test_accepted_associations_are_never_aggregated() -> None:
    """20 accepted associations from one host: 20 requested and 20 accepted records, each
    requested recorded before the PACS answers (not held to the A-ASSOCIATE-AC)."""
    pb = Playbook(route_config(), host=HOST)  # 10 refusals a minute recorded: these are no refusals

    async def run() -> None:
        for i in range(20):
            pb.connect(41000 + i)
            await pb.client(associate_rq("WS1"))
            assert pb.kinds()[-1] == "dicom.association.requested"  # before the upstream's answer
            await pb.upstream(associate_ac())
            pb.close()

    asyncio.run(run())
    assert len(kinds(pb, "dicom.association.requested")) == 20
    assert len(kinds(pb, "dicom.association.accepted")) == 20


def test_a_window_closes_and_counts_afresh() -> None:
    """After REFUSAL_WINDOW seconds a source's summary is recorded and its count starts again."""
    from pacsguard.records.dicom import REFUSAL_WINDOW, RefusalLog  # new in round 6

    published: list[Event] = []
    now = [1000.0]
    log = RefusalLog(1, published.append, clock=lambda: now[0])

    def rejected(ae: str) -> Event:
        return Event(kind="dicom.association.rejected", component="gateway", actor=Party(ae_title=ae, host=HOST),
                     details={"route": "r", "by": "gateway", "rule": "policy.hosts"})

    assert [log.admit(rejected(f"A{i}")) for i in range(3)] == [True, False, False]
    assert published == []
    now[0] += REFUSAL_WINDOW
    assert log.admit(rejected("B")) is True  # a new window: recorded again
    [summary] = published
    assert summary.details["suppressed"] == 2 and summary.details["calling_ae_titles"] == ["A1", "A2"]
    check_event(summary, "the refusal summary")


def test_config_keys_are_validated() -> None:
    assert Route.model_validate({**_route_dict(), "limits": {}}).limits.refusals_recorded_per_minute == 10
    assert Route.model_validate({**_route_dict(), "limits": {}}).limits.min_pdu_rate == 32.0
    for bad in ({"refusals_recorded_per_minute": -1}, {"min_pdu_rate": 0}, {"refusals_recorded_per_minute": "x"}):
        with pytest.raises(ValidationError):
            Route.model_validate({**_route_dict(), "limits": bad})


def _route_dict() -> dict[str, Any]:
    return {"name": "r", "listen": {"host": HOST, "port": 28501, "ae_title": "PG"},
            "upstream": {"host": HOST, "port": 28502, "ae_title": "PACS"}}


# --- 5. trickling PDUs, relayed -------------------------------------------------------------------


def _store_pdus() -> tuple[bytes, bytes]:
    """A C-STORE-RQ's command PDU and its data set PDU (a few hundred bytes)."""
    command = dimse.CommandSet(command_field=dimse.C_STORE_RQ, message_id=1, affected_sop_class_uid=CT_STORAGE,
                               affected_sop_instance_uid="1.2.3.4.5", priority=0, command_data_set_type=0)
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CT_STORAGE, "1.2.3.4.5"
    ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "TRICKLE", "1.2.3.4", "1.2.3.4.1"
    ds.BitsAllocated, ds.PixelData = 8, bytes(2048)
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, ds)
    cmd, data = P.encode_dimse_message(1, dimse.encode_command_set(command), buffer.getvalue(), 16384)
    return cmd, data


def test_relay_aborts_a_trickling_pdu() -> None:
    """One byte every 0.4 s (idle_timeout 2 s never expires): aborted once artim_timeout (1 s) plus
    the PDU's length at min_pdu_rate has passed, the reason naming both limits."""
    pb = Playbook(route_config(limits={"artim_timeout": 1, "idle_timeout": 2}), host=HOST)
    aborted_after: list[float] = []

    async def run() -> None:
        pb.connect()
        await pb.client(associate_rq("WS1", "PACSGUARD", CT_STORAGE))
        await pb.upstream(associate_ac())
        cmd, data = _store_pdus()
        await pb.client(cmd)
        started = time.monotonic()
        for i in range(10):  # 4 s, twice idle_timeout
            assert pb.relay is not None
            if pb.relay.closed:
                aborted_after.append(time.monotonic() - started)
                return
            await pb.client(data[i:i + 1])
            await asyncio.sleep(0.4)

    asyncio.run(run())
    assert aborted_after and aborted_after[0] < 3, "still open while the PDU trickled"
    [aborted] = kinds(pb, "dicom.association.aborted")
    assert aborted.details["cause"] == "timeout"
    assert "limits.min_pdu_rate" in aborted.details["reason"] and "limits.artim_timeout" in aborted.details["reason"]


def test_relay_lets_a_pdu_split_in_time_pass() -> None:
    """A PDU in two halves 0.5 s apart, within artim_timeout (1 s): passes, nothing aborted."""
    pb = Playbook(route_config(limits={"artim_timeout": 1, "idle_timeout": 5}), host=HOST)

    async def run() -> None:
        pb.connect()
        await pb.client(associate_rq("WS1", "PACSGUARD", CT_STORAGE))
        await pb.upstream(associate_ac())
        cmd, data = _store_pdus()
        await pb.client(cmd, data[:10])
        await asyncio.sleep(0.5)
        await pb.client(data[10:])
        await asyncio.sleep(1.5)
        assert pb.relay is not None and not pb.relay.closed

    asyncio.run(run())
    assert not kinds(pb, "dicom.association.aborted")


# --- store-and-forward: a real `pacsguard serve` ------------------------------------------------------

SAF_HOST = "127.0.66.9"
SAF_PORT = 28610


@pytest.fixture
def saf_gateway(tmp_path: Path) -> Iterator[Path]:
    """`pacsguard serve` with one store-and-forward route on SAF_HOST:SAF_PORT that allows only
    127.0.66.200 and 127.0.66.201; yields its home."""
    route = {"name": "saf", "mode": "store-and-forward",
             "listen": {"host": SAF_HOST, "port": SAF_PORT, "ae_title": "SAF"},
             "upstream": {"host": SAF_HOST, "port": SAF_PORT + 1, "ae_title": "NOBODY"},
             "policy": {"hosts": ["127.0.66.200/31"]},
             "limits": {"artim_timeout": 2, "idle_timeout": 3},  # refusals_recorded_per_minute: 10 by default
             "spool": {"directory": "var/spool/saf", "min_free_mib": 1}}
    config = {"store": {"url": "var/pacsguard.db"}, "sinks": {"jsonl": {"path": "var/events.jsonl"}},
              "gateway": {"routes": [route]}}
    (tmp_path / "pacsguard.yaml").write_text(yaml.safe_dump(config))
    cli = [sys.executable, "-m", "pacsguard.cli"]
    subprocess.run([*cli, "init", "--no-demo"], cwd=tmp_path, check=True, capture_output=True, timeout=60)
    log = (tmp_path / "serve.log").open("ab")
    proc = subprocess.Popen([*cli, "serve"], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((SAF_HOST, SAF_PORT), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "serve.log").read_text()
                time.sleep(0.2)
        yield tmp_path
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()


def _events(home: Path) -> list[dict[str, Any]]:
    path = home / "var" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _connect(source: str) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(5)
    sock.bind((source, 0))
    sock.connect((SAF_HOST, SAF_PORT))
    return sock


def _rq(calling: str) -> bytes:
    contexts = [P.PresentationContextRQ(1, CT_STORAGE, [IMPLICIT_LE])]
    return P.encode_associate_rq(P.AssociateRQ(
        called_ae_title="SAF", calling_ae_title=calling, presentation_contexts=contexts,
        user_information=P.UserInformation.build(max_length=16384, implementation_class_uid="1.2.3")))


def _wait_for(home: Path, kind: str, source: str, timeout: float = 10) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in _events(home) if e["kind"] == kind and e["actor"].get("host") == source]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_store_and_forward_refusal_flood_is_bounded(saf_gateway: Path) -> None:
    """40 refused associations from one host: 10 recorded whole (the default a minute), not 40."""
    source = "127.0.66.60"
    for i in range(40):
        with _connect(source) as sock:
            sock.sendall(_rq(f"FLOOD{i % 3}"))
            assert sock.recv(64)[:1] == bytes([P.PDU_ASSOCIATE_RJ])
    _wait_for(saf_gateway, "dicom.association.rejected", source)
    time.sleep(1)
    mine = [e["kind"] for e in _events(saf_gateway) if e["actor"].get("host") == source]
    assert mine.count("dicom.association.requested") == 10, mine
    assert mine.count("dicom.association.rejected") == 10, mine
    assert len(mine) <= 20 + 2, mine  # the IDS's own alerts aside (its rules have their limits)


def test_store_and_forward_aborts_a_trickling_pdu(saf_gateway: Path) -> None:
    """An accepted association that sends its data set one byte a second (idle_timeout 3 s) is
    aborted within artim_timeout (2 s) plus a little, not left open."""
    source = "127.0.66.200"
    cmd, data = _store_pdus()
    with _connect(source) as sock:
        sock.sendall(_rq("MODALITY"))
        assert sock.recv(4096)[:1] == bytes([P.PDU_ASSOCIATE_AC])
        sock.sendall(cmd)
        started, closed = time.monotonic(), None
        for i in range(12):
            try:
                sock.sendall(data[i:i + 1])
                sock.settimeout(1)
                if sock.recv(100) is not None:
                    closed = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = time.monotonic() - started
                break
    assert closed is not None and closed < 7, "the association was still open after 12 s of trickling"
    [aborted] = _wait_for(saf_gateway, "dicom.association.aborted", source)
    assert aborted["details"]["cause"] == "timeout" and "limits.min_pdu_rate" in aborted["details"]["reason"]

