"""Store-and-forward routes with real peers: dcmtk's storescu as the modality, the gateway as a
`pacsguard serve` process, a real Orthanc as the destination. What a modality saw acknowledged
must reach Orthanc byte for byte, once, through SIGKILL, a stopped Orthanc and a full disk."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path

import pytest
from gateway_under_test import route
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from dicom_corpus import TEST_FILES
from peers.dcmtk import free_port
from tmpfs_helpers import small_tmpfs

pytestmark = [pytest.mark.peers, pytest.mark.filterwarnings("ignore:Invalid value for VR UI")]

CALLING = "MODALITY"
HERE = Path(__file__).parent
# storescu's option proposing exactly a file's own transfer syntax, so that nothing is converted
# on the way and the bytes Orthanc keeps can be compared with the file's (PS3.5 10).
ONLY = {"1.2.840.10008.1.2": "-xi", "1.2.840.10008.1.2.1": "-xe", "1.2.840.10008.1.2.2": "-xb",
        "1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.51": "-xx", "1.2.840.10008.1.2.4.70": "-xs",
        "1.2.840.10008.1.2.4.90": "-xv", "1.2.840.10008.1.2.4.91": "-xw", "1.2.840.10008.1.2.5": "-xr",
        "1.2.840.10008.1.2.1.99": "-xd"}


# Files storescu sends exactly as stored (it re-encodes the others' undefined lengths).
AS_STORED = {"CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtdose.dcm", "test-SR.dcm"}


def sf_route(name: str, *destinations: tuple[int, str], spool: dict | None = None, retry: dict | None = None,
             object_checks: list[str] | None = None, **more: object) -> dict:
    """A store-and-forward route to each (port, AE title) on loopback."""
    r = route(name, destinations[0][0], upstream_ae=destinations[0][1],
              policy={"calling_ae_titles": [CALLING], "hosts": ["127.0.0.0/8"]})
    del r["upstream"]
    r.update(mode="store-and-forward",
             destinations=[{"name": f"d{i}", "host": "127.0.0.1", "port": port, "ae_title": aet, "connect_timeout": 3}
                           for i, (port, aet) in enumerate(destinations)],
             spool={"min_free_mib": 1, **(spool or {})},
             retry={"initial_delay": 0.2, "max_delay": 1.0, **(retry or {})})
    if object_checks:
        r["object_checks"] = object_checks
    r.update(more)
    return r


def dataset_bytes(part10: bytes) -> bytes:
    """The data set of a Part-10 file: what follows the 128-byte preamble, "DICM" and the file
    meta group, whose length (0002,0000) is its first element (PS3.10 7.1)."""
    assert part10[128:132] == b"DICM"
    assert part10[132:136] == b"\x02\x00\x00\x00"
    (group_length,) = struct.unpack_from("<I", part10, 140)
    return part10[144 + group_length:]


def sent_bytes(path: Path) -> bytes:
    """The data set of a file as it travels: without Data Set Trailing Padding (FFFC,FFFC), which
    exists only in files (PS3.10 7.2) and storescu does not send."""
    data = path.read_bytes()
    ds = dcmread(path)
    if (0xFFFC, 0xFFFC) in ds:  # the file's last element: its header (implicit or explicit OB) and value
        header = 8 if ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2" else 12
        data = data[:len(data) - header - len(ds[0xFFFC, 0xFFFC].value)]
    return dataset_bytes(data)


def own_syntax(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def fresh_ct(folder: Path, count: int, *, kib: int = 64, patient: str = "SAF001") -> list[Path]:
    """``count`` CTs of about ``kib`` KiB with fresh UIDs (explicit VR little endian)."""
    folder.mkdir(parents=True, exist_ok=True)
    base = dcmread(get_testdata_file("CT_small.dcm"))
    side = int((kib * 1024 / 2) ** 0.5)
    base.Rows = base.Columns = side
    base.PatientID = patient
    base.StudyInstanceUID = generate_uid()
    paths = []
    for i in range(count):
        base.SOPInstanceUID = generate_uid()
        base.file_meta.MediaStorageSOPInstanceUID = base.SOPInstanceUID
        base.PixelData = bytes((i + j) % 251 for j in range(side * side * 2))
        base.InstanceNumber = i + 1
        path = folder / f"ct{i:04d}.dcm"
        base.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def target(gw, name: str = "sf") -> list[str]:
    return ["-aet", CALLING, "-aec", "PACSGUARD", "127.0.0.1", str(gw.port(name))]


def orthanc_bytes(pacs) -> dict[str, bytes]:
    """SOP Instance UID -> the Part-10 file Orthanc stored, for every instance it holds."""
    out = {}
    for instance in pacs.instances():
        tags = pacs.rest(f"/instances/{instance}/simplified-tags")
        out[tags["SOPInstanceUID"]] = pacs.instance_file(instance)
    return out


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what}")


def spooled(gw, name: str = "sf") -> list[Path]:
    return sorted((gw.home / "var" / "spool" / name / "objects").glob("*.dcm"))


def test_clean_objects_arrive_byte_identical_in_their_own_transfer_syntax(dcmtk, orthanc, gateway, tmp_path):
    pacs, direct = orthanc(), orthanc()
    gw = gateway(sf_route("sf", (pacs.dicom_port, pacs.aet)))
    files = [Path(get_testdata_file(name)) for name in TEST_FILES] + fresh_ct(tmp_path / "ct", 3, kib=2048)
    for path in files:
        for where in (target(gw), ["-aet", CALLING, "127.0.0.1", str(direct.dicom_port)]):
            result = dcmtk.run("storescu", "-R", ONLY[own_syntax(path)], *where, path)
            assert result.returncode == 0, f"{path.name}: {result.stdout}\n{result.stderr}"
    pacs.wait_for_instances(len(files))
    stored, control = orthanc_bytes(pacs), orthanc_bytes(direct)
    for path in files:
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        got = stored[uid]
        assert str(dcmread(BytesIO(got), stop_before_pixels=True).file_meta.TransferSyntaxUID) == own_syntax(path)
        # Byte for byte what storescu delivers to Orthanc without the gateway (storescu itself
        # re-encodes a few files, e.g. undefined lengths), and for most files the file's own bytes.
        assert dataset_bytes(got) == dataset_bytes(control[uid]), f"{path.name} changed on the way"
        if path.name in AS_STORED or path.parent.name == "ct":
            assert dataset_bytes(got) == sent_bytes(path), f"{path.name} is not the file's own data set"

    # Each object is recorded as received and forwarded, with its patient; the spool is empty after.
    received = gw.wait_for("gateway.object.received", count=len(files))
    forwarded = gw.wait_for("gateway.object.forwarded", count=len(files))
    assert {e.details["sop_instance"] for e in received} == set(stored)
    assert {e.details["destination"] for e in forwarded} == {"d0"}
    assert any(e.patient_ids == ("SAF001",) for e in received)
    stores = gw.wait_for("dicom.dimse.c-store", count=len(files))
    assert all(e.details["status"] == "0x0000" for e in stores)
    wait_until(lambda: not spooled(gw), 10, "the spool empties once Orthanc has everything")
    assert gw.wait_for("dicom.association.accepted")


def test_spent_spool_files_are_reused_and_nothing_of_the_last_object_is_left(dcmtk, orthanc, gateway, tmp_path):
    """Each object is written over a spent file (reuse.py) when there is one: a smaller object
    after a larger one must arrive with none of the larger one's bytes behind its own."""
    pacs = orthanc()
    gw = gateway(sf_route("sf", (pacs.dicom_port, pacs.aet)))
    free = gw.home / "var" / "spool" / "sf" / "free"
    big = fresh_ct(tmp_path / "big", 2, kib=1024)
    small = fresh_ct(tmp_path / "small", 3, kib=16)
    sent = 0
    spent: list[dict[int, int]] = []  # per batch: inode -> size of the files in free/
    for batch in (big, small, fresh_ct(tmp_path / "again", 2, kib=512)):
        result = dcmtk.run("storescu", "-xe", *target(gw), *batch)
        assert result.returncode == 0, result.stdout + result.stderr
        sent += len(batch)
        pacs.wait_for_instances(sent)
        wait_until(lambda: not spooled(gw), 10, "the spool empties once Orthanc has everything")
        wait_until(lambda: len(list(free.iterdir())) >= 2, 10, "spent files wait in free/")
        spent.append({p.stat().st_ino: p.stat().st_size for p in free.iterdir()})
    # The small objects were written into the big ones' files, cut to their own size.
    reused = set(spent[0]) & set(spent[1])
    assert reused and all(spent[1][ino] < 100_000 < spent[0][ino] for ino in reused)
    stored = orthanc_bytes(pacs)
    for path in big + small + sorted((tmp_path / "again").iterdir()):
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert dataset_bytes(stored[uid]) == sent_bytes(path), f"{path} changed on the way"
    assert all(p.stat().st_mode & 0o077 == 0 for p in free.iterdir())  # as private as the spool


