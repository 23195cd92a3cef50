"""Round 5, second wave (issue 19, outside tester "scan"): sequences dcmtk reads past, raw implicit
data sets, encoded URLs and scripts in long or large texts, DOCTYPEs that pair a W3C public id with
another system id, zip members whose links, names or versions extractors read otherwise than
pacsguard did, a PDF preamble, PHP's short echo tag."""

from __future__ import annotations

import io
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from test_round5_archives import scanned
from test_round5_dicom import HEAD, SC, el, elf, found, item, part10

from pacsguard.scan import signatures
from pacsguard.scan.model import Level
from pacsguard.scan.scanner import Scanner

XSS = '<a href="java&#x09;script:alert(1)">x</a>'
#: What follows each hostile sequence: a stored XSS and a UID that climbs out of a folder.
AFTER = el(0x10, 0x10, "PN", XSS) + el(0x10, 0x20, "LO", "PID1") + el(0x20, 0xD, "UI", "1.2.3/../../x")
INNER = el(8, 0x1150, "UI", SC) + el(8, 0x1155, "UI", "1.2.4")


@pytest.fixture(scope="module")
def plain() -> Scanner:
    """pacsguard's own rules, without YARA (scan.rules.yara: false)."""
    return Scanner()


def _sq(value: bytes, length: int | None = None) -> bytes:
    """(0008,1110) SQ of defined length: ``length``, or the value's own."""
    return struct.pack("<HH", 8, 0x1110) + b"SQ\0\0" + struct.pack("<I", len(value) if length is None else length) \
        + value


# Bug 18: sequences dcmtk reads past.
@pytest.mark.parametrize("sequence, note", [
    (_sq(struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + INNER), "structure.missing-delimiter"),
    (_sq(item(INNER), len(item(INNER)) - 4), "structure.item-past-sequence"),
], ids=["item-without-delimiter", "sequence-shorter-than-its-item"])
def test_what_follows_a_sequence_dcmtk_reads_past_is_judged(sequence: bytes, note: str, plain: Scanner) -> None:
    rules = found(plain.scan_bytes(part10(HEAD + sequence + AFTER), "s.dcm"))
    assert rules.get(note) == Level.LOW, rules
    assert rules.get("structure.markup") == Level.HIGH and rules.get("structure.uid-path-traversal") == Level.HIGH
    assert "structure.length-overrun" not in rules


def test_an_item_past_its_sequence_and_the_file_still_stops(plain: Scanner) -> None:
    data = part10(HEAD + _sq(item(INNER) + b"", 8)[:-4])
    rules = found(plain.scan_bytes(data, "s.dcm"))
    assert "structure.item-past-sequence" not in rules and max(rules.values()) == Level.LOW, rules


def test_a_delimited_item_in_a_defined_sequence_gives_no_note(plain: Scanner) -> None:
    sequence = _sq(struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + INNER + struct.pack("<HHI", 0xFFFE, 0xE00D, 0))
    assert found(plain.scan_bytes(part10(HEAD + sequence + el(0x10, 0x20, "LO", "PID1")), "s.dcm")) == {}


# Bug 4 (second half): a raw implicit VR little endian data set whose first group is above 0010.
def test_a_raw_implicit_data_set_of_a_high_first_group_is_dicom(plain: Scanner) -> None:
    data = el(0x18, 0x15, "CS", "CHEST", explicit=False) + el(0x29, 0x10, "LO", "ACME", explicit=False) \
        + el(0x29, 0x1010, "OB", elf(), explicit=False)
    rules = found(plain.scan_bytes(data, "raw.dcm"))
    assert rules.get("embedded.elf") == Level.HIGH and "structure.not-dicom" not in rules, rules


@pytest.mark.parametrize("data", [b"Dear colleague,\r\nthe images follow.\r\n" * 4, bytes(range(256)) * 4,
                                  struct.pack("<HHI", 0x18, 0x15, 6) + b"CHEST "],
                         ids=["text", "binary", "one-element"])
def test_other_files_are_still_not_dicom(data: bytes, plain: Scanner) -> None:
    assert "structure.not-dicom" in found(plain.scan_bytes(data, "x.bin"))


# Bug 15: a javascript: URL written with a character reference in a long text.
@pytest.mark.parametrize("link", ['<a href="jav&#x61;script:alert(1)">x</a>', '<a href="javascript&colon;x">x</a>',
                                  '<iframe src="java&#x09;script:alert(1)">'])
@pytest.mark.parametrize("element", [lambda v: el(0x20, 0x4000, "LT", v),
                                     lambda v: el(0x29, 0x10, "LO", "ACME") + el(0x29, 0x1010, "UT", v)],
                         ids=["image-comments-LT", "private-UT"])
def test_an_encoded_script_url_in_a_long_text_is_found(link: str, element: Callable[[str], bytes],
                                                       plain: Scanner) -> None:
    rules = found(plain.scan_bytes(part10(HEAD + element(link)), "u.dcm"))
    assert rules.get("embedded.script") == Level.HIGH, rules


