"""The outside tester's fourth round on `pacsguard audit search` (issue #18): --outcome, --action and
--entity-type take the codes and their names and refuse anything else (it answered nothing,
silently), and a reader that goes away (`| head`) ends the command quietly."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from atna_corpus import record
from typer.testing import CliRunner

from pacsguard.atna.ingest import Sender, frame_event
from pacsguard.atna.message.build import to_xml
from pacsguard.cli import main
from store_helpers import new_store

SENDER = Sender("10.20.0.9", 40000, "tcp", "octet-counting")


def audit_store(tmp_path: Path, copies: int = 1) -> str:
    """A store of Patient Record reads (110110: action R, outcome 0, a person object) and a failed
    study access (110104, outcome 8, objects a person and a system object), ``copies`` times."""
    target = str(tmp_path / "store.db")
    store, _ = new_store(target, tmp_path)
    failed = replace(record("110104"), outcome="8")
    store.append([frame_event(SENDER, b"<85>1 - vna1 audit - IHE+RFC-3881 - " + to_xml(r))
                  for _ in range(copies) for r in (replace(record("110110"), action="R"), failed)])
    store.close()
    return target


def found(target: str, *options: str) -> list[str]:
    out = CliRunner().invoke(main.app, ["audit", "search", "--store", target, "--format", "json", *options])
    assert out.exit_code == 0, out.output
    return [json.loads(line)["details"]["event_id"]["code"] for line in out.output.splitlines()]


def test_coded_options_take_codes_and_names(tmp_path: Path) -> None:
    target = audit_store(tmp_path)
    assert found(target, "--outcome", "success") == found(target, "--outcome", "0") == ["110110"]
    assert found(target, "--outcome", "Serious-Failure", "--outcome", "0") == ["110110", "110104"]
    assert found(target, "--action", "read") == found(target, "--action", "r") == ["110110"]
    assert found(target, "--entity-type", "system-object") == found(target, "--entity-type", "2") == ["110104"]
    assert found(target, "--entity-type", "PERSON") == ["110110", "110104"]


@pytest.mark.parametrize(("option", "value", "accepted"), [
    ("--outcome", "5", "0 (success), 4 (minor-failure), 8 (serious-failure), 12 (major-failure)"),
    ("--outcome", "failure", "12 (major-failure)"),
    ("--action", "X", "C (create), R (read), U (update), D (delete), E (execute)"),
    ("--action", "reads", "E (execute)"),
    ("--entity-type", "patient", "1 (person), 2 (system-object), 3 (organization), 4 (other)"),
])
def test_a_value_outside_the_code_set_is_refused_naming_the_option(tmp_path: Path, option: str, value: str,
                                                                    accepted: str) -> None:
    """It was taken as given, matched nothing, and the search answered nothing with exit 0."""
    out = CliRunner().invoke(main.app, ["audit", "search", "--store", audit_store(tmp_path), option, value])
    assert out.exit_code == 2, out.output
    assert f"{option} {value!r}: expected one of" in out.output and accepted in out.output, out.output


@pytest.mark.parametrize("empty", ["", " "])
def test_an_empty_patient_is_refused_not_dropped(tmp_path: Path, empty: str) -> None:
    """`audit search --patient "$PID"` with PID unset listed every patient's audit messages."""
    out = CliRunner().invoke(main.app, ["audit", "search", "--store", audit_store(tmp_path), "--patient", empty])
    assert out.exit_code == 2 and "--patient: empty" in out.output, out.output


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path) -> None:
    """`pacsguard audit search | head`: no "error: [Errno 32] Broken pipe" (nor Python's "Exception
    ignored" at exit), and 141, as a shell reports a tool SIGPIPE ended (grep, cat)."""
    target = audit_store(tmp_path, copies=150)  # far more than a pipe holds
    for command in (["audit", "search"], ["events", "search"]):
        process = subprocess.Popen([sys.executable, "-m", "pacsguard.cli", *command, "--store", target,
                                    "--format", "json", "--limit", "100000"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.readline().startswith(b"{")
        process.stdout.close()  # as head does once it has its lines
        error = process.stderr.read()
        assert process.wait(60) == 141 and error == b"", (command, error)


def test_source_takes_an_id_or_a_token(tmp_path: Path) -> None:
    """--source is the AuditSourceID, or the RESTful query's token (system|value; A.5's source has no
    system, so it is found under any); more than one | is refused naming the option (round 10: the
    query took tokens while this option still passed plain text)."""
    target = audit_store(tmp_path)
    vna = found(target, "--source", "VNA1")
    assert vna == ["110110", "110104"]
    assert found(target, "--source", "urn:oid:1.2.3|VNA1") == vna and found(target, "--source", "OTHER") == []
    out = CliRunner().invoke(main.app, ["audit", "search", "--store", target, "--source", "a|b|c"])
    assert out.exit_code == 2 and "--source: " in out.output, out.output
