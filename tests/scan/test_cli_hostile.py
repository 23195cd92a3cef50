"""`pacsguard scan` on hostile command lines and names: an unreadable PATH, a missing one, names
that are not UTF-8 in every format and in the Events, PATHs given twice, --sanitize --out with
"..", and SARIF URIs (RFC 3986)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote_to_bytes

import pytest
from scan_samples import elf_preamble, invoke, pe_in_preamble, scan_json

from pacsguard.cli.scan import copy_path


def by_name(doc: dict) -> dict[str, dict]:
    return {Path(f["path"]).name: f for f in doc["files"]}


def test_an_unreadable_path_does_not_stop_the_others(tmp_path: Path, clean_ct: bytes,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line's own check (os.access) refused the whole scan: as root nothing is
    unreadable, so the check is made to say "not readable" for one PATH."""
    (tmp_path / "ok.dcm").write_bytes(clean_ct)
    (tmp_path / "pe.dcm").write_bytes(pe_in_preamble())
    (tmp_path / "noperm").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: Path(p).name != "noperm" and real_access(p, mode))
    code, doc = scan_json(tmp_path / "ok.dcm", tmp_path / "pe.dcm", tmp_path / "noperm")
    assert code == 1
    assert {"ok.dcm", "pe.dcm"} <= set(by_name(doc)) and doc["summary"]["failing"] == 1


def test_an_unreadable_path_is_reported_as_such(tmp_path: Path, clean_ct: bytes) -> None:
    """For real, in a process without the capabilities that let root read anything."""
    (tmp_path / "ok.dcm").write_bytes(clean_ct)
    (tmp_path / "pe.dcm").write_bytes(pe_in_preamble())
    (tmp_path / "noperm").mkdir()
    (tmp_path / "noperm" / "x.dcm").write_bytes(clean_ct)
    (tmp_path / "unread.dcm").write_bytes(clean_ct)
    command = [sys.executable, "-m", "pacsguard.cli", "scan", "--format", "json", "ok.dcm", "pe.dcm", "noperm",
               "unread.dcm"]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root without setpriv: nothing is unreadable")
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *command]
    (tmp_path / "noperm").chmod(0)
    (tmp_path / "unread.dcm").chmod(0)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    finally:
        (tmp_path / "noperm").chmod(0o700)
        (tmp_path / "unread.dcm").chmod(0o600)
    assert done.returncode == 1, done.stderr
    files = {f["path"]: f for f in json.loads(done.stdout)["files"]}
    assert files["noperm"]["skipped"] == "unreadable folder: Permission denied"
    assert files["unread.dcm"]["skipped"] == "unreadable: Permission denied"
    assert "preamble.pe" in {f["rule"] for f in files["pe.dcm"]["findings"]} and files["ok.dcm"]["findings"] == []


def test_a_missing_path_is_a_line_and_exit_2_unless_a_finding_says_1(tmp_path: Path, clean_ct: bytes) -> None:
    (tmp_path / "ok.dcm").write_bytes(clean_ct)
    (tmp_path / "pe.dcm").write_bytes(pe_in_preamble())
    code, doc = scan_json(tmp_path / "ok.dcm", tmp_path / "typo.dcm")
    assert code == 2
    assert by_name(doc)["typo.dcm"]["skipped"] == "no such file or folder"
    assert doc["summary"]["skipped"] == {"no such file or folder": 1}
    code, out, err = invoke(tmp_path / "pe.dcm", tmp_path / "typo.dcm")
    assert code == 1 and f"{tmp_path / 'typo.dcm'}: no such file or folder" in err


@pytest.fixture
def bad_name(tmp_path: Path) -> Path:
    """A PE/DICOM polyglot whose name holds bytes that are not UTF-8 (and markup)."""
    raw = os.fsencode(tmp_path) + b"/bad\xff\xfename<b>.dcm"
    with open(raw, "wb") as f:
        f.write(pe_in_preamble())
    return Path(os.fsdecode(raw))


SHOWN = "bad\\xff\\xfename<b>.dcm"


