"""PDUReader: arbitrary segmentation, limits, error codes, resync; looks_like_associate_rq."""

from __future__ import annotations

import random
import struct
import time

import pytest

from pacsguard.dicom import errors as E
from pacsguard.dicom import pdu as P
from pacsguard.dicom.errors import DecodeError
from pacsguard.dicom.stream import PDUReader, RawPDU, looks_like_associate_rq

IVLE = "1.2.840.10008.1.2"


def associate_rq() -> bytes:
    return P.encode_associate_rq(
        P.AssociateRQ(
            "PACS",
            "MODALITY",
            [P.PresentationContextRQ(1, "1.2.840.10008.1.1", [IVLE])],
            P.UserInformation.build(max_length=16384, implementation_class_uid="1.2.3.4"),
        )
    )


def sample_stream() -> list[bytes]:
    return [
        associate_rq(),
        P.encode_p_data_tf([P.PDV(1, True, True, b"\x00" * 70)]),
        P.encode_p_data_tf([P.PDV(1, False, False, bytes(range(256)) * 20)]),
        P.encode_p_data_tf([P.PDV(1, False, True, b"tail")]),
        P.encode_release_rq(),
        P.encode_release_rp(),
        P.encode_abort(2, 1),
        P.encode_associate_rj(1, 1, 7),
    ]


def expected(pdus: list[bytes]) -> list[RawPDU]:
    return [RawPDU(raw[0], raw) for raw in pdus]


def test_whole_pdus_in_one_feed() -> None:
    pdus = sample_stream()
    reader = PDUReader()
    assert reader.feed(b"".join(pdus)) == expected(pdus)
    assert reader.pending_bytes == 0
    assert reader.pdu_count == len(pdus)


def test_one_byte_at_a_time() -> None:
    pdus = sample_stream()
    stream = b"".join(pdus)
    reader = PDUReader()
    out: list[RawPDU] = []
    for i in range(len(stream)):
        out += reader.feed(stream[i : i + 1])
        assert reader.pending_bytes == i + 1 - sum(len(p.raw) for p in out)
    assert out == expected(pdus)
    assert reader.pending_bytes == 0
    assert reader.stream_offset == len(stream)


@pytest.mark.parametrize("seed", range(20))
def test_random_segmentation(seed: int) -> None:
    rng = random.Random(seed)
    pdus = sample_stream()
    stream = b"".join(pdus)
    reader = PDUReader()
    out: list[RawPDU] = []
    pos = 0
    while pos < len(stream):
        size = rng.choice([1, 2, 5, 6, 7, 100, 1448, 4096, 70000])
        out += reader.feed(memoryview(stream)[pos : pos + size] if seed % 2 else stream[pos : pos + size])
        pos += size
    assert out == expected(pdus)


def test_pending_bytes_and_raw_pdu_properties() -> None:
    raw = P.encode_release_rq()
    reader = PDUReader()
    assert reader.feed(raw[:4]) == []
    assert reader.pending_bytes == 4
    assert reader.feed(b"") == []
    [pdu] = reader.feed(raw[4:])
    assert pdu.length == 4 and pdu.name == "A-RELEASE-RQ" and pdu.pdu_type == P.PDU_RELEASE_RQ
    assert reader.pending_bytes == 0


def test_large_pdu_in_small_chunks_is_linear() -> None:
    big = P.encode_p_data_tf([P.PDV(1, False, True, bytes(8 * 1024 * 1024))])
    reader = PDUReader()
    start = time.perf_counter()
    out: list[RawPDU] = []
    for pos in range(0, len(big), 1448):
        out += reader.feed(big[pos : pos + 1448])
    elapsed = time.perf_counter() - start
    assert out == [RawPDU(4, big)]
    assert elapsed < 5.0  # quadratic buffering would take minutes


def test_length_exceeding_maximum() -> None:
    reader = PDUReader(max_pdu_length=1000)
    ok = P.encode_release_rq()
    header = struct.pack(">BBI", 4, 0, 5000)
    with pytest.raises(DecodeError) as info:
        reader.feed(ok + header)
    err = info.value
    assert err.code == E.PDU_LENGTH_EXCEEDS_MAXIMUM
    assert "5000" in str(err) and "1000" in str(err)
    assert err.offset == len(ok) + 2  # stream offset of the length field
    assert err.partial == [RawPDU(5, ok)]
    # The stream is unusable from now on; each call raises a fresh error.
    with pytest.raises(DecodeError) as again:
        reader.feed(ok)
    assert again.value.code == E.PDU_LENGTH_EXCEEDS_MAXIMUM and again.value.partial == []
    assert again.value is not err


def test_length_check_happens_on_the_header_alone() -> None:
    reader = PDUReader(max_pdu_length=1000)
    with pytest.raises(DecodeError) as info:
        reader.feed(struct.pack(">BBI", 4, 0, 0xFFFFFFFF))
    assert info.value.code == E.PDU_LENGTH_EXCEEDS_MAXIMUM
    assert str(0xFFFFFFFF) in str(info.value)


def test_unknown_pdu_type() -> None:
    reader = PDUReader()
    reader.feed(P.encode_release_rq() * 2)
    with pytest.raises(DecodeError) as info:
        reader.feed(b"\x16\x03\x01\x02\x00\x01")  # a TLS ClientHello
    assert info.value.code == E.UNKNOWN_PDU_TYPE
    assert info.value.offset == 20
    assert "0x16" in str(info.value)


