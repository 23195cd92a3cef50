"""Protocol-neutral sniffing: what the first bytes of a connection look like.

A protocol adapter asks these when bytes on its port are not its protocol (DICOM's
``non-dicom`` observation); the passive sensor asks :func:`looks_like_tls` to leave encrypted
streams alone.  Nothing here knows DICOM or HL7.
"""

from __future__ import annotations

from typing import Final

__all__ = ["guess_protocol", "looks_like_tls"]

#: TLS ContentType values that open a connection: alert (21), handshake (22) (RFC 8446 5.1).
_TLS_OPENING_TYPES: Final = (0x15, 0x16)
_HTTP_METHODS: Final = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"OPTIONS ", b"DELETE ", b"CONNECT ", b"PRI * ")


def looks_like_tls(head: bytes | bytearray | memoryview) -> bool:
    """Do the bytes start with a TLS record header (RFC 8446 5.1): a handshake or alert record
    whose legacy_record_version is 3.0 ... 3.4?"""
    return len(head) >= 3 and head[0] in _TLS_OPENING_TYPES and head[1] == 3 and head[2] <= 4


def guess_protocol(first_bytes: bytes | bytearray | memoryview) -> str:
    """What bytes that are not the expected protocol look like: tls, http, ssh, smb, rdp, text
    or unknown."""
    b = bytes(first_bytes[:16])
    if looks_like_tls(b):
        return "tls"
    if b.startswith(_HTTP_METHODS):
        return "http"
    if b.startswith(b"SSH-"):
        return "ssh"
    if len(b) >= 8 and b[4:8] in (b"\xffSMB", b"\xfeSMB"):  # NetBIOS session header, then SMB1/SMB2
        return "smb"
    if len(b) >= 4 and b[0] == 0x03 and b[1] == 0x00:  # TPKT version 3 (RFC 1006), RDP's transport
        return "rdp"
    if b and all(32 <= c < 127 or c in (9, 10, 13) for c in b):
        return "text"
    return "unknown"
