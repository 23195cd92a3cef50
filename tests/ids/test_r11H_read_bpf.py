"""Round 11 H: `pacsguard ids read --bpf EXPR CAPTURE` reads only the frames tcpdump's filter keeps.

`ids read` had no filter, while `tcpdump -r`, Suricata `-r` with a BPF and Zeek `-r -f` all let
an analyst restrict a capture to some hosts or ports. The filter is compiled by libpcap for the
file's link type (per interface link type in a pcapng) and matched by libpcap's
pcap_offline_filter, so the oracle is tcpdump itself: the events of `ids read --bpf EXPR FILE`
must be those of `tcpdump -r FILE -w OUT EXPR; ids read OUT`, and as many frames must pass.

The capture: dcmtk's echoscu (its default AE title ECHOSCU fires an alert) from 10.102.0.1, then
storescu of pydicom's CT_small.dcm from 10.102.0.3, to storescp on 10.102.0.2, recorded by
dumpcap on the client's veth (namespaces r11h-*, made and deleted by test_r10B1_vlan's
captured_pair). Derived from it with tcpdump, editcap, mergecap and gzip: VLAN-tagged copies
(test_r10B1_vlan.tag), a pcapng with an Ethernet and a raw-IP interface, a snap-length cut copy,
and a gzip'd one (streamed, not mapped).
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from test_r10B1_vlan import DCMTK, PORT, SERVER, _ns, _run, captured_pair, ids_read, require, tag

OTHER = "10.102.0.3"  # the storing client's address (the echoing one is test_r10B1_vlan.CLIENT)


def _make(out: Path) -> Path:
    from pydicom.data import get_testdata_file

    ct = str(get_testdata_file("CT_small.dcm"))
    with captured_pair(out, "r11h") as (cns, env):
        subprocess.run(_ns(cns, DCMTK[1], "-aec", "PACS", SERVER, str(PORT)), check=True, env=env, timeout=30,
                       capture_output=True)
        # the next association from another address of the same host
        _run(*_ns(cns, "ip", "addr", "add", f"{OTHER}/24", "dev", "c0"))
        _run(*_ns(cns, "ip", "route", "replace", "10.102.0.0/24", "dev", "c0", "src", OTHER))
        subprocess.run(_ns(cns, DCMTK[2], "-aet", "MODALITY", "-aec", "PACS", SERVER, str(PORT), ct), check=True,
                       env=env, timeout=30, capture_output=True)
    return out


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require("tcpdump", "editcap", "mergecap")
    return _make(tmp_path_factory.mktemp("r11h") / "plain.pcapng")


def tcpdump(src: Path, dst: Path, expr: str) -> Path:
    """``tcpdump -r src -w dst expr``: the frames libpcap's filter keeps, as a pcap file."""
    subprocess.run(["tcpdump", "-r", str(src), "-w", str(dst), expr], check=True, capture_output=True, timeout=30)
    return dst


def read(source: Any, bpf: str | None = None) -> tuple[list[dict[str, Any]], Any]:
    """Events (JSON, without their random ids) and capture stats of ``passive.read`` as `ids read`
    runs it (built-in rules, capture clock), through the filter ``bpf`` when one is given."""
    from pacsguard.ids.capture.offline_filter import BpfFilter
    from pacsguard.ids.passive import build_engine
    from pacsguard.ids.passive import read as passive_read
    from pacsguard.ids.sensor import CaptureClock

    clock = CaptureClock()
    got: list[Any] = []
    stats = passive_read(source, engine=build_engine(clock=clock), publish=got.append, clock=clock,
                         frame_filter=BpfFilter(bpf) if bpf else None)
    events = [json.loads(e.to_json()) for e in got]
    for e in events:
        e.pop("id")
    return events, stats.capture


