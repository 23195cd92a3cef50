"""Archives recognised by their content, whatever their name (an outside tester's round 3): a
.tar.gz called `study_export` or `study.tar.gz.1`, a gzip of a single PE (`setup.exe.gz`), a zip
with bytes before it (zip readers find the end of central directory from the end) or starting
with the split marker were one "not DICOM" note, the PE inside never seen. Each test builds its
sample; each failed before containers were sniffed (walk.sniff)."""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from scan_samples import appended_zip, ct, pe_in_preamble, tar_of, zip_bytes, zip_preamble

from pacsguard.scan.model import FileReport, Level
from pacsguard.scan.report import Summary
from pacsguard.scan.run import scan_all
from pacsguard.scan.scanner import Scanner
from pacsguard.scan.walk import ArchiveLimits, Item, walk

MiB = 1 << 20


def pe() -> bytes:
    """A Windows executable: DOS header, e_lfanew at 0x40, "PE\\0\\0" and an x86-64 COFF header."""
    dos = bytearray(0x40)
    dos[:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, 0x40)
    return bytes(dos) + b"PE\x00\x00" + struct.pack("<HHIIIHH", 0x8664, 1, 0, 0, 0, 0xF0, 0x22) + bytes(300)


COMPRESS: dict[str, Callable[[bytes], bytes]] = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}


def items(*paths: Path, limits: ArchiveLimits = ArchiveLimits()) -> dict[str, Item]:
    return {i.name: i for i in walk(list(paths), limits)}


def rules(item: Item) -> list[tuple[str, str]]:
    return [(f.rule, f.level.label) for f in item.findings]


def scanned(found: dict[str, Item]) -> list[str]:
    return sorted(n for n, i in found.items() if not i.skipped and not i.container)


def reports(scanner: Scanner, *paths: Path) -> dict[str, FileReport]:
    return {r.path: r for r in scan_all(walk(list(paths)), scanner)}


def worst(report: FileReport) -> str:
    return max((f.level for f in report.findings), default=Level.INFO).label


@pytest.mark.parametrize(("mode", "name"), [("w:gz", "study_export"), ("w:gz", "study.tar.gz.1"),
                                            ("w:bz2", "study_export"), ("w:xz", "EXPORT.DAT")])
