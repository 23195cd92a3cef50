"""One Part-10 file (PS3.10 7.1) in, one de-identified file out, or nothing: a file that cannot be
read whole, or de-identified safely, or written and read back, is withheld and reported. In a
folder an output never replaces another object's file: two inputs with one SOP Instance UID
(PS3.3 C.12.1.1.1 says it is unique; modalities and test corpora still repeat them) would
otherwise leave one file where the manifest said two were written."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from pacsguard.deid.encode import encode_file
from pacsguard.deid.engine import Engine, Report, Withheld
from pacsguard.deid.pixels import remove_embedded_overlays


@dataclass(slots=True)
class FileResult:
    source: Path
    output: Path | None = None
    withheld: str = ""
    report: Report = field(default_factory=Report)


def read_whole(path: Path) -> Dataset:
    """Read and decode every element now (pydicom defers values), so a file that fails after some
    offset fails here, before anything is changed. Raises Withheld."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(path)
            end = _raw_end(ds)  # before _cut_off decodes sequences: a decoded element has no offsets
            cut = _cut_off(ds)
    except Exception as exc:  # pydicom raises many types for broken input; every one means withhold
        raise Withheld(f"not readable as DICOM: {type(exc).__name__}: {str(exc)[:200]}") from None
    if cut:
        raise Withheld(f"the file is cut off inside {cut}")
    early = _ends_early(path, end)
    if early:
        raise Withheld(early)
    if "SOPInstanceUID" not in ds:
        raise Withheld("not a composite instance: no SOP Instance UID")
    short = _short_pixel_data(ds)
    if short:
        raise Withheld(short)
    return ds


def _cut_off(ds: Dataset) -> str:
    """Decode every element, items included; name the first whose value is shorter than its
    declared length (pydicom keeps what the file still had; dcmtk calls it a premature end)."""
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        if isinstance(raw, RawDataElement) and raw.length != 0xFFFFFFFF and raw.value is not None:
            if len(raw.value) < raw.length:
                return f"({tag.group:04X},{tag.element:04X})"
        if raw.VR != "SQ" and (raw.VR not in (None, "UN") or _dictionary_vr(tag) != "SQ"):
            continue  # other values stay undecoded: they are written back as read
        elem = ds[tag]
        if elem.VR == "SQ":
            for item in elem.value or ():
                inner = _cut_off(item)
                if inner:
                    return inner
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


def _dictionary_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _short_pixel_data(ds: Dataset) -> str:
    """Native Pixel Data shorter than Rows x Columns x Samples x Frames x Bits Allocated (PS3.5
    8.1.1) means the file was cut off: it is withheld rather than passed on broken."""
    elem = ds.get("PixelData")
    if elem is None or ds.file_meta.get("TransferSyntaxUID", None) is None:
        return ""
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        return ""
    try:
        bits = int(ds.BitsAllocated)
        count = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1)
        count *= int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return "pixel data without a usable Rows, Columns or Bits Allocated"
    needed = (count * bits + 7) // 8
    have = len(ds.PixelData or b"")
    return f"pixel data is {have} bytes, {needed} expected: the file is cut off" if have < needed else ""


def write(ds: Dataset, out: Path, *, replace: bool = True) -> None:
    """Write ``ds`` as a Part-10 file with its own transfer syntax (deflated and big endian ones
    included), atomically, then read it back whole; raises Withheld if that fails. Without
    ``replace`` an existing ``out`` is never overwritten: the same bytes again (a second run with
    the same key and options) are accepted, other bytes (another object) are withheld."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part")  # --jobs: one temporary name per worker
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
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


def deidentify_file(engine: Engine, source: Path, out: Path, *, into_folder: bool = False) -> FileResult:
    """De-identify ``source`` into ``out``; with ``into_folder``, ``out`` is a folder and the file is
    named after its new SOP Instance UID (an input's name may itself identify the patient)."""
    result = FileResult(source)
    try:
        ds = read_whole(source)
        overlays = remove_embedded_overlays(ds)
        engine.deidentify(ds, result.report)
        if overlays:
            groups = ", ".join(f"{g:04X}" for g in overlays)
            result.report.pixels += f"; overlay group {groups} without Overlay Data removed"
        if into_folder:
            out = out / f"{ds.SOPInstanceUID}.dcm"
        out.parent.mkdir(parents=True, exist_ok=True)
        write(ds, out, replace=not into_folder)
    except Withheld as exc:
        result.withheld = str(exc)
        return result
    except Exception as exc:  # a value the engine cannot handle: withhold rather than half-write
        result.withheld = f"de-identification failed: {type(exc).__name__}: {str(exc)[:200]}"
        return result
    result.output = out
    return result