def test_a_long_text_with_an_ampersand_is_not_a_script(plain: Scanner) -> None:
    text = "Follow-up &amp; compare with prior; see www.example.org/report &#169; Radiology"
    assert found(plain.scan_bytes(part10(HEAD + el(0x20, 0x4000, "LT", text)), "t.dcm")) == {}


# Bug 16: values over 1 MiB were not searched for scripts.
@pytest.mark.parametrize("payload", ["powershell -nop -w hidden -enc SQBFAFgAIAAoAE4AZQB3AC0A\r\n",
                                     "<details open ontoggle=alert(1)>"], ids=["powershell", "ontoggle"])
@pytest.mark.parametrize("where", ["head", "middle", "tail"])
def test_a_script_in_a_text_over_a_mebibyte_is_found(payload: str, where: str, plain: Scanner) -> None:
    size = 3 * (1 << 20) + 10
    at = {"head": 0, "middle": (3 << 20) // 2 - 5, "tail": size - len(payload) - 2}[where]
    value = (" " * at + payload).ljust(size)
    data = part10(HEAD + el(0x29, 0x10, "LO", "ACME") + el(0x29, 0x1010, "UT", value))
    assert found(plain.scan_bytes(data, "b.dcm")).get("embedded.script") == Level.HIGH


@pytest.mark.parametrize("where", ["head", "tail"])
def test_a_script_at_either_end_of_a_large_binary_value_is_found(where: str, plain: Scanner) -> None:
    payload = b"<script>alert(1)</script>"
    filler = bytes(3 << 20)
    value = payload + filler if where == "head" else filler + payload
    data = part10(HEAD + el(0x29, 0x10, "LO", "ACME") + el(0x29, 0x1010, "OB", value))
    assert found(plain.scan_bytes(data, "b.dcm")).get("embedded.script") == Level.HIGH


# Bug 8: a W3C public identifier followed by another system identifier.
@pytest.mark.parametrize("doctype, hostile", [
    ('<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" "file:///tmp/x.dtd">', True),
    ('<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" "http://198.51.100.1/x.dtd">', True),
    ('<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" '
     '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">', False),
    ('<!DOCTYPE html PUBLIC "-//W3C//DTD HTML 4.01//EN">', False),
], ids=["file-system-id", "http-system-id", "w3c-system-id", "public-only"])
def test_only_the_w3c_doctype_is_exempt(doctype: str, hostile: bool, plain: Scanner, scanner: Scanner) -> None:
    doc = f'<?xml version="1.0"?>\n{doctype}\n<ClinicalDocument xmlns="urn:hl7-org:v3"/>\n'.encode()
    data = part10(HEAD[:-len(el(8, 0x60, "CS", "OT"))] + el(0x10, 0x20, "LO", "PID1") + el(0x42, 0x11, "OB", doc)
                  + el(0x42, 0x12, "LO", "text/xml"))
    rules = found(plain.scan_bytes(data, "x.dcm"))
    assert (rules.get("documents.xml-external-entity") == Level.HIGH) is hostile, rules
    with_yara = found(scanner.scan_bytes(data, "x.dcm"))
    assert ("yara.pacsguard_xml_external_entity" in with_yara) is hostile, with_yara


# Bug 11: symbolic links made by hosts other than Unix.
@pytest.mark.parametrize("host", [3, 16, 5, 30, 0])
def test_a_zip_link_of_any_host_is_checked(host: int, tmp_path: Path) -> None:
    path = tmp_path / f"media_{host}.zip"
    with zipfile.ZipFile(path, "w") as z:
        info = zipfile.ZipInfo("media/lnk")
        info.create_system, info.external_attr = host, (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, "../../../../../etc")
    assert scanned(path)[""].get("archive.link-traversal") == Level.HIGH


def test_a_link_mode_from_a_host_extractors_disagree_on_is_scanned_as_a_file(tmp_path: Path) -> None:
    path = tmp_path / "fat.zip"
    with zipfile.ZipFile(path, "w") as z:
        info = zipfile.ZipInfo("IM1")
        info.create_system, info.external_attr = 0, (stat.S_IFLNK | 0o644) << 16
        z.writestr(info, part10(HEAD + el(0x29, 0x10, "LO", "ACME") + el(0x29, 0x1010, "OB", elf() + bytes(8192))))
    found_ = scanned(path)
    assert found_["!IM1"].get("embedded.elf") == Level.HIGH
    assert "archive.link-traversal" not in found_[""], found_  # a file's bytes are no unreadable target


# Bug 9: the Info-ZIP Unicode Path extra field names the file unzip writes.
def _unicode_zip(header: str, written: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        info = zipfile.ZipInfo(header)
        info.extra = struct.pack("<HHB", 0x7075, 5 + len(written.encode()), 1) \
            + struct.pack("<I", zlib.crc32(header.encode())) + written.encode()
        z.writestr(info, data)
    return buf.getvalue()


def test_a_member_is_judged_by_its_unicode_path(tmp_path: Path) -> None:
    path = tmp_path / "u.zip"
    path.write_bytes(_unicode_zip("notes.txt", "run.bat", b"start http://198.51.100.1/x\r\ncalc.exe\r\n"))
    found_ = scanned(path)
    assert found_["!run.bat"].get("structure.executable-file") == Level.MEDIUM, found_


def test_a_unicode_path_that_climbs_out_is_path_traversal(tmp_path: Path) -> None:
    path = tmp_path / "u.zip"
    path.write_bytes(_unicode_zip("IM1", "../../IM1", part10(HEAD)))
    assert scanned(path)[""].get("archive.path-traversal") == Level.HIGH


def test_the_header_name_counts_when_only_it_is_a_script_name() -> None:
    from pacsguard.scan.walk import written_name
    assert written_name("run.bat", "notes.txt") == "run.bat"
    assert written_name("notes.txt", "run.bat") == "run.bat"
    assert written_name("Bild.dcm", "Bild\u00e4.dcm") == "Bild\u00e4.dcm"


# Bug 20: the upper byte of "version needed to extract".
def test_a_zip_header_is_read_whatever_the_version_s_upper_byte() -> None:
    header = b"PK\x03\x04" + struct.pack("<HHHHHIIIHH", 0x0314, 0, 8, 0, 0, 0, 0, 0, 7, 0) + b"run.bat"
    assert signatures.verify("zip", header, 0) is not None
    too_new = header[:4] + struct.pack("<H", 0x0040) + header[6:]
    assert signatures.verify("zip", too_new, 0) is None


def test_a_zip_in_a_value_with_a_host_in_its_version_is_found(plain: Scanner) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("run.bat", "@echo off\r\ncalc.exe\r\n" * 5)
    zipped = bytearray(buf.getvalue())
    struct.pack_into("<H", zipped, 4, 0x0314)
    data = part10(HEAD + el(0x29, 0x10, "LO", "ACME") + el(0x29, 0x1010, "OB", bytes(zipped)))
    assert found(plain.scan_bytes(data, "z.dcm")).get("embedded.zip") == Level.HIGH


# Bug 5: a DICOM/PDF polyglot, its header in the preamble.
def _pdf_objects() -> bytes:
    js = zlib.compress(b"2 0 << /S /JavaScript /JS (app.alert(1)) >>")
    return (b"\n1 0 obj << /Type /Catalog /OpenAction 2 0 R >> endobj\n3 0 obj << /Type /ObjStm /N 1 /First 4 "
            b"/Filter /FlateDecode /Length " + str(len(js)).encode() + b" >>\nstream\n" + js
            + b"\nendstream endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")


def test_a_pdf_preamble_makes_the_file_a_pdf_judged_as_one(plain: Scanner) -> None:
    pre = b"%PDF-1.5\n%\xe2\xe3\xcf\xd3\n".ljust(128, b" ")
    data = part10(HEAD + el(0x29, 0x10, "LO", "ACME") + el(0x29, 0x1010, "OB", _pdf_objects()), preamble=pre)
    rules = found(plain.scan_bytes(data, "p.dcm"))
    assert rules.get("documents.pdf-active") == Level.HIGH and rules.get("preamble.pdf") == Level.LOW, rules


def test_a_passive_pdf_preamble_is_a_note(plain: Scanner) -> None:
    pre = b"%PDF-1.4\n".ljust(128, b" ")
    assert found(plain.scan_bytes(part10(HEAD, preamble=pre), "p.dcm")) == {"preamble.pdf": Level.LOW}


def test_an_encapsulated_pdf_is_judged_once(plain: Scanner) -> None:
    doc = b"%PDF-1.4\n1 0 obj << /Type /Catalog /OpenAction << /S /JavaScript /JS (x) >> >> endobj\n%%EOF\n"
    data = part10(el(0x10, 0x20, "LO", "PID1") + el(0x42, 0x11, "OB", doc) + el(0x42, 0x12, "LO", "application/pdf"))
    report = plain.scan_bytes(data, "e.dcm")
    assert [f.rule for f in report.findings].count("documents.pdf-active") == 1, report.findings


# Bug 17: PHP's short echo tag.
@pytest.mark.parametrize("pre", [b"<?=`$_GET[c]`?>", b"\n<?= system($_GET['c']) ?>\n"])
def test_a_php_short_echo_tag_in_the_preamble_is_a_script(pre: bytes, plain: Scanner, scanner: Scanner) -> None:
    data = part10(HEAD, preamble=pre.ljust(128, b"\0"))
    assert found(plain.scan_bytes(data, "php.dcm")).get("preamble.script") == Level.HIGH
    assert found(scanner.scan_bytes(data, "php.dcm")).get("yara.pacsguard_preamble_script") == Level.HIGH


def test_an_unclosed_short_echo_tag_is_no_script() -> None:
    """PHP parses the whole file first: "<?=" amid binary bytes never closed by "?>" runs nothing."""
    assert signatures.scripts(b"\x01<?=\x00\x02\x03 binary", limit=1) == []
    assert signatures.scripts(b"x <?= $a ?> y", limit=1) != []
