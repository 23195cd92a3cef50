"""`pacsguard scan PATH...`: exit codes, formats, the walk's bad inputs, quarantine and the store."""

from __future__ import annotations

import json
import os
from pathlib import Path

from scan_samples import elf_preamble, pe_in_preamble, zip_bomb, zip_bytes
from typer.testing import CliRunner

from pacsguard.cli import main
from pacsguard.store import EventQuery, EventStore


def run(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(main.app, ["scan", *map(str, args)], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def scan_json(*args: str | Path) -> tuple[int, dict]:
    code, out = run("--format", "json", *args)
    return code, json.loads(out)


def test_clean_files_exit_0_and_infected_ones_1(tmp_path: Path, clean_ct: bytes) -> None:
    (tmp_path / "ok.dcm").write_bytes(clean_ct)
    assert run(tmp_path / "ok.dcm")[0] == 0
    (tmp_path / "pe.dcm").write_bytes(pe_in_preamble())
    code, out = run(tmp_path)
    assert code == 1 and "preamble.pe" in out and "critical" in out
    assert run("--fail-on", "critical", tmp_path / "ok.dcm")[0] == 0


def test_fail_on_and_informational_notes(tmp_path: Path, clean_ct: bytes) -> None:
    (tmp_path / "tiff.dcm").write_bytes(b"II*\x00" + clean_ct[4:])
    code, doc = scan_json("--fail-on", "low", tmp_path)
    assert code == 0  # a TIFF preamble is a note, and notes never fail
    assert [f["rule"] for f in doc["files"][0]["findings"]] == ["preamble.tiff"]
    (tmp_path / "elf.dcm").write_bytes(elf_preamble())
    assert scan_json("--fail-on", "critical", tmp_path)[0] == 0  # high is below critical
    assert scan_json("--fail-on", "high", tmp_path)[0] == 1


def test_bad_inputs_are_reported_per_file_and_the_scan_goes_on(tmp_path: Path, clean_ct: bytes) -> None:
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "null").symlink_to("/dev/null")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up").symlink_to(tmp_path)  # a folder loop
    (tmp_path / "ok.dcm").write_bytes(clean_ct)
    locked = tmp_path / "locked.dcm"
    locked.write_bytes(clean_ct)
    locked.chmod(0)
    try:
        code, doc = scan_json(tmp_path)
    finally:
        locked.chmod(0o600)
    skipped = {Path(f["path"]).name: f["skipped"] for f in doc["files"] if "skipped" in f}
    assert skipped["empty.dcm"].startswith("empty")
    # Links met inside a folder are not followed (docs/scan.md), each named with its target.
    assert skipped["loop"] == f"symbolic link, not followed (-> {tmp_path / 'loop'})"
    assert skipped["null"] == "symbolic link, not followed (-> /dev/null)"
    assert skipped["up"] == f"symbolic link, not followed (-> {tmp_path})"
    if os.geteuid() != 0:
        assert skipped["locked.dcm"].startswith("unreadable")
    assert doc["summary"]["scanned"] >= 1 and code == 0


def test_archives_are_expanded_with_bomb_limits(tmp_path: Path, clean_ct: bytes) -> None:
    inner = zip_bytes({"b/pe.dcm": pe_in_preamble()})
    (tmp_path / "media.zip").write_bytes(zip_bytes({"a/ok.dcm": clean_ct, "inner.zip": inner}))
    (tmp_path / "bomb.zip").write_bytes(zip_bomb())
    code, doc = scan_json(tmp_path)
    by_path = {f["path"]: f for f in doc["files"]}
    assert code == 1
    nested = by_path[f"{tmp_path / 'media.zip'}!inner.zip!b/pe.dcm"]
    assert "preamble.pe" in {f["rule"] for f in nested["findings"]}
    assert by_path[f"{tmp_path / 'media.zip'}!a/ok.dcm"]["findings"] == []
    bomb = by_path[str(tmp_path / "bomb.zip")]
    assert [(f["rule"], f["level"]) for f in bomb["findings"]] == [("archive.bomb", "high")]
    assert f"{tmp_path / 'bomb.zip'}!CT.dcm" in by_path  # the harmless member is still scanned


def test_formats(tmp_path: Path) -> None:
    (tmp_path / "pe.dcm").write_bytes(pe_in_preamble())
    code, sarif = run("--format", "sarif", tmp_path)
    doc = json.loads(sarif)
    assert code == 1 and doc["version"] == "2.1.0"
    results = doc["runs"][0]["results"]
    assert {"preamble.pe"} <= {r["ruleId"] for r in results} and results[0]["level"] == "error"
    code, page = run("--format", "html", tmp_path)
    assert code == 1 and page.startswith("<!DOCTYPE html>") and "preamble.pe" in page and "<script" not in page


def test_quarantine_moves_the_file_with_a_manifest_and_records_events(tmp_path: Path, clean_ct: bytes) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "pe.dcm").write_bytes(pe_in_preamble())
    (src / "ok.dcm").write_bytes(clean_ct)
    store = tmp_path / "events.db"
    code, _ = run("--quarantine", tmp_path / "q", "--store", store, src)
    assert code == 1
    assert not (src / "pe.dcm").exists() and (src / "ok.dcm").exists()
    manifests = list((tmp_path / "q").glob("*.json"))
    assert len(manifests) == 1
    manifest = json.loads(manifests[0].read_text())
    assert manifest["original"].endswith("pe.dcm") and "preamble.pe" in {f["rule"] for f in manifest["findings"]}
    assert (tmp_path / "q" / f"{manifest['sha256']}.quarantined").read_bytes() == pe_in_preamble()
    # The quarantine holds a patient's data: a folder it makes is 0700, each manifest 0600.
    assert (tmp_path / "q").stat().st_mode & 0o777 == 0o700 and manifests[0].stat().st_mode & 0o777 == 0o600
    reader = EventStore.open(str(store))
    try:
        patient = manifest["patient_id"]
        found = [s.event for s in reader.search(EventQuery(patient=patient, limit=None))]
    finally:
        reader.close()
    kinds = {e.kind for e in found}
    assert kinds == {"scan.finding", "scan.quarantined"}
    assert all(manifest["study_uid"] in e.study_uids for e in found)
    assert "preamble.pe" in {e.details.get("rule") for e in found}


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert run("--sanitize", tmp_path)[0] == 2
    bad = tmp_path / "rules"
    bad.mkdir()
    (bad / "x.yar").write_text("rule broken { condition: }")
    code, out = run("--yara-dir", bad, tmp_path)
    assert code == 2 and "do not compile" in out


