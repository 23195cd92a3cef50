"""The walk over hostile inputs: each file scanned once however it is named, pacsguard's own
folders kept out, archive-wide bomb limits, member names that escape the extraction folder, and
a bounded number of items in flight with --jobs."""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

from scan_samples import pe_in_preamble, tar_of

from pacsguard.scan.config import ScanRules, ScanSettings
from pacsguard.scan.run import scan_all
from pacsguard.scan.scanner import Scanner
from pacsguard.scan.walk import ArchiveLimits, Item, walk

MiB = 1 << 20


def items(*paths: Path, **kwargs: object) -> list[Item]:
    return list(walk(list(paths), **kwargs))  # type: ignore[arg-type]


def skipped(found: list[Item]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in found:
        if item.skipped:
            out.setdefault(item.name, []).append(item.skipped)
    return out


def scanned(found: list[Item]) -> list[str]:
    return [i.name for i in found if not i.skipped and not i.container]


def zip_of(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(zipfile.ZipInfo(name), data, zipfile.ZIP_DEFLATED)
    return out.getvalue()


def rules(found: list[Item], name: str) -> list[str]:
    return [f.rule for i in found if i.name == name for f in i.findings]


def test_a_file_given_twice_is_scanned_once(tmp_path: Path) -> None:
    pe = tmp_path / "pe.dcm"
    pe.write_bytes(pe_in_preamble())
    (tmp_path / "x").mkdir()
    again = tmp_path / "x" / ".." / "pe.dcm"  # another spelling of the same PATH
    found = items(pe, pe, again)
    assert scanned(found) == [str(pe)]
    assert skipped(found) == {str(pe): ["given twice"], str(again): [f"given twice (also as {pe})"]}


def test_a_folder_given_twice_is_not_called_a_symlink_loop(tmp_path: Path) -> None:
    (tmp_path / "usb").mkdir()
    (tmp_path / "usb" / "a.dcm").write_bytes(pe_in_preamble())
    found = items(tmp_path / "usb", tmp_path / "usb")
    assert scanned(found) == [str(tmp_path / "usb" / "a.dcm")]
    assert skipped(found) == {str(tmp_path / "usb"): ["given twice"]}


def test_a_file_reached_twice_names_where_it_was_scanned(tmp_path: Path) -> None:
    usb = tmp_path / "usb"
    usb.mkdir()
    (usb / "a.dcm").write_bytes(pe_in_preamble())
    (usb / "b.dcm").symlink_to("a.dcm")  # the same file under a second name
    found = items(usb, usb / "a.dcm")
    assert scanned(found) == [str(usb / "a.dcm")]
    assert skipped(found) == {str(usb / "b.dcm"): ["symbolic link, not followed (-> a.dcm)"],
                              str(usb / "a.dcm"): [f"already scanned (as {usb / 'a.dcm'})"]}


def test_a_real_symlink_loop_says_where_it_leads(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up").symlink_to("..")
    # A link met inside a folder is not followed (docs/scan.md); given on the command line, it is.
    assert skipped(items(tmp_path)) == {str(tmp_path / "sub" / "up"): ["symbolic link, not followed (-> ..)"]}
    assert skipped(items(tmp_path / "sub" / "up")) == {str(tmp_path / "sub" / "up" / "sub" / "up"): [
        "symbolic link, not followed (-> ..)"]}


def test_a_missing_path_is_named_so(tmp_path: Path) -> None:
    (tmp_path / "dangling").symlink_to("nowhere")
    found = items(tmp_path / "missing.dcm", tmp_path / "dangling")
    assert skipped(found) == {str(tmp_path / "missing.dcm"): ["no such file or folder"],
                              str(tmp_path / "dangling"): ["dangling symlink"]}


def test_pacsguards_own_folders_are_not_walked(tmp_path: Path) -> None:
    usb = tmp_path / "usb"
    (usb / "quarantine").mkdir(parents=True)
    (usb / "quarantine" / "old.quarantined").write_bytes(pe_in_preamble())
    (usb / "a.dcm").write_bytes(pe_in_preamble())
    found = items(usb, exclude=[(usb / "quarantine", "the --quarantine folder")])
    assert scanned(found) == [str(usb / "a.dcm")]
    assert skipped(found) == {str(usb / "quarantine"): ["excluded (the --quarantine folder)"]}


def test_many_members_each_under_the_ratio_floor_are_an_archive_bomb(tmp_path: Path) -> None:
    """20 members of 1 MiB of zeros (each passes the per-member check) in a ~20 KB zip."""
    (tmp_path / "many.zip").write_bytes(zip_of({f"m{i:03}.dcm": bytes(MiB) for i in range(20)}))
    found = items(tmp_path / "many.zip")
    assert scanned(found) == []  # stopped before inflating anything
    bomb = [f for i in found for f in i.findings if f.rule == "archive.bomb"]
    assert len(bomb) == 1 and bomb[0].level.label == "high" and "20,971,520 bytes" in bomb[0].explanation
    # Under 1 MiB in all, zeros are no bomb whatever their ratio.
    (tmp_path / "small.zip").write_bytes(zip_of({"a.dcm": bytes(200_000), "b.dcm": bytes(200_000)}))
    found = items(tmp_path / "small.zip")
    assert len(scanned(found)) == 2 and rules(found, str(tmp_path / "small.zip")) == []


def test_members_declaring_past_max_total_are_not_read(tmp_path: Path) -> None:
    members = {f"m{i}.dcm": os.urandom(MiB // 2) for i in range(4)}  # incompressible: no ratio alarm
    (tmp_path / "big.zip").write_bytes(zip_of(members))
    found = items(tmp_path / "big.zip", limits=ArchiveLimits(max_total=MiB))
    assert scanned(found) == []
    assert rules(found, str(tmp_path / "big.zip")) == ["archive.bomb"]


def test_a_compressed_tar_of_many_members_is_an_archive_bomb(tmp_path: Path) -> None:
    (tmp_path / "many.tar.gz").write_bytes(tar_of({f"m{i:03}.dcm": bytes(MiB) for i in range(20)}, "w:gz"))
    found = items(tmp_path / "many.tar.gz")
    assert len(scanned(found)) < 20
    assert rules(found, str(tmp_path / "many.tar.gz")) == ["archive.bomb"]


def test_member_names_that_escape_the_extraction_folder(tmp_path: Path) -> None:
    bad = ["/etc/cron.d/x", "../../outside.dcm", "a/../../x.dcm", "C:\\Windows\\x.dcm", "D:x.dcm",
           "..\\..\\x.dcm", "\\\\server\\share\\x.dcm"]
    fine = ["DICOM/IM1", "a/..b/c..d.dcm", "a\\b.dcm"]
    members = {name: b"x" * 10 for name in bad + fine}
    (tmp_path / "slip.zip").write_bytes(zip_of(members))
    (tmp_path / "slip.tar").write_bytes(tar_of({"/abs.dcm": b"x", "../up.dcm": b"x", "ok/in.dcm": b"x"}))
    found = items(tmp_path)
    in_zip = [f for f in next(i for i in found if i.name.endswith("slip.zip")).findings]
    assert [f.rule for f in in_zip] == ["archive.path-traversal"] * len(bad)
    assert all(f.level.label == "high" for f in in_zip)
    assert [n for n in bad if not any(repr(n) in f.explanation for f in in_zip)] == []
    in_tar = rules(found, str(tmp_path / "slip.tar"))
    assert in_tar == ["archive.path-traversal"] * 2


def test_jobs_keep_a_bounded_window_of_items_in_flight() -> None:
    """Executor.map took the whole walk before the first report: every archive member in memory."""
    taken = 0

    def walked() -> Iterator[Item]:
        nonlocal taken
        for i in range(60):
            taken += 1
            yield Item(f"f{i}", skipped="empty (0 bytes)")

    settings = ScanSettings(rules=ScanRules(yara=False))
    reports = scan_all(walked(), Scanner(), jobs=2, settings=settings)
    first = next(reports)
    taken_at_first = taken
    rest = list(reports)
    assert taken_at_first <= 16
    assert [r.path for r in [first, *rest]] == [f"f{i}" for i in range(60)]


def test_a_damaged_member_does_not_hide_the_members_after_it(tmp_path: Path) -> None:
    """A clean member with a bad CRC-32 (or a local header naming another file) before an infected
    one: the whole archive used to end at the first, so the infected member was never scanned and
    the scan passed. Now the damaged one is a medium finding and the next is read."""
    evil = pe_in_preamble()
    good = zip_of({"a_clean.dcm": b"DICM" * 1000, "b_evil.dcm": evil})
    crc = good.replace(zipfile.ZipFile(io.BytesIO(good)).getinfo("a_clean.dcm").CRC.to_bytes(4, "little"),
                       b"\0\0\0\0")  # in the local header and the central directory
    renamed = good.replace(b"a_clean.dcm", b"x_clean.dcm", 1)  # the local header's name only
    for name, data in (("crc.zip", crc), ("renamed.zip", renamed)):
        (tmp_path / name).write_bytes(data)
        found = items(tmp_path / name)
        assert scanned(found) == [f"{tmp_path / name}!b_evil.dcm"], name
        damaged = [f for f in rules(found, str(tmp_path / name)) if f.startswith("archive.")]
        assert damaged[0] == "archive.member-unreadable", (name, damaged)  # then the PE member's own
