"""A rule's cidr_in with host bits set (10.99.0.5/16) is a rule problem naming it, as in the
configuration's networks: it was widened to 10.99.0.0/16 without a word (an outside probe)."""

from __future__ import annotations

from pathlib import Path

from test_rules import GOOD, problems_of

from pacsguard.ids.rules import parse_rules_text


def test_a_cidr_with_host_bits_is_a_problem_not_a_wider_network(tmp_path: Path) -> None:
    found = problems_of(tmp_path, GOOD.replace("10.99.0.0/16", "10.99.0.5/16"))
    assert [(rule, field) for rule, field, _ in found] == [("site-night-find", "match.client_host.cidr_in")], found
    assert "10.99.0.5/16 has host bits set: write 10.99.0.5 for one host or 10.99.0.0/16" in found[0][2]
    rules, bad = parse_rules_text(GOOD.replace("[10.99.0.0/16]", "[10.99.0.0/16, 10.1.2.3]"), "site.yaml")
    assert not bad and rules[0].conditions[1].value == ("10.99.0.0/16", "10.1.2.3/32")
