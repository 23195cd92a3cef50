"""Outside round 7 (issue 20): `pacsguard deid run` as an administrator runs it twice.
- --out inside an input folder (`deid run export --out export/anon`): the second run took the
  first run's outputs for inputs, wrote them again under unrelated UIDs beside the first copies
  (two objects per image, dates removed twice) and withheld the manifest as not DICOM (exit 1);
  what a run writes is no input now, and an --out that is itself an input folder is refused;
- a key file others can read (keygen writes 0600; a copy made with cp and a umask of 022 is 0644)
  is named with a warning on standard error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from deid_helpers import pydicom_files


def _pacsguard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacsguard.cli", *args], capture_output=True, text=True,
                          timeout=240, env={**os.environ, "COLUMNS": "200"})


def _export(tmp_path: Path) -> Path:
    folder = tmp_path / "export"
    folder.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(next(p for p in pydicom_files() if p.name == name), folder / name)
    return folder


def _key(tmp_path: Path) -> Path:
    key = tmp_path / "keys" / "deid.key"
    made = _pacsguard("deid", "keygen", str(key))
    assert made.returncode == 0, made.stderr
    return key


def test_a_second_run_into_a_folder_inside_the_input_adds_nothing(tmp_path: Path) -> None:
    export, key = _export(tmp_path), _key(tmp_path)
    out = export / "anon"
    first = _pacsguard("deid", "run", str(export), "--out", str(out), "--key-file", str(key))
    assert first.returncode == 0, first.stderr
    written = sorted(p.name for p in out.glob("*.dcm"))
    assert len(written) == 2
    second = _pacsguard("deid", "run", str(export), "--out", str(out), "--key-file", str(key))
    assert second.returncode == 0, second.stderr
    assert sorted(p.name for p in out.glob("*.dcm")) == written
    records = json.loads((export / "anon.manifest.json").read_text())  # beside out, in the input: no input
    assert sorted(Path(r["source"]).name for r in records) == ["CT_small.dcm", "MR_small.dcm"]


def test_a_manifest_inside_the_input_is_no_input(tmp_path: Path) -> None:
    export, key = _export(tmp_path), _key(tmp_path)
    manifest = export / "run.json"
    for _ in range(2):
        run = _pacsguard("deid", "run", str(export), "--out", str(tmp_path / "out"), "--key-file", str(key),
                         "--manifest", str(manifest))
        assert run.returncode == 0, run.stderr
    assert sorted(Path(r["source"]).name for r in json.loads(manifest.read_text())) == ["CT_small.dcm",
                                                                                         "MR_small.dcm"]


def test_an_out_folder_that_is_an_input_is_refused(tmp_path: Path) -> None:
    export, key = _export(tmp_path), _key(tmp_path)
    before = sorted(p.name for p in export.iterdir())
    run = _pacsguard("deid", "run", str(export), "--out", str(tmp_path / "." / "export"), "--key-file", str(key))
    assert run.returncode == 2
    assert "--out" in run.stderr and "export" in run.stderr and "Traceback" not in run.stderr
    assert sorted(p.name for p in export.iterdir()) == before


def test_a_key_file_others_can_read_is_named(tmp_path: Path) -> None:
    export, key = _export(tmp_path), _key(tmp_path)
    private = _pacsguard("deid", "run", str(export), "--out", str(tmp_path / "a"), "--key-file", str(key))
    assert private.returncode == 0 and "warning" not in private.stderr
    key.chmod(0o644)
    shared = _pacsguard("deid", "run", str(export), "--out", str(tmp_path / "b"), "--key-file", str(key))
    assert shared.returncode == 0, shared.stderr
    assert f"warning: {key}" in shared.stderr and "0644" in shared.stderr
    assert key.read_text().strip() not in shared.stdout + shared.stderr
