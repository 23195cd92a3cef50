"""Round 4 of the outside tests, the walk: symbolic links met inside a medium are not followed (and
--quarantine never moves anything through one, or outside the PATHs), a file swapped for a FIFO or
a link to /dev/zero after the walk, files that exist and cannot be read (not judged clean),
files deeper than PATH_MAX, zip members that are symbolic links, and a file gone during the scan."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from scan_samples import pe_in_preamble, scan_json

from pacsguard.scan.model import FileReport, Level
from pacsguard.scan.quarantine import QuarantineRefused, quarantine
from pacsguard.scan.run import scan_item
from pacsguard.scan.scanner import Scanner
from pacsguard.scan.walk import walk


def files(doc: dict) -> dict[str, dict]:
    return {f["path"]: f for f in doc["files"]}


def rules(entry: dict) -> set[str]:
    return {f["rule"] for f in entry["findings"]}


def test_a_folder_link_inside_a_medium_is_not_followed_nor_emptied(tmp_path: Path, clean_ct: bytes) -> None:
    """`tools -> /usr/bin` on a stick: the programs there (ELF, structure.executable-file) were moved."""
    system = tmp_path / "system" / "bin"
    system.mkdir(parents=True)
    shutil.copy("/usr/bin/true", system / "true")
    (tmp_path / "usb" / "DICOM").mkdir(parents=True)
    (tmp_path / "usb" / "DICOM" / "IM1").write_bytes(clean_ct)
    (tmp_path / "usb" / "tools").symlink_to(system)
    (tmp_path / "usb" / "DICOM" / "IM2").symlink_to(system / "true")  # a file link too
    code, doc = scan_json("--quarantine", tmp_path / "q", tmp_path / "usb")
    assert code == 0, doc
    assert (system / "true").is_file() and not list((tmp_path / "q").iterdir())
    skipped = {Path(p).name: f["skipped"] for p, f in files(doc).items() if "skipped" in f}
    assert skipped == {"tools": f"symbolic link, not followed (-> {system})",
                       "IM2": f"symbolic link, not followed (-> {system / 'true'})"}
    assert doc["summary"]["skipped"] == {"symbolic link, not followed": 2}


def test_a_folder_link_given_on_the_command_line_is_followed(tmp_path: Path) -> None:
    """The administrator named it: its files are scanned and may be quarantined (inside its tree)."""
    (tmp_path / "media" / "S1").mkdir(parents=True)
    (tmp_path / "media" / "S1" / "IM1").write_bytes(pe_in_preamble())
    (tmp_path / "usb").symlink_to(tmp_path / "media")
    code, doc = scan_json("--quarantine", tmp_path / "q", tmp_path / "usb")
    assert code == 1
    assert "preamble.pe" in rules(files(doc)[str(tmp_path / "usb" / "S1" / "IM1")])
    assert not (tmp_path / "media" / "S1" / "IM1").exists()
    [manifest] = [json.loads(p.read_text()) for p in (tmp_path / "q").glob("*.json")]
    assert manifest["original"] == str(tmp_path / "media" / "S1" / "IM1")


def test_quarantine_never_moves_through_a_link_nor_outside_the_paths(tmp_path: Path) -> None:
    """A folder swapped for a link after the walk saw it: the file it leads to stays."""
    outside = tmp_path / "system"
    outside.mkdir()
    (outside / "IM1").write_bytes(pe_in_preamble())
    usb = tmp_path / "usb"
    usb.mkdir()
    (usb / "S1").symlink_to(outside)  # was a folder when the walk listed it
    report = FileReport(str(usb / "S1" / "IM1"))
    with pytest.raises(QuarantineRefused, match="through a symbolic link"):
        quarantine(usb / "S1" / "IM1", report, tmp_path / "q", [usb])
    with pytest.raises(QuarantineRefused, match="not inside a PATH"):
        quarantine(outside / "IM1", FileReport(str(outside / "IM1")), tmp_path / "q", [usb])
    (usb / "IM2").symlink_to(outside / "IM1")  # the file itself swapped for a link
    with pytest.raises(QuarantineRefused, match="is a symbolic link"):
        quarantine(usb / "IM2", FileReport(str(usb / "IM2")), tmp_path / "q", [usb])
    assert (outside / "IM1").read_bytes() == pe_in_preamble() and list((tmp_path / "q").iterdir()) == []


def tar_gz(members: dict[str, bytes]) -> bytes:
    from scan_samples import tar_of

    return tar_of(members, "w:gz")


def test_an_archive_whose_member_fails_is_quarantined_whole(tmp_path: Path) -> None:
    from scan_samples import elf_in_private, pdf_javascript, zip_bytes

    media = tmp_path / "media"
    media.mkdir()
    (media / "study.zip").write_bytes(zip_bytes({"IM1.dcm": elf_in_private()}))
    (media / "study.tar.gz").write_bytes(tar_gz({"IM1.dcm": pdf_javascript()}))
    inner = zip_bytes({"S1/IM1.dcm": elf_in_private()})
    (media / "nested.zip").write_bytes(zip_bytes({"inner.zip": inner}))
    code, doc = scan_json("--quarantine", tmp_path / "q", media)
    assert code == 1
    assert list(media.iterdir()) == []
    found = {Path(m["original"]).name: m for m in (json.loads(p.read_text()) for p in (tmp_path / "q").glob("*.json"))}
    assert set(found) == {"study.zip", "study.tar.gz", "nested.zip"}
    assert [m["path"] for m in found["study.zip"]["members"]] == [f"{media}/study.zip!IM1.dcm"]
    assert "embedded.elf" in {f["rule"] for f in found["study.zip"]["members"][0]["findings"]}
    assert [m["path"] for m in found["nested.zip"]["members"]] == [f"{media}/nested.zip!inner.zip!S1/IM1.dcm"]
    assert any(f["rule"].startswith("documents.") for m in found["study.tar.gz"]["members"] for f in m["findings"])
    assert len(list((tmp_path / "q").glob("*.quarantined"))) == 3


#: Scan one file in a child process, bounded in time and memory: before the fix, a FIFO blocked the
#: open for ever and a link to /dev/zero was read until MemoryError.
CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from pathlib import Path
from pacsguard.scan.scanner import Scanner
r = Scanner(max_file_size=64 << 20).scan_file(Path(sys.argv[1]), sys.argv[1])
print(json.dumps(r.to_dict()))
"""


