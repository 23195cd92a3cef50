"""Round 5 (issue 19, outside tester "scan"): hostile DICOM files that passed as clean, each now
judged as the readers that would act on it read it (dcmtk, pydicom, the Linux loader, expat, Java's
DocumentBuilder), and the cleaning that dropped a patient's own value."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from scan_samples import scan_json

from pacsguard.scan.model import FileReport, Level
from pacsguard.scan.scanner import Scanner

EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"
SC = "1.2.840.10008.5.1.4.1.1.7"
LONG = ("OB", "OW", "UN", "SQ", "UT", "UC", "UR")
XSS = '<a href="java&#x09;script:alert(1)">x</a>'
#: A minimal x86-64 ELF header: class 2, data 1, version byte given, ET_EXEC, EM_X86_64.
def elf(version: int = 1) -> bytes:
    return b"\x7fELF\x02\x01" + bytes([version]) + bytes(9) + struct.pack("<HHI", 2, 0x3E, 1) + bytes(40)


def el(group: int, elem: int, vr: str, value: bytes | str, *, order: str = "<", explicit: bool = True) -> bytes:
    """One element: explicit VR (PS3.5 7.1.2) or implicit (7.1.3), padded to an even length."""
    val = value.encode("latin-1") if isinstance(value, str) else value
    if len(val) % 2:
        val += b"\0" if vr in ("UI", "OB", "UN") else b" "
    if not explicit:
        return struct.pack(order + "HHI", group, elem, len(val)) + val
    if vr in LONG:
        return struct.pack(order + "HH", group, elem) + vr.encode() + b"\0\0" + struct.pack(order + "I", len(val)) + val
    return struct.pack(order + "HH", group, elem) + vr.encode() + struct.pack(order + "H", len(val)) + val


def item(body: bytes, order: str = "<") -> bytes:
    return struct.pack(order + "HHI", 0xFFFE, 0xE000, len(body)) + body


def part10(dataset: bytes, ts: str = EXPLICIT_LE, *, preamble: bytes = bytes(128), extra_meta: bytes = b"") -> bytes:
    meta = el(2, 1, "OB", b"\0\1") + el(2, 2, "UI", SC) + el(2, 3, "UI", "1.2.3.4.5") + el(2, 0x10, "UI", ts) \
        + extra_meta
    return preamble + b"DICM" + el(2, 0, "UL", struct.pack("<I", len(meta))) + meta + dataset


HEAD = el(8, 0x16, "UI", SC) + el(8, 0x18, "UI", "1.2.3.4.5") + el(8, 0x60, "CS", "OT")


def found(report: FileReport) -> dict[str, Level]:
    return {f.rule: f.level for f in report.findings}


@pytest.fixture(scope="module")
def plain() -> Scanner:
    """The scanner without YARA (as with scan.rules.yara: false): pacsguard's own rules alone."""
    return Scanner()


# Bug 13: a TIFF marker before a script.
@pytest.mark.parametrize("text", [b"\r\n@echo off\r\nstart x.exe\r\n", b"<html><script>alert(1)</script>",
                                  b"\npowershell -nop -c iex(x)\n"], ids=["batch", "html", "powershell"])
def test_a_tiff_marker_does_not_excuse_a_script_in_the_preamble(text: bytes, plain: Scanner) -> None:
    for marker in (b"II*\0", b"MM\0*"):
        pre = (marker + text).ljust(128, b"\0")
        rules = found(plain.scan_bytes(part10(HEAD, preamble=pre), "t.dcm"))
        assert max(rules.values()) == Level.HIGH and "preamble.tiff" not in rules, rules


