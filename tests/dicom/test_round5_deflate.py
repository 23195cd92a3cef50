"""Round 5 (issues 15/16): deflated data sets (PS3.5 A.5) in the decoder.

- A walk that reaches the 256 KiB a deflated data set is inflated to, before (0020,000E), says so:
  ``anomaly == "inflate-limit"`` (what the IDS's dataset observation and the records carry), not a
  silent incomplete peek that reads as "no patient".
- ``inflate_dataset`` / ``deflate_dataset``: the bounded round trip the relay uses to rewrite a
  deflated C-FIND response.
"""

from __future__ import annotations

import struct
import zlib

import pytest

from pacsguard.dicom.dataset import (
    INFLATE_LIMIT,
    PEEK_INFLATE_LIMIT,
    DatasetPeek,
    decode_identifier,
    deflate_dataset,
    inflate_dataset,
    peek_identifiers,
    peek_walker,
    walk_stop,
)
from pacsguard.dicom.errors import DecodeError

DEFLATED = "1.2.840.10008.1.2.1.99"
CT = "1.2.840.10008.5.1.4.1.1.2"


def el(tag: int, vr: bytes, value: bytes) -> bytes:
    value += b"\0" * (len(value) % 2)
    if vr in (b"OB", b"SQ", b"UN"):
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def ct(filler: int) -> bytes:
    return (el(0x00080016, b"UI", CT.encode()) + el(0x00091010, b"OB", b"\0" * filler)
            + el(0x00100020, b"LO", b"PAT-1 ") + el(0x0020000D, b"UI", b"1.2.3.7") + el(0x0020000E, b"UI", b"1.2.3.8"))


def deflate(raw: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(raw) + packer.flush()


def walked(data: bytes, piece: int = 997) -> DatasetPeek:
    walker = peek_walker(DEFLATED)
    for i in range(0, len(data), piece):
        if walker.feed(memoryview(data)[i:i + piece]):
            break
    return walker.finish()


def test_a_walk_stopped_by_the_inflate_limit_says_so() -> None:
    far = walked(deflate(ct(400 * 1024)))
    assert (far.sop_class_uid, far.patient_id, far.complete) == (CT, None, False)
    assert far.anomaly == INFLATE_LIMIT == "inflate-limit" and far.bytes_examined == PEEK_INFLATE_LIMIT
    assert "inflate-limit" in walk_stop(far) and "256 KiB" in walk_stop(far)
    # In one piece too: the same outcome whatever the fragments.
    assert peek_identifiers(deflate(ct(400 * 1024)), DEFLATED).anomaly == INFLATE_LIMIT


def test_a_walk_that_got_past_its_identifiers_within_the_limit_has_no_anomaly() -> None:
    near = walked(deflate(ct(200 * 1024)))
    assert (near.patient_id, near.complete, near.anomaly) == ("PAT-1", True, None)
    # Padding past (0020,000E) beyond the limit is never reached: nothing was left unread that matters.
    tail = walked(deflate(ct(0) + el(0x7FE00010, b"OB", b"\0" * (400 * 1024))))
    assert (tail.patient_id, tail.complete, tail.anomaly) == ("PAT-1", True, None)


def test_walk_stop_names_each_way_a_walk_ends_early() -> None:
    assert walk_stop(DatasetPeek(anomaly="nesting-too-deep", bytes_examined=1234)) == \
        "the walk stopped at byte 1,234 (nesting-too-deep)"
    assert walk_stop(DatasetPeek(bytes_examined=40)).startswith("the data set ended 40 bytes in")


def test_inflate_and_deflate_round_trip_with_an_even_length() -> None:
    raw = ct(1000)
    packed = deflate_dataset(raw)
    assert len(packed) % 2 == 0 and inflate_dataset(packed) == raw
    assert zlib.decompressobj(-zlib.MAX_WBITS).decompress(packed) == raw  # as pynetdicom reads it


def test_inflate_is_bounded_and_refuses_a_damaged_or_unfinished_stream() -> None:
    with pytest.raises(DecodeError) as bomb:
        inflate_dataset(deflate(b"\0" * 5000), 4096)
    assert bomb.value.code == "identifier-too-large"
    with pytest.raises(DecodeError) as cut:
        inflate_dataset(deflate(ct(1000))[:-4])
    assert cut.value.code == "identifier-invalid"
    with pytest.raises(DecodeError):
        inflate_dataset(b"\xff" * 20)


def test_decode_identifier_still_reads_a_deflated_identifier() -> None:
    query = el(0x00080052, b"CS", b"STUDY ") + el(0x00100020, b"LO", b"P0") + el(0x0020000D, b"UI", b"")
    assert decode_identifier(deflate_dataset(query), DEFLATED).PatientID == "P0"
