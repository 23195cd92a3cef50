"""Outside round 17 (E): files and folders owned by someone else, as a hospital's administrator
meets them (`sudo pacsguard init` before the service user ran, a folder left root's). `serve` said
"[Errno 13] Permission denied: '.../pacsguard.db.journal'" and `init` the same of the store: no word
of whose the file or folder is, or who asked. Now one line says both, and what to do.

The tests run as root; root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (setpriv) is refused
by file modes like any other user."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from terminal import PACSGUARD

NO_DAC = ["--bounding-set=-dac_override,-dac_read_search,-fowner"]


def _setpriv() -> str:
    found = shutil.which("setpriv")
    if found is None:
        pytest.fail("setpriv is missing: run `apt-get install -y util-linux`")
    return found


def _without_dac(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_setpriv(), *NO_DAC, *PACSGUARD, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr and "[Errno" not in done.stderr, done.stderr
    return lines[0]


def test_serve_names_the_owner_of_a_journal_it_may_not_open(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    done = subprocess.run([*PACSGUARD, "init"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    journal = tmp_path / "var" / "pacsguard.db.journal"
    journal.touch()
    os.chown(journal, nobody.pw_uid, nobody.pw_gid)
    journal.chmod(0o600)
    line = _one_line(_without_dac("serve", cwd=tmp_path))
    assert str(journal) in line and "Permission denied" in line, line
    assert "nobody:" in line and "0600" in line and "runs as root:" in line, line


def test_init_names_the_folder_that_will_not_take_the_store(tmp_path: Path) -> None:
    (tmp_path / "pacsguard.yaml").write_text("store:\n  url: state/pacsguard.db\n")
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o555)  # left by a package or an administrator: not writable, not even by its owner
    line = _one_line(_without_dac("init", "-c", "pacsguard.yaml", cwd=tmp_path))
    assert str(state / "pacsguard.db") in line and "Permission denied" in line, line
    assert f"folder {state} is root:" in line and "0555" in line, line


def test_a_store_file_of_another_user_is_named_with_its_owner(tmp_path: Path) -> None:
    """SQLite said only "unable to open database file" of a store another user owns."""
    nobody = pwd.getpwnam("nobody")
    done = subprocess.run([*PACSGUARD, "init"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    store = tmp_path / "var" / "pacsguard.db"
    os.chown(store, nobody.pw_uid, nobody.pw_gid)
    store.chmod(0o600)
    line = _one_line(_without_dac("events", "search", "--store", str(store), cwd=tmp_path))
    assert str(store) in line and "unable to open database file" in line, line
    assert "the file is nobody:" in line and "0600" in line and "runs as root:" in line, line