def test_a_compressed_tar_is_opened_whatever_its_name(tmp_path: Path, mode: str, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(tar_of({"setup.exe": pe(), "IM1.dcm": ct()}, mode))
    found = items(path)
    assert found[str(path)].container
    assert rules(found[str(path)]) == [("archive.executable", "high")]
    assert scanned(found) == [f"{path}!IM1.dcm", f"{path}!setup.exe"]


def test_a_tar_without_the_ustar_magic_is_known_by_its_header_checksum(tmp_path: Path) -> None:
    """A pre-POSIX (v7) header has no "ustar" at 257: its checksum (148, octal) is what marks it."""
    data = bytearray(tar_of({"setup.exe": pe()}))
    data[257:265] = bytes(8)  # magic and version gone
    data[148:156] = b" " * 8
    data[148:156] = b"%06o\x00 " % sum(data[:512])
    path = tmp_path / "backup"
    path.write_bytes(bytes(data))
    found = items(path)
    assert rules(found[str(path)]) == [("archive.executable", "high")]
    assert scanned(found) == [f"{path}!setup.exe"]


@pytest.mark.parametrize("suffix", ["gz", "bz2", "xz"])
def test_a_single_compressed_file_is_scanned_as_its_member(tmp_path: Path, scanner: Scanner, suffix: str) -> None:
    path = tmp_path / f"setup.exe.{suffix}"
    path.write_bytes(COMPRESS[suffix](pe()))
    found = reports(scanner, path)
    assert [(f.rule, f.level.label) for f in found[str(path)].findings] == [("archive.executable", "high")]
    member = found[f"{path}!setup.exe"]
    assert [f.rule for f in member.findings] == ["structure.executable-file"] and member.size == len(pe())


def test_a_compressed_file_without_a_suffix_keeps_its_name(tmp_path: Path) -> None:
    path = tmp_path / "payload"
    path.write_bytes(gzip.compress(pe()))
    found = items(path)
    assert rules(found[str(path)]) == [("archive.executable", "high")]
    assert scanned(found) == [f"{path}!payload"]


def test_a_compressed_dicom_file_is_scanned_as_dicom(tmp_path: Path, scanner: Scanner) -> None:
    path = tmp_path / "IM000001.gz"
    path.write_bytes(gzip.compress(pe_in_preamble()))
    member = reports(scanner, path)[f"{path}!IM000001"]
    assert worst(member) == "critical" and "preamble.pe" in {f.rule for f in member.findings}


def test_a_zip_after_other_bytes_is_opened(tmp_path: Path) -> None:
    """zipfile finds the end of central directory from the end and offsets what comes before."""
    path = tmp_path / "sfx_like.zip"
    path.write_bytes(bytes(8) + zip_bytes({"evil.exe": pe()}))
    found = items(path)
    assert rules(found[str(path)]) == [("archive.executable", "high")]
    assert f"{path}!evil.exe" in scanned(found)


def test_the_bytes_before_a_zip_are_scanned_too(tmp_path: Path) -> None:
    """A self-extracting archive: a PE stub, then a zip of harmless members. Opening the zip alone
    would pass the program that runs."""
    path = tmp_path / "viewer"
    path.write_bytes(pe() + zip_bytes({"DICOM/IM1": ct()}))
    found = items(path)
    assert rules(found[str(path)]) == [("archive.executable", "high")]
    assert found[str(path)].findings[0].explanation.startswith("(data before the zip) is a Windows PE")
    assert scanned(found) == [f"{path}!(data before the zip)", f"{path}!DICOM/IM1"]
    assert found[f"{path}!(data before the zip)"].data == pe()


def test_a_zip_starting_with_the_split_marker_is_opened(tmp_path: Path) -> None:
    """APPNOTE.TXT 8.5.3: the first segment of a split archive starts with PK\\x07\\x08."""
    path = tmp_path / "split.zip"
    path.write_bytes(b"PK\x07\x08" + zip_bytes({"evil.exe": pe()}))
    found = items(path)
    assert rules(found[str(path)]) == [("archive.executable", "high")]
    assert scanned(found) == [f"{path}!evil.exe"]  # the marker is no member of its own


def test_a_single_compressed_file_is_held_to_the_bomb_limits(tmp_path: Path) -> None:
    bomb = tmp_path / "scan_data"
    bomb.write_bytes(gzip.compress(bytes(64 * MiB), 1))  # ~1000x
    found = items(bomb)
    assert rules(found[str(bomb)]) == [("archive.bomb", "high")] and scanned(found) == []
    big = tmp_path / "big.xz"
    big.write_bytes(lzma.compress(bytes(range(256)) * 8192))  # 2 MiB, past max_total
    found = items(big, limits=ArchiveLimits(max_total=MiB))
    assert rules(found[str(big)]) == [("archive.bomb", "high")] and scanned(found) == []


def test_compressed_files_count_against_the_nesting_limit(tmp_path: Path) -> None:
    data = pe()
    for _ in range(6):
        data = gzip.compress(data)
    path = tmp_path / "deep"
    path.write_bytes(data)
    found = items(path)
    nesting = [f for i in found.values() for f in i.findings if f.rule == "archive.nesting"]
    assert len(nesting) == 1 and nesting[0].level == Level.HIGH
    assert scanned(found) == []


def test_bytes_after_a_gzip_stream_are_noted_and_what_came_before_is_scanned(tmp_path: Path) -> None:
    path = tmp_path / "setup.exe.gz"
    path.write_bytes(gzip.compress(pe()) + b"not another gzip member")
    found = items(path)
    assert sorted(rules(found[str(path)])) == [("archive.corrupt", "low"), ("archive.executable", "high")]
    assert found[f"{path}!setup.exe"].data == pe()


def test_part10_files_are_scanned_as_dicom_whatever_they_hold(tmp_path: Path, scanner: Scanner) -> None:
    """A zip local header in the preamble made the file an archive that could not be opened: the
    DICOM, and the preamble.zip finding, were never seen. An appended zip is the polyglot rule's."""
    for name, data, rule in (("zip_preamble.dcm", zip_preamble(), "preamble.zip"),
                             ("appended.dcm", appended_zip(), "polyglot.appended-zip"),
                             ("gzip_preamble.dcm", ct(gzip.compress(b"x").ljust(128, b"\0")), "preamble.gzip")):
        path = tmp_path / name
        path.write_bytes(data)
        found = items(path)
        assert list(found) == [str(path)] and found[str(path)].path == path, name  # one file, not an archive
        assert rule in {f.rule for f in reports(scanner, path)[str(path)].findings}, name
    missing = tmp_path / "no_preamble.dcm"  # "DICM" at 0: part10 reads it as DICOM too
    missing.write_bytes(ct()[128:] + zip_bytes({"evil.exe": pe()}))
    assert list(items(missing)) == [str(missing)] and items(missing)[str(missing)].path == missing


def test_a_file_named_as_an_archive_but_not_one_is_scanned_as_a_file(tmp_path: Path, scanner: Scanner) -> None:
    """A PE called study.tar.gz was a corrupt archive (low), the PE never judged."""
    path = tmp_path / "study.tar.gz"
    path.write_bytes(pe())
    found = items(path)
    assert not found[str(path)].container and found[str(path)].path == path
    report = reports(scanner, path)[str(path)]
    assert [(f.rule, f.level.label) for f in report.findings] == [("structure.executable-file", "medium")]


def test_a_container_that_cannot_be_opened_is_noted_and_scanned_as_a_file(tmp_path: Path) -> None:
    """Bytes starting as gzip that do not inflate: a note, and the file still scanned as itself
    (once: counted as one file). An end-of-central-directory signature near the end of other bytes
    is no note at all: one that leads nowhere, or one of an empty zip (nothing to open)."""
    broken = tmp_path / "broken"
    broken.write_bytes(b"\x1f\x8b\x08\x00" + bytes(6) + b"\xff" * 40 + pe())
    stray = tmp_path / "notes.txt"
    stray.write_bytes(b"text " * 100 + b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 3, 3, 150, 200, 0))
    empty = tmp_path / "pixels.raw"
    empty.write_bytes(bytes(range(256)) * 4 + b"PK\x05\x06" + bytes(18))
    found = items(broken, stray, empty)
    assert list(found) == [str(broken), str(stray), str(empty)]
    assert found[str(broken)].path == broken and rules(found[str(broken)]) == [("archive.corrupt", "low")]
    assert all(found[str(p)].path == p and rules(found[str(p)]) == [] for p in (stray, empty))