def storescu_acknowledged(output: str, files: list[Path]) -> set[str]:
    """The SOP Instance UIDs of the files storescu -v saw answered with Success: each "Sending
    file" line is followed by its C-STORE response line."""
    by_path = {str(p): str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    acknowledged, current = set(), None
    for line in output.splitlines():
        if "Sending file:" in line:
            current = line.split("Sending file:", 1)[1].strip()
        elif "Received Store Response" in line and current is not None:
            if "(Success)" in line:
                acknowledged.add(by_path[current])
            current = None
    return acknowledged


class CountingSCP:
    """A second destination (pynetdicom as a Storage SCP) that counts what it receives per SOP
    Instance UID: exactly-once is checked there, Orthanc keeping one copy of a UID whatever."""

    def __init__(self, transfer_syntaxes: list[str] | None = None, *, idle_timeout: float | None = None) -> None:
        from collections import Counter

        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

        self.counts: Counter[str] = Counter()
        self.associations = 0
        self.released = 0
        self.aborted = 0
        ae = AE(ae_title="COUNTER")
        if idle_timeout is not None:
            ae.network_timeout = idle_timeout  # an association idle this long is aborted by the SCP
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, transfer_syntaxes or ALL_TRANSFER_SYNTAXES)
        self.port = free_port()
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store),
                                                    (evt.EVT_ACCEPTED, self._accepted),
                                                    (evt.EVT_RELEASED, self._released),
                                                    (evt.EVT_ABORTED, self._aborted)])

    def _accepted(self, event) -> None:
        self.associations += 1

    def _released(self, event) -> None:
        self.released += 1

    def _aborted(self, event) -> None:
        self.aborted += 1

    def _store(self, event) -> int:
        self.counts[str(event.request.AffectedSOPInstanceUID)] += 1
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def counter():
    scp = CountingSCP()
    yield scp
    scp.stop()


