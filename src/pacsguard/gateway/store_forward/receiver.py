"""Receiving one C-STORE on a store-and-forward route (PS3.7 9.1.1, PS3.4 B.2.2): its data set
written straight into the spool as its P-DATA fragments arrive, then synced, checked and
committed before the C-STORE-RSP is sent (pacsguard.gateway.store_forward.acceptor sends it).

The object file is a Part-10 file (PS3.10 7.1): preamble, "DICM" and a file meta group
(pacsguard.dicom.filemeta), then the data set exactly as received. Nothing of the object is held
in memory: each data PDV is written from the PDU that carried it.

Durability before Success (docs/gateway.md, "Store-and-forward routes"):
  0. in a worker thread started as its last PDV is handled, the data set's element headers are
     walked from the page cache (structure.py, PS3.5 7.1, 7.5): one that does not hold together
     is refused at reception (0xC000, docs/gateway.md "What is refused at reception");
  1. the object file is fsync'd in tmp/ by that thread, then judged by the route's object
     checks, in order, in that thread (the kernel was asked to write each MiB of it out as it
     arrived, so little is left for that fsync);
  2. its metadata (ID.json) is written and fsync'd in tmp/ by one of the route's metadata threads
     (`Receiver.meta_writer`) while the object is fsync'd (the two syncs share a journal commit),
     and, once the checks pass, both files are renamed into objects/ (a check's replacement gets
     its metadata rewritten);
  3. objects/ is fsync'd by a group fsync (`syncing.FolderSync`), still in that thread: one fsync
     covers every object renamed before it began, so concurrent associations share it;
  4. only then is the object recorded (still in that thread) and answered with Success. A crash
     before step 3 ends leaves at most a file the next rescan removes; nothing was acknowledged.
  5. the acceptor hands it to the forwarders once its C-STORE-RSP is out: an association that
     ends before that (an A-ABORT after the last P-DATA) has its object withdrawn from the spool
     (`Spool.withdraw`), since the modality, which saw no Success, sends it again.
The spool's free-space floor (spool.min_free_mib) is checked as the object grows: past it, the
rest of the data set is read and dropped, and the answer is 0xA700 (out of resources, PS3.4
Table B.2-1). What is written stops counting as reserved (the file system's free space counts it
already), so an object counts once."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field, replace
from pathlib import Path

from pacsguard.config.schema import Route
from pacsguard.dicom import dimse
from pacsguard.dicom.dataset import DatasetPeek
from pacsguard.dicom.events import DimseCommand
from pacsguard.dicom.filemeta import encode_file_meta
from pacsguard.dicom.uids import PACSGUARD_IMPLEMENTATION_CLASS_UID, PACSGUARD_IMPLEMENTATION_VERSION_NAME
from pacsguard.events import Event
from pacsguard.gateway.check import Chain
from pacsguard.gateway.objects import ObjectAction, ObjectCheck, ReceivedObject
from pacsguard.gateway.quarantine import QuarantinePolicy
from pacsguard.gateway.store_forward import records
from pacsguard.gateway.store_forward.judging import adopt_replacement, run_checks, set_aside
from pacsguard.gateway.store_forward.screening import CHECK as SCREENING_CHECK
from pacsguard.gateway.store_forward.screening import Problem, structure_problem
from pacsguard.gateway.store_forward.spool import MIB, Spool, SpooledMeta, SpoolFull, sync_object
from pacsguard.gateway.store_forward.structure import walk_file
from pacsguard.gateway.store_forward.syncing import FolderSync, start_writeback
from pacsguard.gateway.verdict import Action, Verdict
from pacsguard.records.dicom import Pending, RefusalLog
from pacsguard.records.moves import MoveLedger

log = logging.getLogger("pacsguard.gateway")

STATUS_SUCCESS = dimse.STATUS_SUCCESS
STATUS_OUT_OF_RESOURCES = dimse.STATUS_OUT_OF_RESOURCES  # PS3.4 Table B.2-1
STATUS_PROCESSING_FAILURE = dimse.STATUS_PROCESSING_FAILURE  # PS3.7 C.4.2: the gateway failed to keep it
RESERVE_STEP = MIB  # the free-space floor is checked for each further MiB an object grows
# While an object arrives, each further MiB written is handed to the kernel's write-out at once
# (syncing.start_writeback), so that the fsync before its answer has only the tail left to write.
# 1 MiB: the tail's fsync 1.4 -> 0.4 ms for 8.4 MB objects, 256 KiB no better (docs/PERFORMANCE.md).
# Called on the loop: it only queues the write, but waits when the disk's queue is full (a spool
# on a disk slower than the network), as the answer's fsync would (docs/gateway.md).
WRITEBACK_STEP = MIB
IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 16  # buffers per writev(2): 1024 on Linux


@dataclass(frozen=True, slots=True)
class Receiver:
    """What receiving needs of its route (pacsguard.gateway.store_forward.route implements it).
    Called on the gateway's loop, except what the worker thread that syncs, checks and commits an
    object uses: `spool`, `folder_sync`, `meta_writer`, `object_checks`, `publish` and `queued`."""

    route: Route
    chain: Chain
    spool: Spool
    folder_sync: FolderSync
    object_checks: Sequence[ObjectCheck]
    publish: Callable[[Event], int | None]
    quarantine_source: Callable[[str, Verdict], None]  # quarantines a target (host, AE@host) now
    is_quarantined: Callable[[str, str | None], bool]
    queued: Callable[[SpooledMeta], None]  # hands an acknowledged object to the forwarders
    # Writes each object's ID.json while its worker thread fsyncs the object: threads kept for
    # it, since starting one per object put ~0.4 ms before every object's fsync. Its tasks never
    # wait for anything, so the worker threads that wait for them cannot deadlock it.
    meta_writer: Executor
    refusals: RefusalLog  # the route's own refusals, counted per source and rule (records.dicom)
    # What an association check's quarantine takes (admission.Admission.quarantine); an object
    # check's `quarantine_sender` takes the sending host, as documented.
    quarantine_policy: QuarantinePolicy = QuarantinePolicy()
    # The gateway's open C-MOVEs (records.moves), shared with its relay routes: a C-STORE this route
    # acknowledges may be a sub-operation of a C-MOVE one of them relays (this is its return route).
    # None: a route run on its own (the tests), whose records credit no C-MOVE.
    moves: MoveLedger | None = None


@dataclass(frozen=True, slots=True)
class Sender:
    """Who sent the object: the association's side of its metadata (ID.json)."""

    calling_ae: str
    called_ae: str
    host: str
    port: int
    user: str = ""  # the certificate's subject, else the claimed User Identity username


