"""The command line as an administrator uses it: a real `pacsguard` process each time."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from pacsguard.store import EventStore
from pacsguard.store.keys import load_private_key
from store_helpers import make_events

PACSGUARD = [sys.executable, "-m", "pacsguard.cli"]


def run(*args: str, cwd: Path, check_code: int | None = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run([*PACSGUARD, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)
    if check_code is not None:
        assert proc.returncode == check_code, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture
def home(tmp_path: Path) -> Path:
    run("init", cwd=tmp_path)
    return tmp_path


def test_version(tmp_path):
    assert run("--version", cwd=tmp_path).stdout.startswith("pacsguard ")


def test_init_writes_config_key_and_store(home):
    assert (home / "pacsguard.yaml").exists()
    key = home / "var/keys/store-signing.key"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    load_private_key(key)
    assert "exists, kept" in run("init", cwd=home).stdout  # idempotent, never overwrites the key


def test_config_check(home):
    assert "OK" in run("config", "check", "pacsguard.yaml", cwd=home).stdout
    (home / "bad.yaml").write_text("store:\n  checkpoint_interval: -1\n  colour: red\n")
    err = run("config", "check", "bad.yaml", cwd=home, check_code=2).stderr
    assert "store.checkpoint_interval" in err and "greater than 0" in err and "store.colour: unknown key" in err
    assert "store (spine): 2 problems" in err and "gateway (gateway): OK" in err
    # A file that cannot be read as a configuration at all: no section is called OK.
    (home / "broken.yaml").write_text("store: [unclosed\n")
    err = run("config", "check", "broken.yaml", cwd=home, check_code=2).stderr
    assert "not valid YAML" in err and "gateway (gateway): not checked" in err and ": OK" not in err


def _fill(home: Path, n: int = 120) -> None:
    es = EventStore.open(str(home / "var/pacsguard.db"), key_path=home / "var/keys/store-signing.key")
    es.append(make_events(n))
    es.close()


def test_events_search_json_and_table(home):
    _fill(home)
    out = run("events", "search", "--patient", "PID0003", "--format", "json", cwd=home).stdout.splitlines()
    assert len(out) == 3 and all(json.loads(line)["patient_ids"] == ["PID0003"] for line in out)
    table = run("events", "search", "--actor", "MOD2", "--kind", "dicom.association.*", cwd=home).stdout
    assert "dicom.association.accepted" in table and "MOD2@10.1.0." in table
    # --store overrides the config, from any folder.
    other = home / "elsewhere"
    other.mkdir()
    out = run("events", "search", "--store", str(home / "var/pacsguard.db"), "--study",
              "1.2.826.0.1.3680043.2.7", "--format", "json", cwd=other).stdout.splitlines()
    assert len(out) == 2
    err = run("events", "search", "--since", "yesterday", cwd=home, check_code=2).stderr
    assert "--since" in err and "ISO 8601" in err


def test_events_tail(home):
    _fill(home, 30)
    out = run("events", "tail", "-n", "5", "--format", "json", cwd=home).stdout.splitlines()
    assert [json.loads(line)["details"]["n"] for line in out] == [25, 26, 27, 28, 29]


def test_audit_verify_ok_then_tampered(home):
    _fill(home)
    ok = run("audit", "verify", cwd=home)
    assert "OK" in ok.stdout
    db = sqlite3.connect(home / "var/pacsguard.db", isolation_level=None)
    db.execute("DELETE FROM events WHERE seq = 50")
    db.close()
    bad = run("audit", "verify", "--format", "json", cwd=home, check_code=1)
    report = json.loads(bad.stdout)
    assert not report["ok"]
    deleted = [f for f in report["findings"] if f["kind"] == "deleted" and f["seq"] == 50]
    assert deleted and deleted[0]["message"].startswith("event #50 is missing (deleted)"), report["findings"]
    # A copy of the public key alone is enough to verify.
    pub = home / "pub.pem"
    shutil.copy(home / "var/keys/store-signing.key.pub", pub)
    run("audit", "verify", "--key", str(pub), "--store", str(home / "var/pacsguard.db"), cwd=home, check_code=1)


def test_bad_stores_are_one_line_and_exit_2(home):
    (home / "junk.db").write_bytes(b"\x00junk" * 100)
    err = run("events", "search", "--store", str(home / "junk.db"), cwd=home, check_code=2).stderr
    assert "junk.db: not a pacsguard store" in err
    err = run("events", "search", "--store", "postgresql://x@127.0.0.1:9/db", cwd=home, check_code=2).stderr
    assert "127.0.0.1:9" in err
    (home / "broken.yaml").write_text("store: [\n")
    err = run("events", "search", "-c", "broken.yaml", cwd=home, check_code=2).stderr
    assert "broken.yaml: line" in err and "not valid YAML" in err


def test_a_port_of_unicode_digits_is_a_usage_error(tmp_path):
    """"\u00b2" is a digit to str.isdigit but not to int(): once an internal error, now the option's
    own message and exit code 2."""
    proc = run("gateway", "run", "--listen", "127.0.0.1:\u00b2", "--upstream", "X@127.0.0.1:104", "--aet", "GW",
               cwd=tmp_path, check_code=2)
    assert "--listen: expected HOST:PORT, got '127.0.0.1:\u00b2'" in proc.stderr


def test_atna_listen_names_what_its_options_lack(tmp_path):
    """`atna listen --http` without a credential, and a connection bound out of range: one line
    naming the option, exit 2, before anything is made (no key, no store)."""
    proc = run("atna", "listen", "--http", "127.0.0.1:0", cwd=tmp_path, check_code=2)
    assert "--http needs --http-token-env NAME" in proc.stderr
    proc = run("atna", "listen", "--tcp", "127.0.0.1:0", "--max-connections", "0", cwd=tmp_path, check_code=2)
    assert "--max-connections" in proc.stderr
    assert not list(tmp_path.iterdir())
