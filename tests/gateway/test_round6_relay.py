"""Round 6 (issues 15-17 follow-up), the relay and data sets whose walk stopped, with real peers:
dcmtk's dcmqrscp as the archive behind a `pacsguard serve`, getscu/findscu/movescu as workstations,
all on 127.0.61.0/24 (ports 20600-20999).

1. A C-GET sub-operation (the archive's C-STORE-RQ on the C-GET association) whose Patient ID
   (0010,0020) the walk did not reach is aborted, rule `dimse.dataset-patient`, as a modality's
   C-STORE is: dcmqrscp deflates an object with 400 KiB of zero padding before its patient.
2. A C-FIND, C-MOVE or C-GET identifier whose walk stopped before its keys (deflated, the patient
   past the 256 KiB inflated) is aborted, rule `dimse.dataset-identifier`; an ordinary deflated
   query passes.
3. `dicom-dataset-walk-stopped` covers the archive's data sets too, and says which side sent it: a
   C-FIND match nesting 200 sequences passes, with the alert (`from_requestor=False`).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from gateway_under_test import RunningGateway
from playbook import STUDY_FIND, play, request, route_config
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from pacsguard.dicom import dimse
from peers.dcmtk import Dcmtk, stop_process_group, wait_for_port

pytestmark = [pytest.mark.peers, pytest.mark.timeout(180)]

HOST = "127.0.61.1"
ARCHIVE = "ARCHIVE"
GETTER = "GETTER"
#: The patient whose object (or query key) lies past the 256 KiB a deflated data set is walked through.
HIDDEN = "HIDDEN01"
#: The patient whose object has its padding within reach.
SEEN = "SEEN01"
STUDY = {HIDDEN: "1.2.826.0.1.3680043.8.498.61.1", SEEN: "1.2.826.0.1.3680043.8.498.61.2"}


#: Ports this process has handed out: a peer may not be listening on its port yet when the next is chosen.
_HANDED_OUT: set[int] = set()


def port() -> int:
    """A free port of this module's range on HOST (dcmqrscp listens on every address: that port too)."""
    for candidate in range(20600, 21000):
        if candidate in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, candidate))
            except OSError:
                continue
        _HANDED_OUT.add(candidate)
        return candidate
    raise AssertionError("no free port in 20600-20999 on " + HOST)


def padded_ct(path: Path, patient: str, padding: int) -> Path:
    """CT_small under *patient*, with *padding* bytes of zeros (a private OB) before its Patient ID:
    deflated, a few hundred bytes."""
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientID = patient
    ds.StudyInstanceUID = STUDY[patient]
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.add_new(0x00090010, "LO", "PACSGUARD PADDING")
    ds.add_new(0x00091010, "OB", b"\0" * padding)
    ds.save_as(path, enforce_file_format=True)
    return path


