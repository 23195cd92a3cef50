"""Outside round 9, wave 2 (W1, issue #18): several writers on one PostgreSQL store, each signing
its checkpoints with a key of its own, never verified clean: `audit verify` took one `--key`, and
every checkpoint of the other writers was a finding on a store nobody changed. `--key` is now
repeatable: each checkpoint is checked with the key it names among those given (RFC 8032
Ed25519 over the RFC 9162 tree head), and one signed by a key none of them is stays a finding
that names its key. Real PostgreSQL (tests/peers/postgres.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from pacsguard.store import EventStore
from pacsguard.store.keys import generate_key, key_id, load_public_key, public_path
from pacsguard.store.verify import verify_store
from store_helpers import make_events, raw_sql

PACSGUARD = Path(sys.executable).with_name("pacsguard")


def _two_writers(url: str, tmp_path: Path) -> tuple[Path, Path]:
    """Two writers (two gateways' stores) on one database, each with its own signing key,
    appending and signing checkpoints in turn; their private key files."""
    paths = [tmp_path / "keys" / f"site-{name}.key" for name in ("a", "b")]
    for path in paths:
        generate_key(path)
    first = EventStore.open(url, key_path=paths[0], create=True, checkpoint_interval=3600)
    second = EventStore.open(url, key_path=paths[1], checkpoint_interval=3600)
    try:
        for n in range(3):
            for m, es in enumerate((first, second)):
                es.append(make_events(4, start=8 * n + 4 * m))
                assert es.checkpoint() is not None
    finally:
        first.close()
        second.close()
    return paths[0], paths[1]


def _verify(url: str, *keys: Path) -> tuple[int, dict[str, Any]]:
    # A key's path, or "--witness" and the file after it.
    args, pending = [], "--key"
    for k in keys:
        if str(k) == "--witness":
            pending = "--witness"
            continue
        args += [pending, str(k)]
        pending = "--key"
    done = subprocess.run([str(PACSGUARD), "audit", "verify", "--store", url, *args, "--format", "json"],
                          capture_output=True, text=True, timeout=60)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout)


def test_each_writers_key_verifies_its_own_checkpoints(postgres_db_url: str, tmp_path: Path) -> None:
    a, b = _two_writers(postgres_db_url, tmp_path)
    ids = [key_id(load_public_key(k)) for k in (a, b)]
    code, report = _verify(postgres_db_url, public_path(a), public_path(b))
    assert code == 0 and report["ok"], report["findings"]
    assert report["checkpoints"] == 6 and report["events"] == 24
    assert report["keys"] == ids and report["newest_checkpoint_signature"] == "valid"
    assert report["newest_checkpoint_key"] == ids[1]


def test_a_writer_not_given_is_still_a_finding_naming_its_key(postgres_db_url: str, tmp_path: Path) -> None:
    a, b = _two_writers(postgres_db_url, tmp_path)
    other = tmp_path / "keys" / "stranger.key"
    generate_key(other)
    b_id = key_id(load_public_key(b))
    for given in ((public_path(a),), (public_path(a), public_path(other))):
        code, report = _verify(postgres_db_url, *given)
        assert code == 1 and not report["ok"]
        found = [f for f in report["findings"] if f["kind"] == "checkpoint"]
        assert len(found) == 3 == len(report["findings"]), report["findings"]
        assert all(f"signed by key {b_id}" in f["message"] for f in found), found
        assert report["newest_checkpoint_signature"] == "other key"


def test_a_forged_checkpoint_fails_with_the_key_it_names_among_several(postgres_db_url: str,
                                                                        tmp_path: Path) -> None:
    """Giving several keys widens nothing: writer B's checkpoint with its signature replaced is a
    signature that fails with the key it names (B's), the one finding; the other checkpoints,
    A's and B's, still verify."""
    a, b = _two_writers(postgres_db_url, tmp_path)
    es = EventStore.open(postgres_db_url)
    cps = es.checkpoints()
    es.close()
    b_id = key_id(load_public_key(b))
    victim = next(cp for cp in cps if cp.key_id == b_id)
    with raw_sql(postgres_db_url) as cur:
        cur.execute("UPDATE checkpoints SET signature = %s WHERE tree_size = %s",
                    (bytes(64), victim.tree_size))
    es = EventStore.open(postgres_db_url)
    report = verify_store(es, [load_public_key(public_path(k)) for k in (a, b)])
    es.close()
    assert [(f.kind, f.seq) for f in report.findings] == [("checkpoint", victim.tree_size)], report.findings
    assert f"signature INVALID with key {b_id}" in report.findings[0].message


def test_a_witness_holding_both_writers_logs_is_checked_for_each(postgres_db_url: str, tmp_path: Path) -> None:
    """Each writer's `serve` delivers its own checkpoints to the witness file: with both keys,
    verify checks both logs against the store (RFC 9162 consistency) and finds nothing; a
    checkpoint of writer B the store lost is then found by B's log ("deleted checkpoint")."""
    from pacsguard.witness.file import FileWitness

    a, b = _two_writers(postgres_db_url, tmp_path)
    es = EventStore.open(postgres_db_url)
    cps = es.checkpoints()
    es.close()
    held = tmp_path / "witness.jsonl"
    for cp in cps:
        FileWitness(held).deliver(cp)
    code, report = _verify(postgres_db_url, public_path(a), public_path(b), Path("--witness"), held)
    assert code == 0 and report["ok"], report["findings"]
    ids = [key_id(load_public_key(k)) for k in (a, b)]
    assert sorted((w["log"], w["checkpoints"]) for w in report["witnesses"]) == sorted((i, 3) for i in ids)
    lost = next(cp for cp in cps if cp.key_id == ids[1])
    with raw_sql(postgres_db_url) as cur:
        cur.execute("DELETE FROM checkpoints WHERE tree_size = %s", (lost.tree_size,))
    code, report = _verify(postgres_db_url, public_path(a), public_path(b), Path("--witness"), held)
    assert code == 3, report["findings"]
    assert [(f["kind"], f["seq"]) for f in report["findings"]] == [("deleted checkpoint", lost.tree_size)]
