"""`audit prove --checkpoint`: a saved patient report held up against a witness's copy of the
checkpoints (a file witness's file, a witness service's ledger and its GET answer), on real stores;
a store rewritten and re-signed with its own key fools the key alone, not the witness."""

from __future__ import annotations

import json
from pathlib import Path

from test_verify_witness import Site, _rewrite_and_resign

from pacsguard.atna.corroborate import corroborate, witness_section
from pacsguard.atna.report import patient_report, sign_report
from pacsguard.store import EventStore
from pacsguard.store.keys import generate_key, load_private_key, load_public_key, public_path
from pacsguard.store.statement import to_statement
from pacsguard.witness.accept import PinnedLog, Witness
from pacsguard.witness.held import read_copy
from pacsguard.witness.ledger import Ledger
from pacsguard.witness.server import WitnessServer
from test_cli import run

PATIENT = "PID0005"  # events #5 and #55 name it (store_helpers.make_events)


def saved_report(site: Site, name: str, *options: str, code: int = 0) -> Path:
    proc = run("audit", "patient", PATIENT, "--store", str(site.db), "--no-checkpoint", "--format", "json",
               "--key", str(site.key), *options, cwd=site.db.parent, check_code=code)
    path = site.db.parent / name
    path.write_text(proc.stdout)
    return path


def prove(site: Site, report: Path, code: int, *options: str) -> str:
    proc = run("audit", "prove", str(report), "--key", str(public_path(site.key)), *options, cwd=site.db.parent,
               check_code=code)
    return proc.stdout + proc.stderr


def test_a_report_is_proven_against_the_file_witness_copy_and_a_rewrite_is_caught(tmp_path: Path) -> None:
    site = Site(tmp_path)
    before = saved_report(site, "before.json")
    assert json.loads(before.read_text())["checkpoint"]["tree_size"] == 40
    out = prove(site, before, 0, "--checkpoint", str(site.witness))
    assert "OK: 1 events proven" in out and "holds the report's checkpoint: size 40, the same root" in out

    # An insider with the database and the signing key rewrites event #5 and re-signs everything.
    _rewrite_and_resign(site, seq=5)
    after = saved_report(site, "after.json")
    assert "rewritten" in json.loads(after.read_text())["events"][0]["sealed"]
    assert "OK" in prove(site, after, 0)  # the key alone is fooled: the rewrite is signed with it
    out = prove(site, after, 6, "--checkpoint", str(site.witness))
    assert "FAILS (forked)" in out and "at size 40" in out and "rewritten and re-signed" in out
    assert "OK" in prove(site, before, 0, "--checkpoint", str(site.witness))  # the saved report still holds
    out = run("audit", "patient", PATIENT, "--store", str(site.db), "--no-checkpoint", "--witness",
              str(site.witness), cwd=tmp_path, check_code=2).stderr
    assert "do not hash to the root" in out and "forked" in out


def test_a_witness_copy_of_another_tree_fails_clearly(tmp_path: Path) -> None:
    site, other = Site(tmp_path / "a"), Site(tmp_path / "b")
    report = saved_report(site, "report.json")
    out = prove(site, report, 1, "--checkpoint", str(other.witness))
    log = json.loads(report.read_text())["checkpoint"]["key_id"]
    assert f"holds no checkpoint of log {log}" in out and "another log's tree" in out
    (tmp_path / "junk.jsonl").write_text("not json\n")
    assert "line 1: not JSON" in prove(site, report, 2, "--checkpoint", str(tmp_path / "junk.jsonl"))


def test_a_later_or_earlier_witnessed_checkpoint_needs_the_consistency_proof(tmp_path: Path) -> None:
    site = Site(tmp_path)
    lines = site.witness.read_text().splitlines()
    only_40, only_20 = tmp_path / "w40.jsonl", tmp_path / "w20.jsonl"
    only_40.write_text(lines[3] + "\n")
    only_20.write_text(lines[1] + "\n")
    es = EventStore.open(str(site.db))
    try:
        cps = es.checkpoints()
        public = load_public_key(public_path(site.key))
        at_20 = patient_report(es, PATIENT, checkpoint=cps[1])
        missing = corroborate(at_20, [c.checkpoint for c in read_copy(only_40)], public)
        assert missing.exit_code == 1 and "a consistency proof is needed" in missing.findings[0][1]
        at_20["witness"] = witness_section(es, at_20, [cps[3]], str(only_40))
        sign_report(at_20, load_private_key(site.key))  # as `audit patient` does, last
    finally:
        es.close()
    report = tmp_path / "at20.json"
    report.write_text(json.dumps(at_20))
    assert "saw a later checkpoint (size 40)" in prove(site, report, 0, "--checkpoint", str(only_40))

    newest = saved_report(site, "newest.json", "--witness", str(only_20))
    carried = json.loads(newest.read_text())["witness"]
    assert carried["tree_size"] == 20 and carried["consistency"]
    assert "consistency proof to the checkpoint at size 20 held by" in prove(site, newest, 0)
    out = prove(site, newest, 0, "--checkpoint", str(only_20))
    assert "events #0..#19 are corroborated" in out and "#20..#39 rest on the log's key alone" in out
    forged = json.loads(newest.read_text())
    forged["witness"]["consistency"][0] = "00" * 32
    newest.write_text(json.dumps(forged))
    assert "consistency proof between size 40 and the witnessed size 20 fails" in prove(
        site, newest, 6, "--checkpoint", str(only_20))


def test_a_witness_service_copy_with_its_countersignature(tmp_path: Path) -> None:
    site = Site(tmp_path)
    public = load_public_key(public_path(site.key))
    witness_key = generate_key(tmp_path / "witness" / "own.key")
    es = EventStore.open(str(site.db))
    newest = es.checkpoints()[-1]
    es.close()
    witness = Witness(Ledger(tmp_path / "ledger"), load_private_key(witness_key),
                      {newest.key_id: PinnedLog(public, "t0ken", "site")})
    assert witness.submit(newest.key_id, "t0ken", {"checkpoint": to_statement(newest)}, "127.0.0.1").status == 200
    ledger = tmp_path / "ledger" / f"{newest.key_id}.jsonl"
    answer = tmp_path / "answer.json"
    answer.write_text(json.dumps(witness.held(newest.key_id).body))
    report = saved_report(site, "report.json")
    for copy in (ledger, answer):
        out = prove(site, report, 0, "--checkpoint", str(copy), "--witness-key", str(public_path(witness_key)))
        assert "countersigned by witness key" in out
    server = WitnessServer(witness, "127.0.0.1", 0)
    url = server.start()
    try:
        asked = saved_report(site, "asked.json", "--witness", url)
    finally:
        server.close()
    carried = json.loads(asked.read_text())["witness"]
    assert (carried["source"], carried["tree_size"], carried["consistency"]) == (url, 40, [])
    stranger = generate_key(tmp_path / "stranger.key")
    out = prove(site, report, 1, "--checkpoint", str(ledger), "--witness-key", str(public_path(stranger)))
    assert "countersignature on the checkpoint at size 40 does not verify" in out
    out = prove(site, report, 1, "--checkpoint", str(site.witness), "--witness-key", str(public_path(witness_key)))
    assert "carries no countersignature" in out
