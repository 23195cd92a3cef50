"""`pacsguard scan --quarantine DIR` on hostile layouts: the same bytes twice, the quarantine
inside the scanned folder, a file reached through a symbolic link, a file given itself, a name
that is not UTF-8, and a file that changed after it was scanned."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from scan_samples import pe_in_preamble
from typer.testing import CliRunner

from pacsguard.cli import main
from pacsguard.scan.model import FileReport


def run(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(main.app, ["scan", *map(str, args)], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def manifests(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def test_the_same_bytes_in_two_folders_keep_two_manifests(tmp_path: Path) -> None:
    for series in ("S1", "S2"):
        (tmp_path / "usb" / series).mkdir(parents=True)
        (tmp_path / "usb" / series / "IM1").write_bytes(pe_in_preamble())
    code, _ = run("--quarantine", tmp_path / "q", tmp_path / "usb")
    assert code == 1
    assert not (tmp_path / "usb" / "S1" / "IM1").exists() and not (tmp_path / "usb" / "S2" / "IM1").exists()
    docs = manifests(tmp_path / "q")
    assert sorted(d["original"] for d in docs) == [str(tmp_path / "usb" / s / "IM1") for s in ("S1", "S2")]
    moved = sorted((tmp_path / "q").glob("*.quarantined"))
    assert len(moved) == 2 and {d["file"] for d in docs} == {p.name for p in moved}
    assert all(p.read_bytes() == pe_in_preamble() for p in moved)


def test_each_hard_link_of_an_infected_file_is_emptied(tmp_path: Path) -> None:
    """Two names of one file are two places holding the bytes: each is scanned and moved (a
    rename onto another link of the same file does nothing, and left the second name)."""
    usb = tmp_path / "usb"
    usb.mkdir()
    (usb / "a.dcm").write_bytes(pe_in_preamble())
    os.link(usb / "a.dcm", usb / "b.dcm")
    code, _ = run("--quarantine", tmp_path / "q", usb)
    assert code == 1
    assert list(usb.iterdir()) == []
    assert sorted(d["original"] for d in manifests(tmp_path / "q")) == [str(usb / "a.dcm"), str(usb / "b.dcm")]


def test_the_quarantine_folder_inside_the_scanned_one_is_not_scanned(tmp_path: Path) -> None:
    usb = tmp_path / "usb"
    usb.mkdir()
    (usb / "pe.dcm").write_bytes(pe_in_preamble())
    result = CliRunner().invoke(main.app, ["scan", "--format", "json", "--quarantine", str(usb / "quarantine"),
                                           str(usb)])
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    skipped = {f["path"]: f["skipped"] for f in doc["files"] if "skipped" in f}
    assert skipped == {str(usb / "quarantine"): "excluded (the --quarantine folder)"}
    assert doc["summary"]["failing"] == 1
    [manifest] = manifests(usb / "quarantine")
    assert manifest["original"] == str(usb / "pe.dcm")  # not overwritten by a second move onto itself


def test_a_file_reached_through_a_symlink_is_the_file_moved(tmp_path: Path) -> None:
    """A link given on the command line (a link met inside a folder is not followed at all)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "evil.dcm").write_bytes(pe_in_preamble())
    (tmp_path / "usb").mkdir()
    link = tmp_path / "usb" / "link.dcm"
    link.symlink_to("../elsewhere/evil.dcm")
    code, _ = run("--quarantine", tmp_path / "q", link)
    assert code == 1
    assert not (elsewhere / "evil.dcm").exists() and not os.path.lexists(link)  # no infected file, no dangling link
    [moved] = (tmp_path / "q").glob("*.quarantined")
    assert not moved.is_symlink() and moved.read_bytes() == pe_in_preamble()
    [manifest] = manifests(tmp_path / "q")
    assert manifest["link"] == str(link) and manifest["target"] == str(elsewhere / "evil.dcm")


def test_a_file_given_itself_is_not_called_missing_once_moved(tmp_path: Path) -> None:
    (tmp_path / "single.dcm").write_bytes(pe_in_preamble())
    code, out = run("--quarantine", tmp_path / "q4", tmp_path / "single.dcm")
    assert code == 1 and "no such file" not in out
    assert len(manifests(tmp_path / "q4")) == 1


def test_a_name_that_is_not_utf8_keeps_its_bytes_in_the_manifest(tmp_path: Path) -> None:
    raw = os.fsencode(tmp_path) + b"/bad\xff\xfename.dcm"
    with open(raw, "wb") as f:
        f.write(pe_in_preamble())
    code, out = run("--quarantine", tmp_path / "q", os.fsdecode(raw))
    assert code == 1, out
    assert not os.path.lexists(raw)
    [manifest] = manifests(tmp_path / "q")
    assert manifest["original"] == f"{tmp_path}/bad\\xff\\xfename.dcm"
    assert base64.b64decode(manifest["original_base64"]) == raw


def test_a_file_that_changed_since_it_was_scanned_stays(tmp_path: Path) -> None:
    from pacsguard.scan.quarantine import QuarantineRefused, quarantine

    source = tmp_path / "pe.dcm"
    source.write_bytes(b"rewritten after the scan")
    report = FileReport(str(source), sha256="0" * 64)
    with pytest.raises(QuarantineRefused, match="changed since it was scanned"):
        quarantine(source, report, tmp_path / "q")
    assert source.exists() and list((tmp_path / "q").iterdir()) == []
