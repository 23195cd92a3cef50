"""`pacsguard deid keygen`, `pacsguard deid IN... --out DIR` (manifest, exit 1 when anything is
withheld, --jobs) and `pacsguard deid explain` (the what-if: writes nothing)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from deid_helpers import pydicom_files

from pacsguard.deid.files import read_whole


def _pacsguard(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacsguard.cli", *args], capture_output=True, text=True,
                          timeout=240, env={**os.environ, "COLUMNS": "200", **(env or {})})


def _corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "SC_rgb_small_odd.dcm"):
        shutil.copy(next(p for p in pydicom_files() if p.name == name), folder / name)
    (folder / "notes.txt").write_text("not DICOM")
    return folder


def test_keygen_then_run_writes_outputs_and_a_manifest(tmp_path: Path) -> None:
    key = tmp_path / "deid.key"
    made = _pacsguard("deid", "keygen", str(key))
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    secret = key.read_text().strip()
    assert secret not in made.stdout and "sha256:" in made.stdout
    assert _pacsguard("deid", "keygen", str(key)).returncode == 2  # never overwritten

    out = tmp_path / "out"
    run = _pacsguard("deid", str(_corpus(tmp_path)), "--out", str(out), "--key-file", str(key), "--jobs", "2")
    assert run.returncode == 1, run.stderr  # the SC image and the text file were withheld
    assert secret not in run.stdout + run.stderr
    records = json.loads((tmp_path / "out.manifest.json").read_text())  # beside out/, never in it
    assert sorted(p.suffix for p in out.iterdir()) == [".dcm"] * 3
    by_name = {Path(r["source"]).name: r for r in records}
    assert {n: r["status"] for n, r in by_name.items()} == {
        "CT_small.dcm": "written", "MR_small.dcm": "written", "rtplan.dcm": "written",
        "SC_rgb_small_odd.dcm": "withheld", "notes.txt": "withheld"}
    assert all(r["key_fingerprint"].startswith("sha256:") and r["edition"] == "2026c" for r in records)
    written = sorted(out.glob("*.dcm"))
    assert len(written) == 3
    for path in written:
        ds = read_whole(path)
        assert path.name == f"{ds.SOPInstanceUID}.dcm" and ds.SOPInstanceUID.startswith("2.25.")

    again = tmp_path / "again"
    run = _pacsguard("deid", str(tmp_path / "in" / "CT_small.dcm"), "--out", str(again),
                     "--manifest", str(tmp_path / "m.csv"), env={"PACSGUARD_DEID_KEY": secret})
    assert run.returncode == 0, run.stderr
    assert [p.name for p in again.glob("*.dcm")] == [by_name["CT_small.dcm"]["output"].rsplit("/", 1)[1]]
    rows = list(csv.DictReader((tmp_path / "m.csv").open()))
    assert rows[0]["status"] == "written" and int(rows[0]["n_uid"]) > 0


def test_run_without_a_key_is_a_usage_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PACSGUARD_DEID_KEY"}
    proc = subprocess.run([sys.executable, "-m", "pacsguard.cli", "deid", str(tmp_path), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "keygen" in proc.stderr


def test_explain_names_the_row_and_option_and_writes_nothing(tmp_path: Path) -> None:
    source = tmp_path / "ct.dcm"
    shutil.copy(next(p for p in pydicom_files() if p.name == "CT_small.dcm"), source)
    before = source.read_bytes()
    proc = _pacsguard("deid", "explain", str(source), "--option", "retain-longitudinal-full-dates")
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if "(0008,0020)" in line)
    assert "Study Date" in line and "retain-longitudinal-full-dates" in line and "keep" in line
    line = next(line for line in proc.stdout.splitlines() if "(0010,0010)" in line)
    assert "E.1-1 (0010,0010) basic" in line
    assert "pixels:" in proc.stdout
    assert source.read_bytes() == before and sorted(tmp_path.iterdir()) == [source]
