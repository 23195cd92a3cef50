"""Exactly once through the crash window: a gateway killed after a destination stored an object
but before the spool noted its Success leaves an attempt marker and no sent marker. After the
restart the destination is asked (C-FIND, PS3.4 C.4.1) before anything is sent again. The window
is built deterministically: the spool is written before `pacsguard serve` starts, each object with
an attempt marker for every destination, and real Orthancs hold one of them already."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from saf_spool import spool_file
from test_store_forward import CountingSCP, dataset_bytes, fresh_ct, orthanc_bytes, sf_route, wait_until

from pacsguard.gateway.store_forward.spool import Spool

pytestmark = [pytest.mark.peers]

DESTINATIONS = ["d0", "d1", "d2"]


def spool_in_the_crash_window(folder: Path, files: list[Path]) -> dict[str, str]:
    """Spool ``files`` as the gateway would have, each marked as being sent to every destination
    with no answer recorded; returns spool id -> SOP Instance UID."""
    spool = Spool(folder)
    spool.open()
    metas = [spool_file(spool, path, list(DESTINATIONS), in_doubt=True) for path in files]
    assert all(spool.in_doubt(m.id, DESTINATIONS) == DESTINATIONS for m in metas)
    spool.close()
    return {m.id: m.object.sop_instance_uid for m in metas}


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

    # Orthanc refusing the C-FIND (d1) now and then leaves it unanswered: the forwarder's DIMSE
    # timeout (30 s) then ends the wait, and the answer is "cannot ask" all the same.
    checks = gw.wait_for("gateway.object.in-doubt", count=6, timeout=75)
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
    # The spool empties as the last Success is noted; its event reaches the store a batch later.
    forwarded = gw.wait_for("gateway.object.forwarded", count=5)
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


def test_a_storage_only_destination_in_the_crash_window_is_sent_the_object_again_once(gateway, tmp_path):
    """A destination that takes no C-FIND context at all (pynetdicom as a Storage SCP: it accepts the
    association and refuses the context, and pynetdicom's requestor then aborts) is answered
    "cannot ask", never retried as unreachable: the object is sent again, once."""
    storage_only = CountingSCP()
    try:
        (item,) = fresh_ct(tmp_path / "ct", 1, kib=64)
        folder = tmp_path / "spool"
        spool = Spool(folder)
        spool.open()
        meta = spool_file(spool, item, ["d0"], in_doubt=True)
        spool.close()
        gw = gateway(sf_route("sf", (storage_only.port, "COUNTER"), spool={"directory": str(folder)}))
        (checked,) = gw.wait_for("gateway.object.in-doubt", count=1, timeout=30)
        assert checked.details["answer"] == "cannot-ask", checked.message
        assert "accepted no Study Root FIND context" in checked.details["reason"]
        wait_until(lambda: not list((folder / "objects").iterdir()), 30, "the object was forwarded")
        assert dict(storage_only.counts) == {meta.object.sop_instance_uid: 1}
    finally:
        storage_only.stop()
