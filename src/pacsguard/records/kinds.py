"""The kinds of Event an association record writes (docs/events.md), whoever fed it: one
declaration for the gateway and the passive sensor alike."""

from __future__ import annotations

from typing import Any

from pacsguard.events.kinds import BOOLEAN, INTEGER, NUMBER, OBJECT, STATUS, STRING, STRINGS, EventKind, nullable

_INT = nullable(INTEGER)
#: The 802.1Q VLAN id(s) of a tagged connection the passive sensor saw, outer first (802.1ad QinQ).
VLAN = {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 4095}, "minItems": 1, "maxItems": 2}
_WHERE: dict[str, dict[str, Any]] = {
    "route": nullable(STRING), "flow": STRING, "sensor": nullable(STRING), "called_ae": nullable(STRING),
    "vlan": VLAN,
    # User Identity Negotiation (PS3.7 D.3.3.7.1): the type and, for types 1-2, the claimed username
    "user_identity": {"type": "object", "properties": {"type": {"anyOf": [STRING, INTEGER]}, "username": STRING,
                                                       "username_bytes": INTEGER,
                                                       # the acceptor's positive response (PS3.7 D.3.3.7.2)
                                                       "confirmed": BOOLEAN},
                      "required": ["type"], "additionalProperties": False}}
_TOTALS: dict[str, dict[str, Any]] = {
    "bytes_from_client": INTEGER, "bytes_from_upstream": INTEGER, "duration_ms": NUMBER,
    "pdus_from_client": INTEGER, "pdus_from_upstream": INTEGER,
    "capture": OBJECT,  # what only a capture knows: TCP close, gaps, resyncs, per-direction counts
}
_BY = {"enum": ["client", "upstream", "gateway", "sensor"]}
_ANSWER: dict[str, dict[str, Any]] = {"result": _INT, "source": _INT, "reason_code": _INT}

KINDS = (
    EventKind("dicom.association.requested", "an A-ASSOCIATE-RQ (PS3.8 9.3.2) was seen",
              {**_WHERE, "contexts": INTEGER, "tls": BOOLEAN, "certificate": nullable(OBJECT),
               # the C-MOVE whose SCP opened this association to its Move Destination (PS3.4 C.4.2.2)
               "expected_by": {"type": "object", "properties": {"flow": STRING, "message_id": _INT},
                               "required": ["flow"], "additionalProperties": False}},
              required=("route", "called_ae")),
    EventKind("dicom.association.accepted", "the acceptor accepted it (A-ASSOCIATE-AC) and the policy let it through",
              {**_WHERE, "accepted": STRINGS, "refused_by_policy": STRINGS, "max_pdu": _INT},
              required=("route", "accepted")),
    EventKind("dicom.association.rejected", "refused by the gateway or by the acceptor (A-ASSOCIATE-RJ)",
              {**_WHERE, "by": _BY, "rule": STRING, "reason": STRING, **_ANSWER, "capture": OBJECT},
              required=("route", "by")),
    EventKind("dicom.association.released", "A-RELEASE completed (PS3.8 9.3.6-9.3.7)",
              {**_WHERE, **_TOTALS}, required=("route",)),
    EventKind("dicom.association.aborted", "A-ABORT from either side, by the gateway, or the connection ended",
              {**_WHERE, **_TOTALS, "by": _BY, "reason": STRING, "cause": STRING, "source": _INT, "reason_code": _INT},
              required=("route", "by")),
    EventKind("dicom.dimse.*", "one DIMSE request (PS3.7) at its final response, refusal or end",
              {**_WHERE, "message_id": _INT, "sop_class": nullable(STRING), "duration_ms": NUMBER, "status": STATUS,
               "sop_instance": STRING, "series_uid": STRING, "bytes": INTEGER, "level": STRING,
               "query": {"type": "object", "additionalProperties": STRING}, "responses": INTEGER,
               "move_destination": STRING,
               # a C-MOVE sub-operation's Move Originator AE Title and Message ID (PS3.7 9.1.1.1)
               "move_originator": {"type": "object", "properties": {"ae_title": nullable(STRING),
                                                                    "message_id": _INT},
                                   "additionalProperties": False},
               # the C-MOVE (relayed by another route) a sub-operation's C-STORE was linked to
               "c_move": {"type": "object", "properties": {
                   "route": nullable(STRING), "requestor_ae": nullable(STRING), "message_id": INTEGER,
                   "linked_by": {"enum": ["move_originator", "message_id", "destination"]},
                   # the Move Originator AE Title is not the C-MOVE requestor's (PS3.7 9.1.1.1)
                   "originator_mismatch": BOOLEAN},
                   "required": ["route", "linked_by", "originator_mismatch"], "additionalProperties": False},
               # what a C-MOVE's sub-operations delivered through the destination's return route
               "delivered": {"type": "object", "properties": {
                   "instances": INTEGER, "routes": STRINGS, "move_originators": STRINGS,
                   "originator_mismatch": INTEGER, "patients_omitted": INTEGER,
                   # past the ledger's bound (records/moves.py): counted, not listed
                   "studies_omitted": INTEGER, "instances_unchecked": INTEGER, "ledger_full": BOOLEAN,
                   # forgotten by a full ledger of open C-MOVEs: later deliveries not counted
                   "evicted": BOOLEAN},
                   "required": ["instances", "routes"], "additionalProperties": False},
               # identifiers left out of patient_ids / study_uids once they hold 1,000
               "patients_omitted": INTEGER, "studies_omitted": INTEGER,
               "suboperations": {"type": "object", "additionalProperties": _INT},
               "decision": {"enum": ["refused", "aborted"]}, "rule": nullable(STRING),
               # attributes the gateway replaced in the responses, and in how many (e.g. RetrieveAETitle)
               "rewritten": {"type": "object", "additionalProperties": INTEGER},
               # a storage commitment request's instances (PS3.4 J.3.2 N-ACTION, J.3.3 N-EVENT-REPORT)
               "commitment": {"type": "object", "properties": {
                   "transaction_uid": nullable(STRING), "requested": INTEGER, "committed": INTEGER,
                   "sop_instances": STRINGS, "sop_instances_omitted": INTEGER, "failed": INTEGER,
                   "failed_instances": {"type": "array", "items": {
                       "type": "object", "properties": {"sop_instance": STRING, "reason": nullable(STRING)},
                       "required": ["sop_instance"], "additionalProperties": False}},
                   "failed_instances_omitted": INTEGER, "patients_unknown": INTEGER},
                   "additionalProperties": False}},
              required=("route", "message_id", "sop_class", "duration_ms")),
    EventKind("dicom.protocol.violation", "a malformed PDU or a PS3.8 9.2 state violation",
              {**_WHERE, "code": STRING, "from": {"enum": ["client", "upstream"]}, "state": STRING},
              required=("code", "from")),
)

__all__ = ["KINDS"]