@pytest.mark.parametrize(
    "header,length", [((1, 0, 67), 67), ((4, 0, 5), 5), ((7, 0, 3), 3), ((3, 0, 0), 0)]
)
def test_length_below_minimum(header: tuple[int, int, int], length: int) -> None:
    with pytest.raises(DecodeError) as info:
        PDUReader().feed(struct.pack(">BBI", *header))
    assert info.value.code == E.BAD_PDU_LENGTH
    assert f"PDU-length {length}" in str(info.value) and info.value.offset == 2


def test_strict_reader() -> None:
    odd = struct.pack(">BBI", 5, 9, 4) + bytes(4)
    assert PDUReader().feed(odd) == [RawPDU(5, odd)]
    with pytest.raises(DecodeError) as info:
        PDUReader(strict=True).feed(odd)
    assert info.value.code == E.RESERVED_FIELD_NONZERO and info.value.offset == 1
    long_release = struct.pack(">BBI", 6, 0, 8) + bytes(8)
    assert PDUReader().feed(long_release) == [RawPDU(6, long_release)]
    with pytest.raises(DecodeError) as info:
        PDUReader(strict=True).feed(long_release)
    assert info.value.code == E.BAD_PDU_LENGTH and "8" in str(info.value)


def test_constructor_rejects_tiny_maximum() -> None:
    with pytest.raises(ValueError):
        PDUReader(max_pdu_length=10)


# ----------------------------------------------------------------- resync


def test_resync_skips_garbage_prefix() -> None:
    pdus = sample_stream()
    garbage = b"\xff\x13" * 500 + b"\x04\x01\x00\x00\x00\x10"  # looks like P-DATA but reserved != 0
    reader = PDUReader(resync=True)
    out = reader.feed(garbage + b"".join(pdus))
    assert out == expected(pdus)
    assert reader.skipped_bytes == len(garbage)
    assert reader.resync_count == 1


def test_resync_starting_mid_pdu() -> None:
    data = bytes(range(256)) * 8
    pdus = [P.encode_p_data_tf([P.PDV(3, False, False, data)]) for _ in range(3)]
    stream = b"".join(pdus)
    for start in (1, 7, 100, len(pdus[0]) - 1):
        reader = PDUReader(resync=True)
        out: list[RawPDU] = []
        for pos in range(start, len(stream), 333):
            out += reader.feed(stream[pos : pos + 333])
        assert out == expected(pdus[1:])
        assert reader.skipped_bytes == len(pdus[0]) - start


def test_resync_after_a_capture_gap() -> None:
    one = P.encode_p_data_tf([P.PDV(1, False, False, b"\x00" * 50)])
    two = P.encode_release_rq()
    reader = PDUReader(resync=True)
    out = reader.feed(one + one[:20] + two)  # second PDU lost its tail in the capture
    # The truncated header still announces 56 bytes, so the reader waits and then
    # swallows the release and some junk as that PDU; the junk after it is skipped
    # and the next real PDU comes out.
    out += reader.feed(b"\xff" * 100 + two)
    assert len(out) == 3 and reader.skipped_bytes > 0
    assert out[0] == RawPDU(4, one)
    assert out[-1] == RawPDU(5, two)


def test_resync_rejects_implausible_headers() -> None:
    candidates = [
        struct.pack(">BBI", 4, 0, 100) + struct.pack(">IBB", 200, 1, 0),  # PDV longer than PDU
        struct.pack(">BBI", 4, 0, 100) + struct.pack(">IBB", 20, 2, 0),  # even context ID
        struct.pack(">BBI", 1, 0, 100) + b"\x00\x02\x00\x00",  # protocol version 2
        struct.pack(">BBI", 7, 0, 4) + b"\x00\x00\x05\x09",  # abort source 5
        struct.pack(">BBI", 3, 0, 4) + b"\x00\x09\x01\x01",  # RJ result 9
        struct.pack(">BBI", 5, 0, 9) + bytes(9),  # release with length 9
    ]
    for candidate in candidates:
        reader = PDUReader(resync=True)
        release = P.encode_release_rq()
        assert reader.feed(candidate + release) == [RawPDU(5, release)], candidate
        assert reader.skipped_bytes == len(candidate)


# ----------------------------------------------------- looks_like_associate_rq


def test_looks_like_associate_rq() -> None:
    raw = associate_rq()
    assert looks_like_associate_rq(raw)
    assert looks_like_associate_rq(raw[:42])
    assert not looks_like_associate_rq(raw[:41])
    assert not looks_like_associate_rq(b"GET / HTTP/1.1\r\nHost: pacs\r\n\r\n" + bytes(40))
    assert not looks_like_associate_rq(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(60))
    assert not looks_like_associate_rq(P.encode_associate_ac(
        P.AssociateAC("PACS", "MOD", [P.PresentationContextAC(1, 0, IVLE)])
    ))
    bad_version = raw[:7] + b"\x02" + raw[8:]
    assert not looks_like_associate_rq(bad_version)
    control = raw[:10] + b"PA\x00CS".ljust(16) + raw[26:]
    assert not looks_like_associate_rq(control)
    blank = raw[:26] + b" " * 16 + raw[42:]
    assert not looks_like_associate_rq(blank)
    huge = raw[:2] + struct.pack(">I", 50_000_000) + raw[6:]
    assert not looks_like_associate_rq(huge)


def test_resync_over_a_long_garbage_run_is_fast() -> None:
    garbage = bytes(range(1, 256)) * 4000  # ~1 MB without a single plausible header
    release = P.encode_release_rq()
    reader = PDUReader(resync=True)
    start = time.perf_counter()
    out = []
    for pos in range(0, len(garbage), 65536):
        out += reader.feed(garbage[pos : pos + 65536])
    out += reader.feed(release)
    assert time.perf_counter() - start < 2.0
    assert out == [RawPDU(5, release)]
    assert reader.skipped_bytes == len(garbage)
