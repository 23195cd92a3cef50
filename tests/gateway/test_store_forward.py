"""Store-and-forward routes with real peers: dcmtk's storescu as the modality, the gateway as a
`pacsguard serve` process, a real Orthanc as the destination. What a modality saw acknowledged
must reach Orthanc byte for byte, once, through SIGKILL, a stopped Orthanc and a full disk."""

from __future__ import annotations

import struct
import time
from io import BytesIO
from pathlib import Path

import pytest
from gateway_under_test import route
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from dicom_corpus import TEST_FILES

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
             object_checks: list[str] | None = None) -> dict:
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