def test_an_administrator_rule_directory_adds_rules(tmp_path: Path, clean_ct: bytes) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "site.yar").write_text('rule site_marker { meta: level = "high" strings: $a = "SITE-MARKER" '
                                    "condition: $a }\n")
    (tmp_path / "x.dcm").write_bytes(clean_ct + b"SITE-MARKER")
    code, doc = scan_json("--yara-dir", rules, tmp_path / "x.dcm")
    assert code == 1 and "yara.site_marker" in {f["rule"] for f in doc["files"][0]["findings"]}


def test_jobs_give_the_same_reports_in_the_same_order(tmp_path: Path, clean_ct: bytes) -> None:
    for i in range(6):
        (tmp_path / f"ok{i}.dcm").write_bytes(clean_ct)
    (tmp_path / "pe.dcm").write_bytes(pe_in_preamble())
    one = scan_json(tmp_path)[1]["files"]
    two = scan_json("--jobs", "2", tmp_path)[1]["files"]
    assert [(f["path"], f["findings"]) for f in one] == [(f["path"], f["findings"]) for f in two]


def test_huge_files_are_skipped_by_size_without_being_read(tmp_path: Path) -> None:
    huge = tmp_path / "ten-gigabytes.dcm"
    with huge.open("wb") as f:
        f.truncate(10 * 1024**3)  # sparse: no disk used
    code, doc = scan_json(tmp_path)
    assert code == 0
    assert doc["files"][0]["skipped"].startswith("larger than the limit (10,737,418,240")
    assert doc["summary"]["skipped"] == {"larger than the limit": 1} and doc["summary"]["scanned"] == 0


