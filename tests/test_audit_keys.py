"""`audit verify --store F` finds F's key beside it (as `gateway run --store F` makes it), with or
without a pacsguard.yaml in the folder, and names the key it needs when there is none."""

from __future__ import annotations

from pathlib import Path

from pacsguard.store import EventStore
from pacsguard.store.keys import generate_key
from store_helpers import make_events
from test_cli import run


def _store_with_key_beside(folder: Path) -> Path:
    db = folder / "site.db"
    es = EventStore.open(str(db), key_path=generate_key(Path(str(db) + ".key")), create=True)
    es.append(make_events(12))
    es.close()
    return db


def test_verify_store_finds_its_key_beside_it_even_with_a_config(tmp_path: Path) -> None:
    run("init", cwd=tmp_path)  # a pacsguard.yaml whose own signing key did not sign this store
    db = _store_with_key_beside(tmp_path)
    out = run("audit", "verify", "--store", str(db), cwd=tmp_path).stdout
    assert "OK" in out and "signature valid" in out


def test_verify_store_without_a_config(tmp_path: Path) -> None:
    db = _store_with_key_beside(tmp_path)
    assert "OK" in run("audit", "verify", "--store", str(db), cwd=tmp_path).stdout


def test_verify_names_the_key_it_needs(tmp_path: Path) -> None:
    db = _store_with_key_beside(tmp_path)
    Path(str(db) + ".key").unlink()
    Path(str(db) + ".key.pub").unlink()
    err = run("audit", "verify", "--store", str(db), cwd=tmp_path, check_code=2).stderr
    assert "signed by key" in err and "--key" in err
