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


def test_audit_search_says_when_it_stopped_at_its_limit(tmp_path: Path) -> None:
    """`events search` says so since the re-probe; `audit search` shares its --limit and did not."""
    from atna_corpus import record

    from pacsguard.atna.ingest import Sender, frame_event
    from pacsguard.atna.message.build import to_xml
    from store_helpers import new_store

    sender = Sender("10.0.0.5", 50000, "tls", "octet-counting")
    target = str(tmp_path / "store.db")
    store, _ = new_store(target, tmp_path)
    store.append([frame_event(sender, b"<85>1 - vna1 audit - IHE+RFC-3881 - " + to_xml(record("110110")))
                  for _ in range(3)])
    store.close()

    def search(limit: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pacsguard.cli", "audit", "search", "--store", target,
                               "--limit", str(limit), "--format", "json"], capture_output=True, text=True, timeout=60)

    cut = search(2)
    assert cut.returncode == 0 and len(cut.stdout.splitlines()) == 2, cut
    assert "audit search: stopped at --limit 2 with more events left" in cut.stderr, cut.stderr
    whole = search(3)
    assert len(whole.stdout.splitlines()) == 3 and "stopped at --limit" not in whole.stderr, whole
