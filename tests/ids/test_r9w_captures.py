"""Outside tester-fixer, round 9 (W4): `pacsguard ids read` over captures as administrators hand
them over, made by real tools on this tester's loopback (127.0.114.x): a pynetdicom SCP and two
client associations captured by dumpcap, cut, shifted and merged with editcap and mergecap.

* A pipe (``tcpdump -w - | pacsguard ids read -``), ``/dev/stdin`` and a FIFO are read as a
  stream in bounded memory, as ``tshark -r -`` reads them: the whole pipe was read into memory.
* Capture problems name the frame as Wireshark numbers it (1-based, every packet record or block
  counted) and the file offset: only the offset was given, which Wireshark users cannot go to.
* gzip'd captures (``.pcap.gz``, ``.pcapng.gz``, which Wireshark and tshark read) are read,
  streamed; a truncated one is read up to the damage (exit 7), a gzip bomb stops (exit 7).
* IEEE 802.1Q VLAN ids are part of the connection key (Zeek's vlan/inner_vlan): two connections
  with the same addresses and ports on two VLANs (overlapping address spaces) were merged.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import dpkt
import pytest

from peers.dumpcap import announced

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from capture_craft import ACK, PSH, SYN, tcp_ip

PACSGUARD = str(Path(sys.executable).with_name("pacsguard"))
SERVER = "127.0.114.1"
CLIENT = "127.0.114.2"
TOOL_AE = "ids.alert.dicom-tool-default-ae-title"


def _require(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    assert not missing, f"peers missing: {missing}"  # a missing peer fails loudly


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two associations (WS_READ1, then the tool default ECHOSCU) with a pynetdicom SCP, captured by
    dumpcap on lo as pcapng: 34 frames."""
    _require("dumpcap", "tshark", "editcap", "mergecap")
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    port = _free_port(SERVER)
    scp = AE(ae_title="PACS")
    scp.add_supported_context(Verification)
    server = scp.start_server((SERVER, port), block=False)
    cap = tmp_path_factory.mktemp("r9w") / "two.pcapng"
    dc = subprocess.Popen(["dumpcap", "-i", "lo", "-f", f"host {SERVER} and tcp port {port}", "-w", str(cap)],
                          stderr=subprocess.PIPE, text=True)
    try:
        announced(dc)
        for title in ("WS_READ1", "ECHOSCU"):
            scu = AE(ae_title=title)
            scu.add_requested_context(Verification)
            assoc = scu.associate(SERVER, port, ae_title="PACS", bind_address=(CLIENT, 0))
            assert assoc.is_established
            assert assoc.send_c_echo().Status == 0
            assoc.release()
        time.sleep(0.5)
    finally:
        dc.send_signal(signal.SIGINT)
        try:
            dc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            dc.kill()
            dc.communicate()
        server.shutdown()
    frames = _tshark_frames(cap)
    assert len(frames) >= 20, frames
    return cap


def _tshark_frames(path: Path) -> list[str]:
    r = subprocess.run(["tshark", "-r", str(path)], capture_output=True, text=True, timeout=30)
    return [line for line in r.stdout.splitlines() if line.strip()]


def ids_read(arg: str, *, stdin: Any = None, timeout: float = 60) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    """`pacsguard ids read --format json ARG`: exit code, events, summary."""
    r = subprocess.run([PACSGUARD, "ids", "read", "--format", "json", arg], capture_output=True, text=True,
                       timeout=timeout, stdin=stdin, env={**os.environ, "COLUMNS": "200"})
    assert "Traceback" not in r.stderr, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert lines and "summary" in lines[-1], r.stdout[-2000:] + r.stderr
    return r.returncode, lines[:-1], lines[-1]["summary"]


def _essentials(summary: dict[str, Any]) -> dict[str, Any]:
    cap, sen = summary["capture"], summary["sensor"]
    return {"packets": cap["packets"], "connections": cap["tcp_connections"], "complete": cap["complete"],
            "associations": sen["associations"], "alerts": sen["alerts_by_rule"], "commands": sen["commands"],
            "bytes": summary["bytes"]}


# ------------------------------------------------------------------ pipes and FIFOs


