"""Outbound (round 8), with real peers: dcmtk's storescu sends 3 CT images of 2 patients in one
association through `pacsguard serve`'s gateway to dcmtk's storescp; serve's outbound feed sends
its audit messages over mutual TLS to a second pacsguard (`atna listen`). The repository gets one
Begin Transferring DICOM Instances (PS3.15 A.5.3.5) per patient, each before that patient's
first DICOM Instances Transferred (A.5.3.7), and one Instances Transferred per image. A second
association sending one of those patients again begins again. A C-GET with dcmtk's getscu (from
serve's demo PACS): one Begin Transferring for its association, its C-STORE sub-operations and
the C-GET itself."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from test_outbound import pki  # noqa: F401 - pki is a fixture
from test_round6_outbound import _stop as stop

from pacsguard.atna.message import dicom_xml, schema
from pacsguard.events.model import Event, Outcome
from pacsguard.store import EventQuery, EventStore
from peers.dcmtk import free_port, run_storescp, wait_for_port

pytestmark = pytest.mark.peers

CLI = [sys.executable, "-m", "pacsguard.cli"]
DEADLINE = 30.0
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
BEGIN, MOVED = "atna.audit.begin-transferring-instances", "atna.audit.instances-transferred"


def audits(path: Path) -> list[Event]:
    """The Begin Transferring and Instances Transferred messages the repository stored, in order."""
    if not path.exists():
        return []
    store = EventStore.open(str(path))
    try:
        return [s.event for s in store.search(EventQuery(kind="atna.audit.*", limit=None))
                if s.event.kind in (BEGIN, MOVED)]
    finally:
        store.close()


def image(base: Path, name: str, patient: str, study: str) -> Path:
    source = get_testdata_file("CT_small.dcm")
    assert isinstance(source, str), "pydicom's test data is missing"
    ct = dcmread(source)
    ct.PatientID, ct.StudyInstanceUID = patient, study
    ct.SOPInstanceUID = ct.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = base / name
    ct.save_as(path)
    return path


def launch(config: Path, repo: tuple[str, int], gateway: tuple[str, int], repo_store: Path, repo_log: Path,
           serve_log: Path, tls: dict[str, Path]) -> tuple[subprocess.Popen[Any], subprocess.Popen[Any]]:
    """`pacsguard init` for ``config``, then the repository (`atna listen`, mutual TLS) and `serve`,
    both listening."""
    done = subprocess.run([*CLI, "init", "-c", str(config), "--no-demo"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    env = {**os.environ, "COLUMNS": "200"}
    listen = subprocess.Popen(
        [*CLI, "atna", "listen", "--tls", f"{repo[0]}:{repo[1]}", "--tls-cert", str(tls["cert"]),
         "--tls-key", str(tls["key"]), "--tls-ca", str(tls["ca"]), "--store", str(repo_store)],
        stdout=repo_log.open("w"), stderr=subprocess.STDOUT, env=env)
    serve = subprocess.Popen([*CLI, "serve", "-c", str(config)], stdout=serve_log.open("w"),
                             stderr=subprocess.STDOUT, env=env)
    assert wait_for_port(*repo, 30, listen), repo_log.read_text()
    assert wait_for_port(*gateway, 30, serve), serve_log.read_text()
    return listen, serve


def test_one_begin_transferring_per_patient_of_an_association(dcmtk: Any, tmp_path: Path,
                                                             pki: dict[str, Path]) -> None:  # noqa: F811
    repo_host, gw_host = "127.0.87.1", "127.0.87.2"
    repo_port, gw_port = free_port(repo_host), free_port(gw_host)
    files = tmp_path / "images"
    files.mkdir()
    s1, s2 = generate_uid(), generate_uid()
    first = [image(files, "a.dcm", "PID-A", s1), image(files, "b.dcm", "PID-B", s2),
             image(files, "c.dcm", "PID-A", s1)]
    again = image(files, "d.dcm", "PID-A", s1)
    repo_store, repo_log = tmp_path / "repository.db", tmp_path / "repository.log"
    base, serve_log = tmp_path / "site", tmp_path / "serve.log"
    base.mkdir()
    with run_storescp(dcmtk, tmp_path / "scp") as scp:
        config = base / "pacsguard.yaml"
        config.write_text(f"""
