"""The relay's A-RELEASE-RP held behind answers that wait for their records (route
`record_before_response`): the association was recorded `released` when the PACS's RP arrived,
before the client had it. A client that then hung up was "released" (it never got the RP), and
records that missed `record_timeout` gave one association two ends, `released` then `aborted`.
Now it is released once the RP has left for the client (PS3.8 9.2.3: still releasing until then),
and a PACS closing its leg right after its RP (pynetdicom does) still waits for that."""

from __future__ import annotations

import asyncio

from playbook import response, route_config
from test_durable import STORE_ACK, DurablePlaybook, Gate, associate, run, store_rq, until

from pacsguard.dicom import pdu as P


def ends(pb: DurablePlaybook) -> list[tuple[str, str | None]]:
    return [(e.kind, e.details.get("cause")) for e in pb.events
            if e.kind in ("dicom.association.released", "dicom.association.aborted")]


async def held_release(pb: DurablePlaybook, gate: Gate) -> None:
    """A C-STORE acknowledged by the PACS while the records are held shut, then a release whose RP
    the PACS answers at once: both answers wait for the client."""
    await associate(pb)
    gate.shut()
    rq = store_rq()
    await pb.client(rq)
    await pb.upstream(response(rq))
    await pb.client(P.encode_release_rq())
    await pb.upstream(P.encode_release_rp())
    await asyncio.sleep(0.2)
    assert pb.to_client() == [], "an answer reached the client before its record"
    assert ends(pb) == [], "released before the client had the A-RELEASE-RP"


def test_a_client_that_hangs_up_before_its_held_release_rp_is_aborted_not_released() -> None:
    async def scenario(pb: DurablePlaybook, gate: Gate) -> None:
        await held_release(pb, gate)
        assert pb.relay is not None
        pb.relay.connection_lost(True, ConnectionResetError(104, "Connection reset by peer"))
        gate.open.set()
        await until(lambda: ends(pb))

    pb = run(route_config(), scenario)
    assert ends(pb) == [("dicom.association.aborted", "connection-lost")]
    assert "client closed the connection during release" in pb.events[-1].message


def test_records_missing_their_timeout_end_the_release_once() -> None:
    async def scenario(pb: DurablePlaybook, gate: Gate) -> None:
        await held_release(pb, gate)
        assert pb.relay is not None
        await until(lambda: pb.relay is not None and pb.relay.closed, timeout=5)

    pb = run(route_config(record_timeout=0.5), scenario)
    assert ends(pb) == [("dicom.association.aborted", "record-failure")]


def test_a_pacs_closing_after_its_rp_still_releases_once_the_client_has_it() -> None:
    async def scenario(pb: DurablePlaybook, gate: Gate) -> None:
        await held_release(pb, gate)
        assert pb.relay is not None
        pb.relay.connection_lost(False, None)  # the PACS closes its leg after its RP
        assert not pb.relay.closed
        gate.open.set()
        got = await until(pb.to_client)
        assert [s.name for s in got] == [STORE_ACK.name, "A-RELEASE-RP"]
        await until(lambda: ends(pb))

    pb = run(route_config(), scenario)
    assert ends(pb) == [("dicom.association.released", None)]
