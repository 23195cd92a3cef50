"""Link, network and transport decoding of one captured frame, down to a TCP segment.

This is the general path; the reader inlines a fast path for the common case (Ethernet II, IPv4
without options, TCP) and calls :func:`decode_tcp` for everything else.  Nothing here allocates a
per-packet object except the returned tuple and the flow key.

Formats:

* Link types (tcpdump.org "Link-layer header types", draft-ietf-opsawg-pcaplinktype):
  NULL (0) and LOOP (108): 4-byte BSD address family, host byte order for NULL (either order is
  accepted) and network order for LOOP, AF_INET = 2 and AF_INET6 = 24, 28 or 30;
  EN10MB (1): Ethernet II, IEEE 802.1Q / 802.1ad VLAN tags (TPID 0x8100, 0x88a8, 0x9100) skipped,
  the outer and inner VLAN id appended to the flow key (the same addresses on two VLANs are two
  hosts) unless VLAN tracking is off (``vlans=False``: a SPAN port or trunk that tags one
  direction only, Suricata's ``vlan.use-for-tracking``); a priority tag (VLAN id 0, IEEE 802.1Q
  9.6: the frame belongs to the port's own VLAN) names no VLAN and is not part of the key;
  RAW (101, and IPV4 228 / IPV6 229): the frame starts with the IP header;
  LINUX_SLL (113): 16-byte cooked header, protocol type at offset 14;
  LINUX_SLL2 (276): 20-byte cooked header, protocol type at offset 0.
* IPv4 (RFC 791): header length from IHL, total length bounds the payload (Ethernet padding
  ignored); a total length of 0 on an unfragmented TCP packet whose frame holds payload is a
  capture taken on the sending host before segmentation offload (TSO/GSO, Linux BIG TCP): the
  frame's length is taken, as Wireshark does, and counted (``ip_length_from_frame``); fragments
  (MF set or a fragment offset) are counted and, when they carry TCP, handed to the reassembler
  of :mod:`.ipfrag`.
* IPv6 (RFC 8200 4): the extension headers a Linux receiver walks to reach TCP, however many
  (it sets no limit, so neither does the sensor: each is at least 8 octets): hop-by-hop (0)
  directly after the IPv6 header only (RFC 8200 4.3), routing (43) and destination options
  (60), each skipped by its length field.  Any other next header, hop-by-hop further in,
  mobility (135), HIP (139), shim6 (140), is a protocol Linux does not deliver (ICMPv6 parameter
  problem, the packet dropped) and is counted, not read; so is AH (RFC 4302, 51), which Linux
  delivers only through an IPsec security association for it (none: dropped); a fragment header
  (44) counts as a fragment and goes to :mod:`.ipfrag`.
* TCP (RFC 9293 section 3.1): data offset, flags, sequence and acknowledgment numbers.

A frame the capture cut short (its record's captured length below the original length: the snap
length) keeps its headers; the payload it lacks is reported to the reassembler as missing (a gap)
and the frame is counted in ``CaptureStats.snap_truncated``, the first one as a capture problem.
A frame captured whole that still holds less than its IP length is a packet Linux drops (an
evasion: the sensor would otherwise read padding as payload): it is dropped too and reported as
the anomaly ``ip-length-exceeds-frame``; so is such an IP fragment, before it reaches reassembly.
"""

from __future__ import annotations

import mmap
import struct
from typing import TYPE_CHECKING

from .ipfrag import note_truncated

if TYPE_CHECKING:
    from .ipfrag import IPDefragmenter
    from .reassembly import CaptureStats

__all__ = [
    "LINKTYPE_NULL",
    "LINKTYPE_ETHERNET",
    "LINKTYPE_RAW",
    "LINKTYPE_LOOP",
    "LINKTYPE_LINUX_SLL",
    "LINKTYPE_IPV4",
    "LINKTYPE_IPV6",
    "LINKTYPE_LINUX_SLL2",
    "SUPPORTED_LINKTYPES",
    "TCPSegment",
    "decode_tcp",
]

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
# Some old files carry the platform DLT_RAW values instead of LINKTYPE_RAW.
_LINKTYPE_RAW_ALIASES = (12, 14)