store: {{url: {base}/pacsguard.db, signing_key: {base}/keys/sign.key}}
gateway:
  routes:
    - name: main
      listen: {{host: {gw_host}, port: {gw_port}, ae_title: PACSGUARD}}
      upstream: {{host: {gw_host}, port: {scp.port}, ae_title: {scp.aet}}}
      policy: {{hosts: [127.0.0.0/8], services: [C-ECHO, C-STORE]}}
atna:
  enabled: true
  outbound: {{host: {repo_host}, port: {repo_port}, server_name: localhost, ca_file: {pki["ca"]},
              cert_file: {pki["client"]}, key_file: {pki["client_key"]}, source_id: GW-A, retry: 0.5}}
""")
        repo, serve = launch(config, (repo_host, repo_port), (gw_host, gw_port), repo_store, repo_log, serve_log, pki)
        try:

            def send(paths: list[Path], want: int) -> list[Event]:
                done = subprocess.run([dcmtk.path("storescu"), "-aet", "MODALITY", "-aec", "PACSGUARD", gw_host,
                                       str(gw_port), *map(str, paths)], env=dcmtk.env, capture_output=True,
                                      text=True, timeout=DEADLINE)
                assert done.returncode == 0, done.stdout + done.stderr + serve_log.read_text()
                end = time.monotonic() + DEADLINE
                while len(got := audits(repo_store)) < want:
                    assert time.monotonic() < end, f"{[e.kind for e in got]}\n{serve_log.read_text()}"
                    time.sleep(0.2)
                time.sleep(1.5)  # what one message too many would need to arrive
                return audits(repo_store)

            got = send(first, 5)
            assert [(e.kind, e.patient_ids) for e in got] == [
                (BEGIN, ("PID-A",)), (MOVED, ("PID-A",)), (BEGIN, ("PID-B",)), (MOVED, ("PID-B",)),
                (MOVED, ("PID-A",))]
            for event in got:  # every message as PS3.15 A.5.1 has it
                assert schema.check(dicom_xml.parse_xml(event.details["raw"].split("] ", 1)[1].encode())) == []
            begin_a, begin_b = got[0], got[2]
            assert begin_a.study_uids == (s1,) and begin_b.study_uids == (s2,)
            for begin in (begin_a, begin_b):
                assert begin.details["event_id"]["code"] == "110102" and begin.details["action"] == "E"
                assert begin.outcome == Outcome.SUCCESS
                (study,) = [o for o in begin.details["objects"] if o["id_type"]["code"] == "110180"]
                assert [s["uid"] for s in study["sop_classes"]] == [CT_IMAGE]
                roles = {p["alternative_user_id"]: [r["code"] for r in p.get("roles", ())]
                         for p in begin.details["participants"] if p.get("alternative_user_id")}
                assert roles == {"AETITLES=MODALITY": ["110153"], f"AETITLES={scp.aet}": ["110152"]}

            got = send([again], 7)  # a new association: PID-A begins again
            assert [(e.kind, e.patient_ids) for e in got[5:]] == [(BEGIN, ("PID-A",)), (MOVED, ("PID-A",))]
        finally:
            stop(serve)
            stop(repo)
        assert serve.returncode == 0, serve_log.read_text()


class DemoSite:
    """A site whose route's upstream is serve's demo PACS, with an outbound feed to a repository
    (`atna listen`, mutual TLS), and two images of ``patient`` in one study to send through it."""

    def __init__(self, tmp_path: Path, repo_host: str, gw_host: str, patient: str, services: str,
                 tls: dict[str, Path], policy: str = "") -> None:
        self.repo = (repo_host, free_port(repo_host))
        self.gateway = (gw_host, free_port(gw_host))
        pacs_port = free_port(gw_host)
        files = tmp_path / "images"
        files.mkdir()
        self.study = generate_uid()
        self.stored = [image(files, f"{i}.dcm", patient, self.study) for i in range(2)]
        self.repo_store, self.repo_log = tmp_path / "repository.db", tmp_path / "repository.log"
        self.base, self.serve_log = tmp_path / "site", tmp_path / "serve.log"
        self.base.mkdir()
        self.tls = tls
        self.config = self.base / "pacsguard.yaml"
        self.config.write_text(f"""
