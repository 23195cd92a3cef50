"""structure.pixel-encoding: Pixel Data encoded other than the file's transfer syntax says (PS3.5
A.4, 8.2). Native pixels under a compressed transfer syntax, or fragments under a native one, were
no finding at all; dcmtk's decoders refuse such a file, and a reader that trusts the transfer
syntax hands the native bytes to its codec as a compressed stream. The encodings dcmtk and GDCM
write themselves give no finding."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.filewriter import write_file_meta_info

from pacsguard.scan.scanner import Scanner

RULE = "structure.pixel-encoding"
CT = Path(str(get_testdata_file("CT_small.dcm")))  # native, Explicit VR Little Endian


def with_transfer_syntax(data: bytes, transfer_syntax: str) -> bytes:
    """``data`` with its file meta saying ``transfer_syntax``; the data set as it was."""
    fp = io.BytesIO(data)
    preamble = read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    body = data[fp.tell():]
    meta.TransferSyntaxUID = transfer_syntax
    out = io.BytesIO()
    out.write((preamble or bytes(128)) + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    return out.getvalue() + body


def tool(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is needed (Debian dcmtk, libgdcm-tools)"
    return found


def encoded(tmp_path: Path, name: str, *args: str) -> Path:
    """CT_small.dcm written by a peer's encoder: ``name`` ``args`` IN OUT."""
    out = tmp_path / f"{name}{len(list(tmp_path.iterdir()))}.dcm"
    done = subprocess.run([tool(name), *args, str(CT), str(out)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return out


def rules_of(scanner: Scanner, path: Path) -> list[str]:
    return [f.rule for f in scanner.scan_file(path).findings]


@pytest.mark.parametrize(("encoder", "args"), [
    ("dcmcjpeg", ()),  # JPEG lossless, first-order prediction
    ("dcmcjpeg", ("+eb",)),  # JPEG baseline (8 bits of the CT's 16)
    ("dcmcrle", ()),
    ("gdcmconv", ("--j2k",)),
    ("gdcmconv", ("--jpegls",)),
    ("gdcmconv", ("--raw", "--implicit")),
    ("dcmconv", ("+tb",)),  # Explicit VR Big Endian
    ("dcmconv", ("+td",)),  # Deflated Explicit VR Little Endian
])
def test_what_the_peers_encode_is_no_finding(tmp_path: Path, scanner: Scanner, encoder: str,
                                             args: tuple[str, ...]) -> None:
    assert RULE not in rules_of(scanner, encoded(tmp_path, encoder, *args))


@pytest.mark.parametrize(("transfer_syntax", "name"), [
    ("1.2.840.10008.1.2.4.50", "JPEG Baseline (Process 1)"),
    ("1.2.840.10008.1.2.5", "RLE Lossless"),
    ("1.2.840.10008.1.2.4.201", "High-Throughput JPEG 2000"),
])
def test_native_pixels_under_a_compressed_transfer_syntax(tmp_path: Path, scanner: Scanner, transfer_syntax: str,
                                                          name: str) -> None:
    lying = tmp_path / "lying.dcm"
    lying.write_bytes(with_transfer_syntax(CT.read_bytes(), transfer_syntax))
    found = [f for f in scanner.scan_file(lying).findings if f.rule == RULE]
    assert len(found) == 1 and found[0].level.name == "MEDIUM"
    assert "native (32,768 bytes" in found[0].explanation and name in found[0].explanation
    if transfer_syntax == "1.2.840.10008.1.2.4.50":  # what a decoder makes of it
        done = subprocess.run([tool("dcmdjpeg"), str(lying), str(tmp_path / "out.dcm")], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode != 0 and "explicit length" in done.stderr


def test_fragments_under_a_native_transfer_syntax(tmp_path: Path, scanner: Scanner) -> None:
    jpeg = encoded(tmp_path, "dcmcjpeg", "+eb")
    lying = tmp_path / "lying.dcm"
    lying.write_bytes(with_transfer_syntax(jpeg.read_bytes(), "1.2.840.10008.1.2.1"))
    found = [f for f in scanner.scan_file(lying).findings if f.rule == RULE]
    assert len(found) == 1
    assert "encapsulated under Explicit VR Little Endian" in found[0].explanation


def test_a_private_transfer_syntax_is_not_judged(tmp_path: Path, scanner: Scanner) -> None:
    private = tmp_path / "private.dcm"
    private.write_bytes(with_transfer_syntax(CT.read_bytes(), "1.2.826.0.1.3680043.9.9999.1"))
    assert RULE not in rules_of(scanner, private)
