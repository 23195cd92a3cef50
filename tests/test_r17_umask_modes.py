"""Outside round 17 (E): under umask 0000 (a shell's or a container's, outside the unit's
UMask=0027), the store-and-forward spool's parent folders came out 0777 (another local user could
rename objects/ and plant objects to be forwarded), the journal's folder 0777, and the demo PACS's
seed folders and objects 0777/0666, though docs/store.md gives 0700 and 0600."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacsguard.demo.seed import seed_storage
from pacsguard.gateway.store_forward.spool import Spool
from pacsguard.runtime.outputs import open_journal
from store_helpers import new_store


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_the_spools_folders_are_private_whatever_the_umask(tmp_path: Path, open_umask: None) -> None:
    root = tmp_path / "var" / "spool" / "sf"
    spool = Spool(root)
    spool.open()
    try:
        for folder in (tmp_path / "var", tmp_path / "var" / "spool", root, root / "objects", root / "tmp"):
            assert mode(folder) == 0o700, (folder, oct(mode(folder)))
    finally:
        spool.close()


def test_the_journals_folder_is_private_whatever_the_umask(tmp_path: Path, open_umask: None) -> None:
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    try:
        journal, held = open_journal(store, tmp_path / "state" / "journal" / "pacsguard.journal")
        assert journal is not None and held == []
        journal.close()
        assert mode(tmp_path / "state") == 0o700 and mode(tmp_path / "state" / "journal") == 0o700
    finally:
        store.close()


def test_the_demo_seed_is_private_whatever_the_umask(tmp_path: Path, open_umask: None) -> None:
    written = seed_storage(tmp_path / "demo")
    assert written
    for path in written:
        assert mode(path) == 0o600, (path, oct(mode(path)))
        assert mode(path.parent) == 0o700 and mode(tmp_path / "demo") == 0o700