def test_tar_archives_encryption_and_links(tmp_path: Path, clean_ct: bytes) -> None:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in (("study/ok.dcm", clean_ct), ("study/pe.dcm", pe_in_preamble())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("study/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "../../etc/passwd"
        tar.addfile(link)
    (tmp_path / "media.tar.gz").write_bytes(buf.getvalue())
    locked = bytearray(zip_bytes({"secret.dcm": clean_ct}))
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):  # set the encryption flag in both headers (APPNOTE 4.4.4)
        at = locked.find(sig)
        flag_at = at + (6 if sig == b"PK\x03\x04" else 8)
        locked[flag_at] |= 1
    (tmp_path / "locked.zip").write_bytes(bytes(locked))
    code, doc = scan_json(tmp_path)
    by_path = {Path(f["path"]).name if "!" not in f["path"] else f["path"].split("!", 1)[1]: f for f in doc["files"]}
    assert code == 1
    assert "preamble.pe" in {f["rule"] for f in by_path["study/pe.dcm"]["findings"]}
    assert by_path["study/ok.dcm"]["findings"] == []
    # the PE/DICOM polyglot is also an executable member of the archive
    assert sorted(f["rule"] for f in by_path["media.tar.gz"]["findings"]) == ["archive.executable",
                                                                              "archive.link-traversal"]
    assert [(f["rule"], f["level"]) for f in by_path["locked.zip"]["findings"]] == [("archive.encrypted", "medium")]


def test_archives_nested_past_the_limit_are_not_opened(tmp_path: Path, clean_ct: bytes) -> None:
    inner = zip_bytes({"ct.dcm": clean_ct})
    for depth in range(6):
        inner = zip_bytes({f"level{depth}.zip": inner})
    (tmp_path / "deep.zip").write_bytes(inner)
    code, doc = scan_json(tmp_path)
    assert code == 1
    nesting = [f for r in doc["files"] for f in r["findings"] if f["rule"] == "archive.nesting"]
    assert len(nesting) == 1 and nesting[0]["level"] == "high"
    assert not any(r["path"].endswith("!ct.dcm") for r in doc["files"])  # never reached


def test_a_folder_that_cannot_be_written_stops_nothing_halfway(tmp_path: Path) -> None:
    """--out or --quarantine that cannot be made is refused before the first file (exit 2, the
    option named); a cleaned copy that cannot be written where --out is (a file in the way, a full
    disk) is a warning and a note on that file, and the scan goes on to the others."""
    import subprocess
    import sys

    (tmp_path / "in").mkdir()
    for name, data in (("a.dcm", elf_preamble()), ("b.dcm", pe_in_preamble())):
        (tmp_path / "in" / name).write_bytes(data)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")

    def scan(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pacsguard.cli", "scan", "--format", "json", *map(str, args)],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)

    for option in ("--out", "--quarantine"):
        refused = scan(*(["--sanitize"] if option == "--out" else []), option, blocker / "sub", tmp_path / "in")
        assert refused.returncode == 2 and f"{option} {blocker / 'sub'}: cannot create the folder" in refused.stderr
        assert "Traceback" not in refused.stderr and refused.stdout == ""
    out = tmp_path / "out"
    out.mkdir()
    (out / "in").write_text("a file where the copies' folder would be")
    done = scan("--sanitize", "--out", out, "in")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    report = json.loads(done.stdout)
    assert report["summary"]["scanned"] == 2
    notes = {f["path"]: [x["rule"] for x in f["findings"]] for f in report["files"]}
    assert all("sanitize.failed" in rules for rules in notes.values()), notes
    assert done.stderr.count("cleaned copy not written") == 2