def same_as_tcpdump(capture: Path, expr: str, tmp: Path) -> list[dict[str, Any]]:
    """Asserts `--bpf expr` on ``capture`` gives tcpdump's frames and their events; returns them."""
    from pacsguard.ids.capture.offline_filter import EXCLUDED

    want, want_cap = read(tcpdump(capture, tmp / "tcpdump.pcap", expr))
    got, cap = read(capture, expr)
    assert cap.packets - cap.non_tcp.get(EXCLUDED, 0) == want_cap.packets, (expr, cap.non_tcp, want_cap.packets)
    assert got == want, expr
    return got


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["kind"] for e in events]


TOOL_AE = "ids.alert.dicom-tool-default-ae-title"


def test_ids_read_bpf_keeps_what_tcpdump_keeps(plain: Path, tmp_path: Path) -> None:
    """The command line: `--bpf 'host 10.102.0.3'` keeps the C-STORE association only, as tcpdump
    does; the C-ECHO's alert is gone (exit 0, not 1)."""
    ref = tcpdump(plain, tmp_path / "store.pcap", f"host {OTHER}")
    code, events, summary, err = ids_read(plain, tmp_path, "--bpf", f"host {OTHER}")
    want_code, want, want_summary, _ = ids_read(ref, tmp_path)
    strip = [{k: v for k, v in e.items() if k != "id"} for e in events]
    assert strip == [{k: v for k, v in e.items() if k != "id"} for e in want], err
    assert code == want_code == 0 and "dicom.dimse.c-store" in kinds(events) and TOOL_AE not in kinds(events)
    # the frames the filter dropped are counted, the others read
    dropped = summary["capture"]["packets"] - want_summary["capture"]["packets"]
    assert dropped > 10 and summary["capture"]["non_tcp"] == {"excluded-by-bpf": dropped}, summary["capture"]
    # unfiltered, both associations and the alert
    code, everything, _summary, _ = ids_read(plain, tmp_path)
    assert code == 1 and TOOL_AE in kinds(everything) and len(everything) > len(events)


def test_a_filter_libpcap_refuses_is_a_usage_error(plain: Path, tmp_path: Path) -> None:
    code, events, _summary, err = ids_read(plain, tmp_path, "--bpf", "tcp prt 104")
    assert code == 2 and not events, err
    assert "--bpf 'tcp prt 104': can't parse filter expression: syntax error" in " ".join(err.split()), err


def test_vlan_terms_on_tagged_frames_of_a_file(plain: Path, tmp_path: Path) -> None:
    """A trunk's capture: the untagged associations and the C-ECHO again on VLAN 20. As in
    tcpdump, `vlan 20` keeps the tagged frames, `port 11112` only the untagged ones (without a
    `vlan` term the offsets are those of an untagged frame) and `vlan and port 11112` the tagged."""
    echo = tcpdump(plain, tmp_path / "echo.pcap", f"not host {OTHER}")
    subprocess.run(["editcap", "-F", "pcapng", str(echo), str(tmp_path / "echo.pcapng")], check=True, timeout=30)
    trunk = tmp_path / "trunk.pcap"  # pcap: libpcap refuses a pcapng whose interfaces' snap lengths differ
    subprocess.run(["mergecap", "-F", "pcap", "-w", str(trunk), str(plain),
                    str(tag(tmp_path / "echo.pcapng", tmp_path / "v20.pcap", (20,)))], check=True, timeout=30)
    tagged = same_as_tcpdump(trunk, "vlan 20", tmp_path)
    assert TOOL_AE in kinds(tagged) and all(e["details"].get("vlan") == [20] for e in tagged), tagged
    untagged = same_as_tcpdump(trunk, f"port {PORT}", tmp_path)
    assert "dicom.dimse.c-store" in kinds(untagged) and all("vlan" not in e["details"] for e in untagged)
    assert same_as_tcpdump(trunk, f"vlan and port {PORT}", tmp_path) == tagged
    both = same_as_tcpdump(trunk, f"port {PORT} or (vlan and port {PORT})", tmp_path)
    assert kinds(both).count(TOOL_AE) == 2, kinds(both)


