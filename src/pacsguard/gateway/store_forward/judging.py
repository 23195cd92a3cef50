"""A store-and-forward route's object checks on one received object (pacsguard.gateway.objects),
and what their verdict does to it: forwarded (possibly as a check's replacement file), refused
(dropped), or quarantined (kept aside with a manifest). The C-STORE is answered with the
verdict's status (PS3.4 B.2.3) by the SCP (pacsguard.gateway.store_forward.acceptor)."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from pacsguard.events import Event
from pacsguard.gateway.objects import ObjectAction, ObjectCheck, ObjectVerdict, ReceivedObject
from pacsguard.gateway.store_forward import records
from pacsguard.gateway.store_forward.spool import Spool, SpooledMeta, copy_synced

log = logging.getLogger("pacsguard.gateway")


def run_checks(checks: Sequence[ObjectCheck], obj: ReceivedObject,
               publish: Callable[[Event], object]) -> tuple[ObjectVerdict, Path]:
    """Run ``checks`` in order: the first that does not forward decides; a replacement is what the
    next check sees. Returns the deciding verdict (or the last replacing one) and the file it judged."""
    last = ObjectVerdict()
    for check in checks:
        try:
            verdict = check.inspect(obj)
        except Exception as exc:  # noqa: BLE001 - a check must not raise; if it does, nothing passes unjudged
            log.exception("object check %s failed", check.name)
            verdict = ObjectVerdict(ObjectAction.REFUSE, check.name, "error", f"the check failed: {exc}")
        for ev in verdict.events:
            publish(ev)
        if verdict.action is not ObjectAction.FORWARD:
            return replace(verdict, check=verdict.check or check.name), obj.path
        if verdict.replacement is not None:
            obj = replace(obj, path=verdict.replacement)
            last = replace(verdict, check=verdict.check or check.name)
    return last, obj.path


def set_aside(spool: Spool, meta: SpooledMeta, path: Path, received: Path, verdict: ObjectVerdict,
              publish: Callable[[Event], object]) -> int:
    """Quarantine (with a manifest: what, from whom, which check and rule, why, SHA-256) or drop a
    refused object, record it, and return the status to answer."""
    status = verdict.status
    if verdict.action is ObjectAction.QUARANTINE:
        manifest = {"object": meta.to_json(), "check": verdict.check, "rule": verdict.rule, "reason": verdict.reason,
                    "status": f"0x{status:04X}", "quarantined": time.time(), "sha256": _sha256(path)}
        where = spool.quarantine(path, meta.id, manifest)
        if path != received:
            spool.discard(received)
        publish(records.refused(meta, status=status, check=verdict.check, rule=verdict.rule, reason=verdict.reason,
                                quarantine=str(where)))
        return status
    spool.discard(received)
    if path != received:
        path.unlink(missing_ok=True)
    publish(records.refused(meta, status=status, check=verdict.check, rule=verdict.rule, reason=verdict.reason))
    return status


def adopt_replacement(meta: SpooledMeta, replacement: Path, received: Path, check: str) -> tuple[SpooledMeta, Path]:
    """Make a check's replacement file durable in the spool's tmp/ (dropping the original), with its
    own SOP Class, SOP Instance and transfer syntax from its file meta (PS3.10 7.1; de-identification
    gives new UIDs), which the forwarder proposes."""
    from pydicom.filereader import read_file_meta_info

    fm = read_file_meta_info(replacement)
    obj = meta.object
    obj = replace(obj, sop_class_uid=str(fm.get("MediaStorageSOPClassUID", obj.sop_class_uid)),
                  sop_instance_uid=str(fm.get("MediaStorageSOPInstanceUID", obj.sop_instance_uid)),
                  transfer_syntax_uid=str(fm.get("TransferSyntaxUID", obj.transfer_syntax_uid)))
    meta = replace(meta, object=obj, bytes=replacement.stat().st_size, replaced_by=check,
                   received_sop_instance_uid=meta.received_sop_instance_uid or meta.object.sop_instance_uid)
    target = received.with_suffix(".replaced.dcm")
    try:
        os.replace(replacement, target)
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # another file system: copy it
        copy_synced(replacement, target)
        replacement.unlink(missing_ok=True)
    received.unlink(missing_ok=True)
    return meta, target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