@pytest.mark.parametrize("fmt", ["json", "sarif", "html", "table"])
def test_names_that_are_not_utf8_are_shown_escaped(bad_name: Path, fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(bad_name.parent)  # short names: the table does not fold them
    code, out, err = invoke("--format", fmt, ".")
    assert code == 1, err
    if fmt == "json":
        assert by_name(json.loads(out))[SHOWN]["findings"]
    elif fmt == "sarif":
        results = json.loads(out)["runs"][0]["results"]
        assert results and all(r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].endswith(
            "bad%FF%FEname%3Cb%3E.dcm") for r in results)
    elif fmt == "html":
        assert "bad\\xff\\xfename&lt;b&gt;.dcm" in out
    else:
        assert f"│ {SHOWN} │" in out


def test_names_that_are_not_utf8_are_recorded_as_events(bad_name: Path, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    code, _, err = invoke("--jsonl", events, bad_name)
    assert code == 1 and "fail" not in err.lower(), err
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert lines and {e["details"]["file"] for e in lines} == {f"{tmp_path}/{SHOWN}"}


def test_paths_given_twice_are_scanned_and_counted_once(tmp_path: Path) -> None:
    usb = tmp_path / "usb"
    usb.mkdir()
    (usb / "pe.dcm").write_bytes(pe_in_preamble())
    code, doc = scan_json(usb / "pe.dcm", usb / "pe.dcm", usb, usb)
    assert code == 1
    assert doc["summary"]["scanned"] == 1 and doc["summary"]["failing"] == 1
    assert doc["summary"]["skipped"] == {"given twice": 2, "already scanned": 1}
    reasons = [f["skipped"] for f in doc["files"] if "skipped" in f]
    assert not any("symlink" in r for r in reasons)


def test_sanitize_of_dotdot_writes_inside_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    media = tmp_path / "media"
    (media / "run").mkdir(parents=True)
    (media / "IM1").write_bytes(elf_preamble())
    monkeypatch.chdir(media / "run")
    code, doc = scan_json("..", "--sanitize", "--out", "clean")
    assert code == 1
    assert (media / "run" / "clean" / "media" / "IM1").is_file()
    assert not (media / "run" / "IM1").exists()  # clean/../IM1
    assert copy_path(Path("../IM1"), [Path("..")]) == Path("media", "IM1")


def test_sanitize_never_writes_through_a_link_out_of_out(tmp_path: Path) -> None:
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "IM1").write_bytes(elf_preamble())
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "media").symlink_to(tmp_path / "elsewhere")
    code, out, err = invoke("--format", "json", "--sanitize", "--out", tmp_path / "out", tmp_path / "media")
    assert code == 1
    assert list((tmp_path / "elsewhere").iterdir()) == []
    notes = by_name(json.loads(out))["IM1"]["findings"]
    assert "sanitize.refused" in {f["rule"] for f in notes} and "would be outside" in err


#: RFC 3986 4.1 URI-reference, by character class: unreserved, sub-delims, ":", "@", "/", "?",
#: "#" once, and well-formed percent-encoding.
URI_REFERENCE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*:)?([A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-F]{2})*$")


def test_sarif_uris_are_rfc3986_references(tmp_path: Path) -> None:
    names = [b"a b#c%d.dcm", b"new\nline.dcm", "\u00e9t\u00e9.dcm".encode(), b"\xff.dcm", b"x:y?.dcm"]
    for name in names:
        with open(os.fsencode(tmp_path) + b"/" + name, "wb") as f:
            f.write(pe_in_preamble())
    code, out, _ = invoke("--format", "sarif", tmp_path)
    assert code == 1
    uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
            for r in json.loads(out)["runs"][0]["results"]}
    assert len(uris) == len(names)
    for uri in uris:
        assert URI_REFERENCE.match(uri), uri
        assert uri.startswith("file:///")
    assert {unquote_to_bytes(u.removeprefix("file://")) for u in uris} == {
        os.fsencode(tmp_path) + b"/" + n for n in names}
