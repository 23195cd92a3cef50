"""Replacing one top level data element's value in an encoded data set (PS3.5 7.1, 7.5), for the
small data sets a gateway may rewrite (C-FIND responses), leaving every other byte as it was."""

from __future__ import annotations

import struct

from .dataset import _LONG_VRS, _UNDEFINED, _VR_UN, _looks_explicit, transfer_syntax_encoding
from .pdu import Buffer


def replace_top_level_value(data: Buffer, tag: int, value: bytes, transfer_syntax_uid: str | None) -> bytes | None:
    """*data* with the value of its top level element *tag* replaced by *value* (padded with a
    space to an even length, PS3.5 7.1.1), its length field updated; None when the element is
    absent, the data set is deflated or its structure cannot be followed up to the element.

    Sequences of defined or undefined length are stepped over, never entered for a match: only a
    top level element is replaced (PS3.5 7.5, nesting).
    """
    implicit, little, deflated = transfer_syntax_encoding(transfer_syntax_uid)
    if deflated:
        return None
    if len(value) % 2:
        value += b" "
    size = len(data)
    if size >= 6:
        implicit = not _looks_explicit(data, 0)  # as pydicom: the bytes over the declared syntax
    order = "<" if little else ">"
    # Encoding of each open undefined-length sequence or item (UN content is Implicit VR LE, PS3.5 6.2.2).
    stack: list[tuple[bool, str]] = []
    pos = 0
    while size - pos >= 8:
        cur_implicit, cur_order = stack[-1] if stack else (bool(implicit), order)
        group, element, length = struct.unpack_from(cur_order + "HHI", data, pos)
        if group == 0xFFFE:
            pos += 8
            if element == 0xE000 and stack:
                if length == _UNDEFINED:
                    stack.append(stack[-1])
                else:
                    pos += length
            elif element in (0xE00D, 0xE0DD) and stack:
                stack.pop()
            else:
                return None
            continue
        current = (group << 16) | element
        if not stack and current > tag:
            return None  # elements ascend (PS3.5 7.1): it is not there
        if cur_implicit:
            vr, length_at, length_size = 0, pos + 4, 4
        else:
            vr = (data[pos + 4] << 8) | data[pos + 5]
            length_at, length_size = (pos + 8, 4) if vr in _LONG_VRS else (pos + 6, 2)
            if size - length_at < length_size:
                return None
            length = struct.unpack_from(cur_order + ("I" if length_size == 4 else "H"), data, length_at)[0]
        value_start = length_at + length_size
        if length == _UNDEFINED:
            stack.append((True, "<") if vr == _VR_UN else (cur_implicit, cur_order))
            pos = value_start
            continue
        value_end = value_start + length
        if value_end > size:
            return None
        if not stack and current == tag:
            if length_size == 2 and len(value) > 0xFFFF:
                return None
            new_length = struct.pack(cur_order + ("I" if length_size == 4 else "H"), len(value))
            return b"".join((bytes(data[:length_at]), new_length, value, bytes(data[value_end:])))
        pos = value_end
    return None
