"""Audit messages as other systems write them (round 8, area D): the RFC 3881 form that leaves
UserIsRequestor to its schema default, A.5.1's enumerated values written with white space around
them, and the PS3.15 A.5.1 schema check on messages as dcm4chee-arc writes them (an
xsi:noNamespaceSchemaLocation on AuditMessage, an AuditSourceTypeCode given by its csd-code
alone). Each message is hand-written after the structure those senders use."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pacsguard.atna.ingest import Sender, frame_event
from pacsguard.atna.message import dicom_xml, schema
from pacsguard.cli import main
from pacsguard.events.model import Event
from store_helpers import new_store

SENDER = Sender("127.0.84.9", 50123, "tls", "octet-counting")

#: An RFC 3881 message (``code=`` attributes, as RFC 3881 senders and older IHE actors write them):
#: a RIS user reading a patient's record, with ActiveParticipant's UserIsRequestor left out (RFC
#: 3881's schema: optional, default true).
RFC3881_READ = b"""<?xml version="1.0" encoding="UTF-8"?>
<AuditMessage>
  <EventIdentification EventActionCode="R" EventDateTime="2026-12-03T09:30:15Z" EventOutcomeIndicator="0">
    <EventID code="110110" codeSystemName="DCM" displayName="Patient Record"/>
  </EventIdentification>
  <ActiveParticipant UserID="kwalsh" UserName="Kim Walsh" NetworkAccessPointID="ris-ws07"
      NetworkAccessPointTypeCode="1"/>
  <AuditSourceIdentification AuditSourceID="RIS1"><AuditSourceTypeCode code="1"/></AuditSourceIdentification>
  <ParticipantObjectIdentification ParticipantObjectID="R8-PX1^^^RIS&amp;1.2.3.84&amp;ISO"
      ParticipantObjectTypeCode="1" ParticipantObjectTypeCodeRole="1">
    <ParticipantObjectIDTypeCode code="2" displayName="Patient Number"/>
    <ParticipantObjectName>ROE^ANNA</ParticipantObjectName>
  </ParticipantObjectIdentification>
</AuditMessage>"""

#: DICOM Instances Transferred as dcm4chee-arc writes it: the xsi namespace and its
#: noNamespaceSchemaLocation on AuditMessage, the audit source type by its csd-code alone, three
#: participants (archive, destination, the requesting C-MOVE SCU), a study with its SOP class and
#: instances, a patient in CX form with an &-escaped assigning authority.
DCM4CHEE_TRANSFER = b"""<?xml version="1.0" encoding="UTF-8"?>
<AuditMessage xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
    xsi:noNamespaceSchemaLocation="http://www.dcm4che.org/DICOM/audit-message.rnc">
<EventIdentification EventActionCode="R" EventDateTime="2026-12-03T10:30:15.123+01:00" EventOutcomeIndicator="0">
<EventID csd-code="110104" codeSystemName="DCM" originalText="DICOM Instances Transferred"/>
<EventTypeCode csd-code="RAD-16" codeSystemName="IHE Transactions" originalText="Retrieve Images"/>
</EventIdentification>
<ActiveParticipant UserID="DCM4CHEE" AlternativeUserID="2211" UserIsRequestor="false"
    NetworkAccessPointID="arc.r8.example" NetworkAccessPointTypeCode="1">
<RoleIDCode csd-code="110153" codeSystemName="DCM" originalText="Source Role ID"/></ActiveParticipant>
<ActiveParticipant UserID="STORESCP" AlternativeUserID="AETITLES=STORESCP" UserIsRequestor="false"
    NetworkAccessPointID="127.0.84.5" NetworkAccessPointTypeCode="2">
<RoleIDCode csd-code="110152" codeSystemName="DCM" originalText="Destination Role ID"/></ActiveParticipant>
<ActiveParticipant UserID="MOVESCU" AlternativeUserID="AETITLES=MOVESCU" UserIsRequestor="true"
    NetworkAccessPointID="127.0.84.7" NetworkAccessPointTypeCode="2"/>
<AuditSourceIdentification AuditSourceID="dcm4chee-arc" AuditEnterpriseSiteID="R8HOSP">
<AuditSourceTypeCode csd-code="4"/></AuditSourceIdentification>
<ParticipantObjectIdentification ParticipantObjectID="1.2.826.0.1.3680043.8.84.1" ParticipantObjectTypeCode="2"
    ParticipantObjectTypeCodeRole="3">
