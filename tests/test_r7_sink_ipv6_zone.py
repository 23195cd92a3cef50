"""Round 7: a link-local IPv6 peer's zone ("fe80::1%eth0", as the socket names the peer) is left
out of the SIEM formats' IP fields.

Elasticsearch's `ip` type refuses an address with a zone (mapper_parsing_exception: "is not an IP
string literal"), so the whole ECS document of such an event was refused; CEF's IPv6 Address
(c6a2/c6a3) and LEEF's src/dst are plain addresses too. ECS `source.address` keeps the text."""

from __future__ import annotations

import json
from ipaddress import IPv6Address

from pacsguard.events.model import Event, Party
from pacsguard.sinks.formats import ecs_document, format_cef, format_leef
from test_sink_formats import parse_cef, parse_leef

EVENT = Event(kind="dicom.association.requested", component="gateway",
              actor=Party(ae_title="US_ROOM_3", host="fe80::5054:ff:fe12:3456%eth0", port=50112),
              target=Party(ae_title="PACS", host="fe80::1%2", port=104))


def test_ecs_ip_fields_hold_the_address_and_address_keeps_the_zone() -> None:
    doc = json.loads(json.dumps(ecs_document(EVENT)))
    assert doc["source"]["ip"] == "fe80::5054:ff:fe12:3456" and doc["destination"]["ip"] == "fe80::1"
    assert doc["source"]["address"] == "fe80::5054:ff:fe12:3456%eth0"
    for side in ("source", "destination"):
        # what an ip field takes: an address without a scope (IPv6Address keeps one if given)
        assert IPv6Address(doc[side]["ip"]).scope_id is None


def test_cef_and_leef_address_fields_hold_the_address_only() -> None:
    _, ext = parse_cef(format_cef(EVENT))
    assert (ext["c6a2"], ext["c6a3"]) == ("fe80::5054:ff:fe12:3456", "fe80::1")
    _, attrs = parse_leef(format_leef(EVENT))
    assert (attrs["src"], attrs["dst"]) == ("fe80::5054:ff:fe12:3456", "fe80::1")
