"""Outside tester, round 4: a User Identity Negotiation sub-item (PS3.7 D.3.3.7.1, Table D.3-14)
with a value the standard does not define is refused by the gateway with an A-ASSOCIATE-RJ
(1/2/1) naming the field, and never reaches the PACS. The tester's User-Identity-Type 9 went
upstream, where pynetdicom's association thread died on it and the modality waited 30 s.

The undefined values are malformed_rq's user-identity cases, refused in memory and at a running
gateway by test_rq_conformance (which also sends a well-formed identity through with pynetdicom);
here, a defined identity is forwarded unchanged."""

from __future__ import annotations

import pytest
from malformed_rq import build
from playbook import Playbook, play, route_config

from pacsguard.dicom import pdu as P

VERIFICATION = "1.2.840.10008.1.1"


def _with_identity(calling: str, identity: P.UserIdentityRQ) -> bytes:
    info = P.UserInformation([P.MaximumLength(16384), P.ImplementationClassUID("1.2.3.4"), identity])
    return build(calling, info=info)


@pytest.mark.parametrize("identity", [P.UserIdentityRQ(1, 0, b"alice"), P.UserIdentityRQ(2, 1, b"alice", b"pw"),
                                      P.UserIdentityRQ(5, 1, b"eyJhbGciOi.x.y")], ids=["type-1", "type-2", "type-5"])
def test_a_defined_user_identity_is_forwarded_unchanged(identity: P.UserIdentityRQ) -> None:
    raw = _with_identity("WS1", identity)

    async def scenario(pb: Playbook) -> None:
        await pb.client(raw)

    pb = play(route_config(), scenario)
    forwarded = P.parse_associate_rq(bytes(pb.upstream_wire.out))
    assert forwarded.user_information is not None and forwarded.user_information.user_identity == identity
