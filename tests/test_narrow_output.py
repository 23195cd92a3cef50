"""Issue 17, items 1 and 2: every table readable at 80 columns and whole when piped; `events tail -f`
one aligned stream. The main commands run under an 80-column pseudo-terminal and into a pipe."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pacsguard.cli.layout import Column, layout_for, render
from pacsguard.events import Event, Party
from pacsguard.store import EventStore
from peers.dcmtk import free_port
from terminal import PACSGUARD, in_terminal, piped

LONG_AE = "CT-SCANNER-ROOM4"  # 16 characters, the longest an AE title may be


def _who_touched(home: Path) -> None:
    es = EventStore.open(str(home / "var/pacsguard.db"), key_path=home / "var/keys/store-signing.key")
    es.append([Event(kind="dicom.dimse.c-store", component="gateway", actor=Party(LONG_AE, "10.20.30.40", 51234),
                     target=Party("PACSGUARD", "192.168.100.200", 11112), patient_ids=("DEMO001",),
                     message="C-STORE of 1 CT image for patient DEMO001 accepted and forwarded to the archive " * 2)])
    es.close()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    subprocess.run([*PACSGUARD, "init"], cwd=tmp_path, check=True, capture_output=True, timeout=60)
    _who_touched(tmp_path)
    return tmp_path


KEY_VALUES = ("DEMO001", f"{LONG_AE}@10.20.30.40:51234", "PACSGUARD@192.168.100.200:11112", "dicom.dimse.c-store")


@pytest.mark.parametrize("where", ["terminal", "pipe"])
def test_who_touched_patient_is_readable(home: Path, where: str) -> None:
    args = ("events", "search", "--patient", "DEMO001")
    out = in_terminal(*args, cwd=home) if where == "terminal" else piped(*args, cwd=home)
    for value in KEY_VALUES:
        assert value in out, out
    if where == "terminal":
        # A record per block: nothing is one character per line, every line fits the terminal.
        assert "patient: DEMO001" in out
        assert all(len(line) <= 80 for line in out.splitlines()), out
    else:
        # One header and one row: the whole message on the row, never folded.
        assert len(out.splitlines()) == 2 and "forwarded to the archive C-STORE" in out


def test_wide_terminal_keeps_a_table(home: Path) -> None:
    out = in_terminal("events", "search", "--patient", "DEMO001", cwd=home, columns=200)
    header = out.splitlines()[0]
    assert header.split() == ["#", "time", "(UTC)", "kind", "outcome", "actor", "target", "patient", "message"]
    assert all(len(line) <= 200 for line in out.splitlines()) and all(v in out for v in KEY_VALUES)


def test_rules_list_at_80_columns(home: Path) -> None:
    wide = in_terminal("ids", "rules", "list", cwd=home, columns=200)
    narrow = in_terminal("ids", "rules", "list", cwd=home)
    ids = re.findall(r"^(dicom-[a-z0-9-]+)\s", wide, re.M)
    assert len(ids) > 10
    assert all(f"id: {rule}" in narrow for rule in ids), narrow
    # Blocks of a few lines per rule, not a column per character (373 lines before).
    assert len(narrow.splitlines()) <= 4 * len(ids) + 2
    assert all(len(line) <= 80 for line in narrow.splitlines())


def test_serve_banner_at_80_columns(home: Path) -> None:
    config = home / "pacsguard.yaml"
    gw_port, demo_port = free_port(), free_port()
    config.write_text(config.read_text().replace("11112", str(gw_port)).replace("11113", str(demo_port))
                      + "sinks:\n  jsonl: {path: var/events.jsonl}\n")
    out = in_terminal("serve", cwd=home, until="is running", timeout=60)
    for value in (f"PACSGUARD@127.0.0.1:{gw_port}", f"DEMOPACS@127.0.0.1:{demo_port}", str(home / "var/pacsguard.db"),
                  str(config), str(home / "var/events.jsonl")):
        assert value in out, out


def test_tail_follow_is_one_stream(home: Path) -> None:
    proc = subprocess.Popen([*PACSGUARD, "events", "tail", "-f", "-n", "1", "--interval", "0.1"], cwd=home,
                            stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(2)
        for _ in range(2):
            _who_touched(home)
            time.sleep(0.5)
        time.sleep(1)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    lines = out.splitlines()
    assert sum(line.startswith("#") for line in lines) == 1, out  # one header, then the rows
    rows = [line for line in lines if "DEMO001" in line]
    assert len(rows) == 3, out
    # Aligned: the patient column starts at the same place on every row.
    assert len({row.index("DEMO001") for row in rows}) == 1, out


def test_layout_folds_only_free_text() -> None:
    columns = (Column("who"), Column("message", fold=True))
    rows = [["MOD@10.0.0.1:104", "word " * 30]]
    lines = render(columns, rows, 50)
    assert len(lines) > 2 and all(len(line) <= 50 for line in lines)
    assert all(line.startswith("MOD@10.0.0.1:104") or line.startswith(" " * 18) for line in lines[1:])
    assert render(columns, rows, None)[1].endswith("word")  # piped: one row, nothing folded
    assert layout_for(columns, 20, rows).widths is None  # too narrow for the key column and a fold: blocks


def test_help_loads_no_layout_dependency() -> None:
    # The layout is plain text: importing it must not bring rich in.
    code = "import sys, pacsguard.cli.layout; print('rich' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