def query(path: Path, padding: int, level: str = "STUDY") -> Path:
    """A query file naming HIDDEN's study, with *padding* bytes of zeros before its keys."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    if padding:
        ds.add_new(0x00090010, "LO", "PACSGUARD PADDING")
        ds.add_new(0x00091010, "OB", b"\0" * padding)
    ds.PatientID = HIDDEN
    ds.StudyInstanceUID = STUDY[HIDDEN]
    ds.save_as(path, implicit_vr=False, little_endian=True)
    return path


class Archive:
    """dcmqrscp (AE ARCHIVE) accepting deflated contexts, with GETTER as a known move destination."""

    def __init__(self, dcmtk: Dcmtk, workdir: Path) -> None:
        self.port, self.move_port = port(), port()
        db = workdir / "db"
        db.mkdir()
        config = workdir / "dcmqrscp.cfg"
        config.write_text(f"NetworkTCPPort = {self.port}\nMaxPDUSize = 16384\nMaxAssociations = 8\n"
                          f"HostTable BEGIN\ngetter = ({GETTER}, {HOST}, {self.move_port})\nHostTable END\n"
                          "VendorTable BEGIN\nVendorTable END\n"
                          f"AETable BEGIN\n{ARCHIVE} {db} RW (20, 64mb) ANY\nAETable END\n")
        self.log = workdir / "dcmqrscp.log"
        self.proc = subprocess.Popen([dcmtk.path("dcmqrscp"), "-c", str(config), "+xd", "-d"],
                                     stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=dcmtk.env,
                                     start_new_session=True)
        assert wait_for_port(HOST, self.port, 15, self.proc), self.log.read_text()

    def stop(self) -> None:
        stop_process_group(self.proc)


@pytest.fixture
def archive(dcmtk: Dcmtk, tmp_path: Path) -> Iterator[Archive]:
    """The archive holding HIDDEN's object (400 KiB of padding) and SEEN's (200 KiB), stored directly."""
    pacs = Archive(dcmtk, tmp_path)
    try:
        files = [padded_ct(tmp_path / "hidden.dcm", HIDDEN, 400 * 1024),
                 padded_ct(tmp_path / "seen.dcm", SEEN, 200 * 1024)]
        stored = dcmtk.run("storescu", "-aet", "MODALITY", "-aec", ARCHIVE, HOST, str(pacs.port), *files)
        assert stored.returncode == 0, stored.stdout + stored.stderr
        yield pacs
    finally:
        pacs.stop()


@pytest.fixture
def gateway_for(tmp_path: Path) -> Iterator[Callable[[Archive], RunningGateway]]:
    """`pacsguard serve` with one route, PACSGUARD@HOST, in front of the archive (move destination GETTER)."""
    started: list[RunningGateway] = []

    def start(pacs: Archive) -> RunningGateway:
        home = tmp_path / "gw"
        home.mkdir()
        routes = [{"name": "main", "listen": {"host": HOST, "port": port(), "ae_title": "PACSGUARD"},
                   "upstream": {"host": HOST, "port": pacs.port, "ae_title": ARCHIVE, "connect_timeout": 5},
                   "policy": {"move_destinations": [GETTER]}}]
        (home / "pacsguard.yaml").write_text(yaml.safe_dump(
            {"store": {"url": "var/pacsguard.db", "checkpoint_interval": 5}, "gateway": {"routes": routes}}))
        program = [sys.executable, "-m", "pacsguard.cli"]
        init = subprocess.run([*program, "init", "--no-demo"], cwd=home, capture_output=True, text=True, timeout=60)
        assert init.returncode == 0, init.stdout + init.stderr
        log = home / "serve.log"
        proc = subprocess.Popen([*program, "serve"], cwd=home, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        gw = RunningGateway(home, {"main": routes[0]["listen"]["port"]}, proc, log, routes, program)
        started.append(gw)
        assert wait_for_port(HOST, gw.port(), 30, proc), log.read_text()
        return gw

    yield start
    for gw in started:
        gw.stop()


def target(gw: RunningGateway) -> list[str]:
    return ["-aet", GETTER, "-aec", "PACSGUARD", HOST, str(gw.port())]


def aborted_for(gw: RunningGateway, rule: str) -> Any:
    (aborted,) = gw.wait_for("dicom.association.aborted")
    assert aborted.details["by"] == "gateway" and f"({rule})" in aborted.details["reason"], aborted.details
    return aborted


# --- 1. a C-GET sub-operation whose Patient ID the walk did not reach ------------------------------


def get_study(dcmtk: Dcmtk, gw: RunningGateway, patient: str, out: Path) -> str:
    out.mkdir()
    result = dcmtk.run("getscu", "+xd", "-S", "-od", str(out), "-k", "QueryRetrieveLevel=STUDY",
                       "-k", f"StudyInstanceUID={STUDY[patient]}", *target(gw))
    return result.stdout + result.stderr


def test_a_c_get_sub_operation_whose_patient_is_past_the_inflate_window_is_aborted(
        dcmtk: Dcmtk, archive: Archive, gateway_for: Callable[[Archive], RunningGateway], tmp_path: Path) -> None:
    gw = gateway_for(archive)
    log = get_study(dcmtk, gw, HIDDEN, tmp_path / "hidden")
    assert list((tmp_path / "hidden").iterdir()) == [], log  # the workstation keeps nothing
    aborted = aborted_for(gw, "dimse.dataset-patient")
    reason = aborted.details["reason"]
    assert "C-GET sub-operation" in reason and "Patient ID (0010,0020) cannot be read" in reason, reason
    assert "inflate-limit" in reason, reason
    (sub,) = gw.wait_for("dicom.dimse.c-store")
    assert sub.details["decision"] == "aborted" and sub.actor.ae_title == ARCHIVE and sub.patient_ids == ()
    assert "Patient ID (0010,0020) and Study Instance UID (0020,000D) not read" in sub.message, sub.message
    # 3: the alert says the archive sent it.
    (alert,) = gw.wait_for("ids.alert.dicom-dataset-walk-stopped")
    assert "from_requestor=False" in alert.message and "anomaly=inflate-limit" in alert.message, alert.message
    assert alert.details["observation"]["command"] == "C-STORE-RQ", alert.details


def test_the_same_retrieve_with_its_patient_within_reach_passes(
        dcmtk: Dcmtk, archive: Archive, gateway_for: Callable[[Archive], RunningGateway], tmp_path: Path) -> None:
    gw = gateway_for(archive)
    log = get_study(dcmtk, gw, SEEN, tmp_path / "seen")
    (got,) = list((tmp_path / "seen").iterdir())
    assert str(dcmread(got).PatientID) == SEEN, log
    (sub,) = gw.wait_for("dicom.dimse.c-store")
    assert sub.patient_ids == (SEEN,) and "decision" not in sub.details
    assert gw.events("dicom.association.aborted") == []


# --- 2. a query or retrieve identifier whose keys lie past the inflate window ----------------------


@pytest.mark.parametrize(("tool", "service", "args"), [
    ("findscu", "C-FIND", []),
    ("movescu", "C-MOVE", ["-aem", GETTER, "--port", "{move_port}"]),
    ("getscu", "C-GET", []),
])
def test_a_deflated_identifier_with_its_keys_past_the_inflate_window_is_aborted(
        dcmtk: Dcmtk, archive: Archive, gateway_for: Callable[[Archive], RunningGateway], tmp_path: Path,
        tool: str, service: str, args: list[str]) -> None:
    """The archive would match HIDDEN's study on the keys the gateway could not read (it does, directly)."""
    gw = gateway_for(archive)
    keys = query(tmp_path / "query.dcm", 400 * 1024)
    args = [a.format(move_port=archive.move_port) for a in args]
    received = tmp_path / "received"  # where movescu and getscu write what they receive
    received.mkdir()
    if tool != "findscu":
        args += ["-od", str(received)]
    result = dcmtk.run(tool, "-xd", "-S", *args, *target(gw), keys)
    assert "Peer aborted Association" in result.stdout + result.stderr, result.stdout + result.stderr
    aborted = aborted_for(gw, "dimse.dataset-identifier")
    assert f"a {service} identifier whose keys cannot all be read" in aborted.details["reason"], aborted.details
    assert "inflate-limit" in aborted.details["reason"], aborted.details
    (record,) = gw.wait_for(f"dicom.dimse.{service.lower()}")
    assert record.details["decision"] == "aborted" and record.patient_ids == (), record.details
    assert list(received.iterdir()) == [] and gw.events("dicom.dimse.c-store") == []


