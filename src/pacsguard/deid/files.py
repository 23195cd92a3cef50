"""One Part-10 file (PS3.10 7.1) in, one de-identified file out, or nothing: a file that cannot be
read whole, or de-identified safely, or written and read back, is withheld and reported. In a
folder an output never replaces another object's file: two inputs with one SOP Instance UID
(PS3.3 C.12.1.1.1 says it is unique; modalities and test corpora still repeat them) would
otherwise leave one file where the manifest said two were written."""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from pacsguard.deid import charset
from pacsguard.deid.dictionary import known_vr
from pacsguard.deid.encode import encode_file
from pacsguard.deid.engine import SOP_INSTANCE_UID, Engine, Report, Withheld, _text_of
from pacsguard.deid.pixels import remove_embedded_overlays, remove_jpeg_text
from pacsguard.dicom.vr import LONG_VRS, VRS
from pacsguard.scan.config import ScanLimits

#: How far a deflated data set (PS3.5 A.5) may inflate before it is withheld as a deflate bomb: the
#: limit `pacsguard scan` reports structure.deflate-bomb at (scan.limits.max_inflated); the
#: command line passes the configured one.
MAX_INFLATED: int = ScanLimits.model_fields["max_inflated"].default
#: Inflated bytes produced (and dropped) at a time while a deflated data set is measured.
_INFLATE_STEP = 4 * 1024 * 1024


@dataclass(slots=True)
class FileResult:
    source: Path
    output: Path | None = None
    withheld: str = ""
    report: Report = field(default_factory=Report)


def _failure(exc: Exception) -> str:
    """What went wrong, for the manifest and the console. Sequences nested in sequences (PS3.5 7.5)
    are read and de-identified recursively: an object nesting them some hundred levels deep (no
    IOD comes near: a crafted file) exhausts Python's recursion limit, which says nothing of where."""
    if isinstance(exc, RecursionError):
        return "its sequences nest too deeply to be followed (hundreds of levels; no IOD nests so deep)"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def read_whole(path: Path, max_inflated: int = MAX_INFLATED) -> Dataset:
    """Read and decode every element now (pydicom defers values), so a file that fails after some
    offset fails here, before anything is changed. A deflated data set that inflates past
    ``max_inflated`` bytes is withheld before it is inflated (pydicom inflates it whole, in
    memory). Raises Withheld."""
    bomb = _deflate_bomb(path, max_inflated)
    if bomb:
        raise Withheld(bomb)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(path)
            end = _raw_end(ds)  # before _cut_off decodes sequences: a decoded element has no offsets
            # A top-level element with no VR of PS3.5 is the cause of what follows it (its length
            # is a guess): named before the cut its guessed length makes.
            unknown = _unknown_vr(ds)
            cut = "" if unknown else _cut_off(ds)
    except zlib.error as exc:  # the deflate stream (RFC 1951, PS3.5 A.5) stops early or is damaged
        raise Withheld(_not_inflated(path, exc)) from None
    except (FileNotFoundError, PermissionError) as exc:  # a broken link, a file gone or locked
        raise Withheld(f"cannot be read: {exc.strerror}") from None
    except InvalidDicomError as exc:  # no preamble and DICM (pydicom's other use is in RAISE mode only)
        raise Withheld(_not_part10(path) if "DICM" in str(exc) else f"not readable as DICOM: {_failure(exc)}") from None
    except Exception as exc:  # pydicom raises many types for broken input; every one means withhold
        where = _walk_unread(path)  # pydicom's "No tag to read at ..." does not say the file is cut
        raise Withheld(where or f"not readable as DICOM: {_failure(exc)}") from None
    if cut:
        raise Withheld(f"the file is cut off inside {cut}")
    unknown = unknown or _unknown_vr(ds)  # now in the items _cut_off decoded too
    if unknown:
        raise Withheld(unknown)
    early = _ends_early(path, end) if end is not None else _walk_cut(path, ds.file_meta, _encoding_of(ds))
    if early:
        raise Withheld(_out_of_order(ds) or early)
    if "SOPInstanceUID" not in ds:
        raise Withheld("not a composite instance: no SOP Instance UID")
    short = _short_pixel_data(ds)
    if short:
        raise Withheld(short)
    wrong = charset.check(ds)  # text misread would be half de-identified (a name left in a description)
    if wrong:
        raise Withheld(wrong)
    charset.decode_own_sets(ds)  # a set pydicom does not know (ISO_IR 203) is read here
    return ds


