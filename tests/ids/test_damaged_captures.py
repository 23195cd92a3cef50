"""`pacsguard ids read` on captures the tests damage (issue #16, section 3): never a traceback, and
a capture that could not be read completely exits 7, not 0 ("no alerts"), with a summary that says
what was lost: frames read, where reading stopped, why."""

from __future__ import annotations

import json
import struct

import pytest
from capture_craft import ng_epb, ng_idb, ng_shb, pcap_bytes
from test_sensor import _cli, full_association

from pacsguard.cli.common import EXIT_INCOMPLETE
from pacsguard.events.model import time_from_us

FRAMES = full_association(n_store=2).frames()


def _summary(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])["summary"]


def test_an_intact_capture_still_exits_0(tmp_path) -> None:
    path = tmp_path / "intact.pcap"
    path.write_bytes(pcap_bytes(FRAMES))
    r = _cli("read", str(path), "--format", "json")
    assert r.exit_code == 0, r.output
    assert _summary(r.output)["capture"]["complete"] is True


def test_a_record_length_damaged_after_3_frames_exits_3(tmp_path) -> None:
    data = bytearray(pcap_bytes(FRAMES))
    off = 24
    for _ in range(3):
        off += 16 + struct.unpack_from("<I", data, off + 8)[0]
    struct.pack_into("<I", data, off + 8, 0x7FFFFFF0)  # the 4th record claims 2 GB
    path = tmp_path / "damaged.pcap"
    path.write_bytes(bytes(data))
    r = _cli("read", str(path), "--format", "json")
    assert r.exit_code == EXIT_INCOMPLETE, r.output
    capture = _summary(r.output)["capture"]
    assert capture["complete"] is False and capture["packets"] == 3
    # the 4th frame, as Wireshark numbers it, and its record's offset
    assert capture["stopped"] == {"offset": off, "what": capture["stopped"]["what"], "frame": 4, "after_frame": -1}
    assert "reading stopped" in capture["stopped"]["what"]
    assert capture["lost"].startswith(f"3 frames read; reading stopped at frame 4, offset {off:,} of {len(data):,} "
                                      "bytes")
    table = _cli("read", str(path))
    assert table.exit_code == EXIT_INCOMPLETE
    assert "read incompletely" in table.output and "3 frames read" in table.output


def test_a_link_type_that_cannot_be_read_exits_3(tmp_path) -> None:
    path = tmp_path / "linktype.pcap"
    path.write_bytes(pcap_bytes(FRAMES, linktype=147))  # LINKTYPE_USER0: private, unknown here
    r = _cli("read", str(path), "--format", "json")
    assert r.exit_code == EXIT_INCOMPLETE, r.output
    lost = _summary(r.output)["capture"]["lost"]
    assert f"{len(FRAMES)} frames of a link type that cannot be read (linktype-147)" in lost


def test_a_pcap_header_too_short_to_hold_its_link_type_exits_3(tmp_path) -> None:
    path = tmp_path / "short.pcap"
    path.write_bytes(pcap_bytes([])[:20])
    r = _cli("read", str(path), "--format", "json")
    assert r.exit_code == EXIT_INCOMPLETE, r.output
    assert "truncated pcap file header" in _summary(r.output)["capture"]["lost"]


@pytest.mark.parametrize("ticks", [2**64 - 1, 2**63, 300_000_000_000_000_000])
def test_a_timestamp_out_of_range_skips_the_frame_and_exits_3(tmp_path, ticks: int) -> None:
    with pytest.raises(OverflowError):
        time_from_us(ticks)  # what crashed `ids read` before
    blocks = [ng_shb(), ng_idb("<", 1)]
    blocks += [ng_epb("<", 0, ts, frame) for ts, frame in FRAMES[:4]]
    blocks.append(ng_epb("<", 0, ticks, FRAMES[4][1]))
    blocks += [ng_epb("<", 0, ts, frame) for ts, frame in FRAMES[5:]]
    path = tmp_path / "future.pcapng"
    path.write_bytes(b"".join(blocks))
    r = _cli("read", str(path), "--format", "json")
    assert r.exit_code == EXIT_INCOMPLETE, r.output
    capture = _summary(r.output)["capture"]
    assert capture["packets"] == len(FRAMES) - 1
    assert any("out of range; frame skipped" in p["what"] for p in capture["problems"])
    assert "1 damaged frames or blocks skipped" in capture["lost"]


def test_problems_read_past_do_not_make_a_capture_incomplete(tmp_path) -> None:
    """An out-of-range if_tsresol falls back to microseconds: a problem, no frame lost."""
    blocks = [ng_shb(), ng_idb("<", 1, tsresol=0x7F)]
    blocks += [ng_epb("<", 0, ts, frame) for ts, frame in FRAMES]
    path = tmp_path / "tsresol.pcapng"
    path.write_bytes(b"".join(blocks))
    r = _cli("read", str(path), "--format", "json")
    assert r.exit_code == 0, r.output
    capture = _summary(r.output)["capture"]
    assert capture["problem_count"] == 1 and capture["complete"] is True
