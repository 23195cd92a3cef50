"""The one-pass reader (pacsguard.atna.message.reader) reads what the element tree reading it replaced
read: the first of the elements read once, text up to the first child, the pre-2014 nesting of
SOP classes after the object's own, any namespace; and it stays hardened."""

from __future__ import annotations

import time

import pytest
from atna_corpus import BILLION_LAUGHS, EXTERNAL_ENTITY, every_event_id, record

from pacsguard.atna.message import dicom_xml
from pacsguard.atna.message.dicom_xml import AuditMessageError
from pacsguard.atna.message.record import Code, SopClass

ODD = (b'<AuditMessage><EventIdentification EventOutcomeIndicator="0"><EventID code="110114"/>'
       b'<EventOutcomeDescription> denied <b/>tail</EventOutcomeDescription>'
       b'<EventOutcomeDescription>second</EventOutcomeDescription></EventIdentification>'
       b'<EventIdentification><EventID csd-code="110100"/></EventIdentification>'
       b'<x><ActiveParticipant UserID="nested, not read"/></x>'
       b'<ActiveParticipant UserID="u1" UserIsRequestor=" TRUE "><RoleIDCode code="110153"/></ActiveParticipant>'
       b'<AuditSourceIdentification AuditSourceID="a"><AuditSourceTypeCode> 4 </AuditSourceTypeCode>'
       b'<AuditSourceTypeCode code="5"/></AuditSourceIdentification>'
       b'<AuditSourceIdentification AuditSourceID="b"/>'
       b'<ParticipantObjectIdentification ParticipantObjectID="p">'
       b'<ParticipantObjectDescription><SOPClass UID="d1" NumberOfInstances=" 2 "><Instance UID="i"/></SOPClass>'
       b'<Accession Number="A2"/><ParticipantObjectContainsStudy><StudyIDs UID="s2"/>'
       b'</ParticipantObjectContainsStudy></ParticipantObjectDescription>'
       b'<SOPClass UID="o1"/><Accession Number="A1"/>'
       b'<ParticipantObjectName><!-- c -->DOE<![CDATA[&]]>&amp;</ParticipantObjectName>'
       b'<ParticipantObjectName>not read</ParticipantObjectName>'
       b'<ParticipantObjectIDTypeCode csd-code="2"/><ParticipantObjectIDTypeCode csd-code="3"/>'
       b'<ParticipantObjectContainsStudy><StudyIDs UID="s1"/></ParticipantObjectContainsStudy>'
       b'</ParticipantObjectIdentification></AuditMessage>')


def test_the_corpus_reads_back_as_built() -> None:
    for event_id, xml in every_event_id().items():
        assert dicom_xml.parse(xml) == record(event_id), event_id


def test_odd_but_well_formed_messages_read_as_the_tree_read_them() -> None:
    r = dicom_xml.parse(ODD)
    assert r.syntax == "rfc3881" and r.event_id == Code("110114")
    assert r.outcome_description == "denied"  # the text before the first child, the first element only
    assert [p.user_id for p in r.participants] == ["u1"] and r.participants[0].requestor
    assert r.participants[0].roles == (Code("110153"),)
    assert r.source_id == "a" and r.source_types == (Code("4"), Code("5"))
    (obj,) = r.objects
    assert obj.name == "DOE&&" and obj.id_type == Code("2")
    assert obj.sop_classes == (SopClass("o1"), SopClass("d1", 2, ("i",)))  # its own first, then the description's
    assert obj.accessions == ("A1", "A2") and obj.studies == ("s1", "s2")


def test_a_count_of_unicode_digits_is_no_count_and_the_schema_check_says_so() -> None:
    """"\u00b2" is a digit to str.isdigit but not to int() (once, a ValueError out of the reader):
    NumberOfInstances made of it is read as absent, and the schema check names it."""
    from pacsguard.atna.message import schema

    odd = ODD.replace(b'NumberOfInstances=" 2 "', 'NumberOfInstances="\u00b2"'.encode())
    (obj,) = dicom_xml.parse(odd).objects
    assert obj.sop_classes[1] == SopClass("d1", None, ("i",))
    valid = every_event_id()["110102"]
    assert b'NumberOfInstances="3"' in valid and schema.check(dicom_xml.parse_xml(valid)) == []
    unicode_count = valid.replace(b'NumberOfInstances="3"', 'NumberOfInstances="\u00b2"'.encode())
    assert [p for p in schema.check(dicom_xml.parse_xml(unicode_count)) if "NumberOfInstances" in p]


def test_namespaces_are_read_by_local_name() -> None:
    prefixed = (b'<a:AuditMessage xmlns:a="urn:x"><a:EventIdentification EventActionCode="E">'
                b'<a:EventID csd-code="110100"/></a:EventIdentification></a:AuditMessage>')
    assert dicom_xml.parse(prefixed).action == "E"
    assert dicom_xml.parse(prefixed.replace(b"a:", b"").replace(b"xmlns:a", b"xmlns")).syntax == "dicom"


@pytest.mark.parametrize(("payload", "problem", "detail"), [
    (b"<Other/>", "not-audit-message", "root element is <Other>, not <AuditMessage>"),
    (b"<AuditMessage/>", "not-audit-message", "no EventIdentification"),
    (b"<AuditMessage><EventIdentification/></AuditMessage>", "not-audit-message", "no EventID"),
    (b"<AuditMessage><open></AuditMessage>", "unparsable-xml", "XML: mismatched tag: line 1, column 22"),
    (b"<AuditMessage>\xff</AuditMessage>", "bad-encoding", "XML: not well-formed (invalid token): line 1, column 14"),
])
def test_faults_are_named(payload: bytes, problem: str, detail: str) -> None:
    with pytest.raises(AuditMessageError) as caught:
        dicom_xml.parse(payload)
    assert (caught.value.problem, str(caught.value)) == (problem, detail)


def test_entities_are_refused_before_any_expansion() -> None:
    for hostile, refusal in ((BILLION_LAUGHS, "DTDForbidden"), (EXTERNAL_ENTITY, "DTDForbidden")):
        began = time.perf_counter()
        for _ in range(100):
            with pytest.raises(AuditMessageError) as caught:
                dicom_xml.parse(hostile)
        assert caught.value.problem == "entity-expansion" and str(caught.value) == f"refused: {refusal}"
        assert (time.perf_counter() - began) / 100 < 0.005  # a few hundred bytes parsed, nothing expanded


def test_empty_optional_attributes_read_as_absent_as_they_are_stored() -> None:
    r = dicom_xml.parse(b'<AuditMessage><EventIdentification EventOutcomeIndicator="0" EventActionCode="">'
                        b'<EventID code="110114" codeSystem="" displayName=""/></EventIdentification>'
                        b'<AuditSourceIdentification AuditSourceID=""/></AuditMessage>')
    assert r.event_id == Code("110114") and r.action is None and r.source_id is None
