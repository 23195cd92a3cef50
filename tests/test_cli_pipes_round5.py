"""Output that cannot be written (an outside tester, round 5): `ids rules list | true` and `audit
verify | true` exited 1 silently (click's and rich's answers to a broken pipe; for `audit verify`
1 means "found tampering"), and `config check > /dev/full` printed a traceback. docs/cli.md: 141
when the reader went away, nothing on stderr; one line and exit 2 on other errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pacsguard.store import EventStore
from pacsguard.store.keys import generate_key

CONFIG = """gateway:
  routes:
    - name: r1
      listen: {host: 127.0.0.1, port: 11112, ae_title: GW}
      upstream: {host: 127.0.0.2, port: 104, ae_title: PACS}
"""


def run(args: list[str], cwd: Path, stdout: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacsguard.cli", *args], cwd=cwd, stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=120)


def into_closed_pipe(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``args`` run with stdout on a pipe whose reader is gone (as `| true` leaves it)."""
    read, write = os.pipe()
    os.close(read)
    try:
        return run(args, cwd, write)
    finally:
        os.close(write)


@pytest.mark.parametrize("args", [["ids", "rules", "list"], ["events", "schema"], ["config", "check", "p.yaml"]],
                         ids=["plain-lines", "json", "rich"])
def test_a_reader_gone_away_is_exit_141_quietly(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "p.yaml").write_text(CONFIG)
    done = into_closed_pipe(args, tmp_path)
    assert done.returncode == 141 and done.stderr == "", (done.returncode, done.stderr)


@pytest.mark.parametrize("args", [["ids", "rules", "list"], ["config", "check", "p.yaml"]])
def test_a_full_disk_under_stdout_is_one_line_and_exit_2(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "p.yaml").write_text(CONFIG)
    with open("/dev/full", "w") as full:
        done = run(args, tmp_path, full.fileno())
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.strip() == "error: cannot write the output: No space left on device", done.stderr


@pytest.mark.parametrize("args", [["events", "schema"], ["ids", "rules", "list"]])
def test_a_file_on_a_full_file_system_under_stdout_is_named_the_output(tmp_path: Path, args: list[str]) -> None:
    """`> file` on a full disk (a tmpfs) said only "[Errno 28] No space left on device"."""
    from tmpfs_helpers import fill, small_tmpfs

    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        fill(disk)
        with (disk / "out").open("w") as out:
            done = run(args, tmp_path, out.fileno())
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert done.stderr.strip() == "error: cannot write the output: No space left on device", done.stderr


def test_piped_output_is_never_folded(tmp_path: Path) -> None:
    """docs/cli.md: piped, every row is one line with every value whole. `audit verify` cut a long
    store path at 80 columns, `gateway quarantine list` folded a row over several lines."""
    deep = tmp_path / ("a_rather_long_directory_name_for_the_audit_store_of_radiology" * 2) / "site-01"
    deep.mkdir(parents=True)
    (deep / "p.yaml").write_text(CONFIG)
    done = run(["config", "check", str(deep / "p.yaml")], tmp_path, subprocess.PIPE)
    assert done.returncode == 0 and f"{deep / 'p.yaml'}: OK" in done.stdout.splitlines()[0], done.stdout
    store = str(tmp_path / "s.db")
    generate_key(tmp_path / "k.key")
    EventStore.open(store, key_path=tmp_path / "k.key", create=True).close()
    reason = "scanner sends malformed objects, vendor ticket 4711 open; " * 3
    added = run(["gateway", "quarantine", "add", "CT7@127.0.0.77", "--reason", reason, "--store", store], tmp_path,
                subprocess.PIPE)
    assert added.returncode == 0, added.stderr
    listed = run(["gateway", "quarantine", "list", "--store", store], tmp_path, subprocess.PIPE)
    lines = listed.stdout.splitlines()
    assert len(lines) == 2 and lines[1].startswith("CT7@127.0.0.77") and reason.strip() in lines[1], lines


def test_a_piped_table_keeps_each_row_on_one_line() -> None:
    """`audit verify`'s findings table, piped, wrapped each finding over several lines and cut a
    quoted AE title in the middle."""
    import io

    from rich.table import Table

    from pacsguard.cli.common import new_console

    out = io.StringIO()
    table = Table("kind", "message")
    long = "calling AE title 'CT_" + "X" * 120 + "' was refused by policy.calling_ae_titles"
    table.add_row("modified", long)
    new_console(file=out).print(table)
    assert any(long in line for line in out.getvalue().splitlines()), out.getvalue()


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["gateway", "run", "--help"]])
def test_help_and_version_answer_a_closed_pipe_and_a_full_disk(tmp_path: Path, args: list[str]) -> None:
    """click writes them before any command's guard runs: `--version | true` exited 1 and
    `--help > /dev/full` printed a traceback (a re-probe, round 5)."""
    done = into_closed_pipe(args, tmp_path)
    assert done.returncode == 141 and done.stderr == "", (done.returncode, done.stderr)
    with open("/dev/full", "w") as full:
        done = run(args, tmp_path, full.fileno())
    assert done.returncode == 2 and "Traceback" not in done.stderr, (done.returncode, done.stderr)
    assert done.stderr.strip().splitlines() == ["error: cannot write the output: No space left on device"]


def test_deid_explain_into_a_closed_pipe_is_141(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    done = into_closed_pipe(["deid", "explain", get_testdata_file("CT_small.dcm")], tmp_path)
    assert done.returncode == 141 and done.stderr == "", (done.returncode, done.stderr)