def test_a_member_whose_deflate_stream_is_corrupt_does_not_stop_the_scan(tmp_path: Path) -> None:
    """zlib.error escaped the walk: "internal error", no report at all."""
    data = bytearray(zip_bytes({"a.dcm": b"hello" * 1000, "b.exe": pe()}))
    data[30 + len("a.dcm")] = 0xFF  # the first deflate block: BTYPE 11, invalid (RFC 1951 3.2.3)
    path = tmp_path / "damaged.zip"
    path.write_bytes(bytes(data))
    found = items(path)
    assert rules(found[str(path)]) == [("archive.member-unreadable", "medium"), ("archive.executable", "high")]
    assert scanned(found) == [f"{path}!b.exe"]


def test_summary_counts_by_content(tmp_path: Path, scanner: Scanner) -> None:
    """Each container is one file scanned, each member one more, an empty member skipped; a file
    that only looked like a container is one file."""
    (tmp_path / "study_export").write_bytes(tar_of({"IM1.dcm": ct(), "empty": b""}, "w:gz"))  # 2 scanned, 1 skipped
    (tmp_path / "setup.exe.gz").write_bytes(gzip.compress(pe()))  # 2
    (tmp_path / "fake.tar.gz").write_bytes(pe())  # 1
    (tmp_path / "sfx_like.zip").write_bytes(bytes(8) + zip_bytes({"evil.exe": pe()}))  # 3: the 8 bytes too
    summary = Summary(Level.MEDIUM)
    for report in scan_all(walk([tmp_path]), scanner):
        summary.add(report)
    assert summary.scanned == 8 and dict(summary.skipped) == {"empty": 1}
    assert summary.failing == 5  # two containers of a PE, and the three PE files


