"""The identifier walk fed fragment by fragment (`PeekWalker`) against the one-shot walk of the whole
data set (`peek_identifiers`): every split point of small crafted data sets in each encoding (PS3.5
7.1.2 explicit and 7.1.3 implicit VR, little and big endian, A.5 deflated), nested undefined-length
sequences and items (7.5), a UN of undefined length (6.2.2), items encoded implicit inside explicit
data; and data sets whose identifiers lie far past the first fragment (the walk used to stop after
64 KiB), walked in bounded memory."""

from __future__ import annotations

import dataclasses
import random
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path

import pydicom.data
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from dicom_corpus import language_codes
from pacsguard.dicom import pdu as P
from pacsguard.dicom.association import AssociationDecoder
from pacsguard.dicom.dataset import (
    PEEK_INFLATE_LIMIT,
    PEEK_VALUE_CAP,
    DatasetPeek,
    PeekWalker,
    peek_identifiers,
    peek_walker,
)
from pacsguard.dicom.events import DimseDatasetEnd, DimseDatasetStart
from pacsguard.dicom.stream import RawPDU

IVLE = "1.2.840.10008.1.2"
EVLE = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
EVBE = "1.2.840.10008.1.2.2"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
LONG = {b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR", b"OF", b"OD", b"OL", b"OV", b"SV", b"UV"}
UNDEFINED = 0xFFFFFFFF
SYNTAX = {(True, True): IVLE, (False, True): EVLE, (False, False): EVBE}


# ------------------------------------------------------------------ encoding by hand


def el(tag: int, vr: bytes, value: bytes, implicit: bool, little: bool, *, undefined: bool = False) -> bytes:
    """One data element (PS3.5 7.1.2 / 7.1.3); *undefined*: an undefined length, *value* is content."""
    end = "<" if little else ">"
    length = UNDEFINED if undefined else len(value)
    group, element = tag >> 16, tag & 0xFFFF
    if implicit:
        return struct.pack(end + "HHI", group, element, length) + value
    if vr in LONG:
        return struct.pack(end + "HH2sHI", group, element, vr, 0, length) + value
    return struct.pack(end + "HH2sH", group, element, vr, length) + value


def item(content: bytes, little: bool, *, undefined: bool) -> bytes:
    """An item (FFFE,E000) and, for an undefined length, its delimiter (PS3.5 7.5)."""
    end = "<" if little else ">"
    if undefined:
        delimiter = struct.pack(end + "HHI", 0xFFFE, 0xE00D, 0)
        return struct.pack(end + "HHI", 0xFFFE, 0xE000, UNDEFINED) + content + delimiter
    return struct.pack(end + "HHI", 0xFFFE, 0xE000, len(content)) + content


def seq_end(little: bool) -> bytes:
    return struct.pack(("<" if little else ">") + "HHI", 0xFFFE, 0xE0DD, 0)


def text(value: str) -> bytes:
    raw = value.encode("latin-1")
    return raw + b" " * (len(raw) % 2)


def uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" * (len(raw) % 2)


def crafted(implicit: bool, little: bool, *, pad: int = 40) -> bytes:
    """A data set with the wanted attributes among undefined- and defined-length sequences, nested,
    a long value, decoys of wanted tags inside items, and an element past (0020,000E)."""
    e = lambda tag, vr, value, **kw: el(tag, vr, value, implicit, little, **kw)  # noqa: E731
    decoy = e(0x00080016, b"UI", uid("9.9.9")) + e(0x00100020, b"LO", text("DECOY"))
    inner = e(0x00081150, b"SQ", item(decoy, little, undefined=False) + seq_end(little), undefined=True)
    outer = item(e(0x00080100, b"SH", text("en")) + inner, little, undefined=True)
    outer += item(decoy, little, undefined=True)
    parts = [
        e(0x00080005, b"CS", text("ISO_IR 100")),
        e(0x00080006, b"SQ", outer + seq_end(little), undefined=True),
        e(0x00080008, b"CS", text("ORIGINAL\\PRIMARY")),
    ]
    if not implicit and little:
        # An item encoded implicit inside explicit data (pydicom reads it), and a UN of undefined
        # length, whose content is Implicit VR Little Endian (PS3.5 6.2.2).
        implicit_item = item(el(0x00080016, b"UI", uid("8.8.8"), True, True), True, undefined=True)
        parts.append(e(0x00080009, b"SQ", implicit_item + seq_end(little), undefined=True))
        un_content = item(el(0x00100020, b"LO", text("UNDECOY"), True, True), True, undefined=True)
        parts.append(e(0x00080011, b"UN", un_content + seq_end(True), undefined=True))
    parts += [
        e(0x00080016, b"UI", uid(CT)),
        e(0x00080018, b"UI", uid("1.2.3.4.5.6")),
        e(0x00080050, b"SH", text("ACC42")),
        e(0x00080060, b"CS", text("CT")),
        e(0x00081140, b"SQ", item(decoy, little, undefined=False) + item(decoy, little, undefined=False)),
        e(0x00091010, b"OB", bytes(range(256)) * (pad // 256) + bytes(pad % 256)),
        e(0x00100010, b"PN", text("Müller^Hans")),
        e(0x00100020, b"LO", text("PID-1")),
        e(0x0020000D, b"UI", uid("1.2.3.7")),
        e(0x0020000E, b"UI", uid("1.2.3.8")),
        e(0x00280010, b"US", struct.pack("<H" if little else ">H", 2)),
    ]
    return b"".join(parts)


EXPECTED = {"specific_character_set": "ISO_IR 100", "sop_class_uid": CT, "sop_instance_uid": "1.2.3.4.5.6",
            "accession_number": "ACC42", "modality": "CT", "patient_name": "Müller^Hans", "patient_id": "PID-1",
            "study_instance_uid": "1.2.3.7", "series_instance_uid": "1.2.3.8", "complete": True, "anomaly": None}
ENCODINGS = [(True, True), (False, True), (False, False)]
ENCODING_IDS = ["implicit-le", "explicit-le", "explicit-be"]


# ------------------------------------------------------------------ helpers


def streamed(pieces: Iterable[bytes], syntax: str | None, *, finish: bool = True, walker: PeekWalker | None = None,
             bounded: bool = True) -> DatasetPeek:
    """Feed *pieces* one by one (as memoryviews, as the decoder does); check the state held between
    them stays bounded."""
    walker = walker or peek_walker(syntax)
    for piece in pieces:
        walker.feed(memoryview(piece))
        if bounded:
            assert_bounded(walker)
    return walker.finish() if finish else walker.peek


def assert_bounded(walker: PeekWalker) -> None:
    assert len(walker._carry) < 32 and len(walker._value) <= walker._cap and len(walker._stack) <= 256


def cut(data: bytes, points: Iterable[int]) -> list[bytes]:
    edges = [0, *sorted(points), len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]


def fields(peek: DatasetPeek) -> dict:
    return dataclasses.asdict(peek)


# ------------------------------------------------------------------ every split


@pytest.mark.parametrize(("implicit", "little"), ENCODINGS, ids=ENCODING_IDS)
def test_crafted_data_set_reads_as_expected_in_one_go(implicit: bool, little: bool) -> None:
    data = crafted(implicit, little)
    peek = peek_identifiers(data, SYNTAX[implicit, little], final=True)
    assert {k: v for k, v in fields(peek).items() if k in EXPECTED} == EXPECTED
    assert peek.bytes_examined == data.index(struct.pack("<HH" if little else ">HH", 0x0028, 0x0010))


@pytest.mark.parametrize(("implicit", "little"), ENCODINGS, ids=ENCODING_IDS)
def test_every_split_point_gives_the_one_shot_peek(implicit: bool, little: bool) -> None:
    """One cut anywhere, two cuts anywhere in the first part where the structure is, and fixed-size
    pieces from 1 byte up: the same peek as the whole data set walked at once, to the byte examined."""
    data = crafted(implicit, little)
    syntax = SYNTAX[implicit, little]
    whole = fields(peek_identifiers(data, syntax, final=True))
    for point in range(len(data) + 1):
        assert fields(streamed(cut(data, [point]), syntax)) == whole, point
    for first in range(0, len(data), 3):
        for second in range(first, len(data), 7):
            assert fields(streamed(cut(data, [first, second]), syntax)) == whole, (first, second)
    for size in range(1, 40):
        assert fields(streamed(cut(data, range(size, len(data), size)), syntax)) == whole, size


@pytest.mark.parametrize(("implicit", "little"), ENCODINGS, ids=ENCODING_IDS)
@pytest.mark.parametrize("skim", [True, False], ids=["fast-path", "general-loop"])
def test_truncated_data_sets_split_anywhere_read_as_in_one_go(implicit: bool, little: bool, skim: bool) -> None:
    """A data set cut short (malformed) reads the same whether it came in one piece or several, finished
    or not: the walk keeps today's behaviour for what it cannot read."""
    data = crafted(implicit, little)
    rng = random.Random(7)
    for length in range(len(data) + 1):
        short = data[:length]
        one_shot = PeekWalker(implicit, little, skim=skim)
        one_shot.feed(short)
        unfinished = fields(one_shot.peek)
        finished = fields(one_shot.finish())
        points = sorted(rng.sample(range(length + 1), min(length + 1, 3)))
        walker = PeekWalker(implicit, little, skim=skim)
        got = streamed(cut(short, points), None, finish=False, walker=walker)
        # Unfinished, a walk that waits for the byte telling an item's encoding may report 8 bytes less.
        assert {**fields(got), "bytes_examined": 0} == {**unfinished, "bytes_examined": 0}, (length, points)
        assert fields(walker.finish()) == finished, (length, points)


def test_damaged_and_cut_pydicom_test_files_read_the_same_in_any_pieces() -> None:
    """pydicom's own test files, cut and with seeded byte damage, in random pieces: the streaming walk
    and the one-shot walk agree on everything (fields, completeness, anomaly, bytes examined)."""
    rng = random.Random(20261205)
    compared = 0
    for path in sorted((Path(pydicom.data.__file__).parent / "test_files").glob("*.dcm"))[:80]:
        raw = path.read_bytes()
        if raw[128:132] != b"DICM":
            continue
        body = bytearray(raw[132 + 12 + int.from_bytes(raw[140:144], "little"):][:30000])
        for trial in range(8):
            data = bytearray(body[: rng.randrange(len(body) + 1)] if trial else body)
            for _ in range(trial % 4):
                if data:
                    data[rng.randrange(len(data))] = rng.randrange(256)
            for syntax in (IVLE, EVLE, EVBE, None):
                whole = fields(peek_identifiers(bytes(data), syntax, final=True))
                points = [rng.randrange(len(data) + 1) for _ in range(rng.randrange(1, 12))]
                assert fields(streamed(cut(bytes(data), points), syntax)) == whole, (path.name, trial, syntax)
                compared += 1
    assert compared > 1000


def test_deflated_data_set_split_anywhere() -> None:
    data = crafted(False, True, pad=3000)
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = packer.compress(data) + packer.flush()
    whole = fields(peek_identifiers(deflated, DEFLATED, final=True))
    assert {k: v for k, v in whole.items() if k in EXPECTED} == EXPECTED
    for point in range(len(deflated) + 1):
        assert fields(streamed(cut(deflated, [point]), DEFLATED)) == whole, point
    assert streamed([b"\xff" * 20], DEFLATED).anomaly == "inflate-failed"


# ------------------------------------------------------------------ far past the first fragment


def fragments(data: bytes, size: int = 16378) -> list[bytes]:
    """A data set in pieces of *size* bytes: the PDVs of 16 KiB PDUs by default (PS3.8 9.3.1: a PDU
    of 16384 bytes holds a PDV item of 4 + 16380, of which the context ID and control header take 2)."""
    return [data[i:i + size] for i in range(0, len(data), size)]


def encode(ds: Dataset, implicit: bool = False, little: bool = True) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = implicit, little
    write_dataset(buffer, ds)
    return buffer.getvalue()


def identified(ds: Dataset, sop_class: str = MR) -> Dataset:
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, "1.2.3.99", "MR"
    ds.PatientID, ds.PatientName = "PEEKPAT1", "Peek^Pat"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.1", "1.2.3.2"
    ds.Rows = 2
    return ds


@pytest.mark.parametrize("undefined", [False, True], ids=["defined-length", "undefined-length"])
@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_a_270_kb_sequence_before_the_sop_class(implicit: bool, undefined: bool) -> None:
    """The outside tester's MR data set: a Language Code Sequence of 3000 items ahead of (0008,0016).
    Of defined length it is skipped fragment by fragment; of undefined length (sequence and items)
    it is walked element by element."""
    data = encode(identified(language_codes(Dataset(), 3000, undefined=undefined)), implicit)
    assert data.index(MR.encode()) > 250_000
    assert (data[4:12] == b"SQ\0\0\xff\xff\xff\xff") == (undefined and not implicit)
    peek = streamed(fragments(data), IVLE if implicit else EVLE, finish=False)
    assert peek.complete and peek.anomaly is None
    assert (peek.sop_class_uid, peek.patient_id, peek.study_instance_uid) == (MR, "PEEKPAT1", "1.2.3.1")


@pytest.mark.parametrize(("implicit", "little"), ENCODINGS, ids=ENCODING_IDS)
def test_long_values_and_defined_length_sequences_are_skipped_piecewise(implicit: bool, little: bool) -> None:
    """A 3 MB OB value and a 1 MB sequence of defined length ahead of the identifiers: each fragment
    inside them costs a comparison, and nothing of them is held."""
    data = crafted(implicit, little, pad=3_000_000)
    e = lambda tag, vr, value: el(tag, vr, value, implicit, little)  # noqa: E731
    big_item = item(e(0x00080100, b"SH", text("x" * 1000)) * 1000, little, undefined=False)
    head = e(0x00080005, b"CS", text("ISO_IR 100"))
    data = data.replace(head, head + e(0x00080004, b"SQ", big_item), 1)
    walker = peek_walker(SYNTAX[implicit, little])
    for piece in fragments(data):
        walker.feed(memoryview(piece))
        assert_bounded(walker)
    peek = walker.peek
    assert {k: v for k, v in fields(peek).items() if k in EXPECTED} == EXPECTED
    assert walker.done and peek.bytes_examined > 4_000_000


def test_wanted_values_over_the_cap() -> None:
    """Past PEEK_VALUE_CAP bytes a wanted value may only be padding (PS3.5 6.2), however it is cut; an
    Implicit VR Patient ID of 70 KB that is not is an anomaly that ends the walk, before the UIDs."""
    sop = el(0x00080016, b"UI", uid(CT), True, True)
    study = el(0x0020000D, b"UI", uid("1.2.3.7"), True, True)
    padded = sop + el(0x00100020, b"LO", b"PID-1" + b" " * 70_001, True, True) + study
    dirty = sop + el(0x00100020, b"LO", b"PID-1" + b" " * 70_000 + b"X", True, True) + study
    for data, pid, anomaly in ((padded, "PID-1", None), (dirty, None, "value-too-long")):
        whole = fields(peek_identifiers(data, IVLE, final=True))
        assert (whole["patient_id"], whole["anomaly"], whole["sop_class_uid"]) == (pid, anomaly, CT)
        assert (whole["study_instance_uid"] is None) == (anomaly is not None)
        for size in (1000, 16378, 65536, 65537, 100_000):
            assert fields(streamed(fragments(data, size), IVLE)) == whole, size
    assert PEEK_VALUE_CAP == 65536


def test_nesting_is_followed_to_a_bounded_depth() -> None:
    """Sequences nested 100 deep (200 sequences and items) are walked; 200 deep is an anomaly, and the
    walk's stack stays small."""
    def nested(depth: int) -> bytes:
        content = el(0x00100020, b"LO", text("DEEP"), False, True)
        for _ in range(depth):
            content = el(0x00081140, b"SQ", item(content, True, undefined=True) + seq_end(True), False, True,
                         undefined=True)
        return el(0x00080016, b"UI", uid(CT), False, True) + content + el(0x00100020, b"LO", text("TOP"), False, True)

    ok = streamed(fragments(nested(100), 100), EVLE)
    assert (ok.patient_id, ok.complete, ok.anomaly) == ("TOP", True, None)
    deep = streamed(fragments(nested(200), 100), EVLE)
    assert (deep.patient_id, deep.sop_class_uid, deep.complete, deep.anomaly) == (None, CT, False, "nesting-too-deep")


def test_a_deflated_data_set_is_walked_through_its_first_256_kib_inflated() -> None:
    """Deflated data (PS3.5 A.5) is inflated as it comes; identifiers within the first
    PEEK_INFLATE_LIMIT bytes inflated are found, later ones are not (a deflate bomb costs no more)."""
    def deflated(pad: int) -> bytes:
        packer = zlib.compressobj(9, zlib.DEFLATED, -15)
        return packer.compress(crafted(False, True, pad=pad)) + packer.flush()

    near = streamed(fragments(deflated(200_000), 1000), DEFLATED)
    assert {k: v for k, v in fields(near).items() if k in EXPECTED} == EXPECTED
    far = peek_walker(DEFLATED)
    for piece in fragments(deflated(PEEK_INFLATE_LIMIT), 1000):
        if far.feed(memoryview(piece)):
            break
    assert far.done and not far.peek.complete and far.peek.patient_id is None
    assert far.peek.sop_class_uid == CT and far._inflater is None  # (0008,0016) comes before the padding


# ------------------------------------------------------------------ the decoder


def test_the_decoder_reports_identifiers_far_past_64_kib_as_soon_as_they_are_seen() -> None:
    """AssociationDecoder (what the relay and the IDS use): DimseDatasetStart comes with the PDV in which
    the walk passes (0020,000E), ~270 KB into the data set, carrying the MR class and the patient."""
    from test_association import ACCEPTOR_MAX, conversation, run_on_pdu, store_rq_command

    from pacsguard.dicom import dimse as D

    decoder = AssociationDecoder()
    run_on_pdu(decoder, conversation()[:2])
    command = D.encode_command_set(store_rq_command(9))
    decoder.on_pdu(True, RawPDU(4, P.encode_p_data_tf([P.PDV(3, True, True, command)])))
    data = encode(identified(language_codes(Dataset(), 3000, undefined=True)), implicit=True)
    pieces = fragments(data, ACCEPTOR_MAX - 6)
    seen = []
    streaming = []
    for i, piece in enumerate(pieces):
        raw = P.encode_p_data_tf([P.PDV(3, False, i == len(pieces) - 1, piece)])
        seen += [(i, event) for event in decoder.on_pdu(True, RawPDU(4, raw))]
        streaming.append(decoder.streaming_context(True))
    assert [type(e) for _, e in seen] == [DimseDatasetStart, DimseDatasetEnd]
    index, start = seen[0]
    assert isinstance(start, DimseDatasetStart)
    # (0028,0010) Rows is the first element past (0020,000E): its 8-byte header ends the walk.
    assert index == (data.index(b"\x28\x00\x10\x00") + 7) // len(pieces[0]) > 60
    assert (start.peek.sop_class_uid, start.peek.patient_id, start.peek.complete) == (MR, "PEEKPAT1", True)
    # Only from then on does the decoder let a relay pass fragments through unseen.
    assert streaming[:index] == [None] * index and streaming[index:-1] == [3] * (len(pieces) - 1 - index)


def test_a_flood_of_tiny_elements_stops_the_walk_in_bounded_time() -> None:
    """An undefined-length sequence of 150,000 empty elements before the identifiers: walked one by
    one (~0.4 us each on the gateway's loop) the walk stops at 100,000 headers, as for a malformed
    data set, instead of taking the loop for as long as the sender keeps sending."""
    import time

    from pacsguard.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN

    e = lambda tag, vr, value, **kw: el(tag, vr, value, False, True, **kw)  # noqa: E731
    flood = b"".join(e(0x00091000 + (i % 0xFF) + 0x10, b"LO", b"") for i in range(150_000))
    data = (e(0x00080016, b"UI", uid(MR)) + e(0x00081140, b"SQ", item(flood, True, undefined=True) + seq_end(True),
                                             undefined=True) + e(0x00100020, b"LO", text("P1")))
    began = time.process_time()
    peek = streamed(fragments(data), EXPLICIT_VR_LITTLE_ENDIAN)
    assert peek.anomaly == "too-many-elements" and peek.patient_id is None and not peek.complete
    assert peek.sop_class_uid == MR  # what came before the flood is kept
    assert time.process_time() - began < 2.0
