"""Outside re-probe of the IDS:

- IPv6 fragments whose fragmentable part starts with extension headers (RFC 8200 4.1, 4.5: a
  Destination Options header, routing then destination options, AH) are reassembled and their TCP
  read (they were dropped as ``ipv6-fragmented-proto-60`` and `ids read` missed the C-FIND);
- a data set whose walk stopped at a limit (nested 200 deep, 50,001 empty items, a wanted value over
  64 KiB, an identifying element twice) raises the built-in alert ``dicom-dataset-walk-stopped``
  naming the walk's anomaly, over captures and inline (tests/gateway/test_reprobe_services.py).
"""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from capture_craft import Flow, eth_frames, pcap_bytes  # noqa: E402
from test_capture_evasion import REQ, RSP, WILDCARD, _ids_read, frags_v6, read  # noqa: E402
from test_sensor import FIND, ac, message, rq, rsp  # noqa: E402

from pacsguard.cli.common import EXIT_FINDINGS  # noqa: E402
from pacsguard.dicom import dimse as D  # noqa: E402
from pacsguard.dicom import pdu as P  # noqa: E402

WALK = "ids.alert.dicom-dataset-walk-stopped"
DSTOPTS = 60
ROUTING = 43


def ext(nh_self: int, nh_next: int, units: int = 0) -> bytes:
    """An extension header of *units* + 1 8-octet units (RFC 8200 4.8): PadN fills it (4.2); a routing
    header's type 4 with Segments Left 0 is ignored by the receiver (4.4)."""
    if units < 0:  # a header announcing 255 units (2 KiB) in 8 bytes
        return bytes([nh_next, 255, 1, 4]) + bytes(4)
    body = 8 * (units + 1) - 2
    if nh_self == ROUTING:
        return bytes([nh_next, units, 4, 0]) + bytes(body - 2)
    return bytes([nh_next, units, 1, body - 2]) + bytes(body - 2)


def frags_v6_ext(packet: bytes, size: int, ident: int, chain: list[tuple[int, int]]) -> list[bytes]:
    """RFC 8200 4.5 fragments of an IPv6/TCP packet whose fragmentable part starts with the extension
    headers *chain* ((type, units) each), the last one followed by TCP."""
    headers = b"".join(ext(t, chain[i + 1][0] if i + 1 < len(chain) else 6, u) for i, (t, u) in enumerate(chain))
    return frags_v6(packet, size, ident, headers, chain[0][0] if chain else 6)


def _conversation(chain: list[tuple[int, int]]) -> list[tuple[int, bytes]]:
    f = Flow(client="fd00::3", server="fd00::7")
    pkts = f.handshake()
    for i, (ts, p) in enumerate(f.send(True, REQ, 1000)):
        pkts += [(ts + k, x) for k, x in enumerate(frags_v6_ext(p, 72, 7 + i, chain)[::-1])]
    return pkts + f.send(False, RSP) + f.fin()


CHAINS = [[(DSTOPTS, 0)], [(ROUTING, 0), (DSTOPTS, 0)], [(DSTOPTS, 3)], [(DSTOPTS, 0), (DSTOPTS, 0)]]


@pytest.mark.parametrize("chain", CHAINS, ids=["dstopts", "routing-dstopts", "dstopts-32", "dstopts-twice"])
def test_ipv6_fragments_with_extension_headers_are_reassembled_to_their_tcp(chain: list[tuple[int, int]]) -> None:
    rec, reasm = read(_conversation(chain))
    st = reasm.stats
    assert rec.data(0, True) == REQ and rec.data(0, False) == RSP and rec.closed == {0: "fin"}
    assert st.ip_reassembled == 4 and st.non_tcp == {} and st.gaps == 0


@pytest.mark.parametrize(("chain", "counted"), [([(0, 0)], "ipv6-fragmented-proto-0"),
                                                ([(DSTOPTS, -1)], "truncated-ipv6")],
                         ids=["hop-by-hop-not-first", "runs-past-the-end"])
