"""The quick start's signing key lives away from the store's folder (issue 16, section 2): in the
key folder, owner-only; a key an older version made beside the store is still found and used."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pacsguard.store import keys
from peers.dcmtk import free_port, wait_for_port
from test_cli import run

pytestmark = pytest.mark.peers


def test_the_key_folder_follows_root_xdg_and_the_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(keys.KEY_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert keys.key_dir() == tmp_path / "xdg" / "pacsguard" / "keys"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert keys.key_dir() == tmp_path / "home" / ".config" / "pacsguard" / "keys"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert keys.key_dir() == Path("/etc/pacsguard/keys")
    monkeypatch.setenv(keys.KEY_DIR_ENV, str(tmp_path / "chosen"))
    assert keys.key_dir() == tmp_path / "chosen"


def test_each_store_gets_its_own_key_name_and_a_url_password_is_left_out(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    monkeypatch.setenv(keys.KEY_DIR_ENV, str(tmp_path / "k"))
    a, b = keys.default_key(str(tmp_path / "a" / "site.db")), keys.default_key(str(tmp_path / "b" / "site.db"))
    assert a.parent == b.parent == tmp_path / "k" and a != b and a.name.startswith("site.db-")
    url = keys.default_key("postgresql://audit:hunter2@db.example:5432/pacsguard")
    assert url == keys.default_key("postgresql://audit:other@db.example:5432/pacsguard")
    assert "hunter2" not in str(url) and url.name.startswith("pacsguard-")


def _gateway_run(store: Path, key_dir: Path, dcmtk: Any) -> None:
    """`gateway run --store STORE` with one C-ECHO through it (the PACS is away: the refusal is recorded)."""
    port = free_port()
    env = {**os.environ, keys.KEY_DIR_ENV: str(key_dir), "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "pacsguard.cli", "gateway", "run", "--listen", f"127.0.0.1:{port}",
                             "--aet", "GW", "--upstream", f"PACS@127.0.0.1:{free_port()}", "--store", str(store)],
                            cwd=store.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert wait_for_port("127.0.0.1", port, 30, proc)
        dcmtk.run("echoscu", "-aet", "MODALITY", "-aec", "GW", "127.0.0.1", str(port))
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0 and "Traceback" not in out, out


def test_gateway_run_makes_its_key_in_the_key_folder_and_verify_finds_it(dcmtk: Any, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    store, key_dir = tmp_path / "data" / "site.db", tmp_path / "keys"
    store.parent.mkdir()
    _gateway_run(store, key_dir, dcmtk)
    monkeypatch.setenv(keys.KEY_DIR_ENV, str(key_dir))
    made = keys.default_key(str(store))
    assert made.is_file() and oct(made.stat().st_mode & 0o777) == "0o600"
    assert oct(key_dir.stat().st_mode & 0o777) == "0o700"
    assert not list(store.parent.glob("*.key*"))  # nothing key-like beside the store
    out = run("audit", "verify", "--store", str(store), cwd=tmp_path).stdout
    assert "OK" in out and "signature valid" in out


def test_a_key_made_beside_the_store_by_an_older_version_is_kept(dcmtk: Any, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    store, key_dir = tmp_path / "site.db", tmp_path / "keys"
    legacy = keys.generate_key(Path(str(store) + ".key"))
    _gateway_run(store, key_dir, dcmtk)
    assert not key_dir.exists()
    monkeypatch.setenv(keys.KEY_DIR_ENV, str(key_dir))
    out = run("audit", "verify", "--store", str(store), cwd=tmp_path).stdout
    assert "OK" in out and f"signed by key {keys.key_id(keys.load_public_key(legacy))}" in out
