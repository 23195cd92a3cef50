"""A structural check of DICOM audit messages against PS3.15 A.5.1 (the RELAX NG schema of the
AuditMessage) and the per-event rules of A.5.3, written as code: which elements and attributes
each element may and must have, their value sets, and for each event ID the action codes and
event type codes it allows and the participant objects it must name.

Used on the corpus of received messages in the tests and on pacsguard's own outbound messages.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from xml.etree.ElementTree import Element

from pacsguard.atna.message import codes
from pacsguard.atna.message.dicom_xml import parse_datetime
from pacsguard.atna.message.reader import token

#: Per element: (attributes required, attributes optional, children as name -> (min, max or None)).
_Shape = tuple[frozenset[str], frozenset[str], dict[str, tuple[int, int | None]]]

_CODED: _Shape = (frozenset({"csd-code", "codeSystemName", "originalText"}),
                  frozenset({"displayName", "codeSystem"}), {})

SHAPES: dict[str, _Shape] = {
    "AuditMessage": (frozenset(), frozenset(), {
        "EventIdentification": (1, 1), "ActiveParticipant": (1, None),
        "AuditSourceIdentification": (1, 1), "ParticipantObjectIdentification": (0, None)}),
    "EventIdentification": (frozenset({"EventDateTime", "EventOutcomeIndicator"}), frozenset({"EventActionCode"}), {
        "EventID": (1, 1), "EventTypeCode": (0, None), "EventOutcomeDescription": (0, 1),
        "PurposeOfUse": (0, None)}),
    "EventID": _CODED, "EventTypeCode": _CODED, "PurposeOfUse": _CODED, "RoleIDCode": _CODED,
    "MediaType": _CODED, "ParticipantObjectIDTypeCode": _CODED,
    # AuditSourceTypeCodeContent: csd-code alone (one of A.5.1.2.1's 1-9), or with the other attributes
    # of a coded value (_source_type checks the pairing).
    "AuditSourceTypeCode": (frozenset({"csd-code"}), _CODED[0] - {"csd-code"} | _CODED[1], {}),
    "EventOutcomeDescription": (frozenset(), frozenset(), {}),
    "ActiveParticipant": (frozenset({"UserID", "UserIsRequestor"}),
                          frozenset({"AlternativeUserID", "UserName", "NetworkAccessPointID",
                                     "NetworkAccessPointTypeCode"}),
                          {"RoleIDCode": (0, None), "MediaIdentifier": (0, 1)}),
    "MediaIdentifier": (frozenset(), frozenset(), {"MediaType": (1, 1)}),
    "AuditSourceIdentification": (frozenset({"AuditSourceID"}), frozenset({"AuditEnterpriseSiteID"}),
                                  {"AuditSourceTypeCode": (0, None)}),
    "ParticipantObjectIdentification": (
        frozenset({"ParticipantObjectID"}),
        frozenset({"ParticipantObjectTypeCode", "ParticipantObjectTypeCodeRole", "ParticipantObjectDataLifeCycle",
                   "ParticipantObjectSensitivity"}),
        {"ParticipantObjectIDTypeCode": (1, 1), "ParticipantObjectName": (0, 1), "ParticipantObjectQuery": (0, 1),
         "ParticipantObjectDetail": (0, None), "ParticipantObjectDescription": (0, 1), "SOPClass": (0, None),
         "Accession": (0, None), "MPPS": (0, None), "ParticipantObjectContainsStudy": (0, 1),
         "Encrypted": (0, 1), "Anonymized": (0, 1)}),
    "ParticipantObjectName": (frozenset(), frozenset(), {}),
    "ParticipantObjectQuery": (frozenset(), frozenset(), {}),
    "ParticipantObjectDescription": (frozenset(), frozenset(), {}),
    "ParticipantObjectDetail": (frozenset({"type", "value"}), frozenset(), {}),
    "SOPClass": (frozenset({"UID"}), frozenset({"NumberOfInstances"}), {"Instance": (0, None)}),
    "Instance": (frozenset({"UID"}), frozenset(), {}),
    "Accession": (frozenset({"Number"}), frozenset(), {}),
    "MPPS": (frozenset({"UID"}), frozenset(), {}),
    "ParticipantObjectContainsStudy": (frozenset(), frozenset(), {"StudyIDs": (1, None)}),
    "StudyIDs": (frozenset({"UID"}), frozenset(), {}),
    "Encrypted": (frozenset(), frozenset(), {}),
    "Anonymized": (frozenset(), frozenset(), {}),
}

#: Attribute value sets of A.5.1.
_VALUES: dict[tuple[str, str], frozenset[str]] = {
    ("EventIdentification", "EventActionCode"): frozenset(codes.ACTIONS),
    ("EventIdentification", "EventOutcomeIndicator"): frozenset(codes.OUTCOMES),
    ("ActiveParticipant", "UserIsRequestor"): frozenset({"true", "false", "1", "0"}),
    ("ActiveParticipant", "NetworkAccessPointTypeCode"): codes.NETWORK_ACCESS_POINT_TYPES,
    ("ParticipantObjectIdentification", "ParticipantObjectTypeCode"): codes.OBJECT_TYPES,
    ("ParticipantObjectIdentification", "ParticipantObjectTypeCodeRole"): codes.OBJECT_ROLES,
    ("ParticipantObjectIdentification", "ParticipantObjectDataLifeCycle"): codes.LIFE_CYCLES,
    ("Encrypted", ""): frozenset({"true", "false"}),
    ("Anonymized", ""): frozenset({"true", "false"}),
}

#: A.5.1.2.1: the audit source types an AuditSourceTypeCode may name by its csd-code alone.
_SOURCE_TYPES = frozenset(str(n) for n in range(1, 10))
#: XSD 1.0 Part 1 3.2.7: the xsi: attributes (xsi:noNamespaceSchemaLocation, as dcm4che writes it on
#: AuditMessage) are allowed on any element without being declared by the schema.
_XSI = "{http://www.w3.org/2001/XMLSchema-instance}"

#: PS3.15 A.5.3: participant objects an event must name (patient, study), per event ID.
NEEDS_PATIENT = frozenset({"110102", "110103", "110104", "110105", "110106", "110107", "110110"})
NEEDS_STUDY = frozenset({"110102", "110103", "110104", "110105", "110106", "110107"})
#: IHE's event type codes name the transaction (IHE ITI TF-2 3.43.6: EV("ITI-43", "IHE Transactions",
#: "Retrieve Document Set")); such a message audits IHE's exchange, not DICOM's.
IHE_TRANSACTIONS = "IHE Transactions"
#: A document as IHE names it where A.5.3 wants a study (IHE ITI TF-2 3.43.6): ID type 9, Report
#: Number (RFC 3881), the ParticipantObjectID its DocumentUniqueId.
DOCUMENT_ID_TYPE = "9"
#: An XDS submission set as IHE names it (IHE ITI TF-2 3.41.5.1.1 and 3.42.5.1.1, the Provide and
#: Register and Register Document Set-b messages): ID type EV("urn:uuid:a54d6aa5-d40d-43f9-88c5-
#: b4633d873bdd", "IHE XDS Metadata", "submission set classificationNode"), its uniqueId the ID.
#: A.5.1's ParticipantObjectIDTypeCode is a coded value of any scheme: IHE's is as valid as DICOM's.
SUBMISSION_SET_ID_TYPE = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
#: What each IHE transaction's Export or Import moves, in A.5.3's place of the study (IHE ITI TF-2:
#: 3.41.5.1.1 and 3.42.5.1.1, a submission set; 3.43.6, a document, as XCA's ITI-39 audits it),
#: with the sentence that names it; any other IHE transaction may name any of these.
_IHE_MOVES: dict[str, tuple[frozenset[str], str]] = {
    **dict.fromkeys(("ITI-41", "ITI-42"), (frozenset({SUBMISSION_SET_ID_TYPE}),
                                          f"a submission set participant object (ID type {SUBMISSION_SET_ID_TYPE})")),
    **dict.fromkeys(("ITI-43", "ITI-39"), (frozenset({DOCUMENT_ID_TYPE}), "a study participant object (ID type "
                                          "110180) (or, for an IHE transaction, a document: ID type 9)")),
}
_IHE_ANY = (frozenset({DOCUMENT_ID_TYPE, SUBMISSION_SET_ID_TYPE}),
            "a study participant object (ID type 110180) (or, for an IHE transaction, a document: ID type 9, or "
            f"a submission set: ID type {SUBMISSION_SET_ID_TYPE})")
#: IHE transactions whose audit message names the patient when it is known (0..1, IHE ITI TF-2
#: 3.43.6: a retrieve by document ID; XCA's ITI-39 audits as ITI-43): A.5.3's patient is not required.
_PATIENT_IF_KNOWN = frozenset({"ITI-43", "ITI-39"})
#: The events whose message must name a requestor: PS3.15 A.5.3.4 (Export) and A.5.3.5 (Import)
#: ask that a single user be identified as the requestor (UserIsRequestor true); the others leave
#: UserIsRequestor "not specialized" (an archive's transfer between two processes names none).
NEEDS_REQUESTOR = frozenset({"110106", "110107"})


def check(root: Element) -> list[str]:
    """Every way ``root`` departs from PS3.15 A.5.1 / A.5.3, as sentences; empty when it conforms."""
    problems: list[str] = []
    if _local(root.tag) != "AuditMessage":
        return [f"root element is <{_local(root.tag)}>, not <AuditMessage>"]
    _walk(root, "AuditMessage", problems.append)
    if not problems:
        _event_rules(root, problems.append)
    return problems


def _walk(el: Element, path: str, report: Callable[[str], None]) -> None:
    name = _local(el.tag)
    shape = SHAPES.get(name)
    if shape is None:
        report(f"{path}: element <{name}> is not in the schema")
        return
    required, optional, children = shape
    attrs = {a for a in el.attrib if not a.startswith(_XSI)}
    for missing in sorted(required - attrs):
        report(f"{path}: attribute {missing} is required")
    for extra in sorted(attrs - required - optional):
        report(f"{path}: attribute {extra} is not allowed")
    for attr, value in el.attrib.items():
        allowed = _VALUES.get((name, attr))
        if allowed is not None and token(value) not in allowed:  # tokens: " 0 " is 0 (XSD 3.3.3)
            report(f"{path}/@{attr}: {value!r} is not one of {sorted(allowed)}")
    if (name, "") in _VALUES and (el.text or "").strip() not in _VALUES[(name, "")]:
        report(f"{path}: {el.text!r} is not a boolean")
    if name == "EventIdentification" and parse_datetime(el.get("EventDateTime")) is None:
        report(f"{path}/@EventDateTime: {el.get('EventDateTime')!r} is not an xsd:dateTime")
    if name == "ParticipantObjectQuery" and not _is_base64(el.text or ""):
        report(f"{path}: the query is not base64")
    if name == "ParticipantObjectDetail" and not _is_base64(el.get("value", "")):
        report(f"{path}/@value: not base64")
    if name == "AuditSourceTypeCode":
        _source_type(el, path, report)
    if name == "ParticipantObjectIdentification" and all(
            _child_or_none(el, n) is not None for n in ("ParticipantObjectName", "ParticipantObjectQuery")):
        report(f"{path}: either <ParticipantObjectName> or <ParticipantObjectQuery>, not both (A.5.1)")
    instances = el.get("NumberOfInstances")
    if name == "SOPClass" and instances is not None and not (instances.isascii() and instances.isdigit()):
        report(f"{path}/@NumberOfInstances: not a non-negative integer")
    counts: dict[str, int] = {}
    for child in el:
        child_name = _local(child.tag)
        counts[child_name] = counts.get(child_name, 0) + 1
        if child_name not in children:
            report(f"{path}: <{child_name}> is not allowed here")
            continue
        _walk(child, f"{path}/{child_name}", report)
    for child_name, (least, most) in children.items():
        n = counts.get(child_name, 0)
        if n < least:
            report(f"{path}: needs {'at least ' if most is None else ''}{least} <{child_name}>, found {n}")
        elif most is not None and n > most:
            report(f"{path}: at most {most} <{child_name}>, found {n}")


def _source_type(el: Element, path: str, report: Callable[[str], None]) -> None:
    """AuditSourceTypeCodeContent (A.5.1): a csd-code of 1-9 alone, or any code with its
    codeSystemName and originalText (other-csd-attributes, all or none)."""
    given = sorted(a for a in ("codeSystemName", "originalText") if a in el.attrib)
    if len(given) == 1:
        missing = "originalText" if given == ["codeSystemName"] else "codeSystemName"
        report(f"{path}: attribute {missing} is required with {given[0]}")
    elif not given and "csd-code" in el.attrib and token(el.attrib["csd-code"]) not in _SOURCE_TYPES:
        report(f"{path}/@csd-code: {el.get('csd-code')!r} is none of A.5.1.2.1's 1-9: it needs its codeSystemName")


def _event_rules(root: Element, report: Callable[[str], None]) -> None:
    ident = _child(root, "EventIdentification")
    event_id = token(_child(ident, "EventID").get("csd-code", ""))
    entry = codes.EVENT_IDS.get(event_id)
    if entry is None:
        report(f"EventID {event_id} is not in CID 400 (110100-110114)")
        return
    meaning, actions = entry
    action = ident.get("EventActionCode")
    if action is not None and token(action) not in actions:
        report(f"{meaning}: EventActionCode {action} not allowed (PS3.15 A.5.3 allows {', '.join(actions)})")
    types = [token(t.get("csd-code", "")) for t in ident if _local(t.tag) == "EventTypeCode"]
    allowed = codes.EVENT_TYPES.get(event_id)
    if event_id in codes.TYPE_REQUIRED and not types:
        report(f"{meaning}: an EventTypeCode is required")
    if allowed is not None:
        for t in types:
            if t not in allowed:
                report(f"{meaning}: EventTypeCode {t} is not one of {sorted(allowed)}")
    objects = [o for o in root if _local(o.tag) == "ParticipantObjectIdentification"]
    id_types = [token(_child(o, "ParticipantObjectIDTypeCode").get("csd-code", "")) for o in objects]
    # An IHE transaction's message (IHE ITI TF-2: EventTypeCode EV("ITI-nn", "IHE Transactions", ...))
    # is an A.5 message whose objects IHE specifies: what its Export or Import moves.
    transactions = [token(t.get("csd-code", "")) for t in ident if _local(t.tag) == "EventTypeCode"
                    and token(t.get("codeSystemName", "")) == IHE_TRANSACTIONS]
    patient_optional = bool(transactions) and all(t in _PATIENT_IF_KNOWN for t in transactions)
    if event_id in NEEDS_PATIENT and "2" not in id_types and not patient_optional:
        report(f"{meaning}: a patient participant object (ID type 2) is required")
    if event_id in NEEDS_STUDY and codes.STUDY_UID_TYPE not in id_types:
        _moved(meaning, transactions, id_types, report)
    if event_id == "110112" and not any(_child_or_none(o, "ParticipantObjectQuery") is not None for o in objects):
        report(f"{meaning}: the query participant object with ParticipantObjectQuery is required")
    if event_id in NEEDS_REQUESTOR and not any(token(p.get("UserIsRequestor") or "").lower() in ("true", "1")
                                               for p in root if _local(p.tag) == "ActiveParticipant"):
        report(f"{meaning}: no ActiveParticipant is the requestor (UserIsRequestor=true; PS3.15 A.5.3.4, A.5.3.5)")


def _moved(meaning: str, transactions: list[str], id_types: list[str], report: Callable[[str], None]) -> None:
    """A message naming no study: a DICOM one lacks it (A.5.3); an IHE transaction's moves documents
    or a submission set instead (`_IHE_MOVES`), one of which must be named."""
    if not transactions:
        report(f"{meaning}: a study participant object (ID type 110180) is required")
        return
    wanted = [_IHE_MOVES.get(t, _IHE_ANY) for t in transactions]
    if not any(allowed & set(id_types) for allowed, _ in wanted):
        report(f"{meaning}: {wanted[0][1]} is required")


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _local(tag: object) -> str:
    return str(tag).rsplit("}", 1)[-1]


def _child(el: Element, name: str) -> Element:
    found = _child_or_none(el, name)
    if found is None:
        raise LookupError(name)  # _walk already reported it; only called on conforming shapes
    return found


def _child_or_none(el: Element, name: str) -> Element | None:
    return next((c for c in el if _local(c.tag) == name), None)
