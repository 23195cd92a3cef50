"""peek_identifiers against pydicom's own reading, truncation, encodings; decode_identifier."""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from dicom_corpus import el_implicit
from pacsguard.dicom import errors as E
from pacsguard.dicom.dataset import (
    DatasetPeek,
    decode_identifier,
    peek_identifiers,
    transfer_syntax_encoding,
)
from pacsguard.dicom.errors import DecodeError

IVLE = "1.2.840.10008.1.2"
EVLE = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
EVBE = "1.2.840.10008.1.2.2"
JPEG = "1.2.840.10008.1.2.4.50"

_LONG_VRS = {b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR", b"OF", b"OD", b"OL", b"OV", b"SV", b"UV"}

COMPARED = [
    ("patient_id", "PatientID"),
    ("study_instance_uid", "StudyInstanceUID"),
    ("sop_instance_uid", "SOPInstanceUID"),
    ("sop_class_uid", "SOPClassUID"),
    ("series_instance_uid", "SeriesInstanceUID"),
    ("modality", "Modality"),
    ("accession_number", "AccessionNumber"),
    ("patient_name", "PatientName"),
]


def split_file(path: str) -> tuple[str | None, bytes]:
    """Return (transfer syntax from the file meta, data set bytes after the meta)."""
    data = Path(path).read_bytes()
    pos = 132 if data[128:132] == b"DICM" else 0
    syntax = None
    # File meta information is always Explicit VR Little Endian (PS3.10 7.1).
    while pos + 8 <= len(data):
        group, elem = struct.unpack_from("<HH", data, pos)
        if group != 2:
            break
        if data[pos + 4 : pos + 6] in _LONG_VRS:
            length = struct.unpack_from("<I", data, pos + 8)[0]
            start = pos + 12
        else:
            length = struct.unpack_from("<H", data, pos + 6)[0]
            start = pos + 8
        if elem == 0x0010:
            syntax = data[start : start + length].rstrip(b"\x00 ").decode()
        pos = start + length
    return syntax, data[pos:]


def normalise(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, MultiValue):
        value = "\\".join(str(v) for v in value)
    return str(value).strip(" \x00")


def readable_test_files() -> list[tuple[str, Dataset, str, bytes]]:
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(get_testdata_files()):
            if not os.path.isfile(path):
                continue
            try:
                ds = dcmread(path)
            except Exception:
                continue  # pydicom itself cannot read it
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            if syntax is None or len(ds) == 0:
                continue  # no data set, or one pydicom gave up on (a cut file it reads as empty)
            meta_syntax, body = split_file(path)
            assert meta_syntax == syntax, path
            out.append((path, ds, str(syntax), body))
    return out


TEST_FILES = readable_test_files()


def test_enough_test_files_were_found() -> None:
    assert len(TEST_FILES) > 100
    syntaxes = {t[2] for t in TEST_FILES}
    assert {IVLE, EVLE, EVBE, DEFLATED} <= syntaxes


@pytest.mark.parametrize("path,ds,syntax,body", TEST_FILES,
                         ids=[os.path.relpath(t[0], os.path.dirname(get_testdata_file("CT_small.dcm")))
                              for t in TEST_FILES])
def test_peek_matches_pydicom(path: str, ds: Dataset, syntax: str, body: bytes) -> None:
    peek = peek_identifiers(body, syntax, final=True)
    assert peek.anomaly is None
    assert peek.complete
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for attr, keyword in COMPARED:
            expected = normalise(ds.get(keyword)) if keyword in ds else None
            assert getattr(peek, attr) == expected, (attr, keyword)


TRUNCATION_FILES = ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm", "rtplan.dcm",
                    "reportsi.dcm"]


@pytest.mark.parametrize("name", TRUNCATION_FILES)
def test_every_truncation_length(name: str) -> None:
    path = get_testdata_file(name)
    syntax, body = split_file(path)
    full = peek_identifiers(body, syntax, final=True)
    assert full.complete
    lengths = list(range(0, min(len(body), 6000))) + list(range(6000, len(body), 97))
    seen_complete = False
    for length in lengths:
        peek = peek_identifiers(body[:length], syntax)
        assert peek.anomaly is None, (length, peek.anomaly)
        for attr, _ in COMPARED:
            value = getattr(peek, attr)
            # a prefix never yields a wrong value: either nothing yet, or the final one
            assert value is None or value == getattr(full, attr), (length, attr, value)
        if seen_complete:
            assert peek.complete
        if peek.complete:
            seen_complete = True
            assert peek == DatasetPeek(
                **{**{f: getattr(full, f) for f in full.__slots__}, "bytes_examined": peek.bytes_examined}
            )
    assert seen_complete


