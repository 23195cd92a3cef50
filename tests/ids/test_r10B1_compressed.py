"""Round 10 B1: `pacsguard ids read` of zstd- and LZ4-compressed captures, recognised by their
magic number as gzip is (Wireshark reads ``.pcapng.zst`` and ``.pcapng.lz4``), streamed, bounded
against decompression bombs. They were refused ("zstd-compressed data (decompress it first)").

The captures: a real DICOM capture (dumpcap, dcmtk; :func:`test_r10B1_vlan.make_capture`)
compressed by Debian's ``zstd`` and ``lz4`` command-line tools (tshark 4.0 on this machine writes
neither)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from test_r10B1_vlan import ids_read, ids_read_piped, make_capture

# the command compressing standard input to standard output, per codec
TOOLS = {"zstd": ["zstd", "-q", "-3", "-c"], "lz4": ["lz4", "-q", "-c"]}


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    assert not missing, f"peers missing: {missing} (apt-get install zstd lz4)"  # fail loudly, never skip


def _compress(codec: str, src: Path, dst: Path) -> Path:
    _need(TOOLS[codec][0])
    with open(src, "rb") as f, open(dst, "wb") as g:
        subprocess.run([*TOOLS[codec], "-"], stdin=f, stdout=g, check=True, timeout=60)
    return dst


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_capture(tmp_path_factory.mktemp("r10b1z") / "plain.pcapng")


def _essentials(summary: dict[str, Any]) -> dict[str, Any]:
    cap, sen = summary["capture"], summary["sensor"]
    return {"packets": cap["packets"], "connections": cap["tcp_connections"], "complete": cap["complete"],
            "results": sen["results"], "alerts": sen["alerts_by_rule"], "commands": sen["commands"],
            "bytes": summary["bytes"]}


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_a_compressed_capture_reads_as_the_plain_one(plain: Path, tmp_path: Path, codec: str) -> None:
    code, _events, summary, _ = ids_read(plain, tmp_path)
    want = _essentials(summary)
    assert want["results"] == {"released": 2} and want["complete"], want
    packed = _compress(codec, plain, tmp_path / f"capture.pcapng.{codec}")
    assert packed.stat().st_size < plain.stat().st_size
    got_code, _events, got, err = ids_read(packed, tmp_path)
    assert (got_code, _essentials(got)) == (code, want), err
    # recognised by its magic, not its name; and streamed from a pipe (tcpdump -w - | zstd | ...)
    anon = tmp_path / "capture.bin"
    anon.write_bytes(packed.read_bytes())
    assert _essentials(ids_read(anon, tmp_path)[2]) == want
    piped_code, _events, piped, err = ids_read_piped(packed, tmp_path)
    assert (piped_code, _essentials(piped)) == (code, want), err


def test_a_zstd_file_of_several_frames_is_read_whole(plain: Path, tmp_path: Path) -> None:
    """RFC 8878 3.1: a zstd file may be several frames one after the other (pzstd, or cat a.zst
    b.zst): their decompressed bytes follow each other."""
    data = plain.read_bytes()
    cut = len(data) // 3
    parts = []
    for i, piece in enumerate((data[:cut], data[cut:])):
        raw = tmp_path / f"part{i}"
        raw.write_bytes(piece)
        parts.append(_compress("zstd", raw, tmp_path / f"part{i}.zst").read_bytes())
    joined = tmp_path / "joined.pcapng.zst"
    joined.write_bytes(b"".join(parts))
    assert _essentials(ids_read(joined, tmp_path)[2]) == _essentials(ids_read(plain, tmp_path)[2])


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_a_truncated_compressed_capture_is_read_up_to_the_cut(plain: Path, tmp_path: Path, codec: str) -> None:
    """A compressed capture cut short (copied while being written): what precedes the cut is read,
    exit 7. The capture is 20 copies of the real one (mergecap -a), so that the cut falls after
    several compressed blocks (zstd's are 128 KiB of data at most; lz4's 64 KiB with -B4)."""
    _need("mergecap")
    big = tmp_path / "big.pcapng"
    subprocess.run(["mergecap", "-a", "-w", str(big), *[str(plain)] * 20], check=True, timeout=60)
    with open(big, "rb") as f:
        packed = subprocess.run([*TOOLS[codec], *(["-B4"] if codec == "lz4" else []), "-"], stdin=f,
                                capture_output=True, check=True, timeout=60).stdout
    cut = tmp_path / f"cut.pcapng.{codec}"
    cut.write_bytes(packed[:-100])  # inside its last blocks (20 copies compress to a few large zstd blocks)
    code, _events, summary, err = ids_read(cut, tmp_path)
    cap = summary["capture"]
    whole = _essentials(ids_read(big, tmp_path)[2])["packets"]
    # (zstd hands out only what its decoder completed before the cut: here a first block of 128 KiB,
    # as `zstd -d` does, which says "premature end")
    assert code == 7 and not cap["complete"] and 50 < cap["packets"] < whole, (summary, err)
    # the cut is said, where it is (test_r10P_compressed_cut.py)
    assert f"{'LZ4' if codec == 'lz4' else 'zstd'} data damaged" in cap["stopped"]["what"], cap
    # cut inside the first block: nothing decompresses
    first = tmp_path / f"first.pcapng.{codec}"
    first.write_bytes(packed[:40])
    code, _events, _summary, err = ids_read(first, tmp_path)
    assert code == 2 and "cannot be decompressed" in err or "empty or cut short" in err, err


@pytest.mark.parametrize("codec", ["zstd"])
def test_a_decompression_bomb_stops(tmp_path: Path, codec: str) -> None:
    """A pcap of 200 MB of zero frames, compressed by the real tool (zstd reaches thousands to one
    on it): reading stops once it has expanded more than 256 times past 64 MB. (LZ4 cannot expand
    more than about 255 times, its format's limit: such a file is read, streamed, to its end.)"""
    _need(TOOLS[codec][0])
    bomb = tmp_path / f"bomb.pcap.{codec}"
    frame = bytes(65000)
    chunk = (struct.pack("<IIII", 1_700_000_000, 0, len(frame), len(frame)) + frame) * 16
    with open(bomb, "wb") as g:
        p = subprocess.Popen([*TOOLS[codec], "-"], stdin=subprocess.PIPE, stdout=g)
        assert p.stdin is not None
        p.stdin.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for _ in range(200_000_000 // len(chunk)):
            p.stdin.write(chunk)
        p.stdin.close()
        assert p.wait(timeout=120) == 0
    assert bomb.stat().st_size < 1_500_000
    code, _events, summary, err = ids_read(bomb, tmp_path)
    cap = summary["capture"]
    assert code == 7 and f"a {codec} bomb" in cap["stopped"]["what"], (cap, err)
    assert summary["bytes"] < 100_000_000


@pytest.mark.parametrize(("codec", "module"), [("zstd", "zstandard"), ("lz4", "lz4.frame")])
def test_without_the_codec_package_the_error_says_what_to_install(plain: Path, tmp_path: Path, codec: str,
                                                                  module: str) -> None:
    packed = _compress(codec, plain, tmp_path / f"capture.pcapng.{codec}")
    package = module.split(".")[0]
    # the package made unimportable in a child interpreter, as on a machine without it
    script = (f"import sys; sys.modules[{module!r}] = None\n"
              "from pacsguard.cli.main import main\n"
              f"sys.argv = ['pacsguard', 'ids', 'read', {str(packed)!r}]\n"
              "main()\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"pip install {package}" in r.stderr and "not installed" in r.stderr, r.stderr
    assert str(packed.name) in r.stderr



def test_a_pzstd_file_is_read(plain: Path, tmp_path: Path) -> None:
    """pzstd (Debian's zstd package) starts its files with a skippable frame (RFC 8878 3.1.2,
    magic 0x184D2A50): recognised as zstd, the frames after it read whole."""
    _need("pzstd", "mergecap")
    big = tmp_path / "big.pcapng"
    subprocess.run(["mergecap", "-a", "-w", str(big), *[str(plain)] * 20], check=True, timeout=60)
    packed = tmp_path / "big.pcapng.zst"
    subprocess.run(["pzstd", "-q", "-p", "2", "-f", str(big), "-o", str(packed)], check=True, timeout=60)
    assert packed.read_bytes()[:4] == b"\x50\x2a\x4d\x18"
    assert _essentials(ids_read(packed, tmp_path)[2]) == _essentials(ids_read(big, tmp_path)[2])
