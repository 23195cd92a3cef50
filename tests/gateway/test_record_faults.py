"""Nothing acknowledged without its record, with real peers (issue 16, section 1): dcmtk's
storescu sends through `pacsguard serve` to Orthanc while the gateway is killed (SIGKILL) or its
store's file system is full (a small tmpfs under the store), in both `on_record_failure` modes.
Every C-STORE that storescu saw succeed must be in the store afterwards, and `audit verify` passes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from gateway_under_test import RunningGateway, route
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from peers.dcmtk import Dcmtk, free_port
from tmpfs_helpers import fill, small_tmpfs

pytestmark = [pytest.mark.peers]

CALLING = "MODALITY"


def corpus(folder: Path, count: int) -> dict[str, str]:
    """``count`` small CT objects with fresh UIDs in ``folder``; file path -> SOP Instance UID."""
    folder.mkdir()
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    files: dict[str, str] = {}
    for i in range(count):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID = generate_uid()
        ds.PatientID = f"DUR{i % 7:03d}"
        path = folder / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files[str(path)] = str(ds.SOPInstanceUID)
    return files


def storescu(dcmtk: Dcmtk, gw: RunningGateway, files: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([dcmtk.path("storescu"), "-v", "-aet", CALLING, "-aec", "PACSGUARD", "127.0.0.1",
                             str(gw.port()), *files], env=dcmtk.env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)


def acknowledged(log: Path) -> list[str]:
    """The files storescu saw succeed: each "Sending file: F" followed by a successful response."""
    done: list[str] = []
    current: str | None = None
    for line in log.read_text(errors="replace").splitlines():
        if m := re.match(r"I: Sending file: (.+)$", line):
            current = m.group(1).strip()
        elif "Received Store Response (Success)" in line and current is not None:
            done.append(current)
            current = None
    return done


def recorded_stores(gw: RunningGateway) -> dict[str, str]:
    """SOP Instance UID -> status of every C-STORE the gateway's store holds."""
    return {str(e.details.get("sop_instance")): str(e.details.get("status")) for e in gw.events("dicom.dimse.c-store")}


def verify_ok(gw: RunningGateway) -> None:
    result = gw.cli("audit", "verify", check=None)
    assert result.returncode == 0, f"audit verify failed:\n{result.stdout}\n{result.stderr}"


def kill_mid_batch(dcmtk: Dcmtk, gw: RunningGateway, files: dict[str, str], log: Path, *, after: int) -> list[str]:
    """storescu sends ``files``; the gateway is killed (SIGKILL) once ``after`` are acknowledged.
    Returns the files storescu saw succeed."""
    client = storescu(dcmtk, gw, list(files), log)
    try:
        deadline = time.monotonic() + 60
        while len(acknowledged(log)) < after and time.monotonic() < deadline and client.poll() is None:
            time.sleep(0.02)
        os.killpg(gw.proc.pid, signal.SIGKILL)  # serve runs in its own session: its group is its pid
        gw.proc.wait(10)
        client.wait(60)
    finally:
        if client.poll() is None:
            client.kill()
    acked = acknowledged(log)
    assert after <= len(acked) < len(files), f"the gateway was not killed mid-batch ({len(acked)} acknowledged)"
    return acked


def test_sigkill_mid_batch_loses_no_acknowledged_store(dcmtk, orthanc, gateway, tmp_path):
    pacs = orthanc()
    gw = gateway(route("main", pacs.dicom_port, upstream_ae=pacs.aet,
                       policy={"calling_ae_titles": [CALLING], "hosts": ["127.0.0.0/8"]}))
    files = corpus(tmp_path / "corpus", 400)
    log = tmp_path / "storescu.log"
    acked = kill_mid_batch(dcmtk, gw, files, log, after=40)

    gw.restart()  # writes what the journal holds and the store lacks, first
    gw.stop()
    stores = recorded_stores(gw)
    missing = [files[f] for f in acked if stores.get(files[f]) != "0x0000"]
    assert missing == [], f"{len(missing)} of {len(acked)} acknowledged C-STOREs have no success record"
    verify_ok(gw)


