"""DICOM's observation kinds and their fields (PS3.8 Upper Layer, PS3.7 DIMSE), registered with
the engine's kind registry (:func:`pacsguard.ids.observation.register_kinds`).

:class:`~pacsguard.ids.dicom.adapter.DicomAdapter` produces them; rules name them with
``protocol: dicom``.  docs/ids.md documents every field.  Kept apart from the adapter so that
loading and validating rules needs only the vocabulary (:mod:`pacsguard.dicom.reasons`).
"""

from __future__ import annotations

from typing import Final

from pacsguard.dicom.reasons import ABORT_REASONS, RJ_REASONS, RJ_SOURCES
from pacsguard.ids.observation import FieldType, Roles, register_kinds

PROTOCOL: Final = "dicom"

_AES: Final[dict[str, tuple[FieldType, str]]] = {
    "calling_ae": ("str", "Calling AE Title of the association (A-ASSOCIATE-RQ, PS3.8 9.3.2)"),
    "called_ae": ("str", "Called AE Title of the association"),
}
_DIR: Final[dict[str, tuple[FieldType, str]]] = {
    "from_requestor": ("bool", "true when the association requestor (the client) sent it"),
}

register_kinds(
    PROTOCOL,
    {
        "association-request": (
            "an A-ASSOCIATE-RQ (PS3.8 9.3.2)",
            {
                **_AES,
                "ae_titles": ("str-list", "[calling_ae, called_ae], to test both at once"),
                "abstract_syntaxes": ("str-list", "abstract syntax (SOP class) UIDs of every proposed context"),
                "context_count": ("int", "number of proposed presentation contexts"),
                "max_pdu_length": ("int", "Maximum Length the requestor can receive (0 = unlimited)"),
                "implementation_class_uid": ("str", "Implementation Class UID (PS3.7 D.3.3.2)"),
                "implementation_version_name": ("str", "Implementation Version Name (PS3.7 D.3.3.2)"),
                "user_identity_type": ("int", "User Identity type (PS3.7 D.3.3.7), absent without one"),
                "application_context": ("str", "Application Context Name UID"),
                "expected_by": ("str", "flow#message_id of the C-MOVE-RQ that announced this association (its SCP "
                                       "associating with the Move Destination, PS3.4 C.4.2.2); absent otherwise"),
            },
        ),
        "association-result": (
            "the answer to an association request: A-ASSOCIATE-AC or -RJ, or the gateway's own rejection",
            {
                **_AES,
                "ae_pair": ("str", "calling_ae->called_ae"),
                "rejected": ("bool", "true for a rejection"),
                "result": ("str", "accepted, rejected-permanent or rejected-transient"),
                "source": ("str", f"who rejected (PS3.8 Table 9-21): {', '.join(RJ_SOURCES.values())}, or gateway"),
                "reason": ("str", f"reason slug (PS3.8 Table 9-21): {', '.join(dict.fromkeys(RJ_REASONS.values()))}, "
                                  "or other"),
                "reason_text": ("str", "the sensor's words for the rejection, when it gave some"),
                "by": ("str", "acceptor (the real SCP answered) or gateway (refused before the upstream)"),
            },
        ),
        "abort": (
            "an A-ABORT (PS3.8 9.3.8)",
            {
                **_AES,
                **_DIR,
                "source": ("int", "abort source: 0 service user, 2 service provider"),
                "reason": ("int", ("abort reason/diag (PS3.8 Table 9-26): "
                                   + ", ".join(f"{n} {name}" for n, name in ABORT_REASONS.items()))),
            },
        ),
        "dimse-request": (
            "a DIMSE request command (PS3.7 9.3, 10.3), before its data set",
            {
                **_AES,
                **_DIR,
                "command": ("str", "e.g. C-FIND-RQ"),
                "service": ("str", "e.g. C-FIND"),
                "sop_class_uid": ("str", "Affected (or Requested) SOP Class UID"),
                "sop_instance_uid": ("str", "Affected (or Requested) SOP Instance UID"),
                "abstract_syntax": ("str", "the presentation context's abstract syntax (absent when unknown)"),
                "transfer_syntax": ("str", "the presentation context's transfer syntax (absent when unknown)"),
                "message_id": ("int", "Message ID"),
                "priority": ("int", "Priority (0 medium, 1 high, 2 low)"),
                "move_destination": ("str", "Move Destination AE Title (C-MOVE-RQ)"),
                "sender_ae": ("str", "AE title of the side that sent it (calling_ae or called_ae)"),
                "has_dataset": ("bool", "a data set follows"),
            },
        ),
        "dimse-response": (
            "a DIMSE response command",
            {
                **_AES,
                **_DIR,
                "command": ("str", "e.g. C-MOVE-RSP"),
                "service": ("str", "e.g. C-MOVE"),
                "sop_class_uid": ("str", "Affected SOP Class UID"),
                "message_id": ("int", "Message ID Being Responded To"),
                "status": ("int", "Status (PS3.7 Annex C)"),
                "status_category": ("str", "success, pending, cancel, warning or failure"),
                "remaining": ("int", "Number of Remaining Sub-operations"),
                "completed": ("int", "Number of Completed Sub-operations"),
                "failed": ("int", "Number of Failed Sub-operations"),
                "warning": ("int", "Number of Warning Sub-operations"),
                "suboperations_announced": (
                    "int",
                    ("on the first response to a C-MOVE/C-GET request only: remaining + completed + failed "
                     "+ warning, the size of the whole retrieve"),
                ),
            },
        ),
        "dataset": (
            "the identifiers at the start of a DIMSE data set (a stored object or a query identifier)",
            {
                **_AES,
                **_DIR,
                "command": ("str", "the command the data set belongs to, e.g. C-FIND-RQ"),
                "service": ("str", "e.g. C-FIND"),
                "sender_ae": ("str", "AE title of the side that sent it"),
                "sop_class_uid": ("str", "SOP Class UID (0008,0016), else the command's"),
                "sop_instance_uid": ("str", "SOP Instance UID (0008,0018)"),
                "patient_id": ("str", "Patient ID (0010,0020); empty string when present but empty"),
                "patient_name": ("str", "Patient's Name (0010,0010); empty string when present but empty"),
                "study_instance_uid": ("str", "Study Instance UID (0020,000D)"),
                "series_instance_uid": ("str", "Series Instance UID (0020,000E)"),
                "accession_number": ("str", "Accession Number (0008,0050)"),
                "modality": ("str", "Modality (0008,0060)"),
                "query_level": ("str", "Query/Retrieve Level (0008,0052): PATIENT, STUDY, SERIES, IMAGE"),
                "patient_keys_empty": (
                    "bool",
                    ("Patient ID and Patient's Name are both absent, empty or only wildcards such as * "
                     "(universal matching, PS3.4 C.2.2.2.3 and C.2.2.2.4)"),
                ),
                "queried_patient": (
                    "str",
                    ("the patient a query or retrieve names: Patient ID, else Patient's Name; absent when "
                     "neither names one (empty or wildcard only). A key listing several values (PS3.5 6.4, "
                     "A\\B) names each: rules that test, count or group by this field see every one"),
                ),
                "complete": ("bool", "every identifier the peek looks for was seen"),
                "anomaly": ("str", "structural problem that stopped the peek early"),
            },
        ),
        "decode-error": (
            "bytes the DICOM decoder could not decode (malformed PDU, length overflow, bad command set)",
            {
                **_AES,
                "from_client": ("bool", "true when the client sent the bytes"),
                "code": ("str", "the decoder's stable error code, e.g. bad-item-length"),
                "message": ("str", "what was wrong and where"),
                "offset": ("int", "byte offset of the bad field, when known"),
            },
        ),
        "protocol-violation": (
            "a well-formed PDU that is not allowed in the association's state (PS3.8 9.2)",
            {
                **_AES,
                **_DIR,
                "code": ("str", "stable code, e.g. unexpected-pdu, pdu-exceeds-negotiated-max"),
                "message": ("str", "what happened"),
            },
        ),
        "non-dicom": (
            "the first bytes of a connection to a DICOM port are not DICOM",
            {
                "length": ("int", "bytes seen"),
                "protocol_guess": ("str", "tls, http, ssh, smb, rdp, text or unknown"),
                "first_bytes": ("str", "up to the first 16 bytes, in hex"),
            },
        ),
        "flow-closed": (
            "the connection ended; a summary of what it did",
            {
                **_AES,
                "ae_pair": ("str", "calling_ae->called_ae"),
                "associated": ("bool", "an A-ASSOCIATE-RQ was seen"),
                "accepted": ("bool", "the association was accepted"),
                "rejected": ("bool", "the association was rejected"),
                "released": ("bool", "an A-RELEASE was seen"),
                "aborted": ("bool", "an A-ABORT was seen"),
                "dimse_requests": ("int", "DIMSE requests sent by the requestor"),
                "services": ("str-list", "distinct services requested, e.g. [C-ECHO]"),
                "probe": ("bool", "an association was requested and nothing but C-ECHO was asked"),
                "duration": ("float", "seconds from the association request to the close"),
            },
        ),
    },
    Roles(actor="calling_ae", target="called_ae", patient="patient_id", study="study_instance_uid"),
)