SUPPORTED_LINKTYPES = frozenset(
    {
        LINKTYPE_NULL,
        LINKTYPE_ETHERNET,
        LINKTYPE_RAW,
        LINKTYPE_LOOP,
        LINKTYPE_LINUX_SLL,
        LINKTYPE_IPV4,
        LINKTYPE_IPV6,
        LINKTYPE_LINUX_SLL2,
        *_LINKTYPE_RAW_ALIASES,
    }
)

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
_VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
_ETHERTYPE_NAMES = {
    0x0806: "arp",
    0x8035: "rarp",
    0x88CC: "lldp",
    0x8863: "pppoe-discovery",
    0x8864: "pppoe-session",
    0x888E: "eapol",
    0x88F7: "ptp",
    0x8847: "mpls",
    0x8848: "mpls",
    0x0842: "wake-on-lan",
    0x22F0: "avtp",
    0x8809: "slow-protocols",
}
_IPPROTO_NAMES = {
    1: "icmp",
    2: "igmp",
    17: "udp",
    41: "ipv6-in-ip",
    47: "gre",
    50: "esp",
    51: "ah",
    58: "icmpv6",
    59: "no-next-header",
    89: "ospf",
    103: "pim",
    112: "vrrp",
    132: "sctp",
}
# What Linux's ip6_protocol_deliver_rcu resubmits past (routing and destination options):
# hop-by-hop is parsed only right after the fixed header (ip6_rcv_finish), and every other next
# header, mobility, HIP or shim6 included, is an unknown protocol it drops.  AH (51) is IPsec's
# (xfrm6_rcv): without a security association for its SPI the packet is dropped (XfrmInNoStates),
# and a sensor cannot know the host's associations, so AH is a protocol of its own here, as for
# IPv4 ("ipv6-ah" in non_tcp), never read through.
_IPV6_SKIPPABLE = frozenset({43, 60})
_BSD_AF_INET6 = frozenset({24, 28, 30})

_U16 = struct.Struct("!H").unpack_from
_U32BE = struct.Struct("!I").unpack_from
_U32LE = struct.Struct("<I").unpack_from
_IPV4 = struct.Struct("!BxHxxHxB").unpack_from  # ver/ihl, total length, flags/fragment, protocol
_IPV6 = struct.Struct("!4xHB").unpack_from  # payload length, next header
_TCP = struct.Struct("!4xIIH").unpack_from  # seq, ack, data offset / flags

# (key, ip_version, seq, ack, flags, payload_start, payload_end, missing, tcp_header)
TCPSegment = tuple[bytes, int, int, int, int, int, int, int, int]


def _proto_name(ver: int, proto: int) -> str:
    return f"ipv{ver}-{_IPPROTO_NAMES.get(proto, f'proto-{proto}')}"


