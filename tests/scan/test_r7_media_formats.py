"""Outside round 7: files a CD, a USB stick or a download from another hospital carries that
pacsguard does not open, or that Windows runs by their name, were notes (`structure.not-dicom`,
info): a scan said such a medium was clean, exit 0.

- An optical disc image (ISO 9660, ECMA-119 8.1; UDF, ECMA-167 2/8.3) holding a patient CD, its
  viewer and AUTORUN.INF: none of its files was scanned. So for a cabinet (.cab), ARJ, cpio,
  compiled HTML Help (.chm) and MS-DOS COMPRESS.EXE files (Debian's clamav-testfiles, each
  holding ClamAV's test program): `structure.unopened-archive` (medium), as 7-Zip and RAR are.
- Names Windows runs whatever the file holds: .com (MS-DOS programs have no header), .pif,
  .msi and .msp (installers), .cpl, .chm, .msc, .reg, .wsh: `structure.executable-file` (medium).
- An Office file of its own with VBA macros (a .doc beside the images; the vbaProject.bin member
  of an .xlsm): `documents.office-macro` (high), as an encapsulated one is.
- The HTML report showed a file name's reordering characters as they are (a name ending
  U+202E "gpj.exe" reads "exe.jpg"): now escaped, as on the terminal."""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from scan_samples import ct, pe_in_preamble, rules, zip_bytes
from typer.testing import CliRunner

from pacsguard.cli import main
from pacsguard.scan.model import Level
from pacsguard.scan.scanner import Scanner

TESTFILES = Path("/usr/share/clamav-testfiles")
SECTOR = 2048


def disc_image(identifier: bytes = b"CD001", files: bytes = b"") -> bytes:
    """A disc image laid out as ECMA-119 8.1 says: 16 sectors of system area, then a volume
    descriptor (type 1, the identifier, version 1) and a terminator (type 255), then the files."""
    primary = bytes([1]) + identifier + bytes([1]) + bytes(SECTOR - 7)
    terminator = bytes([255]) + identifier + bytes([1]) + bytes(SECTOR - 7)
    return bytes(16 * SECTOR) + primary + terminator + files


def udf_image() -> bytes:
    """A UDF volume recognition sequence (ECMA-167 2/8.3): BEA01, NSR02, TEA01 from sector 16."""
    sectors = b"".join(bytes([0]) + name + bytes([1]) + bytes(SECTOR - 7) for name in (b"BEA01", b"NSR02", b"TEA01"))
    return bytes(16 * SECTOR) + sectors


def compound_file(*names: str) -> bytes:
    """An OLE compound file (MS-CFB 2.2, 2.6): a version 3 header, then one sector of directory
    entries with the ``names`` given (UTF-16LE, zero-padded to 64 bytes, the length with its NUL),
    "Root Entry" first."""
    header = (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(16) + struct.pack("<HHHH", 0x3E, 3, 0xFFFE, 9)
              + struct.pack("<H", 6) + bytes(6) + struct.pack("<IIIIIIII", 0, 1, 0, 0, 0x1000, 0xFFFFFFFE, 0,
                                                                      0xFFFFFFFE) + struct.pack("<I", 0))
    header = header.ljust(76, b"\x00") + struct.pack("<I", 1) + b"\xff" * (512 - 80)
    entries = b""
    for kind, name in [(5, "Root Entry"), *((1 if n in ("VBA", "Macros") else 2, n) for n in names)]:
        raw = name.encode("utf-16-le")
        entries += raw.ljust(64, b"\x00") + struct.pack("<HBB", len(raw) + 2, kind, 1) + b"\xff" * 12 + bytes(48)
    return header + entries.ljust(512, b"\x00")


def worst(report_rules: dict[str, Level]) -> Level:
    return max(report_rules.values(), default=Level.INFO)


# 1. Containers and disc images pacsguard does not open.

@pytest.mark.parametrize("build", [lambda: disc_image(files=pe_in_preamble()), lambda: disc_image(b"CD001"),
                                   udf_image], ids=["iso9660-with-a-payload", "iso9660", "udf"])
def test_a_disc_image_is_not_judged_clean(build: Callable[[], bytes]) -> None:
    found = rules(Scanner().scan_bytes(build(), "patient-cd.iso"))
    assert found.get("structure.unopened-archive") == Level.MEDIUM, found
    assert "structure.not-dicom" not in found


@pytest.mark.parametrize("name", ["clam.cab", "clam.arj", "clam.bin-le.cpio", "clam.bin-be.cpio", "clam.newc.cpio",
                                  "clam.odc.cpio", "clam.chm", "clam.exe.szdd"])