def _deflate_bomb(path: Path, max_inflated: int) -> str:
    """Why a deflated data set (PS3.5 A.5) is not read: it inflates past ``max_inflated`` bytes (a
    deflate bomb: 1.5 MB that inflate to 1.5 GiB). Measured as a stream, each step's output dropped,
    so the measure costs a few MiB whatever the file holds; '' for every other file, and for a
    stream that does not inflate (read_whole then says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            syntax = read_file_meta_info(path).get("TransferSyntaxUID", None)
        if syntax is None or not UID(str(syntax)).is_deflated:
            return ""
        with open(path, "rb") as f:
            _walk_meta(f)
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate (PS3.5 A.5, RFC 1951)
            inflated, pending = 0, b""
            while not inflater.eof:
                if not pending:
                    pending = f.read(1024 * 1024)
                    if not pending:
                        break
                inflated += len(inflater.decompress(pending, _INFLATE_STEP))
                pending = inflater.unconsumed_tail
                if inflated > max_inflated:
                    return (f"the deflated data set inflates past {max_inflated:,} bytes, the limit "
                            f"scan.limits.max_inflated (a deflate bomb, structure.deflate-bomb as "
                            f"`pacsguard scan` reports it): not inflated further")
    except Exception:  # noqa: BLE001 - no meta, a damaged stream: read_whole names what is wrong
        return ""
    return ""


def _cut_off(ds: Dataset) -> str:
    """Decode every element, items included; name the first whose value is shorter than its
    declared length (pydicom keeps what the file still had; dcmtk calls it a premature end)."""
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        if isinstance(raw, RawDataElement) and raw.length != 0xFFFFFFFF and raw.value is not None:
            if len(raw.value) < raw.length:
                return f"({tag.group:04X},{tag.element:04X})" + _phantom(tag)
        if raw.VR != "SQ" and (raw.VR not in (None, "UN") or _dictionary_vr(tag) != "SQ"):
            continue  # other values stay undecoded: they are written back as read
        if raw.VR == "UN" and isinstance(raw, RawDataElement) and raw.is_little_endian is False:
            # A sequence written as UN holds its items in Implicit VR Little Endian whatever the
            # transfer syntax (PS3.5 6.2.2), as the engine reads one (_parse_un_sequence); pydicom
            # reads it in the file's byte order, so in an Explicit VR Big Endian file every tag in
            # it came out byte-swapped and the whole file was withheld as cut off.
            ds[tag] = raw._replace(is_implicit_VR=True, is_little_endian=True)
        elem = ds[tag]
        if elem.VR == "SQ":
            for item in elem.value or ():
                inner = _cut_off(item)
                if inner:
                    return inner
    return ""


def _not_part10(path: Path) -> str:
    """Why a file is no DICOM file, in the words of PS3.10 7.1 rather than pydicom's (whose "Use
    force=True" is advice to a programmer): a DICOM file begins with a 128-byte preamble and
    "DICM". A data set written without them (a raw dump, some older exports) is not read either:
    without the File Meta Information its transfer syntax is a guess."""
    size = path.stat().st_size
    if size == 0:
        return "not a DICOM file: it is empty"
    if size < 132:
        return (f"not a DICOM file: it is {size} bytes, shorter than the 128-byte preamble and 'DICM' "
                "prefix a DICOM file begins with (PS3.10 7.1)")
    return ("not a DICOM file: no 'DICM' prefix after the 128-byte preamble (PS3.10 7.1); a data set "
            "without File Meta Information is not read")


def _phantom(tag: BaseTag) -> str:
    """What to add when the element a file stops inside has a public tag no attribute has (PS3.6):
    then it is most likely no element at all but bytes read as one, because an element before it
    declares a wrong length (a Patient's Name of 15 bytes said to be 48), and "cut off inside
    (2E30,2E31)" alone sent the administrator looking for a truncated transfer and a tag the file
    does not hold. Private (odd) groups and group lengths are not judged."""
    if tag.group & 1 or tag.element == 0 or known_vr(int(tag)) is not None:
        return ""
    return ", a tag no attribute has: an element before it probably declares a wrong length"


def _unknown_vr(ds: Dataset) -> str:
    """Name the first element, items included, whose explicit VR is none of PS3.5 6.2's (Table
    6.2-1): pydicom reads one with a 16-bit length and keeps its bytes, and the engine wrote a kept
    one back under that VR, a file dcmtk and dciodvfy do not read (Modality as 'Cs'). Its length
    form is a guess and its value cannot be checked: the file is withheld (issue 20: invalid VRs)."""
    for tag in ds.keys():
        elem = ds.get_item(tag)
        vr = elem.VR
        # "OB or OW" and the like are pydicom's own, from its dictionary, for an implicit VR
        # element it read (a file whose data set is implicit VR though its meta says explicit).
        # An element that is no element (bytes read as one after a wrong length) says so (_phantom).
        why = _phantom(tag) or ": its length and value cannot be read with certainty"
        if vr is not None and vr not in VRS and " or " not in vr:
            return (f"({tag.group:04X},{tag.element:04X}) has VR {vr!r}, which is not a value representation "
                    f"of PS3.5 6.2{why}")
        if vr is None and isinstance(elem, RawDataElement) and elem.is_implicit_VR is False:
            # pydicom reads VR bytes that are no letters (00 00) as implicit VR, its length as 32 bits
            return f"({tag.group:04X},{tag.element:04X}) has no VR in an Explicit VR data set (PS3.5 7.1.2){why}"
        if vr == "SQ" and not isinstance(elem, RawDataElement):  # sequences _cut_off decoded
            for item in elem.value or ():
                inner = _unknown_vr(item)
                if inner:
                    return inner
    return ""


def _out_of_order(ds: Dataset) -> str:
    """Name two top-level elements stored against ascending tag order (PS3.5 7.1: the elements of a
    data set are ordered by increasing tag, each at most once), '' if none are. pydicom
    reads such a file into tag order, so its last element by tag is not the last in the file and
    the file looked cut off ("56 bytes after its last whole element") when it was whole."""
    stored = sorted((e for e in ds._dict.values() if isinstance(e, RawDataElement)), key=lambda e: e.value_tell)
    for before, after in zip(stored, stored[1:], strict=False):
        if int(after.tag) < int(before.tag):
            return (f"its elements are not in ascending tag order (PS3.5 7.1): ({after.tag.group:04X},"
                    f"{after.tag.element:04X}) is stored after ({before.tag.group:04X},{before.tag.element:04X})")
    return ""


def _raw_end(ds: Dataset) -> int | None:
    """Where the last top-level element ends in the file, as read (PS3.5 7.1: its value offset
    plus its length); None when that is unknown: a deflated file (offsets are in the inflated
    stream), an element already decoded or of undefined length, or no element at all. Taken
    before anything is decoded: decoding a sequence replaces its raw element, offsets and all."""
    if ds.file_meta.get("TransferSyntaxUID", None) == DeflatedExplicitVRLittleEndian or not ds._dict:
        return None
    last = ds._dict[max(ds._dict)]
    if not isinstance(last, RawDataElement) or last.length == 0xFFFFFFFF:
        return None
    return int(last.value_tell) + int(last.length)


def _ends_early(path: Path, end: int | None) -> str:
    """The last element must end where the file ends: pydicom stops silently at an element header
    cut short (fewer than 8 bytes left), dropping everything after it (PS3.5 7.1)."""
    if end is None:
        return ""
    extra = path.stat().st_size - end
    if extra < 0:
        return f"the file is cut off: its last element runs {-extra} bytes past the end"
    return f"the file is cut off: {extra} bytes after its last whole element" if extra else ""


_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


class _Ends(Exception):
    """The bytes stop before a header or value the structure still promises (PS3.5 7.1, 7.5)."""

    def __init__(self, where: str, *, header: bool = False) -> None:
        super().__init__(where)
        self.where, self.header = where, header


class _Unknown(Exception):
    """A structure the walk does not follow (a VR it does not know): no verdict, pydicom's stands."""


