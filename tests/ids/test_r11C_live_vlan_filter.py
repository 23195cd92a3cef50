"""Round 11 C: `pacsguard ids live --bpf 'vlan 100'` matches what tcpdump/dumpcap match on the same
interface.

Linux takes the outer 802.1Q tag out of a received frame before a packet socket's filter runs
(packet(7)); the filter was compiled as for a file (the tag's TPID looked for at offset 12), so it
matched no received tagged frame, only the frames sent with the tag in their bytes: `ids live`
saw half of each connection.  libpcap compiles `vlan` for a live Linux handle with the BPF
ancillary loads (SKF_AD_VLAN_TAG_PRESENT, SKF_AD_VLAN_TAG), as dumpcap's `-d` shows.

The trunk: this kernel has neither 802.1Q interfaces nor bridge VLAN filtering, so a small 802.1Q
switch in user space (packet sockets) joins a client's and a server's untagged access ports over
a veth pair that carries VLAN 100 tagged; the switch receives each direction on one end of the
trunk (where the kernel strips the tag) and sends the other direction out of it, tagged.  dcmtk's
echoscu talks to storescp across it; dumpcap and `pacsguard ids live` capture on the same trunk
end at the same time with the same filters.  Namespaces r11c-*, deleted afterwards.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from test_r10B1_vlan import _ns, _run, _stop, _wait_listening, require

PACSGUARD = str(Path(sys.executable).with_name("pacsguard"))
CLIENT, SERVER, PORT, VID = "10.113.0.1", "10.113.0.2", 11112, 100
FILTERS = ("vlan 100", "vlan", f"vlan {VID} and port {PORT}", "vlan 200")

# access ports xc (client) and xs (server); the trunk is the veth pair ta-tb: frames from xc go
# out of ta tagged and come in at tb untagged by the kernel, then out of xs; the way back from xs
# goes out of tb tagged, in at ta, out of xc
_SWITCH = """
import select, socket, struct, sys, time
tag = struct.pack("!HH", 0x8100, int(sys.argv[1]))
socks = {}
for dev in ("xc", "ta", "tb", "xs"):
    socks[dev] = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    socks[dev].bind((dev, 0))
route = {"xc": ("ta", True), "tb": ("xs", False), "xs": ("tb", True), "ta": ("xc", False)}
by_fd = {s.fileno(): d for d, s in socks.items()}
end = time.monotonic() + 60
while time.monotonic() < end:
    for fd in select.select(list(by_fd), [], [], 0.2)[0]:
        dev = by_fd[fd]
        frame, addr = socks[dev].recvfrom(65535)
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        to, add = route[dev]
        socks[to].send(frame[:12] + tag + frame[12:] if add else frame)
