"""Non-DICOM bytes sent to a route's port (an HTTP request, an SSH banner: a service-detection
scan) are the IDS's `non-dicom` observation inline, as they are to the passive sensor on a DICOM
port, so the built-in rule dicom-non-dicom-bytes and site rules `on: non-dicom` fire at the gateway
too; before, inline, they were a malformed PDU (unknown-pdu-type) and those rules never fired."""

from __future__ import annotations

import pytest
from playbook import Playbook, associate_rq, play, route_config
from test_no_traceback import real_ids


@pytest.mark.parametrize(("first", "guess"), [(b"GET / HTTP/1.1\r\nHost: pacs\r\n\r\n", "http"),
                                              (b"SSH-2.0-OpenSSH_9.2p1\r\n", "ssh")])
def test_non_dicom_first_bytes_raise_the_non_dicom_rule_inline(first: bytes, guess: str) -> None:
    async def scenario(pb: Playbook) -> None:
        await pb.client(first)

    pb = play(route_config(), scenario, engine=real_ids())
    alerts = [e for e in pb.events if e.kind.startswith("ids.alert.")]
    assert [e.kind for e in alerts] == ["ids.alert.dicom-non-dicom-bytes"], pb.kinds()
    assert guess in str(alerts[0].details), alerts[0].details
    assert pb.to_upstream() == []


def test_a_bad_pdu_after_an_associate_rq_is_still_a_malformed_pdu() -> None:
    """Only the stream's first bytes are judged as another protocol: later garbage is DICOM gone wrong."""
    async def scenario(pb: Playbook) -> None:
        await pb.client(associate_rq("WS1") + b"GET / HTTP/1.1\r\n\r\n")

    pb = play(route_config(), scenario, engine=real_ids())
    kinds = pb.kinds()
    assert "ids.alert.dicom-malformed-pdu" in kinds and "ids.alert.dicom-non-dicom-bytes" not in kinds, kinds