def test_a_plain_tiff_preamble_is_still_benign(plain: Scanner) -> None:
    pre = (b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", 1) + bytes(12)).ljust(128, b"\0")
    assert found(plain.scan_bytes(part10(HEAD, preamble=pre), "t.dcm")) == {"preamble.tiff": Level.INFO}


# Bug 1: e_ident's version byte is not what the loader checks.
@pytest.mark.parametrize("version", [0, 1, 7])
def test_an_elf_preamble_runs_whatever_its_version_byte(version: int, plain: Scanner, scanner: Scanner) -> None:
    data = part10(HEAD, preamble=elf(version).ljust(128, b"\0"))
    assert found(plain.scan_bytes(data, "e.dcm")).get("preamble.elf") == Level.HIGH
    assert found(scanner.scan_bytes(data, "e.dcm")).get("yara.pacsguard_preamble_elf") == Level.HIGH


def test_an_elf_of_version_zero_inside_a_value_is_found(plain: Scanner) -> None:
    data = part10(HEAD + el(0x29, 0x10, "LO", "ACME") + el(0x29, 0x1010, "OB", elf(0)))
    assert found(plain.scan_bytes(data, "e.dcm")).get("embedded.elf") == Level.HIGH


# Bug 2: the transfer syntax says implicit, the first element reads as explicit (and back).
def confused(tail: bytes = b"") -> bytes:
    """Implicit VR LE says the meta; (0008,0005) of implicit length 0x4955 reads as explicit "UI"
    of length 0, then a private OB to the end: the data set dcmtk reads hides behind it (a SOP
    Instance UID that climbs, then ``tail``, which may stop that reading)."""
    real = el(8, 0x16, "UI", SC, explicit=False) + el(8, 0x18, "UI", "../../../../tmp/pwned", explicit=False) + tail
    fill = el(0x9, 0x10, "LO", "AB") + struct.pack("<HH", 0x9, 0x1000) + b"OB\0\0"
    fill += struct.pack("<I", 0x4955 - len(fill) - 4)
    first = struct.pack("<HH", 8, 5) + b"UI" + b"\0\0"  # implicit: length 0x00004955
    body = first + fill
    body += bytes(0x4955 - (len(body) - 8)) + real
    length = len(body) - len(first) - len(fill)
    return part10(first + fill[:-4] + struct.pack("<I", length) + body[len(first) + len(fill):], IMPLICIT_LE)


def test_a_data_set_that_reads_both_ways_is_judged_both_ways(plain: Scanner) -> None:
    rules = found(plain.scan_bytes(confused(), "c.dcm"))
    assert rules.get("structure.transfer-syntax-confusion") == Level.HIGH, rules
    assert rules.get("structure.uid-path-traversal") == Level.HIGH, rules


def test_a_vr_of_no_letters_is_read_as_dcmtk_reads_it(plain: Scanner) -> None:
    """Explicit VR says the meta; the first VR is 00 00 (dcmtk: a 2-byte length), which makes the
    first element look implicit, where a later UN header's VR bytes swallow the rest."""
    payload = el(0x10, 0x10, "PN", "Doe^John") + el(8, 0x18, "UI", "../../../../tmp/pwned")
    rest = 0x4E55 - 4 - len(payload) - 12
    body = (struct.pack("<HH", 8, 5) + b"\0\0" + struct.pack("<H", 0)
            + struct.pack("<HH", 9, 0x1011) + b"UN\0\0" + struct.pack("<I", 0) + payload
            + struct.pack("<HH", 0xFFFC, 0xFFFC) + b"OB\0\0" + struct.pack("<I", rest) + bytes(rest))
    rules = found(plain.scan_bytes(part10(body), "r.dcm"))
    assert rules.get("structure.transfer-syntax-confusion") == Level.HIGH, rules
    assert rules.get("structure.uid-path-traversal") == Level.HIGH, rules


# Bug 3: the transfer syntax twice.
def test_a_second_transfer_syntax_is_high_and_the_first_is_read(plain: Scanner) -> None:
    data = part10(HEAD + el(0x10, 0x10, "PN", XSS), extra_meta=el(2, 0x10, "UI", "1.2.840.10008.1.2.1.99"))
    rules = found(plain.scan_bytes(data, "d.dcm"))
    assert rules.get("structure.meta-repeated") == Level.HIGH and rules.get("structure.markup") == Level.HIGH


# Bug 4: encapsulated pixel data inside an item, and an OB of undefined length holding items.
def _fragments(order: str = "<") -> bytes:
    return item(b"", order) + item(b"\xff\xd8\xff\xd9", order) + struct.pack(order + "HHI", 0xFFFE, 0xE0DD, 0)


@pytest.mark.parametrize("where", ["icon", "private-ob"])
def test_what_follows_nested_encapsulated_data_is_judged(where: str, plain: Scanner) -> None:
    if where == "icon":
        pixels = struct.pack("<HH", 0x7FE0, 0x10) + b"OB\0\0" + struct.pack("<I", 0xFFFFFFFF) + _fragments()
        holder = el(0x29, 0x10, "LO", "ACME") + el(0x29, 0x1010, "SQ", item(pixels))
    else:
        holder = el(0x29, 0x10, "LO", "ACME") + struct.pack("<HH", 0x29, 0x1010) + b"OB\0\0" \
            + struct.pack("<I", 0xFFFFFFFF) + _fragments()
    data = part10(HEAD + holder + el(0x2001, 0x10, "LO", "X") + el(0x2001, 0x1000, "UI", "1.2.3/../../x"))
    rules = found(plain.scan_bytes(data, "n.dcm"))
    assert rules.get("structure.uid-path-traversal") == Level.HIGH, rules
    assert "structure.undefined-length" not in rules


# Bug 5: a raw data set starting above group 0010, or private.
@pytest.mark.parametrize("data,rule", [
    (el(0x18, 0x15, "CS", "CHEST") + el(0x29, 0x10, "LO", "ACME") + el(0x29, 0x1010, "OB", elf()), "embedded.elf"),
    (el(0x9, 0x10, "LO", "ACME") + el(0x9, 0x1010, "UT", "<script>alert(1)</script>"), "embedded.script"),
    (el(0x20, 0xD, "UI", "1.2.3/../../../etc/cron.d/x") + el(0x20, 0xE, "UI", "1.2.3.4"),
     "structure.uid-path-traversal"),
], ids=["elf-0018", "script-0009", "uid-0020"])
def test_a_raw_data_set_starting_at_any_group_is_dicom(data: bytes, rule: str, plain: Scanner) -> None:
    rules = found(plain.scan_bytes(data, "raw.dcm"))
    assert rules.get(rule) == Level.HIGH, rules


def test_text_and_executables_without_a_header_stay_not_dicom(plain: Scanner) -> None:
    assert "structure.not-dicom" in found(plain.scan_bytes(b"Patient list\nDoe^John 1.2.3\n" * 4, "a.txt"))
    assert "structure.not-dicom" not in found(plain.scan_bytes(elf() + bytes(400), "a.out"))


# Bugs 6 and 14: a sequence written as UN with a defined length, in either byte order.
@pytest.mark.parametrize("order,ts", [("<", EXPLICIT_LE), (">", EXPLICIT_BE)], ids=["le", "be"])
@pytest.mark.parametrize("inner,rule", [
    (el(8, 0x1150, "UI", "1.2/../../../x", explicit=False), "structure.uid-path-traversal"),
    (el(8, 0x1150, "UI", "1.2.3", explicit=False) + el(0x10, 0x10, "PN", XSS, explicit=False), "structure.markup"),
], ids=["uid", "markup"])
def test_a_un_sequence_is_walked_in_implicit_little_endian(order: str, ts: str, inner: bytes, rule: str,
                                                            plain: Scanner) -> None:
    head = el(8, 0x16, "UI", SC, order=order) + el(8, 0x18, "UI", "1.2.3.4.5", order=order)
    data = part10(head + el(8, 0x1110, "UN", item(inner), order=order) + el(0x10, 0x20, "LO", "PID1", order=order),
                  ts)
    rules = found(plain.scan_bytes(data, "un.dcm"))
    assert rules.get(rule) == Level.HIGH, rules
    assert "polyglot.trailing-data" not in rules and "structure.bad-item" not in rules


def test_a_clean_big_endian_undefined_length_un_sequence_is_clean(plain: Scanner) -> None:
    inner = item(el(8, 0x1155, "UI", "1.2.3.4.9", explicit=False))
    seq = struct.pack(">HH", 8, 0x1110) + b"UN\0\0" + struct.pack(">I", 0xFFFFFFFF) + inner \
        + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    head = el(8, 0x16, "UI", SC, order=">") + el(8, 0x18, "UI", "1.2.3.4.5", order=">")
    data = part10(head + seq + el(0x10, 0x20, "LO", "PID1", order=">"), EXPLICIT_BE)
    assert not [f for f in plain.scan_bytes(data, "be.dcm").findings if f.level > Level.INFO]


# Bug 7: the UID and markup rules go by the attribute, not the VR written.
@pytest.mark.parametrize("vr", ["LO", "SH", "UN"])
def test_a_sop_instance_uid_of_another_vr_is_still_a_uid(vr: str, plain: Scanner) -> None:
    data = part10(el(8, 0x16, "UI", SC) + el(8, 0x18, vr, "../../../../tmp/pwned"))
    assert found(plain.scan_bytes(data, "u.dcm")).get("structure.uid-path-traversal") == Level.HIGH


@pytest.mark.parametrize("vr", ["UN", "LT", "UT", "ST"])
def test_a_patient_name_of_another_vr_is_still_shown_as_a_name(vr: str, plain: Scanner) -> None:
    data = part10(HEAD + el(0x10, 0x10, vr, XSS))
    assert found(plain.scan_bytes(data, "m.dcm")).get("structure.markup") == Level.HIGH


# Bugs 8 and 9: XXE in a CDA without a byte order mark, and behind "<!DOCTYPE html SYSTEM".
def cda(doc: bytes, mime: str | None = "text/xml") -> bytes:
    ds = el(8, 0x16, "UI", "1.2.840.10008.5.1.4.1.1.104.2") + el(8, 0x18, "UI", "1.2.3.4.5") \
        + el(0x42, 0x11, "OB", doc) + (el(0x42, 0x12, "LO", mime) if mime else b"")
    return part10(ds)


XXE = '<?xml version="1.0"?>\n<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/hostname">]>\n<d>&x;</d>\n'


@pytest.mark.parametrize("codec,mime", [("utf-16-le", "text/xml"), ("utf-16-be", None), ("utf-32-le", None)])
def test_xxe_in_utf16_or_utf32_without_a_byte_order_mark_is_found(codec: str, mime: str | None,
                                                                  plain: Scanner) -> None:
    rules = found(plain.scan_bytes(cda(XXE.encode(codec), mime), "x.dcm"))
    assert rules.get("documents.xml-external-entity") == Level.HIGH, rules


def test_a_doctype_named_html_with_a_system_dtd_is_xxe(plain: Scanner, scanner: Scanner) -> None:
    doc = b'<?xml version="1.0"?>\n<!DOCTYPE html SYSTEM "file:///tmp/x.dtd">\n<ClinicalDocument>&x;</ClinicalDocument>'
    assert found(plain.scan_bytes(cda(doc), "x.dcm")).get("documents.xml-external-entity") == Level.HIGH
    assert found(scanner.scan_bytes(cda(doc), "x.dcm")).get("yara.pacsguard_xml_external_entity") == Level.HIGH


# Bug 15: cleaning refuses a value with markup instead of dropping the patient's own value.
def test_markup_in_a_patient_value_is_not_cleaned_away(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "name.dcm").write_bytes(part10(HEAD + el(0x10, 0x10, "PN", XSS)))
    code, doc = scan_json("--sanitize", "--out", tmp_path / "out", src)
    rules = {f["rule"] for f in doc["files"][0]["findings"]}
    assert code == 1 and "sanitize.refused" in rules and "sanitize.written" not in rules, rules
    assert not list((tmp_path / "out").rglob("*.dcm"))


def test_a_un_value_that_only_starts_like_items_does_not_stop_the_walk(plain: Scanner) -> None:
    fake = struct.pack("<HHI", 0xFFFE, 0xE000, 8) + b"\x01\x02\x03\x04\xff\xff\xff\x7f" + bytes(6)
    data = part10(HEAD + el(0x29, 0x10, "LO", "ACME") + el(0x29, 0x1010, "UN", fake) + el(0x10, 0x10, "PN", XSS))
    rules = found(plain.scan_bytes(data, "fake.dcm"))
    assert rules.get("structure.markup") == Level.HIGH, rules
