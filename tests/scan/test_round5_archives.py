"""Round 5 (issue 19, outside tester "scan"): archive members that extractors write out but the
scanner never read: a tar member past a damaged header (GNU tar skips to the next header), a tar
member of an unknown type or a GNU sparse one with an empty map (GNU tar extracts both as regular
files), and a zip local entry the central directory does not list (streaming extractors)."""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest
from test_round5_dicom import HEAD, el, elf, part10

from pacsguard.scan.model import Level
from pacsguard.scan.run import scan_item
from pacsguard.scan.scanner import Scanner
from pacsguard.scan.walk import walk

CLEAN = part10(HEAD)
EVIL = part10(HEAD + el(0x29, 0x10, "LO", "ACME") + el(0x29, 0x1010, "OB", elf()))


def scanned(path: Path) -> dict[str, dict[str, Level]]:
    """Each item of ``path`` (members and the archive itself) with its findings' rules."""
    scanner = Scanner()
    return {item.name.removeprefix(str(path)): {f.rule: f.level for f in scan_item(scanner, item).findings}
            for item in walk([path])}


def tar_member(name: str, data: bytes, typeflag: bytes = tarfile.REGTYPE) -> bytes:
    """One GNU-format member, its data block-padded, without an end-of-archive."""
    info = tarfile.TarInfo(name)
    info.size, info.type = len(data), typeflag
    header = info.tobuf(tarfile.GNU_FORMAT)
    return header + data + bytes(-len(data) % tarfile.BLOCKSIZE)


def test_a_member_after_a_damaged_header_is_scanned(tmp_path: Path) -> None:
    path = tmp_path / "media.tar"
    path.write_bytes(tar_member("S1/IM1", CLEAN) + b"not a header".ljust(512, b"X")
                     + tar_member("S1/IM2", EVIL) + bytes(1024))
    found = scanned(path)
    assert found["!S1/IM2"].get("embedded.elf") == Level.HIGH, found
    assert found[""].get("archive.damaged-header") == Level.MEDIUM


def test_a_sound_tar_has_no_damage(tmp_path: Path) -> None:
    path = tmp_path / "media.tar"
    path.write_bytes(tar_member("S1/IM1", CLEAN) + tar_member("S1/IM2", CLEAN) + bytes(1024))
    found = scanned(path)
    assert set(found) == {"!S1/IM1", "!S1/IM2", ""} and not any(found.values()), found


def _sparse(name: str, data: bytes) -> bytes:
    """A GNU sparse member (type "S", old GNU format) with an all-zero sparse map: GNU tar writes
    its stored bytes out as the file."""
    member = bytearray(tar_member(name, data))
    member[156:157] = b"S"
    member[148:156] = b"        "
    member[148:156] = b"%06o\0 " % sum(member[:512])
    return bytes(member)


@pytest.mark.parametrize("how", ["Z", "S"])
def test_a_member_gnu_tar_extracts_as_a_file_is_scanned(tmp_path: Path, how: str) -> None:
    evil = tar_member("S1/IM2", EVIL, b"Z") if how == "Z" else _sparse("S1/IM2", EVIL)
    path = tmp_path / "media.tar"
    path.write_bytes(tar_member("S1/IM1", CLEAN) + evil + bytes(1024))
    assert scanned(path)["!S1/IM2"].get("embedded.elf") == Level.HIGH


def _hide_last(zipped: bytes, keep: int = 0) -> bytes:
    """The zip with its central directory cut to one member, ``keep`` (the other's local entry kept)."""
    eocd = zipped.rfind(b"PK\x05\x06")
    offset = struct.unpack_from("<I", zipped, eocd + 16)[0]
    at = offset
    for _ in range(keep):
        n, x, c = struct.unpack_from("<HHH", zipped, at + 28)
        at += 46 + n + x + c
    n, x, c = struct.unpack_from("<HHH", zipped, at + 28)
    first = zipped[at:at + 46 + n + x + c]
    end = bytearray(zipped[eocd:])
    struct.pack_into("<HHII", end, 8, 1, 1, len(first), offset)
    return zipped[:offset] + first + bytes(end)


@pytest.mark.parametrize("stream,first", [(False, False), (True, False), (False, True)],
                         ids=["sizes", "data-descriptor", "hidden-first"])
def test_a_local_entry_missing_from_the_central_directory_is_scanned(tmp_path: Path, stream: bool,
                                                                      first: bool) -> None:
    buf = io.BytesIO()
    target: io.BytesIO | _Unseekable = _Unseekable(buf) if stream else buf
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:  # type: ignore[arg-type]
        for name, data in [("S1/IM2", EVIL), ("S1/IM1", CLEAN)][::1 if first else -1]:
            archive.writestr(name, data)
    path = tmp_path / "media.zip"
    path.write_bytes(_hide_last(buf.getvalue(), keep=1 if first else 0))
    found = scanned(path)
    assert found["!S1/IM2"].get("embedded.elf") == Level.HIGH, found
    assert found[""].get("archive.unlisted-entry") == Level.HIGH


def test_a_sound_zip_has_no_unlisted_entry(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(_Unseekable(buf), "w", zipfile.ZIP_DEFLATED) as archive:  # type: ignore[arg-type]
        archive.writestr("S1/IM1", CLEAN)
        archive.writestr("S1/IM2", CLEAN)
    path = tmp_path / "media.zip"
    path.write_bytes(buf.getvalue())
    found = scanned(path)
    assert set(found) == {"!S1/IM1", "!S1/IM2", ""} and not any(found.values()), found


class _Unseekable:
    """A stream zipfile cannot seek back in, so it writes data descriptors (APPNOTE.TXT 4.3.9)."""

    def __init__(self, buf: io.BytesIO) -> None:
        self.buf = buf

    def write(self, data: bytes) -> int:
        return self.buf.write(data)

    def flush(self) -> None:
        pass

    def tell(self) -> int:
        raise AttributeError("unseekable")
