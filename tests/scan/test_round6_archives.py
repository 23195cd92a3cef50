"""Round 6 (issue 19, `pacsguard scan`): archive gaps left open by earlier rounds. The local entry
walk of a zip went no further than an entry with a data descriptor it could not measure or a
ZIP64 entry, so hidden entries after it were never seen; the bomb limits counted each nesting
level and each tar section on its own; member names Windows turns into a traversal, a device or
a stream passed; an LZMA-alone tar was not opened, and an LZ4 (lzip, lzop, compress) stream
passed with exit 0 while nothing inside it was scanned."""

from __future__ import annotations

import gzip
import io
import lzma
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest
from scan_samples import scan_json
from test_round5_archives import CLEAN, EVIL, _Unseekable, scanned, tar_member

from pacsguard.scan.model import Level
from pacsguard.scan.walk import ArchiveLimits

MIB = 1 << 20


# ---- 1. the local entry walk past data descriptors and ZIP64 entries ----

def _local(name: str, data: bytes, *, descriptor: str = "", zip64: bool = False) -> bytes:
    """A stored local entry (APPNOTE.TXT 4.3.7) written by hand. ``descriptor``: "" sizes in the
    header; "signed", "signed64" or "bare" flag bit 3 with zero sizes and a data descriptor after
    the data (4.3.9: with its signature, 4- or 8-byte sizes; or without the signature). ``zip64``:
    the sizes 0xFFFFFFFF in the header and in a Zip64 extra field (4.5.3)."""
    crc, size = zlib.crc32(data), len(data)
    flags = 0x8 if descriptor else 0
    extra = b""
    head_crc, head_size = (0, 0) if descriptor else (crc, size)
    if zip64:
        extra = struct.pack("<HHQQ", 1, 16, head_size, head_size)
        head_size = 0xFFFFFFFF
    header = b"PK\x03\x04" + struct.pack("<HHHHHIIIHH", 20, flags, 0, 0, 0, head_crc, head_size, head_size,
                                         len(name), len(extra)) + name.encode() + extra
    tail = {"": b"", "signed": b"PK\x07\x08" + struct.pack("<III", crc, size, size),
            "signed64": b"PK\x07\x08" + struct.pack("<IQQ", crc, size, size),
            "bare": struct.pack("<III", crc, size, size)}[descriptor]
    return header + data + tail


def _hidden(zipped: bytes, entries: bytes) -> bytes:
    """``zipped`` with ``entries`` (local entries the central directory does not list) put before
    its central directory, the end record's offset moved past them."""
    eocd = zipped.rfind(b"PK\x05\x06")
    offset = struct.unpack_from("<I", zipped, eocd + 16)[0]
    end = bytearray(zipped[eocd:])
    struct.pack_into("<I", end, 16, offset + len(entries))
    return zipped[:offset] + entries + zipped[offset:eocd] + bytes(end)


def _listed(**kwargs: bool) -> bytes:
    """A zip of one listed member, S1/IM1 (written streamed or as ZIP64 on request)."""
    buf = io.BytesIO()
    target = _Unseekable(buf) if kwargs.get("stream") else buf
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:  # type: ignore[arg-type]
        with archive.open("S1/IM1", "w", force_zip64=kwargs.get("zip64", False)) as member:
            member.write(CLEAN)
    return buf.getvalue()


@pytest.mark.parametrize("descriptor,zip64", [("signed", False), ("signed64", False), ("signed64", True),
                                              ("", True)],
                         ids=["descriptor", "zip64-descriptor", "zip64-extra-and-descriptor", "zip64-extra"])
def test_the_local_walk_goes_past_an_entry_measured_by_its_descriptor_or_zip64(
        tmp_path: Path, descriptor: str, zip64: bool) -> None:
    path = tmp_path / "media.zip"
    path.write_bytes(_hidden(_listed(), _local("S1/IM2", CLEAN, descriptor=descriptor, zip64=zip64)
                             + _local("S1/IM3", EVIL)))
    found = scanned(path)
    assert found["!S1/IM3"].get("embedded.elf") == Level.HIGH, found
    assert found[""].get("archive.unlisted-entry") == Level.HIGH
    assert "archive.local-walk-stopped" not in found[""]


@pytest.mark.parametrize("stream", [False, True], ids=["sizes", "data-descriptor"])
def test_the_local_walk_goes_past_a_listed_zip64_entry(tmp_path: Path, stream: bool) -> None:
    """zipfile's own ZIP64 entries (force_zip64): 0xFFFFFFFF sizes, the real ones in the extra field."""
    path = tmp_path / "media.zip"
    path.write_bytes(_hidden(_listed(zip64=True, stream=stream), _local("S1/IM3", EVIL)))
    found = scanned(path)
    assert found["!S1/IM3"].get("embedded.elf") == Level.HIGH, found


