"""The DICOM objects the tests send: pydicom's own test files (local ones only: get_testdata_file
by name never downloads), with what dcmtk needs to send each in its own transfer syntax."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterable

from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

# pydicom test files with distinct SOP Instance UIDs: several studies and patients, uncompressed
# (explicit and implicit VR), JPEG baseline/extended and deflated transfer syntaxes.
TEST_FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "rtplan.dcm",
    "rtdose.dcm",
    "test-SR.dcm",
    "waveform_ecg.dcm",
    "liver_1frame.dcm",
    "examples_overlay.dcm",
    "JPEG-lossy.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "image_dfl.dcm",
)
UNCOMPRESSED = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
# storescu's option that proposes a compressed transfer syntax (uncompressed files need none).
PROPOSE = {
    "1.2.840.10008.1.2.4.50": "-xy",  # JPEG baseline (8 bit)
    "1.2.840.10008.1.2.4.51": "-xx",  # JPEG extended (12 bit)
    "1.2.840.10008.1.2.4.70": "-xs",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.90": "-xv",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "-xw",  # JPEG 2000
    "1.2.840.10008.1.2.5": "-xr",  # RLE
    "1.2.840.10008.1.2.1.99": "-xd",  # deflated explicit VR little endian
}


def read_dataset(path: Path) -> Dataset:
    """A file's dataset for comparison, without Data Set Trailing Padding (FFFC,FFFC), which only
    exists in files and is never part of what travels over the network (PS3.10 7.2)."""
    ds = dcmread(path)
    if (0xFFFC, 0xFFFC) in ds:
        del ds[0xFFFC, 0xFFFC]
    return ds


def send_in_own_syntax(dcmtk, target: list[str], files: Iterable[Path], timeout: float = 120) -> None:
    """storescu every file in its own transfer syntax: storescu proposes uncompressed syntaxes
    unless told which compressed one to offer, so uncompressed files go in one association and
    each compressed syntax in its own. `-R` proposes only the SOP classes of the files given."""
    by_flag: dict[str, list[Path]] = {}
    for path in files:
        ts = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        by_flag.setdefault(PROPOSE.get(ts, "-x="), []).append(path)
    for flag, group in by_flag.items():
        result = dcmtk.run("storescu", "-R", flag, *target, *group, timeout=timeout)
        assert result.returncode == 0, f"storescu {flag} failed: {result.stdout}\n{result.stderr}"


def el_implicit(tag: int, value: bytes, length: int | None = None, little: bool = True, pad: bytes = b"") -> bytes:
    """One Implicit VR data element (PS3.5 7.1.3), built by hand; *pad* (a space or NUL byte) makes an
    odd-length value even, as PS3.5 6.2 requires."""
    if pad and len(value) % 2:
        value += pad
    e = "<" if little else ">"
    return struct.pack(e + "HHI", tag >> 16, tag & 0xFFFF, len(value) if length is None else length) + value


def language_codes(ds: Dataset, count: int, *, undefined: bool = False) -> Dataset:
    """Give pydicom data set *ds* a Language Code Sequence (0008,0006) of *count* items, ~90 bytes
    each (3000: 270 KB, before every identifier of a data set); of defined length (pydicom's
    default) or undefined length, items too (PS3.5 7.5)."""
    from pydicom.sequence import Sequence

    items = []
    for _ in range(count):
        it = Dataset()
        it.CodeValue, it.CodingSchemeDesignator, it.CodeMeaning = "en", "RFC5646", "English" + "x" * 40
        it.is_undefined_length_sequence_item = undefined
        items.append(it)
    ds.LanguageCodeSequence = Sequence(items)
    ds["LanguageCodeSequence"].is_undefined_length = undefined
    return ds
