"""Outside round 12: who ended an association whose connection was lost. The relay recorded
`by: gateway` for a client or a PACS that closed its connection without A-RELEASE (or during the
release), while the store-and-forward acceptor records `by: client` for the same event; docs/events.md
lists `by` as the side that ended it. Both route kinds now name the side whose connection ended
(PS3.8 9.2.3: an A-P-ABORT), and the gateway only when it aborted by its own decision."""

from __future__ import annotations

import pytest
from playbook import STUDY_FIND, Playbook, play, route_config
from test_r11F_release_cut import POLICY, find_rq

from pacsguard.dicom import pdu as P


@pytest.mark.parametrize("releasing", [False, True], ids=["established", "releasing"])
@pytest.mark.parametrize("client_drops", [False, True], ids=["upstream-drops", "client-drops"])
def test_a_lost_connection_is_recorded_by_the_side_that_lost_it(client_drops: bool, releasing: bool) -> None:
    async def scenario(pb: Playbook) -> None:
        await pb.associate(STUDY_FIND)
        await pb.client(find_rq())
        if releasing:
            await pb.client(P.encode_release_rq())
        assert pb.relay is not None
        pb.relay.connection_lost(client_drops, ConnectionResetError(104, "Connection reset by peer"))
        assert pb.relay.closed

    pb = play(route_config(policy=POLICY), scenario)
    end = pb.events[-1]
    who = "client" if client_drops else "upstream"
    assert (end.kind, end.details["cause"], end.details["by"]) == ("dicom.association.aborted", "connection-lost",
                                                                   who), end.details
    assert end.message.startswith(f"{who} closed the connection"), end.message
    assert "aborted by the gateway" not in end.message


def test_an_abort_the_gateway_decides_is_still_by_the_gateway() -> None:
    async def scenario(pb: Playbook) -> None:
        await pb.associate(STUDY_FIND)
        assert pb.relay is not None
        pb.relay.abort("idle past the route's timeout", kind="timeout")

    pb = play(route_config(policy=POLICY), scenario)
    end = pb.events[-1]
    assert (end.details["by"], end.details["cause"]) == ("gateway", "timeout"), end.details
    assert end.message == "aborted by the gateway: idle past the route's timeout"
