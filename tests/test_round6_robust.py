"""Damaged stores and hostile files must not crash commands; recording health that tells the truth
(an outside tester, round 6):

- a term row whose posting list is not whole offsets, an event body that is not a sealed record:
  `events search` exited 70 ("a bug in pacsguard"); now exit 2 naming the row (docs/store.md);
- a damaged alembic_version page read as an old revision ("run `store migrate`"); now SQLite's
  quick_check findings;
- a witness file line nested deeper than Python's JSON reader follows: exit 70; now exit 2;
- `audit prove` on a JSON object that is not a report: exit 1 (a report that fails); now 2;
- a journal that cannot grow while the store commits: "recovered"/"FAILED" pairs every 2 s, idle,
  each stored; now one alert, and "recovered" only once the journal takes writes again.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from pacsguard.events import Event
from pacsguard.runtime.outputs import open_outputs
from pacsguard.store import EventQuery, EventStore
from pacsguard.store.errors import StoreError
from pacsguard.store.keys import generate_key
from store_helpers import make_events
from test_cli import run
from tmpfs_helpers import small_tmpfs

#: The loopback address and port this module's network test may use (round 6, helper "robust").
HOST, PORT = "127.0.72.1", 25311
DEEP = "[" * 50_000 + "]" * 50_000


def _store(tmp_path: Path, batches: int = 3) -> tuple[Path, Path]:
    """A store of ``batches`` checkpointed batches of 4 events (actors MOD0..MOD2) and its key."""
    key = generate_key(tmp_path / "k.key")
    path = tmp_path / "s.db"
    es = EventStore.open(str(path), key_path=key, create=True, checkpoint_interval=3600)
    for b in range(batches):
        es.append(make_events(4, 4 * b))
        es.checkpoint()
    es.close()
    return path, key


def _sql(path: Path, statement: str) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(statement)


# --- item 6: searches on a damaged store --------------------------------------------------------


def test_a_posting_list_of_odd_length_is_a_damaged_store_named_by_row(tmp_path: Path) -> None:
    path, _ = _store(tmp_path)
    _sql(path, "UPDATE event_terms SET seqs = x'01' WHERE term = 'actor:MOD1'")
    done = run("events", "search", "--store", str(path), "--actor", "MOD1", cwd=tmp_path, check_code=2)
    assert "event_terms row of term 'actor:MOD1'" in done.stderr, done.stderr
    assert "1 bytes long, not a whole number of 4-byte offsets" in done.stderr
    assert "pacsguard audit verify" in done.stderr and "internal error" not in done.stderr


def test_a_body_that_is_not_a_sealed_record_is_named_by_seq(tmp_path: Path) -> None:
    path, _ = _store(tmp_path)
    _sql(path, "UPDATE event_bodies SET body = 'not json' WHERE seq = 5")
    done = run("events", "search", "--store", str(path), "--since", "2000-01-01", cwd=tmp_path, check_code=2)
    assert "events row #5: its body is not a sealed record" in done.stderr, done.stderr
    assert "pacsguard audit verify" in done.stderr and "internal error" not in done.stderr


def test_a_framed_body_whose_event_does_not_decode_is_a_damaged_store(tmp_path: Path) -> None:
    path, _ = _store(tmp_path)
    _sql(path, """UPDATE event_bodies SET body = '{"event":{"x":1},"prev":"00","seq":5}' WHERE seq = 5""")
    for args in (["search", "--kind", "dicom.*"], ["tail", "-n", "50"]):
        done = run("events", *args, "--store", str(path), cwd=tmp_path, check_code=2)
        assert "the store is damaged: events row #5: its event does not decode" in done.stderr, done.stderr
        assert "pacsguard audit verify" in done.stderr


# --- item 9: a damaged version table is damage, not an old revision -------------------------------


def test_a_damaged_version_table_is_reported_as_damage_not_as_an_old_revision(tmp_path: Path) -> None:
    path, key = _store(tmp_path, 1)
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = db.execute("PRAGMA page_size").fetchone()[0]
        root = db.execute("SELECT rootpage FROM sqlite_schema WHERE name = 'alembic_version'").fetchone()[0]
    with open(path, "r+b") as f:  # the cell area at the end of the page: the revision's row
        f.seek(root * page - 64)
        f.write(bytes(64))
    with pytest.raises(StoreError, match=r"the database is damaged \(SQLite's quick_check: .*alembic_version") as e:
        EventStore.open(str(path))
    assert "migrate" not in str(e.value).replace("is not migrated", "")
    done = run("audit", "verify", "--store", str(path), "--key", str(key) + ".pub", cwd=tmp_path, check_code=2)
    assert "quick_check" in done.stderr and "store migrate" not in done.stderr, done.stderr
    done = run("store", "migrate", "--store", str(path), "--backup-to", str(tmp_path / "bk"), cwd=tmp_path,
               check_code=None)
    assert done.returncode == 2 and "quick_check" in done.stderr, (done.returncode, done.stderr)


# --- item 10: witness JSON nested deeper than the reader follows ---------------------------------


def test_a_deeply_nested_witness_line_is_refused_by_file_and_line(tmp_path: Path) -> None:
    path, key = _store(tmp_path, 2)
    witness = tmp_path / "w.jsonl"
    witness.write_text(DEEP + "\n")
    done = run("audit", "verify", "--store", str(path), "--key", str(key) + ".pub", "--witness", str(witness),
               cwd=tmp_path, check_code=2)
    assert f"{witness} line 1: not JSON (nested deeper than pacsguard reads JSON)" in done.stderr, done.stderr
    report = tmp_path / "r.json"
    report.write_text(run("audit", "patient", "PID0001", "--store", str(path), "--key", str(key), "--format", "json",
                          cwd=tmp_path).stdout)
    done = run("audit", "prove", str(report), "--key", str(key) + ".pub", "--checkpoint", str(witness),
               cwd=tmp_path, check_code=2)
    assert f"{witness} line 1: not JSON" in done.stderr, done.stderr
    deep_report = tmp_path / "deep.json"
    deep_report.write_text('{"a": ' + DEEP + "}")
    done = run("audit", "prove", str(deep_report), "--key", str(key) + ".pub", cwd=tmp_path, check_code=2)
    assert "not a saved report (its JSON is nested deeper" in done.stderr, done.stderr


def test_the_witness_service_answers_a_deeply_nested_body_with_400(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from pacsguard.config.schema import SecretRef
    from pacsguard.store.keys import key_id, load_public_key, public_path
    from pacsguard.witness.build import witness_server
    from pacsguard.witness.config import WitnessedLog, WitnessServiceConfig

    site = generate_key(tmp_path / "site.key")
    monkeypatch.setenv("SITE_TOKEN", "t0ken")
    log = WitnessedLog(name="site", public_key=public_path(site), token=SecretRef(env="SITE_TOKEN"))
    cfg = WitnessServiceConfig.model_validate({"enabled": True, "host": HOST, "port": PORT, "storage": Path("held"),
                                               "signing_key": Path("keys/w.key"), "logs": [log]})
    server = witness_server(cfg, lambda p: tmp_path / "witness" / p, lambda e: None)
    url = server.start()
    try:
        body = ("[" * 30_000 + "]" * 30_000).encode()  # under the 64 KiB request limit
        request = urllib.request.Request(f"{url}/v1/logs/{key_id(load_public_key(site))}/checkpoints", data=body,
                                         method="POST", headers={"Authorization": "Bearer t0ken",
                                                                 "Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=10)
        assert answer.value.code == 400 and "not JSON" in json.loads(answer.value.read())["error"]
    finally:
        server.close()


# --- item 11: `audit prove` on JSON that is not a report -------------------------------------------


@pytest.mark.parametrize("text", ["{}", '{"a": 1}', '{"format": "something/v9"}'])
def test_a_json_object_that_is_not_a_report_exits_2(tmp_path: Path, text: str) -> None:
    key = generate_key(tmp_path / "k.key")
    report = tmp_path / "not-a-report.json"
    report.write_text(text)
    done = run("audit", "prove", str(report), "--key", str(key) + ".pub", cwd=tmp_path, check_code=2)
    assert f"{report}: not a saved report (" in done.stderr and "FAILS" not in done.stdout, done.stderr


def test_a_report_of_the_old_format_still_fails_as_a_report(tmp_path: Path) -> None:
    key = generate_key(tmp_path / "k.key")
    report = tmp_path / "old.json"
    report.write_text(json.dumps({"format": "pacsguard-patient-report/v1"}))
    done = run("audit", "prove", str(report), "--key", str(key) + ".pub", cwd=tmp_path, check_code=1)
    assert "predates the format" in done.stdout, done.stdout


# --- item 7: a journal that cannot grow while the store commits ----------------------------------


def _fill_until(folder: Path, free: int) -> Path:
    """A file that leaves about ``free`` bytes of the file system: enough for SQLite's few pages,
    not for the journal's 2 MiB of room."""
    filler = folder / "filler"
    chunk = bytes(65536)
    with filler.open("wb", buffering=0) as out:
        while True:
            st = os.statvfs(folder)
            if st.f_bavail * st.f_frsize <= free:
                return filler
            try:
                out.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                return filler


