"""Round 10 B1: VLANs in the passive sensor, over a real DICOM capture on a VLAN.

* Events of a connection seen with 802.1Q/802.1ad tags name the VLAN (``details.vlan``, and the
  message, which ``ids read``'s table shows): two alerts from two VLANs with the same addresses
  looked identical.
* ``ids.vlan_tracking: false`` (Suricata's ``vlan.use-for-tracking``): a connection whose one
  direction is tagged and the other not (a SPAN port or a trunk tagging one way) is one
  connection, decoded whole; with tracking (the default) it is two halves, nothing decoded.

The capture: two network namespaces joined by a veth pair; dcmtk's storescp in one, echoscu and
storescu in the other, dumpcap on the client's veth; the namespaces are named r10b1-* and deleted
afterwards. This kernel has no 802.1Q module (no VLAN subinterface can be made), so the tags a
trunk port adds are inserted into the captured Ethernet frames (IEEE 802.1Q 9: TPID 0x8100 or,
for QinQ's outer tag, 0x88A8, then the tag control whose low 12 bits are the VLAN id), as a
switch would, and the result is checked with tshark."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import dpkt
import pytest

from peers.dumpcap import announced

PACSGUARD = str(Path(sys.executable).with_name("pacsguard"))
CLIENT, SERVER, PORT, VID = "10.102.0.1", "10.102.0.2", 11112, 100
DCMTK = ["/usr/bin/storescp", "/usr/bin/echoscu", "/usr/bin/storescu"]


def require(*tools: str) -> None:
    """Fail loudly (never skip) when a peer or root is missing."""
    if os.geteuid() != 0:
        pytest.fail("needs root (network namespaces)")
    missing = [t for t in tools if (shutil.which(t) if "/" not in t else (t if os.access(t, os.X_OK) else None))
               is None]
    assert not missing, f"peers missing: {missing} (apt-get install iproute2 tshark dcmtk zstd lz4)"


def _run(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True, timeout=30)


def _ns(name: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", name, *args]


def _stop(proc: subprocess.Popen[Any], sig: int = signal.SIGINT) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def _wait_listening(ns: str, port: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        out = subprocess.run(_ns(ns, "ss", "-Hltn", f"sport = :{port}"), capture_output=True, text=True,
                             timeout=10).stdout
        if out.strip():
            return
        time.sleep(0.1)
    pytest.fail(f"storescp did not listen on {port} in {ns}")


@contextmanager
def captured_pair(out: Path, prefix: str) -> Iterator[tuple[str, dict[str, str]]]:
    """A client and a server namespace (``prefix``-c/s) joined by a veth pair, storescp (PACS,
    writing into ``out``'s folder) on the server, and dumpcap writing ``out`` (pcapng) on the
    client's veth, untagged Ethernet frames of at most 1,514 bytes as a switch port mirrors them:
    yields the client's namespace and the environment its dcmtk tools run with; the capture is
    complete once the block has ended."""
    require("ip", "ss", "ethtool", "dumpcap", "tshark", *DCMTK)
    name = secrets.token_hex(3)
    cns, sns = f"{prefix}-c{name}", f"{prefix}-s{name}"
    env = {**os.environ, "TCP_NODELAY": "1"}
    with ExitStack() as stack:
        for ns in (cns, sns):
            _run("ip", "netns", "add", ns)
            stack.callback(subprocess.run, ["ip", "netns", "del", ns], check=False, timeout=30)
        _run("ip", "link", "add", "c0", "netns", cns, "type", "veth", "peer", "name", "s0", "netns", sns)
        for ns, dev, addr in ((cns, "c0", CLIENT), (sns, "s0", SERVER)):
            _run(*_ns(ns, "ip", "link", "set", "lo", "up"))
            _run(*_ns(ns, "ip", "addr", "add", f"{addr}/24", "dev", dev))
            _run(*_ns(ns, "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off"))
            _run(*_ns(ns, "ip", "link", "set", dev, "up"))
        store = out.parent / "received"
        store.mkdir(exist_ok=True)
        scp = subprocess.Popen(_ns(sns, DCMTK[0], "-aet", "PACS", "-od", str(store), str(PORT)), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stack.callback(_stop, scp, signal.SIGTERM)
        _wait_listening(sns, PORT)
        dc = subprocess.Popen(_ns(cns, "dumpcap", "-i", "c0", "-f", f"tcp port {PORT}", "-w", str(out)),
                              stderr=subprocess.PIPE, text=True)
        stack.callback(_stop, dc)
        announced(dc)
        yield cns, env
        time.sleep(0.5)
        _stop(dc)


def make_capture(out: Path) -> Path:
    """A C-ECHO from ECHOSCU, then a C-STORE of pydicom's CT_small.dcm from MODALITY, to PACS,
    captured by dumpcap as pcapng on the client's veth (Ethernet frames, untagged)."""
    from pydicom.data import get_testdata_file

    ct = str(get_testdata_file("CT_small.dcm"))
    with captured_pair(out, "r10b1") as (cns, env):
        # echoscu with its default calling AE title, ECHOSCU: the built-in rule for tools' default
        # AE titles fires, so the capture holds an alert as well as two associations
        for cmd in ([DCMTK[1], "-aec", "PACS", SERVER, str(PORT)],
                    [DCMTK[2], "-aet", "MODALITY", "-aec", "PACS", SERVER, str(PORT), ct]):
            subprocess.run(_ns(cns, *cmd), check=True, env=env, timeout=30, capture_output=True)
    frames = subprocess.run(["tshark", "-r", str(out)], capture_output=True, text=True, timeout=30,
                            check=True).stdout.splitlines()
    assert len(frames) > 20 and sum("C-STORE" in f or "P-DATA" in f for f in frames), frames
    return out


def tag(src: Path, dst: Path, tags: tuple[int, ...], *, server_untagged: bool = False) -> Path:
    """``src``'s frames as a pcap, each with the VLAN tags ``tags`` (outer first: 802.1ad, the
    last 802.1Q), but the server's frames left untagged when ``server_untagged`` (a SPAN port or a
    trunk that tags one direction only)."""
    server = socket.inet_aton(SERVER)
    header = b"".join(struct.pack("!HH", 0x88A8 if i < len(tags) - 1 else 0x8100, vid) for i, vid in enumerate(tags))
    with open(src, "rb") as f, open(dst, "wb") as g:
        w = dpkt.pcap.Writer(g, linktype=dpkt.pcap.DLT_EN10MB, nano=True)
        for ts, frame in dpkt.pcapng.Reader(f):
            assert struct.unpack_from("!H", frame, 12)[0] == 0x0800, frame[:20].hex()
            if not (server_untagged and frame[14 + 12 : 14 + 16] == server):
                frame = frame[:12] + header + frame[12:]
            w.writepkt(frame, ts)
    # tshark names an 802.1ad tag ieee8021ad.id and an 802.1Q one vlan.id
    ids = subprocess.run(["tshark", "-r", str(dst), "-T", "fields", "-E", "separator=;", "-e", "ip.src",
                          "-e", "ieee8021ad.id", "-e", "vlan.id"],
                         capture_output=True, text=True, timeout=30, check=True).stdout.splitlines()
    seen = {line.split(";", 1)[0]: line.split(";", 1)[1].strip(";").replace(";", "/") for line in ids}
    want = "/".join(map(str, tags))
    assert seen == ({CLIENT: want, SERVER: ""} if server_untagged else {CLIENT: want, SERVER: want}), seen
    return dst


def ids_read(capture: Path | str, cwd: Path, *extra: str, stdin: Any = None,
             timeout: float = 120) -> tuple[int, list[dict[str, Any]], dict[str, Any], str]:
    """`pacsguard ids read --format json CAPTURE` run in ``cwd`` (no pacsguard.yaml there unless the
    test writes one): exit code, events, summary, stderr."""
    env = {k: v for k, v in os.environ.items() if k != "PACSGUARD_CONFIG"}
    r = subprocess.run([PACSGUARD, "ids", "read", "--format", "json", *extra, str(capture)], capture_output=True,
                       text=True, timeout=timeout, cwd=cwd, stdin=stdin, env={**env, "COLUMNS": "200"})
    assert "Traceback" not in r.stderr, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    if not lines or "summary" not in lines[-1]:
        return r.returncode, [], {}, r.stderr
    return r.returncode, lines[:-1], lines[-1]["summary"], r.stderr


def ids_read_piped(capture: Path, cwd: Path) -> tuple[int, list[dict[str, Any]], dict[str, Any], str]:
    """`ids_read` of ``capture`` streamed through a pipe (``tcpdump -w - | zstd | pacsguard ids read -``)."""
    with open(capture, "rb") as f:
        cat = subprocess.Popen(["cat"], stdin=f, stdout=subprocess.PIPE)
        try:
            return ids_read("-", cwd, stdin=cat.stdout)
        finally:
            cat.wait(timeout=30)


TOOL_AE = "ids.alert.dicom-tool-default-ae-title"


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_capture(tmp_path_factory.mktemp("r10b1") / "plain.pcapng")


def _table(capture: Path, cwd: Path, *extra: str) -> list[str]:
    """The event lines `ids read` prints by default (its table format)."""
    r = subprocess.run([PACSGUARD, "ids", "read", *extra, str(capture)], capture_output=True, text=True, timeout=120,
                       cwd=cwd, env={**os.environ, "COLUMNS": "200"})
    assert "Traceback" not in r.stderr, r.stderr
    return [line for line in r.stdout.splitlines() if line[:4].isdigit()]


@pytest.mark.parametrize("tags", [(100,), (7, 100)], ids=["802.1Q", "QinQ"])
def test_the_events_of_a_tagged_connection_name_its_vlan(plain: Path, tmp_path: Path, tags: tuple[int, ...]) -> None:
    tagged = tag(plain, tmp_path / "tagged.pcap", tags)
    code, events, summary, _ = ids_read(tagged, tmp_path)
    assert summary["sensor"]["results"] == {"released": 2}, summary
    kinds = {e["kind"] for e in events}
    assert {"dicom.association.requested", "dicom.dimse.c-echo", "dicom.dimse.c-store", TOOL_AE} <= kinds, kinds
    where = "(VLAN 100)" if tags == (100,) else "(VLAN 7, inner 100)"
    assert [e for e in events if e["details"].get("vlan") != list(tags) or not e["message"].endswith(where)] == []
    lines = _table(tagged, tmp_path)
    assert len(lines) == len(events) and all(line.endswith(where) for line in lines), lines
    assert code == 1  # the tool's AE title alert
    # untagged, nothing is named
    _code, events, _summary, _ = ids_read(plain, tmp_path)
    assert events and [e for e in events if "vlan" in e["details"] or "VLAN" in e["message"]] == []


def test_the_same_addresses_on_two_vlans_tell_their_alerts_apart(plain: Path, tmp_path: Path) -> None:
    merged = tmp_path / "trunk.pcapng"
    subprocess.run(["mergecap", "-w", str(merged), str(tag(plain, tmp_path / "a.pcap", (10,))),
                    str(tag(plain, tmp_path / "b.pcap", (20,)))], check=True, timeout=30)
    # the rule's alert limit (per client address and VLAN, test_r10K_vlan_sources.py) raised, so
    # that every alert is written as it happens, none held for an aggregate
    (tmp_path / "pacsguard.yaml").write_text("ids:\n  limits:\n    dicom-tool-default-ae-title: {count: 5}\n")
    _code, events, summary, _ = ids_read(merged, tmp_path)
    assert summary["capture"]["tcp_connections"] == 4 and summary["sensor"]["results"] == {"released": 4}, summary
    alerts = [e for e in events if e["kind"] == TOOL_AE]
    assert sorted(e["details"]["vlan"] for e in alerts) == [[10], [20]]
    assert sorted(e["message"][-9:] for e in alerts) == ["(VLAN 10)", "(VLAN 20)"]


def _decoded(summary: dict[str, Any]) -> tuple[int, dict[str, int], dict[str, int]]:
    return (summary["capture"]["tcp_connections"], summary["sensor"]["results"],
            summary["sensor"]["alerts_by_rule"])


def test_one_way_tagging_is_one_connection_without_vlan_tracking(plain: Path, tmp_path: Path) -> None:
    """The client's frames tagged, the server's not (a SPAN port tagging one way): with VLAN
    tracking (the default) each association is two half connections and is not decoded (the
    halves read as protocol violations); with ``ids.vlan_tracking: false`` it is decoded whole."""
    half = tag(plain, tmp_path / "half.pcap", (100,), server_untagged=True)
    _code, events, summary, _ = ids_read(half, tmp_path)
    connections, results, _alerts = _decoded(summary)
    assert connections == 4 and results.get("released") is None, summary
    assert not [e for e in events if e["kind"] == "dicom.dimse.c-store"]

    (tmp_path / "pacsguard.yaml").write_text("ids:\n  vlan_tracking: false\n")
    code, events, summary, err = ids_read(half, tmp_path)
    assert _decoded(summary) == (2, {"released": 2}, {"dicom-tool-default-ae-title": 1}), (summary, err)
    [store] = [e for e in events if e["kind"] == "dicom.dimse.c-store"]
    assert store["details"]["status"] == "0x0000" and store["patient_ids"] == ["1CT1"]
    # the VLAN is no part of the connection, but its tagged direction still names it
    assert [e for e in events if e["details"].get("vlan") != [100] or not e["message"].endswith("(VLAN 100)")] == []
    assert code == 1
    # the same through the Python API, whatever the settings say
    from pacsguard.ids.passive import build_engine, read

    got: list[Any] = []
    stats = read(half, engine=build_engine(), publish=got.append, vlan_tracking=False)
    assert stats.capture.flows == 2 and stats.sensor.results == {"released": 2}
    # the server's side tagged instead, the client's not: named from the SYN-ACK on
    other = tmp_path / "other.pcap"
    with open(half, "rb") as f, open(other, "wb") as g:
        w = dpkt.pcap.Writer(g, linktype=dpkt.pcap.DLT_EN10MB, nano=True)
        for ts, frame in dpkt.pcap.Reader(f):
            tagged = struct.unpack_from("!H", frame, 12)[0] == 0x8100
            w.writepkt(frame[:12] + frame[16:] if tagged else frame[:12] + struct.pack("!HH", 0x8100, 200)
                       + frame[12:], ts)
    code, events, summary, err = ids_read(other, tmp_path)
    assert _decoded(summary)[:2] == (2, {"released": 2}), (summary, err)
    assert [e for e in events if e["details"].get("vlan") != [200]] == []


def test_a_bad_vlan_tracking_setting_is_refused(plain: Path, tmp_path: Path) -> None:
    (tmp_path / "pacsguard.yaml").write_text("ids:\n  vlan_tracking: sometimes\n")
    code, _events, _summary, err = ids_read(plain, tmp_path)
    assert code == 2 and "ids.vlan_tracking: Input should be a valid boolean" in err, err


def test_a_priority_tag_is_no_vlan(plain: Path, tmp_path: Path) -> None:
    """VLAN id 0 is a priority tag (IEEE 802.1Q 9.6): a client sending priority-tagged frames to a
    server that answers untagged holds one connection, which names no VLAN."""
    prio = tag(plain, tmp_path / "prio.pcap", (0,), server_untagged=True)
    _code, events, summary, _ = ids_read(prio, tmp_path)
    assert _decoded(summary)[:2] == (2, {"released": 2}), summary
    assert [e for e in events if "vlan" in e["details"]] == []


def test_an_anomaly_on_a_tagged_connection_names_its_vlan() -> None:
    """The capture layer's anomalies (here a data segment without ACK, and a packet whose IP length
    exceeds its whole frame) name the VLAN of the frames, like the connection's other events."""
    from capture_craft import PSH, Flow, eth_frames, pcap_bytes

    from pacsguard.ids.passive import build_engine, read

    f = Flow(client="10.1.2.3", server="10.9.8.7", sport=104)
    pkts = f.handshake() + f.send(True, b"x" * 10, flags=PSH)
    ts, pkt = f.send(True, b"y" * 10)[0]
    liar = bytearray(pkt)
    struct.pack_into("!H", liar, 2, len(pkt) + 100)  # IPv4 total length beyond the frame
    frames = eth_frames([*pkts, (ts, bytes(liar))], vlans=(7, 300))
    got: list[Any] = []
    read(pcap_bytes(frames), engine=build_engine(), publish=got.append)
    anomalies = {e.kind: e for e in got if e.kind.startswith("ids.anomaly.")}
    assert set(anomalies) == {"ids.anomaly.tcp-no-ack", "ids.anomaly.ip-length-exceeds-frame"}, got
    for e in anomalies.values():
        assert e.details["vlan"] == [7, 300] and e.message.endswith("(VLAN 7, inner 300)"), e


_SEND = """
import socket, sys, time
import dpkt
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[2], 0))
with open(sys.argv[1], "rb") as f:
    for _ts, frame in dpkt.pcap.Reader(f):
        s.send(frame)
        time.sleep(0.002)
"""


@pytest.mark.parametrize("tags", [(100,), (7, 100)], ids=["802.1Q", "QinQ"])
def test_ids_live_sees_the_vlan_the_kernel_took_out(plain: Path, tmp_path: Path, tags: tuple[int, ...]) -> None:
    """Linux takes the outer 802.1Q/802.1ad tag out of every frame it receives and hands it to a
    packet socket beside the frame (PACKET_AUXDATA): `ids live` on a trunk saw no VLAN at all. The
    tagged association is sent as frames over a veth pair into the namespace `ids live` listens
    in; its events name the VLAN."""
    require("ip")
    tagged = tag(plain, tmp_path / "tagged.pcap", tags)
    name = secrets.token_hex(3)
    ans, bns = f"r10b1-a{name}", f"r10b1-b{name}"
    with ExitStack() as stack:
        for ns in (ans, bns):
            _run("ip", "netns", "add", ns)
            stack.callback(subprocess.run, ["ip", "netns", "del", ns], check=False, timeout=30)
        _run("ip", "link", "add", "t0", "netns", ans, "type", "veth", "peer", "name", "t1", "netns", bns)
        for ns, dev in ((ans, "t0"), (bns, "t1")):
            # room for two tags on a 1,514-byte frame (a packet socket sends at most MTU + 18)
            _run(*_ns(ns, "ip", "link", "set", dev, "mtu", "1600", "up"))
        live = subprocess.Popen(_ns(bns, PACSGUARD, "ids", "live", "-i", "t1", "--duration", "6", "--format", "json"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        stack.callback(_stop, live, signal.SIGTERM)
        assert live.stderr is not None
        seen = ""
        deadline = time.monotonic() + 20
        while "capturing on" not in seen and time.monotonic() < deadline:
            seen += live.stderr.readline()
        assert "capturing on" in seen, seen
        subprocess.run(_ns(ans, sys.executable, "-c", _SEND, str(tagged), "t0"), check=True, timeout=30)
        out, err = live.communicate(timeout=30)
    assert "Traceback" not in err, err
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    events, summary = lines[:-1], lines[-1]["summary"]
    assert summary["sensor"]["results"] == {"released": 2}, (summary, err)
    where = "(VLAN 100)" if tags == (100,) else "(VLAN 7, inner 100)"
    assert events and [e for e in events if e["details"].get("vlan") != list(tags)
                       or not e["message"].endswith(where)] == []
