"""After round 7: an ISO 9660 or UDF disc image (a patient CD or DVD as a file, the issue's
"DICOMDIR media (CD/DVD/USB images as folders)") was only flagged structure.unopened-archive:
none of its files was scanned, so a PE/DICOM polyglot, an AUTORUN.INF or a DICOMDIR leading out
of the medium on it passed unseen. Images are now opened as containers (pycdlib), each file a
member judged as a zip's or tar's: names (traversal, Windows names, AUTORUN.INF), content, the
DICOMDIR's file IDs, the bomb limits (members, bytes, nesting: an ISO in a zip in an ISO).

Hostile images are made with genisoimage, then hand-edited (ECMA-119 9.1 directory records,
9.4 path table): a loop of folders, extents past the end, overlapping extents, 100,000 records,
names with "/" or NUL, a path table that disagrees. None crashes or hangs the scan; what cannot
be read is a finding naming where; an image pycdlib cannot open stays unopened-archive."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from scan_samples import ct, dicomdir_traversal, pe_in_preamble
from typer.testing import CliRunner

from pacsguard.cli import main
from pacsguard.scan.walk import ArchiveLimits, walk

SECTOR = 2048
GENISOIMAGE = shutil.which("genisoimage")
assert GENISOIMAGE is not None, "genisoimage (Debian genisoimage) builds the test images"


def make_iso(folder: Path, files: dict[str, bytes], *options: str) -> bytes:
    """An image of ``files`` (relative paths) made by genisoimage with ``options`` (-J Joliet,
    -R Rock Ridge, -udf)."""
    src = folder / "src"
    for name, content in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(content)
    out = folder / "image.iso"
    subprocess.run([GENISOIMAGE, "-quiet", *options, "-o", str(out), str(src)], check=True, timeout=60)
    data = out.read_bytes()
    shutil.rmtree(src)
    out.unlink()
    return data


def scan(*paths: Path, limits: ArchiveLimits | None = None) -> dict[str, dict[str, object]]:
    """{path: {"rules": {rule: level}, "text": all explanations, "skipped": ...}} of a CLI-like scan."""
    from pacsguard.scan.run import scan_all
    from pacsguard.scan.scanner import Scanner

    out: dict[str, dict[str, object]] = {}
    for report in scan_all(walk(list(paths), limits or ArchiveLimits()), Scanner()):
        out[report.path] = {"rules": {f.rule: f.level.label for f in report.findings},
                            "text": " | ".join(f.explanation for f in report.findings), "skipped": report.skipped}
    return out


def rules(result: dict[str, dict[str, object]], name: str) -> dict[str, str]:
    found = result[name]["rules"]
    assert isinstance(found, dict)
    return found


# Hand-editing ECMA-119 structures.

def root_of(data: bytes) -> tuple[int, int]:
    """(extent, length) of the primary volume descriptor's root directory record (9.1 at 156)."""
    pvd = FIRST = 16 * SECTOR
    assert data[pvd + 1:pvd + 6] == b"CD001" and data[FIRST] == 1
    return struct.unpack_from("<I", data, pvd + 156 + 2)[0], struct.unpack_from("<I", data, pvd + 156 + 10)[0]


