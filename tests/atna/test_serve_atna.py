"""`pacsguard serve` with an `atna:` section: its syslog listener (read by a reading process) records
a logger message, and its outbound feed sends the gateway's own C-STOREs (real dcmtk traffic) as
PS3.15 A.5 Instances Transferred messages over mutual TLS to a second pacsguard acting as the
external repository."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from atna_corpus import every_event_id
from pydicom import dcmread
from pydicom.data import get_testdata_file
from test_outbound import Repository, pki  # noqa: F401 - pki is a fixture

from event_schema import check_event
from pacsguard.atna.message import dicom_xml, schema
from pacsguard.store import EventQuery, EventStore
from peers.dcmtk import free_port, wait_for_port

pytestmark = pytest.mark.peers


def test_serve_receives_and_forwards(dcmtk, tmp_path: Path, pki: dict[str, Path]) -> None:  # noqa: F811
    repo_port = free_port()
    repo = Repository(tmp_path / "repo", repo_port, pki)
    (tmp_path / "repo").mkdir()
    repo.start()
    cli = [sys.executable, "-m", "pacsguard.cli"]
    site = tmp_path / "site"
    site.mkdir()
    assert subprocess.run([*cli, "init"], cwd=site, capture_output=True, timeout=60).returncode == 0
    config = site / "pacsguard.yaml"
    gw_port, demo_port, syslog_port = free_port(), free_port(), free_port()
    config.write_text(config.read_text().replace("11112", str(gw_port)).replace("11113", str(demo_port)) + f"""
atna:
  enabled: true
  tcp: {{port: {syslog_port}}}
  readers: 1                  # read by a child process, stored by serve
  outbound:
    host: 127.0.0.1
    port: {repo_port}
    server_name: localhost
    ca_file: {pki["ca"]}
    cert_file: {pki["client"]}
    key_file: {pki["client_key"]}
    source_id: SITE-A
    retry: 0.5
""")
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([*cli, "serve"], cwd=site, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "COLUMNS": "200"})
    try:
        assert wait_for_port("127.0.0.1", gw_port, 30, proc), log.read_text()
        assert wait_for_port("127.0.0.1", syslog_port, 30, proc), log.read_text()
        message = every_event_id()["110110"].decode().replace("\n", "")
        subprocess.run(["/usr/bin/logger", "--rfc5424", "--octet-count", "-T", "-n", "127.0.0.1", "-P",
                        str(syslog_port), "--msgid", "IHE+RFC-3881", "--size", "100000", message], check=True,
                       timeout=30)
        ct = get_testdata_file("CT_small.dcm")
        result = dcmtk.run("storescu", "-aet", "MODALITY", "-aec", "PACSGUARD", "127.0.0.1", str(gw_port), ct)
        assert result.returncode == 0, result.stderr
        patient = str(dcmread(ct).PatientID)

        def stored(path: Path, kind: str) -> list:
            if not path.exists():
                return []
            store = EventStore.open(str(path))
            try:
                return [s.event for s in store.search(EventQuery(kind=kind))]
            finally:
                store.close()

        deadline = time.monotonic() + 60
        got: list = []
        while not (got and stored(site / "var" / "pacsguard.db", "atna.outbound.delivered")) \
                and time.monotonic() < deadline:
            time.sleep(0.5)
            got = stored(repo.store, "atna.audit.instances-transferred")
        assert got, log.read_text()
    finally:
        proc.terminate()
        proc.wait(60)
        repo.stop()
    ev = got[0]
    assert ev.patient_ids[0] == patient and ev.details["source"]["id"] == "SITE-A"
    assert ev.actor.ae_title == "MODALITY"
    xml = ev.details["raw"].split("] ", 1)[1].encode()
    assert schema.check(dicom_xml.parse_xml(xml)) == []
    store = EventStore.open(str(site / "var" / "pacsguard.db"))
    try:
        received = [s.event for s in store.search(EventQuery(kind="atna.audit.*"))]
        delivered = [s.event for s in store.search(EventQuery(kind="atna.outbound.delivered"))]
    finally:
        store.close()
    assert [e.details["event_id"]["code"] for e in received] == ["110110"]  # received, and never forwarded
    assert received[0].patient_ids[0] == "PID-0042"
    assert delivered and delivered[0].details["repository"] == f"127.0.0.1:{repo_port}"
    for event in (*got, *received, *delivered):
        check_event(event, "pacsguard serve / atna listen")
