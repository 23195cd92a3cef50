"""Round 10, helper P: a zstd or LZ4 capture cut short is named where it is cut, as a gzip one is
(`ids read`: exit 7, `capture.stopped.what` "<codec> data damaged after N compressed bytes: ...").
The zstandard package's reader ends silently where its input ends, inside a frame or not (the
`zstd` tool says "premature end"); the reader now follows the frames' layout (RFC 8878 3.1.1).

The captures: a real capture of a C-MOVE through the gateway (test_r10P_gateway_move_capture),
20 copies of it one after the other (mergecap -a), compressed by Debian's `zstd` and `lz4` tools
and cut with `head -c`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from test_r10B1_vlan import ids_read
from test_r10P_gateway_move_capture import capture_move

# compressing standard input to standard output, so that a cut in the middle falls after several
# blocks: lz4's of 64 KiB; zstd's window of 128 KiB, so that the 20 copies do not shrink to one
TOOLS = {"zstd": ["zstd", "-q", "-3", "--zstd=wlog=17", "-c"], "lz4": ["lz4", "-q", "-B4", "-c"]}
CODEC_NAMES = {"zstd": "zstd", "lz4": "LZ4"}


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    assert not missing, f"peers missing: {missing} (apt-get install zstd lz4 wireshark-common)"  # never skip


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _need("mergecap", "head")
    folder = tmp_path_factory.mktemp("r10pz")
    one = capture_move(folder)
    out = folder / "big.pcapng"
    subprocess.run(["mergecap", "-a", "-w", str(out), *[str(one)] * 20], check=True, timeout=60)
    return out


def _compressed_and_cut(big: Path, folder: Path, codec: str, keep: int | float | None) -> tuple[Path, int]:
    """``big`` compressed by the real tool, then its first ``keep`` bytes (``head -c``; a fraction:
    of the compressed size; None: the compressed size less 100); the path and the bytes kept."""
    _need(TOOLS[codec][0])
    whole = folder / f"whole.{codec}"
    with open(big, "rb") as f, open(whole, "wb") as g:
        subprocess.run([*TOOLS[codec], "-"], stdin=f, stdout=g, check=True, timeout=60)
    size = whole.stat().st_size
    kept = size - 100 if keep is None else int(size * keep) if isinstance(keep, float) else keep
    cut = folder / f"cut.pcapng.{codec}"
    with open(cut, "wb") as g:
        subprocess.run(["head", "-c", str(kept), str(whole)], stdout=g, check=True, timeout=60)
    # the tool itself refuses it
    assert subprocess.run([TOOLS[codec][0], "-d", "-c", str(cut)], capture_output=True, timeout=60).returncode != 0
    return cut, kept


@pytest.mark.parametrize("where", ["near the end", "in the middle"])
@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_a_compressed_capture_cut_short_is_named_where_it_is_cut(big: Path, tmp_path: Path, codec: str,
                                                                 where: str) -> None:
    whole_packets = ids_read(big, tmp_path)[2]["capture"]["packets"]
    cut, kept = _compressed_and_cut(big, tmp_path, codec, None if where == "near the end" else 0.5)
    code, _events, summary, err = ids_read(cut, tmp_path)
    cap = summary["capture"]
    assert code == 7 and not cap["complete"], (summary, err)
    assert 0 < cap["packets"] < whole_packets, cap
    what = cap["stopped"]["what"]
    # as gzip's: the codec, how many compressed bytes were read (all of them), that the data ended early
    assert what.startswith(f"{CODEC_NAMES[codec]} data damaged after {kept:,} compressed bytes: "), what
    assert "ended" in what and what.endswith("reading stopped"), what


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_a_compressed_capture_cut_in_its_first_block_says_it_is_cut_short_and_where(big: Path, tmp_path: Path,
                                                                                    codec: str) -> None:
    """Nothing decompresses: not read (exit 2), and the message says the file is cut short, after
    how many compressed bytes (before: zstd said "empty or cut short", LZ4 only its package's text)."""
    cut, kept = _compressed_and_cut(big, tmp_path, codec, 40)
    code, _events, _summary, err = ids_read(cut, tmp_path)
    assert code == 2, err
    assert f"after {kept} compressed bytes" in err and "cut short" in err, err
    assert err.count("\n") == 1 and str(cut) in err, err  # one line naming the file


def test_a_whole_zstd_capture_is_not_taken_for_a_cut_one(big: Path, tmp_path: Path) -> None:
    """Frames with and without a content checksum, one after the other (RFC 8878 3.1): read whole."""
    _need("zstd")
    data = big.read_bytes()
    parts = []
    for piece, flag in ((data[: len(data) // 3], "--check"), (data[len(data) // 3:], "--no-check")):
        parts.append(subprocess.run(["zstd", "-q", "-c", flag, "-"], input=piece, capture_output=True, check=True,
                                    timeout=60).stdout)
    joined = tmp_path / "joined.pcapng.zst"
    joined.write_bytes(b"".join(parts))
    code, _events, summary, err = ids_read(joined, tmp_path)
    assert code == ids_read(big, tmp_path)[0] and summary["capture"]["complete"], (summary, err)
    assert "stopped" not in summary["capture"] or not summary["capture"]["stopped"], summary["capture"]
