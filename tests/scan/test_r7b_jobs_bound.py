"""After round 7: `--jobs N` took any N. Each worker process is about 47 MB (its imports and
compiled YARA rules) before it holds a file, so `--jobs 1000` asked for some 47 GB and more
workers than CPUs added memory and no speed. Now a value above MAX_JOBS is a usage error (exit
2) naming --jobs, and one above the CPUs this process may use is lowered to them, with a
warning."""

from __future__ import annotations

import json
import os
from pathlib import Path

from scan_samples import ct, pe_in_preamble
from typer.testing import CliRunner

from pacsguard.cli import main

MAX_JOBS = 64  # docs/scan.md; pacsguard.cli.scan.MAX_JOBS

CPUS = len(os.sched_getaffinity(0))


def scan(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main.app, ["scan", "--format", "json", *args])
    return result.exit_code, result.stdout, result.stderr


def test_jobs_above_the_maximum_are_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "IM1").write_bytes(ct())
    code, out, err = scan("--jobs", str(MAX_JOBS + 1), str(tmp_path))
    assert code == 2, (out, err)
    assert "--jobs" in err and str(MAX_JOBS) in err
    assert "internal error" not in err and not out


def test_jobs_above_the_cpus_are_lowered_to_them_and_the_scan_is_the_same(tmp_path: Path) -> None:
    (tmp_path / "IM1").write_bytes(ct())
    (tmp_path / "IM2").write_bytes(pe_in_preamble())
    code, out, err = scan("--jobs", str(CPUS + 3), str(tmp_path))
    assert code == 1, err
    assert f"--jobs {CPUS + 3} lowered to {CPUS}" in err
    files = {Path(f["path"]).name: [x["rule"] for x in f["findings"]] for f in json.loads(out)["files"]}
    assert "preamble.pe" in files["IM2"] and files.keys() == {"IM1", "IM2"}


def test_the_documented_maximum_is_the_code_s() -> None:
    from pacsguard.cli import scan as cli_scan

    assert cli_scan.MAX_JOBS == MAX_JOBS


def test_jobs_within_the_cpus_say_nothing(tmp_path: Path) -> None:
    (tmp_path / "IM1").write_bytes(ct())
    code, _, err = scan("--jobs", str(CPUS), str(tmp_path))
    assert code == 0 and "lowered" not in err, err
