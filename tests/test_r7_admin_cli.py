"""Outside round 7, the long-running commands' options as an administrator types them: a log level
logging does not know is a usage error naming the choices (docs/cli.md, exit 2), not "internal
error ... a bug in pacsguard" (exit 70), and a bad choice is worded without pydantic's class of error."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from terminal import PACSGUARD


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("PACSGUARD_CONFIG", None)
    return subprocess.run([*PACSGUARD, *args], cwd=cwd, capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("command", [["serve"], ["witness", "serve"]])
def test_an_unknown_log_level_is_a_usage_error_naming_the_choices(tmp_path: Path, command: list[str]) -> None:
    done = run(tmp_path, *command, "--log-level", "verbose")
    assert done.returncode == 2, done.stderr
    assert "internal error" not in done.stderr
    assert "Invalid value for '--log-level': 'verbose' is not one of 'debug', 'info', 'warning', 'error'" \
        in done.stderr


@pytest.mark.parametrize("command", [["serve"], ["witness", "serve"]])
def test_a_log_level_in_capitals_is_taken(tmp_path: Path, command: list[str]) -> None:
    """logging's own names are in capitals (`DEBUG`): taken, so the command gets as far as the
    configuration, whose unknown key it then names."""
    (tmp_path / "pacsguard.yaml").write_text("store: {colour: red}\n")
    done = run(tmp_path, *command, "--log-level", "DEBUG")
    assert done.returncode == 2
    assert "store.colour: unknown key" in done.stderr and "--log-level" not in done.stderr


def test_a_bad_choice_is_worded_without_pydantic(tmp_path: Path) -> None:
    done = run(tmp_path, "events", "search", "--format", "xml")
    assert done.returncode == 2
    assert "Invalid value for '--format': 'xml' is not one of 'table', 'json'." in done.stderr
    assert "Value error" not in done.stderr


def test_init_names_a_signing_key_path_that_is_a_folder(tmp_path: Path) -> None:
    """init said "signing key ... exists, kept", then failed with "[Errno 21] Is a directory"."""
    (tmp_path / "pacsguard.yaml").write_text("store: {signing_key: keys}\n")
    (tmp_path / "keys").mkdir()
    done = run(tmp_path, "init")
    assert done.returncode == 2
    assert "exists, kept" not in done.stdout
    assert f"store.signing_key: {tmp_path / 'keys'} is not a file" in done.stderr
    assert not (tmp_path / "var").exists()  # no store made around a key that cannot be