def test_containers_pacsguard_does_not_open_are_medium(name: str) -> None:
    """Each holds ClamAV's test program: scanned as one opaque file, it is not clean."""
    found = rules(Scanner().scan_bytes((TESTFILES / name).read_bytes(), name))
    assert found.get("structure.unopened-archive") == Level.MEDIUM, found


def test_a_disc_image_inside_a_zip_is_not_judged_clean(tmp_path: Path) -> None:
    download = tmp_path / "download.zip"
    download.write_bytes(zip_bytes({"PATIENT.ISO": disc_image(files=pe_in_preamble())}))
    result = CliRunner().invoke(main.app, ["scan", "--format", "json", str(download)])
    assert result.exit_code == 1, result.output
    assert "structure.unopened-archive" in result.output and "download.zip!PATIENT.ISO" in result.output


@pytest.mark.parametrize("data", [
    b"070701 is the first line of this README, not a cpio header\n" * 4,
    b"MSCF is a word here\n" * 8,
    bytes(40000),  # zeros reach past sector 16: no descriptor identifier there
    b"xx-lh\x00-" + bytes(100),
], ids=["text-070701", "text-MSCF", "zeros", "not-lha"])
def test_other_files_stay_notes(data: bytes) -> None:
    found = rules(Scanner().scan_bytes(data, "README"))
    assert found == {"structure.not-dicom": Level.INFO}, found


def test_a_dicom_file_is_never_taken_for_a_container() -> None:
    assert worst(rules(Scanner().scan_bytes(ct(), "IM000001"))) <= Level.LOW


# 2. Names Windows runs.

@pytest.mark.parametrize("name", ["GAME.COM", "viewer.pif", "setup.msi", "patch.msp", "panel.cpl", "HELP.CHM",
                                  "console.msc", "settings.reg", "run.wsh"])
def test_a_name_windows_runs_is_an_executable_file(name: str) -> None:
    found = rules(Scanner().scan_bytes(b"\xb4\x09\xba\x0d\x01\xcd\x21\xcd\x20" + b"hello$", f"usb/{name}"))
    assert found.get("structure.executable-file") == Level.MEDIUM, found


@pytest.mark.parametrize("name", ["IM000001", "report.pdf", "notes.txt", "www.example.com.txt", "DICOMDIR"])
def test_other_names_are_not(name: str) -> None:
    found = rules(Scanner().scan_bytes(b"plain words of a note\n", name))
    assert "structure.executable-file" not in found, found


# 3. Office macros in a file of its own.

def test_an_office_file_with_macros_is_high() -> None:
    report = Scanner().scan_bytes(compound_file("WordDocument", "Macros", "VBA", "_VBA_PROJECT", "dir"), "letter.doc")
    found = [f for f in report.findings if f.rule == "documents.office-macro"]
    assert found and found[0].level == Level.HIGH and found[0].offset is not None and found[0].offset >= 512


def test_the_vba_project_of_an_ooxml_file_is_high(tmp_path: Path) -> None:
    workbook = tmp_path / "results.xlsm"
    with zipfile.ZipFile(workbook, "w") as z:
        z.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        z.writestr("xl/workbook.xml", '<?xml version="1.0"?><workbook/>')
        z.writestr("xl/vbaProject.bin", compound_file("VBA", "_VBA_PROJECT", "dir", "PROJECT"))
    result = CliRunner().invoke(main.app, ["scan", "--format", "json", str(workbook)])
    assert result.exit_code == 1, result.output
    assert "documents.office-macro" in result.output and "results.xlsm!xl/vbaProject.bin" in result.output


def test_an_office_file_without_macros_stays_a_note() -> None:
    found = rules(Scanner().scan_bytes(compound_file("WordDocument", "1Table", "SummaryInformation"), "letter.doc"))
    assert found == {"structure.not-dicom": Level.INFO}, found
    text = b"This text mentions VBA, _VBA_PROJECT and Macros as words.\n" * 4
    assert "documents.office-macro" not in rules(Scanner().scan_bytes(text, "notes.txt"))


# 4. The HTML report.

def test_html_shows_reordering_and_control_characters_as_escapes(tmp_path: Path) -> None:
    for name in ("IM1\u202egpj.exe", "red\x1b[31m.dcm"):
        (tmp_path / name).write_bytes(pe_in_preamble())
    result = CliRunner().invoke(main.app, ["scan", "--format", "html", str(tmp_path)])
    assert result.exit_code == 1
    page = result.stdout
    assert "\u202e" not in page and "\x1b" not in page
    assert "IM1\\u202egpj.exe" in page and "red\\x1b[31m.dcm" in page
