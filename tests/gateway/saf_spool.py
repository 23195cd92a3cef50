"""Spooling files as a store-and-forward route's SCP would have (committed with their metadata),
for tests that start from a given spool state."""

from __future__ import annotations

import time
from pathlib import Path

from pydicom import dcmread

from pacsguard.gateway.objects import ReceivedObject
from pacsguard.gateway.store_forward.spool import Spool, SpooledMeta

CALLING = "MODALITY"


def spool_file(spool: Spool, path: Path, destinations: list[str], *, in_doubt: bool = False) -> SpooledMeta:
    """Commit a copy of the Part-10 file ``path`` for ``destinations``; with ``in_doubt`` also an
    attempt marker for each, as a crash between a C-STORE and the note of its answer leaves."""
    ds = dcmread(path, stop_before_pixels=True)
    object_id = spool.new_id()
    obj = ReceivedObject(path=spool.object_path(object_id), sop_class_uid=str(ds.SOPClassUID),
                         sop_instance_uid=str(ds.SOPInstanceUID),
                         transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), calling_ae=CALLING,
                         called_ae="PACSGUARD", peer_host="127.0.0.1", route="sf")
    data = path.read_bytes()
    meta = SpooledMeta(id=object_id, object=obj, received=time.time(), bytes=len(data), destinations=destinations,
                       patient_id=str(ds.PatientID), study_uid=str(ds.StudyInstanceUID))
    spool.commit(spool.receive(object_id, data), meta)
    if in_doubt:
        for destination in destinations:
            spool.mark_sending(object_id, destination)
    return meta
