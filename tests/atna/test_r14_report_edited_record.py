"""Outside round 14 (D3): `audit patient` signed a report that listed an event as proven whose
sealed record had been edited in the store (the events table's columns left alone), and exited 0;
`audit prove` of that report then failed ("not included in the signed tree"). The report maker
now checks each row as `prove` will, the inclusion proof against the checkpoint's root with the
leaf hash of the record the report carries (an event newer than the checkpoint: its stored leaf),
and refuses a damaged store by name (exit 2, the event named, its contents never echoed)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

from pacsguard.store import EventStore
from store_helpers import make_events, new_store
from test_cli import run

#: make_events(60): events 7 and 57 name PID0007.
PATIENT, EDITED = "PID0007", 7


def _store(tmp: Path, *, after: int = 0) -> tuple[Path, Path]:
    """60 events under a checkpoint (and ``after`` more past it); the store's path and its private key."""
    path = tmp / "store.db"
    es, key = new_store(str(path), tmp)
    es.append(make_events(60))
    es.checkpoint()
    es.close()  # signs what it holds
    if after:  # appended without the key: no checkpoint covers these
        es = EventStore.open(str(path))
        es.append(make_events(after, start=60))
        es.close()
    return path, key


def _rename_patient(path: Path, seq: int) -> None:
    """The tester's edit: the sealed record names another patient; the events row is left as it was."""
    conn = sqlite3.connect(path)
    try:
        changed = conn.execute(
            "UPDATE event_bodies SET body = replace(body, ?, ?) WHERE seq = ?",
            (f'"patient_ids":["{PATIENT}"]', '"patient_ids":["PID9999"]', seq)).rowcount
        conn.commit()
    finally:
        conn.close()
    assert changed == 1


def _no_record_text(text: str) -> None:
    for piece in ("PID9999", "component", "ünïcode", '{"event"'):
        assert piece not in text, text


def test_an_edited_record_under_the_checkpoint_is_refused_not_proven(tmp_path: Path) -> None:
    path, key = _store(tmp_path)
    _rename_patient(path, EDITED)
    for fmt in ("json", "table"):
        proc = run("audit", "patient", PATIENT, "--store", str(path), "--key", str(key), "--format", fmt,
                   cwd=tmp_path, check_code=2)
        assert proc.stdout == ""
        assert f"event #{EDITED}: its sealed record is not the one the tree holds: the store was edited" in proc.stderr
        assert "audit verify" in proc.stderr
        _no_record_text(proc.stderr)


def test_an_edited_record_newer_than_the_checkpoint_is_refused(tmp_path: Path) -> None:
    path, key = _store(tmp_path, after=10)  # event 67 names PID0017, past the checkpoint of 60
    conn = sqlite3.connect(path)
    conn.execute("UPDATE event_bodies SET body = replace(body, '\"n\":67', '\"n\":68') WHERE seq = 67")
    conn.commit()
    conn.close()
    proc = run("audit", "patient", "PID0017", "--store", str(path), "--key", str(key), "--no-checkpoint",
               "--format", "json", cwd=tmp_path, check_code=2)
    assert "event #67: its sealed record is not the one the tree holds" in proc.stderr
    assert "stored leaf" in proc.stderr
    _no_record_text(proc.stderr)


def test_a_report_of_an_unedited_store_still_proves(tmp_path: Path) -> None:
    path, key = _store(tmp_path, after=5)
    copy = tmp_path / "copy.db"
    shutil.copy(path, copy)
    proc = run("audit", "patient", PATIENT, "--store", str(copy), "--key", str(key), "--format", "json",
               cwd=tmp_path)
    report = json.loads(proc.stdout)
    assert report["matched"] == [7, 57] and report["unproven"] == []
    saved = tmp_path / "report.json"
    saved.write_text(proc.stdout)
    assert run("audit", "prove", str(saved), "--key", f"{key}.pub", cwd=tmp_path).stdout.startswith("OK")
    # An event newer than the checkpoint, listed unproven, passes its stored-leaf check as well.
    proc = run("audit", "patient", "PID0012", "--store", str(path), "--key", str(key), "--no-checkpoint",
               "--format", "json", cwd=tmp_path)
    assert json.loads(proc.stdout)["unproven"] == [62]


def test_the_patient_search_names_a_row_whose_record_names_another_patient(tmp_path: Path) -> None:
    path, key = _store(tmp_path)
    _rename_patient(path, EDITED)
    proc = run("events", "search", "--store", str(path), "--patient", PATIENT, cwd=tmp_path, check_code=2)
    assert f"events row #{EDITED}: the patient index gives it the patient searched for, its sealed record " \
           "does not name that patient" in proc.stderr
    _no_record_text(proc.stderr)
