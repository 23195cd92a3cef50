"""What outside round 7's administrator found left over (coordinator): a missing secret names the
configuration key that asked for it everywhere (the ATNA endpoint's and the witnesses' tokens),
and `atna listen` and `gateway run` take `--log-level` as a choice like `serve`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pacsguard.config.schema import SecretRef
from pacsguard.store.keys import generate_key
from terminal import PACSGUARD

UNSET = "PACSGUARD_R7_COORD_UNSET"


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("PACSGUARD_CONFIG", None)
    env.pop(UNSET, None)
    return subprocess.run([*PACSGUARD, *args], cwd=cwd, capture_output=True, text=True, timeout=60, env=env)


def test_a_secret_resolved_under_a_key_names_it() -> None:
    with pytest.raises(LookupError, match=f"^atna.http.token: environment variable {UNSET} is not set$"):
        SecretRef(env=UNSET).resolve("atna.http.token")
    with pytest.raises(LookupError, match=f"^environment variable {UNSET} is not set$"):
        SecretRef(env=UNSET).resolve()


@pytest.mark.parametrize("section, key", [
    ("atna:\n  enabled: true\n  http: {host: 127.0.70.1, port: 0, token: {env: %s}}\n", "atna.http.token"),
    ("store: {url: var/s.db, signing_key: var/keys/own.key, witnesses: [{url: 'http://127.0.70.1:9/',"
     " token: {env: %s}}]}\n", "store.witnesses.0.token"),
    ("witness:\n  enabled: true\n  host: 127.0.70.1\n  port: 0\n  logs:\n    - name: gw1\n"
     "      public_key: gw1.pub\n      token: {env: %s}\n", "witness.logs.0.token"),
])
def test_serve_names_the_key_of_a_missing_token(tmp_path: Path, section: str, key: str) -> None:
    generate_key(tmp_path / "gw1.key")
    (tmp_path / "gw1.key.pub").rename(tmp_path / "gw1.pub")
    (tmp_path / "pacsguard.yaml").write_text(section % UNSET)
    made = run(tmp_path, "init")
    assert made.returncode == 0, made.stderr
    proc = run(tmp_path, "serve")
    assert proc.returncode != 0
    assert f"{key}: environment variable {UNSET} is not set" in proc.stderr + proc.stdout, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", [["atna", "listen", "--tcp", "127.0.70.1:0", "--store", "a.db"],
                                     ["gateway", "run"]])
def test_atna_listen_and_gateway_run_log_level_is_a_choice(tmp_path: Path, command: list[str]) -> None:
    proc = run(tmp_path, *command, "--log-level", "verbose")
    assert proc.returncode == 2, proc.stderr
    assert "internal error" not in proc.stderr
    assert "'verbose' is not one of 'debug', 'info', 'warning', 'error'" in proc.stderr
