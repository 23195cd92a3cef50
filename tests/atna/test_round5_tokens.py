"""Codes are xs:token values (PS3.15 A.5.1's schema; XSD 3.3.3): a sender's EventID csd-code
" 110110 " was stored as atna.audit.other (an outside fixer's note, round 5). Dates given with an
offset that leaves the years 1-9999 in UTC are a usage error, not exit 70."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from atna_corpus import LEGACY_RFC3881, every_event_id

from pacsguard.atna.message.dicom_xml import read


def test_a_code_with_spaces_around_it_is_the_code() -> None:
    xml = every_event_id()["110110"]
    padded = xml.replace(b'csd-code="110110"', b'csd-code=" 110110 "', 1)
    assert padded != xml
    assert read(padded).fields["event_id"]["code"] == "110110"
    legacy = LEGACY_RFC3881.replace(b'code="110114"', b'code="\t110114\n"')
    assert read(legacy).fields["event_id"]["code"] == "110114"


def test_an_offset_past_the_years_a_datetime_holds_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pacsguard.cli", "events", "search", "--store",
                           str(tmp_path / "none.db"), "--since", "0001-01-01T00:00:00+05:00"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "outside the years 1-9999" in done.stderr, (done.returncode, done.stderr)
