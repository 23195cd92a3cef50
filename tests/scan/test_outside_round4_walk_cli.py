"""Round 4 of the outside tests, the command line around the walk: a PATH that is pacsguard's own
--quarantine or --out folder, --out without --sanitize, cleaned copies that would collide, and a
move across file systems whose original cannot be removed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from scan_samples import elf_preamble, invoke, pe_in_preamble


@pytest.mark.parametrize("option", [("--quarantine",), ("--sanitize", "--out")])
def test_a_path_that_is_or_is_inside_an_own_folder_is_a_usage_error(tmp_path: Path, option: tuple[str, ...],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "incoming" / "S1").mkdir(parents=True)
    (tmp_path / "incoming" / "S1" / "IM1").write_bytes(pe_in_preamble())
    monkeypatch.chdir(tmp_path)
    for path, folder, where in (("incoming", "incoming", "is the"), ("incoming", "./incoming/", "is the"),
                                ("incoming/S1", "incoming", "is inside the")):
        code, out, err = invoke(path, *option, folder)
        assert code == 2 and out == "", (path, folder, err)
        assert f"{path} {where} {option[-1]} folder" in " ".join(err.split()), err
    assert (tmp_path / "incoming" / "S1" / "IM1").exists()


def test_out_without_sanitize_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "IM1").write_bytes(pe_in_preamble())
    code, _, err = invoke(tmp_path / "IM1", "--out", tmp_path / "clean")
    assert code == 2 and "--sanitize" in err
    assert not (tmp_path / "clean").exists()


def test_cleaned_copies_never_collide_and_a_copy_not_written_is_noted(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for folder, data in (("a", pe_in_preamble()), ("b", elf_preamble()), ("c", elf_preamble())):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "IM1").write_bytes(data)
    (tmp_path / "x" / "usb").mkdir(parents=True)
    (tmp_path / "y" / "usb").mkdir(parents=True)
    (tmp_path / "x" / "usb" / "IM1.dcm").write_bytes(elf_preamble())
    (tmp_path / "y" / "usb" / "IM1.dcm").write_bytes(elf_preamble())
    code, out, _ = invoke("--format", "json", "a/IM1", "b/IM1", "x/usb", "y/usb", "--sanitize", "--out", "clean")
    assert code == 1
    notes = {f["path"]: [n["rule"] for n in f["findings"] if n["rule"].startswith("sanitize")]
             for f in json.loads(out)["files"]}
    assert notes["a/IM1"] == notes["b/IM1"] == ["sanitize.written"]
    assert notes["x/usb/IM1.dcm"] == notes["y/usb/IM1.dcm"] == ["sanitize.written"]
    assert sorted(p.name for p in (tmp_path / "clean").iterdir()) == ["IM1", "IM1-2", "usb"]
    assert sorted(p.name for p in (tmp_path / "clean" / "usb").iterdir()) == ["IM1-2.dcm", "IM1.dcm"]
    # A copy left by an earlier scan is never overwritten: the report says the copy was not written.
    code, out, err = invoke("--format", "json", "c/IM1", "--sanitize", "--out", "clean")
    [entry] = json.loads(out)["files"]
    assert [n["rule"] for n in entry["findings"] if n["rule"].startswith("sanitize")] == ["sanitize.failed"]
    assert "exists" in err and (tmp_path / "clean" / "IM1").read_bytes() != elf_preamble()


def test_a_failed_move_across_file_systems_leaves_nothing_behind(tmp_path: Path) -> None:
    """The quarantine on tmpfs (/dev/shm), the source folder one the scan may not delete from (as a
    user without the capability to override permissions): the copy made is removed again."""
    if os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.fail("/dev/shm and the test folder are one file system here: nothing crosses")
    media = tmp_path / "media"
    media.mkdir()
    (media / "IM1").write_bytes(pe_in_preamble())
    folder = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="pacsguard-q."))
    prefix = ["setpriv", "--bounding-set=-dac_override,-fowner", "--"] if os.geteuid() == 0 else []
    media.chmod(0o555)
    try:
        for _ in range(2):
            done = subprocess.run([*prefix, sys.executable, "-m", "pacsguard.cli", "scan", "--format", "json",
                                   "--quarantine", str(folder), str(media)], capture_output=True, text=True,
                                  timeout=120)
            assert done.returncode == 1, done.stderr
            [entry] = json.loads(done.stdout)["files"]
            [failed] = [f for f in entry["findings"] if f["rule"] == "quarantine.failed"]
            assert "Permission denied" in failed["explanation"]
            assert list(folder.iterdir()) == []
        assert (media / "IM1").read_bytes() == pe_in_preamble()
    finally:
        media.chmod(0o755)
        shutil.rmtree(folder)