def records(data: bytes | bytearray, extent: int, length: int) -> Iterator[tuple[int, bytes]]:
    """(offset, name) of each record in a directory extent."""
    pos, end = extent * SECTOR, extent * SECTOR + length
    while pos < end:
        size = data[pos]
        if size == 0:
            pos = (pos // SECTOR + 1) * SECTOR
            continue
        yield pos, bytes(data[pos + 33:pos + 33 + data[pos + 32]])
        pos += size


def record(data: bytes | bytearray, name: bytes, folder: tuple[int, int] | None = None) -> int:
    """The offset of the record named ``name`` (its ISO 9660 identifier) in ``folder`` (the root)."""
    extent, length = folder or root_of(bytes(data))
    return next(pos for pos, found in records(data, extent, length) if found == name)


def put_both(data: bytearray, at: int, value: int) -> None:
    """A both-byte-order 32-bit field (ECMA-119 7.3.3) at ``at``."""
    struct.pack_into("<I", data, at, value)
    struct.pack_into(">I", data, at + 4, value)


def extent_of(data: bytes | bytearray, at: int) -> tuple[int, int]:
    return struct.unpack_from("<I", data, at + 2)[0], struct.unpack_from("<I", data, at + 10)[0]


@pytest.fixture
def media(tmp_path: Path) -> Path:
    folder = tmp_path / "media"
    folder.mkdir()
    return folder


# 1. Images are opened: their files scanned as members.

def test_files_of_an_image_are_scanned_as_members(tmp_path: Path, media: Path) -> None:
    image = make_iso(tmp_path, {"DICOM/ST1/IM1": ct(), "DICOM/ST1/IM2": pe_in_preamble(),
                                "AUTORUN.INF": b"[autorun]\r\nopen=viewer\\setup.exe\r\n"}, "-J", "-R")
    (media / "cd.iso").write_bytes(image)
    found = scan(media / "cd.iso")
    base = str(media / "cd.iso")
    assert rules(found, f"{base}!DICOM/ST1/IM2").get("preamble.pe") in ("high", "critical")
    assert "scan.not-scanned" not in rules(found, f"{base}!DICOM/ST1/IM1")
    assert max(rules(found, f"{base}!DICOM/ST1/IM1").values(), default="info") in ("info", "low")
    autorun = rules(found, f"{base}!AUTORUN.INF")
    assert autorun.get("structure.executable-file") == "medium", autorun
    assert "structure.unopened-archive" not in rules(found, base)


def test_an_image_without_joliet_or_rock_ridge_is_read_by_its_iso_9660_names(tmp_path: Path, media: Path) -> None:
    (media / "plain.iso").write_bytes(make_iso(tmp_path, {"IM1": pe_in_preamble()}))
    found = scan(media / "plain.iso")
    assert rules(found, f"{media / 'plain.iso'}!IM1").get("preamble.pe") in ("high", "critical"), found


def test_joliet_names_are_preferred_and_every_tree_s_names_judged(tmp_path: Path, media: Path) -> None:
    # Rock Ridge and Joliet keep a long name ISO 9660 level 1 truncates; a Windows-trimmed name
    # and a ".." component written with backslashes are judged in every tree they appear in.
    image = make_iso(tmp_path, {"a long report name.dcm": ct(), "..\\..\\Startup\\run.bat": b"@echo off\r\n"},
                     "-J", "-R")
    (media / "cd.iso").write_bytes(image)
    found = scan(media / "cd.iso")
    base = str(media / "cd.iso")
    assert f"{base}!a long report name.dcm" in found, list(found)
    own = rules(found, base)
    assert own.get("archive.path-traversal") == "high", found[base]
    assert "..\\\\..\\\\Startup\\\\run.bat" in str(found[base]["text"]) or "Startup" in str(found[base]["text"])


def test_windows_names_and_autorun_content_in_an_image_are_found(tmp_path: Path, media: Path) -> None:
    image = make_iso(tmp_path, {"CON.dcm": ct(), "notes.txt": b"[autorun]\r\nopen=viewer\\setup.exe\r\n"},
                     "-J", "-R")
    (media / "cd.iso").write_bytes(image)
    found = scan(media / "cd.iso")
    own = rules(found, str(media / "cd.iso"))
    assert own.get("archive.windows-name") == "high", found[str(media / "cd.iso")]
    assert own.get("archive.executable") == "high", found[str(media / "cd.iso")]  # AUTORUN.INF by content


def test_a_dicomdir_in_an_image_is_checked_as_in_a_folder(tmp_path: Path, media: Path) -> None:
    (media / "cd.iso").write_bytes(make_iso(tmp_path, {"DICOMDIR": dicomdir_traversal(), "IM1": ct()}, "-J"))
    found = scan(media / "cd.iso")
    assert rules(found, f"{media / 'cd.iso'}!DICOMDIR").get("structure.fileid-traversal") == "high", found


def test_dicomdir_file_ids_are_resolved_inside_the_image(tmp_path: Path, media: Path) -> None:
    """The DICOMDIR of pydicom's test files references 31 files (77654033\\CR1\\6154...): on an
    image holding all but two of them, the two are named; on one holding all, nothing is."""
    import pydicom
    from pydicom.data import get_testdata_file

    dicomdir = Path(get_testdata_file("DICOMDIR")).read_bytes()
    ds = pydicom.dcmread(get_testdata_file("DICOMDIR"))
    ids = ["/".join(r.ReferencedFileID) for r in ds.DirectoryRecordSequence if "ReferencedFileID" in r]
    files = {"DICOMDIR": dicomdir, **{f"{i}": ct() for i in ids}}
    (media / "all.iso").write_bytes(make_iso(tmp_path, files, "-J"))
    (media / "some.iso").write_bytes(make_iso(tmp_path, {k: v for k, v in files.items() if k not in ids[:2]}, "-J"))
    found = scan(media)
    assert "archive.dicomdir-unresolved" not in rules(found, str(media / "all.iso")), found[str(media / "all.iso")]
    some = found[str(media / "some.iso")]
    assert rules(found, str(media / "some.iso")).get("archive.dicomdir-unresolved") == "low", some
    assert "2 file ID(s)" in str(some["text"]) and ids[0].replace("/", "\\") in str(some["text"])


def test_a_udf_image_is_opened(tmp_path: Path, media: Path) -> None:
    (media / "dvd.iso").write_bytes(make_iso(tmp_path, {"IM1": pe_in_preamble()}, "-udf", "-J"))
    found = scan(media / "dvd.iso")
    assert rules(found, f"{media / 'dvd.iso'}!IM1").get("preamble.pe") in ("high", "critical"), found


def test_a_udf_only_image_pycdlib_cannot_open_stays_unopened(media: Path) -> None:
    # A UDF volume recognition sequence (ECMA-167 2/8.3) and no ISO 9660 volume: pycdlib needs one.
    sectors = b"".join(bytes([0]) + n + bytes([1]) + bytes(SECTOR - 7) for n in (b"BEA01", b"NSR02", b"TEA01"))
    (media / "udf.img").write_bytes(bytes(16 * SECTOR) + sectors + bytes(8 * SECTOR))
    found = scan(media / "udf.img")
    assert rules(found, str(media / "udf.img")).get("structure.unopened-archive") == "medium", found


# 2. Bomb limits: members, nesting, total bytes.

def test_an_iso_in_a_zip_in_an_iso_is_scanned_and_nesting_is_bounded(tmp_path: Path, media: Path) -> None:
    inner = make_iso(tmp_path, {"IM1": pe_in_preamble()}, "-J")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("inner.iso", inner)
    (media / "outer.iso").write_bytes(make_iso(tmp_path, {"export.zip": buf.getvalue()}, "-J"))
    found = scan(media / "outer.iso")
    deep = f"{media / 'outer.iso'}!export.zip!inner.iso!IM1"
    assert rules(found, deep).get("preamble.pe") in ("high", "critical"), list(found)
    shallow = scan(media / "outer.iso", limits=ArchiveLimits(max_depth=1))
    assert deep not in shallow
    nested = {k: v for k, v in shallow.items() if "archive.nesting" in rules(shallow, k)}
    assert nested, shallow


def test_more_files_than_the_member_limit_is_a_bomb(tmp_path: Path, media: Path) -> None:
    (media / "cd.iso").write_bytes(make_iso(tmp_path, {f"IM{k}": ct() for k in range(12)}, "-J"))
    found = scan(media / "cd.iso", limits=ArchiveLimits(max_members=5))
    assert rules(found, str(media / "cd.iso")).get("archive.bomb") == "high", found
    assert len([k for k in found if "!IM" in k]) <= 5


def test_overlapping_extents_that_amplify_the_image_are_a_bomb(tmp_path: Path, media: Path) -> None:
    """Every file's extent moved to the image's start, each a few bytes longer than the last: no
    two are the same extent, so each is read, and together they inflate the image past the ratio."""
    files = {f"F{k:03d}": bytes([k]) for k in range(150)}
    data = bytearray(make_iso(tmp_path, files))
    named = [r for r in records(data, *root_of(bytes(data))) if r[1].startswith(b"F")]
    first = min(extent_of(data, pos)[0] for pos, _ in named)
    for k, (pos, _) in enumerate(named):
        put_both(data, pos + 2, first)
        put_both(data, pos + 10, len(data) - first * SECTOR - k)
    (media / "cd.iso").write_bytes(data)
    found = scan(media / "cd.iso")
    own = rules(found, str(media / "cd.iso"))
    assert own.get("archive.bomb") == "high", found[str(media / "cd.iso")]
    assert own.get("archive.disc-overlap") == "medium"


def test_a_file_that_is_the_image_itself_is_named_and_bounded(tmp_path: Path, media: Path) -> None:
    """A file whose extent starts at block 0: the image inside itself, to the nesting limit."""
    data = bytearray(make_iso(tmp_path, {"SELF": b"x", "IM1": ct()}))
    at = record(data, b"SELF.;1")
    put_both(data, at + 2, 0)
    put_both(data, at + 10, len(data))
    (media / "cd.iso").write_bytes(data)
    found = scan(media / "cd.iso")
    assert "own volume descriptors" in str(found[str(media / "cd.iso")]["text"]), found[str(media / "cd.iso")]
    assert any("archive.nesting" in rules(found, k) for k in found)


# 3. Hand-edited records: never a crash or a hang; what cannot be read is named.

def test_a_loop_of_folders_is_named_and_the_image_is_not_judged_clean(tmp_path: Path, media: Path) -> None:
    data = bytearray(make_iso(tmp_path, {"DICOM/IM1": pe_in_preamble(), "IM2": ct()}))
    folder = record(data, b"DICOM")
    root_extent, root_length = root_of(bytes(data))
    put_both(data, folder + 2, root_extent)  # DICOM is the root again
    put_both(data, folder + 10, root_length)
    (media / "loop.iso").write_bytes(data)
    found = scan(media / "loop.iso")
    own = rules(found, str(media / "loop.iso"))
    assert own.get("archive.disc-unreadable") == "medium", found
    text = str(found[str(media / "loop.iso")]["text"])
    assert "loop" in text and "/DICOM" in text
    # pycdlib refuses the loop: the image stays unopened, never clean.
    assert own.get("structure.unopened-archive") == "medium"


def test_extents_past_the_end_are_named_and_the_other_files_scanned(tmp_path: Path, media: Path) -> None:
    data = bytearray(make_iso(tmp_path, {"GONE": b"x" * 100, "IM1": pe_in_preamble()}))
    put_both(data, record(data, b"GONE.;1") + 2, 10_000_000)
    (media / "cd.iso").write_bytes(data)
    found = scan(media / "cd.iso")
    base = str(media / "cd.iso")
    assert rules(found, base).get("archive.disc-unreadable") == "medium", found
    assert "/GONE" in str(found[base]["text"]) and "past the image's end" in str(found[base]["text"])
    if "structure.unopened-archive" not in rules(found, base):  # pycdlib opened it: the rest is scanned
        assert rules(found, f"{base}!IM1").get("preamble.pe") in ("high", "critical"), list(found)


def test_a_folder_extent_past_the_end_is_named(tmp_path: Path, media: Path) -> None:
    data = bytearray(make_iso(tmp_path, {"DICOM/IM1": ct(), "IM2": pe_in_preamble()}))
    put_both(data, record(data, b"DICOM") + 2, 0x7FFFFFF0)
    (media / "cd.iso").write_bytes(data)
    found = scan(media / "cd.iso")
    base = str(media / "cd.iso")
    assert rules(found, base).get("archive.disc-unreadable") == "medium", found
    assert "/DICOM" in str(found[base]["text"])


def test_a_hundred_thousand_records_are_bounded(tmp_path: Path, media: Path) -> None:
    """One folder of 100,000 records (all zero-length files): within the default member limit
    they are read; over a lower limit the image is not opened. Either way the scan ends."""
    data = bytearray(make_iso(tmp_path, {"A": b"a"}))
    root_extent, _ = root_of(bytes(data))
    first = next(records(data, *root_of(bytes(data))))[0]
    dot = bytes(data[first:first + data[first]])
    dotdot = bytearray(dot)
    dotdot[33] = 1  # "\1": the parent
    folder = bytearray(dot) + dotdot
    for k in range(100_000):
        name = f"F{k:05d}.;1".encode()
        rec = bytearray(33 + len(name) + (1 - len(name) % 2))
        rec[0] = len(rec)
        rec[32] = len(name)
        rec[33:33 + len(name)] = name
        if len(folder) % SECTOR + len(rec) > SECTOR:  # records never cross a sector (6.8.1.1)
            folder += bytes(SECTOR - len(folder) % SECTOR)
        folder += rec
    extent = len(data) // SECTOR
    length = -(-len(folder) // SECTOR) * SECTOR
    data += folder + bytes(length - len(folder))
    pvd = 16 * SECTOR + 156
    put_both(data, pvd + 2, extent)
    put_both(data, pvd + 10, length)
    (media / "many.iso").write_bytes(data)
    over = scan(media / "many.iso", limits=ArchiveLimits(max_members=1000))
    assert rules(over, str(media / "many.iso")).get("archive.bomb") == "high", over[str(media / "many.iso")]
    assert len(over) <= 2
    full = scan(media / "many.iso")
    assert "archive.bomb" not in rules(full, str(media / "many.iso"))
    # 100,000 names of one (empty) extent: every name judged, the extent read once.
    assert [k for k in full if "!" in k] == [f"{media / 'many.iso'}!F00000"], list(full)[:5]


@pytest.mark.parametrize("byte", [b"/", b"\0"], ids=["slash", "nul"])
def test_names_with_a_slash_or_nul_are_named(tmp_path: Path, media: Path, byte: bytes) -> None:
    data = bytearray(make_iso(tmp_path, {"SETUP.BAT": b"@echo off\r\n", "IM1": ct()}))
    at = record(data, b"SETUP.BAT;1")
    data[at + 33 + 2:at + 33 + 3] = byte  # SE/UP.BAT, SE\0UP.BAT
    (media / "cd.iso").write_bytes(data)
    found = scan(media / "cd.iso")
    own = rules(found, str(media / "cd.iso"))
    assert own.get("archive.disc-name") == "high", found


def test_a_path_table_that_disagrees_with_the_records_is_named(tmp_path: Path, media: Path) -> None:
    data = bytearray(make_iso(tmp_path, {"DICOM/IM1": ct(), "IM2": ct()}))
    pvd = 16 * SECTOR
    table = struct.unpack_from("<I", data, pvd + 140)[0] * SECTOR
    second = table + 8 + data[table] + (data[table] & 1)  # the root's entry, then DICOM's
    struct.pack_into("<I", data, second + 2, 12_345)
    (media / "cd.iso").write_bytes(data)
    found = scan(media / "cd.iso")
    own = rules(found, str(media / "cd.iso"))
    assert own.get("archive.disc-path-table") == "medium", found
    assert "12345" in str(found[str(media / "cd.iso")]["text"])


def test_garbage_after_the_volume_descriptor_never_crashes_the_scan(tmp_path: Path, media: Path) -> None:
    data = bytearray(make_iso(tmp_path, {"IM1": ct(), "DICOM/IM2": ct()}, "-J", "-R"))
    root_extent, root_length = root_of(bytes(data))
    for k in range(root_extent * SECTOR, root_extent * SECTOR + root_length, 7):
        data[k] = (k * 131) & 0xFF
    (media / "cd.iso").write_bytes(data)
    result = CliRunner().invoke(main.app, ["scan", "--format", "json", str(media)])
    assert result.exit_code in (0, 1), result.output
    assert "internal error" not in result.output
    files = {f["path"]: f for f in json.loads(result.stdout)["files"]}
    assert str(media / "cd.iso") in files


def test_folders_whose_extents_overlap_each_other_are_not_walked_past_the_image(tmp_path: Path,
                                                                                 media: Path) -> None:
    """Each folder's extent runs to the image's end: read one after another they would cost their
    number times the image. The walk stops once the folders add up to more than the image."""
    data = bytearray(make_iso(tmp_path, {f"D{k:02d}/IM": ct() for k in range(20)}))
    for pos, name in list(records(data, *root_of(bytes(data)))):
        if name.startswith(b"D"):
            extent, _ = extent_of(data, pos)
            put_both(data, pos + 10, len(data) - extent * SECTOR)
    (media / "cd.iso").write_bytes(data)
    found = scan(media / "cd.iso")
    base = str(media / "cd.iso")
    assert "add up to more than the image" in str(found[base]["text"]), found[base]
    assert rules(found, base).get("structure.unopened-archive") == "medium"


def test_images_with_random_damage_never_crash_the_scan(tmp_path: Path, media: Path) -> None:
    """Bytes of the descriptors, the path table and the folders overwritten at random (a fixed
    seed): each image is reported, opened or not, and the scan goes on to the next."""
    import random

    rng = random.Random(19)
    clean = make_iso(tmp_path, {"DICOM/ST1/IM1": ct(), "DICOM/ST1/IM2": ct(), "AUTORUN.INF": b"[autorun]\r\n"},
                     "-J", "-R", "-udf")
    root_extent, _ = root_of(clean)
    area = (16 * SECTOR, (root_extent + 8) * SECTOR)
    for k in range(60):
        data = bytearray(clean)
        for _ in range(rng.randint(1, 40)):
            data[rng.randrange(*area)] = rng.randrange(256)
        (media / f"cd{k:02d}.iso").write_bytes(data)
    (media / "zz-IM.dcm").write_bytes(pe_in_preamble())
    found = scan(media)
    assert all(str(media / f"cd{k:02d}.iso") in found for k in range(60))
    assert rules(found, str(media / "zz-IM.dcm")).get("preamble.pe") in ("high", "critical")


def test_a_tar_in_the_system_area_of_an_image_hides_none_of_its_files(tmp_path: Path, media: Path) -> None:
    """ECMA-119 leaves the first 32 KiB to the writer: a tar there shows tar its one harmless
    member, while the CD drive shows the image's files. Both are scanned; the file is a polyglot."""
    import tarfile

    image = bytearray(make_iso(tmp_path, {"IM1": pe_in_preamble()}, "-J"))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        info = tarfile.TarInfo("README.TXT")
        info.size = 5
        archive.addfile(info, io.BytesIO(b"hello"))
    head = buf.getvalue()
    assert len(head) < 16 * SECTOR
    image[:len(head)] = head
    (media / "export.tar").write_bytes(image)
    found = scan(media / "export.tar")
    base = str(media / "export.tar")
    assert f"{base}!README.TXT" in found
    assert rules(found, base).get("archive.polyglot") == "high", found[base]
    assert rules(found, f"{base}!IM1").get("preamble.pe") in ("high", "critical"), list(found)
