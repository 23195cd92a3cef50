"""Outside round 14: `audit prove` on a saved report edited in small ways gave Python's own texts as
its reasons ("'int' object is not subscriptable", "non-hexadecimal number found in fromhex() arg",
a KeyError's bare "('signature')", "Exceeds the limit (4300 digits) for integer string conversion",
and "Out of range float values are not JSON compliant" blamed on the signature for a NaN in the
checkpoint). Each reason now names the report's member and what it holds instead, in JSON's words;
the exit codes stay: 1 for a report that does not hold, 2 for a file that is not a saved report."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from test_report import _site
from typer.testing import CliRunner

from pacsguard.atna.report import patient_report
from pacsguard.cli import main
from pacsguard.store import EventStore
from pacsguard.store.keys import load_private_key, public_path

#: Python's phrases that the tester saw as reasons; none may reach the administrator.
PYTHON_PHRASES = ("object is not subscriptable", "string indices", "list indices", "fromhex", "set_int_max_str_digits",
                  "KeyError", "TypeError", "ValueError", "not JSON compliant", "Traceback", "isoformat")
CANNOT_CHECK = "; the report's signature cannot be checked"

Edit = Callable[[dict[str, Any]], None]


def _set(path: str, value: object) -> Edit:
    """An edit that sets the member at ``path`` (``checkpoint.root``, ``events.0.proof``) to ``value``."""
    *parents, last = path.split(".")

    def edit(report: dict[str, Any]) -> None:
        node: Any = report
        for name in parents:
            node = node[int(name)] if isinstance(node, list) else node[name]
        node[int(last) if isinstance(node, list) else last] = value

    return edit


def _drop(name: str) -> Edit:
    return lambda report: report.pop(name)


class TextEdit(NamedTuple):
    """An edit of the file's text, for what json.dumps does not write (NaN, a number of 5,001 digits)."""

    old: str
    new: str


def _unproven_sealed(text: str) -> Edit:
    """The sealed record of the last row (#53, after the checkpoint: no proof checks it) replaced."""
    return _set("events.-1.sealed", text)


