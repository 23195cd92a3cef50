"""A C-GET of a study that holds a SOP class the route refuses (an outside tester's round 4): the
gateway refused the MR context only in the A-ASSOCIATE-AC it gave the workstation, the PACS had
accepted it and sent its MR sub-operation on it (PS3.4 C.4.3), and the gateway could only abort
both legs, blaming the PACS. The refused contexts are now withheld from the PACS: it fails that
sub-operation itself, the CT arrives, and the workstation gets the final C-GET-RSP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from gateway_under_test import route
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
)
from test_failed_suboperation import GetPacs

pytestmark = [pytest.mark.peers, pytest.mark.timeout(120)]


class Pacs(GetPacs):
    """A study of a CT and an MR served by C-GET, over a storage context for either."""

    def __init__(self) -> None:
        self.study = generate_uid()
        objects = []
        for name in ("CT_small.dcm", "MR_small.dcm"):
            ds = dcmread(get_testdata_file(name))
            ds.StudyInstanceUID = self.study
            objects.append(ds)
        super().__init__(objects, (CTImageStorage, MRImageStorage))


@pytest.fixture
def pacs() -> Iterator[Pacs]:
    served = Pacs()
    yield served
    served.close()


def test_a_refused_sop_class_in_a_c_get_fails_its_sub_operation_not_the_association(pacs: Pacs, gateway: Any) -> None:
    gw = gateway(route("main", pacs.port, upstream_ae="PYPACS",
                       policy={"services": ["C-ECHO", "C-STORE", "C-GET"],
                               "sop_classes": ["CTImageStorage", "StudyRootQueryRetrieveInformationModelGet"]}))
    stored: list[str] = []
    getter = AE(ae_title="MODALITY")
    getter.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for storage in (CTImageStorage, MRImageStorage):
        getter.add_requested_context(storage)
    roles = [build_role(CTImageStorage, scp_role=True), build_role(MRImageStorage, scp_role=True)]
    assoc = getter.associate("127.0.0.1", gw.port(), ae_title="PACSGUARD", ext_neg=roles,
                             evt_handlers=[(evt.EVT_C_STORE, lambda event: stored.append(event.dataset.Modality)
                                            or 0x0000)])
    assert assoc.is_established
    accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
    assert MRImageStorage not in accepted and CTImageStorage in accepted
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = pacs.study
    final = [(int(s.Status), int(s.NumberOfCompletedSuboperations), int(s.NumberOfFailedSuboperations))
             for s, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet) if s][-1]
    assoc.release()
    assert assoc.is_released
    assert final == (0xB000, 1, 1) and stored == ["CT"]
    assert gw.events("dicom.association.aborted") == [] and gw.events("dicom.protocol.violation") == []
    accepted_record, = gw.wait_for("dicom.association.accepted")
    assert MRImageStorage in str(accepted_record.details), accepted_record.details  # named as refused