@pytest.mark.parametrize("idle_release", [2, 0])
def test_objects_arriving_one_at_a_time_share_the_forwarders_association(dcmtk, gateway, counter, tmp_path,
                                                                          idle_release):
    """A modality sending one object per association, as many do: the forwarder keeps its
    association to the destination open between them (destination.idle_release), instead of one
    association per object, and releases it (A-RELEASE, not an abort) once idle that long; with
    idle_release 0 it releases after each."""
    r = sf_route("sf", (counter.port, "COUNTER"))
    r["destinations"][0]["idle_release"] = idle_release
    gw = gateway(r)
    files = fresh_ct(tmp_path / "one", 4, kib=16)
    for n, path in enumerate(files, start=1):
        assert dcmtk.run("storescu", "-xe", *target(gw), path).returncode == 0
        wait_until(lambda n=n: len(counter.counts) == n, 20, f"object {n} reaches the destination")
        time.sleep(0.3)
    assert all(count == 1 for count in counter.counts.values())
    assert counter.associations == (1 if idle_release else len(files))
    wait_until(lambda: counter.released == counter.associations, idle_release + 5, "the idle association released")
    assert counter.aborted == 0


def test_an_association_the_destination_closed_while_idle_is_replaced_before_use(dcmtk, gateway, tmp_path):
    """The destination's own idle timeout (here 1 s) ends the kept association: the next object
    goes on a new one, once, and is never in doubt (nothing was sent on the dead one)."""
    scp = CountingSCP(idle_timeout=1.0)
    try:
        gw = gateway(sf_route("sf", (scp.port, "COUNTER")))
        first, second = fresh_ct(tmp_path / "idle", 2, kib=16)
        assert dcmtk.run("storescu", "-xe", *target(gw), first).returncode == 0
        wait_until(lambda: len(scp.counts) == 1, 20, "the first object arrives")
        time.sleep(2.5)  # past the destination's idle timeout, within the forwarder's idle_release
        assert dcmtk.run("storescu", "-xe", *target(gw), second).returncode == 0
        wait_until(lambda: len(scp.counts) == 2, 20, "the second object arrives")
        assert all(count == 1 for count in scp.counts.values())
        assert scp.associations == 2
        assert not gw.events("gateway.object.in-doubt") and not gw.events("gateway.object.delayed")
    finally:
        scp.stop()


