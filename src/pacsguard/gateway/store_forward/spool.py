"""The spool of a store-and-forward route: every object it acknowledged, on disk, until each
destination has it. Nothing lives only in memory: after a crash (SIGKILL, power loss) a rescan
of the folder is the whole state.

Layout (one folder per route)::

    tmp/                  objects being received; never acknowledged, emptied at start
    objects/ID.dcm        a received Part-10 file (PS3.10 7.1), checked and acknowledged
    objects/ID.json       what the association said about it, and its destinations
    objects/ID.DEST.sending  written (and synced) before the object is sent to DEST
    objects/ID.DEST.sent  written (and synced) once destination DEST answered Success
    objects/ID.DEST.fail  the last failed attempt for DEST (attempts, error): informative only
    quarantine/ID.dcm     an object a check quarantined, with ID.manifest.json
    sent/                 objects every destination has, when retention is "keep"
    free/                 spent object files, overwritten by the next objects (reuse.py)
    retry                 a token `pacsguard gateway spool retry` rewrites: each forwarder that sees it
                          change tries again now (none deletes it: every destination sees it)
    destinations/DEST.json  the last failure of DEST as a whole (unreachable, association refused):
                          informative only, shown for every object waiting for DEST

Durability: a file is written to tmp/, fsync'd, renamed into place, and the folder fsync'd
(rename(2) is atomic; the folder's fsync makes the new name survive a power loss). An object
counts as acknowledged only once its .dcm and .json are both in objects/: a .dcm without its
.json is a reception that never finished and is removed on rescan. A marker is empty: it is
created in objects/ directly and the folder fsync'd (its name is all it says).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from uuid import uuid4

from pacsguard.gateway.objects import ReceivedObject
from pacsguard.gateway.store_forward.reuse import FilePool
from pacsguard.gateway.store_forward.syncing import FolderSync, fsync_dir
from pacsguard.owner_only import hold_lock, make_private_dir

log = logging.getLogger("pacsguard.gateway")

MIB = 1024 * 1024


def sync_object(fd: int, length: int) -> None:
    """Make an object file written through ``fd`` durable at ``length`` bytes: a reused file
    (reuse.py) loses what its previous object left beyond them. fdatasync, not fsync: the size is
    data it flushes, the times are not worth a journal commit per object."""
    if os.fstat(fd).st_size > length:
        os.ftruncate(fd, length)
    os.fdatasync(fd)


def write_synced(path: Path, *chunks: bytes | memoryview) -> None:
    """Write ``chunks`` to a new file and fsync it (the caller renames it into place)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


#: What ID.json keeps of the ReceivedObject (its path is where the spool keeps the file).
_OBJECT_KEYS = tuple(f.name for f in fields(ReceivedObject) if f.name != "path")


@dataclass(frozen=True, slots=True)
class SpooledMeta:
    """The ``ID.json`` of a spooled object: the object as its checks saw it (the seam's
    ReceivedObject, pacsguard.gateway.objects) and the spool's own bookkeeping."""

    id: str
    object: ReceivedObject
    received: float  # seconds since the epoch
    bytes: int
    destinations: list[str]
    patient_id: str | None = None
    study_uid: str | None = None
    replaced_by: str | None = None  # the object check whose replacement file is spooled instead
    # The SOP Instance UID as received, when a check's replacement has another (de-identification):
    # the spool's events name this one, so that no event pairs the patient with the new UID.
    received_sop_instance_uid: str | None = None

    def to_json(self) -> dict[str, Any]:
        """One flat mapping: the object's fields (without its path) and the spool's."""
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "object"}
        return {**{k: getattr(self.object, k) for k in _OBJECT_KEYS}, **own}

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path) -> SpooledMeta:
        obj = ReceivedObject(path=path, **{k: data[k] for k in _OBJECT_KEYS if k in data})
        own = {f.name: data[f.name] for f in fields(cls) if f.name != "object" and f.name in data}
        return cls(object=obj, **own)


