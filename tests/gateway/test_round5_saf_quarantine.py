"""Round 5, store-and-forward and quarantine (issue 19): an association check's quarantine on a
store-and-forward route goes through the gateway's policy (`gateway.quarantine_scope`,
`gateway.admin_hosts`) as on a relayed route, and `Gateway.enforce` cuts off the open
associations of store-and-forward routes too. A real Gateway on a loopback port, a raw-socket
client speaking PS3.8 PDUs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from playbook import CT_STORAGE, VERIFICATION, associate_rq
from test_store_forward_scp import Client, sf_route, status_of, store_rq

from pacsguard.config.schema import GatewayConfig
from pacsguard.dicom import pdu as P
from pacsguard.events import Event
from pacsguard.gateway import Gateway
from pacsguard.gateway import quarantine as q
from pacsguard.gateway.objects import ObjectAction, ObjectVerdict, ReceivedObject
from pacsguard.gateway.store_forward.acceptor import StoreAssociation
from pacsguard.gateway.verdict import Action, Verdict


def _gateway(tmp_path: Path, **config: Any) -> tuple[Gateway, list[Event]]:
    published: list[Event] = []

    def publish(event: Event) -> None:
        published.append(event)

    cfg = GatewayConfig.model_validate({"routes": [sf_route(tmp_path).model_dump()], **config})
    return Gateway(cfg, publish), published


async def _associated(gw: Gateway, calling: str = "WS1") -> tuple[Client, StoreAssociation, asyncio.StreamWriter]:
    """An association with the gateway's store-and-forward route, and the route's side of it."""
    (listener,) = await gw.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    client = Client(reader, writer)
    await client.send(associate_rq(calling, "PACSGUARD", CT_STORAGE, VERIFICATION))
    got = await client.read()
    assert len(got) == 1 and isinstance(got[0], P.AssociateAC), got
    (association,) = gw.stored[0].associations
    return client, association, writer


def _quarantine_by_check(tmp_path: Path, **config: Any) -> list[Event]:
    """A check (an inline IDS rule) asks to quarantine the source of an open association."""
    gw, published = _gateway(tmp_path, **config)

    async def main() -> None:
        client, association, writer = await _associated(gw)
        try:
            association.adm.quarantine(Verdict(Action.QUARANTINE, "IDS rule dicom-ae-brute-force", "ids-rule",
                                               component="ids"))
            await asyncio.sleep(0.2)  # the quarantine is made on the loop's next turn
        finally:
            writer.close()
            await gw.stop(grace=1.0)

    asyncio.run(main())
    return published


def test_a_checks_quarantine_spares_an_admin_host_on_a_store_and_forward_route(tmp_path: Path) -> None:
    published = _quarantine_by_check(tmp_path, admin_hosts=["127.0.0.0/8"])
    assert not [e for e in published if e.kind == q.ADDED]
    (spared,) = [e for e in published if e.kind == q.SPARED]
    assert "gateway.admin_hosts" in spared.details["why"]
    assert spared.details["route"] == "unit"


def test_a_checks_quarantine_takes_the_pair_by_default_on_a_store_and_forward_route(tmp_path: Path) -> None:
    published = _quarantine_by_check(tmp_path)
    (added,) = [e for e in published if e.kind == q.ADDED]
    assert added.details["target"] == "WS1@127.0.0.1"  # not the whole host


def test_a_checks_quarantine_takes_the_host_with_scope_host(tmp_path: Path) -> None:
    published = _quarantine_by_check(tmp_path, quarantine_scope="host")
    (added,) = [e for e in published if e.kind == q.ADDED]
    assert added.details["target"] == "127.0.0.1"


def test_a_quarantine_cuts_off_an_open_store_and_forward_association(tmp_path: Path) -> None:
    gw, published = _gateway(tmp_path)

    async def main() -> list[P.ParsedPDU]:
        client, association, writer = await _associated(gw)
        try:
            gw.quarantine("127.0.0.1", reason="W32.Blaster suspected", component="cli")
            assert association.closed
            return await client.read(2.0)
        finally:
            writer.close()
            await gw.stop(grace=1.0)

    after = asyncio.run(main())
    assert any(isinstance(pdu, P.Abort) for pdu in after), after
    (enforced,) = [e for e in published if e.kind == q.ENFORCED]
    assert enforced.details == {"route": "unit", "target": "127.0.0.1", "reason": "W32.Blaster suspected"}
    assert enforced.target.ae_title == "WS1"


class QuarantineAll:
    """An object check that quarantines every object (as the scanner does an infected one)."""

    name = "quarantine-all"

    def inspect(self, obj: ReceivedObject) -> ObjectVerdict:
        return ObjectVerdict(ObjectAction.QUARANTINE, self.name, "test.infected", "infected")


def test_quarantine_sender_answers_the_failure_status_before_cutting_the_sender_off(tmp_path: Path) -> None:
    published: list[Event] = []
    route = sf_route(tmp_path, object_checks=["scan"], quarantine_sender=True)
    cfg = GatewayConfig.model_validate({"routes": [route.model_dump()]})
    gw = Gateway(cfg, published.append, object_checks=lambda r: [QuarantineAll()])

    async def main() -> list[P.ParsedPDU]:
        client, association, writer = await _associated(gw)
        try:
            await client.send(store_rq())
            got: list[P.ParsedPDU] = []
            for _ in range(3):
                got += await client.read(2.0)
                if any(isinstance(pdu, P.Abort) for pdu in got):
                    break
            return got
        finally:
            writer.close()
            await gw.stop(grace=1.0)

    got = asyncio.run(main())
    assert [type(pdu) for pdu in got] == [P.PDataTF, P.Abort], got
    assert status_of(got[0]) == 0xC000  # the modality learns it was refused, then is cut off
    (added,) = [e for e in published if e.kind == q.ADDED]
    assert added.details["target"] == "127.0.0.1"  # quarantine_sender: the sending host