def test_what_a_linux_receiver_drops_is_counted_not_read(chain: list[tuple[int, int]], counted: str) -> None:
    """Hop-by-hop options only follow the IPv6 header (RFC 8200 4.3; Linux: unknown next header), and
    an extension header longer than the datagram holds no TCP."""
    rec, reasm = read(_conversation(chain))
    assert reasm.stats.non_tcp == {counted: 4} and reasm.stats.ip_reassembled == 0
    assert rec.data(0, True) != REQ


def _find(identifier: bytes, *, v6_dstopts: bool = False) -> bytes:
    f = Flow(client="fd00::3", server="fd00::7") if v6_dstopts else Flow()
    pkts = f.handshake() + f.send(True, rq()) + f.send(False, ac())
    req = D.CommandSet(command_field=D.C_FIND_RQ, message_id=1, affected_sop_class_uid=FIND, priority=0,
                       command_data_set_type=1)
    data = message(5, req, identifier)
    for ts, p in f.send(True, data):
        pkts += [(ts, x) for x in frags_v6_ext(p, 64, 99, [(DSTOPTS, 0)])] if v6_dstopts else [(ts, p)]
    pkts += f.send(False, rsp(5, req))
    pkts += f.send(True, P.encode_release_rq()) + f.send(False, P.encode_release_rp()) + f.fin()
    return pcap_bytes(eth_frames(pkts))


def el(tag: int, vr: bytes, value: bytes) -> bytes:
    """Explicit VR Little Endian (PS3.5 7.1.2), the syntax the contexts of test_sensor.ac accept."""
    value += b" " * (len(value) % 2)
    if vr in (b"SQ", b"OB", b"UN"):
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


SEQ = struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF)
ITEM = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
ITEM_END, SEQ_END = struct.pack("<HHI", 0xFFFE, 0xE00D, 0), struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
QUERY = el(0x00080052, b"CS", b"PATIENT") + el(0x00100010, b"PN", b"*") + el(0x00100020, b"LO", b"")
EMPTY_ITEM = ITEM + ITEM_END  # two headers (PS3.5 7.5.2)


def test_a_wildcard_find_over_ipv6_fragments_with_destination_options_is_seen(tmp_path: Path) -> None:
    code, events, summary = _ids_read(tmp_path, "v6.pcap", _find(QUERY, v6_dstopts=True))
    assert code == EXIT_FINDINGS and WILDCARD in {e["kind"] for e in events}, events
    assert summary["capture"]["ip_reassembled"] > 0 and summary["capture"]["complete"] is True


WALKS = [
    ("nesting-too-deep", (SEQ + ITEM) * 200 + (ITEM_END + SEQ_END) * 200 + QUERY),
    ("too-many-elements", SEQ + EMPTY_ITEM * 50_001 + SEQ_END + QUERY),
    ("value-too-long", el(0x00080052, b"CS", b"PATIENT") + el(0x00100010, b"UN", b"*" + b"X" * 70_000)
     + el(0x00100020, b"LO", b"")),
    ("repeated-element", el(0x00080052, b"CS", b"PATIENT") + el(0x00080052, b"CS", b"STUDY") + QUERY[16:]),
]


@pytest.mark.parametrize(("anomaly", "identifier"), WALKS, ids=[w[0] for w in WALKS])
def test_a_find_identifier_whose_walk_stops_at_a_limit_is_an_alert(tmp_path: Path, anomaly: str,
                                                                   identifier: bytes) -> None:
    """The outside tester's evasion: a wildcard C-FIND behind 200 nested sequences or 50,001 empty
    items was read by the PACS and left `ids read` clean (exit 0)."""
    code, events, _ = _ids_read(tmp_path, f"{anomaly}.pcap", _find(identifier))
    (alert,) = [e for e in events if e["kind"] == WALK]
    assert code == EXIT_FINDINGS and alert["severity"] == "warning"
    assert f"anomaly={anomaly}" in alert["message"] and alert["details"]["observation"]["anomaly"] == anomaly


def test_a_plain_find_does_not_fire_it(tmp_path: Path) -> None:
    code, events, _ = _ids_read(tmp_path, "plain.pcap", _find(QUERY))
    assert code == EXIT_FINDINGS and WALK not in {e["kind"] for e in events} and WILDCARD in {e["kind"] for e in events}
