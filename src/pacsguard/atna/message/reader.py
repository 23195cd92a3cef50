"""One pass over a DICOM audit message (PS3.15 A.5.1) or its RFC 3881 ancestor, straight from the
expat callbacks into the JSON form its Event stores (docs/audit.md "What is stored": the
``details`` of mapping.record_details): no element tree is built, nothing is walked twice and no
intermediate record is made, which is most of what receiving a message costs (docs/PERFORMANCE.md,
ATNA ingest).

The parser is hardened as defusedxml hardens expat: a document type declaration, an entity
declaration or an external entity reference raises defusedxml's exception at once, before any
expansion, so a billion-laughs message costs its first few hundred bytes.

What is read matches the element tree reading it replaces exactly: only the first EventIdentification,
AuditSourceIdentification and EventID count, an element's text is the character data before its
first child, and a participant object's SOP classes, accessions and studies are its own followed by
those of each ParticipantObjectDescription (the pre-2014 nesting of PS3.15), in that order.
"""

from __future__ import annotations

from typing import Any, Callable
from xml.parsers import expat

from defusedxml import DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden

Attrs = dict[str, str]
#: One element's stored form (a coded value, a participant, a participant object, ...).
Json = dict[str, Any]

#: Stored field -> attribute of ActiveParticipant, stored when the attribute is present.
_PARTICIPANT_ATTRIBUTES = (("alternative_user_id", "AlternativeUserID"), ("user_name", "UserName"),
                           ("access_point", "NetworkAccessPointID"),
                           ("access_point_type", "NetworkAccessPointTypeCode"))
#: Stored field -> attribute of ParticipantObjectIdentification, stored when the attribute is present.
_OBJECT_ATTRIBUTES = (("type_code", "ParticipantObjectTypeCode"), ("role", "ParticipantObjectTypeCodeRole"),
                      ("life_cycle", "ParticipantObjectDataLifeCycle"))


def token(value: str) -> str:
    """An xs:token attribute's value (XSD 3.3.3: white space collapsed): ``" 1 "`` is the value ``1``
    of A.5.1's enumerations (a ParticipantObjectTypeCode, an EventOutcomeIndicator, a csd-code).
    Checked at its ends only, so that the usual value costs no split."""
    if value[:1].isspace() or value[-1:].isspace():
        return " ".join(value.split())
    return value


#: The values A.5.1's short enumerations usually take, already tokens: the reader takes them as
#: they are without calling `token` (a call per attribute was ~5 us a message, docs/PERFORMANCE.md).
TOKENS = frozenset([str(n) for n in range(32)] + ["C", "R", "U", "D", "E", "true", "false"])


def code_dict(attrs: Attrs) -> Json:
    """A CodedValueType in either syntax (DICOM ``csd-code``/``codeSystemName``/``originalText``,
    RFC 3881 ``code``/``codeSystem``/``displayName``) as stored: its code, and its system and meaning
    when they are not empty."""
    code = attrs.get("csd-code") or attrs.get("code") or ""
    if code[:1].isspace() or code[-1:].isspace():  # an xs:token: " 110110 " is 110110 (`token`)
        code = " ".join(code.split())
    out: Json = {"code": code}
    system = attrs.get("codeSystemName") or attrs.get("codeSystem")
    if system:
        out["system"] = system
    meaning = attrs.get("originalText") or attrs.get("displayName")
    if meaning:
        out["meaning"] = meaning
    return out


class Context:
    """What an open element collects: ``child`` returns the context of a child element (None: the
    child and its subtree are not read), ``end`` is called when the element closes, ``text`` with
    the element's text when the context asked for it (``wants_text``)."""

    wants_text = False

    def child(self, name: str, attrs: Attrs) -> Context | None:
        return None

    def text(self, value: str) -> None:
        """The character data before the element's first child."""

    def end(self) -> None:
        """The element is closed."""


class _Text(Context):
    """An element read for its text only (EventOutcomeDescription, ParticipantObjectName, ...)."""

    wants_text = True

    def __init__(self, keep: Callable[[str], None]) -> None:
        self.keep = keep

    def text(self, value: str) -> None:
        self.keep(value)


class _SourceType(Context):
    """AuditSourceTypeCode: coded (csd-code= or code=), or RFC 3881's code as the element's text."""

    wants_text = True

    def __init__(self, attrs: Attrs, into: list[Json]) -> None:
        self.code = code_dict(attrs)
        self.into = into
        self.body = ""

    def text(self, value: str) -> None:
        self.body = value

    def end(self) -> None:
        self.into.append(self.code if self.code["code"] else {"code": self.body.strip()})