def test_a_pipe_stdin_and_a_fifo_read_like_the_file(real: Path, tmp_path: Path) -> None:
    code, events, summary = ids_read(str(real))
    assert code == 1 and summary["sensor"]["associations"] == 2
    want = _essentials(summary)
    kinds = sorted(e["kind"] for e in events)
    for arg in ("-", "/dev/stdin"):
        with open(real, "rb") as f:
            p = subprocess.Popen(["cat"], stdin=f, stdout=subprocess.PIPE)  # a pipe, not a file
            got = ids_read(arg, stdin=p.stdout)
            p.wait(timeout=10)
        assert got[0] == 1 and _essentials(got[2]) == want, (arg, got[2])
        assert sorted(e["kind"] for e in got[1]) == kinds
    assert got[2]["source"] == "/dev/stdin"
    fifo = tmp_path / "cap.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(real.read_bytes()), daemon=True)
    writer.start()
    got = ids_read(str(fifo))
    writer.join(10)
    assert got[0] == 1 and _essentials(got[2]) == want


def _long_stream(out: Any, megabytes: int) -> None:
    """A pcap of one TCP connection carrying ``megabytes`` of payload in 1460-byte segments, written
    to ``out`` as it is made (like tcpdump -w -)."""
    out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
    mac = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00"
    ts = 1_700_000_000_000_000

    def rec(pkt: bytes) -> bytes:
        nonlocal ts
        ts += 10
        frame = mac + pkt
        return struct.pack("<IIII", ts // 1_000_000, ts % 1_000_000, len(frame), len(frame)) + frame

    out.write(rec(tcp_ip(CLIENT, SERVER, 40000, 104, 999, SYN)))
    out.write(rec(tcp_ip(SERVER, CLIENT, 104, 40000, 4999, SYN | ACK, ack=1000)))
    template = bytearray(rec(tcp_ip(CLIENT, SERVER, 40000, 104, 1000, ACK | PSH, b"x" * 1460, 5000)))
    seq_at = 16 + 14 + 20 + 4  # record header, Ethernet, IPv4: the TCP sequence number
    batch = 256
    seq = 1000
    for _ in range(megabytes * 1_000_000 // (1460 * batch)):
        parts = []
        for _ in range(batch):
            struct.pack_into("!I", template, seq_at, seq & 0xFFFFFFFF)
            parts.append(bytes(template))
            seq += 1460
        out.write(b"".join(parts))


def _max_rss_kb(argv: list[str], feed: Any, megabytes: int, *, stdin_pipe: bool,
                path: str | None = None) -> tuple[int, str]:
    """Run ``argv``, writing the long stream to its stdin or to ``path`` (a FIFO; neither: nothing
    to feed); its peak RSS in kB and its standard output."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        if stdin_pipe:
            assert proc.stdin is not None
            try:
                feed(proc.stdin, megabytes)
            finally:
                proc.stdin.close()
        elif path is not None:
            with open(path, "wb") as f:
                feed(f, megabytes)
        assert proc.stdout is not None and proc.stderr is not None
        out = proc.stdout.read().decode()
        proc.stderr.read()
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return usage.ru_maxrss, out


@pytest.mark.parametrize("how", ["-", "fifo"])
def test_a_long_stream_is_read_in_bounded_memory(real: Path, tmp_path: Path, how: str) -> None:
    base, _ = _max_rss_kb([PACSGUARD, "ids", "read", "--format", "json", str(real)], lambda f, n: None, 0,
                          stdin_pipe=False)
    megabytes = 160
    if how == "-":
        rss, out = _max_rss_kb([PACSGUARD, "ids", "read", "--format", "json", "-"], _long_stream, megabytes,
                               stdin_pipe=True)
    else:
        fifo = tmp_path / "long.fifo"
        os.mkfifo(fifo)
        rss, out = _max_rss_kb([PACSGUARD, "ids", "read", "--format", "json", str(fifo)], _long_stream, megabytes,
                               stdin_pipe=False, path=str(fifo))
    summary = json.loads(out.splitlines()[-1])["summary"]
    assert summary["capture"]["complete"] is True and summary["bytes"] > megabytes * 1_000_000
    assert summary["capture"]["gaps"] == 0 and summary["capture"]["tcp_connections"] == 1
    # the whole stream held in memory would add 160 MB; a window and a few frames add little
    assert rss - base < 48 * 1024, f"peak RSS {rss} kB, {base} kB for a small file"


# ------------------------------------------------------------------ frame numbers


def _block_offsets(data: bytes) -> list[tuple[int, int]]:
    """(offset, block type) of every block of a little-endian pcapng file."""
    out, off = [], 0
    while off + 8 <= len(data):
        btype, blen = struct.unpack_from("<II", data, off)
        out.append((off, btype))
        off += blen
    return out


def test_problems_name_the_frame_as_wireshark_numbers_it(real: Path, tmp_path: Path) -> None:
    data = bytearray(real.read_bytes())
    epbs = [off for off, btype in _block_offsets(bytes(data)) if btype == 6]
    struct.pack_into("<I", data, epbs[9] + 8, 5)  # the 10th frame names an interface that does not exist
    bad = tmp_path / "bad.pcapng"
    bad.write_bytes(bytes(data))
    before = len(_tshark_frames(bad))  # tshark stops at the damage: the frames before it
    assert before == 9
    code, _events, summary = ids_read(str(bad))
    assert code == 7
    [problem] = summary["capture"]["problems"]
    assert problem == {"what": "EPB for undefined interface 5", "offset": epbs[9], "frame": before + 1,
                       "after_frame": -1}
    r = subprocess.run([PACSGUARD, "ids", "read", str(bad)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "COLUMNS": "250"})
    assert f"EPB for undefined interface 5 (frame 10, offset {epbs[9]:,})" in r.stdout, r.stdout

    # pcap, cut in the middle of a record near the end: tshark reads the frames before it
    pcap = tmp_path / "two.pcap"
    subprocess.run(["editcap", "-F", "pcap", str(real), str(pcap)], check=True, timeout=30)
    whole = pcap.read_bytes()
    offsets, off = [], 24
    while off < len(whole):
        offsets.append(off)
        off += 16 + struct.unpack_from("<I", whole, off + 8)[0]
    k = len(offsets) - 3  # frame k + 1 is cut
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(whole[: offsets[k] + 30])
    assert len(_tshark_frames(cut)) == k
    for arg, stdin in ((str(cut), None), ("-", "pipe")):
        if stdin:
            with open(cut, "rb") as f:
                p = subprocess.Popen(["cat"], stdin=f, stdout=subprocess.PIPE)
                code, _events, summary = ids_read(arg, stdin=p.stdout)
                p.wait(timeout=10)
        else:
            code, _events, summary = ids_read(arg)
        assert code == 7
        stopped = summary["capture"]["stopped"]
        assert (stopped["frame"], stopped["offset"]) == (k + 1, offsets[k]), (arg, stopped)
        assert summary["capture"]["lost"].startswith(f"{k} frames read; reading stopped at frame {k + 1}, offset "
                                                     f"{offsets[k]:,} of {offsets[k] + 30:,} bytes")


def test_the_first_frame_cut_by_the_snap_length_is_named(real: Path, tmp_path: Path) -> None:
    snapped = tmp_path / "snap.pcapng"
    subprocess.run(["editcap", "-s", "80", str(real), str(snapped)], check=True, timeout=30)
    first = next(i for i, line in enumerate(_tshark_frames(real), 1) if " DICOM " in line)  # the A-ASSOCIATE-RQ
    epbs = [off for off, btype in _block_offsets(snapped.read_bytes()) if btype == 6]
    for arg, stdin in ((str(snapped), None), ("-", "pipe")):
        with open(snapped, "rb") as f:
            p = subprocess.Popen(["cat"], stdin=f, stdout=subprocess.PIPE) if stdin else None
            code, _events, summary = ids_read(arg, stdin=p.stdout if p else None)
            if p:
                p.wait(timeout=10)
        assert code == 7
        [problem] = summary["capture"]["problems"]
        assert (problem["frame"], problem["offset"]) == (first, epbs[first - 1]), (arg, problem)
        assert f"(the first: frame {first}, offset {epbs[first - 1]:,})" in problem["what"]


# ------------------------------------------------------------------ gzip


def test_gzipped_captures_are_read_like_the_plain_ones(real: Path, tmp_path: Path) -> None:
    pcap = tmp_path / "two.pcap"
    subprocess.run(["editcap", "-F", "pcap", str(real), str(pcap)], check=True, timeout=30)
    for plain in (real, pcap):
        code, events, summary = ids_read(str(plain))
        want = _essentials(summary)
        gz = plain.with_name(plain.name + ".gz")
        gz.write_bytes(gzip.compress(plain.read_bytes()))
        assert len(_tshark_frames(gz)) == want["packets"]  # tshark reads it: so must we
        got = ids_read(str(gz))
        assert got[0] == code == 1 and _essentials(got[2]) == want
        assert [e["kind"] for e in got[1]] == [e["kind"] for e in events]
        with open(gz, "rb") as f:
            got = ids_read("-", stdin=f)
        assert got[0] == 1 and _essentials(got[2]) == want
        # two gzip members, as `cat a.gz b.gz` makes (gzip -d reads them as one)
        data = plain.read_bytes()
        half = len(data) // 2
        two = tmp_path / ("members-" + gz.name)
        two.write_bytes(gzip.compress(data[:half]) + gzip.compress(data[half:]))
        got = ids_read(str(two))
        assert got[0] == 1 and _essentials(got[2]) == want


def test_a_truncated_gzip_is_read_up_to_the_damage(real: Path, tmp_path: Path) -> None:
    data = real.read_bytes()
    z = zlib.compressobj(6, zlib.DEFLATED, 31)
    # flushed in pieces, as a gzip writer killed mid-capture leaves it
    body = b"".join(z.compress(data[i : i + 500]) + z.flush(zlib.Z_SYNC_FLUSH) for i in range(0, 3000, 500))
    gz = tmp_path / "killed.pcapng.gz"
    gz.write_bytes(body)
    code, _events, summary = ids_read(str(gz))
    cap = summary["capture"]
    assert code == 7 and cap["packets"] > 10 and summary["bytes"] == 3000
    assert "gzip data damaged" in cap["stopped"]["what"] and "reading stopped" in cap["lost"]
    assert cap["stopped"]["frame"] == 0 and cap["stopped"]["after_frame"] == cap["packets"]


def _bomb(path: Path, megabytes: int) -> None:
    """A gzip'd pcap of frames of zeros: it expands about 1000 times."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    frame = b"\x00" * 65000
    rec = struct.pack("<IIII", 1_700_000_000, 0, len(frame), len(frame)) + frame
    with open(path, "wb") as f:
        f.write(z.compress(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)))
        chunk = rec * 64
        for _ in range(megabytes * 1_000_000 // len(chunk)):
            f.write(z.compress(chunk))
        f.write(z.flush())


def test_a_gzip_bomb_stops(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.pcap.gz"
    _bomb(bomb, 400)
    assert bomb.stat().st_size < 1_000_000
    code, _events, summary = ids_read(str(bomb), timeout=60)
    cap = summary["capture"]
    assert code == 7 and "gzip bomb" in cap["stopped"]["what"], cap
    assert summary["bytes"] < 100_000_000  # stopped well before its 400 MB


# ------------------------------------------------------------------ VLANs


def _on_vlans(path: Path, out: Path, client: int, tags: tuple[int, ...], port: int) -> None:
    """Write the frames of ``path``'s connection from client port ``client`` to the pcap ``out``,
    with the 802.1Q tags ``tags`` (outer first, the outer ones 802.1ad) and client port ``port``."""
    with open(path, "rb") as f, open(out, "wb") as g:
        w = dpkt.pcap.Writer(g, linktype=dpkt.pcap.DLT_EN10MB, nano=True)
        for ts, frame in dpkt.pcapng.Reader(f):
            eth = bytearray(frame)
            tcp_at = 14 + (eth[14] & 0x0F) * 4
            sport, dport = struct.unpack_from("!HH", eth, tcp_at)
            if client not in (sport, dport):
                continue
            struct.pack_into("!H", eth, tcp_at if sport == client else tcp_at + 2, port)
            vlan = b"".join(struct.pack("!HH", 0x88A8 if i < len(tags) - 1 else 0x8100, vid)
                            for i, vid in enumerate(tags))
            w.writepkt(bytes(eth[:12]) + vlan + bytes(eth[12:]), ts)


def _client_ports(path: Path) -> list[int]:
    r = subprocess.run(["tshark", "-r", str(path), "-Y", "tcp.flags.syn==1 && tcp.flags.ack==0", "-T", "fields",
                        "-e", "tcp.srcport"], capture_output=True, text=True, timeout=30, check=True)
    return [int(x) for x in r.stdout.split()]


@pytest.mark.parametrize("tags", [((10,), (20,)), ((100, 10), (100, 20))], ids=["802.1Q", "QinQ"])
def test_the_same_addresses_on_two_vlans_are_two_connections(real: Path, tmp_path: Path,
                                                             tags: tuple[tuple[int, ...], ...]) -> None:
    a, b = _client_ports(real)
    only_a, only_b = tmp_path / "only_a.pcap", tmp_path / "only_b.pcap"
    _on_vlans(real, only_a, a, tags[0], a)
    _on_vlans(real, only_b, b, tags[1], a)  # b's association, as the same 4-tuple as a's
    # b's frames moved to start 0.5 ms after a's: the two associations interleave, as on a trunk
    t0, t = (float(subprocess.run(["tshark", "-r", str(x), "-T", "fields", "-e", "frame.time_epoch", "-c", "1"],
                                  capture_output=True, text=True, timeout=30, check=True).stdout)
             for x in (only_a, only_b))
    shifted = tmp_path / "b_shifted.pcap"
    subprocess.run(["editcap", "-t", f"{t0 - t + 0.0005:.6f}", str(only_b), str(shifted)], check=True, timeout=30)
    merged = tmp_path / "trunk.pcapng"
    subprocess.run(["mergecap", "-w", str(merged), str(only_a), str(shifted)], check=True, timeout=30)
    frames = _tshark_frames(merged)
    assert len(frames) == len(_tshark_frames(real))
    syns = [i for i, line in enumerate(frames) if "[SYN]" in line]
    fin = next(i for i, line in enumerate(frames) if "[FIN" in line)
    assert len(syns) == 2 and syns[1] < fin, frames  # the second starts while the first is open
    code, events, summary = ids_read(str(merged))
    cap, sen = summary["capture"], summary["sensor"]
    assert cap["tcp_connections"] == 2 and cap["anomalies"] == {} and cap["gaps"] == 0, cap
    assert sen["associations"] == 2 and sen["results"] == {"released": 2}, sen
    requested = {e["details"]["flow"]: e["message"] for e in events if e["kind"] == "dicom.association.requested"}
    assert all("(VLAN " in m for m in requested.values()), requested  # each names its own VLAN
    requested = {flow: m.partition(" (VLAN ")[0] for flow, m in requested.items()}
    assert sorted(requested.values()) == ["A-ASSOCIATE-RQ ECHOSCU -> PACS", "A-ASSOCIATE-RQ WS_READ1 -> PACS"]
    [tool] = [e for e in events if e["kind"] == TOOL_AE]
    assert requested[tool["details"]["flow_id"]] == "A-ASSOCIATE-RQ ECHOSCU -> PACS"
    assert code == 1


def test_fragments_on_two_vlans_join_their_own_connection() -> None:
    """IP fragments of the same addresses and id on two VLANs are two datagrams, each reassembled
    into its own VLAN's connection."""
    from capture_craft import Flow, pcap_bytes
    from test_capture_evasion import Anomalies

    from pacsguard.ids.capture import read_capture

    def tagged(vid: int, pkt: bytes) -> bytes:
        return b"\x02" * 6 + b"\x04" * 6 + struct.pack("!HHH", 0x8100, vid, 0x0800) + pkt

    frames: list[tuple[int, bytes]] = []
    for vid, data in ((10, b"A" * 64), (20, b"B" * 64)):
        f = Flow(client=CLIENT, server=SERVER)
        pkts = f.handshake()
        [(ts, seg)] = f.send(True, data)
        ip = dpkt.ip.IP(seg)
        body = bytes(ip.data)
        for off, more in ((0, True), (40, False)):
            part = body[off : off + 40] if more else body[off:]
            hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(part), 0x4242, (off // 8) | (0x2000 if more else 0),
                              64, 6, 0, ip.src, ip.dst)  # the same id on both VLANs
            pkts.append((ts, hdr + part))
        frames += [(t + (vid - 10) * 10, tagged(vid, p)) for t, p in pkts]
    frames.sort(key=lambda x: x[0])
    rec = Anomalies()
    stats = read_capture(pcap_bytes(frames), rec)
    assert stats.flows == 2 and stats.ip_reassembled == 2 and stats.ip_fragments_dropped == 0, stats
    assert sorted(b"".join(x for x in s if isinstance(x, bytes)) for s in rec.streams.values()) == [b"A" * 64,
                                                                                                   b"B" * 64]


# ------------------------------------------------------------------ streaming = mapping


def _variants() -> list[tuple[str, bytes]]:
    """Captures in every layout the reader knows, intact and damaged at chosen and random places."""
    import random

    from capture_craft import Flow, eth_frames, ng_block, ng_epb, ng_idb, ng_shb, ng_spb, pcap_bytes, pcapng_bytes

    f = Flow(client=CLIENT, server=SERVER)
    pkts = f.handshake() + f.send(True, bytes(range(256)) * 20) + f.send(False, b"r" * 3000) + f.fin()
    frames = eth_frames(pkts)
    out = [
        ("pcap", pcap_bytes(frames)),
        ("pcap-be-ns", pcap_bytes(frames, nano=True, big_endian=True)),
        ("pcap-snap", pcap_bytes(frames, caplens={4: 60, 6: 70})),
        ("pcapng", pcapng_bytes(frames, extra_blocks=True)),
        ("pcapng-be-ns", pcapng_bytes(frames, tsresol=9, big_endian=True)),
        # two sections of opposite byte order, a simple packet block, an undefined interface
        ("pcapng-2-sections", pcapng_bytes(frames[:5]) + ng_shb(">") + ng_idb(">", 1)
         + b"".join(ng_epb(">", 0, ts, fr) for ts, fr in frames[5:9]) + ng_spb(">", frames[9][1])
         + ng_epb(">", 3, 0, frames[10][1]) + b"".join(ng_epb(">", 0, ts, fr) for ts, fr in frames[11:])),
        ("pcapng-custom-block", pcapng_bytes(frames[:3]) + ng_block("<", 0x40000BAD, b"x" * 5000)),
    ]
    rnd = random.Random(1114)
    for name, data in list(out):
        for i in range(12):
            b = bytearray(data)
            if i % 3 == 0:
                b = b[: rnd.randrange(1, len(b))]
            else:
                # a length, an interface id, a type: any aligned word, to a value that misleads
                for _ in range(i % 3):
                    pos = rnd.randrange(0, len(b) - 4) & ~3
                    value = rnd.choice([0, 7, 12, 28, 32, 0x10000, 0xFFFFFFFF, rnd.randrange(1 << 20)])
                    struct.pack_into("<I", b, pos, value)
            out.append((f"{name}-damaged-{i}", bytes(b)))
    return out


def _observed(stats: Any, rec: Any) -> tuple[Any, ...]:
    return (stats.packets, stats.bytes, stats.flows, stats.gaps, stats.snap_truncated, dict(stats.non_tcp),
            [(p.what, p.offset, p.frame, p.after_frame) for p in stats.problems],
            (stats.stopped.what, stats.stopped.offset) if stats.stopped else None,
            sorted((k, tuple(v)) for k, v in rec.streams.items()))


def test_a_stream_in_tiny_windows_reads_what_the_mapped_file_reads(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Window ends fall inside every record header, block and frame: the streamed read must find
    the same frames, problems (frame numbers and offsets) and streams as the mapped one."""
    from test_capture_evasion import Anomalies

    from pacsguard.ids.capture import CaptureError, read_capture
    from pacsguard.ids.capture import reader as R

    monkeypatch.setattr(R, "_STREAM_CHUNK", 7)
    for name, data in _variants():
        path = tmp_path / "cap"
        path.write_bytes(data)
        results = []
        for how in ("file", "fifo", "gzip"):
            rec = Anomalies()
            try:
                if how == "file":
                    stats = read_capture(path, rec)
                elif how == "gzip":
                    gz = tmp_path / "cap.gz"
                    gz.write_bytes(gzip.compress(data))
                    stats = read_capture(gz, rec)
                else:
                    fifo = tmp_path / "fifo"
                    if fifo.exists():
                        fifo.unlink()
                    os.mkfifo(fifo)
                    writer = threading.Thread(target=fifo.write_bytes, args=(data,), daemon=True)
                    writer.start()
                    try:
                        stats = read_capture(fifo, rec)
                    finally:
                        writer.join(10)
                results.append(_observed(stats, rec))
            except CaptureError as exc:
                results.append(str(exc).split(": ", 1)[1].replace("gzip-compressed, its content's ", ""))
        assert results[1] == results[0] and results[2] == results[0], name