@pytest.mark.parametrize("magic", [b"7z\xbc\xaf\x27\x1c\x00\x04", b"Rar!\x1a\x07\x01\x00", b"Rar!\x1a\x07\x00",
                                   b"\x28\xb5\x2f\xfd\x24\x04"], ids=["7z", "rar5", "rar4", "zstd"])
def test_an_archive_that_is_not_opened_is_not_passed_as_clean(tmp_path: Path, scanner: Scanner,
                                                              magic: bytes) -> None:
    """A 7-Zip, RAR or Zstandard file (on media, or a zip's member) was a "not DICOM" note: what it
    holds, perhaps a program, was never looked at. Not judged is not clean: medium, as an encrypted
    member is."""
    data = magic + bytes(200)
    (tmp_path / "IM000001").write_bytes(data)
    (tmp_path / "export.zip").write_bytes(zip_bytes({"DICOM/IM000002": data}))
    found = {path: [(f.rule, f.level) for f in r.findings] for path, r in reports(scanner, tmp_path).items()}
    member = f"{tmp_path / 'export.zip'}!DICOM/IM000002"
    assert found[str(tmp_path / "IM000001")] == found[member] == [("structure.unopened-archive", Level.MEDIUM)], found


@pytest.mark.parametrize("kind", ["gz", "bz2", "xz", "tar"])
def test_a_zip_appended_to_a_tar_or_a_compressed_file_is_opened_too(tmp_path: Path, scanner: Scanner,
                                                                    kind: str) -> None:
    """gunzip (bunzip2, unxz, tar) reads a file from its start, a zip reader from its end record: a
    clean study.dcm.gz with a zip after it showed the scanner the study and an unzip tool a program.
    Both are scanned now, and the file is a polyglot (high)."""
    front = tar_of({"study.dcm": ct()}) if kind == "tar" else COMPRESS[kind](ct())
    path = tmp_path / f"study.{kind}"
    path.write_bytes(front + zip_bytes({"setup.exe": pe()}))
    found = reports(scanner, path)
    assert f"{path}!setup.exe" in found, sorted(found)
    assert f"{path}!study.dcm" in found or f"{path}!study" in found, sorted(found)  # the front's member
    archive = next(i for i in walk([path]) if i.container and i.name == str(path))
    assert {("archive.polyglot", "high"), ("archive.executable", "high")} <= set(rules(archive)), rules(archive)


def test_a_compressed_file_without_a_zip_after_it_is_no_polyglot(tmp_path: Path) -> None:
    path = tmp_path / "study.dcm.gz"
    path.write_bytes(gzip.compress(ct()))
    archive = next(i for i in walk([path]) if i.container)
    assert not any(rule == "archive.polyglot" for rule, _ in rules(archive)), rules(archive)


@pytest.mark.parametrize("kind", ["gz", "bz2", "xz"])
def test_a_zip_after_a_tar_inside_a_compressed_stream_is_opened_too(tmp_path: Path, scanner: Scanner,
                                                                    kind: str) -> None:
    """gunzip writes the tar with the zip after it, which unzip opens: the plain tar was a polyglot,
    the same tar gzipped passed clean (a re-probe)."""
    path = tmp_path / f"study.tar.{kind}"
    path.write_bytes(COMPRESS[kind](tar_of({"study.dcm": ct()}) + zip_bytes({"setup.exe": pe()})))
    found = reports(scanner, path)
    assert f"{path}!setup.exe" in found and f"{path}!study.dcm" in found, sorted(found)
    archive = next(i for i in walk([path]) if i.container and i.name == str(path))
    assert ("archive.polyglot", "high") in rules(archive), rules(archive)
    plain = tmp_path / f"plain.tar.{kind}"
    plain.write_bytes(COMPRESS[kind](tar_of({"study.dcm": ct(), "reports.zip": zip_bytes({"r.txt": b"x"})})))
    archive = next(i for i in walk([plain]) if i.container and i.name == str(plain))
    assert not any(rule == "archive.polyglot" for rule, _ in rules(archive)), rules(archive)