@dataclass(eq=False)
class Incoming:
    """One C-STORE-RQ and its data set, from the command until the answer (PS3.7 9.1.1)."""

    command: DimseCommand
    pending: Pending
    status: int | None = None  # set once the answer is known to be a refusal
    object_id: str = ""
    path: Path | None = None
    fd: int = -1
    written: int = 0
    reserved: int = 0  # bytes counted against the spool's free-space floor (Spool.reserve)
    settled: int = 0  # of `written`, those the spool was told of: they no longer count as reserved
    peek: DatasetPeek | None = None
    refusal: tuple[str, str] | None = None  # (reason, rule) of a refusal the spool or reception made
    refused_by: str = "spool"  # the `check` of that refusal's event
    comment: str = ""  # Error Comment (0000,0902) of a refusal's C-STORE-RSP
    data_start: int = 0  # where the data set begins in the file (after the Part-10 header)
    abort_after: str = ""  # why the association ends once this request is answered
    written_back: int = 0  # bytes handed to the kernel's write-out so far
    started: float = field(default_factory=time.time)

    @property
    def message_id(self) -> int:
        return self.command.command.message_id or 0

    @property
    def receiving(self) -> bool:
        """Whether the data set still goes to disk (not refused, not cut off by the floor)."""
        return self.fd >= 0

    def open(self, spool: Spool, sender: Sender) -> int | None:
        """Create the object's file with its Part-10 header (PS3.10 7.1); None, or the refusal status."""
        cmd = self.command.command
        self.object_id = spool.new_id()
        head = encode_file_meta(sop_class_uid=cmd.affected_sop_class_uid or "",
                                sop_instance_uid=cmd.affected_sop_instance_uid or "",
                                transfer_syntax_uid=self.command.transfer_syntax or "",
                                implementation_class_uid=PACSGUARD_IMPLEMENTATION_CLASS_UID,
                                implementation_version_name=PACSGUARD_IMPLEMENTATION_VERSION_NAME,
                                source_ae_title=sender.calling_ae or None)
        self.data_start = len(head)
        try:
            self._reserve(spool, len(head))
            self.fd, self.path = spool.create(self.object_id)
        except SpoolFull as exc:
            return self._refuse_full(spool, exc)
        except OSError as exc:
            return self._refuse_unwritable(spool, exc)
        return self.write(spool, head)

    def write(self, spool: Spool, data: bytes | memoryview) -> int | None:
        """Append ``data`` to the object file; None, or the refusal status once it cannot be kept."""
        return self.write_many(spool, [memoryview(data)])

    def write_many(self, spool: Spool, views: list[memoryview]) -> int | None:
        """Append ``views`` in order with as few writev(2) calls as the system allows: the
        fragments of one read go to the page cache in one call instead of one each (half the
        CPU per GB of a 16 KiB write each, docs/PERFORMANCE.md)."""
        if self.fd < 0:
            return self.status
        size = sum(len(v) for v in views)
        try:
            if self.written + size > self.reserved:
                self._reserve(spool, max(RESERVE_STEP, self.written + size - self.reserved))
            _write_all(self.fd, views)
            self.written += size
            if self.written - self.written_back >= WRITEBACK_STEP:
                start_writeback(self.fd, self.written_back, self.written - self.written_back)
                self.written_back = self.written
        except SpoolFull as exc:
            return self._refuse_full(spool, exc)
        except OSError as exc:
            return self._refuse_unwritable(spool, exc)
        return None

    def _reserve(self, spool: Spool, size: int) -> None:
        """Reserve ``size`` more bytes, telling the spool what was written since the last time
        (statvfs counts those already: counting them as reserved too refused objects that fit)."""
        written, self.settled = self.written - self.settled, self.written
        spool.reserve(size, written)
        self.reserved += size

    def first_bytes(self, size: int) -> tuple[bytes, int]:
        """Up to ``size`` bytes of the data set from its start, read back from the file (once per
        object, from the page cache), and how many bytes of it were written so far."""
        have = self.written - self.data_start
        return os.pread(self.fd, min(size, have), self.data_start) if have > 0 else b"", max(have, 0)

    def refuse(self, spool: Spool, status: int, reason: str, rule: str, check: str, comment: str = "") -> None:
        """Stop receiving and answer ``status``: the rest of the data set is read and dropped, and
        the refusal is recorded as the object's when it is answered (`keep`)."""
        self.status, self.refusal, self.refused_by, self.comment = status, (reason, rule), check, comment
        self.drop(spool)

    def _refuse_full(self, spool: Spool, exc: SpoolFull) -> int:
        self.status = STATUS_OUT_OF_RESOURCES
        self.refusal = (str(exc), "spool.min_free_mib")
        self.drop(spool)
        return self.status

    def _refuse_unwritable(self, spool: Spool, exc: OSError) -> int:
        # ENOSPC, EIO: nothing was acknowledged, the modality may retry. An object larger than a
        # file may be here (EFBIG: the file system's largest file, or the service's RLIMIT_FSIZE,
        # systemd's LimitFSIZE=; Python ignores SIGXFSZ) is out of resources too, PS3.4 B.2.3's
        # status for a C-STORE the SCP has no room for, not a processing failure (0110H), which
        # storescu reports as "Unknown Status".
        self.status = STATUS_OUT_OF_RESOURCES if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) \
            else STATUS_PROCESSING_FAILURE
        why = exc.strerror or str(exc)
        if exc.errno == errno.EFBIG:
            why += (f" (the object is larger than a file in the spool may be, past {self.written:,} bytes: "
                    "the file system's or the service's file size limit, RLIMIT_FSIZE)")
        self.refusal = (f"cannot write the spool: {why}", "spool.directory")
        self.drop(spool)
        return self.status

    def drop(self, spool: Spool) -> None:
        """Stop receiving: the file goes, the rest of the data set is read and ignored."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.path is not None:
            spool.discard(self.path)
            self.path = None
        self.release(spool)

    def release(self, spool: Spool) -> None:
        """Give back what was reserved and not written (the file written is the file system's)."""
        unwritten = self.reserved - self.settled
        if unwritten > 0:
            spool.release(unwritten)
        self.reserved = self.settled = 0

    def meta(self, rx: Receiver, sender: Sender) -> SpooledMeta:
        """What ID.json keeps of the object (pacsguard.gateway.store_forward.spool)."""
        cmd = self.command.command
        peek = self.peek
        obj = ReceivedObject(path=rx.spool.object_path(self.object_id), sop_class_uid=cmd.affected_sop_class_uid or "",
                             sop_instance_uid=cmd.affected_sop_instance_uid or "",
                             transfer_syntax_uid=self.command.transfer_syntax or "", calling_ae=sender.calling_ae,
                             called_ae=sender.called_ae, peer_host=sender.host, route=rx.route.name,
                             association_id=f"{sender.host}:{sender.port}", user=sender.user)
        return SpooledMeta(id=self.object_id, object=obj, received=self.started, bytes=self.written,
                           destinations=[d.key for d in rx.route.destinations],
                           patient_id=peek.patient_id if peek else None,
                           study_uid=peek.study_instance_uid if peek else None)


def _write_all(fd: int, views: list[memoryview]) -> None:
    """writev(2) until every byte of ``views`` is written (a short write resumes where it ended)."""
    start = 0
    while start < len(views):
        batch = views[start:start + IOV_MAX]
        done = os.writev(fd, batch)
        for view in batch:
            if done < len(view):
                views[start] = view[done:]
                break
            done -= len(view)
            start += 1


@dataclass(frozen=True, slots=True)
class Kept:
    """How one received object ended: its status, why the association ends (its sender was
    quarantined), if it does, and the committed object, if it was (the forwarders get it once its
    Success is sent)."""

    status: int
    cut_off: str = ""
    meta: SpooledMeta | None = None
    refusal: Problem | None = None  # a refusal at reception found once the object was whole
    quarantine: Verdict | None = None  # the sender's host is to be quarantined (quarantine_sender)


def kept_now(kept: Kept) -> asyncio.Future[Kept]:
    """An outcome known without any work, awaitable like one that needed it."""
    done: asyncio.Future[Kept] = asyncio.get_running_loop().create_future()
    done.set_result(kept)
    return done


def keep(rx: Receiver, incoming: Incoming, sender: Sender, publish: Callable[[Event], object]) -> Awaitable[Kept]:
    """Sync, check and commit a completely received object; awaits the status to answer (PS3.4
    B.2.3). The worker thread starts before this returns, not on the loop's next turn: every hop
    between the last PDV and the fsync lengthens each C-STORE. ``publish`` records the object's
    Events (it may be called from the worker thread)."""
    meta = incoming.meta(rx, sender)
    if incoming.refusal is not None or not incoming.receiving:
        reason, rule = incoming.refusal or ("not received", "spool")
        status = incoming.status if incoming.status is not None else STATUS_PROCESSING_FAILURE
        publish(records.refused(meta, status=status, check=incoming.refused_by, rule=rule, reason=reason))
        return kept_now(Kept(status))
    fd, received = incoming.fd, incoming.path
    assert received is not None  # a receiving object has its file
    incoming.fd, incoming.path = -1, None
    committing = asyncio.get_running_loop().run_in_executor(None, _check_and_commit, rx, meta, fd, received,
                                                            sender.host, publish, incoming.data_start)
    return _committed(rx, incoming, committing)


async def _committed(rx: Receiver, incoming: Incoming, committing: Awaitable[Kept]) -> Kept:
    """Back on the loop once the worker thread ended: the object's room in the spool is its own."""
    try:
        return await committing
    finally:
        incoming.release(rx.spool)


def _check_and_commit(rx: Receiver, meta: SpooledMeta, fd: int, received: Path, host: str,
                      publish: Callable[[Event], object], data_start: int = 0) -> Kept:
    """In a worker thread: walk the data set's structure, fsync the object, run the object checks,
    then commit it to objects/ (the folder's fsync shared with the objects committed meanwhile) and
    record it, or set it aside. Returns how it ended; a committed object goes to the forwarders once
    the acceptor has sent its Success."""
    malformed = _malformed(rx, meta, fd, received, data_start, publish)
    if malformed is not None:
        return malformed
    try:
        _sync_with_meta(rx.spool, rx.meta_writer, meta, fd)
    except OSError as exc:
        rx.spool.discard(received)
        rx.spool.discard(rx.spool.tmp / f"{meta.id}.json")
        return _not_kept(meta, exc, "write", publish)
    checked = replace(meta.object, path=received)  # judged synced, before it is committed
    verdict, path = run_checks(rx.object_checks, checked, publish)
    if verdict.action is not ObjectAction.FORWARD:
        rx.spool.discard(rx.spool.tmp / f"{meta.id}.json")
        cut_off = ""
        sender: Verdict | None = None
        if verdict.action is ObjectAction.QUARANTINE and rx.route.quarantine_sender:
            # The acceptor quarantines the sender once this object's failure status is sent (or its
            # association ended): quarantining now would cut the association off before the answer.
            cut_off = f"sent an object that {verdict.check} quarantined: {verdict.reason}"
            sender = Verdict(Action.QUARANTINE, cut_off, verdict.rule, component="gateway")
        try:
            return Kept(set_aside(rx.spool, meta, path, received, verdict, publish), cut_off, quarantine=sender)
        except OSError as exc:  # the quarantine folder could not take it: refused all the same
            log.error("route %s: cannot quarantine %s: %s", rx.route.name, meta.id, exc)
            rx.spool.discard(received)
            return Kept(verdict.status, cut_off, quarantine=sender)
    try:
        replaced = path != received
        if replaced:
            meta, path = adopt_replacement(meta, path, received, verdict.check or "object check")
        rx.spool.commit(path, meta, sync_folder=False, meta_written=not replaced)
    except OSError as exc:
        rx.spool.discard(received)
        return _not_kept(meta, exc, "commit to", publish, STATUS_OUT_OF_RESOURCES)
    try:
        rx.folder_sync.sync()
    except OSError as exc:
        rx.spool.remove(meta.id)  # its name is not durable: never acknowledged, never forwarded
        return _not_kept(meta, exc, "commit to", publish, STATUS_OUT_OF_RESOURCES)
    # Here, not back on the loop: the loop's turn after this thread is then only the answer's.
    publish(records.received(meta))
    return Kept(STATUS_SUCCESS, meta=meta)


def _malformed(rx: Receiver, meta: SpooledMeta, fd: int, received: Path, data_start: int,
               publish: Callable[[Event], object]) -> Kept | None:
    """Walk the whole data set's element headers (structure.py, PS3.5 7.1, 7.5) from the page
    cache before anything else is spent on it; one that does not hold together is refused at
    reception (0xC000, check ``reception``), its file dropped. None: it holds together."""
    try:
        flaw = walk_file(fd, data_start, meta.bytes, meta.object.transfer_syntax_uid)
    except (OSError, ValueError):  # unreadable: its sync reports the file's error
        return None
    if flaw is None:
        return None
    problem = structure_problem(flaw)
    os.close(fd)
    rx.spool.discard(received)
    log.info("route %s: refused %s from %s: %s", rx.route.name, meta.object.sop_instance_uid,
             meta.object.calling_ae, problem.reason)
    publish(records.refused(meta, status=problem.status, check=SCREENING_CHECK, rule=problem.rule,
                            reason=problem.reason))
    return Kept(problem.status, refusal=problem)


def _sync_with_meta(spool: Spool, meta_writer: Executor, meta: SpooledMeta, fd: int) -> None:
    """Sync the object at its length (and close it) while a metadata thread writes and fsyncs its
    ID.json: on a journaling file system both syncs then share one journal commit instead of
    taking turns. A route being stopped has no metadata threads left: then it is written here."""
    try:
        written: Future[Path] | None = meta_writer.submit(spool.write_meta, meta)
    except RuntimeError:  # the executor was shut down
        written = None
    try:
        try:
            sync_object(fd, meta.bytes)
        finally:
            os.close(fd)
    finally:
        if written is not None:
            written.exception()  # waits; its error, if any, is raised below
    if written is None:
        spool.write_meta(meta)
    else:
        written.result()


def _not_kept(meta: SpooledMeta, exc: OSError, what: str, publish: Callable[[Event], object],
              status: int | None = None) -> Kept:
    """The spool failed the object (ENOSPC, EIO): recorded as refused; nothing was acknowledged, the
    modality may send it again."""
    if status is None:
        status = STATUS_OUT_OF_RESOURCES if exc.errno in (errno.ENOSPC, errno.EDQUOT) else STATUS_PROCESSING_FAILURE
    publish(records.refused(meta, status=status, check="spool", rule="spool.directory",
                            reason=f"cannot {what} the spool: {exc.strerror or exc}"))
    return Kept(status)