# --------------------------------------------------------- hand-made encodings


def el_explicit(tag: int, vr: bytes, value: bytes, little: bool = True, length: int | None = None) -> bytes:
    e = "<" if little else ">"
    n = len(value) if length is None else length
    head = struct.pack(e + "HH", tag >> 16, tag & 0xFFFF) + vr
    if vr in _LONG_VRS:
        return head + b"\x00\x00" + struct.pack(e + "I", n) + value
    return head + struct.pack(e + "H", n) + value


def item(content: bytes, undefined: bool, little: bool = True) -> bytes:
    e = "<" if little else ">"
    if undefined:
        return struct.pack(e + "HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + content + struct.pack(e + "HHI", 0xFFFE, 0xE00D, 0)
    return struct.pack(e + "HHI", 0xFFFE, 0xE000, len(content)) + content


def seq_delim(little: bool = True) -> bytes:
    return struct.pack(("<" if little else ">") + "HHI", 0xFFFE, 0xE0DD, 0)


def decoy(explicit: bool, little: bool = True) -> bytes:
    """A nested data set that carries identifier tags which must NOT be reported."""
    if explicit:
        return el_explicit(0x00100020, b"LO", b"DECOY ", little) + el_explicit(0x0020000D, b"UI", b"9.9\x00", little)
    return el_implicit(0x00100020, b"DECOY ", little=little) + el_implicit(0x0020000D, b"9.9\x00", little=little)


def expected_peek(**kw: object) -> dict[str, object]:
    base = {
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
        "sop_instance_uid": "1.2.3.4",
        "patient_id": "PID-7",
        "patient_name": "Doe^John",
        "study_instance_uid": "1.2.3",
        "series_instance_uid": "1.2.3.9",
    }
    base.update(kw)
    return base


def build(explicit: bool, little: bool, nested: str) -> bytes:
    if explicit:
        E_ = lambda t, vr, v: el_explicit(t, vr, v, little)  # noqa: E731
    else:
        E_ = lambda t, vr, v: el_implicit(t, v, little=little)  # noqa: E731
    inner = decoy(explicit, little)
    # The header of a sequence of undefined length: its value runs to the delimitation item.
    if explicit:
        open_seq = el_explicit(0x00081110, b"SQ", b"", little, 0xFFFFFFFF)
    else:
        open_seq = el_implicit(0x00081110, b"", 0xFFFFFFFF, little)
    if nested == "undefined-seq-undefined-items":
        seq_value = item(inner, True, little) + item(inner + inner, True, little) + seq_delim(little)
        seq = open_seq + seq_value
    elif nested == "defined-seq":
        seq_value = item(inner, False, little) + item(inner, False, little)
        if explicit:
            seq = el_explicit(0x00081110, b"SQ", seq_value, little)
        else:
            seq = el_implicit(0x00081110, seq_value, little=little)
    elif nested == "undefined-seq-defined-items":
        seq_value = item(inner, False, little) + seq_delim(little)
        seq = open_seq + seq_value
    elif nested == "nested-two-levels":
        if explicit:
            deeper = el_explicit(0x00081115, b"SQ", b"", little, 0xFFFFFFFF)
        else:
            deeper = el_implicit(0x00081115, b"", 0xFFFFFFFF, little)
        deeper += item(inner, True, little) + seq_delim(little)
        seq_value = item(deeper + inner, True, little) + seq_delim(little)
        seq = open_seq + seq_value
    elif nested == "un-undefined":
        # UN of undefined length: content is Implicit VR Little Endian (PS3.5 6.2.2)
        seq_value = item(decoy(False), True) + seq_delim()
        seq = el_explicit(0x00081110, b"UN", b"", little, 0xFFFFFFFF) + seq_value
    else:
        raise AssertionError(nested)
    return (
        E_(0x00080016, b"UI", b"1.2.840.10008.5.1.4.1.1.2\x00")
        + E_(0x00080018, b"UI", b"1.2.3.4\x00")
        + seq
        + E_(0x00100010, b"PN", b"Doe^John")
        + E_(0x00100020, b"LO", b"PID-7 ")
        + E_(0x0020000D, b"UI", b"1.2.3\x00")
        + E_(0x0020000E, b"UI", b"1.2.3.9\x00")
        + E_(0x00200010, b"SH", b"S1")
    )


NESTINGS = ["undefined-seq-undefined-items", "defined-seq", "undefined-seq-defined-items", "nested-two-levels"]


@pytest.mark.parametrize(
    "syntax,explicit,little,nested",
    [(IVLE, False, True, n) for n in NESTINGS]
    + [(EVLE, True, True, n) for n in NESTINGS + ["un-undefined"]]
    + [(JPEG, True, True, n) for n in NESTINGS]
    + [(EVBE, True, False, n) for n in NESTINGS],
)
def test_sequences_are_skipped(syntax: str, explicit: bool, little: bool, nested: str) -> None:
    data = build(explicit, little, nested)
    peek = peek_identifiers(data, syntax)
    assert peek.complete and peek.anomaly is None
    for key, value in expected_peek().items():
        assert getattr(peek, key) == value, key
    for cut in range(len(data)):
        partial = peek_identifiers(memoryview(data)[:cut], syntax)
        assert partial.patient_id in (None, "PID-7")
        assert partial.study_instance_uid in (None, "1.2.3")


def test_deflated_prefix() -> None:
    data = build(True, True, "undefined-seq-undefined-items") + el_explicit(0x7FE00010, b"OB", bytes(50000))
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = packer.compress(data) + packer.flush()
    assert peek_identifiers(deflated, DEFLATED, final=True).patient_id == "PID-7"
    for cut in range(0, len(deflated)):
        peek = peek_identifiers(deflated[:cut], DEFLATED)
        assert peek.anomaly is None and peek.patient_id in (None, "PID-7")
    assert peek_identifiers(b"\xff" * 20, DEFLATED).anomaly == "inflate-failed"


def test_unknown_syntax_guesses_encoding() -> None:
    assert peek_identifiers(build(False, True, "defined-seq"), None).patient_id == "PID-7"
    assert peek_identifiers(build(True, True, "defined-seq"), None).patient_id == "PID-7"
    # mislabelled data: pydicom trusts the bytes, so do we
    assert peek_identifiers(build(False, True, "defined-seq"), EVLE).patient_id == "PID-7"


def test_query_identifier_fields_and_charsets() -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = "STUDY"
    ds.AccessionNumber = "ACC123"
    ds.PatientName = "Müller^Jürgen"
    ds.PatientID = "Ü1"
    ds.StudyInstanceUID = ""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, ds)
    raw = fp.getvalue()
    peek = peek_identifiers(raw, IVLE, final=True)
    assert peek.query_retrieve_level == "STUDY"
    assert peek.accession_number == "ACC123"
    assert peek.patient_name == "Müller^Jürgen"
    assert peek.patient_id == "Ü1"
    assert peek.study_instance_uid == ""
    assert peek.specific_character_set == "ISO_IR 192"
    assert peek.complete  # reached the end of a data set known to be whole
    assert not peek_identifiers(raw, IVLE).complete  # could be a prefix


