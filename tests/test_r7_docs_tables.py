"""Every table in the administrator's docs is readable at 80 columns (the project's rule for
docs/ and the README; round 7 found the HL7 table of docs/deid.md and older tables of
docs/PERFORMANCE.md wider)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_table_line_fits_80_columns(page: Path) -> None:
    wide = [(number, len(line)) for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
            if line.startswith("|") and len(line) > 80]
    assert not wide, f"{page.name}: table lines wider than 80 columns (line, width): {wide[:10]}"
