"""`on_record_failure: refuse` (the default): while the events of the gateway cannot be made
durable (the store's disk is full, its database is down), nothing new is admitted, so nothing is
acknowledged that the audit trail cannot show.

- A new association gets an A-ASSOCIATE-RJ, result rejected-transient, source DICOM UL
  service-provider (presentation related function), reason local-limit-exceeded (PS3.8 9.3.4,
  Table 9-21): the limit is the gateway's own, its audit store, and transient tells the modality
  to try again later rather than give up.
- A new request on an association already open gets the "out of resources" failure status of its
  service, and the PACS never sees it: 0xA700 for C-STORE (PS3.4 Table B.2-1) and C-FIND (Table
  C.4-1), 0xA701 for C-MOVE and C-GET (Tables C.4-2, C.4-3), 0x0110 processing failure (PS3.7
  C.4) for any other.

Not in `checks:`: it is what the route's `on_record_failure` says, first in the chain whatever
the configured order. Answers already on their way wait for their record in the relay.
"""

from __future__ import annotations

from pacsguard.dicom import dimse
from pacsguard.dicom import pdu as P
from pacsguard.dicom.events import DimseCommand, ProtocolEvent
from pacsguard.events.durable import Durability
from pacsguard.gateway.check import Association, Check
from pacsguard.gateway.verdict import ALLOW, RJ_LIMIT, Verdict, refuse
from pacsguard.records.dicom import Pending

RULE = "on_record_failure"
_OUT_OF_RESOURCES = {dimse.C_STORE_RQ: dimse.STATUS_OUT_OF_RESOURCES, dimse.C_FIND_RQ: dimse.STATUS_OUT_OF_RESOURCES,
                     dimse.C_MOVE_RQ: 0xA701, dimse.C_GET_RQ: 0xA701}


def out_of_resources(command_field: int) -> int:
    """The failure status that says "cannot do this now" for a request of this DIMSE service."""
    return _OUT_OF_RESOURCES.get(command_field, dimse.STATUS_PROCESSING_FAILURE)


class RecordingCheck(Check):
    name = "recording"

    def __init__(self, durability: Durability) -> None:
        self.durability = durability

    def _why(self) -> str:
        return f"the audit store cannot record events: {self.durability.bus.health().error}"

    def on_associate(self, assoc: Association, rq: P.AssociateRQ, events: list[ProtocolEvent]) -> Verdict:
        if not self.durability.failing:
            return ALLOW
        return refuse(self._why(), RULE, rj=RJ_LIMIT)

    def on_request(self, assoc: Association, pending: Pending, event: DimseCommand) -> Verdict:
        if not self.durability.failing:
            return ALLOW
        return refuse(self._why(), RULE, status=out_of_resources(event.command.command_field))
