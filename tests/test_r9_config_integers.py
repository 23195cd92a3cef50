"""An integer Python refuses to convert (more than 4,300 digits, CVE-2020-10735) in pacsguard.yaml
is a YAML error naming its line and column, exit 2, as in the IDS rule files: not an internal error
(outside round 9, found by the IDS's tester)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from pacsguard.cli import main


def test_a_5001_digit_integer_in_the_configuration_is_named_with_its_place(tmp_path: Path) -> None:
    config = tmp_path / "pacsguard.yaml"
    config.write_text("store:\n  checkpoint_interval: " + "9" * 5001 + "\n")
    out = CliRunner().invoke(main.app, ["config", "check", str(config)])
    assert out.exit_code == 2, out.output
    assert "line 2, column 24: not valid YAML: an integer of 5,001 characters is too long" in out.output
    assert "internal error" not in out.output
