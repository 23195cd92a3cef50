"""No traceback on a store-and-forward route either: its Storage SCP (acceptor.py) is pacsguard's own
code facing the modalities, with a fast path that takes the bulk of a data set from each read in
place. Seeded PDU-level mutations (tests/gateway/fuzz_relay.py's: bit flips, truncation, lying
lengths, shuffled items, dropped, repeated, coalesced and split reads, garbage) of real requestor
streams carrying multi-PDU data sets go to a real route over loopback sockets, each input on a new
connection. Of every input: nothing logged with a traceback, no association ended for an
internal error; at the end nothing half-received is left in the spool, every object it holds is
one a modality sent whole, and a clean association still stores."""

from __future__ import annotations

import asyncio
import logging
import random
import struct
from pathlib import Path

import pytest
from fuzz_relay import Read, mutate
from playbook import CT_STORAGE, IMPLICIT_LE, VERIFICATION, echo_rq, request
from test_durable import Gate
from test_store_forward_scp import Client, answers, route_under_test, sf_route, status_of

from pacsguard.dicom import dimse
from pacsguard.dicom import pdu as P

SEED = 19  # the store-and-forward issue's number: any fixed seed keeps the run reproducible
INPUTS = 4_000


def _dataset(patient: str, pixels: int) -> bytes:
    """Implicit VR Little Endian: Patient ID, Study Instance UID, Pixel Data of ``pixels`` bytes."""
    pid = patient.encode().ljust((len(patient) + 1) // 2 * 2, b" ")
    study = b"1.2.3.4.5\x00"
    return (struct.pack("<HHI", 0x0010, 0x0020, len(pid)) + pid + struct.pack("<HHI", 0x0020, 0x000D, len(study))
            + study + struct.pack("<HHI", 0x7FE0, 0x0010, pixels) + bytes(range(256)) * (pixels // 256))


def _store(message_id: int, pixels: int) -> bytes:
    command = dimse.CommandSet(dimse.C_STORE_RQ, message_id=message_id, affected_sop_class_uid=CT_STORAGE,
                               affected_sop_instance_uid=f"1.2.3.19.{message_id}", priority=0,
                               command_data_set_type=0x0000)
    return request(command, _dataset(f"FUZZ{message_id}", pixels), context_id=3)


def _rq() -> bytes:
    return P.encode_associate_rq(P.AssociateRQ(
        "PACSGUARD", "WS1", [P.PresentationContextRQ(1, VERIFICATION, [IMPLICIT_LE]),
                             P.PresentationContextRQ(3, CT_STORAGE, [IMPLICIT_LE])],
        P.UserInformation([P.MaximumLength(16384), P.ImplementationClassUID("1.2.826.0.1.3680043.9.3811")])))


def _reads(stream: bytes, rng: random.Random) -> list[Read]:
    """A requestor's bytes as reads of 1 byte to 40 KB, as TCP may deliver them."""
    reads, pos = [], 0
    while pos < len(stream):
        size = rng.choice((1, 7, 12, 100, 4096, 16390, 40000))
        reads.append((True, stream[pos:pos + size]))
        pos += size
    return reads


def corpus() -> list[bytes]:
    """Requestor streams: stores of 10-60 KB (one to four P-DATA-TF PDUs of data), an echo, a
    release or an abort at the end, or nothing after the request."""
    release, abort = P.encode_release_rq(), P.encode_abort(0, 0)
    return [
        _rq() + _store(1, 40_960) + release,
        _rq() + echo_rq(2) + _store(3, 10_240) + _store(4, 61_440) + release,
        _rq() + _store(5, 30_720) + abort,
        _rq() + _store(6, 51_200),
        _rq(),
    ]


def make_input(index: int) -> tuple[list[Read], list[str]]:
    rng = random.Random(SEED * 1_000_003 + index)
    streams = corpus()
    return mutate(rng, _reads(streams[rng.randrange(len(streams))], rng))


@pytest.mark.timeout(600)
def test_mutated_requestor_streams_never_break_the_store_and_forward_scp(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    gate = Gate()
    route = sf_route(tmp_path)
    sf, bus, published = route_under_test(route, gate, 0.05)
    mutations_seen: set[str] = set()

    async def one(port: int, reads: list[Read]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _, data in reads:
                writer.write(data)
                await writer.drain()
            # What the route answers within a moment (an A-ABORT, an A-ASSOCIATE-AC, C-STORE-RSPs).
            await asyncio.wait_for(reader.read(1 << 16), 0.05)
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass

    async def main() -> list[int]:
        port = await sf.start()
        try:
            for index in range(INPUTS):
                reads, done = make_input(index)
                mutations_seen.update(done)
                await one(port, reads)
            await asyncio.sleep(1.0)  # the last associations' ends and their commits
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            client = Client(reader, writer)
            await client.send(_rq())
            assert [type(p) for p in await answers(client, 1)] == [P.AssociateAC]
            await client.send(_store(999, 20_480))
            statuses = [status_of(a) for a in await answers(client, 1)]
            writer.close()
            return statuses
        finally:
            gate.open.set()
            await sf.stop(grace=2.0)

    with caplog.at_level(logging.WARNING, logger="pacsguard"):
        try:
            statuses = asyncio.run(main())
        finally:
            gate.close()
            bus.close(5)
    assert statuses == [dimse.STATUS_SUCCESS], "the route no longer stores after the fuzzing"
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and "internal error" in r.getMessage()]
    internal = [e for e in published if e.kind == "dicom.association.aborted" and "internal" in str(e.details)]
    assert internal == [], [e.message for e in internal[:5]]
    # Not vacuous: every kind of mutation ran, many associations were aborted for what they sent,
    # and some objects were received whole.
    assert mutations_seen >= {"flip", "truncate", "pdu-length", "drop", "repeat", "coalesce", "split", "garbage"}
    aborted = [e for e in published if e.kind == "dicom.association.aborted" and e.details.get("by") == "gateway"]
    received = [e for e in published if e.kind == "gateway.object.received"]
    assert len(aborted) > INPUTS // 10 and len(received) > INPUTS // 10, (len(aborted), len(received))
    # Nothing half-received stays in the spool, and it holds exactly the objects acknowledged (the
    # destination is down: none was forwarded), each with its file: those received whole whose
    # Success could not be sent (the mutated stream's connection ended first) were withdrawn.
    spool = tmp_path / "spool"
    assert list((spool / "tmp").iterdir()) == []
    kept = sorted(spool.glob("objects/*.json"))
    discarded = [e for e in published if e.kind == "gateway.object.discarded"]
    assert len(kept) == len(received) - len(discarded) >= 1  # the clean store at the end among them
    assert all(meta.with_suffix(".dcm").stat().st_size > 0 for meta in kept)
