"""Outside round 8, area F: a patient report on PostgreSQL says what it says on SQLite."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from test_report import SENDER, audit

from pacsguard.atna.ingest import frame_event
from pacsguard.atna.report import patient_report, prove, to_csv
from pacsguard.events.model import Event, Party
from pacsguard.store.keys import load_private_key, load_public_key, public_path
from store_helpers import make_events, new_store

WHEN = datetime(2026, 12, 3, 23, 59, 59, 999999, tzinfo=timezone.utc)


def _made(target: str, tmp: Path) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    store, key = new_store(target, tmp)
    store.append(make_events(40))
    store.append([frame_event(SENDER, audit(e)) for e in ("110110", "110104", "110112", "110103")])
    store.append([Event(kind="dicom.dimse.c-find", component="gateway", patient_ids=("PID-0042",), time=WHEN,
                        actor=Party("\r=1+2", "10.1.0.9", user="<b>dr\u202ewho</b> \U0001f600"))])
    store.checkpoint()
    store.append([frame_event(SENDER, audit("110106"))])
    private, public = load_private_key(key), load_public_key(public_path(key))
    try:
        bare = patient_report(store, "PID-0042", key=private)
        cx = patient_report(store, "PID-0042^^^STMARY&1.2.840.99999.1&ISO", key=private)
        # The window's ends to the microsecond: [WHEN, WHEN + 1 us) holds #44 alone on both.
        edge = patient_report(store, "PID-0042", since=WHEN, until=WHEN + timedelta(microseconds=1), key=private)
    finally:
        store.close()
    assert [r["seq"] for r in edge["events"]] == [44]
    return bare, cx, [*prove(bare, public), *prove(cx, public), *prove(edge, public)]


def test_postgresql_and_sqlite_report_the_same_rows_and_proofs(tmp_path: Path, postgres_db_url: str) -> None:
    (tmp_path / "lite").mkdir()
    (tmp_path / "pg").mkdir()
    lite = _made(str(tmp_path / "lite" / "store.db"), tmp_path / "lite")
    pg = _made(postgres_db_url, tmp_path / "pg")
    assert lite[2] == pg[2] == []
    for a, b in zip(lite[:2], pg[:2], strict=True):
        assert [r["seq"] for r in a["events"]] == [r["seq"] for r in b["events"]] and a["events"]
        assert [_listed(r) for r in a["events"]] == [_listed(r) for r in b["events"]]
        assert a["matched"] == b["matched"] and a["unproven"] == b["unproven"]
        assert to_csv(a) == to_csv(b)


def _listed(row: dict[str, Any]) -> dict[str, Any]:
    """A row's fields, without its sealed record and proof: each record is chained to the one before
    it, and the other events of the two stores were made at different times."""
    return {k: v for k, v in row.items() if k not in ("sealed", "proof")}


def test_a_patient_with_more_events_than_a_statement_takes_parameters(postgres_db_url: str, tmp_path: Path) -> None:
    """PostgreSQL's protocol carries at most 65,535 parameters a statement (SQLite builds have their
    limit too): the proofs read the patient's records a second time with one parameter per event,
    and a patient with 66,000 events made `audit patient` fail (psycopg.OperationalError). Each of
    them is now listed with its proof."""
    from pacsguard.store.merkle import leaf_hash, verify_inclusion

    store, key = new_store(postgres_db_url, tmp_path)
    one = frame_event(SENDER, audit("110110"))
    for size in (*[5000] * 13, 1000):
        store.append([one] * size)
    store.checkpoint()
    try:
        report = patient_report(store, "PID-0042", key=load_private_key(key))
    finally:
        store.close()
    assert len(report["events"]) == 66_000 and report["unproven"] == []
    root = bytes.fromhex(report["checkpoint"]["root"])
    for row in report["events"][::6000]:
        path = [bytes.fromhex(h) for h in row["proof"]]
        assert verify_inclusion(row["seq"], 66_000, leaf_hash(row["sealed"].encode()), path, root)
