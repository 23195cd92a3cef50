"""Round 6 (outside testing with other peers): two requests under one Message ID, sent without
waiting for the first answer (an operations window above 1), kept one C-STORE out of the record.
The relay and the store-and-forward SCP now end such an association as a protocol violation
(PS3.7 9.1.1); distinct Message IDs still pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playbook import VERIFICATION, echo_rq, play, route_config, split
from test_durable import Gate
from test_store_forward_scp import DATASET, Client, answers, associate, run, sf_route, status_of, store_rq

from pacsguard.dicom import dimse
from pacsguard.dicom import pdu as P


def test_the_store_and_forward_scp_refuses_a_message_id_still_unanswered(tmp_path: Path) -> None:
    async def scenario(client: Client, gate: Gate, published: list[Any]) -> None:
        await associate(client)
        await client.send(store_rq(4, DATASET) + store_rq(4, DATASET))
        got = await client.read()
        assert got and isinstance(got[-1], P.Abort), got

    published = run(sf_route(tmp_path), scenario)
    violations = [e for e in published if e.kind == "dicom.protocol.violation"]
    assert [v.details["code"] for v in violations] == ["message-id-in-use"], [e.kind for e in published]
    assert "Message ID 4" in violations[0].message


def test_the_store_and_forward_scp_pipelines_distinct_message_ids(tmp_path: Path) -> None:
    async def scenario(client: Client, gate: Gate, published: list[Any]) -> None:
        await associate(client)
        await client.send(store_rq(4, DATASET) + store_rq(5, DATASET))
        assert [status_of(a) for a in await answers(client, 2)] == [dimse.STATUS_SUCCESS] * 2

    published = run(sf_route(tmp_path), scenario)
    assert not [e for e in published if e.kind == "dicom.protocol.violation"]


def test_the_relay_answers_a_reused_message_id_with_an_abort_and_records_it() -> None:
    async def scenario(pb: Any) -> None:
        await pb.associate(VERIFICATION)
        await pb.client(echo_rq(message_id=9), echo_rq(message_id=9))

    pb = play(route_config(), scenario)
    forwarded = split(bytes(pb.upstream_wire.out))
    assert forwarded.count(echo_rq(message_id=9)) == 1  # the second never reached the PACS
    violations = [e for e in pb.events if e.kind == "dicom.protocol.violation"]
    assert [v.details["code"] for v in violations] == ["message-id-in-use"]
