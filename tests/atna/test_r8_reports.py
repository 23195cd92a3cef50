"""Outside round 8, area F: the patient access report (`audit patient`) and its proof (`audit
prove`), probed as a privacy officer handing a report to a lawyer and as someone forging one."""

from __future__ import annotations

import json
from pathlib import Path

from test_report import _cli, _site
from typer.testing import CliRunner

from pacsguard.cli import main
from pacsguard.store.keys import public_path


def test_a_window_that_holds_no_time_is_refused_not_signed_as_empty(tmp_path: Path) -> None:
    """--since and --until bound [since, until). Swapped (or equal) bounds once gave a signed
    report that "0 events named the patient", which `audit prove` accepted: a statement a reader
    takes for "nobody accessed the patient", made from a typing slip."""
    target, key = _site(tmp_path)
    for since, until in (("2026-12-04", "2026-12-01"), ("2026-12-03T10:00+01:00", "2026-12-03T09:00:00Z")):
        code, out = _cli("audit", "patient", "PID-0042", "--store", target, "--key", str(key), "--format", "json",
                         "--since", since, "--until", until)
        assert code == 2 and f"--until {until} (" in out and f"is not after --since {since} (" in out, out
        assert "holds no time" in out and '"format"' not in out and "Traceback" not in out, out
    # A window of one microsecond still holds time: it is made, and proves.
    code, out = _cli("audit", "patient", "PID-0042", "--store", target, "--key", str(key), "--format", "json",
                     "--since", "2026-12-03T09:30:15Z", "--until", "2026-12-03T09:30:15.000001Z")
    assert code == 0 and '"matched": [' in out



def test_an_empty_or_padded_patient_id_is_refused_not_reported_as_never_accessed(tmp_path: Path) -> None:
    """An empty "$PID" gave a signed report of no events that `audit prove` then refused ("names no
    patient"); a pasted ID with a space, or a line read with its CR, gave a signed, proving report
    that nobody accessed the patient, though the store holds their accesses (stored IDs are
    trimmed). Each is refused, naming what is wrong; `audit search --patient ""` already was."""
    target, key = _site(tmp_path)
    for given, said in (("", "empty"), ("\t", "empty"), ("PID-0042 ", "white space before or after it"),
                        ("PID-0042\r", "white space before or after it"), (" PID-0042", "white space")):
        code, out = _cli("audit", "patient", given, "--store", target, "--key", str(key), "--format", "json")
        assert code == 2 and f"patient ID {given!r}: {said}" in out and '"format"' not in out, (given, out)
    code, out = _cli("audit", "patient", "PID-0042", "--store", target, "--key", str(key), "--format", "json")
    assert code == 0 and '"matched": [' in out

def test_a_json_report_re_saved_with_a_byte_order_mark_still_proves(tmp_path: Path) -> None:
    """docs/audit.md: the json form may be re-indented. An editor that does so (Notepad) may put a
    UTF-8 byte order mark first, which a JSON reader may ignore (RFC 8259 section 8.1); it was
    refused as "neither a json report nor an html page". An edit under the mark still fails."""
    target, key = _site(tmp_path)
    pub = str(public_path(key))
    made = CliRunner().invoke(main.app, ["audit", "patient", "PID-0042", "--store", target, "--key", str(key),
                                         "--format", "json"])
    assert made.exit_code == 0
    report = json.loads(made.stdout)
    saved = tmp_path / "report.json"
    saved.write_bytes(b"\xef\xbb\xbf" + json.dumps(report, indent=4).replace("\n", "\r\n").encode())
    code, text = _cli("audit", "prove", str(saved), "--key", pub)
    assert code == 0 and "OK: 5 events proven" in text, text
    report["events"][0]["user"] = "innocent"
    saved.write_bytes(b"\xef\xbb\xbf" + json.dumps(report).encode())
    code, text = _cli("audit", "prove", str(saved), "--key", pub)
    assert code == 1 and "FAILS: event #40: listed fields differ from the sealed record: user" in text, text


def test_signing_a_large_report_does_not_hold_its_text_and_signs_the_same_bytes(tmp_path: Path) -> None:
    """A report of 200,000 events is a gigabyte of JSON: signing it (and `prove` checking it) once
    made the whole canonical text, and its bytes, beside the report. The message signed is still
    Ed25519 over the hex SHA-256 of exactly that text (docs/audit.md), so reports made before
    prove after, and the other way round."""
    import hashlib
    import tracemalloc

    from pacsguard.atna.report import SIGNED_PREFIX, signed_message

    def one_shot(report: dict[str, object]) -> bytes:
        body = {k: v for k, v in report.items() if k != "signed"}
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
        return SIGNED_PREFIX + hashlib.sha256(text.encode()).hexdigest().encode() + b"\n"

    target, key = _site(tmp_path)
    made = json.loads(CliRunner().invoke(main.app, ["audit", "patient", "PID-0042", "--store", target, "--key",
                                                    str(key), "--format", "json"]).stdout)
    odd: list[dict[str, object]] = [made, {}, {"events": []}, {"events": "x", "z": {"b": 1, "a": [1.5, None]}},
                                    {"events": [{}, [], "\u00e9\U0001f600"], "signed": {"k": 1}, "\u00e9": "<&>"}]
    for report in odd:
        assert signed_message(report) == one_shot(report), report
    rows = [{"seq": n, "sealed": "\u00e9" * 20_000, "proof": ["ab" * 32] * 17} for n in range(1000)]
    large = {**made, "events": rows, "matched": list(range(1000))}  # 20 MB of text, 40 MB as escaped JSON
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        signed_message(large)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000, f"signing held {peak} bytes at once"
