"""Maximum Length through the gateway with real peers (PS3.8 D.1): pynetdicom as the modality and
as the PACS, each advertising 0 (no limit), 4096 or 16 MiB, moving an 8 MiB CT both ways (C-STORE
to the PACS, C-GET back to the workstation). The gateway reads at most 4 MiB per PDU: every peer
must have been told so, or the transfer would die mid-way."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
from gateway_under_test import route
from pydicom import Dataset, dcmread
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelGet  # type: ignore[attr-defined]
from test_orthanc import large_ct

from peers.dcmtk import free_port

pytestmark = [pytest.mark.peers, pytest.mark.timeout(180)]

MIB = 1024 * 1024
SIZES = [0, 4096, 16 * MIB]


class PynetdicomPacs:
    """A pynetdicom SCP that keeps what it is sent and serves it back by C-GET; it notes the
    Maximum Length each association's requestor advertised (what the gateway forwarded)."""

    def __init__(self, max_pdu: int) -> None:
        self.stored: dict[str, Dataset] = {}
        self.requestor_max: list[int] = []
        self.port = free_port()
        ae = AE(ae_title="PYPACS")
        ae.maximum_pdu_size = max_pdu
        ae.add_supported_context(CTImageStorage)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
        ae.add_supported_context(CTImageStorage, scu_role=False, scp_role=True)
        handlers = [(evt.EVT_C_STORE, self._store), (evt.EVT_C_GET, self._get)]
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)

    def _store(self, event: Any) -> int:
        self.requestor_max.append(event.assoc.requestor.maximum_length)
        ds = event.dataset
        ds.file_meta = event.file_meta
        self.stored[str(ds.SOPInstanceUID)] = ds
        return 0x0000

    def _get(self, event: Any) -> Iterator[Any]:
        self.requestor_max.append(event.assoc.requestor.maximum_length)
        yield len(self.stored)
        for ds in self.stored.values():
            yield 0xFF00, ds

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def pynetdicom_pacs() -> Iterator[Any]:
    made: list[PynetdicomPacs] = []

    def make(max_pdu: int) -> PynetdicomPacs:
        made.append(PynetdicomPacs(max_pdu))
        return made[-1]

    yield make
    for pacs in made:
        pacs.close()


@pytest.mark.parametrize("client_max", SIZES)
@pytest.mark.parametrize("pacs_max", SIZES)
def test_8_mib_both_ways_whatever_maximum_length_the_peers_advertise(client_max, pacs_max, pynetdicom_pacs, gateway,
                                                                      tmp_path: Path):
    pacs = pynetdicom_pacs(pacs_max)
    gw = gateway(route("main", pacs.port, upstream_ae="PYPACS"))
    ct = dcmread(large_ct(tmp_path / "large.dcm"))

    client = AE(ae_title="MODALITY")
    client.add_requested_context(CTImageStorage, ct.file_meta.TransferSyntaxUID)
    assoc = client.associate("127.0.0.1", gw.port(), ae_title="PACSGUARD", max_pdu=client_max)
    assert assoc.is_established
    # The client may send no more than the gateway reads, nor than the PACS accepts.
    assert assoc.acceptor.maximum_length == min(pacs_max or 4 * MIB, 4 * MIB)
    status = assoc.send_c_store(ct)
    assoc.release()
    assert status is not None and status.Status == 0x0000
    assert pacs.stored[str(ct.SOPInstanceUID)].PixelData == ct.PixelData
    # The PACS may send no more than the gateway reads, nor than the client accepts.
    told = min(client_max or 4 * MIB, 4 * MIB)
    assert pacs.requestor_max == [told]

    received: list[Dataset] = []

    def on_store(event: Any) -> int:
        received.append(event.dataset)
        return 0x0000

    getter = AE(ae_title="MODALITY")
    getter.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    getter.add_requested_context(CTImageStorage, ct.file_meta.TransferSyntaxUID)
    assoc = getter.associate("127.0.0.1", gw.port(), ae_title="PACSGUARD", max_pdu=client_max,
                             ext_neg=[build_role(CTImageStorage, scp_role=True)],
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ct.StudyInstanceUID
    statuses = [status.Status for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)
                if status]
    assoc.release()
    assert statuses[-1] == 0x0000
    assert len(received) == 1 and received[0].PixelData == ct.PixelData
    assert pacs.requestor_max == [told, told]

    assert len(gw.wait_for("dicom.association.released", count=2)) == 2
    assert gw.events("dicom.association.aborted") == []