class _Identification(Context):
    """EventIdentification: EventID (the first), event types, outcome description, purposes of use."""

    def __init__(self, attrs: Attrs) -> None:
        self.attrs = attrs
        self.event_id: Attrs | None = None
        self.types: list[Json] = []
        self.description: str | None = None
        self.described = False
        self.purposes: list[Json] = []

    def child(self, name: str, attrs: Attrs) -> Context | None:
        if name == "EventID":
            if self.event_id is None:
                self.event_id = attrs
        elif name == "EventTypeCode":
            self.types.append(code_dict(attrs))
        elif name == "PurposeOfUse":
            self.purposes.append(code_dict(attrs))
        elif name == "EventOutcomeDescription" and not self.described:
            self.described = True
            return _Text(self._describe)
        return None

    def _describe(self, value: str) -> None:
        self.description = value.strip() or None


class _Participant(Context):
    """ActiveParticipant and its RoleIDCodes."""

    def __init__(self, attrs: Attrs, into: list[Json]) -> None:
        self.attrs = attrs
        self.roles: list[Json] = []
        self.into = into

    def child(self, name: str, attrs: Attrs) -> Context | None:
        if name == "RoleIDCode":
            self.roles.append(code_dict(attrs))
        return None

    def end(self) -> None:
        a = self.attrs
        flag = a.get("UserIsRequestor")
        # Absent, it is true: RFC 3881's schema gives UserIsRequestor the default "true" (5.2), so the
        # one participant of a message that leaves it out is the requestor, its actor. DICOM requires
        # the attribute (PS3.15 A.5.1); the schema check names a message without it.
        out: Json = {"user_id": a.get("UserID", ""),
                     "requestor": flag is None or (flag if flag in TOKENS else token(flag).lower()) in ("true", "1")}
        for key, attribute in _PARTICIPANT_ATTRIBUTES:
            value = a.get(attribute)
            if value is not None:
                out[key] = token(value) if key == "access_point_type" and value not in TOKENS else value
        if self.roles:
            out["roles"] = self.roles
        self.into.append(out)


class _Source(Context):
    """AuditSourceIdentification and its AuditSourceTypeCodes."""

    def __init__(self, attrs: Attrs) -> None:
        self.attrs = attrs
        self.types: list[Json] = []

    def child(self, name: str, attrs: Attrs) -> Context | None:
        return _SourceType(attrs, self.types) if name == "AuditSourceTypeCode" else None


class _Holder(Context):
    """Where SOPClass, Accession and ParticipantObjectContainsStudy are found: the participant object
    itself or one of its ParticipantObjectDescriptions."""

    def __init__(self) -> None:
        self.sop_classes: list[Json] = []
        self.accessions: list[str] = []
        self.studies: list[str] = []

    def child(self, name: str, attrs: Attrs) -> Context | None:
        if name == "SOPClass":
            return _SopClass(attrs, self.sop_classes)
        if name == "Accession":
            self.accessions.append(attrs.get("Number", ""))
        elif name == "ParticipantObjectContainsStudy":
            return _Studies(self.studies)
        return None


class _SopClass(Context):
    def __init__(self, attrs: Attrs, into: list[Json]) -> None:
        self.attrs = attrs
        self.instances: list[str] = []
        self.into = into

    def child(self, name: str, attrs: Attrs) -> Context | None:
        if name == "Instance":
            self.instances.append(attrs.get("UID", ""))
        return None

    def end(self) -> None:
        count = (self.attrs.get("NumberOfInstances") or "").strip()
        self.into.append({"uid": self.attrs.get("UID", ""),
                          "instances": int(count) if count.isascii() and count.isdigit() else None,
                          "instance_uids": self.instances})


class _Studies(Context):
    """ParticipantObjectContainsStudy: its StudyIDs."""

    def __init__(self, into: list[str]) -> None:
        self.into = into

    def child(self, name: str, attrs: Attrs) -> Context | None:
        if name == "StudyIDs":
            self.into.append(attrs.get("UID", ""))
        return None


class _Object(_Holder):
    """ParticipantObjectIdentification."""

    def __init__(self, attrs: Attrs, into: list[Json]) -> None:
        super().__init__()
        self.attrs = attrs
        self.into = into
        self.id_type: Json | None = None
        self.name: str | None = None
        self.query: str | None = None
        self.seen: set[str] = set()
        self.descriptions: list[_Holder] = []
        self.details: list[Json] = []

    def child(self, name: str, attrs: Attrs) -> Context | None:
        if name == "ParticipantObjectDetail":
            self.details.append({"type": attrs.get("type", ""), "value": attrs.get("value", "")})
        elif name == "ParticipantObjectDescription":
            self.descriptions.append(_Holder())
            return self.descriptions[-1]
        elif name in ("ParticipantObjectIDTypeCode", "ParticipantObjectName", "ParticipantObjectQuery"):
            if name in self.seen:  # only the first of each is read
                return None
            self.seen.add(name)
            if name == "ParticipantObjectIDTypeCode":
                self.id_type = code_dict(attrs)
                return None
            return _Text(self._name if name == "ParticipantObjectName" else self._query)
        else:
            return super().child(name, attrs)
        return None

    def _name(self, value: str) -> None:
        self.name = value.strip() or None

    def _query(self, value: str) -> None:
        self.query = value.strip() or None

    def end(self) -> None:
        a = self.attrs
        out: Json = {"id": a.get("ParticipantObjectID", ""),
                     "id_type": {"code": ""} if self.id_type is None else self.id_type}
        for key, attribute in _OBJECT_ATTRIBUTES:  # A.5.1's enumerations of tokens: " 1" is person
            value = a.get(attribute)
            if value is not None:
                out[key] = value if value in TOKENS else token(value)
        if self.name is not None:
            out["name"] = self.name
        if self.query is not None:
            out["query"] = self.query
        if self.details:
            out["details"] = self.details
        sop_classes, accessions, studies = self.sop_classes, self.accessions, self.studies
        for holder in self.descriptions:  # the pre-2014 nesting: after the object's own
            sop_classes += holder.sop_classes
            accessions += holder.accessions
            studies += holder.studies
        if sop_classes:
            out["sop_classes"] = sop_classes
        if accessions:
            out["accessions"] = accessions
        if studies:
            out["studies"] = studies
        self.into.append(out)