@pytest.mark.filterwarnings("ignore:Unknown encoding")
def test_latin1_default_and_broken_charset() -> None:
    data = el_explicit(0x00080005, b"CS", b"BOGUS_CHARSET ") + el_explicit(0x00100010, b"PN", b"M\xfcller")
    assert peek_identifiers(data, EVLE).patient_name == "Müller"
    assert peek_identifiers(el_explicit(0x00100010, b"PN", b"M\xfcller"), EVLE).patient_name == "Müller"


@pytest.mark.parametrize(
    "data,anomaly",
    [
        (struct.pack("<HHI", 0xFFFE, 0xE000, 4) + bytes(4), "item-outside-sequence"),
        (struct.pack("<HHI", 0xFFFE, 0xE0DD, 0), "unexpected-delimiter"),
        (el_explicit(0x00080016, b"UI", b"1.2\x00") + struct.pack("<HHI", 0xFFFE, 0x1234, 0), "bad-item-tag"),
    ],
)
def test_malformed_structure_is_reported_not_raised(data: bytes, anomaly: str) -> None:
    peek = peek_identifiers(data, EVLE)
    assert peek.anomaly == anomaly and not peek.complete


def test_huge_lengths_are_not_trusted() -> None:
    data = el_explicit(0x00080016, b"UI", b"1.2\x00") + el_explicit(0x00080018, b"UI", b"", length=0xFFF0)
    peek = peek_identifiers(data, EVLE)
    assert peek.sop_class_uid == "1.2" and peek.sop_instance_uid is None and not peek.complete
    skip = el_explicit(0x00080005, b"UT", b"", length=0x7FFFFFF0) + el_explicit(0x00100020, b"LO", b"X ")
    assert peek_identifiers(skip, EVLE).patient_id is None


def test_transfer_syntax_encoding() -> None:
    assert transfer_syntax_encoding(IVLE) == (True, True, False)
    assert transfer_syntax_encoding(EVLE) == (False, True, False)
    assert transfer_syntax_encoding(EVBE) == (False, False, False)
    assert transfer_syntax_encoding(DEFLATED) == (False, True, True)
    assert transfer_syntax_encoding(JPEG) == (False, True, False)
    assert transfer_syntax_encoding(None) == (None, True, False)