@dataclass(slots=True)
class SpoolEntry:
    """A spooled object as `pacsguard gateway spool list` shows it."""

    meta: SpooledMeta
    state: str  # queued, quarantined, sent, or damaged (its ID.json unreadable, or its file gone: never forwarded)
    path: Path
    sent: list[str] = field(default_factory=list)
    failures: dict[str, dict[str, Any]] = field(default_factory=dict)
    manifest: dict[str, Any] | None = None
    # Destinations whose last send has no recorded answer (an attempt marker): asked with a C-FIND
    # before it is sent again (docs/gateway.md, "Exactly once").
    in_doubt: list[str] = field(default_factory=list)
    damage: str = ""  # why a damaged object cannot be forwarded (its ID.json unreadable, its file gone)
    # Pending destinations the route's configuration no longer has (renamed, moved, removed): no
    # forwarder serves them (docs/gateway.md, "A destination renamed, moved or removed").
    unconfigured: list[str] = field(default_factory=list)

    @property
    def pending(self) -> list[str]:
        """The destinations it waits for: only a queued object waits (a quarantined one is never
        sent, a damaged one not until an administrator deals with it)."""
        if self.state != "queued":
            return []
        return [d for d in self.meta.destinations if d not in self.sent]

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.meta.id, "state": self.state, "path": str(self.path), "pending": self.pending,
                "sent": self.sent, "in_doubt": self.in_doubt, "failures": self.failures,
                **({"manifest": self.manifest} if self.manifest else {}),
                **({"damage": self.damage} if self.damage else {}),
                **({"unconfigured": self.unconfigured} if self.unconfigured else {}),
                "meta": self.meta.to_json()}


class SpoolFull(Exception):
    """Taking the object would leave less free space than the floor (PS3.4 B.2.3: 0xA700)."""