"""


def _trunk(stack: ExitStack) -> tuple[str, str, str]:
    """Client, server and switch namespaces, joined as the module docstring says; IPv6 off so that
    nothing but the test's traffic crosses the trunk."""
    name = secrets.token_hex(3)
    cns, sns, xns = (f"r11c-{r}{name}" for r in "csx")
    for ns in (cns, sns, xns):
        _run("ip", "netns", "add", ns)
        stack.callback(subprocess.run, ["ip", "netns", "del", ns], check=False, timeout=30)
        _run(*_ns(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"))
    _run("ip", "link", "add", "c0", "netns", cns, "type", "veth", "peer", "name", "xc", "netns", xns)
    _run("ip", "link", "add", "s0", "netns", sns, "type", "veth", "peer", "name", "xs", "netns", xns)
    _run(*_ns(xns, "ip", "link", "add", "ta", "type", "veth", "peer", "name", "tb"))
    for dev in ("xc", "xs", "ta", "tb"):
        _run(*_ns(xns, "ip", "link", "set", dev, "mtu", "1600", "up"))  # room for the tag
    for ns, dev, addr in ((cns, "c0", CLIENT), (sns, "s0", SERVER)):
        _run(*_ns(ns, "ip", "addr", "add", f"{addr}/24", "dev", dev))
        # checksums computed before the switch copies the frame, and no segment above the MTU
        _run(*_ns(ns, "ethtool", "-K", dev, "tx", "off", "tso", "off", "gso", "off", "gro", "off"))
        _run(*_ns(ns, "ip", "link", "set", dev, "up"))
    switch = subprocess.Popen(_ns(xns, sys.executable, "-c", _SWITCH, str(VID)), stderr=subprocess.PIPE, text=True)
    stack.callback(_stop, switch, signal.SIGTERM)
    return cns, sns, xns


def _live(xns: str, bpf: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(_ns(xns, PACSGUARD, "ids", "live", "-i", "tb", "--bpf", bpf, "--format", "json"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)


def _said(proc: subprocess.Popen[str], words: str) -> None:
    """Wait (bounded) for ``words`` on the process's standard error."""
    assert proc.stderr is not None
    seen = ""
    deadline = time.monotonic() + 20
    while words not in seen and time.monotonic() < deadline and proc.poll() is None:
        seen += proc.stderr.readline()
    assert words in seen, seen + (proc.stderr.read() if proc.poll() is not None else "")


def _summary(proc: subprocess.Popen[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The events and summary of an `ids live` told to stop."""
    out, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert lines and "summary" in lines[-1], (out, err)
    return lines[:-1], lines[-1]["summary"]


def _frames(capture: Path) -> list[str]:
    """The frames of a capture as tshark lists them: source, destination, VLAN id."""
    out = subprocess.run(["tshark", "-r", str(capture), "-T", "fields", "-e", "eth.src", "-e", "eth.dst",
                          "-e", "vlan.id"], capture_output=True, text=True, timeout=30, check=True).stdout
    return out.splitlines()


def test_vlan_filters_on_a_trunk_match_what_dumpcap_matches(tmp_path: Path) -> None:
    require("ip", "ethtool", "sysctl", "dumpcap", "tshark", "/usr/bin/echoscu", "/usr/bin/storescp")
    with ExitStack() as stack:
        cns, sns, xns = _trunk(stack)
        scp = subprocess.Popen(_ns(sns, "/usr/bin/storescp", "-aet", "PACS", str(PORT)),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stack.callback(_stop, scp, signal.SIGTERM)
        _wait_listening(sns, PORT)
        peers: dict[str, tuple[subprocess.Popen[str], Path]] = {}
        lives: dict[str, subprocess.Popen[str]] = {}
        for i, bpf in enumerate(FILTERS):
            out = tmp_path / f"dumpcap{i}.pcapng"
            dc = subprocess.Popen(_ns(xns, "dumpcap", "-q", "-i", "tb", "-f", bpf, "-w", str(out)),
                                  stderr=subprocess.PIPE, text=True)
            stack.callback(_stop, dc)
            peers[bpf] = (dc, out)
            lives[bpf] = _live(xns, bpf, tmp_path)
            stack.callback(_stop, lives[bpf], signal.SIGTERM)
        for bpf in FILTERS:
            _said(lives[bpf], "capturing on")  # once said, its socket takes packets
            _said(peers[bpf][0], "Capturing on")
        time.sleep(0.5)  # dumpcap says so before its socket takes packets (peers.dumpcap.announced)
        echo = subprocess.run(_ns(cns, "/usr/bin/echoscu", "-aec", "PACS", SERVER, str(PORT)), capture_output=True,
                              text=True, timeout=30)
        assert echo.returncode == 0, echo.stdout + echo.stderr
        time.sleep(0.5)  # the last ACK through the switch
        for proc in lives.values():  # all told at once, then waited for
            proc.send_signal(signal.SIGTERM)
        for dc, _out in peers.values():
            dc.send_signal(signal.SIGINT)
        seen = {bpf: _summary(proc) for bpf, proc in lives.items()}
        for dc, _out in peers.values():
            _stop(dc)
    for bpf in FILTERS:
        frames = _frames(peers[bpf][1])
        events, summary = seen[bpf]
        # the same frames: as many, and (below) the same association
        assert summary["capture"]["packets"] == len(frames), (bpf, summary["capture"], frames)
        if bpf == "vlan 200":
            assert frames == [] and events == [], (frames, events)
            continue
        # dumpcap saw both directions, every frame tagged 100 (a handshake, the association, ARP)
        assert len(frames) > 15 and {f.rsplit("\t", 1)[1] for f in frames} == {str(VID)}, frames
        assert len({f.split("\t", 1)[0] for f in frames}) == 2, frames  # from the client and from the server
        assert summary["sensor"]["results"] == {"released": 1}, (bpf, summary)
        kinds = {e["kind"] for e in events}
        assert {"dicom.association.requested", "dicom.dimse.c-echo"} <= kinds, (bpf, kinds)
        assert all(e["details"].get("vlan") == [VID] for e in events), events


def test_a_file_keeps_the_file_program_and_a_down_interface_is_named(tmp_path: Path) -> None:
    """In a capture file the tag is in the frame: :func:`compile_bpf` keeps libpcap's program for a
    file (the EtherType at offset 12 compared with 0x8100, no ancillary load), which
    ``compile_live_bpf`` replaces for a live socket by the program dumpcap compiles there
    (`dumpcap -d`: ``ldb [vlanp]`` first, SKF_AD_OFF + SKF_AD_VLAN_TAG_PRESENT = 0xfffff030).  A
    filter without a VLAN term keeps the file's program.  libpcap opens only an interface that is
    up: `ids live` on a down one says so in one line (exit 2), as tcpdump does."""
    from pacsguard.ids.capture import compile_bpf

    require("ip", "dumpcap")
    file_prog = compile_bpf("vlan 100")
    assert any(code == 0x15 and k == 0x8100 for code, _jt, _jf, k in file_prog), file_prog
    assert all(k < 0xFFFFF000 for *_, k in file_prog), file_prog
    name = f"r11c-d{secrets.token_hex(3)}"
    with ExitStack() as stack:
        _run("ip", "netns", "add", name)
        stack.callback(subprocess.run, ["ip", "netns", "del", name], check=False, timeout=30)
        _run(*_ns(name, "ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1"))
        _run(*_ns(name, "ip", "link", "set", "d0", "up"))
        script = ("import json; from pacsguard.ids.capture import compile_bpf, compile_live_bpf as c\n"
                  "print(json.dumps([c('vlan 100', 'd0'), c('port 104', 'd1') == compile_bpf('port 104')]))")
        got = subprocess.run(_ns(name, sys.executable, "-c", script), capture_output=True, text=True, timeout=30)
        dumped = subprocess.run(_ns(name, "dumpcap", "-i", "d0", "-f", "vlan 100", "-d"), capture_output=True,
                                text=True, timeout=30)
        down = subprocess.run(_ns(name, PACSGUARD, "ids", "live", "-i", "d1", "--bpf", "vlan 100", "--duration", "5"),
                              capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    live_prog, same = json.loads(got.stdout)
    listing = [line for line in dumped.stdout.splitlines() if line.startswith("(")]
    assert len(listing) == len(live_prog) and "ldb      [vlanp]" in listing[0], (listing, live_prog)
    assert live_prog[0] == [0x30, 0, 0, 0xFFFFF030] and live_prog != file_prog, live_prog
    assert same  # no VLAN term: the file's program, compiled without opening the (down) interface
    assert down.returncode == 2 and "Traceback" not in down.stderr, down.stderr
    assert "libpcap could not open interface 'd1': That device is not up" in down.stderr, down.stderr
    assert down.stderr.count("\n") == 1, down.stderr
