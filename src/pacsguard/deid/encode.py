"""A de-identified data set as Part-10 bytes (PS3.10 7.1), fast where it can be: every element the
engine kept is still the undecoded bytes pydicom read, so in the little endian transfer syntaxes
(PS3.5 A.1, A.2, A.4: encapsulated pixel data is explicit VR little endian too) its header is
packed here and its value copied as it was, instead of going element by element through pydicom's
general writer. New and changed elements are encoded by pydicom (PS3.5 7.1); sequences get
undefined lengths with delimitation items (PS3.5 7.5.1). Anything else (deflate, big endian, a
data set read in another encoding than it will be written in, a value pydicom kept on disk) is
written by pydicom's ``dcmwrite``."""

from __future__ import annotations

import io
import struct
from typing import Any

from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_data_element, write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.uid import UID, ImplicitVRLittleEndian

#: VRs whose explicit VR header has 2 reserved bytes and a 32-bit length (PS3.5 7.1.2).
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
#: String VRs whose ASCII values need no character set (PS3.5 6.1.2.3: the default repertoire).
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR",
                       "UT"})
_UNDEFINED = 0xFFFFFFFF
_ITEM = struct.pack("<HHL", 0xFFFE, 0xE000, _UNDEFINED)
_ITEM_END = struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
_SEQUENCE_END = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
_IMPLICIT = struct.Struct("<HHL")
_EXPLICIT_SHORT = struct.Struct("<HH2sH")
_EXPLICIT_LONG = struct.Struct("<HH2s2xL")


class _Slow(Exception):
    """This data set needs pydicom's general writer."""


def encode_file(ds: Dataset) -> bytes:
    """``ds`` with its ``file_meta`` as a Part-10 file: preamble, "DICM", File Meta Information
    (completed as PS3.10 7.1 requires) and the data set in the meta's transfer syntax."""
    implicit = _fast_encoding(ds)
    if implicit is not None:
        try:
            return _encode_fast(ds, implicit)
        except Exception:  # _Slow, or a value only pydicom's own writer resolves: let it try
            pass
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def _fast_encoding(ds: Dataset) -> bool | None:
    """Whether the fast path writes implicit VR (True) or explicit VR (False) little endian; None
    when it cannot write this data set."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID", None) if meta is not None else None
    if syntax is None:
        return None
    syntax = UID(syntax)
    if syntax == ImplicitVRLittleEndian:
        implicit = True
    elif syntax.is_transfer_syntax and syntax.is_little_endian and not syntax.is_implicit_VR \
            and not syntax.is_deflated:
        implicit = False
    else:
        return None
    # The raw bytes are in the encoding the file was read with: they can be copied only into the same.
    if ds.original_encoding != (implicit, True) or ds.original_character_set != ds._character_set:
        return None
    return implicit


def _encode_fast(ds: Dataset, implicit: bool) -> bytes:
    meta: FileMetaDataset = ds.file_meta
    validate_file_meta(meta, enforce_standard=True)  # adds what PS3.10 7.1 requires, raises if it cannot
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    preamble = getattr(ds, "preamble", None) or b"\0" * 128
    head.write(preamble)
    head.write(b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    parts = [head.getvalue()]
    _encode_dataset(ds, implicit, default_encoding, parts)
    return b"".join(parts)


def _encode_dataset(ds: Dataset, implicit: bool, parent: str | list[str], parts: list[bytes]) -> None:
    charset = ds.get_item(0x00080005)
    encodings: Any = parent if charset is None else (ds.SpecificCharacterSet or parent)
    encodings = convert_encodings(encodings)
    for tag in sorted(ds.keys()):
        if tag.element == 0 and tag.group > 6:
            continue  # retired group lengths are not written (PS3.5 7.2)
        elem = ds.get_item(tag)
        group, element = tag.group, tag.element
        if isinstance(elem, RawDataElement):
            value = elem.value
            if value is None:
                raise _Slow  # deferred: pydicom reads it back from the file
            length = _UNDEFINED if elem.length == _UNDEFINED else len(value)
            parts.append(_header(group, element, elem.VR, length, implicit))
            parts.append(value)
            if length == _UNDEFINED:
                parts.append(_SEQUENCE_END)
        elif elem.VR == "SQ":
            parts.append(_header(group, element, "SQ", _UNDEFINED, implicit))
            for item in elem.value or ():
                parts.append(_ITEM)
                _encode_dataset(item, implicit, encodings, parts)
                parts.append(_ITEM_END)
            parts.append(_SEQUENCE_END)
        else:
            parts.append(_encode_element(elem, implicit, encodings))


def _ascii_text(elem: DataElement) -> bytes | None:
    """The value of a string element that is plain ASCII (the dummies, keyed UIDs and pseudonyms the
    engine writes), encoded and padded to even length (PS3.5 6.2: NUL after a UID, else a space);
    None for anything else, which pydicom encodes with the data set's character set."""
    vr, value = elem.VR, elem.value
    if vr not in _TEXT_VRS:
        return None
    if isinstance(value, str):
        joined = value
    elif isinstance(value, list | MultiValue) and all(isinstance(v, str) for v in value):
        joined = "\\".join(value)
    else:
        return None
    if not joined.isascii():
        return None
    data = joined.encode("ascii")
    if len(data) % 2:
        data += b"\0" if vr == "UI" else b" "
    return data


def _header(group: int, element: int, vr: str | None, length: int, implicit: bool) -> bytes:
    if implicit:
        return _IMPLICIT.pack(group, element, length)
    if vr is None or len(vr) != 2:
        raise _Slow  # no VR to write
    if vr in _LONG_VRS:
        return _EXPLICIT_LONG.pack(group, element, vr.encode("ascii"), length)
    if length > 0xFFFF:
        raise _Slow  # pydicom turns it into UN (PS3.5 6.2.2)
    return _EXPLICIT_SHORT.pack(group, element, vr.encode("ascii"), length)


def _encode_element(elem: DataElement, implicit: bool, encodings: list[str]) -> bytes:
    if not implicit and len(elem.VR or "") != 2:
        raise _Slow  # an ambiguous VR ("US or SS") pydicom resolves only in its own writer
    text = _ascii_text(elem)
    if text is not None:
        return _header(elem.tag.group, elem.tag.element, elem.VR, len(text), implicit) + text
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, implicit
    write_data_element(buf, elem, encodings)
    return buf.getvalue()
