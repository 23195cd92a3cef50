"""A de-identified data set as Part-10 bytes (PS3.10 7.1), fast where it can be: every element the
engine kept is still the undecoded bytes pydicom read, so in the uncompressed and encapsulated
transfer syntaxes (PS3.5 A.1, A.2, A.3, A.4) its header is packed here and its value copied as it
was, instead of going element by element through pydicom's general writer. New and changed
elements are encoded here when they are plain ASCII text, by pydicom otherwise (PS3.5 7.1);
sequences get undefined lengths with delimitation items (PS3.5 7.5.1). Anything else (deflate, a
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
from pydicom.filewriter import dcmwrite, write_data_element
from pydicom.multival import MultiValue
from pydicom.uid import UID, ImplicitVRLittleEndian

from pacsguard.dicom.vr import LONG_VRS

#: String VRs whose ASCII values need no character set (PS3.5 6.1.2.3: the default repertoire).
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR",
                       "UT"})
_UNDEFINED = 0xFFFFFFFF


class _Slow(Exception):
    """This data set needs pydicom's general writer."""


class _Syntax:
    """How one transfer syntax encodes element headers (PS3.5 7.1.1-7.1.3) and delimiters (7.5)."""

    __slots__ = ("implicit", "little", "short", "long", "plain", "item", "item_end", "sequence_end")

    def __init__(self, implicit: bool, little: bool) -> None:
        order = "<" if little else ">"
        self.implicit, self.little = implicit, little
        self.short = struct.Struct(order + "HH2sH")
        self.long = struct.Struct(order + "HH2s2xL")
        self.plain = struct.Struct(order + "HHL")
        self.item = self.plain.pack(0xFFFE, 0xE000, _UNDEFINED)
        self.item_end = self.plain.pack(0xFFFE, 0xE00D, 0)
        self.sequence_end = self.plain.pack(0xFFFE, 0xE0DD, 0)

    def header(self, group: int, element: int, vr: str | None, length: int) -> bytes:
        if self.implicit:
            return self.plain.pack(group, element, length)
        if vr is None or len(vr) != 2:
            raise _Slow  # no VR to write, or an ambiguous one ("US or SS") only pydicom resolves
        if vr in LONG_VRS:
            return self.long.pack(group, element, vr.encode("ascii"), length)
        if length > 0xFFFF:
            raise _Slow  # pydicom turns it into UN (PS3.5 6.2.2)
        return self.short.pack(group, element, vr.encode("ascii"), length)


_IMPLICIT_LE = _Syntax(implicit=True, little=True)
_EXPLICIT_LE = _Syntax(implicit=False, little=True)  # also the File Meta Information's (PS3.10 7.1)
_EXPLICIT_BE = _Syntax(implicit=False, little=False)


def encode_file(ds: Dataset) -> bytes:
    """``ds`` with its ``file_meta`` as a Part-10 file: preamble, "DICM", File Meta Information
    (completed as PS3.10 7.1 requires) and the data set in the meta's transfer syntax."""
    syntax = _fast_syntax(ds)
    if syntax is not None:
        try:
            return _encode_fast(ds, syntax)
        except Exception:  # _Slow, or a value only pydicom's own writer resolves: let it try
            pass
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def _fast_syntax(ds: Dataset) -> _Syntax | None:
    """How the fast path writes this data set; None when it cannot."""
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID", None) if meta is not None else None
    if uid is None:
        return None
    uid = UID(uid)
    if uid == ImplicitVRLittleEndian:
        syntax = _IMPLICIT_LE
    elif uid.is_transfer_syntax and not uid.is_implicit_VR and not uid.is_deflated:
        syntax = _EXPLICIT_LE if uid.is_little_endian else _EXPLICIT_BE
    else:
        return None
    # The raw bytes are in the encoding the file was read with: they can be copied only into the same.
    if ds.original_encoding != (syntax.implicit, syntax.little) or ds.original_character_set != ds._character_set:
        return None
    return syntax


def _encode_fast(ds: Dataset, syntax: _Syntax) -> bytes:
    meta: FileMetaDataset = ds.file_meta
    validate_file_meta(meta, enforce_standard=True)  # adds what PS3.10 7.1 requires, raises if it cannot
    # The File Meta Information is explicit VR little endian, led by its group length (PS3.10 7.1).
    group: list[bytes] = []
    _encode_dataset(meta, _EXPLICIT_LE, default_encoding, group, skip=0x00020000)
    length = sum(map(len, group))
    preamble = getattr(ds, "preamble", None) or b"\0" * 128
    parts = [preamble, b"DICM", _EXPLICIT_LE.short.pack(0x0002, 0x0000, b"UL", 4), struct.pack("<L", length), *group]
    _encode_dataset(ds, syntax, default_encoding, parts)
    return b"".join(parts)


def _encode_dataset(ds: Dataset, syntax: _Syntax, parent: str | list[str], parts: list[bytes],
                    skip: int | None = None) -> None:
    charset = ds.get_item(0x00080005)
    encodings: Any = parent if charset is None else (ds.SpecificCharacterSet or parent)
    encodings = convert_encodings(encodings)
    for elem in stored_elements(ds):
        tag = int(elem.tag)  # plain int: pydicom's tag type compares in Python
        group, element = tag >> 16, tag & 0xFFFF
        if (element == 0 and group > 6) or tag == skip:
            continue  # retired group lengths are not written (PS3.5 7.2); ``skip`` is recomputed
        if isinstance(elem, RawDataElement):
            value = elem.value
            if value is None:
                if elem.length:
                    raise _Slow  # deferred: pydicom reads it back from the file
                value = b""  # pydicom reads a zero-length value as None
            length = _UNDEFINED if elem.length == _UNDEFINED else len(value)
            parts.append(syntax.header(group, element, elem.VR, length))
            parts.append(value)
            if length == _UNDEFINED:
                parts.append(syntax.sequence_end)
        elif elem.VR == "SQ":
            parts.append(syntax.header(group, element, "SQ", _UNDEFINED))
            for item in elem.value or ():
                parts.append(syntax.item)
                _encode_dataset(item, syntax, encodings, parts)
                parts.append(syntax.item_end)
            parts.append(syntax.sequence_end)
        else:
            parts.append(_encode_element(elem, syntax, encodings))


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


def stored_elements(ds: Dataset) -> list[DataElement | RawDataElement]:
    """The elements of ``ds`` in tag order as pydicom stores them (undecoded ones still raw).
    Read from the data set's element dict directly: ``Dataset.elements()`` gives the same, but
    through pydicom's Python-level tag comparisons, which cost more than the de-identification of
    most attributes."""
    return sorted(ds._dict.values(), key=_tag_of)


def _tag_of(elem: DataElement | RawDataElement) -> int:
    return int(elem.tag)


def _encode_element(elem: DataElement, syntax: _Syntax, encodings: list[str]) -> bytes:
    text = _ascii_text(elem)
    if text is not None:
        return syntax.header(elem.tag.group, elem.tag.element, elem.VR, len(text)) + text
    if not syntax.implicit and len(elem.VR or "") != 2:
        raise _Slow  # an ambiguous VR ("US or SS") pydicom resolves only in its own writer
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = syntax.little, syntax.implicit
    write_data_element(buf, elem, encodings)
    return buf.getvalue()