def test_an_ordinary_deflated_query_passes(
        dcmtk: Dcmtk, archive: Archive, gateway_for: Callable[[Archive], RunningGateway], tmp_path: Path) -> None:
    gw = gateway_for(archive)
    result = dcmtk.run("findscu", "-xd", "-S", *target(gw), query(tmp_path / "query.dcm", 0))
    assert result.returncode == 0 and HIDDEN in result.stdout + result.stderr, result.stdout + result.stderr
    (find,) = gw.wait_for("dicom.dimse.c-find")
    assert find.patient_ids == (HIDDEN,) and "decision" not in find.details
    assert gw.events("dicom.association.aborted") == []


def test_a_query_nesting_200_sequences_before_its_keys_is_aborted_too() -> None:
    """Not only the inflate window: any walk stopped before a query's keys (in memory)."""
    from test_reprobe_services import el, nested

    find = request(dimse.CommandSet(dimse.C_FIND_RQ, message_id=5, affected_sop_class_uid=STUDY_FIND, priority=0,
                                    command_data_set_type=0x0000),
                   nested(b"", 200) + el(0x00080052, b"STUDY ") + el(0x00100020, b"*") + el(0x0020000D, b""))

    async def scenario(pb: Any) -> None:
        await pb.associate(STUDY_FIND)
        await pb.client(find)

    pb = play(route_config(), scenario)
    (aborted,) = [e for e in pb.events if e.kind == "dicom.association.aborted"]
    assert "(dimse.dataset-identifier)" in aborted.details["reason"], aborted.details
    assert "(nesting-too-deep)" in aborted.details["reason"], aborted.details


