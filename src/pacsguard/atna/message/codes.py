"""The coded values of DICOM audit messages: PS3.16 CID 400-405 (audit event IDs, event type codes,
active participant roles, participant object ID types) and the value sets of PS3.15 A.5.1
(EventActionCode, EventOutcomeIndicator, NetworkAccessPointTypeCode, participant object type,
role and life cycle) with the action codes each event of PS3.15 A.5.3 allows."""

from __future__ import annotations

#: CID 400 Audit Event ID (PS3.16): code -> (meaning, the action codes PS3.15 A.5.3 allows for it).
EVENT_IDS: dict[str, tuple[str, str]] = {
    "110100": ("Application Activity", "E"),
    "110101": ("Audit Log Used", "R"),
    "110102": ("Begin Transferring DICOM Instances", "E"),
    "110103": ("DICOM Instances Accessed", "CRUD"),
    "110104": ("DICOM Instances Transferred", "CRU"),
    "110105": ("DICOM Study Deleted", "D"),
    "110106": ("Export", "R"),
    "110107": ("Import", "C"),
    "110108": ("Network Entry", "E"),
    "110109": ("Order Record", "CRUD"),
    "110110": ("Patient Record", "CRUD"),
    "110111": ("Procedure Record", "CRUD"),
    "110112": ("Query", "E"),
    "110113": ("Security Alert", "E"),
    "110114": ("User Authentication", "E"),
}

#: CID 401-403 (PS3.16): the event type codes defined for an event ID.
EVENT_TYPES: dict[str, dict[str, str]] = {
    "110100": {"110120": "Application Start", "110121": "Application Stop"},
    "110108": {"110124": "Attach", "110125": "Detach"},
    "110113": {
        "110126": "Node Authentication", "110127": "Emergency Override Started",
        "110128": "Network Configuration", "110129": "Security Configuration",
        "110130": "Hardware Configuration", "110131": "Software Configuration",
        "110132": "Use of Restricted Function", "110133": "Audit Recording Stopped",
        "110134": "Audit Recording Started", "110135": "Object Security Attributes Changed",
        "110136": "Security Roles Changed", "110137": "User security Attributes Changed",
        "110138": "Emergency Override Stopped", "110139": "Remote Service Operation Started",
        "110140": "Remote Service Operation Stopped", "110141": "Local Service Operation Started",
        "110142": "Local Service Operation Stopped",
    },
    "110114": {"110122": "Login", "110123": "Logout"},
}

#: Event IDs whose event type code is mandatory (PS3.15 A.5.3.1, A.5.3.9, A.5.3.11, A.5.3.12).
TYPE_REQUIRED = frozenset({"110100", "110108", "110113", "110114"})

#: CID 402 Audit Active Participant Role ID Codes.
ROLE_IDS = {"110150": "Application", "110151": "Application Launcher", "110152": "Destination Role ID",
            "110153": "Source Role ID", "110154": "Destination Media", "110155": "Source Media"}

#: CID 404 Audit Participant Object ID Type Code: DICOM's three, and RFC 3881's 1-12.
OBJECT_ID_TYPES = {"110180": "Study Instance UID", "110181": "SOP Class UID", "110182": "Node ID",
                   "1": "Medical Record Number", "2": "Patient Number", "3": "Encounter Number",
                   "4": "Enrollee Number", "5": "Social Security Number", "6": "Account Number",
                   "7": "Guarantor Number", "8": "Report Name", "9": "Report Number",
                   "10": "Search Criteria", "11": "User Identifier", "12": "URI"}

ACTIONS = {"C": "create", "R": "read", "U": "update", "D": "delete", "E": "execute"}
OUTCOMES = {"0": "success", "4": "minor-failure", "8": "serious-failure", "12": "major-failure"}
#: NetworkAccessPointTypeCode: 1 machine name, 2 IP address, 3 telephone number, 4 e-mail, 5 URI.
NETWORK_ACCESS_POINT_TYPES = frozenset({"1", "2", "3", "4", "5"})
#: ParticipantObjectTypeCode: 1 person, 2 system object, 3 organization, 4 other.
OBJECT_TYPES = frozenset({"1", "2", "3", "4"})
OBJECT_ROLES = frozenset(str(n) for n in range(1, 25))
LIFE_CYCLES = frozenset(str(n) for n in range(1, 16))

#: Codes telling a patient participant object: type 1 (person) with role 1 (patient), or ID type 2.
PATIENT_ID_TYPES = frozenset({"2", "1"})
STUDY_UID_TYPE = "110180"


def slug(meaning: str) -> str:
    """An event ID's meaning as the last part of an Event kind: "DICOM Instances Accessed" ->
    "instances-accessed" (DICOM is implied)."""
    words = [w.lower() for w in meaning.replace("DICOM ", "").split()]
    return "-".join(words)
