"""`pacsguard scan` on objects made by PixelMed, CTN and odil and on their de-identified copies
(outside round 12, helper D): a clean object a real tool made raises nothing a PACS administrator
must act on (medium or above), and an encapsulated PDF PixelMed made is read as the PDF it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacsguard.deid.build import make_engine
from pacsguard.deid.files import deidentify_file
from pacsguard.deid.keys import DeidKey
from pacsguard.deid.profile import Option
from pacsguard.scan.model import Level
from pacsguard.scan.scanner import Scanner
from peers import pixelmed_files
from peers.pixelmed_files import (
    ACTIVE_PAGE,
    encapsulate,
    java,
    pdf_from_postscript,
    run,
    tool,
)

#: The session fixture of tests/peers/pixelmed_files.py (objects made once for both test files).
peer_objects = pixelmed_files.peer_objects


def _alarms(scanner: Scanner, path: Path) -> list[str]:
    report = scanner.scan_file(path)
    assert report.skipped == "", report.skipped
    return [f"{f.level.name} {f.rule} {f.tag}: {f.explanation}" for f in report.findings if f.level >= Level.MEDIUM]


def test_peer_objects_and_their_deidentified_copies_raise_nothing(peer_objects: dict[str, Path],
                                                                  scanner: Scanner, tmp_path: Path) -> None:
    """Every object the peers made, pacsguard's de-identified copy of it (basic profile with
    clean-pixel-data) and PixelMed's (DeidentifyAndRedact). Before round 12 each encapsulated PDF,
    CDA and STL that pacsguard de-identified held two NUL bytes as its document and was a high
    embedded.mime-mismatch ("says application/pdf, the document is something else")."""
    engine = make_engine(DeidKey(bytes(range(32))), [Option.CLEAN_PIXEL_DATA])
    ours = tmp_path / "pacsguard"
    for name, source in peer_objects.items():
        result = deidentify_file(engine, source, ours / f"{name}.dcm")
        assert result.output is not None, f"{name}: {result.withheld}"
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("pdf", "cda", "stl", "sr", "wsi", "ctn_ele"):
        (inputs / f"{name}.dcm").write_bytes(peer_objects[name].read_bytes())
    theirs = tmp_path / "pixelmed"
    theirs.mkdir()
    (tmp_path / "redaction.txt").write_text("")
    java("com.pixelmed.apps.DeidentifyAndRedact", str(inputs), str(theirs), str(tmp_path / "redaction.txt"),
         timeout=120)
    files = [*peer_objects.values(), *sorted(ours.iterdir()), *sorted(theirs.iterdir())]
    assert len(files) == 2 * len(peer_objects) + 6
    alarms = {str(path): found for path in files if (found := _alarms(scanner, path))}
    assert alarms == {}


@pytest.mark.parametrize("transcode", [None, "ExplicitVRBigEndian"])
def test_a_pixelmed_pdf_is_read_as_a_pdf(peer_objects: dict[str, Path], scanner: Scanner, tmp_path: Path,
                                         transcode: str | None) -> None:
    """The PDF inside PixelMed's Encapsulated PDF (and odil's big endian transcode of it) is parsed as
    a PDF: ghostscript's page is clean, the same page with a pdfmark JavaScript open action (PDF
    1.7 12.6.4.16) is documents.pdf-active, found inside Encapsulated Document (0042,0011)."""
    clean = peer_objects["pdf"]
    active = encapsulate(tmp_path, pdf_from_postscript(tmp_path, "active", ACTIVE_PAGE), "active")
    if transcode:
        for source in (clean, active):
            run(tool("odil"), "transcode", "-t", transcode, str(source), str(tmp_path / f"{source.stem}.be.dcm"))
        clean, active = tmp_path / f"{clean.stem}.be.dcm", tmp_path / f"{active.stem}.be.dcm"
    assert scanner.scan_file(clean).findings == []
    found = {(f.rule, f.tag) for f in scanner.scan_file(active).findings if f.level >= Level.HIGH}
    assert ("documents.pdf-active", "(0042,0011)") in found, found


def test_odil_deflated_label_is_low_not_an_alarm(peer_objects: dict[str, Path], scanner: Scanner,
                                                 tmp_path: Path) -> None:
    """odil 0.12 labels a data set it did not deflate as Deflated Explicit VR Little Endian (PS3.5
    A.5): malformed, not hostile (low), so a scan at the default --fail-on medium passes it."""
    source = tmp_path / "deflated.dcm"
    run(tool("odil"), "transcode", "-t", "DeflatedExplicitVRLittleEndian", str(peer_objects["sr"]), str(source))
    report = scanner.scan_file(source)
    assert max((f.level for f in report.findings), default=Level.INFO) <= Level.LOW, report.findings
    assert {f.rule for f in report.findings if f.level > Level.INFO} <= {"structure.deflate-corrupt"}


def test_odil_dicomdir_media_raise_nothing(peer_objects: dict[str, Path], scanner: Scanner, tmp_path: Path) -> None:
    """A medium whose DICOMDIR (PS3.10 8, PS3.3 F.5) odil wrote over the peers' objects: its
    directory records and File IDs are read (a File ID leaving the medium would be high), and none is
    an alarm. (odil 0.12 crashes on the SR, which is left out.)"""
    media = tmp_path / "media"
    (media / "DICOM").mkdir(parents=True)
    names = []
    for n, name in enumerate(("pdf", "cda", "sc", "wsi", "ctn_ele"), 1):
        (media / "DICOM" / f"IM{n}").write_bytes(peer_objects[name].read_bytes())
        names.append(f"DICOM/IM{n}")
    run(tool("odil"), "dicomdir", *names, ".", cwd=media)
    dicomdir = media / "DICOMDIR"
    assert dicomdir.exists() and b"DICOM\\IM5" in dicomdir.read_bytes()
    alarms = {str(path): found for path in [dicomdir, *sorted((media / "DICOM").iterdir())]
              if (found := _alarms(scanner, path))}
    assert alarms == {}
