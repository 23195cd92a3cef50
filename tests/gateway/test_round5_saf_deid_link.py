"""A de-identifying store-and-forward route's own events (a fixer's note, round 5): after the
`deidentify` check replaced an object, gateway.object.received and .forwarded named the original
Patient ID beside the copy's new SOP Instance UID, a re-identification table in the store that
the sealed deid.object.deidentified event was made to avoid. They now name the UID as received."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from pacsguard.events import Party
from pacsguard.gateway.objects import ReceivedObject
from pacsguard.gateway.store_forward import records
from pacsguard.gateway.store_forward.judging import adopt_replacement
from pacsguard.gateway.store_forward.spool import SpooledMeta


def test_events_of_a_replaced_object_name_the_uid_as_received(tmp_path: Path) -> None:
    original = Path(get_testdata_file("CT_small.dcm"))
    ds = dcmread(original)
    received = tmp_path / "obj.dcm"
    received.write_bytes(original.read_bytes())
    new_uid = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = new_uid
    replacement = tmp_path / "copy.dcm"
    ds.save_as(replacement)
    obj = ReceivedObject(path=received, sop_class_uid=ds.SOPClassUID, sop_instance_uid="1.2.3.4.5",
                         transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), calling_ae="CT1", called_ae="GW",
                         peer_host="10.0.0.7", route="r")
    meta = SpooledMeta(id="x1", object=obj, received=0.0, bytes=received.stat().st_size, destinations=["pacs"],
                       patient_id="PID-42", study_uid="1.2.3")
    meta, _ = adopt_replacement(meta, replacement, received, "deidentify")
    assert meta.object.sop_instance_uid == new_uid  # what the forwarder proposes and sends
    again = SpooledMeta.from_json(meta.to_json(), received)  # as the forwarding process reads ID.json
    for event in (records.received(meta), records.forwarded(again, "pacs", Party(ae_title="PACS"), 0)):
        text = event.to_json()
        assert new_uid not in text and "1.2.3.4.5" in text, text
        assert event.patient_ids == ("PID-42",)
