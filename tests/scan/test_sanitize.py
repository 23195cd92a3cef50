"""`pacsguard scan --sanitize --out DIR`: cleaned copies are valid DICOM that dcmtk's dcmdump reads
with the same data set as the file before it was infected; originals are never modified."""

from __future__ import annotations

import json
import subprocess
import warnings
from pathlib import Path

import pytest
from scan_samples import (
    appended_zip,
    ct,
    elf_in_private,
    json_preamble,
    pdf_javascript,
    pe_in_preamble,
    pe_past_preamble,
)
from typer.testing import CliRunner

from pacsguard.cli import main

DCMDUMP = Path("/usr/bin/dcmdump")


def dump(path: Path) -> list[str]:
    """dcmdump's data set lines (a warning or error fails), without the meta header and private group 0009."""
    assert DCMDUMP.exists(), "install Debian's dcmtk package: apt-get install dcmtk"
    proc = subprocess.run([str(DCMDUMP), "-M", "+L", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    lines = proc.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# Dicom-Data-Set"))
    return [line for line in lines[start:] if not line.startswith("(0009,")]


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("base") / "base.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path.write_bytes(ct())
    return path


def elf_in_private_without_preamble() -> bytes:
    """A broken writer's file ("DICM" at offset 0, PS3.10 7.1) carrying an ELF: the copy gets the
    ELF dropped and a preamble of zeros put back."""
    return elf_in_private()[128:]


@pytest.mark.parametrize("build", [pe_in_preamble, pe_past_preamble, json_preamble, appended_zip, elf_in_private,
                                   elf_in_private_without_preamble], ids=lambda b: b.__name__)
def test_cleaned_copies_have_the_same_data_set(build, tmp_path: Path, original: Path) -> None:  # type: ignore[no-untyped-def]
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    infected = build()
    (src / "x.dcm").write_bytes(infected)
    result = CliRunner().invoke(main.app, ["scan", "--format", "json", "--sanitize", "--out", str(out), str(src)])
    assert result.exit_code == 1  # the scan reports the infection; the copy is clean
    notes = {f["rule"]: f["explanation"] for f in json.loads(result.output)["files"][0]["findings"]}
    assert "sanitize.written" in notes, notes
    assert (src / "x.dcm").read_bytes() == infected  # never modified
    cleaned = out / "in" / "x.dcm"  # laid out as under the folder scanned, its name first
    assert cleaned.read_bytes()[:128] == bytes(128)
    assert dump(cleaned) == dump(original)
    again = CliRunner().invoke(main.app, ["scan", "--fail-on", "low", str(cleaned)])
    assert again.exit_code == 0, again.output


def test_what_cannot_be_cleaned_safely_is_not_written(tmp_path: Path) -> None:
    (tmp_path / "pdf.dcm").write_bytes(pdf_javascript())
    out = tmp_path / "out"
    result = CliRunner().invoke(main.app, ["scan", "--format", "json", "--sanitize", "--out", str(out),
                                           str(tmp_path / "pdf.dcm")])
    notes = {f["rule"]: f["explanation"] for f in json.loads(result.output)["files"][0]["findings"]}
    assert notes["sanitize.refused"].startswith("cannot be cleaned safely: documents.pdf-active")
    assert not (out / "pdf.dcm").exists()


def test_every_series_of_a_medium_keeps_its_cleaned_copies_and_they_are_private(tmp_path: Path) -> None:
    """Media number their files per series (S1/IM000001, S2/IM000001): each cleaned copy keeps its
    place under --out instead of the second one being refused as existing. The copies hold patient
    data: 0600 in 0700 folders, whatever the umask."""
    import os
    import stat

    media = tmp_path / "usb"
    for series in ("S1", "S2"):
        (media / series).mkdir(parents=True)
        (media / series / "IM000001").write_bytes(pe_in_preamble())
    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        result = CliRunner().invoke(main.app, ["scan", "--format", "json", "--sanitize", "--out", str(out),
                                               str(media)])
    finally:
        os.umask(old)
    assert result.exit_code == 1, result.output
    copies = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert copies == ["usb/S1/IM000001", "usb/S2/IM000001"]
    for path in [out / "usb", out / "usb/S1", *(out / c for c in copies)]:
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path
