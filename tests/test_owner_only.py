"""Files and folders that may hold patient data or keys are the owner's alone (0600/0700), even
under a umask of 022: the store and its -wal/-shm files, the ATNA outbound spool, the signing key and its folder, the
demo PACS's storage."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import examples
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from pacsguard.demo.scp import DemoPACS
from pacsguard.store import EventStore
from pacsguard.store.keys import generate_key, public_path
from store_helpers import make_events


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_store_wal_shm_and_key_are_owner_only(tmp_path: Path, umask_022: None) -> None:
    key = generate_key(tmp_path / "var" / "keys" / "store.key")
    es = EventStore.open(str(tmp_path / "var" / "db" / "store.db"), key_path=key, create=True)
    try:
        es.append(make_events(5))
        db = tmp_path / "var" / "db" / "store.db"
        wal, shm = db.with_name("store.db-wal"), db.with_name("store.db-shm")
        assert wal.exists() and shm.exists()  # WAL mode keeps both while the store is open
        assert {p.name: _mode(p) for p in (db, wal, shm)} == {p.name: 0o600 for p in (db, wal, shm)}
        assert _mode(db.parent) == 0o700
    finally:
        es.close()
    assert _mode(key) == 0o600 and _mode(key.parent) == 0o700
    assert _mode(public_path(key)) == 0o644  # the public half is meant to be shared


def test_atna_outbound_spool_is_owner_only(tmp_path: Path, umask_022: None) -> None:
    from pacsguard.atna.outbound.spool import Spool

    db = tmp_path / "var" / "atna" / "outbound.db"
    spool = Spool(db)
    try:
        spool.add([b"<AuditMessage>patient 12345</AuditMessage>"])  # audit messages name patients
        wal, shm = db.with_name("outbound.db-wal"), db.with_name("outbound.db-shm")
        assert {p.name: _mode(p) for p in (db, wal, shm)} == {p.name: 0o600 for p in (db, wal, shm)}
        assert _mode(db.parent) == 0o700
    finally:
        spool.close()


def test_existing_folders_keep_their_mode(tmp_path: Path, umask_022: None) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    es = EventStore.open(str(shared / "store.db"), create=True)
    es.close()
    assert _mode(shared) == 0o755 and _mode(shared / "store.db") == 0o600


def test_demo_pacs_storage_is_owner_only(tmp_path: Path, umask_022: None) -> None:
    storage = tmp_path / "var" / "demo-pacs"
    pacs = DemoPACS("DEMOPACS", host="127.0.0.1", port=0, storage_dir=storage)
    pacs.start()
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", pacs.address[1], ae_title=pacs.ae_title)
        assert assoc.is_established
        ds = examples.ct
        assert assoc.send_c_store(ds).Status == 0x0000
        assoc.release()
    finally:
        pacs.stop()
    stored = list(storage.rglob("*.dcm"))
    assert len(stored) == 1
    assert _mode(storage) == 0o700 and _mode(stored[0].parent) == 0o700 and _mode(stored[0]) == 0o600


def test_a_lock_is_held_by_one_process_at_a_time_and_dropped_when_it_dies(tmp_path: Path, umask_022: None) -> None:
    import subprocess
    import sys
    import time

    from pacsguard.owner_only import hold_lock

    path = tmp_path / "locks" / "spool.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from pacsguard.owner_only import hold_lock; "
                               f"assert hold_lock(Path({str(path)!r})) is not None; print('held', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600  # created private, whatever the umask
        started = time.monotonic()
        assert hold_lock(path, wait=0.3) is None  # held elsewhere: waited, then gave up
        assert time.monotonic() - started >= 0.3
        holder.kill()  # SIGKILL: the kernel drops its lock, no stale file to clean up
        holder.wait(10)
        fd = hold_lock(path, wait=5)
        assert fd is not None
        os.close(fd)
    finally:
        holder.kill()
        holder.wait(10)


def test_a_private_file_that_cannot_be_written_whole_is_not_left_behind(tmp_path: Path) -> None:
    """A full disk: the cleaned copy, key or manifest write_private_file was making is removed, not
    left empty to be taken for a whole one (`scan --sanitize` left a 0-byte copy)."""
    import errno

    from pacsguard.owner_only import write_private_file
    from tmpfs_helpers import fill, small_tmpfs

    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        fill(disk)
        with pytest.raises(OSError) as raised:
            write_private_file(disk / "copies" / "IM1", bytes(64 * 1024))
        assert raised.value.errno == errno.ENOSPC
        assert list((disk / "copies").iterdir()) == []
