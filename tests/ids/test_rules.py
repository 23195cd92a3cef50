"""The rule language: loading, validation errors that name file, line, rule id and field, and the
`pacsguard ids rules list|check|test` commands."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from pacsguard.events import Severity
from pacsguard.ids import IdsSettings, RuleError, load_rules, parse_duration
from pacsguard.ids.observation import KINDS
from pacsguard.ids.rules import OPERATORS, SETTINGS_REFS, SettingRef, parse_rules_text

DOCS = Path(__file__).resolve().parents[2] / "docs" / "ids.md"

GOOD = """\
- id: site-night-find
  title: C-FIND from the research network
  severity: notice
  protocol: dicom
  on: dimse-request
  match:
    service: C-FIND
    client_host: {cidr_in: [10.99.0.0/16]}
    calling_ae: {wildcard: "RES*"}
  threshold: {count: 3, within: 1m, by: [client_host, calling_ae]}
  action: quarantine
  quarantine_for: 30m
  reference: site policy 12.4
"""


def write(tmp_path: Path, text: str, name: str = "site.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(tmp_path: Path, text: str) -> list[tuple[str | None, str, str]]:
    path = write(tmp_path, text)
    with pytest.raises(RuleError) as info:
        load_rules([path], builtin=False)
    for problem in info.value.problems:
        assert problem.file == str(path)
        assert str(problem).startswith(f"{path}:")
    return [(p.rule_id, p.field, p.problem) for p in info.value.problems]


def test_a_good_rule_loads_with_every_part(tmp_path: Path) -> None:
    (rule,) = load_rules([write(tmp_path, GOOD)], builtin=False)
    assert rule.id == "site-night-find" and rule.severity is Severity.NOTICE and rule.on == "dimse-request"
    assert rule.action == "quarantine" and rule.quarantine_for == timedelta(minutes=30)
    assert rule.threshold is not None and rule.threshold.by == ("client_host", "calling_ae")
    assert rule.threshold.within == 60 and rule.line == 1 and not rule.builtin
    assert [(c.field, c.op) for c in rule.conditions] == [
        ("service", "equals"), ("client_host", "cidr_in"), ("calling_ae", "wildcard")]


def test_site_rules_load_after_the_builtin_set_from_directories(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", GOOD, "a.yml")
    write(tmp_path, "", "empty.yaml")
    write(tmp_path, "not a rule file", "notes.txt")
    rules = load_rules([tmp_path])
    assert rules[-1].id == "site-night-find" and sum(r.builtin for r in rules) == len(rules) - 1


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "- id: x\n  title: [unclosed\n  severity: info\n")
    with pytest.raises(RuleError) as info:
        load_rules([path], builtin=False)
    (problem,) = info.value.problems
    assert problem.field == "yaml" and problem.line is not None and problem.line >= 2
    assert re.match(rf"^{re.escape(str(path))}:\d+: yaml: ", str(problem))


def test_duplicate_yaml_keys_are_errors(tmp_path: Path) -> None:
    found = problems_of(tmp_path, GOOD + "  action: alert\n")
    assert found[0][1] == "yaml" and "duplicate key 'action'" in found[0][2]


def test_unknown_rule_field(tmp_path: Path) -> None:
    found = problems_of(tmp_path, GOOD + "  priority: high\n")
    assert found == [("site-night-find", "priority", found[0][2])] and "unknown field" in found[0][2]


def test_bad_operator(tmp_path: Path) -> None:
    found = problems_of(tmp_path, GOOD.replace("wildcard:", "glob:"))
    assert found[0][:2] == ("site-night-find", "match.calling_ae.glob") and "unknown operator" in found[0][2]


def test_unknown_observation_kind(tmp_path: Path) -> None:
    found = problems_of(tmp_path, GOOD.replace("on: dimse-request", "on: dimse-requests"))
    assert found[0][:2] == ("site-night-find", "on") and "dimse-request" in found[0][2]


def test_unknown_match_field_lists_the_kinds_fields(tmp_path: Path) -> None:
    found = problems_of(tmp_path, GOOD.replace("service: C-FIND", "servce: C-FIND"))
    assert found[0][:2] == ("site-night-find", "match.servce") and "move_destination" in found[0][2]


@pytest.mark.parametrize("bad", ["1 minute", "60", "-5s", "0s", "5 fortnights"])
def test_bad_duration(tmp_path: Path, bad: str) -> None:
    found = problems_of(tmp_path, GOOD.replace("within: 1m", f"within: {bad}"))
    assert found[0][:2] == ("site-night-find", "threshold.within")


def test_bad_quarantine_duration_and_missing_one(tmp_path: Path) -> None:
    assert problems_of(tmp_path, GOOD.replace("30m", "soon"))[0][1] == "quarantine_for"
    assert problems_of(tmp_path, GOOD.replace("  quarantine_for: 30m\n", ""))[0][1] == "quarantine_for"
    assert problems_of(tmp_path, GOOD.replace("action: quarantine", "action: alert"))[0][1] == "quarantine_for"


def test_every_problem_of_every_rule_is_reported(tmp_path: Path) -> None:
    text = GOOD + """\
