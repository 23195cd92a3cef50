"""The relay's identifier walk sees a data set to its identifiers however far in they lie (it used to
stop after its first 64 KiB). A real `pacsguard serve` between pynetdicom as the modality (16 KiB
PDUs) and pynetdicom as the PACS:

- an MR image sent under a CT C-STORE command on a route allowing CT only, with a legal 270 KB
  Language Code Sequence (0008,0006) ahead of its SOP Class UID, is aborted (PS3.4 B.2.3) and never
  reaches the PACS;
- a CT whose Referenced Image Sequence (0008,1140) is 114 KB is recorded with its patient and study;
- a wildcard C-FIND padded the same way fires the inline IDS rule dicom-find-wildcard-patient-name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
from gateway_under_test import route
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
)

from dicom_corpus import language_codes
from peers.dcmtk import free_port

pytestmark = [pytest.mark.peers, pytest.mark.timeout(120)]

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
PDU = 16384


class Pacs:
    """pynetdicom storing CT images and answering C-FIND (no matches); it notes what reached it."""

    def __init__(self) -> None:
        self.stored: list[Dataset] = []
        self.queries: list[Dataset] = []
        self.port = free_port()
        ae = AE(ae_title="PYPACS")
        ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
        ae.add_supported_context(PatientRootQueryRetrieveInformationModelFind)
        handlers = [(evt.EVT_C_STORE, self._store), (evt.EVT_C_FIND, self._find)]
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)

    def _store(self, event: Any) -> int:
        self.stored.append(event.dataset)
        return 0x0000

    def _find(self, event: Any) -> Iterator[Any]:
        self.queries.append(event.identifier)
        yield 0x0000, None


@pytest.fixture
def pacs() -> Iterator[Pacs]:
    made = Pacs()
    yield made
    made.server.shutdown()


def modality(port: int) -> Any:
    client = AE(ae_title="CT1")
    client.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    client.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
    assoc = client.associate("127.0.0.1", port, ae_title="PACSGUARD", max_pdu=PDU)
    assert assoc.is_established
    return assoc


@pytest.mark.parametrize("undefined", [False, True], ids=["defined-length", "undefined-length"])
def test_an_mr_data_set_with_its_sop_class_past_270_kb_is_aborted_on_a_ct_only_route(pacs, gateway, tmp_path: Path,
                                                                                      monkeypatch, undefined) -> None:
    """The outside tester's bypass: the PACS answered Success and stored an MR image; the gateway
    never saw (0008,0016). Now the data set is walked to it and the association aborted before its
    last fragment is passed on."""
    gw = gateway(route("main", pacs.port, upstream_ae="PYPACS", policy={"sop_classes": ["CTImageStorage"]}))
    ds = language_codes(Dataset(), 3000, undefined=undefined)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MR, generate_uid(), "MR"
    ds.PatientID, ds.PatientName, ds.StudyInstanceUID = "PEEKPAT1", "Peek^Pat", generate_uid()
    # A file whose meta says CT: pynetdicom sends its data set as it is, under a CT command.
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CT, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    body = DicomBytesIO()
    body.is_implicit_VR, body.is_little_endian = False, True
    write_dataset(body, ds)
    data = body.getvalue()
    assert data.index(MR.encode()) > 270_000
    path = tmp_path / "mr-as-ct.dcm"
    with path.open("wb") as f:
        f.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(f, meta)  # type: ignore[arg-type]
        f.write(data)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)

    assoc = modality(gw.port())
    status = assoc.send_c_store(path)
    assert not status  # no response: pynetdicom logs "Connection closed" after the A-ABORT
    assoc.abort()
    aborted = gw.wait_for("dicom.association.aborted")
    assert "MR Image Storage" in aborted[0].details["reason"] and "(policy.sop_classes)" in aborted[0].details["reason"]
    assert pacs.stored == []


def test_a_ct_with_a_114_kb_referenced_image_sequence_is_recorded_with_its_patient(pacs, gateway) -> None:
    """The patient and study lie past the first 64 KiB of an ordinary CT (1000 references to other
    images): the dicom.dimse.c-store record used to have neither."""
    gw = gateway(route("main", pacs.port, upstream_ae="PYPACS"))
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CT, generate_uid(), "CT"
    refs = []
    for _ in range(1000):
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = CT, generate_uid()
        refs.append(ref)
    ds.ReferencedImageSequence = Sequence(refs)
    ds.PatientID, ds.PatientName = "P-LONGREF", "Long^Ref"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.PixelData = 2, 2, 16, b"\0" * 8
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian

    assoc = modality(gw.port())
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status is not None and status.Status == 0x0000
    assert [str(d.SOPInstanceUID) for d in pacs.stored] == [ds.SOPInstanceUID]
    (store,) = gw.wait_for("dicom.dimse.c-store")
    assert store.patient_ids == ("P-LONGREF",) and store.study_uids == (ds.StudyInstanceUID,)


def test_a_wildcard_c_find_padded_past_64_kib_fires_the_inline_ids_rule(pacs, gateway) -> None:
    """The same padding ahead of Patient's Name hid a wildcard query from the inline IDS."""
    gw = gateway(route("main", pacs.port, upstream_ae="PYPACS"))
    assoc = modality(gw.port())
    for pad in (0, 3000):
        query = language_codes(Dataset(), pad) if pad else Dataset()
        query.QueryRetrieveLevel, query.PatientName, query.PatientID = "PATIENT", "*", ""
        responses = list(assoc.send_c_find(query, PatientRootQueryRetrieveInformationModelFind))
        assert responses and responses[-1][0].Status == 0x0000
    assoc.release()
    assert len(pacs.queries) == 2
    alerts = gw.wait_for("ids.alert.dicom-find-wildcard-patient-name", count=2)
    assert len(alerts) == 2
