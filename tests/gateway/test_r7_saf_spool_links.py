"""Store-and-forward, outside round 7 (issue 19): what is not a plain file in the spool's private
folders. A received object is written over a spent file from ``free/`` (reuse.py). A symbolic
link there was followed: the next object, patient data, was written wherever it pointed, over
what was there (a probe overwrote a file outside the spool with a CT), and the link went back to
``free/`` for the next one. A hard link shared its blocks with another file the same way. A
folder there made that object's reception fail and was left in ``tmp/``, where the next start's
clean-up failed on it (IsADirectoryError) and the route did not start.

Now only a plain file with one link is overwritten; anything else is removed from the pool (a
link, never what it points to) and the object gets a new file; a folder is left and said."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pacsguard.gateway.store_forward.spool import Spool

OBJECT = b"\0" * 128 + b"DICM" + b"PATIENT^DATA" * 100
VICTIM = b"an administrator's file outside the spool\n"


def spent(spool: Spool, name: str = "00000000000000000001-aaaaaaaa") -> Path:
    return spool.root / "free" / name


def write_object(spool: Spool) -> Path:
    """Receive one object as the route does: a file from `create`, written, closed."""
    fd, path = spool.create(spool.new_id())
    try:
        os.write(fd, OBJECT)
        os.ftruncate(fd, len(OBJECT))
    finally:
        os.close(fd)
    return path


@pytest.mark.parametrize("link", ["symbolic", "hard"])
def test_a_linked_file_in_free_at_start_is_never_written_through(tmp_path: Path, link: str) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(VICTIM)
    spool = Spool(tmp_path / "spool", reuse_mib=16)
    (spool.root / "free").mkdir(parents=True)
    if link == "symbolic":
        spent(spool).symlink_to(victim)
    else:
        os.link(victim, spent(spool))
    spool.open()
    try:
        path = write_object(spool)
        assert victim.read_bytes() == VICTIM
        assert not path.is_symlink() and path.read_bytes() == OBJECT and path.stat().st_nlink == 1
    finally:
        spool.close()


@pytest.mark.parametrize("link", ["symbolic", "hard"])
def test_a_spent_file_swapped_for_a_link_while_running_is_not_written_through(tmp_path: Path, link: str) -> None:
    """The pool knew a plain file by that name; a link took its place before the next object."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(VICTIM)
    spool = Spool(tmp_path / "spool", reuse_mib=16)
    spool.open()
    try:
        first = write_object(spool)
        assert spool.pool.put(first)  # forwarded: its file is spent
        (name,) = os.listdir(spool.root / "free")
        os.unlink(spent(spool, name))
        if link == "symbolic":
            spent(spool, name).symlink_to(victim)
        else:
            os.link(victim, spent(spool, name))
        path = write_object(spool)
        assert victim.read_bytes() == VICTIM
        assert not path.is_symlink() and path.read_bytes() == OBJECT and path.stat().st_nlink == 1
        assert not os.path.lexists(spent(spool, name))  # the link is gone from the pool, its target kept
        assert victim.exists()
    finally:
        spool.close()


def test_folders_in_free_and_tmp_neither_stop_the_start_nor_a_reception(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", reuse_mib=16)
    spool.open()
    spool.close()
    (spent(spool)).mkdir()
    (spool.root / "tmp" / "01-left.dcm").mkdir()  # IsADirectoryError at the next start
    (spool.root / "tmp" / "01-left.dcm" / "someone's").write_text("kept")
    again = Spool(tmp_path / "spool", reuse_mib=16)
    assert again.open() == []
    try:
        path = write_object(again)
        assert path.read_bytes() == OBJECT
        assert (again.root / "tmp" / "01-left.dcm" / "someone's").read_text() == "kept"
    finally:
        again.close()


@pytest.mark.peers
def test_objects_from_storescu_never_land_outside_the_spool(dcmtk, tmp_path: Path) -> None:
    """Through `pacsguard serve` and dcmtk's storescu: a link planted in free/ before the start.
    Every object is acknowledged and spooled in a file of its own; the linked file is untouched."""
    from test_r7_saf_reception import HOST, saf_route, start_gateway
    from test_store_forward import CALLING, fresh_ct, storescu_acknowledged

    victim = tmp_path / "victim.txt"
    victim.write_bytes(VICTIM)

    def plant(home: Path) -> None:
        free = home / "var" / "spool" / "sf" / "free"
        free.mkdir(parents=True)
        (free / "00000000000000000002-bbbbbbbb").symlink_to(victim)
        os.link(victim, free / "00000000000000000001-aaaaaaaa")

    gw = start_gateway(tmp_path / "gw", saf_route(), prepare=plant)
    try:
        files = fresh_ct(tmp_path / "ct", 3, kib=16)
        out = dcmtk.run("storescu", "-v", "-xe", "-aet", CALLING, "-aec", "PACSGUARD", HOST, str(gw.port("sf")),
                        *files, timeout=60)
        assert len(storescu_acknowledged(out.stdout + out.stderr, files)) == 3, out.stdout + out.stderr
    finally:
        gw.stop()
    assert victim.read_bytes() == VICTIM
    spooled = sorted((gw.home / "var" / "spool" / "sf" / "objects").glob("*.dcm"))
    assert len(spooled) == 3
    assert all(not p.is_symlink() and p.stat().st_nlink == 1 and p.read_bytes()[128:132] == b"DICM"
               for p in spooled)