def test_sigkill_mid_batch_loses_nothing_acknowledged_and_duplicates_nothing(dcmtk, orthanc, gateway, counter,
                                                                             tmp_path):
    pacs = orthanc()
    gw = gateway(sf_route("sf", (pacs.dicom_port, pacs.aet), (counter.port, "COUNTER")))
    files = fresh_ct(tmp_path / "batch", 200, kib=256)
    sender = subprocess.Popen([dcmtk.path("storescu"), "-v", "-xe", *target(gw), *map(str, files)],
                              env=dcmtk.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Kill the gateway while the batch is being received and forwarded. The spool takes a few hundred
    # 256 KiB objects a second, so it is watched closely (wait_until's 0.2 s would miss the window).
    objects = gw.home / "var/spool/sf/objects"
    deadline = time.monotonic() + 60
    while len(list(objects.glob("*.json"))) + len(counter.counts) < 15:
        assert time.monotonic() < deadline and sender.poll() is None, "the batch was not under way"
        time.sleep(0.002)
    gw.kill()
    out, _ = sender.communicate(timeout=60)
    acknowledged = storescu_acknowledged(out, files)
    assert 10 <= len(acknowledged) < len(files), out[-2000:]

    gw.serve()  # the same home and spool: it rescans and resumes
    sent = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in files}
    wait_until(lambda: acknowledged <= set(counter.counts), 60, "every acknowledged object reaches the counter")
    ids = pacs.wait_for_instances(len(acknowledged))
    stored = orthanc_bytes(pacs)
    assert acknowledged <= set(stored)
    assert len(ids) == len(stored) == len(set(stored))
    for uid in acknowledged:
        assert dataset_bytes(stored[uid]) == sent_bytes(sent[uid])
    # Nothing arrives that was not sent, and a destination gets each object once: the only object
    # that may arrive twice is one in flight at the kill, between the destination's Success and the
    # spool's note of it (docs/gateway.md, "What it guarantees").
    assert set(counter.counts) <= set(sent)
    assert sum(1 for n in counter.counts.values() if n > 1) <= 1, counter.counts
    assert max(counter.counts.values()) <= 2
    wait_until(lambda: not spooled(gw), 30, "the spool empties")


