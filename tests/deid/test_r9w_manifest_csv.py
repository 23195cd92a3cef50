"""Round 9, wave 2: a CSV manifest opened in a spreadsheet must not run what its cells hold.
Input paths come from the sender (a PACS export's folder named after a field the sender chose), and
a cell starting with =, +, -, @, a tab or a carriage return is read by Excel and LibreOffice Calc
as a formula (OWASP "CSV Injection"). Such cells now start with an apostrophe, as OWASP advises;
the JSON manifest keeps every value as it was. No spreadsheet is installed here, so the test
checks the OWASP rule itself on every cell."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from deid_helpers import pydicom_files

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
FOLDERS = ['=HYPERLINK(CHAR(104),"DOE")', "+1+cmd", "-2+3", "@SUM(A1)", "\t=1+1"]


def _pacsguard(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacsguard.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env={**os.environ, "COLUMNS": "200"})


def test_cells_that_would_start_a_formula_are_text_in_csv_and_exact_in_json(tmp_path: Path) -> None:
    ct = next(p for p in pydicom_files() if p.name == "CT_small.dcm")
    for folder in FOLDERS:
        (tmp_path / folder).mkdir()
        shutil.copy(ct, tmp_path / folder / "ct.dcm")
    (tmp_path / "-5.dcm").write_bytes(b"not dicom")  # withheld: its reason is a cell too
    assert _pacsguard("deid", "keygen", "k.key", cwd=tmp_path).returncode == 0
    inputs = [f"{f}/ct.dcm" for f in FOLDERS] + ["-5.dcm"]
    runs = {}
    for kind in ("csv", "json"):
        run = _pacsguard("deid", "run", "--out", f"anon-{kind}", "--manifest", f"m.{kind}",
                         "--key-file", "k.key", "--", *inputs, cwd=tmp_path)
        assert run.returncode in (0, 1) and "Traceback" not in run.stderr, run.stderr
        runs[kind] = run
    with (tmp_path / "m.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][:3] == ["source", "output", "status"]
    cells = [cell for row in rows[1:] for cell in row]
    assert cells and not [c for c in cells if c.startswith(FORMULA_START)]
    sources = [row[0] for row in rows[1:]]
    assert sorted(sources) == sorted("'" + i if i.startswith(FORMULA_START) else i for i in inputs)
    # Counts and other plain cells are unchanged.
    assert all(row[2] in ("written", "withheld") for row in rows[1:])
    records = json.loads((tmp_path / "m.json").read_text())
    assert sorted(r["source"] for r in records) == sorted(inputs)