def test_a_sound_streamed_zip64_zip_has_no_finding(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(_Unseekable(buf), "w", zipfile.ZIP_STORED) as archive:  # type: ignore[arg-type]
        for name in ("S1/IM1", "S1/IM2"):
            with archive.open(name, "w", force_zip64=True) as member:
                member.write(CLEAN)
    path = tmp_path / "media.zip"
    path.write_bytes(buf.getvalue())
    found = scanned(path)
    assert set(found) == {"!S1/IM1", "!S1/IM2", ""} and not any(found.values()), found


def test_an_entry_whose_end_cannot_be_found_is_a_finding(tmp_path: Path) -> None:
    """A stored entry with flag bit 3 and a descriptor without its signature: where its data ends
    cannot be found, so whatever follows is unseen, and that is said, not passed as clean."""
    path = tmp_path / "media.zip"
    path.write_bytes(_hidden(_listed(), _local("S1/IM2", CLEAN, descriptor="bare") + _local("S1/IM3", EVIL)))
    code, report = scan_json(path)
    own = next(f for f in report["files"] if f["path"] == str(path))
    stopped = [f for f in own["findings"] if f["rule"] == "archive.local-walk-stopped"]
    assert stopped and stopped[0]["level"] == "medium", own
    assert "S1/IM2" in stopped[0]["explanation"] and "descriptor" in stopped[0]["explanation"]
    assert code == 1


# ---- 2. bomb limits over the whole archive ----

ALL_TOTAL = ArchiveLimits(max_total=3 * MIB, max_ratio=10**6)


def _bombed(path: Path, limits: ArchiveLimits) -> list[str]:
    """The archive.bomb explanations of every item of ``path``."""
    from pacsguard.scan.walk import walk

    return [f.explanation for item in walk([path], limits) for f in item.findings if f.rule == "archive.bomb"]


def test_tar_sections_past_damage_add_up_to_the_total(tmp_path: Path) -> None:
    """Two members of 2 MiB, a damaged header between them: 4 MiB past a 3 MiB total."""
    path = tmp_path / "media.tar"
    path.write_bytes(tar_member("a", bytes(2 * MIB)) + b"damaged".ljust(512, b"X") + tar_member("b", bytes(2 * MIB))
                     + bytes(1024))
    assert _bombed(path, ALL_TOTAL)


def test_nested_archives_add_up_to_the_total(tmp_path: Path) -> None:
    """A tar of two .tar.gz of a few KiB, each holding 2 MiB: under the total each, 4 MiB in all."""
    inner = gzip.compress(tar_member("x", bytes(2 * MIB)) + bytes(1024))
    path = tmp_path / "media.tar"
    path.write_bytes(tar_member("one.tar.gz", inner) + tar_member("two.tar.gz", inner) + bytes(1024))
    bombs = _bombed(path, ALL_TOTAL)
    assert bombs and "nested archives included" in bombs[0], bombs


def test_nested_archives_add_up_to_the_member_limit(tmp_path: Path) -> None:
    inner = b"".join(tar_member(f"m{i}", b"x") for i in range(4)) + bytes(1024)
    path = tmp_path / "media.tar"
    path.write_bytes(tar_member("one.tar", inner) + tar_member("two.tar", inner) + bytes(1024))
    assert _bombed(path, ArchiveLimits(max_members=5))


def test_nested_archives_within_the_limits_are_no_bomb(tmp_path: Path) -> None:
    inner = gzip.compress(tar_member("x", bytes(MIB)) + bytes(1024))
    path = tmp_path / "media.tar"
    path.write_bytes(tar_member("one.tar.gz", inner) + tar_member("two.tar.gz", inner) + bytes(1024))
    assert not _bombed(path, ArchiveLimits(max_total=3 * MIB, max_ratio=10**6, max_members=6))


# ---- 3. names Windows writes elsewhere ----

TRAVERSAL = ["..\\x", "a\\..\\..\\x", "C:x", "C:\\x", "\\\\server\\share\\x", ".. \\x", ".../x", "a/... /x"]
WINDOWS = ["CON", "nul.txt", "S1/COM1.dcm", "LPT1 .dcm", "aux", "report.dcm:payload", "S1/IM1::$DATA",
           "run.bat.", "IM1 ", "S1./IM1"]


@pytest.mark.parametrize("name", TRAVERSAL + WINDOWS)
@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_a_name_windows_writes_elsewhere_is_flagged(tmp_path: Path, name: str, kind: str) -> None:
    path = tmp_path / f"media.{kind}"
    if kind == "zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as archive:
            archive.writestr(name, CLEAN)
        path.write_bytes(buf.getvalue())
    else:
        path.write_bytes(tar_member(name, CLEAN) + bytes(1024))
    rule = "archive.path-traversal" if name in TRAVERSAL else "archive.windows-name"
    assert scanned(path)[""].get(rule) == Level.HIGH


@pytest.mark.parametrize("name", ["S1/IM1.dcm", "CONTENT.dcm", "console.log", "COM10", "LPT", "a.b/c.d",
                                  "./IM1", "..IM1"])
def test_a_plain_name_is_not_flagged(tmp_path: Path, name: str) -> None:
    path = tmp_path / "media.tar"
    path.write_bytes(tar_member(name, CLEAN) + bytes(1024))
    assert not scanned(path)[""], name


def test_a_link_to_a_windows_parent_leads_outside(tmp_path: Path) -> None:
    info = tarfile.TarInfo("S1/link")
    info.type, info.linkname = tarfile.SYMTYPE, "... \\... \\windows"
    path = tmp_path / "media.tar"
    path.write_bytes(info.tobuf(tarfile.GNU_FORMAT) + bytes(1024))
    assert scanned(path)[""].get("archive.link-traversal") == Level.HIGH


# ---- 4. compressed tars ----

EVIL_TAR = tar_member("S1/IM3", EVIL) + bytes(1024)


@pytest.mark.parametrize("preset", [0, 6])
def test_an_lzma_alone_tar_is_opened(tmp_path: Path, preset: int) -> None:
    path = tmp_path / "study.tar.lzma"
    path.write_bytes(lzma.compress(EVIL_TAR, format=lzma.FORMAT_ALONE, preset=preset))
    assert scanned(path)["!S1/IM3"].get("embedded.elf") == Level.HIGH


def test_an_lzma_alone_file_is_opened_under_its_name(tmp_path: Path) -> None:
    path = tmp_path / "IM3.dcm.lzma"
    path.write_bytes(lzma.compress(EVIL, format=lzma.FORMAT_ALONE))
    assert scanned(path)["!IM3.dcm"].get("embedded.elf") == Level.HIGH


#: Streams of formats pacsguard knows by magic and cannot open: their magic then bytes.
UNOPENED = {"lz4": b"\x04\x22\x4d\x18\x64\x40\xa7", "lz4-legacy": b"\x02\x21\x4c\x18",
            "lzip": b"LZIP\x01\x0c", "lzop": b"\x89LZO\x00\r\n\x1a\n", "compress": b"\x1f\x9d\x90",
            "bzip3": b"BZ3v1"}


@pytest.mark.parametrize("kind", sorted(UNOPENED))
def test_a_stream_that_cannot_be_opened_fails_the_scan(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "study.tar.x"
    path.write_bytes(UNOPENED[kind] + bytes(range(256)) * 8)
    code, report = scan_json(path)
    findings = [f for f in report["files"][0]["findings"] if f["rule"] == "archive.unopened"]
    assert findings and findings[0]["level"] == "medium", report
    assert code == 1


def test_a_stream_that_cannot_be_opened_inside_a_zip_is_flagged(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("S1/study.tar.lz4", UNOPENED["lz4"] + bytes(64))
    path = tmp_path / "media.zip"
    path.write_bytes(buf.getvalue())
    assert scanned(path)["!S1/study.tar.lz4"].get("archive.unopened") == Level.MEDIUM


@pytest.mark.parametrize("head", [b"\x5d\x00\x00\x80\x00" + bytes(8) + b"\x07", b"\x1f\x9d\x7f", b"LZ4!"])
def test_bytes_that_only_resemble_a_stream_are_a_plain_file(tmp_path: Path, head: bytes) -> None:
    path = tmp_path / "notes.bin"
    path.write_bytes(head + b"plain text follows " * 20)
    found = scanned(path)
    assert set(found) == {""} and not any(rule.startswith("archive.") for rule in found[""]), found


def test_an_unlisted_streamed_deflate_bomb_stops_the_walk_as_a_bomb(tmp_path: Path) -> None:
    """Flag bit 3, deflated, 20 MiB of zeros in about 20 KB: the end of its stream is looked for no
    further than the ratio allows, and the entry is a bomb."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    packed = packer.compress(bytes(20 * MIB)) + packer.flush()
    header = b"PK\x03\x04" + struct.pack("<HHHHHIIIHH", 20, 0x8, 8, 0, 0, 0, 0, 0, 6, 0) + b"S1/IM2"
    path = tmp_path / "media.zip"
    path.write_bytes(_hidden(_listed(), header + packed + struct.pack("<III", 0, len(packed), 20 * MIB)))
    from pacsguard.scan.walk import walk

    own = [item for item in walk([path], ArchiveLimits(max_ratio=10)) if item.container][0]
    assert [(f.rule, f.level) for f in own.findings] == [("archive.bomb", Level.HIGH)], own.findings
    assert "S1/IM2" in own.findings[0].explanation


def _zip_of_evil() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("S1/IM3", EVIL)
    return buf.getvalue()


@pytest.mark.parametrize("head", [UNOPENED["lz4"] + bytes(64),
                                  b"\x5d" + struct.pack("<IQ", 1 << 16, (1 << 64) - 1) + b"\x00" + b"\xff" * 64],
                         ids=["lz4", "lzma-like"])
def test_a_zip_after_a_stream_head_is_still_opened(tmp_path: Path, head: bytes) -> None:
    """Zip readers open a zip from its end record whatever comes first; a stream magic (or a header
    that passes for LZMA) first does not hide its members."""
    path = tmp_path / "study.bin"
    path.write_bytes(head + _zip_of_evil())
    found = scanned(path)
    assert found["!S1/IM3"].get("embedded.elf") == Level.HIGH, found
    if head.startswith(UNOPENED["lz4"]):  # what the stream holds is still unscanned
        assert found[""].get("archive.unopened") == Level.MEDIUM, found