# --- 3. the walk-stopped alert on what the archive sends back --------------------------------------


def test_a_c_find_match_the_walk_could_not_read_passes_with_the_alert_naming_its_side() -> None:
    """An archive returning a match nesting 200 sequences: the C-FIND goes on (no object, no patient to
    record as filed), the alert fires and says the archive sent it."""
    from test_checks import _real_ids
    from test_reprobe_services import el, nested

    command = dimse.CommandSet(dimse.C_FIND_RQ, message_id=5, affected_sop_class_uid=STUDY_FIND, priority=0,
                               command_data_set_type=0x0000)
    find = request(command, el(0x00080052, b"STUDY ") + el(0x00100020, b"") + el(0x0020000D, b""))
    matched = nested(b"", 200) + el(0x00080052, b"STUDY ") + el(0x00100020, b"P1") + el(0x0020000D, b"1.2.3")

    def answer(status: int, dataset: bytes | None) -> bytes:
        rsp = dimse.CommandSet(dimse.C_FIND_RSP, message_id_being_responded_to=5, affected_sop_class_uid=STUDY_FIND,
                               status=status, command_data_set_type=0x0101 if dataset is None else 0x0000)
        return request(rsp, dataset)

    async def scenario(pb: Any) -> None:
        await pb.associate(STUDY_FIND)
        await pb.client(find)
        await pb.upstream(answer(0xFF00, matched) + answer(0x0000, None))

    pb = play(route_config(), scenario, engine=_real_ids())
    assert "dicom.association.aborted" not in pb.kinds()
    assert [s.name for s in pb.to_client()].count("P-DATA-TF") >= 1
    (alert,) = [e for e in pb.events if e.kind == "ids.alert.dicom-dataset-walk-stopped"]
    assert "from_requestor=False" in alert.message and "anomaly=nesting-too-deep" in alert.message, alert.message
    assert alert.details["observation"]["command"] == "C-FIND-RSP"


# --- 4. a query's SOP Class UID key is no object on the wrong context -------------------------------


def test_an_image_level_c_find_naming_a_sop_class_passes(
        dcmtk: Dcmtk, archive: Archive, gateway_for: Callable[[Archive], RunningGateway]) -> None:
    """SOP Class UID is a matching key at the IMAGE level (PS3.4 C.6.1.1.5): a C-FIND for SEEN's CT
    images names CT Image Storage on the FIND context, and was aborted as an object of another class."""
    gw = gateway_for(archive)
    result = dcmtk.run("findscu", "-S", "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={STUDY[SEEN]}",
                       "-k", "SeriesInstanceUID", "-k", "SOPInstanceUID", "-k", "SOPClassUID=1.2.840.10008.5.1.4.1.1.2",
                       *target(gw))
    log = result.stdout + result.stderr
    assert result.returncode == 0 and "Peer aborted" not in log, log
    (find,) = gw.wait_for("dicom.dimse.c-find")
    assert find.details["responses"] == 1 and find.outcome == "success", find.details
    assert gw.events("dicom.association.aborted") == []
