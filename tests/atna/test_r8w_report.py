"""Outside round 8, wave 2, area W3: `audit patient` asked for a patient as a FHIR token (as a
portal, or an ITI-81 query, names one), what a report of no events says on stderr, and `audit
prove` given a file that is not a saved report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from test_report import SENDER, _cli, _site, audit
from typer.testing import CliRunner

from pacsguard.atna.ingest import frame_event
from pacsguard.cli import main
from pacsguard.events.model import Event, Party
from pacsguard.store import EventStore
from pacsguard.store.keys import public_path

#: The corpus patient's authority's universal ID (test_report.CX), as a FHIR Identifier.system.
TOKEN = "urn:oid:1.2.840.99999.1|PID-0042"


def _run(*args: str) -> tuple[int, str, str]:
    """Exit code, standard output and standard error (each on one line: the console wraps)."""
    out = CliRunner().invoke(main.app, list(args))
    return out.exit_code, out.stdout, " ".join(out.stderr.split())


def _report(target: str, key: Path, patient: str, *more: str) -> tuple[dict[str, Any], str]:
    code, out, err = _run("audit", "patient", patient, "--store", target, "--key", str(key), "--format", "json",
                          *more)
    assert code == 0 and "Traceback" not in err, (patient, code, out, err)
    return json.loads(out), err


def _searched(target: str, patient: str) -> list[str]:
    """The event IDs `audit search --patient` lists."""
    code, out, err = _run("audit", "search", "--patient", patient, "--store", target, "--format", "json")
    assert code == 0, err
    return [json.loads(line)["id"] for line in out.splitlines() if line.strip()]


def _ids(report: dict[str, Any]) -> list[str]:
    """The event IDs of a report's rows, from their sealed records."""
    return [json.loads(row["sealed"])["event"]["id"] for row in report["events"]]


def test_a_fhir_token_lists_the_events_audit_search_finds_for_it_and_proves(tmp_path: Path) -> None:
    """`audit patient 'urn:oid:OID|PID'` gave a signed report of 0 events (the token was compared
    as one patient ID), though `audit search --patient` with the same token lists the patient's
    accesses under that authority. It now reads the token as search does and lists those events;
    the report names the patient by the CX form the store holds, and `audit prove` accepts it."""
    target, key = _site(tmp_path)
    report, _ = _report(target, key, TOKEN)
    # The same events as search; #44 (a gateway event naming PID-0042 with no authority) is not one.
    assert report["matched"] == [40, 41, 43, 53], report["matched"]
    assert _ids(report) == _searched(target, TOKEN)
    assert report["patient"] == "PID-0042^^^&1.2.840.99999.1&ISO"
    saved = tmp_path / "token.json"
    saved.write_text(json.dumps(report))
    code, text = _cli("audit", "prove", str(saved), "--key", str(public_path(key)))
    assert code == 0 and "OK: 4 events proven" in text and "named patient PID-0042^^^&1.2.840.99999.1&ISO" in text
    # Another authority's token names another patient: none of these events.
    other, _ = _report(target, key, "urn:oid:1.2.840.99999.2|PID-0042")
    assert other["matched"] == []


def test_a_patient_id_that_holds_a_bar_is_asked_for_with_it_escaped(tmp_path: Path) -> None:
    """A DICOM Patient ID (LO, PS3.5 6.2) may hold '|'. Given bare, `A|B` is now read as system A
    and ID B (as search reads it); docs/audit.md says to escape it, `A\\|B`, which finds the ID
    itself, and the report of the other reading says on stderr how to ask for it."""
    target, key = _site(tmp_path)
    store = EventStore.open(target)
    store.append([Event(kind="dicom.dimse.c-move", component="gateway", patient_ids=("LAB|0042",),
                        actor=Party("WS1", "10.1.0.7", user="jdoe"))])
    store.close()
    report, _ = _report(target, key, "LAB\\|0042")
    assert report["patient"] == "LAB|0042" and report["matched"] == [54], report["matched"]
    assert _searched(target, "LAB\\|0042") == []  # search reads audit messages only; same reading
    report, err = _report(target, key, "LAB|0042")
    assert report["matched"] == [] and "'LAB|0042' was read as system|ID" in err, err
    assert "given with it escaped: 'A\\|B'" in err, err
    # With a window, an escaped ID that names nothing is shown as it was given, not as its repr.
    _, err = _report(target, key, "LAB\\|0043", "--until", "2027-01-01")
    assert "no event names patient LAB|0043 (as 'LAB\\|0043' names it) before 2027-01-01T00:00:00+00:00" in err, err


def test_the_forms_audit_patient_cannot_report_on_are_refused_naming_why(tmp_path: Path) -> None:
    """Each of these once gave a signed report of 0 events for a patient whose accesses are stored:
    three parts (search refuses it), an empty value, a value with white space in a token, and `|PID`
    (no authority: a report names its patient by one key, which cannot say "without one")."""
    target, key = _site(tmp_path)
    for given, said in (("a|b|c", "expected system|value"), ("urn:oid:1.2.840.99999.1|", "an empty identifier"),
                        ("urn:oid:1.2.840.99999.1| PID-0042", "has white space before or after it"),
                        ("|PID-0042", "a patient without an assigning authority is a search filter")):
        code, out, err = _run("audit", "patient", given, "--store", target, "--key", str(key), "--format", "json")
        assert code == 2 and f"patient ID {given!r}: " in err and said in err and out == "", (given, code, err)


