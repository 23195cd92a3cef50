"""Round 7b: the manifest of `pacsguard deid run` no longer ships with the data.
- It went to OUT/manifest.json by default, and it pairs every input path (a PACS export's
  DOE^JOHN/ folder) with the output it became: OUT sent as it was carried the very link
  de-identification removes. It now goes beside OUT (OUT.manifest.json), a --manifest inside OUT
  is refused (exit 2, naming the option), and the summary line says where it went.
- `--manifest` naming an input (`--manifest ct.dcm`) overwrote the original after the run had read
  it; one naming any other file that is not a manifest replaced it; one in a missing folder failed
  only after every output was written. All are refused now before anything is written."""

from __future__ import annotations

import csv
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from deid_helpers import pydicom_files


def _pacsguard(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacsguard.cli", *args], capture_output=True, text=True,
                          timeout=240, cwd=cwd, env={**os.environ, "COLUMNS": "200"})


@pytest.fixture
def export(tmp_path: Path) -> Path:
    """A PACS export whose folder names the patient, and a key beside it."""
    folder = tmp_path / "export" / "DOE^JOHN"
    folder.mkdir(parents=True)
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(next(p for p in pydicom_files() if p.name == name), folder / name)
    made = _pacsguard("deid", "keygen", str(tmp_path / "deid.key"))
    assert made.returncode == 0, made.stderr
    return folder


def _run(tmp_path: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return _pacsguard("deid", "run", *args, "--key-file", str(tmp_path / "deid.key"), cwd=cwd)


def test_the_manifest_goes_beside_out_and_the_summary_names_it(tmp_path: Path, export: Path) -> None:
    out = tmp_path / "send" / "anon"
    run = _run(tmp_path, str(export), "--out", str(out))
    assert run.returncode == 0, run.stderr
    # What leaves the hospital is OUT: the de-identified objects and nothing naming DOE^JOHN.
    assert sorted(p.suffix for p in out.iterdir()) == [".dcm", ".dcm"]
    assert not any("DOE" in p.read_bytes().decode("latin-1") for p in out.iterdir())
    manifest = tmp_path / "send" / "anon.manifest.json"
    records = json.loads(manifest.read_text())
    assert all("DOE^JOHN" in r["source"] and r["status"] == "written" for r in records)
    assert f"manifest {manifest}" in run.stderr.replace("\n", "")


def test_out_given_as_dot_puts_the_manifest_beside_the_real_folder(tmp_path: Path, export: Path) -> None:
    here = tmp_path / "anon"
    here.mkdir()
    run = _run(tmp_path, str(export), "--out", ".", cwd=here)
    assert run.returncode == 0, run.stderr
    assert len(json.loads((tmp_path / "anon.manifest.json").read_text())) == 2
    assert sorted(p.suffix for p in here.iterdir()) == [".dcm", ".dcm"]


@pytest.mark.parametrize("inside", ["anon/m.json", "anon/sub/m.csv", "elsewhere/../anon/m.json", "anon"])
def test_a_manifest_inside_out_is_refused(tmp_path: Path, export: Path, inside: str) -> None:
    (tmp_path / "elsewhere").mkdir()
    run = _run(tmp_path, str(export), "--out", "anon", "--manifest", inside, cwd=tmp_path)
    assert run.returncode == 2
    assert "--manifest" in run.stderr and "--out anon" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "anon").exists()  # refused before anything was written


def test_a_manifest_that_is_an_input_is_refused_and_the_original_kept(tmp_path: Path, export: Path) -> None:
    original = export / "CT_small.dcm"
    before = original.read_bytes()
    run = _run(tmp_path, str(original), "--out", str(tmp_path / "anon"), "--manifest", str(original))
    assert run.returncode == 2
    assert "--manifest" in run.stderr and "one of the inputs" in run.stderr
    assert original.read_bytes() == before and not (tmp_path / "anon").exists()


def test_a_manifest_over_a_file_that_is_no_manifest_is_refused(tmp_path: Path, export: Path) -> None:
    # Inside an input folder the file is left out of the inputs as the manifest, so the run would
    # have replaced an original it never read.
    original = export / "MR_small.dcm"
    before = original.read_bytes()
    run = _run(tmp_path, str(export), "--out", str(tmp_path / "anon"), "--manifest", str(original))
    assert run.returncode == 2
    assert f"--manifest {original}" in run.stderr and "not the manifest of an earlier run" in run.stderr
    assert original.read_bytes() == before and not (tmp_path / "anon").exists()