def decode_tcp(
    buf: bytes | mmap.mmap | memoryview,
    off: int,
    caplen: int,
    linktype: int,
    stats: CaptureStats,
    defrag: IPDefragmenter | None = None,
    ts: int = 0,
    vlans: bool = True,
) -> TCPSegment | None:
    """Decode the frame ``buf[off:off+caplen]`` of link type ``linktype`` down to TCP.

    Returns ``(key, ip_version, seq, ack, flags, payload_start, payload_end, missing, tcp_header)``
    where the payload is ``buf[payload_start:payload_end]`` (absolute offsets), ``key`` the
    directional 4-tuple bytes (see :mod:`.reassembly`), ``missing`` the payload bytes the IP header
    declares but the capture cut off and ``tcp_header`` the offset of the TCP header.  A frame is
    taken as cut by the capture only when its record says so (``stats.cut_at == off``: captured
    length below the original length); a complete frame shorter than its IP length is one Linux
    drops (``ip_rcv_core``: "skb->len < len"): reported to ``defrag.report`` as
    ``ip-length-exceeds-frame``, counted in ``non_tcp`` and not returned.  For anything else it
    counts the frame in ``stats`` (``non_tcp`` by protocol, or ``ip_fragments``) and returns
    ``None``; a fragment goes to ``defrag`` (at capture time ``ts``), which appends the datagram
    it completes to ``defrag.ready``.  ``buf`` slices must give ``bytes`` (``bytes``, ``mmap``),
    because the key is a slice.  ``vlans``: the frame's VLAN ids join the key (VLAN tracking).
    """
    end = off + caplen
    count = stats.count_non_tcp
    vlan = b""
    # ---- link layer -> (ethertype, network-layer offset)
    if linktype == LINKTYPE_ETHERNET:
        if caplen < 14:
            count("truncated-link-header")
            return None
        et = _U16(buf, off + 12)[0]
        p = off + 14
        while et in _VLAN_TPIDS:
            if p + 4 > end:
                count("truncated-link-header")
                return None
            vid = _U16(buf, p)[0] & 0x0FFF
            if vid and len(vlan) < 4:
                # The outer and inner VLAN id (IEEE 802.1Q 9.6: the TCI's low 12 bits) are part of
                # the connection's identity: VLANs may reuse addresses (Zeek's vlan/inner_vlan).
                # VLAN id 0 is a priority tag, not a VLAN: a host that sends priority-tagged
                # frames and receives untagged ones holds one connection, not two.
                vlan += vid.to_bytes(2, "big")
            et = _U16(buf, p + 2)[0]
            p += 4
        if not vlans:
            # not part of the key; still what the connection's events name (reader.generic)
            stats.frame_vlan = vlan
            vlan = b""
        if et < 0x0600:
            count("802.3-llc")
            return None
    elif linktype == LINKTYPE_LINUX_SLL:
        if caplen < 16:
            count("truncated-link-header")
            return None
        et = _U16(buf, off + 14)[0]
        p = off + 16
    elif linktype == LINKTYPE_LINUX_SLL2:
        if caplen < 20:
            count("truncated-link-header")
            return None
        et = _U16(buf, off)[0]
        p = off + 20
    elif (
        linktype == LINKTYPE_RAW
        or linktype == LINKTYPE_IPV4
        or linktype == LINKTYPE_IPV6
        or linktype in _LINKTYPE_RAW_ALIASES
    ):
        if caplen < 1:
            count("truncated-link-header")
            return None
        v = buf[off] >> 4
        et = ETH_P_IP if v == 4 else ETH_P_IPV6 if v == 6 else -v
        p = off
    elif linktype == LINKTYPE_NULL or linktype == LINKTYPE_LOOP:
        if caplen < 4:
            count("truncated-link-header")
            return None
        if linktype == LINKTYPE_LOOP:
            fam = _U32BE(buf, off)[0]
        else:
            fam = _U32LE(buf, off)[0]
            if fam > 0xFFFF:  # written on a big-endian host
                fam = _U32BE(buf, off)[0]
        et = ETH_P_IP if fam == 2 else ETH_P_IPV6 if fam in _BSD_AF_INET6 else -1
        p = off + 4
        if et < 0:
            count(f"null-family-{fam}")
            return None
    else:
        count(f"linktype-{linktype}")
        return None

    # ---- network layer -> (tcp offset, ip end, missing, key)
    if et == ETH_P_IP:
        if p + 20 > end:
            count("truncated-ipv4")
            return None
        vihl, totlen, frag, proto = _IPV4(buf, p)
        ihl = (vihl & 0x0F) << 2
        if totlen == 0 and not frag & 0x3FFF and _offloaded(buf, p + ihl, end, caplen, linktype):
            # Captured on the sending host before segmentation offload (TSO/GSO, BIG TCP): the
            # stack leaves the total length 0 and the frame is the packet (Wireshark: "reported
            # as 0, presumed to be because of TCP segmentation offload").
            totlen = end - p
            stats.ip_length_from_frame += 1
        if vihl >> 4 != 4 or ihl < 20 or totlen < ihl:
            count("malformed-ipv4")
            return None
        if frag & 0x3FFF:
            stats.ip_fragments += 1
            if defrag is not None and proto == 6:
                if p + totlen > end and stats.cut_at != off:
                    key = _fragment_key(buf, p + 12, p + 20, p + ihl, not frag & 0x1FFF, end)
                    _length_lie(buf, key, p, totlen, end - p, stats, defrag, ts)
                else:
                    defrag.add_v4(buf, p, ihl, totlen, end, frag, ts, vlan)
            return None
        if proto != 6:
            count(_proto_name(4, proto))
            return None
        ip_end = p + totlen
        tcp = p + ihl
        ver = 4
        if tcp + 4 > end:
            count("truncated-tcp")
            return None
        if ihl == 20:
            key = bytes(buf[p + 12 : p + 24])
        else:
            key = bytes(buf[p + 12 : p + 20]) + bytes(buf[tcp : tcp + 4])
    elif et == ETH_P_IPV6:
        if p + 40 > end:
            count("truncated-ipv6")
            return None
        if buf[p] >> 4 != 6:
            count("malformed-ipv6")
            return None
        plen, nh = _IPV6(buf, p)
        ip_end = p + 40 + plen if plen else end  # 0: jumbogram (RFC 2675), take the frame
        if not plen and nh != 0 and end - p > 60:
            # no hop-by-hop header, so no Jumbo Payload option: a frame captured before
            # segmentation offload (BIG TCP without the option), as for IPv4 above
            stats.ip_length_from_frame += 1
        tcp = p + 40
        limit = min(ip_end, end)
        if nh == 0:  # hop-by-hop: only here, as the first extension header (RFC 8200 4.3)
            if tcp + 2 > limit:
                count("truncated-ipv6")
                return None
            nh = buf[tcp]
            tcp += (buf[tcp + 1] + 1) << 3
        # No count limit (Linux sets none, so a limit would hide what the PACS reads); the walk is
        # bounded by the packet, since every header advances it by at least 8 octets.
        while True:
            if nh in _IPV6_SKIPPABLE:
                if tcp + 2 > limit:
                    count("truncated-ipv6")
                    return None
                nh2 = buf[tcp]
                tcp += (buf[tcp + 1] + 1) << 3
                nh = nh2
            elif nh == 44:
                stats.ip_fragments += 1
                if defrag is not None:
                    if ip_end > end and stats.cut_at != off:
                        first = tcp + 8 <= end and buf[tcp] == 6 and not _U16(buf, tcp + 2)[0] & 0xFFF8
                        key = _fragment_key(buf, p + 8, p + 40, tcp + 8, first, end)
                        _length_lie(buf, key, p, ip_end - p, end - p, stats, defrag, ts)
                    else:
                        defrag.add_v6(buf, p, tcp, ip_end, end, ts, vlan)
                return None
            else:
                break
        if nh != 6:
            count(_proto_name(6, nh))
            return None
        ver = 6
        if tcp + 4 > end:
            count("truncated-tcp")
            return None
        if tcp == p + 40:
            key = bytes(buf[p + 8 : p + 44])
        else:
            key = bytes(buf[p + 8 : p + 40]) + bytes(buf[tcp : tcp + 4])
    elif et < 0:
        count("malformed-ip-version")
        return None
    else:
        count(_ETHERTYPE_NAMES.get(et, f"ethertype-0x{et:04x}"))
        return None

    if vlan:
        key += vlan
    # ---- transport layer
    if tcp + 20 > end or tcp + 20 > ip_end:
        count("truncated-tcp")
        return None
    seq, ack, offflags = _TCP(buf, tcp)
    start = tcp + ((offflags >> 10) & 0x3C)
    if start < tcp + 20 or start > ip_end:
        count("malformed-tcp")
        return None
    if start > end:
        count("truncated-tcp")
        return None
    missing = 0
    if ip_end > end:
        if stats.cut_at != off:
            _length_lie(buf, key, p, ip_end - p, end - p, stats, defrag, ts)
            return None
        missing = ip_end - end
        ip_end = end
        note_truncated(stats, missing)
    return key, ver, seq, ack, offflags & 0x3F, start, ip_end, missing, tcp