def test_a_report_of_no_events_says_so_on_stderr_and_what_to_try(tmp_path: Path) -> None:
    """A report of 0 events (a typo in the ID or the authority) looked like "nobody accessed the
    patient". Its output and exit code are unchanged; a note on stderr names the patient as searched
    and the window, and what to try: the bare ID when events name it under another authority."""
    target, key = _site(tmp_path)
    report, err = _report(target, key, "PID-0042^^^OTHER")
    assert report["matched"] == [] and report["events"] == []
    assert "no event names patient PID-0042^^^OTHER at any time" in err, err
    assert "events name ID PID-0042 under another authority: `audit patient PID-0042` lists them all" in err, err
    _, err = _report(target, key, "urn:oid:1.2.840.99999.2|PID-0042", "--since", "2026-12-01")
    assert "no event names patient PID-0042^^^&1.2.840.99999.2&ISO (as 'urn:oid:1.2.840.99999.2|PID-0042'" in err
    assert "from 2026-12-01T00:00:00+00:00 on" in err and "or widen --since/--until" in err, err
    assert "was read as system|ID" not in err, err  # urn:oid: is a URI: no ID holding '|' was meant
    _, err = _report(target, key, "PID-0043")
    assert "no event names patient PID-0043 at any time; an ID is matched exactly as stored" in err, err
    _, err = _report(target, key, "PID-0043^^^STMARY")
    assert "nor under any other authority (the bare ID PID-0043 finds none): check the ID" in err, err
    # The table and csv forms too, exit 0; a report that lists events has no note.
    for fmt in ("table", "csv"):
        code, out, err = _run("audit", "patient", "PID-0043", "--store", target, "--key", str(key), "--format", fmt)
        assert code == 0 and "no event names patient PID-0043" in err and "no event" not in out, (fmt, err)
    _, err = _report(target, key, "PID-0042")
    assert "no event names" not in err, err


def test_prove_names_a_file_that_is_not_a_saved_report(tmp_path: Path) -> None:
    """A directory gave a bare "[Errno 21] Is a directory", a report re-saved as UTF-16 (Windows
    "Unicode") a codec error, and JSON of another shape (`[1,2]`) "neither a json report nor an
    html page". Each is exit 2 naming the file and what it holds; a UTF-8 report still proves."""
    target, key = _site(tmp_path)
    pub = str(public_path(key))
    made = CliRunner().invoke(main.app, ["audit", "patient", "PID-0042", "--store", target, "--key", str(key),
                                         "--format", "json"])
    assert made.exit_code == 0
    text = made.stdout
    folder = tmp_path / "reports"
    folder.mkdir()
    cases = {
        "report.json": (text.encode(), None),
        "reports": (None, "a directory, not a saved report"),
        "utf16.json": (text.encode("utf-16"), "UTF-16 text, byte order mark FF FE; a saved report is UTF-8"),
        "utf16be.json": (b"\xfe\xff" + text.encode("utf-16-be"), "UTF-16 text, byte order mark FE FF"),
        "utf32.json": (text.encode("utf-32"), "UTF-32 text, byte order mark FF FE 00 00"),
        "nomark.json": (text.encode("utf-16-le"), "a NUL byte at offset 1: UTF-16 or UTF-32 text without"),
        "latin1.json": ('{"patient": "M\u00fcller"}'.encode("latin-1"), "not UTF-8 text (byte 0xfc at offset 14)"),
        "list.json": (b"[1,2]", "valid JSON, but an array: a report is a JSON object"),
        "string.json": (b'"report"', "valid JSON, but a string"),
        "null.json": (b"null\n", "valid JSON, but the literal null"),
        "number.json": (b"42", "valid JSON, but a number"),
        "empty.json": (b"", "the file is empty"),
        "page.html": (b"<html><body>hello</body></html>", "neither a json report nor an html page"),
    }
    for name, (content, said) in cases.items():
        path = folder if name == "reports" else tmp_path / name
        if content is not None:
            path.write_bytes(content)
        code, out, err = _run("audit", "prove", str(path), "--key", pub)
        if said is None:
            assert code == 0 and "OK: 5 events proven" in out, (name, out, err)
            continue
        assert code == 2 and f"{path}: " in err and said in err, (name, code, err)
        assert "Errno" not in err and "codec" not in err and "Traceback" not in err, (name, err)
    code, _, err = _run("audit", "prove", str(tmp_path / "report.json"), "--key", str(folder))
    assert code == 2 and f"{folder}: a directory, not a public key" in err and "Errno" not in err, err
    code, _, err = _run("audit", "prove", str(tmp_path / "gone.json"), "--key", pub)
    assert code == 2 and f"{tmp_path / 'gone.json'}: cannot read the report (No such file or directory)" in err, err


def test_a_token_report_of_the_event_after_the_checkpoint_lists_it_unproven(tmp_path: Path) -> None:
    """The token's report is made like any other: an event after the newest checkpoint, with no
    signing key at hand to sign one, is listed and named unproven (not dropped)."""
    target, key = _site(tmp_path)
    store = EventStore.open(target)
    store.append([frame_event(SENDER, audit("110110"))])
    store.close()
    report, _ = _report(target, key, TOKEN, "--no-checkpoint")
    assert report["matched"] == [40, 41, 43, 53, 54] and report["unproven"] == [53, 54], report["unproven"]