def test_two_link_types_in_one_pcapng(plain: Path, tmp_path: Path) -> None:
    """A pcapng with an Ethernet interface (the C-STORE) and a raw-IP one (the C-ECHO, its
    Ethernet headers cut off by editcap): each interface's frames are matched with a program
    compiled for its link type. libpcap refuses such a file, so each part is filtered by tcpdump
    on its own and the results merged."""
    store = tcpdump(plain, tmp_path / "store.pcap", f"host {OTHER}")
    echo = tcpdump(plain, tmp_path / "echo.pcap", f"not host {OTHER}")
    raw = tmp_path / "echo-raw.pcap"
    subprocess.run(["editcap", "-C", "14", "-T", "rawip", str(echo), str(raw)], check=True, timeout=30)
    both = tmp_path / "both.pcapng"
    subprocess.run(["mergecap", "-w", str(both), str(store), str(raw)], check=True, timeout=30)
    shown = subprocess.run(["tshark", "-r", str(both), "-T", "fields", "-e", "frame.encap_type"], check=True,
                           capture_output=True, text=True, timeout=30).stdout.split()
    assert set(shown) == {"1", "7"}, set(shown)  # Ethernet, raw IP
    for expr, kind in ((f"host {OTHER} or host 10.102.0.1", "dicom.dimse.c-echo"), ("tcp[13] & 8 != 0", TOOL_AE)):
        merged = tmp_path / "want.pcapng"
        subprocess.run(["mergecap", "-w", str(merged), str(tcpdump(store, tmp_path / "s.pcap", expr)),
                        str(tcpdump(raw, tmp_path / "r.pcap", expr))], check=True, timeout=30)
        want, _cap = read(merged)
        got, _cap = read(both, expr)
        assert got == want and kind in kinds(got), expr
    # a filter that one of the link types cannot have is refused, naming that link type
    from pacsguard.ids.capture import CaptureError

    with pytest.raises(CaptureError, match=r"ethernet addresses supported only on .*link type RAW\)$"):
        read(both, "ether host 00:11:22:33:44:55")


def test_len_is_the_original_length_and_streams_are_filtered_too(plain: Path, tmp_path: Path) -> None:
    """`greater 1000` tests the frame's original length, not what the snap length kept (editcap
    -s 96: no frame holds 1000 bytes); and a gzip'd capture, read as a stream, is filtered alike."""
    cut = tmp_path / "cut.pcapng"
    subprocess.run(["editcap", "-s", "96", str(plain), str(cut)], check=True, timeout=30)
    same_as_tcpdump(cut, "greater 1000", tmp_path)
    _events, cap = read(cut, "greater 1000")
    assert 0 < cap.non_tcp["excluded-by-bpf"] < cap.packets - 10, cap.non_tcp
    packed = tmp_path / "plain.pcapng.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    streamed = read(packed, f"host {OTHER}")[0]
    assert streamed == read(tcpdump(plain, tmp_path / "s.pcap", f"host {OTHER}"))[0] and streamed


def test_without_a_filter_no_frame_goes_through_one(plain: Path) -> None:
    """No `--bpf`: the scan gets the reader's own handler function, nothing in front of it."""
    from pacsguard.ids.capture.reader import CaptureFile

    def handler_for(lt: int) -> Any:
        return print

    with CaptureFile(plain) as cf:
        assert cf.frame_filter is None and cf._filtered(handler_for) is handler_for


def test_a_raw_ip_link_compiles_for_ids_live_as_for_a_file() -> None:
    """`ids live` on a raw-IP interface (a tun device: LINKTYPE_RAW 101) with --bpf was refused:
    pcap_open_dead takes libpcap's DLT_RAW (12 on Linux), not the file's 101. The live program is
    now the one libpcap compiles for a raw-IP file."""
    from pacsguard.ids.capture.decode import LINKTYPE_RAW
    from pacsguard.ids.capture.offline_filter import BpfFilter
    from pacsguard.ids.capture.reader import compile_bpf

    expr = "tcp port 104"
    from_file = [(i.code, i.jt, i.jf, i.k) for i in BpfFilter(expr).program(LINKTYPE_RAW, 262144).insns]
    assert compile_bpf(expr, LINKTYPE_RAW) == from_file and from_file
