"""A C-GET with a failed sub-operation, through the gateway and directly (issue #15 item 1).

Orthanc answers such a C-GET with a final C-GET-RSP whose command set holds more than its Command
Group Length (0000,0000) covers (106 declared, 190 present: the Failed SOP Instance UID List
follows group 0000). dcmtk's getscu and pynetdicom accept it; the gateway must pass it on (with a
`dicom.protocol.warning`), not abort, so the workstation learns "1 completed, 1 failed". Real
Orthanc with pynetdicom as the workstation, and pynetdicom as a PACS whose final response
understates its group length, with getscu: one sub-operation succeeds, one fails (its SOP class
has no presentation context)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import pytest
from gateway_under_test import route
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role, dimse_messages, evt
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelGet  # type: ignore[attr-defined]

from peers.dcmtk import free_port

pytestmark = [pytest.mark.peers, pytest.mark.timeout(120)]

PRIVATE_SOP_CLASS = "1.2.826.0.1.3680043.8.498.99.1"  # no SCU proposes a context for it
UNDERSTATED = 84  # Orthanc's 106 declared against 190 present


class GetPacs:
    """pynetdicom serving *objects* (pydicom data sets) by C-GET, with a storage context in the SCP
    role for each of *storage_classes*: a sub-operation of another class cannot be sent."""

    def __init__(self, objects: list[Any], storage_classes: tuple[str, ...]) -> None:
        self.port = free_port()
        self.objects = objects
        ae = AE(ae_title="PYPACS")
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
        for storage in storage_classes:
            ae.add_supported_context(storage, scu_role=False, scp_role=True)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_GET, self._get)])

    def _get(self, event: Any) -> Iterator[Any]:
        yield len(self.objects)
        for ds in self.objects:
            yield 0xFF00, ds

    def close(self) -> None:
        self.server.shutdown()


class FailingPacs(GetPacs):
    """A study of two objects served by C-GET; the second cannot be sent."""

    def __init__(self) -> None:
        self.study = generate_uid()
        ct = dcmread(get_testdata_file("CT_small.dcm"))
        ct.StudyInstanceUID = self.study
        odd = dcmread(get_testdata_file("CT_small.dcm"))
        odd.StudyInstanceUID = self.study
        odd.SOPClassUID = odd.file_meta.MediaStorageSOPClassUID = PRIVATE_SOP_CLASS
        odd.SOPInstanceUID = odd.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        super().__init__([ct, odd], (CTImageStorage,))


@pytest.fixture
def failing_pacs(monkeypatch: pytest.MonkeyPatch) -> Iterator[FailingPacs]:
    original = dimse_messages.C_GET_RSP.encode_msg

    def final_understated(self: Any, context_id: int, max_pdu_length: int) -> Any:
        if self.command_set.Status != 0xFF00:
            self.command_set.CommandGroupLength -= UNDERSTATED
        return original(self, context_id, max_pdu_length)

    monkeypatch.setattr(dimse_messages.C_GET_RSP, "encode_msg", final_understated)
    pacs = FailingPacs()
    yield pacs
    pacs.close()


def getscu(dcmtk: Any, port: int, called: str, study: str, out: Path) -> tuple[int, str]:
    out.mkdir()
    result = dcmtk.run("getscu", "-v", "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                       "-aet", "GETTER", "-aec", called, "-od", str(out), "127.0.0.1", str(port))
    return result.returncode, result.stdout + result.stderr


def outcome(log: str) -> list[str]:
    """What getscu reports of the final response: its status and the sub-operation counts."""
    statuses = re.findall(r"Received C-GET Response \((?!Pending).*\)", log)
    counts = re.findall(r"Number of \w+ Suboperations\s*:\s*\d+", log)
    return statuses[-1:] + counts


def test_getscu_learns_the_outcome_through_the_gateway_as_directly(dcmtk, failing_pacs, gateway, tmp_path: Path):
    direct_rc, direct_log = getscu(dcmtk, failing_pacs.port, "PYPACS", failing_pacs.study, tmp_path / "direct")
    gw = gateway(route("main", failing_pacs.port, upstream_ae="PYPACS"))
    via_rc, via_log = getscu(dcmtk, gw.port(), "PACSGUARD", failing_pacs.study, tmp_path / "via")

    assert "Number of Failed Suboperations    : 1" in direct_log, direct_log
    assert via_rc == direct_rc, via_log
    assert outcome(via_log) == outcome(direct_log) != [], (direct_log, via_log)
    assert len(list((tmp_path / "via").iterdir())) == len(list((tmp_path / "direct").iterdir())) == 1

    warning, = gw.wait_for("dicom.protocol.warning")
    assert warning.details["code"] == "command-group-length-mismatch" and warning.details["from"] == "upstream"
    # getscu itself aborts after the release (direct too: the identifier arrives after what its
    # understated group length let it read); the gateway aborted nothing.
    aborted = gw.events("dicom.association.aborted")
    assert [e.details["by"] for e in aborted] in ([], ["client"]), [(e.message, e.details) for e in aborted]
    assert gw.events("dicom.protocol.violation") == []
    get, = gw.wait_for("dicom.dimse.c-get")
    assert get.details["status"] == "0xB000", get.details


def c_get_only_ct(port: int, called: str, study: str) -> list[tuple[int, tuple[int, int]]]:
    """pynetdicom's C-GET of *study*, offering a storage context for CT only: the final response's
    status and (completed, failed) counts."""
    getter = AE(ae_title="MODALITY")
    getter.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    getter.add_requested_context(CTImageStorage)
    assoc = getter.associate("127.0.0.1", port, ae_title=called, ext_neg=[build_role(CTImageStorage, scp_role=True)],
                             evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)])
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    final = [(int(s.Status), (int(s.get("NumberOfCompletedSuboperations", -1)),
                              int(s.get("NumberOfFailedSuboperations", -1))))
             for s, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet) if s][-1:]
    assoc.release()
    return final


def test_pynetdicom_learns_the_outcome_through_the_gateway_as_directly(failing_pacs, gateway):
    direct = c_get_only_ct(failing_pacs.port, "PYPACS", failing_pacs.study)
    gw = gateway(route("main", failing_pacs.port, upstream_ae="PYPACS"))
    assert c_get_only_ct(gw.port(), "PACSGUARD", failing_pacs.study) == direct == [(0xB000, (1, 1))]
    assert gw.wait_for("dicom.protocol.warning")[0].details["code"] == "command-group-length-mismatch"


def test_orthanc_c_get_with_a_failed_sub_operation(orthanc, gateway, tmp_path: Path):
    pacs = orthanc(DicomModalities={"modality": ["MODALITY", "127.0.0.1", 1]})
    study = generate_uid()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        ds = dcmread(get_testdata_file(name))
        ds.StudyInstanceUID = study
        path = tmp_path / name
        ds.save_as(path)
        pacs.rest("/instances", "POST", path.read_bytes())
    direct = c_get_only_ct(pacs.dicom_port, pacs.aet, study)
    gw = gateway(route("main", pacs.dicom_port, upstream_ae=pacs.aet))
    via = c_get_only_ct(gw.port(), "PACSGUARD", study)
    assert via == direct == [(0xC000, (1, 1))]
    # Orthanc puts the Failed SOP Instance UID List (0008,0058) after the command group, in the
    # command set: the gateway passes it on and says so.
    warning, = gw.wait_for("dicom.protocol.warning")
    assert warning.details["code"] == "command-set-trailing-elements" and warning.details["from"] == "upstream"
    get, = gw.wait_for("dicom.dimse.c-get")
    assert get.details["status"] == "0xC000" and get.details["suboperations"]["failed"] == 1, get.details
    assert gw.wait_for("dicom.association.released")
    assert gw.events("dicom.association.aborted") == [] and gw.events("dicom.protocol.violation") == []