- id: Broken Rule
  severity: loud
  protocol: dicom
  on: association-request
  match:
    calling_ae: [A, B]
    server_port: {gt: high, not_in: $known_ae_titles}
    called_ae: {regex: "("}
    tls: {cidr_in: $internal_networks}
    abstract_syntaxes: {in: $nope}
  threshold: {count: 0, within: 10s, by: [nobody], distinct: x, sum: y}
  action: explode
- just a string
- title: no id
"""
    found = problems_of(tmp_path, text)
    by_field = {(rule, field) for rule, field, _ in found}
    assert {
        ("Broken Rule", "id"), ("Broken Rule", "title"), ("Broken Rule", "severity"),
        ("Broken Rule", "match.calling_ae"), ("Broken Rule", "match.server_port.gt"),
        ("Broken Rule", "match.server_port.not_in"), ("Broken Rule", "match.called_ae.regex"),
        ("Broken Rule", "match.tls.cidr_in"), ("Broken Rule", "match.abstract_syntaxes.in"),
        ("Broken Rule", "threshold.count"), ("Broken Rule", "threshold.by"), ("Broken Rule", "threshold.distinct"),
        ("Broken Rule", "threshold.sum"), ("Broken Rule", "action"), ("Broken Rule", "reference"),
        ("#3", "rule"), ("#4", "id"), ("#4", "severity"), ("#4", "protocol"),
    } <= by_field


def test_duplicate_ids_across_files_and_with_the_builtin_set(tmp_path: Path) -> None:
    write(tmp_path, GOOD, "a.yaml")
    write(tmp_path, GOOD.replace("site-night-find", "dicom-association-flood"), "b.yaml")
    write(tmp_path, GOOD, "c.yaml")
    with pytest.raises(RuleError) as info:
        load_rules([tmp_path])
    dups = [(p.rule_id, Path(p.file).name) for p in info.value.problems if p.field == "id"]
    assert dups == [("dicom-association-flood", "b.yaml"), ("site-night-find", "c.yaml")]


def test_a_missing_rules_dir_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RuleError) as info:
        load_rules([tmp_path / "nope"])
    assert info.value.field == "path" and info.value.file.endswith("nope")


def test_yaml_1_1_booleans_do_not_eat_keys_or_values(tmp_path: Path) -> None:
    """`on:` stays a key and `no` stays text (YAML 1.1 would read both as booleans)."""
    (rule,) = load_rules([write(tmp_path, GOOD.replace("service: C-FIND", "move_destination: no"))], builtin=False)
    assert rule.on == "dimse-request" and rule.conditions[0].value == "no"
    assert problems_of(tmp_path, GOOD.replace("service: C-FIND", "tls: yes"))[0][1] == "match.tls"


def test_settings_refs_and_types(tmp_path: Path) -> None:
    (rule,) = load_rules([write(tmp_path, GOOD.replace('{wildcard: "RES*"}', "{not_in: $known_ae_titles}"))],
                         builtin=False)
    assert rule.conditions[-1].value == SettingRef("known_ae_titles") and rule.settings_refs() == ["known_ae_titles"]
    found = problems_of(tmp_path, GOOD.replace('{wildcard: "RES*"}', "{in: $dicom_ports}"))
    assert found[0][1] == "match.calling_ae.in" and "int" in found[0][2]


def test_numbers_in_text_fields_are_read_as_text(tmp_path: Path) -> None:
    (rule,) = load_rules([write(tmp_path, GOOD.replace('{wildcard: "RES*"}', "{in: [1234, RES1]}"))], builtin=False)
    assert rule.conditions[-1].value == ("1234", "RES1")


@given(st.integers(min_value=1, max_value=10**6), st.sampled_from(["ms", "s", "m", "h", "d"]))
def test_parse_duration(number: int, unit: str) -> None:
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    assert parse_duration(f"{number}{unit}") == pytest.approx(number * scale)


def test_every_builtin_rule_is_in_the_docs() -> None:
    text = DOCS.read_text()
    for rule in load_rules([]):
        assert f"`{rule.id}`" in text, rule.id


def test_every_observation_field_and_operator_is_in_the_docs() -> None:
    text = DOCS.read_text()
    for kinds in KINDS.values():
        for kind, spec in kinds.items():
            assert f"`{kind}`" in text, kind
            for name in spec.all_fields():
                assert f"`{name}`" in text, (kind, name)
    for op in OPERATORS:
        assert f"`{op}`" in text, op
    for name in SETTINGS_REFS:
        assert f"`${name}`" in text, name


def test_parse_rules_text_returns_problems_instead_of_raising() -> None:
    rules, problems = parse_rules_text("- id: a\n", "x.yaml")
    assert rules == [] and {p.field for p in problems} >= {"title", "severity", "protocol", "on", "reference"}


# --------------------------------------------------------------------------- the CLI


@pytest.fixture()
def cli():
    from pacsguard.cli import ids as ids_cli

    runner = CliRunner()
    return lambda *args: runner.invoke(ids_cli.app, list(args))


def test_cli_check_builtin_ok(cli) -> None:
    result = cli("rules", "check")
    assert result.exit_code == 0 and "OK" in result.output and f"{len(load_rules([]))} rules" in result.output


def test_cli_check_good_file(cli, tmp_path: Path) -> None:
    result = cli("rules", "check", str(write(tmp_path, GOOD)))
    assert result.exit_code == 0 and "OK" in result.output


def test_cli_check_broken_file_names_file_rule_and_field(cli, tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("within: 1m", "within: 1 minute").replace("glob", "x"))
    result = cli("rules", "check", str(path))
    assert result.exit_code == 2
    assert f"{path}:1: rule site-night-find: threshold.within: expected a duration" in " ".join(result.output.split())


def test_cli_check_with_settings(cli, tmp_path: Path) -> None:
    good = write(tmp_path, "ids:\n  known_ae_titles: [PACS]\n  disabled_rules: [dicom-association-flood]\n", "p.yaml")
    assert cli("rules", "check", "--settings", str(good)).exit_code == 0
    bad = write(tmp_path, "disabled_rules: [dicom-typo]\n", "s.yaml")
    result = cli("rules", "check", "--settings", str(bad))
    assert result.exit_code == 2 and "rule dicom-typo: disabled_rules" in result.output
    worse = write(tmp_path, "max_tracked_sources: 0\n", "w.yaml")
    result = cli("rules", "check", "--settings", str(worse))
    assert result.exit_code == 2 and "ids.max_tracked_sources" in result.output


def test_cli_check_loads_the_settings_rules_dirs(cli, tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    write(tmp_path / "rules", GOOD.replace("notice", "loud"))
    settings = write(tmp_path, "ids:\n  rules_dirs: [rules]\n", "pacsguard.yaml")
    result = cli("rules", "check", "--settings", str(settings))
    assert result.exit_code == 2 and "rule site-night-find: severity" in result.output


def test_cli_list(cli, tmp_path: Path) -> None:
    settings = write(tmp_path, "known_ae_titles: [PACS, MOD1]\n", "s.yaml")
    result = cli("rules", "list", "--rules-dir", str(write(tmp_path, GOOD)), "--settings", str(settings),
                 "--format", "json")
    assert result.exit_code == 0
    import json

    rows = {row["id"]: row for row in map(json.loads, result.output.splitlines())}
    assert rows["site-night-find"]["action"] == "quarantine"
    assert rows["dicom-unknown-calling-ae"]["active"] is True
    assert rows["dicom-move-destination-not-allowed"]["inactive_reason"] == "needs ids.move_destinations"
    table = cli("rules", "list")
    assert table.exit_code == 0 and "dicom-ae-brute-force" in table.output and "quarantine" in table.output


EVENTS = """\
- {kind: association-request, at: 0, client_host: 10.99.1.1, calling_ae: RES1, called_ae: PACS}
- {kind: dimse-request, at: 1, client_host: 10.99.1.1, calling_ae: RES1, service: C-FIND, command: C-FIND-RQ}
- {kind: dimse-request, at: 2, client_host: 10.99.1.1, calling_ae: RES1, service: C-FIND}
- {kind: dimse-request, at: 3, client_host: 10.99.1.1, calling_ae: RES1, service: C-FIND}
- {kind: dimse-request, at: 4, client_host: 10.1.1.1, calling_ae: RES2, service: C-FIND}
"""


def test_cli_test_prints_what_fired_and_exits_1(cli, tmp_path: Path) -> None:
    result = cli("rules", "test", str(write(tmp_path, GOOD)), "--events", str(write(tmp_path, EVENTS, "ev.yaml")))
    assert result.exit_code == 1, result.output
    assert "site-night-find" in result.output and "5 observations, 1 alerts" in result.output


def test_cli_test_nothing_fired_exits_0(cli, tmp_path: Path) -> None:
    events = write(tmp_path, EVENTS.replace("10.99.1.1", "10.98.1.1"), "ev.yaml")
    result = cli("rules", "test", str(write(tmp_path, GOOD)), "--events", str(events))
    assert result.exit_code == 0 and "0 alerts" in result.output


def test_cli_test_with_builtin_rules_and_settings(cli, tmp_path: Path) -> None:
    events = write(tmp_path, "- {kind: association-request, client_host: 203.0.113.4, tls: false, "
                             "calling_ae: X, called_ae: PACS}\n", "ev.yaml")
    settings = write(tmp_path, "known_ae_titles: [PACS]\n", "s.yaml")
    result = cli("rules", "test", str(write(tmp_path, GOOD)), "--builtin", "--settings", str(settings),
                 "--events", str(events))
    assert result.exit_code == 1
    assert "dicom-cleartext-from-external" in result.output and "dicom-unknown-calling-ae" in result.output


def test_cli_test_rejects_bad_events(cli, tmp_path: Path) -> None:
    events = write(tmp_path, "- {kind: dimse-request, servce: C-FIND}\n- {kind: nope}\n- 3\n"
                             "- {kind: dimse-request, calling_ae: [A], tls: yes, message_id: x}\n", "ev.yaml")
    result = cli("rules", "test", str(write(tmp_path, GOOD)), "--events", str(events))
    assert result.exit_code == 2
    out = " ".join(result.output.split())
    assert "observation #1: servce: unknown field" in out and "observation #2: kind" in out
    assert "observation #3: expected a mapping" in out
    assert "#4: calling_ae: expected text" in out and "#4: tls: expected true or false" in out
    assert "#4: message_id: expected a whole number" in out


def test_cli_test_broken_rule_file_exits_2(cli, tmp_path: Path) -> None:
    rules = write(tmp_path, GOOD.replace("severity: notice", "severity: meh"))
    result = cli("rules", "test", str(rules), "--events", str(write(tmp_path, EVENTS, "ev.yaml")))
    assert result.exit_code == 2 and "rule site-night-find: severity" in result.output


def test_main_cli_registers_ids() -> None:
    from pacsguard.cli import main

    result = CliRunner().invoke(main.app, ["ids", "rules", "check"])
    assert result.exit_code == 0 and "OK" in result.output


def test_ids_settings_defaults() -> None:
    s = IdsSettings()
    assert [str(n) for n in s.internal_networks] == [
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "::1/128"]
    assert s.dicom_ports == [104, 11112, 4242, 2761, 2762] and s.known_ae_titles is None
    with pytest.raises(ValueError):
        IdsSettings(internal_networks=["10.0.0.0/33"])
    with pytest.raises(ValueError):
        IdsSettings(unknown_key=1)
