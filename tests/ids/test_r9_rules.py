"""Outside tester, round 9: hostile rule files (docs/ids.md, "The rule language").  Every problem is
named as ``FILE:LINE: rule ID: field: problem`` with exit 2, never an internal error, and a
message stays readable however large the file's values are."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pacsguard.ids import RuleError, load_rules

PACSGUARD = str(Path(sys.executable).with_name("pacsguard"))

RULE = """\
# a site rule file
- id: {id}
  title: Site rule
  severity: warning
  protocol: dicom
  on: association-request
  reference: site policy 1.2
  match:
    calling_ae: {{regex: "{regex}"}}
"""


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PACSGUARD, "ids", "rules", "check", "--no-builtin", str(path)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})


@pytest.mark.parametrize(("regex", "why"), [
    ("CT{99999999999}", "the repetition number is too large"),  # beyond sre's MAXREPEAT
    ("^" + "(" * 3000 + "A" + ")" * 3000 + "$", "groups nested too deeply"),  # sre's parser recursion
])
def test_a_regex_python_cannot_compile_is_a_named_problem_not_an_internal_error(tmp_path: Path, regex: str,
                                                                             why: str) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(RULE.format(id="site-odd-regex", regex=regex))
    r = check(path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"error: {path}:2: rule site-odd-regex: match.calling_ae.regex: invalid regular "
                           f"expression: {why}"), line
    with pytest.raises(RuleError) as info:
        load_rules([path], builtin=False)
    (problem,) = info.value.problems
    assert (problem.line, problem.rule_id, problem.field) == (2, "site-odd-regex", "match.calling_ae.regex")


def test_a_huge_rule_id_or_field_name_does_not_make_a_huge_message(tmp_path: Path) -> None:
    """A 1 MB id and a 1,000-character unknown key (YAML's limit for a plain key is 1,024): each
    message names them, cut short."""
    path = tmp_path / "huge.yaml"
    path.write_text(RULE.format(id="x" * 1_000_000, regex="^CT$") + f"  {'k' * 1_000}: 1\n")
    r = check(path)
    assert r.returncode == 2, r.stdout[-500:] + r.stderr[-500:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and len(r.stderr) < 2000, len(r.stderr)
    assert all(line.startswith(f"error: {path}:2: rule xxxxxxxx") for line in lines), lines
    assert any(": id: expected lower-case letters" in line for line in lines), lines
    assert any("kkkkkkkk...: unknown field" in line for line in lines), lines


def test_an_integer_python_will_not_convert_is_a_yaml_problem_with_its_line(tmp_path: Path) -> None:
    """Over 4,300 digits Python refuses int() (CVE-2020-10735): the rule file's line is named."""
    path = tmp_path / "big.yaml"
    path.write_text(RULE.format(id="site-big", regex="^CT$") + f"  threshold: {{count: 1{'0' * 5000}, within: 1m}}\n")
    r = check(path)
    assert r.returncode == 2 and "internal error" not in r.stderr, r.stderr[-500:]
    assert r.stderr.startswith(f"error: {path}:10: yaml: an integer of 5,001 characters is too long"), r.stderr[:300]
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"ids:\n  max_tracked_flows: 1{'0' * 5000}\n")
    r = subprocess.run([PACSGUARD, "ids", "rules", "list", "--settings", str(settings)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "internal error" not in r.stderr and "too long" in r.stderr, r.stderr[-500:]


@pytest.mark.parametrize("at", [".nan", ".inf", "-.inf", "1" + "0" * 400, "1" + "0" * 5000])
def test_an_observation_time_that_is_no_time_is_named(tmp_path: Path, at: str) -> None:
    """`ids rules test --events`: each observation's `at` must be a finite number of seconds."""
    rules = tmp_path / "site.yaml"
    rules.write_text(RULE.format(id="site-a", regex="^ANY"))
    events = tmp_path / "events.yaml"
    events.write_text(f"- {{kind: association-request, calling_ae: ANY-SCP, at: 0}}\n"
                      f"- {{kind: association-request, calling_ae: ANY-SCP, at: {at}}}\n")
    r = subprocess.run([PACSGUARD, "ids", "rules", "test", str(rules), "--events", str(events), "--builtin"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stdout[-500:] + r.stderr[-500:]
    assert "internal error" not in r.stderr and str(events) in r.stderr, r.stderr[-500:]
    assert "observation #2: at: expected seconds as a number" in r.stderr or "too long" in r.stderr, r.stderr[-500:]
