"""`pacsguard atna listen --http HOST:PORT --http-token-env NAME` (docs/audit.md, "Turning it on"):
an administrator trying the endpoint without a configuration file who forgot to export NAME, or
exported it empty, is told so by the option given, `--http-token-env NAME`, with exit 2 and before
anything is made; not by `atna.http.token`, a key of a file this command has not, and an empty
token does not start an endpoint that refuses every client."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from peers.dcmtk import free_port

HOST = "127.0.120.14"  # this file's loopback address (round 11, helper J)
NAME = "R11J_ATNA_TOKEN"


@pytest.mark.parametrize("value", [None, ""])
def test_listen_names_its_token_option_when_the_variable_is_unset_or_empty(tmp_path: Path,
                                                                          value: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if k != NAME}
    if value is not None:
        env[NAME] = value
    env["PACSGUARD_KEY_DIR"] = str(tmp_path / "keys")
    try:
        proc = subprocess.run([sys.executable, "-m", "pacsguard.cli", "atna", "listen", "--http",
                               f"{HOST}:{free_port(HOST)}", "--http-token-env", NAME, "--store",
                               str(tmp_path / "audit.db")], capture_output=True, text=True, env=env, timeout=8)
    except subprocess.TimeoutExpired:
        pytest.fail(f"atna listen started its endpoint with {NAME}={value!r} instead of refusing it")
    assert proc.returncode == 2, proc.stderr
    assert f"--http-token-env {NAME}: the environment variable is not set or is empty" in proc.stderr
    assert "atna.http.token" not in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "audit.db").exists() and not (tmp_path / "keys").exists()  # nothing made