# ------------------------------------------------------------ decode_identifier


def identifier() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.PatientID = "PID-7"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = ""
    ds.ReferencedStudySequence = Sequence([Dataset()])
    ds.ReferencedStudySequence[0].ReferencedSOPInstanceUID = "1.2.3.4"
    return ds


def encode_ds(ds: Dataset, implicit: bool, little: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = little, implicit
    write_dataset(fp, ds)
    return fp.getvalue()


@pytest.mark.parametrize("syntax,implicit,little",
                         [(IVLE, True, True), (EVLE, False, True), (EVBE, False, False), (DEFLATED, False, True)])
def test_decode_identifier_round_trip(syntax: str, implicit: bool, little: bool) -> None:
    raw = encode_ds(identifier(), implicit, little)
    if syntax == DEFLATED:
        packer = zlib.compressobj(9, zlib.DEFLATED, -15)
        raw = packer.compress(raw) + packer.flush()
    ds = decode_identifier(raw, syntax)
    assert ds.QueryRetrieveLevel == "SERIES"
    assert ds.PatientID == "PID-7"
    assert ds.ReferencedStudySequence[0].ReferencedSOPInstanceUID == "1.2.3.4"


@pytest.mark.parametrize(
    "raw,syntax",
    [
        (struct.pack("<HHI", 0x0010, 0x0020, 100) + b"short", IVLE),
        (struct.pack("<HH", 0x0010, 0x0020) + b"SQ\x00\x00" + struct.pack("<I", 0xFFFFFFFF) + b"\x01\x02\x03", EVLE),
        (b"\xff" * 10, DEFLATED),
        (el_implicit(0x00100020, b"PID ") + b"\x00\x01", IVLE),
        (el_implicit(0x00081110, b"", 0xFFFFFFFF) + item(decoy(False), True), IVLE),
        (el_implicit(0x00081110, item(decoy(False), False)[:-4]), IVLE),
        (el_implicit(0x00081110, decoy(False)), IVLE),
        (item(b"", False), IVLE),
        (el_explicit(0x00100020, b"LO", b"PID ") + seq_delim(), EVLE),
        (el_explicit(0x00081110, b"SQ", item(el_explicit(0x00100020, b"LO", b"PID ", length=40), False)), EVLE),
    ],
)
def test_decode_identifier_maps_errors(raw: bytes, syntax: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DecodeError) as info:
            decode_identifier(raw, syntax)
    assert info.value.code == E.IDENTIFIER_INVALID
    assert "identifier" in str(info.value)


def test_decode_identifier_limits() -> None:
    with pytest.raises(DecodeError) as info:
        decode_identifier(bytes(2000), IVLE, max_length=1000)
    assert info.value.code == E.IDENTIFIER_TOO_LARGE and "2000" in str(info.value)
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = packer.compress(bytes(10_000_000)) + packer.flush()
    with pytest.raises(DecodeError) as info:
        decode_identifier(bomb, DEFLATED)
    assert info.value.code == E.IDENTIFIER_TOO_LARGE


def test_the_top_level_fast_path_reads_exactly_as_the_general_walk() -> None:
    """`_skim` (the fast path for little-endian top levels) against `_walk`'s general loop alone, on
    pydicom's test files cut at many lengths and with seeded byte damage: the same peek each time."""
    import dataclasses
    import random

    import pydicom.data

    from pacsguard.dicom.dataset import DatasetPeek, _walk

    rng = random.Random(20261203)
    compared = 0
    # The files shipped with pydicom (get_testdata_files would also try to download others).
    for path in sorted((Path(pydicom.data.__file__).parent / "test_files").glob("*.dcm"))[:80]:
        raw = Path(path).read_bytes()
        if raw[128:132] != b"DICM":
            continue
        body = bytearray(raw[132 + 12 + int.from_bytes(raw[140:144], "little"):][:20000])
        for trial in range(12):
            data = bytearray(body[: rng.randrange(len(body) + 1)] if trial else body)
            for _ in range(trial % 4):
                if data:
                    data[rng.randrange(len(data))] = rng.randrange(256)
            for implicit in (True, False, None):
                fast, reference = DatasetPeek(), DatasetPeek()
                _walk(memoryview(bytes(data)), implicit, True, trial == 0, fast)
                _walk(memoryview(bytes(data)), implicit, True, trial == 0, reference, skim=False)
                assert dataclasses.asdict(fast) == dataclasses.asdict(reference), (path, trial, implicit)
                compared += 1
    assert compared > 1000