store: {{url: {self.base}/pacsguard.db, signing_key: {self.base}/keys/sign.key}}
gateway:
  routes:
    - name: main
      listen: {{host: {gw_host}, port: {self.gateway[1]}, ae_title: PACSGUARD}}
      upstream: {{host: {gw_host}, port: {pacs_port}, ae_title: DEMOPACS}}
      policy: {{hosts: [127.0.0.0/8], services: {services}{policy}}}
demo_upstream: {{enabled: true, host: {gw_host}, port: {pacs_port}, ae_title: DEMOPACS, storage: {self.base}/pacs}}
atna:
  enabled: true
  outbound: {{host: {repo_host}, port: {self.repo[1]}, server_name: localhost, ca_file: {tls["ca"]},
              cert_file: {tls["client"]}, key_file: {tls["client_key"]}, source_id: GW-A, retry: 0.5}}
""")

    def start(self) -> tuple[subprocess.Popen[Any], subprocess.Popen[Any]]:
        return launch(self.config, self.repo, self.gateway, self.repo_store, self.repo_log, self.serve_log, self.tls)


def test_a_c_get_begins_once_for_its_sub_operations_and_itself(dcmtk: Any, tmp_path: Path,
                                                              pki: dict[str, Path]) -> None:  # noqa: F811
    site = DemoSite(tmp_path, "127.0.87.3", "127.0.87.4", "PID-G", "[C-ECHO, C-STORE, C-GET]", pki)
    repo_store, serve_log, study, stored = site.repo_store, site.serve_log, site.study, site.stored
    gw_host, gw_port = site.gateway
    repo, serve = site.start()
    try:
        target = ["-aec", "PACSGUARD", gw_host, str(gw_port)]
        done = subprocess.run([dcmtk.path("storescu"), "-aet", "MOD", *target, *map(str, stored)], env=dcmtk.env,
                              capture_output=True, text=True, timeout=DEADLINE)
        assert done.returncode == 0, done.stdout + done.stderr
        got_dir = tmp_path / "got"
        got_dir.mkdir()
        done = subprocess.run([dcmtk.path("getscu"), "-aet", "WS", "-S", "-k", "QueryRetrieveLevel=STUDY", "-k",
                               f"StudyInstanceUID={study}", "-od", str(got_dir), *target], env=dcmtk.env,
                              capture_output=True, text=True, timeout=DEADLINE)
        assert done.returncode == 0 and len(list(got_dir.iterdir())) == 2, done.stdout + done.stderr
        end = time.monotonic() + DEADLINE
        while len(got := audits(repo_store)) < 3 + 4:
            assert time.monotonic() < end, f"{[e.kind for e in got]}\n{serve_log.read_text()}"
            time.sleep(0.2)
        time.sleep(1.5)  # what one message too many would need to arrive
    finally:
        stop(serve)
        stop(repo)
    got = audits(repo_store)
    # The store's association, then the C-GET's: its two C-STOREs from the demo PACS to WS, then
    # the C-GET, whose STUDY-level identifier named no patient but whose sub-operations carried
    # PID-G's objects (PS3.4 C.4.3.3).
    assert [(e.kind, e.patient_ids) for e in got] == [
        (BEGIN, ("PID-G",)), (MOVED, ("PID-G",)), (MOVED, ("PID-G",)),
        (BEGIN, ("PID-G",)), (MOVED, ("PID-G",)), (MOVED, ("PID-G",)), (MOVED, ("PID-G",))]
    assert all(e.study_uids == (study,) for e in got)
