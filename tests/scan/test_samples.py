"""Every hostile sample of issue #19 is found by the right rule at high severity or above, and
pydicom's own test files give nothing above low (issue #19, "Done when")."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
from pydicom.data import get_testdata_files
from scan_samples import SAMPLES, ct

from pacsguard.scan.model import Level
from pacsguard.scan.scanner import Scanner


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_each_sample_is_found_by_its_rule_at_high(name: str, built: dict[str, bytes], scanner: Scanner) -> None:
    rule = SAMPLES[name][1]
    report = scanner.scan_bytes(built[name], name)
    found = [f for f in report.findings if f.rule == rule]
    assert found, f"{name}: {rule} not reported; got {[f.rule for f in report.findings]}"
    assert found[0].level >= Level.HIGH
    assert report.fails(Level.MEDIUM)


def test_the_clean_base_has_no_finding_above_info(scanner: Scanner) -> None:
    report = scanner.scan_bytes(ct(), "ct")
    assert [f.rule for f in report.findings if f.level > Level.INFO] == []
    assert report.patient_id and report.study_uid and report.sop_instance_uid


def test_pydicom_test_files_give_nothing_above_low(scanner: Scanner) -> None:
    files = [Path(f) for f in get_testdata_files() if os.path.isfile(f)]
    assert len(files) >= 90
    loud = {}
    for path in files:
        report = scanner.scan_file(path)
        above = [f"{f.rule}={f.level.label}" for f in report.findings if f.level > Level.LOW]
        if above:
            loud[path.name] = above
    assert loud == {}


def test_tiff_preambles_are_benign_and_truncated_files_low(scanner: Scanner) -> None:
    """pydicom's dual-personality TIFF files and its deliberately cut files."""
    tiff = [Path(f) for f in get_testdata_files() if os.path.isfile(f) and open(f, "rb").read(4) == b"II*\x00"]
    assert tiff
    for path in tiff:
        rules = {f.rule: f.level for f in scanner.scan_file(path).findings}
        assert rules.get("preamble.tiff") == Level.INFO
    for name in ("MR_truncated.dcm", "rtplan_truncated.dcm"):
        path = next(Path(f) for f in get_testdata_files(name))
        levels = {f.rule: f.level for f in scanner.scan_file(path).findings}
        assert levels.get("structure.truncated") == Level.LOW


def test_an_elf_hidden_in_a_private_element_names_the_tag_and_offset(built: dict[str, bytes],
                                                                      scanner: Scanner) -> None:
    data = built["elf_in_private"]
    finding = next(f for f in scanner.scan_bytes(data, "x").findings if f.rule == "embedded.elf")
    assert finding.tag is not None and finding.tag.startswith("(0009,")
    assert finding.offset is not None and data[finding.offset:finding.offset + 4] == b"\x7fELF"


def test_the_pe_header_past_the_preamble_is_located_in_its_element(built: dict[str, bytes], scanner: Scanner) -> None:
    finding = next(f for f in scanner.scan_bytes(built["pe_past_preamble"], "x").findings if f.rule == "preamble.pe")
    assert finding.level == Level.CRITICAL
    assert "past the preamble inside (0009," in finding.explanation


def test_crafted_exhaustion_is_high_while_malformed_is_low(built: dict[str, bytes], scanner: Scanner) -> None:
    bomb = scanner.scan_bytes(built["nesting_bomb"], "bomb")
    assert max(f.level for f in bomb.findings) >= Level.HIGH
    cut = scanner.scan_bytes(ct()[:-100], "cut")
    assert {f.rule: f.level for f in cut.findings}.get("structure.truncated") == Level.LOW
    assert not cut.fails(Level.MEDIUM)


def test_a_program_among_the_images_is_noted_medium(scanner: Scanner) -> None:
    from scan_samples import mz_header, pe_header

    program = bytearray(mz_header(0x40)) + bytes(64)
    program[0x40:0x40 + 24] = pe_header()
    report = scanner.scan_bytes(bytes(program), "setup.exe")
    assert [(f.rule, f.level) for f in report.findings] == [("structure.executable-file", Level.MEDIUM)]
    text = scanner.scan_bytes(b"hello, this is a README\n" * 10, "README")
    assert [(f.rule, f.level) for f in text.findings] == [("structure.not-dicom", Level.INFO)]


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"],
                         ids=["implicit-le", "explicit-be", "deflated"])
def test_payloads_are_found_in_every_encoding(syntax: str, scanner: Scanner) -> None:
    """The same hostile values written implicit VR, big endian and deflated (PS3.5 A.1-A.5)."""
    import io

    from pydicom.uid import UID
    from scan_samples import base

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = base()
        ds.PatientName = "<script>alert(1)</script>"
        ds.SOPInstanceUID = "../../../../tmp/pwned"
        ds.private_block(0x0009, "PACSGUARD TEST", create=True).add_new(0x01, "OB", b"\x7fELF\x02\x01\x01" + bytes(57))
        ds.file_meta.TransferSyntaxUID = UID(syntax)
        out = io.BytesIO()
        big = syntax == "1.2.840.10008.1.2.2"
        if big:
            from pydicom.filewriter import dcmwrite

            ds.preamble = bytes(128)
            dcmwrite(out, ds, little_endian=False, implicit_vr=False, force_encoding=True)
        else:
            ds.save_as(out, enforce_file_format=True)
    report = scanner.scan_bytes(out.getvalue(), syntax)
    rules = {f.rule: f.level for f in report.findings}
    assert rules.get("structure.markup") == Level.HIGH
    assert rules.get("structure.uid-path-traversal") == Level.HIGH
    assert rules.get("embedded.elf") == Level.HIGH
    assert not [r for r, lv in rules.items() if lv >= Level.MEDIUM and r.startswith("structure.")
                and r not in ("structure.markup", "structure.uid-path-traversal")]
