"""Exactly once through the crash window: a gateway killed after a destination stored an object
but before the spool noted its Success leaves an attempt marker and no sent marker. After the
restart the destination is asked (C-FIND, PS3.4 C.4.1) before anything is sent again. The window
is built deterministically: the spool is written before `pacsguard serve` starts, each object with
an attempt marker for every destination, and real Orthancs hold one of them already."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom import dcmread
from test_store_forward import CALLING, dataset_bytes, fresh_ct, orthanc_bytes, sf_route, wait_until

from pacsguard.gateway.objects import ReceivedObject
from pacsguard.gateway.store_forward.spool import Spool, SpooledMeta

pytestmark = [pytest.mark.peers]

DESTINATIONS = ["d0", "d1", "d2"]


def spool_in_the_crash_window(folder: Path, files: list[Path]) -> dict[str, str]:
    """Spool ``files`` as the gateway would have, each marked as being sent to every destination
    with no answer recorded; returns spool id -> SOP Instance UID."""
    spool = Spool(folder)
    spool.open()
    ids = {}
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        object_id = spool.new_id()
        obj = ReceivedObject(path=spool.object_path(object_id), sop_class_uid=str(ds.SOPClassUID),
                             sop_instance_uid=str(ds.SOPInstanceUID),
                             transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), calling_ae=CALLING,
                             called_ae="PACSGUARD", peer_host="127.0.0.1", route="sf")
        data = path.read_bytes()
        meta = SpooledMeta(id=object_id, object=obj, received=time.time(), bytes=len(data),
                           destinations=list(DESTINATIONS), patient_id=str(ds.PatientID),
                           study_uid=str(ds.StudyInstanceUID))
        spool.commit(spool.receive(object_id, data), meta)
        for destination in DESTINATIONS:
            spool.mark_sending(object_id, destination)
        assert spool.in_doubt(object_id) == DESTINATIONS
        ids[object_id] = str(ds.SOPInstanceUID)
    spool.close()
    return ids


def test_an_object_in_the_crash_window_is_not_sent_again_to_a_destination_that_holds_it(orthanc, gateway, tmp_path):
    asks = orthanc(DicomAlwaysAllowFind=True, OverwriteInstances=True)
    refuses = orthanc(OverwriteInstances=True)  # C-FIND from an unknown AE: Orthanc aborts the association
    never = orthanc(DicomAlwaysAllowFind=True, OverwriteInstances=True)
    held, missing = fresh_ct(tmp_path / "ct", 2, kib=256)
    # What the destinations already hold of `held`: the same SOP Instance with other bytes, so
    # that sending it again (OverwriteInstances) would show in the instance's bytes.
    earlier = dcmread(held)
    earlier.PatientName = "ALREADY^STORED"
    earlier.save_as(tmp_path / "earlier.dcm")
    earlier_bytes = (tmp_path / "earlier.dcm").read_bytes()
    for pacs in (asks, refuses, never):
        pacs.rest("/instances", method="POST", body=earlier_bytes)
    held_uid, missing_uid = (str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in (held, missing))
    before = orthanc_bytes(asks)
    assert list(before) == [held_uid]

    folder = tmp_path / "spool"
    ids = spool_in_the_crash_window(folder, [held, missing])
    r = sf_route("sf", (asks.dicom_port, asks.aet), (refuses.dicom_port, refuses.aet), (never.dicom_port, never.aet),
                 spool={"directory": str(folder)})
    r["destinations"][2]["verify_resend"] = "never"
    gw = gateway(r)

    checks = gw.wait_for("gateway.object.in-doubt", count=6, timeout=30)
    answers = {(ids[e.details["spool_id"]], e.details["destination"]): e for e in checks}
    assert len(answers) == 6  # each object once per destination
    assert answers[held_uid, "d0"].details["answer"] == "found"
    assert answers[missing_uid, "d0"].details["answer"] == "absent"
    for uid in (held_uid, missing_uid):
        assert answers[uid, "d1"].details["answer"] == "cannot-ask"
        assert "destination cannot be asked; at-least-once for this object" in answers[uid, "d1"].message
        assert answers[uid, "d2"].details["answer"] == "not-asked"
        assert "at-least-once" in answers[uid, "d2"].details["reason"]
    assert answers[held_uid, "d0"].patient_ids == ("SAF001",)
    wait_until(lambda: not list((folder / "objects").iterdir()), 30, "every destination has both objects")

    # The destination that could answer kept its copy untouched and got only the missing object.
    forwarded = gw.events("gateway.object.forwarded")
    sends = sorted((e.details["sop_instance"], e.details["destination"]) for e in forwarded)
    assert sends == sorted([(missing_uid, "d0"), (held_uid, "d1"), (missing_uid, "d1"), (held_uid, "d2"),
                            (missing_uid, "d2")])
    asks.wait_for_instances(2)
    after = orthanc_bytes(asks)
    assert len(asks.instances()) == 2 and after[held_uid] == before[held_uid] == earlier_bytes
    assert dataset_bytes(after[missing_uid]) == dataset_bytes(missing.read_bytes())  # as spooled
    # The others were sent it again (at-least-once): the spool's version replaced theirs.
    spooled_held = dataset_bytes(held.read_bytes())
    for pacs in (refuses, never):
        pacs.wait_for_instances(2)
        wait_until(lambda pacs=pacs: dataset_bytes(orthanc_bytes(pacs)[held_uid]) == spooled_held, 10,
                   "the object sent again replaced the earlier copy")