def scan_in_child(path: Path) -> dict:
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"scan_file hung on {path}")
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_a_file_swapped_for_a_fifo_or_a_link_to_dev_zero_is_skipped(tmp_path: Path, clean_ct: bytes) -> None:
    for name in ("a.dcm", "b.dcm", "c.dcm"):
        (tmp_path / name).write_bytes(clean_ct)
    items = list(walk([tmp_path]))  # the walk saw three regular files
    (tmp_path / "b.dcm").unlink()
    os.mkfifo(tmp_path / "b.dcm")
    (tmp_path / "c.dcm").unlink()
    (tmp_path / "c.dcm").symlink_to("/dev/zero")
    assert [i.path for i in items] == [tmp_path / n for n in ("a.dcm", "b.dcm", "c.dcm")]
    fifo, zero = scan_in_child(tmp_path / "b.dcm"), scan_in_child(tmp_path / "c.dcm")
    assert fifo["skipped"] == "not a regular file (FIFO)" and fifo["findings"] == []
    assert zero["skipped"] == "symbolic link, not followed" and zero["findings"] == []


def test_a_file_grown_past_the_limit_is_read_no_further(tmp_path: Path, clean_ct: bytes) -> None:
    (tmp_path / "a.dcm").write_bytes(clean_ct)
    report = Scanner(max_file_size=len(clean_ct) - 1).scan_file(tmp_path / "a.dcm")
    assert report.skipped.startswith("larger than the limit") and report.findings == []


def test_a_file_gone_during_the_scan_is_named_so(tmp_path: Path, clean_ct: bytes, scanner: Scanner) -> None:
    (tmp_path / "a.dcm").write_bytes(clean_ct)
    [item] = list(walk([tmp_path]))
    (tmp_path / "a.dcm").unlink()
    report = scan_item(scanner, item)
    assert report.skipped == "gone during the scan (moved or deleted)" and report.findings == []


def test_benign_skips_stay_informational(tmp_path: Path, clean_ct: bytes) -> None:
    (tmp_path / "ok.dcm").write_bytes(clean_ct)
    (tmp_path / "empty.dcm").write_bytes(b"")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to("ok.dcm")
    code, doc = scan_json(tmp_path)
    assert code == 0 and doc["summary"]["failing"] == 0
    assert all(f["findings"] == [] for f in doc["files"])