def _until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _kinds(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e.kind == kind]


@pytest.mark.parametrize("free", [1 << 20, 0], ids=["store-commits", "disk-full"])
def test_a_journal_that_cannot_grow_is_one_failure_not_a_flapping_pair(tmp_path: Path, free: int,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """1 MiB free: the store commits, the journal cannot allocate its room (the tester's case);
    none free: both fail, and the store comes back first once space returns."""
    caplog.set_level(logging.INFO, logger="pacsguard")
    with small_tmpfs(tmp_path / "disk", "4m") as disk:
        key = generate_key(tmp_path / "k.key")
        store = EventStore.open(str(disk / "s.db"), key_path=key, create=True, checkpoint_interval=3600)
        filler = _fill_until(disk, free)
        with contextlib.ExitStack() as stack:
            bus = open_outputs(stack, store, journal=True).bus
            bus.publish(make_events(1)[0])
            bus.hurry()  # a gateway waiting for its record: the journal must take it, and cannot
            _until(lambda: bus.failing, 10, "the journal's append did not fail")
            time.sleep(7)  # idle: the retries reach their 2 s pace
            assert bus.failing, "the bus says it recovered while the journal still cannot be written"
            if free:
                assert bus.written >= 2, "the store (which can commit) did not take the events meanwhile"
            idle = caplog.text
            filler.unlink()  # space returns: the journal can grow again
            _until(lambda: not bus.failing, 10, "the bus did not recover once the journal could grow")
            ticket = bus.publish_ticket(make_events(1, 1)[0])
            assert ticket is not None
            bus.hurry()
            _until(lambda: bus.durable_count >= ticket, 10, "an event after the recovery is not durable")
            assert not bus.failing
        reread = EventStore.open(str(disk / "s.db"))
        try:
            found = [s.event for s in reread.search(EventQuery(kind="pacsguard.recording.*", limit=None))]
        finally:
            reread.close()
    assert idle.count("RECORDING FAILED") == 1 and "recording recovered" not in idle, idle
    assert idle.count("event journal failed") == 1, "an error line per retry (every 2 s)"
    assert idle.count("event sink failed") <= 1, "an error line per retry (every 2 s)"
    assert len(_kinds(found, "pacsguard.recording.failed")) == 1, [e.message for e in found]
    recovered = _kinds(found, "pacsguard.recording.recovered")
    assert len(recovered) == 1 and recovered[0].details["seconds"] >= 7, [e.message for e in found]


class _Sink:
    """A sink that keeps what it is given, or raises ENOSPC while ``failing``."""

    def __init__(self, failing: bool = False) -> None:
        self.events: list[Event] = []
        self.failing = failing

    def emit(self, events: list[Event]) -> None:
        if self.failing:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.events.extend(events)

    def close(self) -> None: ...


def test_a_lasting_failure_is_raised_again_at_the_reminder_pace_not_per_retry(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from pacsguard.runtime import recording

    monkeypatch.setattr(recording, "REMIND_EVERY_S", 1.5, raising=False)
    caplog.set_level(logging.INFO, logger="pacsguard")
    store, syslog = _Sink(failing=True), _Sink()
    with contextlib.ExitStack() as stack:
        bus = open_outputs(stack, None, [store, syslog], close_timeout=1).bus
        bus.publish(make_events(1)[0])
        _until(lambda: bus.failing, 10, "the store's failure was not noticed")
        time.sleep(4)  # retries every 0.1 .. 2 s: several, but only the reminders are raised
        store.failing = False
        _until(lambda: not bus.failing, 10, "the bus did not recover")
    failed = _kinds(syslog.events, "pacsguard.recording.failed")
    assert 2 <= len(failed) <= 5, [e.message for e in failed]  # never one per retry (8 or more)
    assert failed[0].message.startswith("events cannot be made durable")
    assert all(e.message.startswith("events still cannot be made durable") for e in failed[1:])
    assert caplog.text.count("RECORDING FAILED") == 1 and "RECORDING STILL FAILING" in caplog.text
    assert len(_kinds(syslog.events, "pacsguard.recording.recovered")) == 1


def test_a_store_short_of_space_empties_its_write_ahead_log_after_every_commit(tmp_path: Path) -> None:
    """With ~1.5 MiB free, 60 commits of one event each: SQLite's WAL (checkpointed by itself only
    every 1,000 pages of 16 KiB) would take the room and then leave its checkpoint none to copy the
    pages into; it is emptied after each commit instead, and every event is stored. On a disk with
    room the WAL grows as SQLite lets it (no checkpoint per commit)."""
    with small_tmpfs(tmp_path / "disk", "4m") as disk:
        store = EventStore.open(str(disk / "s.db"), create=True)
        try:
            filler = _fill_until(disk, 3 << 19)
            for n in range(60):
                store.append(make_events(1, n))
                assert (disk / "s.db-wal").stat().st_size == 0, f"the WAL kept its pages after commit {n}"
            assert store.size() == 60
        finally:
            store.close()
        filler.unlink()
    roomy = EventStore.open(str(tmp_path / "roomy.db"), create=True)
    try:
        assert os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize > 64 << 20, "the test needs 64 MiB free"
        for n in range(5):
            roomy.append(make_events(1, n))
        assert (tmp_path / "roomy.db-wal").stat().st_size > 0
    finally:
        roomy.close()