def _offloaded(buf: bytes | mmap.mmap | memoryview, tcp: int, end: int, caplen: int, linktype: int) -> bool:
    """An IPv4 packet of total length 0 whose frame holds TCP payload past the TCP header: a packet
    captured before segmentation offload.  An Ethernet frame of the 60-byte minimum may end in
    padding (IEEE 802.3 4.2.3.3), never payload, so it does not count."""
    if tcp + 20 > end or (linktype == LINKTYPE_ETHERNET and caplen <= 60):
        return False
    return tcp + ((buf[tcp + 12] >> 2) & 0x3C) < end


def _fragment_key(buf: bytes | mmap.mmap | memoryview, addrs: int, addrs_end: int, data: int, first: bool,
                  end: int) -> bytes:
    """The directional key of a fragment, for reporting: its addresses, and its ports when it is a
    first fragment that carries them (later fragments have none: 0)."""
    ports = bytes(buf[data : data + 4]) if first and data + 4 <= end else bytes(4)
    return bytes(buf[addrs:addrs_end]) + ports


def _length_lie(
    buf: bytes | mmap.mmap | memoryview,
    key: bytes,
    p: int,
    claimed: int,
    present: int,
    stats: CaptureStats,
    defrag: IPDefragmenter | None,
    ts: int,
) -> None:
    """A whole frame (not cut by the capture) holds less than its IP header claims: Linux drops the
    packet (ip_rcv_core / ip6_rcv_core), so the PACS never reads its payload, nor does the sensor."""
    stats.count_non_tcp("ip-length-exceeds-frame")
    if defrag is None:
        return
    from .reassembly import StreamAnomaly, _endpoints, key_vlans  # here: reassembly imports this module's users

    ver, src, sport, dst, dport = _endpoints(key)
    defrag.report(StreamAnomaly(
        "ip-length-exceeds-frame", ts, src, sport, dst, dport, 0, claimed - present,
        f"IPv{ver} packet claims {claimed} bytes but the frame, captured whole, holds {present}: a Linux "
        "receiver discards it; its TCP segment is not inspected", vlan=key_vlans(key)))