class Spool:
    """One route's spool folder."""

    def __init__(self, root: Path, *, min_free_mib: float = 0.0, retention: str = "delete",
                 reuse_mib: float = 0.0) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.objects = root / "objects"
        self.quarantine_dir = root / "quarantine"
        self.sent_dir = root / "sent"
        self.min_free = int(min_free_mib * MIB)
        self.retention = retention
        self.pool = FilePool(root / "free", int(reuse_mib * MIB))
        # What becomes of a spent object file: the pool's, or (in the forwarding process) a message to
        # the gateway that owns the pool; False: it is deleted.
        self.spend: Callable[[Path], bool] = self.pool.put
        # objects/'s group fsync: the receiver's commits and the forwarders' markers share it.
        self.folder_sync = FolderSync(self.objects)
        # Associations receive in parallel: bytes being written count against the floor until
        # committed or discarded, and two forwarders never finish the same object at once.
        self._lock = threading.Lock()
        self._reserved = 0
        self._lock_fd: int | None = None
        # Objects whose ID.json the last rescan (`waiting`) could not read, and why.
        self.damaged: dict[str, str] = {}

    # --- start ---------------------------------------------------------------------------------

    def open(self) -> list[SpooledMeta]:
        """Create the folders, drop what was never acknowledged, and return every object still
        waiting for a destination (the forwarders' work after a restart), oldest first."""
        for folder in (self.tmp, self.objects, self.quarantine_dir, self.sent_dir):
            make_private_dir(folder)  # its missing parents 0700 too, whatever the umask
        self._take_lock()
        self.pool.load()
        for leftover in self.tmp.iterdir():
            _remove_file(leftover)
        metas = {p.stem for p in self.objects.glob("*.json")}
        for path in self.objects.iterdir():
            object_id = path.name.split(".", 1)[0]
            if object_id not in metas:  # a reception cut off between its two renames, or a removal
                _remove_file(path)
        return self.waiting()

    def waiting(self) -> list[SpooledMeta]:
        """Every committed object a destination still lacks, oldest first, while no forwarding
        process runs (its restart). One every destination has is finished now: its forwarding
        process died between the last sent marker and the removal. Unlike `open`, nothing else is
        removed (objects may be arriving meanwhile)."""
        owed = []
        self.damaged = {}
        for object_id in sorted(p.stem for p in self.objects.glob("*.json")):
            meta = self.read_meta(object_id)
            if meta is None:  # never forwarded blindly: listed as damaged, recorded by the route
                self.damaged[object_id] = self.meta_damage(object_id)
            elif self.finish_if_done(meta):
                continue
            elif missing := self.file_damage(object_id, size=meta.bytes):  # nothing to send: said
                self.damaged[object_id] = missing
            else:
                owed.append(meta)
        return owed

    def file_damage(self, object_id: str, folder: Path | None = None, *, size: int | None = None) -> str:
        """Why an object whose ID.json is intact cannot be sent: its file is gone (deleted outside
        pacsguard, a file-system repair) or, given the ``size`` its metadata records, no longer that
        long (truncated, emptied or appended to outside pacsguard: what would be sent is not the
        data set the modality was told was stored), or replaced by a link or folder; "" when it
        is there as spooled. An lstat(2), no read: `spool list` and a start look at every object."""
        path = (folder or self.objects) / f"{object_id}.dcm"
        purge = f"`pacsguard gateway spool purge {object_id} --yes` removes it"
        try:
            st = path.lstat()
            found = st.st_size
        except FileNotFoundError:
            return (f"{path.name} is missing (deleted outside pacsguard?): the object cannot be sent; its "
                    f"{object_id}.json remains ({purge})")
        except OSError as exc:
            return f"{path.name} cannot be looked at: {exc.strerror or exc}; the object cannot be sent ({purge})"
        if not stat.S_ISREG(st.st_mode):  # a link would send whatever it points to
            return (f"{path.name} is not a plain file (a link or folder put there outside pacsguard?): the "
                    f"object is not sent ({purge})")
        if size is not None and found != size:
            return (f"{path.name} is {found:,} bytes, {size:,} when it was acknowledged (changed outside "
                    f"pacsguard?): the object is not sent as it is now ({purge})")
        return ""

    def _take_lock(self) -> None:
        """One gateway per spool: two would both forward what is pending (duplicates). The lock
        (flock) is held while the process lives; the kernel drops it when the process dies, also on
        SIGKILL, so a restart never finds a stale one."""
        if self._lock_fd is not None:
            return
        self._lock_fd = hold_lock(self.root / "lock")
        if self._lock_fd is None:
            raise OSError(errno.EBUSY, f"spool {self.root} is in use by another gateway process")

    def close(self) -> None:
        """Release the spool's lock (at the route's stop)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # --- receiving -----------------------------------------------------------------------------

    def new_id(self) -> str:
        """Time-ordered, so that a rescan forwards in arrival order."""
        return f"{time.time_ns():020d}-{uuid4().hex[:8]}"

    def reserve(self, size: int, written: int = 0) -> None:
        """Count ``size`` bytes against the free-space floor until they are written or released;
        raise SpoolFull when writing them would leave less than the floor free (objects still
        arriving included). ``written``: bytes of the caller's earlier reservations written since its
        last call, which the file system's free space no longer counts (statvfs): they stop counting
        here too, or an object would count twice and one larger than half the room be refused."""
        with self._lock:
            self._reserved -= written
            st = os.statvfs(self.tmp)
            free = st.f_bavail * st.f_frsize - self._reserved
            if free - size < self.min_free and self.pool.bytes:  # spent files go before an object is refused
                free += self.pool.trim()
            if free - size < self.min_free:
                raise SpoolFull(f"{free // MIB} MiB free, the object needs {size // MIB + 1} MiB and the spool "
                                f"keeps {self.min_free // MIB} MiB free (spool.min_free_mib)")
            self._reserved += size

    def release(self, size: int) -> None:
        """Stop counting ``size`` reserved bytes that were not written (`reserve`)."""
        with self._lock:
            self._reserved -= size

    def receive(self, object_id: str, *chunks: bytes | memoryview) -> Path:
        """Write a received object to tmp/, synced; it is not acknowledged yet."""
        path = self.tmp / f"{object_id}.dcm"
        write_synced(path, *chunks)
        return path

    def create(self, object_id: str) -> tuple[int, Path]:
        """A file in tmp/ for an object that is written as it arrives (the caller writes,
        truncates, fsyncs and closes the descriptor; `sync_object`): a spent file from the pool when
        there is one, else a new one. Like `receive`, it is not acknowledged yet. Opened for reading
        too: the receiver reads the data set's first bytes back once (screening.py)."""
        path = self.tmp / f"{object_id}.dcm"
        if self.pool.take(path):
            fd = _open_spent(path)
            if fd is not None:
                return fd, path
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), path

    def write_meta(self, meta: SpooledMeta) -> Path:
        """Write an object's metadata to tmp/ID.json, synced (replacing an earlier version): what
        `commit` moves into objects/ with the object."""
        path = self.tmp / f"{meta.id}.json"
        path.unlink(missing_ok=True)
        write_synced(path, json.dumps(meta.to_json()).encode())
        return path

    def commit(self, received: Path, meta: SpooledMeta, *, sync_folder: bool = True,
               meta_written: bool = False) -> Path:
        """Move a checked object into objects/ with its metadata, durably: after this returns the
        object may be acknowledged. With ``meta_written`` the metadata is the one `write_meta`
        already wrote for it. With ``sync_folder=False`` the caller makes the new names durable
        itself (one fsync of objects/ for several objects, `syncing.FolderSync`) before it
        acknowledges any of them."""
        meta_tmp = self.tmp / f"{meta.id}.json" if meta_written else self.write_meta(meta)
        final = self.objects / f"{meta.id}.dcm"
        os.replace(received, final)
        os.replace(meta_tmp, self.objects / f"{meta.id}.json")  # the .json last: it makes the object count
        if sync_folder:
            fsync_dir(self.objects)
        return final

    def discard(self, received: Path) -> None:
        received.unlink(missing_ok=True)

    def quarantine(self, received: Path, object_id: str, manifest: dict[str, Any]) -> Path:
        """Keep a quarantined object aside with its manifest (what, from whom, which check, why)."""
        target = self.quarantine_dir / f"{object_id}.dcm"
        manifest_tmp = self.tmp / f"{object_id}.manifest.json"
        write_synced(manifest_tmp, json.dumps(manifest, indent=2).encode())
        os.replace(received, target)
        os.replace(manifest_tmp, self.quarantine_dir / f"{object_id}.manifest.json")
        fsync_dir(self.quarantine_dir)
        return target

    # --- forwarding ----------------------------------------------------------------------------

    def object_path(self, object_id: str) -> Path:
        return self.objects / f"{object_id}.dcm"

    def meta_damage(self, object_id: str, folder: Path | None = None) -> str:
        """Why an object's ID.json cannot be read ("" when it can)."""
        path = (folder or self.objects) / f"{object_id}.json"
        try:
            SpooledMeta.from_json(json.loads(path.read_text()), path.with_suffix(".dcm"))
        except OSError as exc:
            return f"{path.name} cannot be read: {exc.strerror or exc}"
        except ValueError as exc:
            return f"{path.name} is not JSON: {exc}"
        except (TypeError, KeyError, AttributeError) as exc:
            return f"{path.name} lacks what the spool keeps: {type(exc).__name__}: {exc}"
        return ""

    def read_meta(self, object_id: str, folder: Path | None = None) -> SpooledMeta | None:
        try:
            folder = folder or self.objects
            data = json.loads((folder / f"{object_id}.json").read_text())
            return SpooledMeta.from_json(data, folder / f"{object_id}.dcm")
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None

    def sent_to(self, object_id: str, destinations: Iterable[str] | None = None) -> list[str]:
        """The destinations that have the object. Given ``destinations``, only their markers are
        looked at (a stat each, not a listing of the folder: a backlog of many thousand objects
        after an outage is forwarded in linear time)."""
        if destinations is None:
            return sorted(p.name[len(object_id) + 1:-len(".sent")] for p in self.objects.glob(f"{object_id}.*.sent"))
        return sorted(d for d in destinations if self._marker(object_id, d, "sent").exists())

    def in_doubt(self, object_id: str, destinations: Iterable[str]) -> list[str]:
        """Those of ``destinations`` the object was being sent to when the answer went missing (an
        attempt marker without a sent marker): a crash, or an association that ended before the
        response."""
        return sorted(d for d in destinations if self._marker(object_id, d, "sending").exists()
                      and not self._marker(object_id, d, "sent").exists())

    def _marker(self, object_id: str, destination: str, suffix: str) -> Path:
        return self.objects / f"{object_id}.{destination}.{suffix}"

    def _mark(self, object_ids: Iterable[str], destination: str, suffix: str) -> None:
        """Create the empty markers ``ID.DEST.SUFFIX`` durably. A marker's name is all it says, so
        the folder's fsync (one for all of them, shared with whatever else was named there
        meanwhile) is all it needs: no data to sync, no rename."""
        for object_id in object_ids:
            os.close(os.open(self._marker(object_id, destination, suffix), os.O_WRONLY | os.O_CREAT, 0o600))
        self.folder_sync.sync()

    def mark_sending(self, object_ids: str | Iterable[str], destination: str) -> None:
        """Record, durably, that these objects are about to be sent to ``destination``: if no
        answer is recorded after this, the destination may hold them (`in_doubt`). A batch is
        marked at once, with one fsync (a crash then leaves the batch's unsent objects in doubt
        too: the destination is asked about them, or they are sent, which is their first time)."""
        self._mark([object_ids] if isinstance(object_ids, str) else object_ids, destination, "sending")

    def unmark_sending(self, object_ids: Iterable[str], destination: str) -> None:
        """Drop the attempt markers of objects that were not sent after all (not synced: a stale one
        only costs a question to the destination)."""
        for object_id in object_ids:
            self._marker(object_id, destination, "sending").unlink(missing_ok=True)

    def mark_sent(self, object_id: str, destination: str) -> None:
        """Record, durably, that ``destination`` has the object (it answered Success, or a C-FIND
        found it): it is never sent this object again."""
        self._mark([object_id], destination, "sent")
        # The sent marker wins over the attempt marker: removing it needs no sync.
        (self.objects / f"{object_id}.{destination}.sending").unlink(missing_ok=True)
        (self.objects / f"{object_id}.{destination}.fail").unlink(missing_ok=True)

    def mark_failed(self, object_id: str, destination: str, error: str, *, in_doubt: bool = False) -> int:
        """Note a failed attempt (not synced: it only informs `spool list`); returns the attempt count.
        A failure status says the destination did not store the object (PS3.4 B.2.3), so the attempt
        marker goes: the object is not in doubt. With ``in_doubt`` (the association ended before the
        answer: it may have arrived) the attempt marker stays."""
        if not in_doubt:
            (self.objects / f"{object_id}.{destination}.sending").unlink(missing_ok=True)
        path = self.objects / f"{object_id}.{destination}.fail"
        attempts = 1
        try:
            attempts += int(json.loads(path.read_text()).get("attempts", 0))
        except (OSError, ValueError, AttributeError):
            pass
        if (self.objects / f"{object_id}.json").exists():
            path.write_text(json.dumps({"attempts": attempts, "error": error, "at": time.time()}))
        return attempts

    def finish_if_done(self, meta: SpooledMeta) -> bool:
        """Remove (or keep in sent/) an object every destination has; True when it was done."""
        with self._lock:
            if len(self.sent_to(meta.id, meta.destinations)) < len(set(meta.destinations)):
                return False
            if self.retention == "keep":
                for suffix in (".dcm", ".json"):
                    source = self.objects / f"{meta.id}{suffix}"
                    if source.exists():
                        os.replace(source, self.sent_dir / source.name)
            # Its files by name, without listing the folder: the .dcm first, so that a crash midway
            # leaves the .json and its markers, which `open` and `waiting` finish, never a .dcm no
            # one owns. Markers of a destination no longer configured go at the next rescan.
            self._let_go(self.objects / f"{meta.id}.dcm")
            (self.objects / f"{meta.id}.json").unlink(missing_ok=True)
            for destination in meta.destinations:
                for marker in ("sent", "sending", "fail"):
                    self._marker(meta.id, destination, marker).unlink(missing_ok=True)
            return True

    def withdraw(self, object_id: str) -> None:
        """Take back a committed object that was never acknowledged (its association ended before
        its C-STORE-RSP went out) nor handed to a forwarder: the modality sends it again. Its .json
        goes first, durably (after a crash it is not forwarded either), then its file, to the pool
        of spent files like a forwarded object's."""
        (self.objects / f"{object_id}.json").unlink(missing_ok=True)
        self.folder_sync.sync()
        self._let_go(self.objects / f"{object_id}.dcm")

    def _let_go(self, spent: Path) -> None:
        """A spent object file: to the pool of spent files (`spend`), else deleted."""
        if not self.spend(spent):
            spent.unlink(missing_ok=True)

    def remove(self, object_id: str) -> None:
        """Remove a queued object and its state files; the .json first, so a crash midway leaves
        files the next rescan removes."""
        (self.objects / f"{object_id}.json").unlink(missing_ok=True)
        for path in self.objects.glob(f"{object_id}.*"):
            path.unlink(missing_ok=True)

    # --- what `pacsguard gateway spool` shows -----------------------------------------------------------

    def entries(self, configured: Collection[str] | None = None) -> Iterator[SpoolEntry]:
        """Queued, quarantined and kept objects, oldest first. Given the route's ``configured``
        destination names, a queued object's pending destinations outside them are named in
        `SpoolEntry.unconfigured`."""
        for folder, state in ((self.objects, "queued"), (self.quarantine_dir, "quarantined"), (self.sent_dir, "sent")):
            if not folder.is_dir():
                continue
            for meta_path in sorted(folder.glob("*.json")):
                entry = self._entry(folder, state, meta_path)
                if entry is not None:
                    if configured is not None:
                        entry.unconfigured = [d for d in entry.pending if d not in configured]
                    yield entry

    def _entry(self, folder: Path, state: str, meta_path: Path) -> SpoolEntry | None:
        if state == "quarantined":
            if not meta_path.name.endswith(".manifest.json"):
                return None
            object_id = meta_path.name.removesuffix(".manifest.json")
            try:
                manifest = json.loads(meta_path.read_text())
                kept = SpooledMeta.from_json(manifest["object"], folder / f"{object_id}.dcm")
            except (OSError, ValueError, TypeError, KeyError):
                return None
            return SpoolEntry(kept, state, folder / f"{object_id}.dcm", manifest=manifest)
        found = self.read_meta(meta_path.stem, folder)
        if found is None:
            return self._damaged_entry(folder, state, meta_path.stem)
        entry = SpoolEntry(found, state, folder / f"{found.id}.dcm")
        if state == "queued":
            entry.sent = self.sent_to(found.id)
            if set(entry.sent) < set(found.destinations) and (
                    missing := self.file_damage(found.id, size=found.bytes)):
                # Not an object being finished (every destination has that one): a file gone.
                entry.state, entry.damage = "damaged", missing
                return entry
            entry.in_doubt = self.in_doubt(found.id, found.destinations)
            for fail in self.objects.glob(f"{found.id}.*.fail"):
                try:
                    entry.failures[fail.name[len(found.id) + 1:-len(".fail")]] = json.loads(fail.read_text())
                except (OSError, ValueError):
                    continue
            for destination in entry.pending:  # a destination that failed as a whole fails each object
                if destination not in entry.failures and (failed := self.destination_failure(destination)):
                    entry.failures[destination] = failed
        else:
            entry.sent = list(found.destinations)
        return entry

    def _damaged_entry(self, folder: Path, state: str, object_id: str) -> SpoolEntry | None:
        """An object whose ID.json cannot be read: shown (state "damaged", with why) so that it can
        be purged, not hidden; only in objects/ (an object in sent/ has been forwarded already)."""
        damage = self.meta_damage(object_id, folder)
        if state != "queued" or not damage:
            return None
        path = folder / f"{object_id}.dcm"
        try:
            st = path.stat()
            size, received = st.st_size, st.st_mtime
        except OSError:
            size, received = 0, 0.0
        obj = ReceivedObject(path=path, sop_class_uid="", sop_instance_uid="", transfer_syntax_uid="", calling_ae="",
                             called_ae="", peer_host="", route="")
        meta = SpooledMeta(id=object_id, object=obj, received=received, bytes=size, destinations=[])
        return SpoolEntry(meta, "damaged", path, damage=damage)

    def find(self, object_id: str) -> SpoolEntry | None:
        return next((e for e in self.entries() if e.meta.id == object_id), None)

    def purge(self, entry: SpoolEntry) -> None:
        """Delete one object for good (queued, damaged, quarantined or kept)."""
        if entry.state in ("queued", "damaged"):
            self.remove(entry.meta.id)
        elif entry.state == "quarantined":
            (self.quarantine_dir / f"{entry.meta.id}.manifest.json").unlink(missing_ok=True)
            entry.path.unlink(missing_ok=True)
        else:
            (self.sent_dir / f"{entry.meta.id}.json").unlink(missing_ok=True)
            entry.path.unlink(missing_ok=True)

    def request_retry(self) -> None:
        """Ask every forwarder to try its destination now: a new token in ``retry`` (written whole,
        then renamed over the old), which each forwarder compares with the last it saw. Nothing
        deletes it, so one request reaches every destination (docs/gateway.md)."""
        token = self.root / f"retry.{uuid4().hex[:8]}.tmp"
        try:
            token.write_text(f"{time.time_ns()}-{uuid4().hex}\n")
            os.replace(token, self.root / "retry")
        except OSError:
            with contextlib.suppress(OSError):  # a full spool keeps no half-written request behind
                token.unlink()
            raise

    def retry_token(self) -> str:
        """The last retry request's token ("" when there is none or it cannot be read: a spool
        turned read-only or unreadable for a moment is no request, and no error)."""
        try:
            return (self.root / "retry").read_text()
        except OSError:
            return ""

    # --- a destination's failure as a whole ---------------------------------------------------------

    def _destination_state(self, destination: str) -> Path:
        return self.root / "destinations" / f"{destination}.json"

    def mark_destination_failed(self, destination: str, error: str) -> int:
        """Note that ``destination`` could not be reached or refused the association (informative:
        `spool list` shows it for each object waiting for it); returns the failures in a row."""
        path = self._destination_state(destination)
        attempts = 1 + int((self.destination_failure(destination) or {}).get("attempts", 0))
        path.parent.mkdir(exist_ok=True, mode=0o700)
        path.write_text(json.dumps({"attempts": attempts, "error": error, "at": time.time(), "destination": True}))
        return attempts

    def destination_failure(self, destination: str) -> dict[str, Any] | None:
        try:
            found = json.loads(self._destination_state(destination).read_text())
        except (OSError, ValueError):
            return None
        return found if isinstance(found, dict) else None

    def clear_destination_failure(self, destination: str) -> None:
        self._destination_state(destination).unlink(missing_ok=True)

    def usage(self) -> Usage:
        """What the spool's objects take on its file system: those waiting in objects/ and those
        an object check set aside in quarantine/ (both fill the same disk: `spool.high_water_mib`
        counts both)."""
        waiting = _files_size(self.objects.glob("*.dcm"))
        quarantined = _files_size(self.quarantine_dir.glob("*.dcm"))
        return Usage(*waiting, *quarantined)


