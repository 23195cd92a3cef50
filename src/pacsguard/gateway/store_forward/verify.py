"""Before an object is sent again to a destination whose answer to the last send went missing
(a crash, or an association that ended between the C-STORE and its response), ask the
destination whether it holds that SOP Instance already: a C-FIND at the IMAGE level of the Study
Root Query/Retrieve Information Model (PS3.4 C.4.1, C.6.2), with the Study, Series and SOP
Instance UIDs as unique keys (PS3.4 C.4.1.2.2.1: the keys of the levels above are single values).

DICOM has no way to ask "did my last C-STORE arrive?" (PS3.4 B.2: a lost response leaves it
unknown), so this is as far as exactly-once goes: a destination that answers the C-FIND is never
sent an object it holds; one that refuses it (no context, a failure status, an abort) is sent the
object again (at-least-once for that object), and the event says so."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom import build_context
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND_MODEL  # type: ignore

from pacsguard.config.schema import Destination, Route
from pacsguard.dicom.dimse import status_category
from pacsguard.gateway.store_forward.scu import associate, unreachable
from pacsguard.gateway.store_forward.spool import SpooledMeta

ABORT_POLL = 0.05  # seconds between looks at the association while a C-FIND waits
AT_LEAST_ONCE = "at-least-once for this object"
CANNOT_ASK = f"destination cannot be asked; {AT_LEAST_ONCE}"


class Answer(str, Enum):
    FOUND = "found"  # the destination holds it: marked sent, not sent again
    ABSENT = "absent"  # it does not: sent
    CANNOT_ASK = "cannot-ask"  # no usable C-FIND answer: sent (at-least-once)
    NOT_ASKED = "not-asked"  # verify_resend: never: sent (at-least-once)


@dataclass(frozen=True, slots=True)
class Reply:
    answer: Answer
    reason: str


class Unreachable(Exception):
    """The destination could not be associated with at all: the objects wait, as for a C-STORE."""


def identifier(meta: SpooledMeta) -> Dataset:
    """The C-FIND identifier for a spooled object (PS3.4 C.4.1.1.3): IMAGE level and its unique
    keys. The SOP Instance UID is the spool metadata's; the Study and Series Instance UIDs are read
    from the spooled file, which is what was sent (a de-identifying check's replacement carries
    new ones), with the metadata's Study Instance UID when the file has none."""
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    study, series = "", ""
    try:
        header = dcmread(meta.object.path, stop_before_pixels=True,
                         specific_tags=["StudyInstanceUID", "SeriesInstanceUID"])
        study = str(header.get("StudyInstanceUID", ""))
        series = str(header.get("SeriesInstanceUID", ""))
    except (OSError, InvalidDicomError, ValueError):
        pass  # the metadata's keys are enough for most SCPs
    query.StudyInstanceUID = study or meta.study_uid or ""
    if series:
        query.SeriesInstanceUID = series
    query.SOPInstanceUID = meta.object.sop_instance_uid
    return query


def ask(route: Route, destination: Destination, metas: Sequence[SpooledMeta],
        ssl_context: ssl.SSLContext | None = None) -> dict[str, Reply]:
    """Ask ``destination`` about each of ``metas`` on one association; a Reply per spool id.
    Raises Unreachable when no association could be established."""
    assoc = associate(route, destination, [build_context(FIND_MODEL)], ssl_context)
    if assoc.is_rejected:  # some SCPs reject an association none of whose contexts they take
        why = f"{CANNOT_ASK} (it rejected an association for C-FIND)"
        return {m.id: Reply(Answer.CANNOT_ASK, why) for m in metas}
    if not assoc.is_established and assoc.rejected_contexts:
        # pynetdicom aborts an association whose A-ASSOCIATE-AC accepted no context (a storage-only
        # SCP): it was reached and answered, it just cannot be asked.
        why = f"{CANNOT_ASK} (it accepted no Study Root FIND context)"
        return {m.id: Reply(Answer.CANNOT_ASK, why) for m in metas}
    if not assoc.is_established:
        raise Unreachable(unreachable(destination, assoc))
    replies: dict[str, Reply] = {}
    try:
        if not any(cx.abstract_syntax == FIND_MODEL for cx in assoc.accepted_contexts):
            why = f"{CANNOT_ASK} (it accepted no Study Root FIND context)"
            return {m.id: Reply(Answer.CANNOT_ASK, why) for m in metas}
        for meta in metas:
            reply = _find(assoc, meta)
            replies[meta.id] = reply
            if reply.answer is Answer.CANNOT_ASK:
                # A destination that failed one C-FIND (a refusal, then often an abort: Orthanc for an
                # AE title it does not know) is not asked again on this association: a query sent as
                # the abort arrives can wait the whole DIMSE timeout for an answer that never comes.
                why = f"{CANNOT_ASK} (an earlier C-FIND on the association failed: {reply.reason})"
                for rest in metas:
                    replies.setdefault(rest.id, Reply(Answer.CANNOT_ASK, why))
                break
    finally:
        if assoc.is_established:
            assoc.release()
    return replies


def _find(assoc: Any, meta: SpooledMeta) -> Reply:
    """One C-FIND; FOUND only for a match that names this SOP Instance UID (an SCP that ignores
    the key and lists the whole study does not count as having it)."""
    uid = meta.object.sop_instance_uid
    found = False
    try:
        with _woken_on_abort(assoc):
            responses = list(assoc.send_c_find(identifier(meta), FIND_MODEL))
        for status, match in responses:
            code = getattr(status, "Status", None)
            if code is None:
                return Reply(Answer.CANNOT_ASK, f"{CANNOT_ASK} (no C-FIND response: the association ended)")
            category = status_category(int(code))
            if category == "pending":
                found = found or (match is not None and str(match.get("SOPInstanceUID", "")) == uid)
            elif category != "success" and not found:
                return Reply(Answer.CANNOT_ASK, f"{CANNOT_ASK} (C-FIND status 0x{int(code):04X})")
    except RuntimeError:  # pynetdicom: the association is no longer established (an abort)
        return Reply(Answer.CANNOT_ASK, f"{CANNOT_ASK} (the destination ended the association)")
    if found:
        return Reply(Answer.FOUND, "the destination holds it (C-FIND): not sent again")
    return Reply(Answer.ABSENT, "the destination does not hold it (C-FIND): sent again")


@contextmanager
def _woken_on_abort(assoc: Any) -> Iterator[None]:
    """While a C-FIND waits for its responses, wake it as soon as the association is aborted.

    pynetdicom (3.0) wakes a waiting request by queueing an empty message when the peer aborts,
    but its reactor thread, which polls the same queue, can take that message first when the abort
    comes just as the request is sent (Orthanc aborts at once on a C-FIND from an AE title it does
    not know). The request then waited the whole DIMSE timeout, and the objects in doubt with it
    (30 s, seen in a CI run). Here a watcher queues another empty message once an abort has arrived
    or the connection is gone; a C-FIND that merely takes long still has the whole timeout."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(ABORT_POLL):
            # The DUL's own view: the reactor, paused during the request, may not have looked yet.
            if not assoc.is_established or assoc.acse.is_aborted() or not assoc.dul.is_alive():
                assoc.dimse.msg_queue.put((None, None))
                return

    watcher = threading.Thread(target=watch, name="pacsguard-c-find-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
