"""Issue 17, item 4: `pacsguard config show`, the configuration in use with its defaults and masked secrets."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml

from pacsguard.cli.config import MASK, effective
from pacsguard.config.loader import parse_config
from terminal import PACSGUARD

CONFIG = """\
store:
  url: postgresql://pacsguard@db.example:5432/audit
  password: {env: PACSGUARD_TEST_DB_PASSWORD}
sinks:
  syslog: {host: siem.example, key_file: keys/client.key}
gateway:
  routes:
    - name: ct
      listen: {port: 11112, ae_title: PACSGUARD}
      upstream: {host: 10.0.0.5, port: 104, ae_title: ARCHIVE}
"""


def _show(cwd: Path, *args: str) -> str:
    env = {**os.environ, "PACSGUARD_TEST_DB_PASSWORD": "s3cret-value"}
    env.pop("PACSGUARD_CONFIG", None)
    proc = subprocess.run([*PACSGUARD, "config", "show", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_show_fills_defaults_masks_secrets_and_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "pacsguard.yaml").write_text(CONFIG)
    text = _show(tmp_path)
    assert str(tmp_path / "pacsguard.yaml") in text.splitlines()[0]
    data = yaml.safe_load(text)
    assert data["store"]["password"] == MASK
    assert "PACSGUARD_TEST_DB_PASSWORD" not in text and "s3cret" not in text
    # Defaults the file does not write are filled in.
    assert data["store"]["checkpoint_interval"] == 60.0
    assert data["sinks"]["syslog"]["port"] == 6514 and data["sinks"]["syslog"]["key_file"] == "keys/client.key"
    assert data["gateway"]["routes"][0]["listen"]["host"] == "127.0.0.1"
    assert data["ids"]["builtin_rules"] is True
    as_json = json.loads(_show(tmp_path, "--format", "json"))
    assert as_json["source"] == str(tmp_path / "pacsguard.yaml") and as_json["config"] == data


def test_show_without_a_file_prints_the_defaults(tmp_path: Path) -> None:
    text = _show(tmp_path)
    assert "no file" in text.splitlines()[0] and yaml.safe_load(text)["store"]["url"] == "var/pacsguard.db"


def test_every_secret_kind_is_masked() -> None:
    config = parse_config(CONFIG.replace("{env: PACSGUARD_TEST_DB_PASSWORD}", "{file: /run/secrets/db}"))
    data = effective(config)
    assert data["store"]["password"] == MASK and "/run/secrets/db" not in json.dumps(data)
    # Any string under a secret-looking key is masked, wherever it is; paths to key files are not.
    assert effective({"api_token": "abc", "password": "x", "key": "k", "key_file": "a.key", "monkey": "m"}) == {
        "api_token": MASK, "password": MASK, "key": MASK, "key_file": "a.key", "monkey": "m"}
