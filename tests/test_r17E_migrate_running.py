"""Outside round 17 (E): the upgrade of docs/deployment.md done with the old gateway still running.
`store migrate` took its backup and migrated the store under a `serve` that held the store's
journal and went on writing with the old schema's code; it must refuse, naming the journal and
`systemctl stop pacsguard`, and leave the store as it was."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from pacsguard.store import database, upgrade
from store_helpers import make_events, write_revision_0001_store
from test_cli import run

# The old gateway's part that matters here: the journal it holds open and locked while it runs
# (pacsguard.events.journal.Journal, as `serve` opens it beside an SQLite store).
HOLDER = """
import sys, time
from pathlib import Path
from pacsguard.events.journal import Journal
journal = Journal(Path(sys.argv[1]))
print("holding", flush=True)
time.sleep(60)
"""


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _old_home(tmp_path: Path) -> Path:
    run("init", "--demo", cwd=tmp_path)
    store = tmp_path / "var/pacsguard.db"
    store.unlink()
    write_revision_0001_store(str(store), make_events(25))
    return store


def _revision(store: Path) -> str | None:
    url = database.normalise_target(str(store))
    engine = database.make_engine(url, create=False)
    try:
        return upgrade.read_state(engine, url).revision
    finally:
        engine.dispose()


def test_migrate_refuses_while_a_running_gateway_holds_the_store_journal(tmp_path: Path) -> None:
    store = _old_home(tmp_path)
    journal = Path(f"{store}.journal")
    before = _digest(store)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(journal)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        for extra in ((), ("--dry-run",)):
            done = run("store", "migrate", "--backup-to", "bk", *extra, cwd=tmp_path, check_code=2)
            err = " ".join(done.stderr.split())
            assert len(done.stderr.strip().splitlines()) <= 3, done.stderr  # one message, no traceback
            assert "Traceback" not in done.stderr
            assert "in use" in err and str(journal) in err and "systemctl stop pacsguard" in err, err
            assert _digest(store) == before and _revision(store) == "0001"
            assert not (tmp_path / "bk").exists() or not any((tmp_path / "bk").iterdir())
    finally:
        holder.kill()
        holder.wait(timeout=10)
    # Once the gateway is stopped the same command migrates.
    out = " ".join(run("store", "migrate", "--backup-to", "bk", cwd=tmp_path).stdout.split())
    assert "migrated" in out and _revision(store) == database.HEAD_REVISION


def test_migrate_does_not_create_a_journal_that_no_writer_made(tmp_path: Path) -> None:
    """Run as root by mistake, a journal it created would belong to root and keep the service out."""
    store = _old_home(tmp_path)
    journal = Path(f"{store}.journal")
    journal.unlink(missing_ok=True)
    run("store", "migrate", "--backup-to", "bk", cwd=tmp_path)
    assert not journal.exists()