@dataclass(frozen=True, slots=True)
class Usage:
    """Bytes and objects of the spool (`Spool.usage`)."""

    waiting_bytes: int
    waiting: int
    quarantined_bytes: int = 0
    quarantined: int = 0

    @property
    def bytes(self) -> int:
        return self.waiting_bytes + self.quarantined_bytes

    @property
    def objects(self) -> int:
        return self.waiting + self.quarantined


def _files_size(paths: Iterable[Path]) -> tuple[int, int]:
    """Total size and count of the files in ``paths`` (one removed meanwhile is not counted)."""
    total = count = 0
    for path in paths:
        try:
            total += path.stat().st_size
        except FileNotFoundError:
            continue
        count += 1
    return total, count


def copy_synced(source: Path, target: Path) -> None:
    """Copy a file durably (a check's replacement file on another file system)."""
    with source.open("rb") as src, target.open("xb") as dst:
        shutil.copyfileobj(src, dst, 1024 * 1024)
        dst.flush()
        os.fsync(dst.fileno())


def _open_spent(path: Path) -> int | None:
    """Open a spent file taken from ``free/`` for overwriting, or None (the entry removed) when it
    is not a plain file of its own: a symbolic link would have the object, patient data, written
    wherever it points, over whatever is there, and a hard link into a file that shares its
    blocks; a folder cannot be written. None of these is made by pacsguard (the folder is 0700):
    whatever put it there, the object goes to a new file instead."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except OSError:  # ELOOP: a symbolic link; EISDIR: a folder
        _remove_file(path)
        return None
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
        return fd
    os.close(fd)
    _remove_file(path)
    return None


def _remove_file(path: Path) -> None:
    """Remove a leftover name of the spool's private folders: a file or link (never what a link
    points to); a folder is left, and said (pacsguard makes none there; its contents may be
    someone's)."""
    try:
        path.unlink(missing_ok=True)
    except IsADirectoryError:
        log.warning("spool: %s is a folder, not a spooled file; left as it is", path)
    except PermissionError as exc:  # unlink(2) of a folder is EISDIR on Linux, EPERM elsewhere
        if not path.is_dir():
            raise
        log.warning("spool: %s is a folder, not a spooled file; left as it is (%s)", path, exc)