class _Message(Context):
    """AuditMessage: its direct children."""

    def __init__(self) -> None:
        self.identification: _Identification | None = None
        self.source: _Source | None = None
        self.participants: list[Json] = []
        self.objects: list[Json] = []

    def child(self, name: str, attrs: Attrs) -> Context | None:
        if name == "ActiveParticipant":
            return _Participant(attrs, self.participants)
        if name == "ParticipantObjectIdentification":
            return _Object(attrs, self.objects)
        if name == "EventIdentification" and self.identification is None:
            self.identification = _Identification(attrs)
            return self.identification
        if name == "AuditSourceIdentification" and self.source is None:
            self.source = _Source(attrs)
            return self.source
        return None


class Document(Context):
    """The document: its root element's name, and the message read when the root is AuditMessage."""

    def __init__(self) -> None:
        self.root = ""
        self.message = _Message()

    def child(self, name: str, attrs: Attrs) -> Context | None:
        self.root = name
        return self.message if name == "AuditMessage" else None


class Reader:
    """One document: feed it to ``read``, once (an expat parser cannot be reset)."""

    def __init__(self) -> None:
        # "}" as the namespace separator gives "URI}local" names, so the local name is what follows it.
        parser = expat.ParserCreate(None, "}")
        parser.buffer_text = True
        parser.StartDoctypeDeclHandler = _refuse_doctype
        parser.EntityDeclHandler = _refuse_entity
        parser.UnparsedEntityDeclHandler = _refuse_unparsed_entity
        parser.ExternalEntityRefHandler = _refuse_external
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        self.parser = parser
        self.document = Document()
        self.stack: list[Context | None] = [self.document]
        self.chunks: list[str] | None = None  # the text of the innermost open element, while wanted

    def read(self, payload: bytes) -> Document:
        """Parse the whole payload; expat's and defusedxml's exceptions pass through."""
        try:
            self.parser.Parse(payload, True)
        finally:
            # The handlers are this reader's methods: unhooked, reader and parser are freed by their
            # reference counts at once instead of waiting, as a cycle, for the garbage collector.
            self.parser.StartElementHandler = self.parser.EndElementHandler = None
        return self.document

    def _start(self, name: str, attrs: Attrs) -> None:
        if self.chunks is not None:
            self._flush_text()
        parent = self.stack[-1]
        context = parent.child(name.rpartition("}")[2], attrs) if parent is not None else None
        self.stack.append(context)
        if context is not None and context.wants_text:
            self.chunks = []
            self.parser.CharacterDataHandler = self.chunks.append

    def _end(self, name: str) -> None:
        if self.chunks is not None:
            self._flush_text()
        context = self.stack.pop()
        if context is not None:
            context.end()

    def _flush_text(self) -> None:
        """The element's text ends at its first child or at its end tag."""
        chunks = self.chunks
        self.chunks = None
        self.parser.CharacterDataHandler = None
        context = self.stack[-1]
        if chunks and context is not None:
            context.text("".join(chunks))


def _refuse_doctype(name: str, sysid: str | None, pubid: str | None, has_internal_subset: bool) -> None:
    raise DTDForbidden(name, sysid, pubid)


def _refuse_entity(name: str, is_parameter_entity: bool, value: str | None, base: str | None, sysid: str | None,
                   pubid: str | None, notation_name: str | None) -> None:
    raise EntitiesForbidden(name, value, base, sysid, pubid, notation_name)


def _refuse_unparsed_entity(name: str, base: str | None, sysid: str | None, pubid: str | None,
                            notation_name: str | None) -> None:
    raise EntitiesForbidden(name, None, base, sysid, pubid, notation_name)


def _refuse_external(context: str, base: str | None, sysid: str | None, pubid: str | None) -> int:
    raise ExternalReferenceForbidden(context, base, sysid, pubid)