#: (edit of the parsed report, or of its text; the exit code; the reasons `audit prove` must give).
CASES: dict[str, tuple[Edit | TextEdit, int, list[str]]] = {
    "signed-empty-object": (_set("signed", {}), 1, ["signed.signature: missing" + CANNOT_CHECK]),
    "signed-number": (_set("signed", 1), 1, ["signed: the number 1, not an object" + CANNOT_CHECK]),
    "signed-string": (_set("signed", "x"), 1, ['signed: the string "x", not an object' + CANNOT_CHECK]),
    "signed-array": (_set("signed", []), 1, ["signed: an empty array, not an object" + CANNOT_CHECK]),
    "signature-not-hex": (_set("signed.signature", "zz"), 1,
                          ['signed.signature: the string "zz" is not 128 hex digits' + CANNOT_CHECK]),
    "signer-null": (_set("signed.key_id", None), 1, ["signed.key_id: null, not a string" + CANNOT_CHECK]),
    "tree-size-nan": (TextEdit('"tree_size": 53', '"tree_size": NaN'), 1,
                      ["checkpoint.tree_size: NaN is not a number JSON allows" + CANNOT_CHECK
                       + " (it covers the report as JSON)", "checkpoint.tree_size: NaN is not a number JSON allows"]),
    "tree-size-string": (_set("checkpoint.tree_size", "53"), 1,
                         ['checkpoint.tree_size: the string "53", not a whole number']),
    "tree-size-negative": (_set("checkpoint.tree_size", -1), 1, ["checkpoint.tree_size: the number -1, less than 0"]),
    "checkpoint-number": (_set("checkpoint", 1), 1, ["checkpoint: the number 1, not an object"]),
    "checkpoint-empty": (_set("checkpoint", {}), 1, ["checkpoint.tree_size: missing"]),
    "root-not-hex": (_set("checkpoint.root", "zz"), 1, ['checkpoint.root: the string "zz" is not 64 hex digits']),
    "checkpoint-signature-short": (_set("checkpoint.signature", "00"), 1,
                                   ['checkpoint.signature: the string "00" is not 128 hex digits']),
    "since-garbage": (_set("since", "garbage"), 1,
                      ['since: the string "garbage" is not an ISO 8601 time in the years 1-9999']),
    "since-missing": (_drop("since"), 1, ["since: missing"]),
    "until-number": (_set("until", 1), 1, ["until: the number 1, not a time (ISO 8601) or null"]),
    "proof-not-hex": (_set("events.0.proof", ["zz"]), 1, ['event #40: proof[0]: the string "zz" is not 64 hex digits']),
    "proof-null": (_set("events.0.proof", None), 1, ["event #40: proof: null, not an array of hashes"]),
    "matched-string": (_set("matched", "x"), 1,
                       ['matched: the string "x", not an array (the numbers of the events that matched)']),
    "sealed-not-json": (_unproven_sealed("not json"), 1,
                        ["event #53: sealed: not JSON (Expecting value at character 0)"]),
    "sealed-event-number": (_unproven_sealed('{"seq": 53, "event": 1}'), 1,
                            ["event #53: sealed.event: the number 1, not an object"]),
    "sealed-event-empty": (_unproven_sealed('{"seq": 53, "event": {}}'), 1, ["event #53: sealed.event.id: missing"]),
    "sealed-event-time": (_unproven_sealed('{"seq": 53, "event": {"id": "1", "time": "soon", "kind": "k", '
                                           '"component": "c", "outcome": "success", "severity": "info"}}'), 1,
                          ['event #53: sealed.event.time: the string "soon" is not an ISO 8601 time in the years '
                           "1-9999"]),
    "integer-of-5001-digits": (TextEdit('"tree_size": 53', '"tree_size": 1' + "0" * 5000), 2,
                               ["not a saved report (checkpoint.tree_size: a number of 5,001 digits, longer than the "
                                "4,300 pacsguard reads; `audit patient` writes none)"]),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A signed report in the json form `audit patient` writes, and the store's public key. Made
    against the store's checkpoint of 53 events (`audit patient --key` would sign a newer one), so
    event #53 is listed unproven: its sealed record is read without a proof to check it first."""
    tmp = tmp_path_factory.mktemp("r14-prove")
    target, key = _site(tmp)
    store = EventStore.open(target)
    try:
        report = patient_report(store, "PID-0042", key=load_private_key(key))
    finally:
        store.close()
    return json.dumps(report, indent=1) + "\n", str(public_path(key))


def _prove(path: Path, key: str) -> tuple[int, str]:
    out = CliRunner().invoke(main.app, ["audit", "prove", str(path), "--key", key])
    return out.exit_code, " ".join(out.output.split())  # the console wraps long lines


def test_the_saved_report_proves_before_it_is_edited(saved: tuple[str, str], tmp_path: Path) -> None:
    text, key = saved
    report = json.loads(text)
    assert report["checkpoint"]["tree_size"] == 53 and report["events"][-1]["seq"] == 53
    assert "proof" in report["events"][0] and "proof" not in report["events"][-1]
    (tmp_path / "r.json").write_text(text)
    code, out = _prove(tmp_path / "r.json", key)
    assert code == 0 and "OK: 4 events proven" in out, out


@pytest.mark.parametrize("case", list(CASES))
def test_each_reason_names_the_member_in_plain_words(saved: tuple[str, str], tmp_path: Path, case: str) -> None:
    text, key = saved
    edit, exit_code, reasons = CASES[case]
    if isinstance(edit, TextEdit):
        assert text.count(edit.old) == 1, case
        edited = text.replace(edit.old, edit.new)
    else:
        report = json.loads(text)
        edit(report)
        edited = json.dumps(report, indent=1)
    path = tmp_path / f"{case}.json"
    path.write_text(edited)
    code, out = _prove(path, key)
    assert code == exit_code, (case, code, out)
    for reason in reasons:
        assert (f"FAILS: {reason}" if exit_code == 1 else reason) in out, (case, out)
    for phrase in PYTHON_PHRASES:
        assert phrase not in out, (case, phrase, out)
    assert "('" not in out and "(\"" not in out, (case, out)  # no exception's repr in parentheses