def test_an_unreadable_file_or_folder_is_not_judged_clean(tmp_path: Path, clean_ct: bytes) -> None:
    """Permission denied (root without the capabilities that read anything): exit 1, a
    scan.not-scanned finding (medium) in every format."""
    (tmp_path / "ok.dcm").write_bytes(clean_ct)
    (tmp_path / "locked.dcm").write_bytes(clean_ct)
    (tmp_path / "shut").mkdir()
    (tmp_path / "shut" / "IM1").write_bytes(pe_in_preamble())
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"] if os.geteuid() == 0 else []
    outputs: dict[str, subprocess.CompletedProcess[str]] = {}
    (tmp_path / "locked.dcm").chmod(0)
    (tmp_path / "shut").chmod(0)
    try:
        for fmt in ("json", "table", "sarif", "html"):
            outputs[fmt] = subprocess.run([*prefix, sys.executable, "-m", "pacsguard.cli", "scan", "--format", fmt,
                                           str(tmp_path)], capture_output=True, text=True, timeout=120,
                                          env={**os.environ, "COLUMNS": "300"})
    finally:
        (tmp_path / "locked.dcm").chmod(0o600)
        (tmp_path / "shut").chmod(0o700)
    assert {fmt: done.returncode for fmt, done in outputs.items()} == dict.fromkeys(outputs, 1)
    by_path = files(json.loads(outputs["json"].stdout))
    for name, why in (("locked.dcm", "unreadable: Permission denied"),
                      ("shut", "unreadable folder: Permission denied")):
        entry = by_path[str(tmp_path / name)]
        assert entry["skipped"] == why
        assert [(f["rule"], f["level"]) for f in entry["findings"]] == [("scan.not-scanned", "medium")]
    assert by_path[str(tmp_path / "ok.dcm")]["findings"] == []
    for fmt in ("table", "sarif", "html"):
        assert "scan.not-scanned" in outputs[fmt].stdout, fmt
    assert Level.MEDIUM.label in outputs["table"].stdout


def test_a_file_deeper_than_path_max_is_scanned_and_quarantined(tmp_path: Path) -> None:
    usb = tmp_path / "usb"
    deep = usb
    usb.mkdir()
    fd = os.open(usb, os.O_RDONLY)
    try:
        for _ in range(420):  # 420 x 11 bytes: past PATH_MAX (4096)
            os.mkdir("SERIES0001", dir_fd=fd)
            inner = os.open("SERIES0001", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
            deep = deep / "SERIES0001"
        with os.fdopen(os.open("IM000001", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd), "wb") as f:
            f.write(pe_in_preamble())
    finally:
        os.close(fd)
    assert len(os.fsencode(deep)) > 4096
    code, doc = scan_json("--quarantine", tmp_path / "q", usb)
    assert code == 1, doc["summary"]
    entry = files(doc)[str(deep / "IM000001")]
    assert "preamble.pe" in rules(entry) and "quarantine.failed" not in rules(entry)
    assert doc["summary"]["scanned"] == 1 and doc["summary"]["skipped"] == {}
    [moved] = (tmp_path / "q").glob("*.quarantined")
    assert moved.read_bytes() == pe_in_preamble()
    subprocess.run(["rm", "-rf", str(usb)], check=True, timeout=60)  # shutil.rmtree needs fds per level


def zip_link(name: str, target: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        info = zipfile.ZipInfo(name)
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, target)
    return out.getvalue()


@pytest.mark.parametrize(("target", "escapes"), [("../../../../etc/cron.d", True), ("/etc/cron.d", True),
                                                 ("..\\..\\Windows", True), ("S1/IM1", False)])
def test_a_zip_symlink_member_is_judged_as_a_tar_link(tmp_path: Path, target: str, escapes: bool) -> None:
    (tmp_path / "media.zip").write_bytes(zip_link("DICOM/cron", target))
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as t:
        info = tarfile.TarInfo("DICOM/cron")
        info.type, info.linkname = tarfile.SYMTYPE, target
        t.addfile(info)
    (tmp_path / "media.tar").write_bytes(tar.getvalue())
    for name in ("media.zip", "media.tar"):
        found = [(f.rule, f.level) for i in walk([tmp_path / name]) for f in i.findings]
        assert found == ([("archive.link-traversal", Level.HIGH)] if escapes else []), (name, found)
        # The link itself is not scanned as a member (it holds a path, not an object).
        assert [i.name for i in walk([tmp_path / name]) if not i.container] == []