def test_sigkill_on_a_postgresql_store_with_a_local_journal(dcmtk, orthanc, gateway, postgres_db_url, tmp_path):
    """`store.journal: PATH` on a PostgreSQL store: answers wait for the local journal's fdatasync,
    not for the database's commit, and a killed gateway's restart writes what PostgreSQL lacks."""
    scheme, rest = postgres_db_url.split("://", 1)
    credentials, where = rest.split("@", 1)
    user, password = credentials.split(":", 1)
    secret = tmp_path / "pg-password"
    secret.write_text(password)
    secret.chmod(0o600)
    store = {"url": f"{scheme}://{user}@{where}", "password": {"file": str(secret)}, "checkpoint_interval": 5,
             "journal": "var/events.journal"}
    pacs = orthanc()
    gw = gateway(route("main", pacs.dicom_port, upstream_ae=pacs.aet,
                       policy={"calling_ae_titles": [CALLING], "hosts": ["127.0.0.0/8"]}), extra={"store": store})
    files = corpus(tmp_path / "corpus", 200)
    log = tmp_path / "storescu.log"
    acked = kill_mid_batch(dcmtk, gw, files, log, after=30)
    journal = gw.home / "var" / "events.journal"
    assert journal.stat().st_mode & 0o777 == 0o600, "the journal holds PHI: owner-only"

    gw.restart()
    gw.stop()
    from pacsguard.store import EventQuery, EventStore

    es = EventStore.open(postgres_db_url)
    try:
        stores = {str(s.event.details.get("sop_instance")): str(s.event.details.get("status"))
                  for s in es.search(EventQuery(kind="dicom.dimse.c-store", limit=None))}
    finally:
        es.close()
    missing = [files[f] for f in acked if stores.get(files[f]) != "0x0000"]
    assert missing == [], f"{len(missing)} of {len(acked)} acknowledged C-STOREs have no success record"
    assert not journal.read_bytes().strip(b"\0"), "the journal is emptied once PostgreSQL holds everything"


# --- a full disk under the store ---------------------------------------------------------------


def healthz(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_until(condition, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout} s")


@pytest.mark.parametrize("mode", ["refuse", "relay"])
def test_full_disk_under_the_store(mode, dcmtk, orthanc, gateway, tmp_path):
    pacs = orthanc()
    metrics_port = free_port()
    jsonl = tmp_path / "events.jsonl"
    mounts: list[contextlib.ExitStack] = []

    def prepare(home: Path) -> None:
        stack = contextlib.ExitStack()
        stack.enter_context(small_tmpfs(home / "var"))
        mounts.append(stack)

    try:
        gw = gateway(route("main", pacs.dicom_port, upstream_ae=pacs.aet,
                           policy={"calling_ae_titles": [CALLING], "hosts": ["127.0.0.0/8"]})
                     | {"on_record_failure": mode, "record_timeout": 3},
                     extra={"metrics": {"enabled": True, "port": metrics_port},
                            # a secondary sink on another file system: it must hear of the failure
                            "sinks": {"jsonl": {"path": str(jsonl)}}}, prepare=prepare)
        files = corpus(tmp_path / "corpus", 30)
        names = list(files)
        assert healthz(metrics_port)[0] == 200

        filler = fill(gw.home / "var")
        during = tmp_path / "during.log"
        first = storescu(dcmtk, gw, names[:10], during)
        first.wait(60)
        status, body = wait_until(lambda: (h := healthz(metrics_port))[0] == 503 and h, 20,
                                  "/healthz did not report the failure")
        assert "No space left on device" in body["recording"]["error"] or "full" in body["recording"]["error"]
        assert "RECORDING FAILED" in gw.log.read_text()
        wait_until(lambda: jsonl.exists() and '"pacsguard.recording.failed"' in jsonl.read_text(), 20,
                   "the JSON-lines sink did not get the alert while the store failed")
        acked_during = acknowledged(during)
        if mode == "refuse":
            assert acked_during == [], "stores were acknowledged while nothing could be recorded"
            # A new association now gets a transient A-ASSOCIATE-RJ (PS3.8 Table 9-21).
            again = tmp_path / "again.log"
            storescu(dcmtk, gw, names[10:12], again).wait(60)
            assert acknowledged(again) == []
            assert "Association Rejected" in again.read_text() and "Transient" in again.read_text(), \
                again.read_text()
            assert pacs.instances() == [], "the PACS received stores the gateway could not record"
        else:
            assert len(acked_during) == 10, during.read_text()
            pacs.wait_for_instances(10)

        filler.unlink()  # space returns: the gateway recovers by itself
        wait_until(lambda: healthz(metrics_port)[0] == 200, 30, "/healthz did not recover")
        after = tmp_path / "after.log"
        storescu(dcmtk, gw, names[20:], after).wait(60)
        acked = acked_during + acknowledged(after)
        assert acknowledged(after) == names[20:], after.read_text()

        gw.stop()
        stores = recorded_stores(gw)
        assert [f for f in acked if stores.get(files[f]) != "0x0000"] == []
        failed = gw.events("pacsguard.recording.failed")
        recovered = gw.events("pacsguard.recording.recovered")
        assert failed and recovered, "the gap is not recorded"
        assert recovered[0].details["seconds"] > 0 and recovered[0].details["dropped"] == 0
        if mode == "refuse":
            rejected = gw.events("dicom.association.rejected")
            assert any(e.details.get("rule") == "on_record_failure" for e in rejected)
        verify_ok(gw)
    finally:
        for stack in mounts:
            stack.close()