def test_a_stopped_destination_gets_everything_once_when_it_is_back(dcmtk, orthanc, gateway, counter, tmp_path):
    pacs = orthanc()
    port = pacs.dicom_port
    gw = gateway(sf_route("sf", (port, pacs.aet), (counter.port, "COUNTER"), retry={"max_delay": 30}))
    pacs.stop(graceful=True)
    files = fresh_ct(tmp_path / "down", 12, kib=128)
    result = dcmtk.run("storescu", "-xe", *target(gw), *files)
    assert result.returncode == 0, result.stderr  # acknowledged: they are in the spool
    delayed = gw.wait_for("gateway.object.delayed", where=lambda e: e.details["destination"] == "d0")
    assert f"ORTHANC@127.0.0.1:{port}" in delayed[0].details["error"]  # not reached (or refused while stopping)
    wait_until(lambda: len(counter.counts) == len(files), 30, "the other destination is not held up")

    def listing() -> list[dict]:
        return json.loads(gw.cli("gateway", "spool", "list", "--json").stdout)

    # d1's Success is noted just after the counter counted the object.
    wait_until(lambda: all(e["sent"] == ["d1"] for e in listing()), 10, "every object noted as sent to d1")
    waiting = listing()
    assert len(waiting) == len(files)
    assert all(e["state"] == "queued" and e["pending"] == ["d0"] for e in waiting)
    shown = gw.cli("gateway", "spool", "show", waiting[0]["id"]).stdout
    assert waiting[0]["meta"]["sop_instance_uid"] in shown

    time.sleep(3)  # the forwarder backs off meanwhile (up to retry.max_delay)
    back = orthanc(DicomPort=port)
    gw.cli("gateway", "spool", "retry")  # without it the next attempt could be up to 30 s away
    back.wait_for_instances(len(files), timeout=30)
    stored = orthanc_bytes(back)
    sent = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in files}
    assert set(stored) == set(sent)
    assert all(dataset_bytes(stored[uid]) == sent_bytes(sent[uid]) for uid in sent)
    assert all(n == 1 for n in counter.counts.values()) and set(counter.counts) == set(sent)
    wait_until(lambda: not spooled(gw), 20, "the spool empties")
    assert "the spool is empty" in gw.cli("gateway", "spool", "list").stdout


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB tmpfs for the spool, so that it can be filled."""
    with small_tmpfs(tmp_path / "small", "24m") as mount:
        yield mount


def test_a_nearly_full_spool_refuses_with_out_of_resources_before_the_disk_is_full(dcmtk, gateway, small_disk,
                                                                                 tmp_path):
    dead = free_port()  # no destination answers: everything stays spooled
    gw = gateway(sf_route("sf", (dead, "NOBODY"), spool={"directory": str(small_disk), "min_free_mib": 8,
                                                         "high_water_mib": 4}))
    files = fresh_ct(tmp_path / "big", 12, kib=2048)
    result = dcmtk.run("storescu", "-v", "-xe", *target(gw), *files, timeout=120)
    out = result.stdout + result.stderr
    acknowledged = storescu_acknowledged(out, files)
    assert "Refused: OutOfResources" in out, out[-3000:]
    # 24 MiB, 8 MiB kept free: at most 7 objects of 2 MiB fit, and every one acknowledged is there.
    assert 3 <= len(acknowledged) <= 8
    st = os.statvfs(small_disk)
    assert st.f_bavail * st.f_frsize >= 6 * 2**20, "the floor was not kept"
    on_disk = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in (small_disk / "objects").glob("*.dcm")}
    assert on_disk == acknowledged
    refused = gw.wait_for("gateway.object.refused")
    assert refused[0].details["status"] == "0xA700" and refused[0].details["rule"] == "spool.min_free_mib"
    assert gw.wait_for("gateway.spool.high-water", timeout=10)[0].details["objects"] >= 2


def test_an_object_check_quarantines_refuses_and_replaces(dcmtk, orthanc, gateway, tmp_path):
    pacs = orthanc()
    runner = [sys.executable, str(HERE / "pacsguard_with_test_part.py")]
    gw = gateway(sf_route("sf", (pacs.dicom_port, pacs.aet), object_checks=["patient-gate"]), program=runner)
    evil, = fresh_ct(tmp_path / "evil", 1, patient="EVIL")
    refused, = fresh_ct(tmp_path / "refuse", 1, patient="REFUSE")
    renamed, = fresh_ct(tmp_path / "rename", 1, patient="RENAME")
    clean, = fresh_ct(tmp_path / "clean", 1, patient="CLEAN")
    outputs = {}
    for path in (evil, refused, renamed, clean):
        result = dcmtk.run("storescu", "-d", "-xe", *target(gw), path)  # -d shows the status in hex
        outputs[path.parent.name] = result.stdout + result.stderr
    assert "0xc321" in outputs["evil"].lower(), outputs["evil"]  # the check's own failure status
    assert "0xc000" in outputs["refuse"].lower(), outputs["refuse"]
    assert "0x0000: Success" in outputs["rename"] and "0x0000: Success" in outputs["clean"]

    ids = pacs.wait_for_instances(2)
    names = {pacs.rest(f"/instances/{i}/simplified-tags")["PatientID"]:
             pacs.rest(f"/instances/{i}/simplified-tags")["PatientName"] for i in ids}
    assert names == {"RENAME": "RENAMED^BY^CHECK", "CLEAN": str(dcmread(clean).PatientName)}

    quarantined = gw.wait_for("gateway.object.quarantined")[0]
    assert quarantined.details["status"] == "0xC321" and quarantined.details["check"] == "patient-gate"
    assert quarantined.patient_ids == ("EVIL",)
    kept = Path(quarantined.details["quarantine"])
    assert dataset_bytes(kept.read_bytes()) == sent_bytes(evil)  # kept as received
    manifest = json.loads(kept.with_name(kept.stem + ".manifest.json").read_text())
    assert manifest["rule"] == "test.evil" and manifest["object"]["patient_id"] == "EVIL"
    assert manifest["object"]["calling_ae"] == CALLING and len(manifest["sha256"]) == 64
    assert gw.wait_for("gateway.object.refused")[0].details["rule"] == "test.refuse"
    assert gw.wait_for("gateway.object.received", count=2)
    assert [e for e in gw.events("gateway.object.received") if e.details["replaced_by"] == "patient-gate"]

    listing = json.loads(gw.cli("gateway", "spool", "list", "--json").stdout)
    assert [e["state"] for e in listing] == ["quarantined"]
    assert gw.cli("gateway", "spool", "purge", listing[0]["id"], check=2).returncode == 2  # without --yes
    gw.cli("gateway", "spool", "purge", listing[0]["id"], "--yes")
    assert not kept.exists()
    purged = gw.wait_for("gateway.spool.purged")[0]
    assert purged.details["spool_ids"] == [listing[0]["id"]] and purged.patient_ids == ("EVIL",)


def test_the_routes_association_checks_apply_unchanged(dcmtk, gateway):
    dead = free_port()
    gw = gateway(sf_route("sf", (dead, "NOBODY")))
    assert dcmtk.run("echoscu", *target(gw)).returncode == 0  # Verification is accepted
    stranger = dcmtk.run("echoscu", "-aet", "STRANGER", "-aec", "PACSGUARD", "127.0.0.1", str(gw.port("sf")))
    assert stranger.returncode != 0 and "Calling AE Title Not Recognized" in stranger.stdout + stranger.stderr
    wrong_called = dcmtk.run("echoscu", "-aet", CALLING, "-aec", "OTHER", "127.0.0.1", str(gw.port("sf")))
    assert "Called AE Title Not Recognized" in wrong_called.stdout + wrong_called.stderr
    rejected = gw.wait_for("dicom.association.rejected", count=2)
    assert {e.details["rule"] for e in rejected} == {"policy.calling_ae_titles", "listen.ae_title"}
    assert all(e.details["by"] == "gateway" for e in rejected)
    requested = gw.wait_for("dicom.association.requested", count=3)
    assert {e.actor.ae_title for e in requested} == {CALLING, "STRANGER"}
    gw.cli("gateway", "quarantine", "add", "127.0.0.1", "--reason", "test")
    wait_until(lambda: dcmtk.run("echoscu", *target(gw)).returncode != 0, 10, "the quarantine applies")
    assert gw.wait_for("dicom.association.rejected", where=lambda e: e.details["rule"] == "quarantine")


def test_quarantine_sender_cuts_off_the_device_that_sent_a_quarantined_object(dcmtk, orthanc, gateway, tmp_path):
    pacs = orthanc()
    runner = [sys.executable, str(HERE / "pacsguard_with_test_part.py")]
    gw = gateway(sf_route("sf", (pacs.dicom_port, pacs.aet), object_checks=["patient-gate"], quarantine_sender=True),
                 program=runner)
    evil, = fresh_ct(tmp_path / "evil", 1, patient="EVIL")
    clean = fresh_ct(tmp_path / "clean", 3, patient="CLEAN")
    result = dcmtk.run("storescu", "-v", "-xe", *target(gw), evil, *clean)
    out = result.stdout + result.stderr
    assert not storescu_acknowledged(out, clean), out  # nothing after the quarantined object is taken
    added = gw.wait_for("gateway.quarantine.added")[0]
    assert added.target.host == "127.0.0.1" or added.details["target"] == "127.0.0.1"
    assert "patient-gate" in added.details["reason"]
    assert dcmtk.run("echoscu", *target(gw)).returncode != 0  # a new association is rejected
    assert gw.wait_for("dicom.association.rejected", where=lambda e: e.details["rule"] == "quarantine")
    assert pacs.instances() == []


def test_an_object_no_destination_context_fits_waits_and_the_rest_goes_on(dcmtk, gateway, tmp_path):
    implicit_only = CountingSCP(["1.2.840.10008.1.2"])
    try:
        gw = gateway(sf_route("sf", (implicit_only.port, "COUNTER")))
        explicit, = fresh_ct(tmp_path / "explicit", 1)  # Explicit VR Little Endian: the destination takes none
        implicit = tmp_path / "implicit.dcm"
        ds = dcmread(get_testdata_file("rtplan.dcm"))  # Implicit VR Little Endian
        ds.save_as(implicit)
        for path in (explicit, implicit):
            result = dcmtk.run("storescu", "-R", ONLY[own_syntax(path)], *target(gw), path)
            assert result.returncode == 0, result.stderr
        wait_until(lambda: str(ds.SOPInstanceUID) in implicit_only.counts, 20, "the implicit object is forwarded")
        delayed = gw.wait_for("gateway.object.delayed", where=lambda e: "sop_instance" in e.details)
        assert delayed[0].details["sop_instance"] == str(dcmread(explicit).SOPInstanceUID)
        listing = json.loads(gw.cli("gateway", "spool", "list", "--json").stdout)
        assert [e["meta"]["transfer_syntax_uid"] for e in listing] == ["1.2.840.10008.1.2.1"]
        assert listing[0]["failures"]["d0"]["attempts"] >= 1
    finally:
        implicit_only.stop()


def forwarding_child(gw) -> int:
    """The pid of the route's forwarding process (forwarding.py), a child of the gateway."""
    def find() -> int | None:
        for task in Path(f"/proc/{gw.proc.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                if b"store_forward.forwarding" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return int(pid)
        return None

    wait_until(lambda: find() is not None, 20, "the forwarding process runs")
    found = find()
    assert found is not None
    return found


def niceness(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def test_the_forwarding_process_is_restarted_when_killed_and_delivers_everything_once(dcmtk, orthanc, gateway,
                                                                                      counter, tmp_path):
    pacs = orthanc()
    gw = gateway(sf_route("sf", (pacs.dicom_port, pacs.aet), (counter.port, "COUNTER")))
    first = forwarding_child(gw)
    wait_until(lambda: niceness(first) == 10, 20, "the forwarding process lowers its priority (forward_nice)")
    assert niceness(gw.proc.pid) == 0  # receiving goes first
    files = fresh_ct(tmp_path / "batch", 60, kib=256)
    sender = subprocess.Popen([dcmtk.path("storescu"), "-xe", *target(gw), *map(str, files)],
                              env=dcmtk.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_until(lambda: len(counter.counts) >= 10, 60, "forwarding under way")
    os.kill(first, 9)  # the forwarding process alone: the gateway goes on receiving
    out, _ = sender.communicate(timeout=120)
    assert sender.returncode == 0, out[-2000:]  # every object acknowledged
    sent = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    wait_until(lambda: set(counter.counts) == sent, 60, "every object reaches the counter")
    assert forwarding_child(gw) != first
    restarted = gw.wait_for("gateway.forwarding.restarted")[0]
    assert restarted.details["signal"] == "SIGKILL" and restarted.details["exit_code"] == -9, restarted.details
    assert restarted.severity <= 3 and restarted.details["route"] == "sf"
    pacs.wait_for_instances(len(files))
    # Once each, but for at most the one in flight when it was killed (it cannot be asked: the
    # counter answers no C-FIND), which is recorded as in doubt.
    assert sum(1 for n in counter.counts.values() if n > 1) <= 1, counter.counts
    wait_until(lambda: not spooled(gw), 30, "the spool empties")
    assert len(gw.wait_for("gateway.object.forwarded", count=2 * len(files) - 2)) >= 2 * len(files) - 2


def test_the_forwarding_process_ends_with_the_gateway(dcmtk, orthanc, gateway):
    pacs = orthanc()
    gw = gateway(sf_route("sf", (pacs.dicom_port, pacs.aet)))
    child = forwarding_child(gw)
    os.kill(gw.proc.pid, 9)  # the gateway alone, not its process group
    gw.proc.wait(10)
    wait_until(lambda: not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().rsplit(
        ")", 1)[1].split()[:1], 10, "the forwarding process ends with its gateway")
