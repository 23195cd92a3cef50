"""Round 11 C: `pacsguard ids read` of a capture compressed in LZ4's legacy format (`lz4 -l`, magic
0x184C2102), streamed, bounded and named where cut as the other compressed formats are.  It was
refused ("legacy LZ4 data (lz4 -l), not supported: decompress it first").

The captures: a real DICOM capture (dumpcap on a veth pair, dcmtk's echoscu and storescu:
test_r10B1_vlan.captured_pair, namespaces r11c-*), compressed by Debian's `lz4 -l`; for a file of
more than one legacy block (8 MiB of capture each) 160 copies of it one after the other
(mergecap -a); for expansion, a pcap of 300 MB of zero frames.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from test_r10B1_vlan import DCMTK, PACSGUARD, PORT, SERVER, _ns, captured_pair, ids_read, ids_read_piped

LZ4_LEGACY = ["lz4", "-q", "-l", "-c", "-"]


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    assert not missing, f"peers missing: {missing} (apt-get install lz4 wireshark-common)"  # never skip


def _legacy(src: Path, dst: Path) -> Path:
    _need("lz4")
    with open(src, "rb") as f, open(dst, "wb") as g:
        subprocess.run(LZ4_LEGACY, stdin=f, stdout=g, check=True, timeout=60)
    assert dst.read_bytes()[:4] == b"\x02\x21\x4c\x18"  # the legacy magic, 0x184C2102 little-endian
    return dst


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A C-ECHO and a C-STORE of pydicom's CT_small.dcm, captured by dumpcap (pcapng)."""
    from pydicom.data import get_testdata_file

    out = tmp_path_factory.mktemp("r11c") / "plain.pcapng"
    with captured_pair(out, "r11c") as (cns, env):
        for cmd in ([DCMTK[1], "-aec", "PACS", SERVER, str(PORT)],
                    [DCMTK[2], "-aet", "MODALITY", "-aec", "PACS", SERVER, str(PORT),
                     str(get_testdata_file("CT_small.dcm"))]):
            subprocess.run(_ns(cns, *cmd), check=True, env=env, timeout=30, capture_output=True)
    return out


def _essentials(summary: dict[str, Any]) -> dict[str, Any]:
    cap, sen = summary["capture"], summary["sensor"]
    return {"packets": cap["packets"], "connections": cap["tcp_connections"], "complete": cap["complete"],
            "results": sen["results"], "alerts": sen["alerts_by_rule"], "commands": sen["commands"],
            "bytes": summary["bytes"]}


def test_a_legacy_lz4_capture_reads_as_the_plain_one(plain: Path, tmp_path: Path) -> None:
    code, _events, summary, _ = ids_read(plain, tmp_path)
    want = _essentials(summary)
    assert want["results"] == {"released": 2} and want["complete"] and code == 1, want  # ECHOSCU: an alert
    packed = _legacy(plain, tmp_path / "capture.pcapng.lz4")
    got_code, _events, got, err = ids_read(packed, tmp_path)
    assert got, err  # read, not refused
    assert (got_code, _essentials(got)) == (code, want), err
    # streamed from a pipe (tcpdump -w - | lz4 -l | ...)
    piped_code, _events, piped, err = ids_read_piped(packed, tmp_path)
    assert (piped_code, _essentials(piped)) == (code, want), err


def test_a_legacy_lz4_capture_cut_short_is_named_where_it_is_cut(plain: Path, tmp_path: Path) -> None:
    """Cut inside its second block: what the first block holds is read, exit 7, the summary naming
    the codec, the compressed bytes read (all of them) and the block the file ends in, as for the
    other codecs (test_r10P_compressed_cut.py); `lz4 -d` refuses the same file.  Cut inside its
    first block: nothing decompresses, refused (exit 2) in one line saying where it is cut."""
    _need("mergecap", "lz4")
    big = tmp_path / "big.pcapng"
    subprocess.run(["mergecap", "-a", "-w", str(big), *[str(plain)] * 160], check=True, timeout=60)
    assert big.stat().st_size > 8 << 20  # more than one legacy block
    packed = _legacy(big, tmp_path / "big.pcapng.lz4").read_bytes()
    whole = _essentials(ids_read(big, tmp_path)[2])["packets"]
    for kept, exit_code in ((len(packed) - 100, 7), (40, 2)):
        cut = tmp_path / f"cut{kept}.pcapng.lz4"
        cut.write_bytes(packed[:kept])
        assert subprocess.run(["lz4", "-d", "-c", str(cut)], capture_output=True, timeout=60).returncode != 0
        code, _events, summary, err = ids_read(cut, tmp_path)
        assert code == exit_code, (summary, err)
        if exit_code == 2:
            assert f"after {kept} compressed bytes" in err and "cut short" in err, err
            assert err.count("\n") == 1 and str(cut) in err and "LZ4 legacy block 1" in err, err
            continue
        cap = summary["capture"]
        assert not cap["complete"] and 0 < cap["packets"] < whole, cap
        what = cap["stopped"]["what"]
        assert what.startswith(f"LZ4 legacy data damaged after {kept:,} compressed bytes: "), what
        assert "ended inside LZ4 legacy block 2" in what and what.endswith("reading stopped"), what


_MEASURED = """
import json, resource, subprocess, sys
r = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=120)
print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(json.dumps(r.stdout.splitlines()[-1] if r.stdout.strip() else r.stderr))
"""


def test_a_legacy_lz4_capture_is_streamed_in_bounded_memory(tmp_path: Path) -> None:
    """300 MB of zero frames, which `lz4 -l` packs about 255 times (the LZ4 block format's limit:
    under the 256 times of the decompression-bomb bound, so read to its end, as an LZ4 frame file
    is): read whole with far less memory than the capture's size."""
    _need("lz4")
    packed = tmp_path / "zeros.pcap.lz4"
    frame = bytes(65000)
    chunk = (struct.pack("<IIII", 1_700_000_000, 0, len(frame), len(frame)) + frame) * 16
    with open(packed, "wb") as g:
        p = subprocess.Popen(LZ4_LEGACY, stdin=subprocess.PIPE, stdout=g)
        assert p.stdin is not None
        p.stdin.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for _ in range(chunks := 300_000_000 // len(chunk)):
            p.stdin.write(chunk)
        p.stdin.close()
        assert p.wait(timeout=120) == 0
    assert packed.stat().st_size < 1_300_000
    r = subprocess.run([sys.executable, "-c", _MEASURED, PACSGUARD, "ids", "read", "--format", "json", str(packed)],
                       capture_output=True, text=True, timeout=180, cwd=tmp_path)
    head, last = r.stdout.splitlines()[:2]
    code, max_rss_kib = map(int, head.split())
    assert code == 0, (json.loads(last), r.stderr[-2000:])
    summary = json.loads(json.loads(last))["summary"]
    assert summary["capture"]["complete"], summary
    assert summary["bytes"] == 24 + chunks * len(chunk) and summary["capture"]["packets"] == chunks * 16, summary
    assert max_rss_kib < 150_000, max_rss_kib  # the capture is 300 MB; a window and a block are a few MB
