"""The File Meta Information of a Part-10 file (PS3.10 7.1): the 128-byte preamble, "DICM" and
group 0002, always Explicit VR Little Endian (PS3.10 7.1, PS3.5 7.1.2), for a data set received
over the network and written as it came (the Storage SCP of a store-and-forward route)."""

from __future__ import annotations

import struct
from typing import Final

PREAMBLE: Final = b"\x00" * 128
PREFIX: Final = b"DICM"

_SHORT = struct.Struct("<HH2sH")  # tag, VR, 16-bit length (PS3.5 7.1.2)
_LONG = struct.Struct("<HH2sHI")  # tag, VR, reserved, 32-bit length: OB, UN, ...


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return _LONG.pack(0x0002, element, vr, 0, len(value)) + value
    return _SHORT.pack(0x0002, element, vr, len(value)) + value


def _uid(uid: str) -> bytes:
    """A UI value padded to even length with a NUL (PS3.5 6.2)."""
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _text(text: str) -> bytes:
    """An SH/AE value padded to even length with a space (PS3.5 6.2)."""
    raw = text.encode("ascii")
    return raw + b" " if len(raw) % 2 else raw


def encode_file_meta(*, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str,
                     implementation_class_uid: str, implementation_version_name: str | None = None,
                     source_ae_title: str | None = None) -> bytes:
    """Preamble, "DICM" and the File Meta Information group (PS3.10 7.1, Table 7.1-1): what comes
    before the data set in a Part-10 file. Elements in ascending order, group length first."""
    elements = [
        _element(0x0001, b"OB", b"\x00\x01"),  # File Meta Information Version
        _element(0x0002, b"UI", _uid(sop_class_uid)),
        _element(0x0003, b"UI", _uid(sop_instance_uid)),
        _element(0x0010, b"UI", _uid(transfer_syntax_uid)),
        _element(0x0012, b"UI", _uid(implementation_class_uid)),
    ]
    if implementation_version_name:
        elements.append(_element(0x0013, b"SH", _text(implementation_version_name)))
    if source_ae_title:
        elements.append(_element(0x0016, b"AE", _text(source_ae_title.strip())))
    body = b"".join(elements)
    return PREAMBLE + PREFIX + _element(0x0000, b"UL", struct.pack("<I", len(body))) + body
