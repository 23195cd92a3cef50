"""Round 7b: a witness's copy with one line that cannot be read.

`audit verify --witness FILE`, `audit prove --checkpoint FILE` and `audit patient --witness FILE`
refused the whole copy (exit 2) for one bad line: the half line an older version left glued to the
next checkpoint on a full disk, or a line damaged in transit. Now the line is named (file, line,
why) and every other line still counts; only a file no line of which is a checkpoint is refused."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

from pacsguard.store import EventStore
from pacsguard.store.keys import generate_key, public_path
from pacsguard.witness.delivery import WitnessDelivery
from pacsguard.witness.file import FileWitness
from store_helpers import make_events
from test_cli import run

PATIENT = "PID0005"  # events #5 and #55 name it (store_helpers.make_events)


def _site(tmp: Path) -> tuple[Path, Path, Path]:
    """A store written in four batches of ten events, each checkpointed (sizes 10..40) and
    delivered to a file witness: the store, its signing key, the witness's file."""
    db, witness = tmp / "site.db", tmp / "witness" / "checkpoints.jsonl"
    key = generate_key(tmp / "keys" / "site.key")
    es = EventStore.open(str(db), key_path=key, create=True)
    es.add_checkpoint_listener(WitnessDelivery([FileWitness(witness)]))
    for batch in range(4):
        es.append(make_events(10, 10 * batch))
        es.checkpoint()
    es.close()
    return db, key, witness


def _damage(witness: Path) -> None:
    """Line 2 becomes the first half of the size-20 statement glued to the size-30 one (what a
    write cut by a full disk left before the writer cut such halves off), line 3 a line of bytes
    that are not UTF-8; the size-10 and size-40 statements stay whole on lines 1 and 4."""
    lines = witness.read_bytes().splitlines()
    assert [json.loads(line)["tree_size"] for line in lines] == [10, 20, 30, 40]
    witness.write_bytes(b"\n".join([lines[0], lines[1][:40] + lines[2], b"\xff\xfe damaged \x80", lines[3]]) + b"\n")


def _verify(db: Path, key: Path, witness: Path, code: int) -> dict:
    proc = run("audit", "verify", "--store", str(db), "--key", str(public_path(key)), "--witness", str(witness),
               "--format", "json", cwd=db.parent, check_code=code)
    return json.loads(proc.stdout)


def test_verify_names_the_unreadable_lines_and_checks_the_others(tmp_path: Path) -> None:
    db, key, witness = _site(tmp_path)
    _damage(witness)
    report = _verify(db, key, witness, 1)
    seen = report["witnesses"][0]
    assert (seen["checkpoints"], seen["newest"], seen["unreadable_lines"]) == (2, 40, [2, 3])
    kinds = [f["kind"] for f in report["findings"]]
    assert kinds == ["unreadable line", "unreadable line"], report["findings"]
    messages = [f["message"] for f in report["findings"]]
    assert messages[0].startswith(f"{witness} line 2: not JSON (")
    assert messages[1].startswith(f"{witness} line 3: not UTF-8 (byte 1 of the line)")
    table = run("audit", "verify", "--store", str(db), "--key", str(public_path(key)), "--witness", str(witness),
                cwd=tmp_path, check_code=1).stdout
    assert "2 checkpoints of this log, newest at size 40; 2 unreadable line(s) left out" in table


def test_the_readable_lines_still_prove_a_deleted_checkpoint(tmp_path: Path) -> None:
    db, key, witness = _site(tmp_path)
    _damage(witness)
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:  # an insider with the file
        conn.execute("DELETE FROM checkpoints WHERE tree_size = 40")
    report = _verify(db, key, witness, 3)  # deleted checkpoint (3) wins over the unreadable lines (1)
    kinds = sorted(f["kind"] for f in report["findings"])
    assert kinds == ["deleted checkpoint", "unreadable line", "unreadable line"], report["findings"]


def test_a_file_with_no_checkpoint_on_any_line_is_still_refused(tmp_path: Path) -> None:
    db, key, _ = _site(tmp_path)
    junk = tmp_path / "junk.jsonl"
    junk.write_text("not json\n{\"tree_size\": 3}\n")
    proc = run("audit", "verify", "--store", str(db), "--key", str(public_path(key)), "--witness", str(junk),
               cwd=tmp_path, check_code=2)
    err = " ".join(proc.stderr.split())
    assert f"{junk} line 1: not JSON" in err and "1 more unreadable line(s)" in err
    assert "not a witness's copy" in err


def _saved_report(db: Path, key: Path, *options: str) -> Path:
    proc = run("audit", "patient", PATIENT, "--store", str(db), "--no-checkpoint", "--format", "json", "--key",
               str(key), *options, cwd=db.parent)
    path = db.parent / "report.json"
    path.write_text(proc.stdout)
    return path


def test_prove_reads_past_an_unreadable_line(tmp_path: Path) -> None:
    db, key, witness = _site(tmp_path)
    report = _saved_report(db, key)
    _damage(witness)
    proc = run("audit", "prove", str(report), "--key", str(public_path(key)), "--checkpoint", str(witness),
               cwd=tmp_path)
    out = " ".join(proc.stdout.split())
    assert "OK: 1 events proven" in out and "holds the report's checkpoint: size 40" in out
    assert f"witness: {witness} line 2: not JSON" in out and "the other lines hold the report up" in out

    # The report's checkpoint was on the damaged line: the failure names the line too.
    lines = witness.read_bytes().splitlines()
    witness.write_bytes(b"\n".join([lines[0], lines[3][:30]]) + b"\n")
    proc = run("audit", "prove", str(report), "--key", str(public_path(key)), "--checkpoint", str(witness),
               cwd=tmp_path, check_code=1)
    out = " ".join(proc.stdout.split())
    assert "FAILS (unreadable line)" in out and f"{witness} line 2: not JSON" in out
    assert "it may have held the checkpoint" in out


def test_patient_links_to_the_readable_lines_and_warns(tmp_path: Path) -> None:
    db, key, witness = _site(tmp_path)
    _damage(witness)
    proc = run("audit", "patient", PATIENT, "--store", str(db), "--no-checkpoint", "--format", "json", "--key",
               str(key), "--witness", str(witness), cwd=tmp_path)
    assert json.loads(proc.stdout)["witness"]["tree_size"] == 40
    err = " ".join(proc.stderr.split())
    assert f"warning: {witness} line 2: not JSON" in err and f"{witness} line 3: not UTF-8" in err