def _not_inflated(path: Path, exc: zlib.error) -> str:
    """Why a deflated data set does not inflate: zlib's Z_BUF_ERROR (-5) means its stream ends
    before its final block, i.e. the file was cut off."""
    if "Error -5" in str(exc):
        return (f"the deflated data set is cut off: the file ends at byte {path.stat().st_size} "
                "before the deflate stream's final block")
    return f"the deflated data set does not inflate: {str(exc)[:200]}"


def _walk_unread(path: Path) -> str:
    """After pydicom failed: whether the data set stops short (by _walk_cut), '' if it does not or
    the file meta cannot be read either."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta = read_file_meta_info(path)
        syntax = UID(str(meta.TransferSyntaxUID))
        encoding = (syntax.is_implicit_VR, syntax.is_little_endian)
    except Exception:  # no usable meta: pydicom's own message stands
        return ""
    return _walk_cut(path, meta, encoding)


def _walk_cut(path: Path, meta: Dataset, encoding: tuple[bool, bool]) -> str:
    """Where _raw_end cannot tell (the last top-level element has undefined length, or the data set
    is deflated and offsets are in the inflated stream), walk the element headers of the data set
    itself, through items and delimiters (PS3.5 7.1, 7.5), and name where it stops short: pydicom
    accepts a file that ends 1-7 bytes into the header after an undefined-length sequence, or an
    inflated data set cut the same way, as if it ended at the last whole element."""
    deflated = meta.get("TransferSyntaxUID", None) == DeflatedExplicitVRLittleEndian
    implicit, little = (False, True) if deflated else encoding
    with open(path, "rb") as f:
        try:
            _walk_meta(f)
            start = f.tell()
            if deflated:
                stream = _Bytes(zlib.decompress(f.read(), -zlib.MAX_WBITS))
                return _walk_top(stream, implicit, little, f"byte {len(stream.data)} of its inflated data set "
                                 f"(deflated from byte {start} of the file)")
            stream = _File(f)
            return _walk_top(stream, implicit, little, f"byte {stream.size} of the file")
        except (_Unknown, zlib.error, struct.error):
            return ""


def _encoding_of(ds: Dataset) -> tuple[bool, bool]:
    implicit, little = getattr(ds, "original_encoding", (None, None))
    return bool(implicit), little is not False


class _Bytes:
    """Reading from bytes in memory (an inflated data set)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int) -> bytes:
        chunk = self.data[self.pos:self.pos + n]
        self.pos += len(chunk)
        return chunk

    def skip(self, n: int) -> bool:
        """Move n bytes on; False when fewer are left."""
        if self.pos + n > len(self.data):
            return False
        self.pos += n
        return True

    def at_end(self) -> bool:
        return self.pos >= len(self.data)