<ParticipantObjectIDTypeCode csd-code="110180" codeSystemName="DCM" originalText="Study Instance UID"/>
<ParticipantObjectDetail type="StudyDate" value="MjAyNjEyMDM="/>
<SOPClass UID="1.2.840.10008.5.1.4.1.1.2" NumberOfInstances="2">
<Instance UID="1.2.826.0.1.3680043.8.84.1.1"/><Instance UID="1.2.826.0.1.3680043.8.84.1.2"/></SOPClass>
<Accession Number="R8ACC1"/>
</ParticipantObjectIdentification>
<ParticipantObjectIdentification ParticipantObjectID="R8-PX2^^^&amp;1.2.40.0.13.1.84&amp;ISO"
    ParticipantObjectTypeCode="1" ParticipantObjectTypeCodeRole="1">
<ParticipantObjectIDTypeCode csd-code="2" codeSystemName="RFC-3881" originalText="Patient Number"/>
<ParticipantObjectName>DOE^JOHN</ParticipantObjectName>
</ParticipantObjectIdentification>
</AuditMessage>"""


def _event(xml: bytes) -> Event:
    return frame_event(SENDER, b"<85>1 2026-12-03T09:30:16Z ris1 audit - IHE+RFC-3881 - " + xml)


def _patient_report(tmp_path: Path, events: list[Event], patient: str) -> list[dict[str, object]]:
    """What `audit patient PATIENT --format json` lists for a store holding ``events``."""
    target = str(tmp_path / "store.db")
    store, _ = new_store(target, tmp_path)
    try:
        store.append(events)
        store.checkpoint()
    finally:
        store.close()
    out = CliRunner().invoke(main.app, ["audit", "patient", patient, "--store", target, "--format", "json"])
    assert out.exit_code == 0, out.output
    listed: list[dict[str, object]] = json.loads(out.stdout)["events"]
    return listed


def test_an_rfc3881_participant_without_user_is_requestor_is_the_requestor(tmp_path: Path) -> None:
    """RFC 3881 5.2: UserIsRequestor is optional and true when absent (its schema's default). The
    message's one participant, the user who read the record, was read as no requestor: the Event
    had no actor at all, the user became its target, and `audit patient` listed the access with no
    user."""
    event = _event(RFC3881_READ)
    assert event.kind == "atna.audit.patient-record" and event.outcome == "success"
    assert (event.actor.user, event.actor.host) == ("kwalsh", "ris-ws07")
    assert event.details["participants"][0]["requestor"] is True
    assert event.patient_ids[:2] == ("R8-PX1", "R8-PX1^^^RIS&1.2.3.84&ISO")
    (row,) = _patient_report(tmp_path, [event], "R8-PX1")
    assert str(row["user"]).startswith("kwalsh")
    # An explicit "false" is still false: the participant is no requestor; as the message's only
    # participant it is still the Event's actor, and the Event says no requestor was named.
    stated = _event(RFC3881_READ.replace(b'UserName="Kim Walsh"', b'UserName="Kim Walsh" UserIsRequestor="false"'))
    assert stated.actor.user == "kwalsh" and "no-requestor" in stated.details["flags"]
    assert stated.details["participants"][0]["requestor"] is False


def test_enumerated_values_with_white_space_are_their_values(tmp_path: Path) -> None:
    """A.5.1's enumerations are values of xs:token (XSD 3.3.3: white space collapsed), so
    ParticipantObjectTypeCode=" 1" is a person and EventOutcomeIndicator=" 4 " a minor failure. The
    patient object whose type code had a space around it was taken for no patient: the Event named
    no patient and `audit patient` did not list the access; the outcome was unknown, the action
    flagged as a bad code; and the schema check refused the message."""
    padded = (DCM4CHEE_TRANSFER
              .replace(b'EventActionCode="R"', b'EventActionCode=" R "')
              .replace(b'EventOutcomeIndicator="0"', b'EventOutcomeIndicator=" 4 "')
              .replace(b'ParticipantObjectTypeCode="1" ParticipantObjectTypeCodeRole="1"',
                       b'ParticipantObjectTypeCode=" 1" ParticipantObjectTypeCodeRole="1\n"')
              .replace(b'UserIsRequestor="true"\n    NetworkAccessPointID="127.0.84.7" NetworkAccessPointTypeCode="2"',
                       b'UserIsRequestor=" true"\n    NetworkAccessPointID="127.0.84.7"'
                       b' NetworkAccessPointTypeCode="2 "'))
    assert all(v in padded for v in (b'" R "', b'" 4 "', b'" 1"', b'"1\n"', b'" true"', b'"2 "'))  # each took
    event = _event(padded)
    assert event.kind == "atna.audit.instances-transferred"
    assert event.outcome == "minor-failure" and event.details["action"] == "R"
    assert "flags" not in event.details
    assert (event.actor.user, event.actor.ae_title, event.actor.host) == ("MOVESCU", "MOVESCU", "127.0.84.7")
    assert event.patient_ids[:2] == ("R8-PX2", "R8-PX2^^^&1.2.40.0.13.1.84&ISO")
    assert event.study_uids == ("1.2.826.0.1.3680043.8.84.1",) and event.sop_instance_count == 2
    (row,) = _patient_report(tmp_path, [event], "R8-PX2^^^&1.2.40.0.13.1.84&ISO")
    assert row["user"] == "MOVESCU"
    assert schema.check(dicom_xml.parse_xml(padded)) == []
    # A value outside the enumeration is still named.
    wrong = padded.replace(b'EventOutcomeIndicator=" 4 "', b'EventOutcomeIndicator=" 5 "')
    assert schema.check(dicom_xml.parse_xml(wrong)) == [
        "AuditMessage/EventIdentification/@EventOutcomeIndicator: ' 5 ' is not one of ['0', '12', '4', '8']"]


def test_the_schema_check_accepts_a_message_as_dcm4chee_writes_it() -> None:
    """XSD 1.0 allows xsi: attributes on any element, and A.5.1's AuditSourceTypeCodeContent is a
    csd-code of 1-9 with the other coded-value attributes optional: a dcm4chee-arc message, both at
    once, was reported as breaking three rules of the schema."""
    assert schema.check(dicom_xml.parse_xml(DCM4CHEE_TRANSFER)) == []
    event = _event(DCM4CHEE_TRANSFER)
    assert event.details["source"] == {"id": "dcm4chee-arc", "site": "R8HOSP", "types": [{"code": "4"}]}
    # What A.5.1 forbids is still named: another namespace's attribute, a code outside 1-9 without its
    # code system, a code system without its meaning.
    source = b'<AuditSourceTypeCode csd-code="4"/>'
    for changed, problem in [
        (DCM4CHEE_TRANSFER.replace(b"xmlns:xsi=", b'xmlns:r8="urn:r8" r8:where="x" xmlns:xsi='),
         "AuditMessage: attribute {urn:r8}where is not allowed"),
        (DCM4CHEE_TRANSFER.replace(source, b'<AuditSourceTypeCode csd-code="42"/>'),
         "AuditMessage/AuditSourceIdentification/AuditSourceTypeCode/@csd-code: '42' is none of A.5.1.2.1's 1-9:"
         " it needs its codeSystemName"),
        (DCM4CHEE_TRANSFER.replace(source, b'<AuditSourceTypeCode csd-code="4" codeSystemName="DCM"/>'),
         "AuditMessage/AuditSourceIdentification/AuditSourceTypeCode: attribute originalText is required with"
         " codeSystemName"),
    ]:
        assert schema.check(dicom_xml.parse_xml(changed)) == [problem]
    # Its own code system and meaning make any code a source type.
    coded = DCM4CHEE_TRANSFER.replace(
        source, b'<AuditSourceTypeCode csd-code="PACS" codeSystemName="99R8" originalText="PACS"/>')
    assert schema.check(dicom_xml.parse_xml(coded)) == []


def test_the_schema_check_names_an_object_with_both_a_name_and_a_query() -> None:
    """A.5.1: a participant object has either a ParticipantObjectName or a ParticipantObjectQuery,
    not both; the check let both through."""
    both = DCM4CHEE_TRANSFER.replace(b"<ParticipantObjectName>DOE^JOHN</ParticipantObjectName>",
                                     b"<ParticipantObjectName>DOE^JOHN</ParticipantObjectName>"
                                     b"<ParticipantObjectQuery>CAAgAA==</ParticipantObjectQuery>")
    assert schema.check(dicom_xml.parse_xml(both)) == [
        "AuditMessage/ParticipantObjectIdentification: either <ParticipantObjectName> or "
        "<ParticipantObjectQuery>, not both (A.5.1)"]
    # The message is still read, its patient and query kept.
    (_, patient) = _event(both).details["objects"]
    assert (patient["name"], patient["query"]) == ("DOE^JOHN", "CAAgAA==")


@pytest.mark.parametrize(("encoding", "name"), [
    ("Shift_JIS", "\u5c71\u7530^\u592a\u90ce"), ("EUC-JP", "\u5c71\u7530^\u592a\u90ce"),
    ("GB18030", "\u738b^\u82b3"), ("Big5", "\u9673^\u5fd7\u660e"), ("EUC-KR", "\uae40^\ucca0\uc218"),
    ("UTF8", "\u00c5NGSTR\u00d6M^BO"),
])
def test_a_message_in_an_encoding_expat_cannot_read_is_read_in_it(tmp_path: Path, encoding: str, name: str) -> None:
    """XML 1.0 4.3.3: a document is read in the encoding it declares. expat reads UTF-8, UTF-16,
    ISO-8859-1 and US-ASCII itself and others only at one octet a character, so a Japanese,
    Chinese or Korean modality's message (Shift_JIS, EUC-JP, GB18030, Big5, EUC-KR) was stored
    unread as bad-encoding ("multi-byte encodings are not supported"), and one declaring "UTF8" (a
    name Java writers use) as unparsable-xml at its first non-ASCII character: no patient, no
    access in `audit patient`. The raw message is still kept byte for byte."""
    xml = (DCM4CHEE_TRANSFER.replace(b'encoding="UTF-8"', f'encoding="{encoding}"'.encode()).decode()
           .replace("DOE^JOHN", name).encode(encoding.replace("UTF8", "utf-8")))
    frame = b"<85>1 2026-12-03T09:30:16Z ris1 audit - IHE+RFC-3881 - " + xml
    event = frame_event(SENDER, frame)
    assert event.kind == "atna.audit.instances-transferred", event.details.get("error")
    assert event.details["objects"][1]["name"] == name
    assert event.patient_ids[0] == "R8-PX2" and event.actor.user == "MOVESCU"
    stored = event.details.get("raw_base64")
    assert (base64.b64decode(stored) if stored else event.details["raw"].encode()) == frame
    assert schema.check(dicom_xml.parse_xml(xml)) == []
    (row,) = _patient_report(tmp_path, [event], "R8-PX2")
    assert row["user"] == "MOVESCU"


def test_a_message_not_in_the_encoding_it_declares_names_the_octet() -> None:
    """Octets that are no character of the declared encoding are a bad-encoding naming the first
    of them, not expat's "multi-byte encodings are not supported"."""
    xml = (DCM4CHEE_TRANSFER.replace(b'encoding="UTF-8"', b'encoding="Shift_JIS"')
           .replace(b"DOE^JOHN", b"DOE^\x81\xff"))
    event = _event(xml)
    at = xml.index(b"\x81\xff")
    assert (event.kind, event.details["problem"]) == ("atna.message.unparsed", "bad-encoding")
    assert event.details["error"] == (f"XML: octet {at} (81 ff 3c 2f) is no Shift_JIS character, the encoding "
                                       "the message declares")


def test_an_event_date_without_a_time_is_no_instant() -> None:
    """docs/audit.md: an EventDateTime that is not an instant is stored at the time of receipt,
    flagged bad-event-time. A date alone (``2026-12-03``, an xsd:date) was read as its midnight in
    UTC, unflagged: the access dated up to a day away from when it happened, and the schema check
    took it for an xsd:dateTime."""
    for when in (b"2026-12-03", b"2026-12-03+01:00", b"20261203"):
        xml = DCM4CHEE_TRANSFER.replace(b'EventDateTime="2026-12-03T10:30:15.123+01:00"',
                                        b'EventDateTime="' + when + b'"')
        before = datetime.now(timezone.utc)
        event = _event(xml)
        assert event.details["flags"] == ["bad-event-time"], when
        assert event.time >= before and event.patient_ids[0] == "R8-PX2"
        assert schema.check(dicom_xml.parse_xml(xml)) == [
            f"AuditMessage/EventIdentification/@EventDateTime: {when.decode()!r} is not an xsd:dateTime"]
    assert _event(DCM4CHEE_TRANSFER).time == datetime(2026, 12, 3, 9, 30, 15, 123000, tzinfo=timezone.utc)
