"""What the gateway's event-loop thread spends on one small C-STORE, in process: no sockets, no
peers, no scheduler noise. A relayed association (pacsguard.gateway.relay.AssociationRelay) of
the route `pacsguard gateway run` builds in bench/gateway.py (calling AE and host allow-lists, the
five C- services, the built-in IDS rules inline) is fed, through in-memory transports, the bytes
dcmtk's storescu and storescp exchange: an A-ASSOCIATE-RQ with 128 presentation contexts, the
A-ASSOCIATE-AC, then per C-STORE (PS3.7 9.3.1) the command PDU, the data set in PDUs of the
negotiated maximum (16 KiB: three for the 39 KB CT) and the C-STORE-RSP. Every Event is published
to a real EventBus whose sink discards it (so the bus's ticket and queue are counted, the store's
commit is not; that runs on the writer thread).

    .venv/bin/python bench/relay_cstore.py [--count 2000] [--rounds 7] [--pdu 16384] [--reads N]

Reported: CPU time of the loop thread per C-STORE (`time.thread_time`), best and median of the
rounds; each round is one association of ``--count`` C-STOREs. ``--reads`` joins that many PDUs
into one read (a socket often hands the relay several at once). ``--profile FILE`` writes a
cProfile of one round. The figure is the loop's share of `bench/gateway.py`'s "CPU ms / C-STORE"
of the relay, without the system calls.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from pacsguard.config.schema import GatewayConfig
from pacsguard.dicom import dimse
from pacsguard.dicom import pdu as P
from pacsguard.events import Event, EventBus
from pacsguard.gateway.relay import AssociationRelay, Side
from pacsguard.gateway.server import RouteRuntime

CT = "1.2.840.10008.5.1.4.1.1.2"
DCMTK = "1.2.276.0.7230010.3.0.3.6.7"  # storescu's Implementation Class UID (dcmtk 3.6.7)
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"


class Discard:
    """An EventSink that keeps nothing (the bus's writer thread still takes every batch)."""

    def emit(self, events: list[Event]) -> None:
        pass

    def close(self) -> None:
        pass


class MemoryTransport:
    """What a Side needs of its transport; writes are counted, not kept."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes | memoryview) -> None:
        self.written += len(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000)}.get(name, default)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def corpus(count: int) -> list[tuple[str, bytes]]:
    """``count`` copies of pydicom's CT_small (39 KB) data set, Explicit VR Little Endian, each with
    its own UIDs, as storescu sends them (no File Meta Information): (SOP Instance UID, data set).
    The UIDs are derived from the copy's number, so every run feeds the same bytes."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    path = get_testdata_file("CT_small.dcm")
    assert isinstance(path, str)  # a file name: pydicom ships this test file
    ds = dcmread(path)
    out = []
    for i in range(count):
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (
            generate_uid(entropy_srcs=[what, str(i)]) for what in ("study", "series", "instance"))
        buf = DicomBytesIO()
        buf.is_little_endian, buf.is_implicit_VR = True, False
        write_dataset(buf, ds)
        out.append((str(ds.SOPInstanceUID), buf.getvalue()))
    return out


def route_config() -> GatewayConfig:
    """The route bench/gateway.py starts with `pacsguard gateway run` (see its start_gateway)."""
    return GatewayConfig.model_validate({"routes": [{
        "name": "cli", "listen": {"host": "127.0.0.1", "port": 11112, "ae_title": "GW"},
        "upstream": {"host": "127.0.0.1", "port": 11113, "ae_title": "SINK"},
        "policy": {"calling_ae_titles": ["BENCH"], "hosts": ["127.0.0.1"], "move_destinations": []},
        "record_before_response": False}]})


def association_frames(max_pdu: int) -> tuple[bytes, bytes]:
    """The A-ASSOCIATE-RQ (128 contexts, as storescu proposes by default) and the AC accepting CT."""
    contexts = [P.PresentationContextRQ(1, CT, [EXPLICIT_LE, IMPLICIT_LE])]
    contexts += [P.PresentationContextRQ(2 * i + 1, f"1.2.840.10008.5.1.4.1.1.{i}", [IMPLICIT_LE])
                 for i in range(1, 128)]
    rq = P.AssociateRQ(called_ae_title="GW", calling_ae_title="BENCH", presentation_contexts=contexts,
                       user_information=P.UserInformation.build(max_length=max_pdu,
                                                                implementation_class_uid=DCMTK))
    ac_contexts = [P.PresentationContextAC(1, P.PC_ACCEPTANCE, EXPLICIT_LE)]
    ac_contexts += [P.PresentationContextAC(2 * i + 1, P.PC_ACCEPTANCE, IMPLICIT_LE) for i in range(1, 128)]
    ac = P.AssociateAC("SINK", "BENCH", ac_contexts,
                       P.UserInformation.build(max_length=max_pdu, implementation_class_uid=DCMTK))
    return P.encode_associate_rq(rq), P.encode_associate_ac(ac)


def exchange(datasets: list[tuple[str, bytes]], max_pdu: int) -> list[tuple[list[bytes], bytes]]:
    """Per C-STORE: the request's PDUs (command, then data set fragments) and the response PDU."""
    out = []
    for message_id, (uid, data) in enumerate(datasets, 1):
        rq = dimse.encode_command_set(dimse.CommandSet(dimse.C_STORE_RQ, message_id=message_id,
                                                       affected_sop_class_uid=CT, affected_sop_instance_uid=uid,
                                                       priority=0, command_data_set_type=0x0000))
        request = P.encode_dimse_message(1, rq, None, max_pdu) + P.encode_dimse_message(1, None, data, max_pdu)
        rsp = dimse.encode_command_set(dimse.CommandSet(dimse.C_STORE_RSP, message_id_being_responded_to=message_id,
                                                        affected_sop_class_uid=CT, affected_sop_instance_uid=uid,
                                                        status=0, command_data_set_type=0x0101))
        out.append((request, b"".join(P.encode_dimse_message(1, rsp, None, max_pdu))))
    return out


def route_runtime(bus: EventBus) -> RouteRuntime:
    """The route's runtime as `pacsguard gateway run` builds it, publishing to *bus*."""
    from pacsguard.cli.common import load
    from pacsguard.gateway import Gateway
    from pacsguard.ids.part import rule_engine

    gateway = Gateway(route_config(), bus.publish_ticket, engine=rule_engine(load(None, required=False)))
    return gateway.routes[0]


def one_round(runtime: RouteRuntime, frames: tuple[bytes, bytes], messages: list[tuple[list[bytes], bytes]],
              reads: int) -> float:
    """One association of every message; returns the loop thread's CPU seconds for the C-STOREs."""
    spent = 0.0

    async def scenario() -> None:
        nonlocal spent
        relay = AssociationRelay(runtime)
        client = Side(relay, True)
        client.connection_made(MemoryTransport())  # type: ignore[arg-type]
        upstream = Side(relay, False)

        async def connect(raw_rq: bytes) -> None:
            upstream.connection_made(MemoryTransport())  # type: ignore[arg-type]
            relay.upstream = upstream
            relay.state = "awaiting-ac"

        relay._connect = connect  # type: ignore[method-assign]
        relay.data_received(True, frames[0])
        await asyncio.sleep(0)
        relay.data_received(False, frames[1])
        assert relay.state == "established", relay.state
        feeds = [([b"".join(request[i:i + reads]) for i in range(0, len(request), reads)], response)
                 for request, response in messages]
        began = time.thread_time()
        for chunks, response in feeds:
            for chunk in chunks:
                client.deliver(chunk)
            upstream.deliver(response)
        spent = time.thread_time() - began
        assert not relay.closed, "the association was aborted"
        relay.data_received(True, P.encode_release_rq())
        relay.data_received(False, P.encode_release_rp())

    asyncio.run(scenario())
    return spent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=2000, help="C-STOREs per association (round)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--pdu", type=int, default=16384, help="maximum PDU length both peers advertise")
    ap.add_argument("--reads", type=int, default=1, help="PDUs handed to the relay per read")
    ap.add_argument("--profile", type=Path, default=None, help="write a cProfile of one more round here")
    args = ap.parse_args()
    frames = association_frames(args.pdu)
    messages = exchange(corpus(args.count), args.pdu)
    bus = EventBus(Discard())  # type: ignore[arg-type]
    runtime = route_runtime(bus)
    one_round(runtime, frames, messages[:200], args.reads)  # warm-up
    results = []
    for _ in range(args.rounds):
        results.append(one_round(runtime, frames, messages, args.reads) / args.count * 1e6)
    bus.close()
    print(f"loop thread CPU per C-STORE: best {min(results):.1f} us, median {statistics.median(results):.1f} us "
          f"({args.rounds} rounds of {args.count}; {', '.join(f'{r:.0f}' for r in results)})")
    if args.profile is not None:
        import cProfile

        bus = EventBus(Discard())  # type: ignore[arg-type]
        runtime = route_runtime(bus)
        with cProfile.Profile() as prof:
            one_round(runtime, frames, messages, args.reads)
        bus.close()
        prof.dump_stats(args.profile)
        print(f"profile of one round: {args.profile}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