class _File(_Bytes):
    """Reading a file by its headers, seeking over values (Pixel Data is never read)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.size = os.fstat(f.fileno()).st_size
        self.pos = f.tell()

    def read(self, n: int) -> bytes:
        self.f.seek(self.pos)
        chunk: bytes = self.f.read(n)
        self.pos += len(chunk)
        return chunk

    def skip(self, n: int) -> bool:
        if self.pos + n > self.size:
            return False
        self.pos += n
        return True

    def at_end(self) -> bool:
        return self.pos >= self.size


def _walk_meta(f: BinaryIO) -> None:
    """Past the preamble, DICM and the group 0002 elements (PS3.10 7.1: explicit VR little endian)."""
    f.seek(128)
    if f.read(4) != b"DICM":
        raise _Unknown
    while True:
        at = f.tell()
        head = f.read(8)
        if len(head) < 8 or struct.unpack("<H", head[:2])[0] != 0x0002:
            f.seek(at)
            return
        vr = head[4:6].decode("latin-1")
        if vr in LONG_VRS:
            length = struct.unpack("<L", f.read(4))[0]
        elif vr in VRS:
            length = struct.unpack("<H", head[6:8])[0]
        else:
            raise _Unknown
        f.seek(f.tell() + length)


def _walk_top(stream: _Bytes, implicit: bool, little: bool, end: str) -> str:
    """'' when the top-level data set ends exactly at its last whole element, else what stops short
    and where."""
    last = ""
    try:
        while not stream.at_end():
            last = _element(stream, implicit, little, in_item=False) or last
    except _Ends as cut:
        where = f"{cut.where} of the element after {last}" if cut.header and last else cut.where
        return f"the file is cut off: it ends at {end}, {where}"
    return ""


def _element(stream: _Bytes, implicit: bool, little: bool, *, in_item: bool) -> str:
    """Walk one element (or meet an item's end: ''); its tag as (gggg,eeee)."""
    order = "<" if little else ">"
    head = stream.read(8)
    if len(head) < 8:
        raise _Ends(f"{len(head)} byte{'s' if len(head) > 1 else ''} into the header", header=True)
    group, elem = struct.unpack(order + "HH", head[:4])
    tag = f"({group:04X},{elem:04X})"
    if in_item and (group << 16 | elem) == _ITEM_END:
        return ""
    vr = None if implicit else head[4:6].decode("latin-1")
    if vr is None:
        length = struct.unpack(order + "L", head[4:])[0]
    elif vr in LONG_VRS:
        rest = stream.read(4)
        if len(rest) < 4:
            raise _Ends(f"{8 + len(rest)} bytes into the 12-byte header", header=True)
        length = struct.unpack(order + "L", rest)[0]
    elif vr in VRS:
        length = struct.unpack(order + "H", head[6:])[0]
    else:
        raise _Unknown
    if length != _UNDEFINED:
        if not stream.skip(length):
            raise _Ends(f"inside the value of {tag}")
        return tag
    # Undefined length: items up to a Sequence Delimitation Item (PS3.5 7.5.1); a UN sequence's
    # items are implicit VR little endian (PS3.5 6.2.2), and encapsulated pixel data's items have
    # defined lengths (A.4).
    if vr == "UN":
        implicit, little = True, True
    _items(stream, implicit, little, tag)
    return tag


def _items(stream: _Bytes, implicit: bool, little: bool, tag: str) -> None:
    order = "<" if little else ">"
    while True:
        head = stream.read(8)
        if len(head) < 8:
            raise _Ends(f"inside {tag} of undefined length, whose Sequence Delimitation Item never comes")
        group, elem, length = struct.unpack(order + "HHL", head)
        kind = group << 16 | elem
        if kind == _SEQUENCE_END:
            return
        if kind != _ITEM:
            raise _Unknown
        if length != _UNDEFINED:
            if not stream.skip(length):
                raise _Ends(f"inside an item of {tag}")
            continue
        try:
            while _element(stream, implicit, little, in_item=True):
                pass
        except _Ends:
            raise _Ends(f"inside an item of {tag}, whose Item Delimitation Item never comes") from None


def _dictionary_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


#: Photometric interpretations whose native pixel data holds two samples per pixel, not three: Y
#: for each pixel, Cb and Cr once for each two (PS3.3 C.7.6.3.1.2). Counted as three, a valid
#: uncompressed YBR_FULL_422 image (pydicom's SC_ybr_full_422_uncompressed.dcm) was withheld as cut off.
_TWO_SAMPLES = frozenset({"YBR_FULL_422", "YBR_PARTIAL_422"})


def _short_pixel_data(ds: Dataset) -> str:
    """Native Pixel Data shorter than Rows x Columns x Samples x Frames x Bits Allocated (PS3.5
    8.1.1) means the file was cut off: it is withheld rather than passed on broken. Pixel Data
    longer than that, by more than the one byte that pads it to even length, holds bytes no
    viewer shows and no pixel check (OCR) looks at, which the output carried on as they were (a
    name, an earlier image): withheld too, unless they are all zero (padding, which holds nothing).
    Under a compressed transfer syntax Pixel Data is encapsulated, of undefined length (PS3.5 A.4):
    one of defined length is named as such, not read as fragments."""
    elem = ds.get("PixelData")
    if elem is None or ds.file_meta.get("TransferSyntaxUID", None) is None:
        return ""
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax.is_compressed:
        if not ds["PixelData"].is_undefined_length:
            # odil 0.12 transcodes to RLE or JPEG-LS by relabelling native pixels: read as fragments,
            # their bytes gave pydicom's "unexpected tag ... Basic Offset Table" as the reason.
            return (f"Pixel Data (7FE0,0010) has a defined length ({len(elem)} bytes) under "
                    f"{syntax.name} ({syntax}), whose pixel data is encapsulated, of undefined length "
                    "(PS3.5 A.4): native pixels under a wrong Transfer Syntax UID, or a damaged file")
        return ""
    try:
        bits = int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        if samples == 3 and str(ds.get("PhotometricInterpretation", "")).strip() in _TWO_SAMPLES:
            samples = 2
        count = int(ds.Rows) * int(ds.Columns) * samples
        count *= int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return "pixel data without a usable Rows, Columns or Bits Allocated"
    needed = (count * bits + 7) // 8
    data = ds.PixelData or b""
    have = len(data)
    if have < needed:
        return f"pixel data is {have} bytes, {needed} expected: the file is cut off"
    if data[needed + (needed & 1):].strip(b"\0"):
        return (f"pixel data is {have} bytes, {needed} expected: the {have - needed} bytes past the image "
                "hold data that is no pixel of it and cannot be checked")
    return ""


def write(ds: Dataset, out: Path, *, replace: bool = True) -> None:
    """Write ``ds`` as a Part-10 file with its own transfer syntax (deflated and big endian ones
    included), atomically, then read it back whole; raises Withheld if that fails. Without
    ``replace`` an existing ``out`` is never overwritten: the same bytes again (a second run with
    the same key and options) are accepted, other bytes (another object) are withheld."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part")  # --jobs: one temporary name per worker
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            charset.encode_own_sets(ds)  # text in a set pydicom does not know, as bytes it writes as they are
            data = encode_file(ds)
        with open(tmp, "wb") as f:
            f.write(data)
        read_whole(tmp)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise Withheld(f"the de-identified object could not be written: {type(exc).__name__}: {exc}") from None
    if replace:
        os.replace(tmp, out)
        return
    try:
        _place_new(tmp, out, data)
    finally:
        tmp.unlink(missing_ok=True)


def _place_new(tmp: Path, out: Path, data: bytes) -> None:
    """Give ``tmp`` the name ``out`` only if no file has it (a hard link is atomic and never
    replaces, so two workers cannot both win); else accept identical bytes or raise Withheld."""
    try:
        os.link(tmp, out)
        return
    except FileExistsError:
        pass
    except OSError:  # a file system without hard links: exclusive creation instead
        try:
            with open(out, "xb") as f:
                f.write(data)
            return
        except FileExistsError:
            pass
    try:
        same = out.read_bytes() == data
    except OSError:
        same = False
    if not same:
        raise Withheld(f"{out.name} already holds another object with the same new SOP Instance UID "
                       "(its input repeats an earlier input's SOP Instance UID); not overwritten")


def _file_name(ds: Dataset) -> str:
    """``<SOP Instance UID>.dcm``, the name an output gets in a folder; raises Withheld when the UID
    is not one (PS3.5 9.1: digits and dots). It is the keyed 2.25 UID, except under retain-uids,
    where it is the input's own: a hostile input's "../evil" or "/etc/x" wrote its output outside
    the folder (a file anywhere the run may write), "1.2/3" made a folder, "" or a NUL failed with
    a Python error. Components with leading zeros, common in the wild, name a file as safely."""
    uid = _text_of(ds, SOP_INSTANCE_UID)
    if not uid.strip(".") or uid.strip("0123456789."):
        raise Withheld(f"its SOP Instance UID {uid[:64]!r} is not a UID (PS3.5 9.1: digits and dots) "
                       "and cannot name its output file")
    return f"{uid}.dcm"


def deidentify_file(engine: Engine, source: Path, out: Path, *, into_folder: bool = False,
                    max_inflated: int = MAX_INFLATED) -> FileResult:
    """De-identify ``source`` into ``out``; with ``into_folder``, ``out`` is a folder and the file is
    named after its new SOP Instance UID (an input's name may itself identify the patient).
    ``max_inflated``: see read_whole."""
    result = FileResult(source)
    try:
        ds = read_whole(source, max_inflated)
        overlays = remove_embedded_overlays(ds)
        comments = remove_jpeg_text(ds)
        with warnings.catch_warnings():
            # pydicom warns of a set it does not know, though charset.py has read the text in it
            warnings.filterwarnings("ignore", message="Unknown encoding 'ISO(_IR| 2022 IR) 203'")
            engine.deidentify(ds, result.report)
        if comments:
            plural = "s" if comments > 1 else ""
            result.report.pixels += f"; {comments} JPEG comment or metadata segment{plural} removed"
        if overlays:
            groups = ", ".join(f"{g:04X}" for g in overlays)
            result.report.pixels += f"; overlay group {groups} without Overlay Data removed"
        if into_folder:
            out = out / _file_name(ds)
        out.parent.mkdir(parents=True, exist_ok=True)
        write(ds, out, replace=not into_folder)
    except Withheld as exc:
        result.withheld = str(exc)
        return result
    except Exception as exc:  # a value the engine cannot handle: withhold rather than half-write
        result.withheld = f"de-identification failed: {_failure(exc)}"
        return result
    result.output = out
    return result
