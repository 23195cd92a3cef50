"""Round 7: a peer chooses the values that rules' regular expressions search, and Python's `re`
backtracks.  One C-FIND whose Patient's Name was 64,000 `*` and an `x` kept the built-in
`dicom-find-wildcard-patient-name` regex busy for about 20 s (quadratic backtracking), in the
passive sensor and in the gateway's event loop alike; a site rule such as `(\\w+\\s?)*$` never
came back.  Now: the built-in regex is linear, a `regex` condition searches at most the first
4,096 characters of a value (MAX_REGEX_TEXT; no DICOM identifier comes near, PS3.5 Table 6.2-1),
and a pattern that can backtrack exponentially is refused when the rules load, naming the file,
line, rule and field."""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
from pathlib import Path

import pytest
import yaml
from capture_craft import Flow, eth_frames, pcap_bytes
from test_engine import identifier
from typer.testing import CliRunner

from pacsguard.cli import ids as ids_cli
from pacsguard.dicom import dimse
from pacsguard.dicom import pdu as P
from pacsguard.events import Event
from pacsguard.ids import Flow as IdsFlow
from pacsguard.ids import IdsSettings, Observation
from pacsguard.ids.passive import build_engine, read
from pacsguard.ids.rules import builtin_rule_files

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gateway"))

from playbook import associate_ac, associate_rq, request  # noqa: E402

FIND = "1.2.840.10008.5.1.4.1.2.1.1"
WILDCARD = "dicom-find-wildcard-patient-name"


def _rule(rule_id: str, pattern: str) -> str:
    return (f"- id: {rule_id}\n  title: Name check\n  severity: notice\n  protocol: dicom\n  on: dataset\n"
            f"  match:\n    patient_name: {{regex: {json.dumps(pattern)}}}\n  reference: site policy 9\n")


def _find_capture(patient_name: str) -> bytes:
    flow = Flow()
    packets = flow.handshake() + flow.send(True, associate_rq("WS1", "PACS", FIND))
    packets += flow.send(False, associate_ac(P.PC_ACCEPTANCE, calling="WS1"))
    command = dimse.CommandSet(dimse.C_FIND_RQ, message_id=3, affected_sop_class_uid=FIND, priority=0,
                               command_data_set_type=0x0000)
    name = patient_name + " " * (len(patient_name) % 2)  # PS3.5 7.1.1: even value length
    packets += flow.send(True, request(command, identifier("PATIENT", patient_name=name, patient_id="")))
    return pcap_bytes(eth_frames(packets + flow.fin()))


def _fired(capture: bytes, rules_dir: Path | None = None) -> set[str]:
    events: list[Event] = []
    engine = build_engine([rules_dir] if rules_dir else [], IdsSettings())
    read(capture, engine=engine, publish=events.append)
    return {e.kind.removeprefix("ids.alert.") for e in events if e.kind.startswith("ids.alert.")}


def test_a_regex_searches_at_most_4096_characters_of_a_value(tmp_path: Path) -> None:
    """`$` matches at the cut: a 64,000-character name reads as its first 4,096 characters."""
    (tmp_path / "len.yaml").write_text(_rule("site-longer-than-cut", "^.{4097}") + _rule("site-cut", "^.{4096}$"))
    fired = _fired(_find_capture("A" * 64_000), tmp_path)
    assert "site-cut" in fired
    assert "site-longer-than-cut" not in fired


def test_the_wildcard_rule_reads_a_64k_name_of_stars() -> None:
    """The name the rule reads is its first 4,096 characters, all `*`: wildcard-only (the old
    regex spent some 20 s on this C-FIND and then did not fire, for the `x` at the end)."""
    assert WILDCARD in _fired(_find_capture("*" * 64_000 + "x"))
    assert WILDCARD not in _fired(_find_capture("DOE*"))


def test_the_wildcard_rules_regex_means_what_its_description_says() -> None:
    """Every name of up to 5 characters: the rule matches exactly those made of wildcard
    characters (`*?^= ` and the value separator) with at least one `*` (PS3.4 C.2.2.2.4)."""
    (text,) = [t for name, t in builtin_rule_files() if name.endswith("dicom.yaml")]
    (rule,) = [r for r in yaml.safe_load(text) if r["id"] == WILDCARD]
    pattern = re.compile(rule["match"]["patient_name"]["regex"])
    for n in range(6):
        for chars in itertools.product("*?^= \\A", repeat=n):
            name = "".join(chars)
            expected = "*" in name and set(name) <= set("*?^= \\")
            assert (pattern.search(name) is not None) == expected, name


@pytest.mark.parametrize("pattern", ["(a+)+$", "^(\\w+\\s?)*$", "^(A|AA)+$", "((ab)*c)*", "(?=(x+)+y)"])
def test_an_exponential_regex_is_refused_with_its_place(tmp_path: Path, pattern: str) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(_rule("site-slow", pattern))
    result = CliRunner().invoke(ids_cli.app, ["rules", "check", str(path)])
    assert result.exit_code == 2
    assert f"{path}:1: rule site-slow: match.patient_name.regex:" in result.output
    assert "exponential" in result.output and "(?>" in result.output


@pytest.mark.parametrize(("pattern", "value"), [
    ("(?>A|AA)+$", "AAA"), ("(a+)++", "aa"), ("^(\\d{1,3}\\.){3}\\d{1,3}$", "10.1.2.3"),
    ("^RES[0-9]+$", "RES12"), (".*TEST.*", "A TEST B"),
])
def test_atomic_possessive_and_plain_patterns_load_and_match(tmp_path: Path, pattern: str, value: str) -> None:
    (tmp_path / "site.yaml").write_text(_rule("site-fine", pattern))
    engine = build_engine([tmp_path], IdsSettings(), builtin=False)
    flow = IdsFlow("192.0.2.1", 50000, "192.0.2.2", 104)
    hits = engine.observe(Observation("dicom", "dataset", {"patient_name": value}, flow))
    assert [a.rule_id for a in hits] == ["site-fine"]