def test_an_earlier_manifest_is_replaced(tmp_path: Path, export: Path) -> None:
    for manifest in (tmp_path / "run.csv", tmp_path / "run.json"):
        for _ in range(2):
            run = _run(tmp_path, str(export), "--out", str(tmp_path / "anon"), "--manifest", str(manifest))
            assert run.returncode == 0, run.stderr
    rows = list(csv.DictReader((tmp_path / "run.csv").open()))
    assert len(rows) == 2 and len(json.loads((tmp_path / "run.json").read_text())) == 2


def test_a_manifest_in_a_missing_folder_is_refused_before_any_output(tmp_path: Path, export: Path) -> None:
    run = _run(tmp_path, str(export), "--out", str(tmp_path / "anon"), "--manifest", str(tmp_path / "no" / "m.json"))
    assert run.returncode == 2
    assert "--manifest" in run.stderr and f"no folder {tmp_path / 'no'}" in run.stderr
    assert not (tmp_path / "anon").exists()


def test_a_manifest_that_cannot_be_written_is_named_with_where_the_outputs_are(tmp_path: Path,
                                                                              export: Path) -> None:
    run = _run(tmp_path, str(export), "--out", str(tmp_path / "anon"), "--manifest", "/dev/full")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    said = run.stderr.replace("\n", "")
    assert "--manifest /dev/full: cannot write it" in said and f"are in {tmp_path / 'anon'}" in said


def test_an_older_versions_manifest_left_in_out_is_named(tmp_path: Path, export: Path) -> None:
    out = tmp_path / "anon"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps([{"source": str(export / "CT_small.dcm"), "output": "x",
                                                    "status": "written"}]))
    run = _run(tmp_path, str(export), "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert "warning" in run.stderr and f"{out / 'manifest.json'}" in run.stderr.replace("\n", "")


def test_is_manifest_tells_a_manifest_from_other_files(tmp_path: Path) -> None:
    from pacsguard.deid.manifest import FIELDS, is_manifest  # new in this round

    cases = {
        "empty.json": b"",
        "list.json": json.dumps([{"source": "a", "output": "", "status": "withheld"}]).encode(),
        "run.csv": (",".join(FIELDS) + "\r\n").encode(),
        "older.csv": b"source,output,status,reason\r\n",
        "dicom.json": b"\0" * 128 + b"DICM",
        "other.json": b'{"source": "a"}',
        "list-of-other.json": b'[{"name": "a"}]',
        "notes.csv": b"name,id\nDOE,123\n",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    assert {n for n in cases if is_manifest(tmp_path / n)} == {"empty.json", "list.json", "run.csv", "older.csv"}


@pytest.mark.parametrize("name", ["run.manifest.json", "run.manifest.csv"])
def test_the_manifest_is_readable_by_its_owner_only(tmp_path: Path, name: str) -> None:
    """It links input paths (often the patient's name) to the outputs: 0600, also when it replaces
    an earlier manifest that was readable by others (coordinator, round 7)."""
    from pacsguard.deid.manifest import write_manifest

    path = tmp_path / name
    path.write_text("")
    path.chmod(0o644)
    write_manifest(path, [])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.unlink()
    write_manifest(path, [])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_full_disk_names_each_file_it_withheld_and_leaves_no_cut_manifest(tmp_path: Path, export: Path) -> None:
    """OUT and its manifest on a full file system (a tmpfs): exit 2, each input named with the
    write that failed (before the manifest's own error), and no empty or cut manifest left to
    refuse the next run."""
    from tmpfs_helpers import fill, small_tmpfs

    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        fill(disk)
        run = _run(tmp_path, str(export), "--out", str(disk / "anon"))
        manifest = disk / "anon.manifest.json"
        left = manifest.exists()
    assert run.returncode == 2, run.stderr
    said = run.stderr.replace("\n", "")
    assert said.count("No space left on device") == 3, run.stderr  # two files, then the manifest
    assert "withheld" in said and "CT_small.dcm" in said and "MR_small.dcm" in said
    assert said.index("withheld") < said.index("--manifest")
    assert "Traceback" not in run.stderr
    assert not left, "a manifest cut short stays behind"
