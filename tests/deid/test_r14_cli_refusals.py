"""Outside round 14 (D4-D6): what `pacsguard deid` says when it refuses to start.
- incompatible or refused --option choices printed pydantic's report; now one line naming --option;
- a bad --out or key file gave Python's exception text (Errno 17 File exists, UnicodeDecodeError);
  now the option, the path and the reason in words, exit 2;
- an --out folder that cannot be written was found only after every input was processed; now the
  run is refused before any work."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from deid_helpers import pydicom_files
from typer.testing import CliRunner

from tmpfs_helpers import small_tmpfs


def _pacsguard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacsguard.cli", *args], capture_output=True, text=True,
                          timeout=240, env={**os.environ, "COLUMNS": "300"})


@pytest.fixture()
def ct(tmp_path: Path) -> Path:
    path = tmp_path / "one.dcm"
    shutil.copy(next(p for p in pydicom_files() if p.name == "CT_small.dcm"), path)
    return path


@pytest.fixture()
def key(tmp_path: Path) -> Path:
    path = tmp_path / "deid.key"
    assert _pacsguard("deid", "keygen", str(path)).returncode == 0
    return path


@pytest.mark.parametrize("command", ["run", "explain"])
def test_options_chosen_together_are_one_line(tmp_path: Path, ct: Path, key: Path, command: str) -> None:
    both = ["--option", "retain-longitudinal-full-dates", "--option", "retain-longitudinal-modified-dates"]
    args = ["deid", "run", str(ct), "--out", str(tmp_path / "out"), "--key-file", str(key)] if command == "run" \
        else ["deid", "explain", str(ct)]
    done = _pacsguard(*args, *both)
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: --option: retain-longitudinal-full-dates and "
                                   "retain-longitudinal-modified-dates cannot be chosen together")
    refused = _pacsguard(*args, "--option", "clean-recognizable-visual-features")
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: --option: clean-recognizable-visual-features")
    assert len(refused.stderr.strip().splitlines()) == 1 and "pydantic" not in refused.stderr
    assert not (tmp_path / "out").exists()


def test_an_out_that_is_a_file(tmp_path: Path, ct: Path, key: Path) -> None:
    done = _pacsguard("deid", str(ct), "--out", str(ct), "--key-file", str(key))
    assert done.returncode == 2
    assert done.stderr.strip().startswith(f"error: --out {ct}: is a file, not a folder")
    inside = _pacsguard("deid", str(ct), "--out", str(ct / "x"), "--key-file", str(key))
    assert inside.returncode == 2
    assert inside.stderr.strip().startswith(f"error: --out {ct / 'x'}: cannot create the folder (")
    assert "Errno" not in done.stderr + inside.stderr


def test_an_out_that_cannot_be_created(ct: Path, key: Path) -> None:
    done = _pacsguard("deid", str(ct), "--out", "/proc/pacsguard-x", "--key-file", str(key))
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: --out /proc/pacsguard-x: cannot create the folder (")
    assert "Errno" not in done.stderr


def test_a_dicom_file_as_key_file(tmp_path: Path, ct: Path) -> None:
    done = _pacsguard("deid", str(ct), "--out", str(tmp_path / "out"), "--key-file", str(ct))
    assert done.returncode == 2
    assert done.stderr.strip().startswith(f"error: --key-file {ct}: not a pacsguard key file (")
    assert "UnicodeDecodeError" not in done.stderr and not (tmp_path / "out").exists()


def test_an_out_that_cannot_be_written_is_refused_before_any_work(tmp_path: Path, ct: Path, key: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder that cannot be written (as root every folder can: the refusal is simulated where the
    check creates its file) stops the run before any input is read."""
    import tempfile

    from pacsguard.cli.main import app
    from pacsguard.deid import files

    def refuse(*args: object, **kwargs: object) -> tuple[int, str]:
        raise PermissionError(13, "Permission denied")

    read: list[Path] = []
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.setattr(files, "read_whole", lambda path, *a: read.append(path))
    out = tmp_path / "out"
    done = CliRunner().invoke(app, ["deid", str(ct), "--out", str(out), "--key-file", str(key)])
    assert done.exit_code == 2
    assert f"--out {out}: cannot write in the folder (Permission denied)" in done.output.replace("\n", "")
    assert read == [] and not list(out.iterdir())


def test_a_read_only_out_folder(tmp_path: Path, ct: Path, key: Path) -> None:
    """A folder on a file system mounted read-only: refused before any work, as root too."""
    with small_tmpfs(tmp_path / "ro", "1m") as out:
        remounted = subprocess.run(["mount", "-o", "remount,ro", str(out)], capture_output=True, text=True)
        assert remounted.returncode == 0, remounted.stderr
        done = _pacsguard("deid", str(ct), "--out", str(out), "--key-file", str(key))
    assert done.returncode == 2, done.stderr
    assert f"error: --out {out}: cannot write in the folder (Read-only file system)" in done.stderr, done.stderr
