"""The search parameters of IHE ITI-81 (Retrieve ATNA Audit Event, RESTful ATNA 3.81.4.1.2) over the
stored audit events: ``date`` (with the FHIR prefixes eq, ge, gt, le, lt), ``patient``,
``agent-name``, ``entity-identifier``, the tokens (`_CODED`: ``type``, ``subtype``, ``entity-type``,
``entity-role``, ``outcome``, ``action``, ``agent-identifier``, ``agent-role``: FHIR R4 search,
token, their system compared as the answer gives it), ``source`` (a reference or a token of the
observer's identifier, `SourceToken`), ``address`` matched by value (`_MATCHED`), ``_count`` (the page
size), and ``_cursor``, the opaque position a
Bundle's ``next`` link carries (FHIR R4 3.1.1.4.8, paging: the server's own). `stored_by_id` finds
the one stored audit message a FHIR read (``GET /AuditEvent/ID``, FHIR R4 3.1.0.1) names."""

from __future__ import annotations

import heapq
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from pacsguard.atna.message import codes as audit_codes
from pacsguard.atna.message.fhir import (
    ACTION,
    ENTITY_TYPE,
    OBJECT_ROLE,
    OUTCOME,
    answered_system,
    hl7_escape,
    observer_reference,
    system_uri,
)
from pacsguard.atna.message.mapping import is_patient, patients_of
from pacsguard.atna.message.patient import PatientId
from pacsguard.events.model import Event

if TYPE_CHECKING:
    from pacsguard.store import EventQuery, EventStore
    from pacsguard.store.store import StoredEvent


#: Store positions read at a time around the place an id's time points to (`stored_by_id`).
_READ_CHUNK = 64
#: Events read each way from that place at most: a well-formed id of no stored event must not make
#: a read walk the hour of disorder `sources.DISORDER` allows (millions of events on a busy store);
#: the hand-over's real disorder is a few of its batches, thousands of events.
_MOST_READ = 50_000
#: An Event id as this repository gives it (`events.model.new_event_id`): 32 hex digits, lower case.
_EVENT_ID = re.compile("[0-9a-f]{32}")


class QueryError(ValueError):
    """A search parameter that cannot be understood (answered 400 with an OperationOutcome)."""


#: One parameter given once: the values it lists, any of which may hold (FHIR's comma, "or").
#: A query holds a list of them per parameter, every one of which must hold (the parameter given
#: again, "and"): FHIR R4 search, "Composite Search Parameters" (joining values with AND or OR).
AnyOf = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Identifier:
    """A patient (or other entity) as an ITI-81 search names it: a FHIR token ``system|value``
    (the ID ``value`` assigned by the authority the system names: ``urn:oid:1.2.3|123`` is CX
    ``123^^^&1.2.3&ISO``), ``|value`` (an ID without an assigning authority), a reference
    (``Patient/ID``) or the ID alone in any CX form (``123``, ``123^^^HOSP``, ``123^^^&OID&ISO``, the
    full CX): any authority, or that one. ``key`` is the form the store's patient index holds
    (patient.PatientId.search_keys), so a patient is matched exactly as ``audit search --patient``
    and ``audit patient`` match it."""

    key: str
    value: str = ""  # the value as given, for an entity that is no patient (a UID, a node)
    no_authority: bool = False
    #: The token's system, for an entity that is no patient: None for any (``value``), "" for none
    #: (``|value``), else that one (``system|value``).
    system: str | None = None

    @classmethod
    def parse(cls, text: str, *, reference: bool = False) -> Identifier:
        """The identifier a search value names. A token's value (and its system) is a FHIR
        Identifier's, never a CX: its HL7 delimiters are escaped (HL7 v2.5 2.7.4) as a POSTed
        AuditEvent's are when stored (fhir._entity), so ``urn:oid:1.2.3|123^45`` finds what was
        posted as that system and value. An empty value is a QueryError: left out, it would widen
        the search to every patient."""
        parts = [_unescape(p) for p in _split(text, "|")]
        if len(parts) > 2:
            raise QueryError(f"expected system|value, got {text[:64]!r}")
        if not parts[-1]:
            raise QueryError(f"an empty identifier value ({text[:64]!r}): give one, or leave it out")
        if len(parts) == 2:
            system, value = parts
            if not system:
                return cls(hl7_escape(value), value, no_authority=True, system="")
            return cls(PatientId.of_system(hl7_escape(system), hl7_escape(value)).key(), value, system=system)
        value = parts[0]
        if reference and "/" in value:  # Patient/ID, or the whole URL of one
            value = value.rsplit("/", 1)[-1]
            if not value:
                raise QueryError(f"a reference without an id ({text[:64]!r}): name the patient")
        return cls(value, value)

    def names_patient(self, patient: PatientId) -> bool:
        """Whether ``patient`` (one a message names) is this one: one of its indexed forms is the key."""
        return self.key in patient.search_keys() and (not self.no_authority or patient.authority is None)

    def names(self, event: Event, *, patients_only: bool = True) -> bool:
        """Whether ``event`` names this patient; without ``patients_only``, or any participant object
        of that ID that is no patient (`names_object`)."""
        objects = event.details.get("objects", ())
        if any(self.names_patient(p) for p in patients_of(objects)):
            return True
        return not patients_only and any(self.names_object(o) for o in objects if not is_patient(o))

    def names_object(self, obj: Mapping[str, Any]) -> bool:
        """Whether a participant object that is no patient is this one: its ID, and the system of a
        FHIR entity's identifier that had one (``id_system``) as FHIR R4 search compares a token's
        (``system|value`` that system, ``|value`` none, ``value`` any). An object stored without a
        system (A.5's and RFC 3881's study UIDs and nodes, a FHIR identifier sent without one, any
        stored before the system was kept) is matched by its ID whatever system the token names: a
        DICOM UID is unique by itself (PS3.5 9). A FHIR system object of ID type 2 stored before it
        was told from a patient (fhir._named) holds its identifier in CX form, its system as the
        authority: ``system|value`` (whose `key` is that CX) still finds it."""
        if obj.get("id") != self.value:
            return bool(self.system) and not obj.get("id_system") and obj.get("id") == self.key
        held = obj.get("id_system")
        if not held or self.system is None:
            return True
        return bool(self.system) and system_uri(self.system) == system_uri(str(held))


@dataclass(frozen=True, slots=True)
class CodeToken:
    """A coded value as an ITI-81 token names it (FHIR R4 search, "token"): ``code`` (in any
    system), ``system|code`` (in that system: ``DCM``, DICOM's OID or its URI are one), ``|code``
    (in no system). The system compared is the one the answer gives the stored value
    (fhir.answered_system, `AuditQuery.matches`), so a token finds what the AuditEvents show."""

    code: str
    system: str | None = None  # None: any system; "": no system

    @classmethod
    def parse(cls, text: str) -> CodeToken:
        parts = [_unescape(p) for p in _split(text, "|")]
        if len(parts) > 2:
            raise QueryError(f"expected system|code, got {text[:64]!r}")
        if len(parts) == 1:
            return cls(parts[0])
        return cls(parts[1], system_uri(parts[0]) if parts[0] else "")

    def names(self, held: Mapping[str, str]) -> bool:
        """Whether the stored code ``held`` (`reader.code_dict`) is this one, under the system the
        answer gives it."""
        code = held.get("code") or ""
        return self.holds(code, answered_system(code, held.get("system")))

    def holds(self, code: object, system: str | None) -> bool:
        """Whether a stored ``code`` answered under ``system`` ("" none; None: not answered at all,
        a value outside the element's value set, so found by its code alone) is this one."""
        if code != self.code:
            return False
        return self.system is None or (system is not None and system == self.system)


@dataclass(slots=True)
class AuditQuery:
    """A search over the stored audit messages. Each list holds one entry per time its parameter
    was given (all must hold), each entry the values listed (one must hold): ``patients=[(a, b),
    (c,)]`` is "a or b, and c". ``since``/``until`` bound the time (the ``date`` parameters given
    once each); ``periods`` holds the ``date`` parameters that list several dates."""

    patients: list[tuple[Identifier, ...]] = field(default_factory=list)
    since: datetime | None = None
    until: datetime | None = None
    periods: list[tuple[tuple[datetime, datetime], ...]] = field(default_factory=list)
    agent_names: list[AnyOf] = field(default_factory=list)
    # A plain code (`audit search --entity-type`, --outcome, --action) is a token of any system.
    entity_types: Sequence[tuple[CodeToken | str, ...]] = field(default_factory=list)
    outcomes: Sequence[tuple[CodeToken | str, ...]] = field(default_factory=list)
    event_ids: list[tuple[CodeToken, ...]] = field(default_factory=list)
    actions: Sequence[tuple[CodeToken | str, ...]] = field(default_factory=list)
    sources: list[tuple[SourceToken, ...]] = field(default_factory=list)
    subtypes: list[tuple[CodeToken, ...]] = field(default_factory=list)
    agent_ids: list[tuple[CodeToken, ...]] = field(default_factory=list)
    agent_roles: list[tuple[CodeToken, ...]] = field(default_factory=list)
    addresses: list[AnyOf] = field(default_factory=list)
    entity_ids: list[tuple[Identifier, ...]] = field(default_factory=list)
    entity_roles: list[tuple[CodeToken, ...]] = field(default_factory=list)
    ids: list[tuple[str, ...]] = field(default_factory=list)  # ``_id``: the AuditEvent ids a search gave
    count: int = 100  # the page size; 0: only the number of matches (``_count=0``)
    after: int | None = None  # the store position (seq) the page starts after: the ``_cursor``
    counted: bool = False  # ``_total=accurate``: every match counted, whatever the page
    ignored: list[str] = field(default_factory=list)  # parameters not understood (lenient handling)

    @classmethod
    def parse(cls, params: Mapping[str, list[str]], *, strict: bool = True) -> AuditQuery:
        """The query of these parameters. A parameter this server does not know is a QueryError
        when ``strict`` (FHIR's ``Prefer: handling=strict``), else left out and named in `ignored`
        (FHIR R4 search, "Handling Errors": lenient handling, the default). A known parameter with a
        modifier (``patient:missing``, ``agent-name:exact``) is a QueryError either way: none is
        supported (FHIR R4 search, "Modifiers"), and leaving the parameter out would widen the
        answer to every patient."""
        q = cls()
        for name, given in params.items():
            base, colon, modifier = name.partition(":")
            # A name that differs from a known one only in its spelling (Patient, patient_id) is no
            # unknown parameter to ignore leniently: ignored, it would answer every patient's trail.
            # (A chain on a known one, patient.name, is refused as that, below.)
            if base not in _KNOWN and name.partition(".")[0] not in _CHAINABLE and (meant := _meant(base)):
                raise QueryError(f"search parameter {name[:64]!r} is not known: did you mean {meant}? (names are "
                                 "exact; left out, it would widen the search, up to every patient's trail)")
            # An empty value is no condition (FHIR R4 search: ignored), but for the parameters that
            # name a patient: a portal sending patient= must not get every patient's trail.
            values = [v for v in given if v or name in _IDENTIFYING]
            if not values:
                continue
            if colon and (base in SEARCH_PARAMETERS or base in _CHAINS) and name != _SOURCE_IDENTIFIER:
                raise QueryError(f"search parameter {base!r}: the modifier {modifier!r} is not supported")
            # A chain (FHIR R4 search, "Chaining": patient.name) on a reference that names a patient
            # or another entity is refused for the same reason, but for the two identifier chains
            # taken: ignored, patient.identifier=X would answer every patient's trail.
            chained, dot, _ = name.partition(".")
            if dot and chained in _CHAINABLE and name not in _CHAINS:
                raise QueryError(f"search parameter {name!r}: the chain {name.partition('.')[2]!r} is not supported "
                                 f"(only {' and '.join(sorted(_CHAINS))})")
            if name not in _KNOWN and not strict:
                q.ignored.append(name)
                continue
            if name in _ONCE and len(values) > 1:
                raise QueryError(f"{name}: given {len(values)} times, it may be given once")
            if (many := sum(len(_split(v, ",")) for v in values)) > MOST_VALUES:
                raise QueryError(f"{name}: {many} values, at most {MOST_VALUES} are taken in one search parameter "
                                 "(search in parts)")
            for value in values:
                try:
                    q._add(name, value)
                except QueryError as exc:  # named by its parameter, as the client wrote it
                    raise exc if str(exc).startswith(f"{name}:") else QueryError(f"{name}: {exc}") from None
        return q

    def _add(self, name: str, value: str) -> None:
        """One occurrence of a parameter: its comma-separated values are one more condition."""
        if name in ("patient", "patient.identifier"):  # a reference (Patient/ID), a token (system|value), the ID
            reference = name == "patient"  # the chain names the identifier: a token, never a reference
            self.patients.append(tuple(Identifier.parse(v, reference=reference) for v in _split(value, ",")))
        elif name in ("entity-identifier", "entity.identifier"):
            self.entity_ids.append(tuple(Identifier.parse(v) for v in _split(value, ",")))
        elif name == "date":
            self._date([_unescape(v) for v in _split(value, ",")])
        elif name in _CODED:
            getattr(self, _CODED[name]).append(tuple(CodeToken.parse(v) for v in _split(value, ",")))
        elif name in ("source", _SOURCE_IDENTIFIER):
            identifier = name == _SOURCE_IDENTIFIER
            self.sources.append(tuple(source_token(v, identifier=identifier) for v in _split(value, ",")))
        elif name == "agent-name":
            self.agent_names.append(tuple(_unescape(v).lower() for v in _split(value, ",")))
        elif name in _MATCHED:
            getattr(self, _MATCHED[name]).append(tuple(_value(v) for v in _split(value, ",")))
        elif name == "_id":
            self.ids.append(tuple(_unescape(v) for v in _split(value, ",")))
        elif name == "_count":
            if not (value.isascii() and value.isdigit()) or not 0 <= int(value) <= 10_000:
                raise QueryError(f"_count: expected 0..10000, got {value!r}")
            self.count = int(value)
        elif name == "_total":
            if value not in ("none", "estimate", "accurate"):
                raise QueryError(f"_total: expected none, estimate or accurate, got {value!r}")
            self.counted = value == "accurate"
        elif name == "_cursor":
            if not (value.isascii() and value.isdigit()) or len(value) > 19:
                raise QueryError(f"_cursor: not a position this server gave (a next link's), got {value!r}")
            self.after = int(value)
        elif name not in ("_format",):
            raise QueryError(f"unsupported search parameter {name!r}")

    def _date(self, values: list[str]) -> None:
        """One ``date`` parameter: the span each value (with its prefix) allows; the time bounds the
        store's index reads are narrowed to the span around them all."""
        spans = tuple(_span(v) for v in values)
        lower = min((lo for lo, _ in spans), default=None)
        upper = max((hi for _, hi in spans), default=None)
        if lower is not None and lower > _EARLIEST:
            self.since = lower if self.since is None else max(self.since, lower)
        if upper is not None and upper < _LATEST:
            self.until = upper if self.until is None else min(self.until, upper)
        if len(spans) > 1:
            self.periods.append(spans)

    def matches(self, event: Event) -> bool:
        """Whether a stored message holds every condition: one of the values of each (FHIR's comma
        is "or"; a parameter given twice, and different parameters, are "and")."""
        d = event.details
        participants, objects = d.get("participants", ()), d.get("objects", ())
        if not all(event.id in anyof for anyof in self.ids):
            return False
        if not all(any(i.names(event) for i in anyof) for anyof in self.patients):
            return False
        if not all(any(i.names(event, patients_only=False) for i in anyof) for anyof in self.entity_ids):
            return False
        if not all(any(lo <= event.time < hi for lo, hi in anyof) for anyof in self.periods):
            return False
        if self.agent_names:
            names = [n for p in participants for k in ("user_id", "user_name") if (n := str(p.get(k) or "").lower())]
            if not all(any(n.startswith(a) for a in anyof for n in names) for anyof in self.agent_names):
                return False
        roles = [r for p in participants for r in _roles(p)] if self.agent_roles else []
        for tokens, codes in ((self.event_ids, (d.get("event_id") or {},)), (self.subtypes, d.get("event_types", ())),
                              (self.agent_roles, roles)):
            if not all(any(t.names(c) for t in anyof for c in codes) for anyof in tokens):
                return False
        for conditions, held in self._answered(d, participants, objects):
            if not all(any(_token(t).holds(code, system) for t in anyof for code, system in held)
                       for anyof in conditions):
                return False
        if self.sources:
            source = d.get("source") or {}
            observer = HeldSource(str(source.get("id") or ""), source.get("id_system"), _held_reference(source, d))
            if not all(any(t.names(observer) for t in anyof) for anyof in self.sources):
                return False
        if not self.addresses:
            return True
        addresses = {p.get("access_point") for p in participants}
        return all(not addresses.isdisjoint(anyof) for anyof in self.addresses)

    def _answered(self, d: Mapping[str, object], participants: Iterable[Mapping[str, object]],
                  objects: Iterable[Mapping[str, object]]) -> Iterator[tuple[Sequence[tuple[CodeToken | str, ...]],
                                                                             list[tuple[object, str | None]]]]:
        """Each token parameter over values that are no stored Coding, with the system the answer
        (fhir.render) gives each: an entity's type and role under the system a FHIR AuditEvent sent
        (none for a Coding without one), else audit-entity-type and object-role (PS3.15 A.5.1's
        codes); the outcome and action under the code systems FHIR R4 binds them to, a value
        outside those left out of the answer (None: found by its code alone); an agent's identity
        (agent.who.identifier) under the system it was received with (`_agent_ids`), its altId
        under none."""
        # Only the parameters given are worked out: this runs on every stored event a search reads.
        if self.entity_types:
            yield self.entity_types, [(o.get("type_code"), _fixed(o.get("type_system"), ENTITY_TYPE)) for o in objects]
        if self.entity_roles:
            yield self.entity_roles, [(o.get("role"), _fixed(o.get("role_system"), OBJECT_ROLE)) for o in objects]
        if self.outcomes:
            outcome = d.get("outcome_indicator")
            yield self.outcomes, [(outcome, OUTCOME if outcome in audit_codes.OUTCOMES else None)]
        if self.actions:
            action = d.get("action")
            yield self.actions, [(action, ACTION if action in audit_codes.ACTIONS else None)]
        if self.agent_ids:
            yield self.agent_ids, [held for p in participants for held in _agent_ids(p)]

    def stored(self, store: EventStore, *, after: int | None = None) -> Iterator[StoredEvent]:
        """The stored audit messages of this query's time span and, when it names patients, of the
        first patient condition, from after the store position ``after``, in store order: the
        store's indexes select those; `matches` judges the rest of the query."""
        from pacsguard.store import EventQuery

        base = EventQuery(kind="atna.audit.*", since=self.since, until=self.until, after_seq=after, limit=None)
        if self.ids:  # each id found where its time says it was stored (`stored_by_id`), not by a scan
            return iter(self._by_id(store, after))
        if not self.patients:
            return store.search(base)
        keys = list(dict.fromkeys(i.key for i in self.patients[0]))
        if len(keys) == 1:
            return store.search(replace(base, patient=keys[0]))
        return _merged(store, keys, base)

    def _by_id(self, store: EventStore, after: int | None) -> list[StoredEvent]:
        """The stored messages of the first ``_id`` condition's ids within the time span, in store
        order, after the position ``after``."""
        found = {s.seq: s for i in dict.fromkeys(self.ids[0]) if (s := stored_by_id(store, i)) is not None}
        return [s for seq, s in sorted(found.items()) if (after is None or seq > after)
                and (self.since is None or s.event.time >= self.since)
                and (self.until is None or s.event.time < self.until)]

    def page(self, stored: Iterable[StoredEvent]) -> list[StoredEvent]:
        """The first `count` of ``stored`` (in store order, from after the cursor) that match."""
        out: list[StoredEvent] = []
        for item in stored:
            if self.matches(item.event):
                out.append(item)
                if len(out) >= self.count:
                    break
        return out


def _merged(store: EventStore, keys: list[str], base: EventQuery) -> Iterator[StoredEvent]:
    """The stored events of any of several patients (``patient=A,B``), in store order, each once.
    Each patient's are read a chunk at a time, a connection held only while a chunk is read, so a
    long list cannot hold more connections than the store's pool has."""

    def of(key: str) -> Iterator[StoredEvent]:
        after = base.after_seq
        while True:
            chunk = list(store.search(replace(base, patient=key, after_seq=after, limit=_READ_CHUNK)))
            yield from chunk
            if len(chunk) < _READ_CHUNK:
                return
            after = chunk[-1].seq

    last = None
    for item in heapq.merge(*(of(k) for k in keys), key=lambda s: s.seq):
        if item.seq != last:
            last = item.seq
            yield item


#: The ITI-81 parameters (IHE RESTful ATNA 3.81.4.1.2.1) matched by value, and where each is kept.
_MATCHED = {"address": "addresses"}
#: The chained parameters taken (FHIR R4 search, "Chaining"): ``patient.identifier`` is ``patient``
#: given a token, ``entity.identifier`` (as IHE ITI-81 national extensions, CH:ATC, send it) is
#: ``entity-identifier``. Any other chain on one of `_CHAINABLE` is a QueryError.
_CHAINS = frozenset({"patient.identifier", "entity.identifier"})
#: The parameters that name a patient: an empty value of one is refused, not ignored.
_IDENTIFYING = frozenset({"patient", "entity-identifier", *_CHAINS})
#: The ITI-81 (and FHIR R4 AuditEvent) token parameters of a coded value or an identifier, its
#: system compared too (FHIR R4 search, token), and where each is kept.
_CODED = {"type": "event_ids", "subtype": "subtypes", "entity-type": "entity_types", "entity-role": "entity_roles",
          "outcome": "outcomes", "action": "actions", "agent-identifier": "agent_ids", "agent-role": "agent_roles"}
#: Every search parameter taken, with its FHIR search type (FHIR R4 3.1.1.4): what GET /metadata lists.
SEARCH_PARAMETERS = {"_id": "token", "date": "date", "patient": "reference", "agent-name": "string",
                     "entity-identifier": "token", "address": "string", "source": "reference",
                     **dict.fromkeys(_CODED, "token")}
#: The parameters whose chains are refused rather than ignored, as their modifiers are: those
#: taken, and FHIR R4 AuditEvent's ``entity`` (a reference to the patient, among others).
_CHAINABLE = frozenset({*SEARCH_PARAMETERS, "entity"})
#: ``source`` named by the observer's identifier (FHIR R4 search, reference, ":identifier"
#: modifier): the one modifier taken, so that a client told ``source`` is a reference can name a
#: source by its identifier as FHIR has it.
_SOURCE_IDENTIFIER = "source:identifier"
#: What GET /metadata tells a client of the parameters whose values take more forms than their
#: FHIR type (CapabilityStatement.rest.resource.searchParam.documentation, markdown).
SEARCH_DOCUMENTATION = {
    "_id": "The id of an AuditEvent, as a search Bundle's fullUrl or a create's Location gives it; "
           "a list finds any of them.",
    "source": "The audit source (source.observer), a reference as FHIR R4 defines it: `Device/ID` (or "
              "its URL; PractitionerRole, Practitioner, Organization, Patient, RelatedPerson too) finds "
              "an observer sent as that reference and a source whose ID is `ID`; an ID alone finds the "
              "source of exactly that ID (an A.5 AuditSourceID is compared whole: `pacs1` does not find "
              "`hospital/pacs1`) or an observer referenced by that id. Also a token of the observer's "
              "identifier: `system|value` (that system), `|value` (none), as `source=` or "
              "`source:identifier=`. A source stored without a system is found by its ID under any.",
    "patient": "A reference (`Patient/ID`), a token of the patient's identifier (`system|value`, "
               "`|value`), or the ID alone in any HL7 v2 CX form (`ID^^^&OID&ISO`).",
}
#: Every parameter the search understands: those and the result parameters.
_KNOWN = frozenset({*SEARCH_PARAMETERS, *_CHAINS, _SOURCE_IDENTIFIER, "_count", "_cursor", "_total", "_format"})
#: The result parameters that hold one value: given twice, which one was meant is unknown (FHIR R4
#: search, "Handling Errors": the server may reject), so neither is taken silently.
_ONCE = frozenset({"_count", "_total", "_cursor", "_format"})
#: Values one search parameter may list in all (commas and repeats): each patient of a list is one
#: read of the store's index, and each value is tried against every event read.
MOST_VALUES = 100


def _normal(name: str) -> str:
    """A parameter name compared loosely: NFKC, any case, no ``-`` ``_`` ``.`` or space inside; a
    leading ``_`` kept, so FHIR's own ``_source`` or ``_type`` is not taken for ``source`` or ``type``."""
    folded = unicodedata.normalize("NFKC", name).strip().casefold()
    lead = "_" if folded.startswith("_") else ""
    return lead + re.sub(r"[-_.\s]", "", folded.removeprefix(lead))


#: The known names as `_normal` gives them, each with those it stands for (``entityidentifier``:
#: ``entity-identifier`` and its chain ``entity.identifier``).
_NORMALS = {key: sorted(n for n in _KNOWN if _normal(n) == key) for key in map(_normal, _KNOWN)}
#: What an unknown name that begins as one of these (``patient_id``, ``PatientName``,
#: ``entityId``) may have meant: it would name a patient or an entity.
_ROOTS = {root: sorted(n for n in _KNOWN if _normal(n).startswith(root)) for root in ("patient", "entity")}


def _meant(name: str) -> str | None:
    """The known parameter(s) an unknown ``name`` differs from only in case, ``-`` ``_`` ``.`` or
    space (``Patient``, ``patient_identifier``, ``agent_name``), or, for one that begins like a
    parameter naming a patient (``patient_id``), those: lenient handling (FHIR R4 search, "Handling
    Errors") would ignore it, and answer the trail of every patient; None for a name like none."""
    key = _normal(name)
    root = next((r for r in _ROOTS if key.startswith(r)), None)
    meant = _NORMALS.get(key) or (_ROOTS[root] if root else [])
    return " or ".join(repr(n) for n in meant) or None


#: The ends of time: a span that reaches one does not bound the store's index.
#: The forms a ``date`` value may take (FHIR R4 dateTime, and search's minute precision, 3.1.1.4.5):
#: YYYY, YYYY-MM, YYYY-MM-DD, and a time of the day to the minute or the second (with a fraction),
#: with a zone (Z, +hh:mm, -hh:mm) or none (UTC).
_DATE = re.compile(r"(?P<year>[0-9]{4})(?:-(?P<month>[0-9]{2})(?:-(?P<day>[0-9]{2})"
                   r"(?:T(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2})(?::(?P<second>[0-9]{2})(?:\.(?P<fraction>[0-9]+))?)?"
                   r"(?P<zone>Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?")
_DATE_FORMS = ("YYYY, YYYY-MM, YYYY-MM-DD, YYYY-MM-DDThh:mm or YYYY-MM-DDThh:mm:ss[.fff], "
               "a time with Z or +hh:mm (else UTC)")
#: The prefixes of FHIR R4 search ("Prefixes"), each recognised as one, taken or refused by name.
_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_EARLIEST = datetime.min.replace(tzinfo=timezone.utc)
_LATEST = datetime.max.replace(tzinfo=timezone.utc)


def stored_by_id(store: EventStore, resource_id: str) -> StoredEvent | None:
    """The stored audit message whose Event id is ``resource_id`` (the AuditEvent id a search
    Bundle gives it), or None: for an id of no such message, or of a form this repository does
    not give (FHIR R4 3.1.0.1: read answers 404).

    The store has no index by id, but it holds events in the order they arrived and every id
    begins with the millisecond it was made (UUIDv7, RFC 9562 5.7): a binary search by that time
    finds where the event was stored, give or take the disorder of the hand-over from the reading
    processes (`sources.DISORDER`), and `_around` reads outwards from there: a few reads for an
    event that is there, whatever the store's size."""
    from pacsguard.atna.sources import first_made_from, made_ms
    from pacsguard.store import EventQuery

    made = made_ms(resource_id) if _EVENT_ID.fullmatch(resource_id) else None
    if made is None:
        return None
    try:
        when = datetime.fromtimestamp(made / 1000, timezone.utc)
    except (ValueError, OverflowError, OSError):  # an id of the year 10000 or later: no event's
        return None
    at = first_made_from(store, when)
    if at is None:  # an event in the store with an id of another form: no time to start from
        around: Iterable[StoredEvent] = store.search(EventQuery(kind="atna.audit.*", limit=None))
    else:
        around = _around(store, at, made)
    found = next((s for s in around if s.event.id == resource_id), None)
    return found if found is not None and found.event.kind.startswith("atna.audit.") else None


def _around(store: EventStore, at: int, made: int) -> Iterator[StoredEvent]:
    """The stored events from position ``at`` outwards, a chunk forwards and a chunk backwards in
    turn; each way until the store ends or an event there was made further from ``made`` (Unix
    ms) than the store's disorder: the event of ``made`` cannot lie beyond one stored out of
    order by more than that."""
    from pacsguard.atna.sources import DISORDER, made_ms
    from pacsguard.store import EventQuery

    def beyond(chunk: list[StoredEvent], far: Callable[[int], bool]) -> bool:
        return any(m is not None and far(m) for m in (made_ms(s.event.id) for s in chunk))

    margin = DISORDER // timedelta(milliseconds=1)
    ahead: int | None = at  # the next position to read forwards
    behind: int | None = at  # the position after the next chunk to read backwards
    first, last = max(at - _MOST_READ, 0), at + _MOST_READ
    while ahead is not None or behind is not None:
        if ahead is not None:
            chunk = list(store.search(EventQuery(after_seq=ahead - 1, limit=_READ_CHUNK)))
            yield from chunk
            done = len(chunk) < _READ_CHUNK or beyond(chunk, lambda m: m > made + margin)
            ahead = None if done or chunk[-1].seq + 1 >= last else chunk[-1].seq + 1
        if behind is not None:
            start = max(behind - _READ_CHUNK, first)
            chunk = list(store.search(EventQuery(after_seq=start - 1, limit=behind - start))) if behind > start else []
            yield from reversed(chunk)
            behind = None if start == first or beyond(chunk, lambda m: m < made - margin) else start


def _token(given: CodeToken | str) -> CodeToken:
    """A condition as a token: a plain code (the `audit search` options') is one of any system."""
    return given if isinstance(given, CodeToken) else CodeToken(given)


def _roles(p: Mapping[str, Any]) -> list[Mapping[str, str]]:
    """A participant's roles answered as its agent.role (FHIR R4 AuditEvent.agent.role, what
    ``agent-role`` searches): those it was not sent as agent.type (fhir._out_agent)."""
    types = list(p.get("types") or ())
    out = []
    for role in p.get("roles") or ():
        if role in types:
            types.remove(role)
        else:
            out.append(role)
    return out


def _agent_ids(p: Mapping[str, Any]) -> list[tuple[object, str]]:
    """A participant's identifiers as ``agent-identifier`` compares them (FHIR R4 search, token): its
    UserID under the system agent.who.identifier was received with ("" none: A.5, RFC 3881, a FHIR
    identifier without one, a message stored before the system was kept), as ITI-81 answers it;
    its AlternativeUserID (agent.altId, a string) under none."""
    system = p.get("user_id_system")
    return [(p.get("user_id"), system_uri(str(system)) if system else ""), (p.get("alternative_user_id"), "")]


def _fixed(system: object, fixed: str) -> str:
    """An entity type's or role's answered system (fhir._entity_coding): as received ("" none), else
    the one A.5 fixes."""
    return fixed if system is None else str(system)


def _value(text: str) -> str:
    """The value to match of an ``address`` (a string)."""
    return _unescape(_split(text, "|")[-1])


@dataclass(frozen=True, slots=True)
class HeldSource:
    """A stored message's audit source as ``source`` compares it: its ID (A.5's AuditSourceID, or
    what names a FHIR source.observer: its identifier's value, else its display, else its
    reference), the identifier's system ("" or None: none), and the type and id of the literal
    reference a FHIR observer was named by (`_held_reference`), None for none."""

    id: str
    system: str | None
    reference: tuple[str, str] | None


def _held_reference(source: Mapping[str, Any], details: Mapping[str, Any]) -> tuple[str, str] | None:
    """The literal reference (type, id) a stored FHIR source.observer was sent as: the one kept
    with its form (``source.observer``, mapping.record_details); for a FHIR message stored before
    the form was kept, its ID when that is a reference and has no system (a reference was kept as
    the ID when it was all the observer had; an identifier with a system is kept without the form,
    fhir._observer). An A.5 or RFC 3881 AuditSourceID is never one, whatever its ``/`` (PS3.15
    A.5.1: an ID, not a FHIR reference)."""
    observer = source.get("observer")
    if isinstance(observer, Mapping):
        return observer_reference(str(observer.get("reference") or ""))
    if details.get("syntax") != "fhir" or source.get("id_system"):
        return None
    return observer_reference(str(source.get("id") or ""))


@dataclass(frozen=True, slots=True)
class SourceToken:
    """A ``source`` value (AuditEvent.source.observer). FHIR R4 defines ``source`` as a reference
    (search, "reference": ``Device/ID``, its URL, or the id alone, of any type); this server takes
    a token of the observer's identifier too (search, "token": ``system|value`` that system,
    ``|value`` none), since A.5 and most FHIR senders name the source by an ID, not a reference.

    * ``system|value``, ``|value`` (`token`): the source's ID under that system; a source stored
      without a system (A.5's AuditSourceID, a FHIR identifier sent without one, a message stored
      before the system was kept) by its ID alone, whatever system the token names.
    * ``Device/ID`` or its URL (`reference`, a type an observer may be): an observer sent as that
      reference, or a source whose ID is ``ID`` or the whole value.
    * anything else: a source whose ID is exactly the value, or an observer sent as a reference of
      that id. ``pacs1`` does not find ``hospital/pacs1``: an AuditSourceID is compared whole."""

    value: str
    system: str | None = None  # a token's: None any, "" none, else that one
    token: bool = False
    reference: tuple[str, str] | None = None

    def names(self, held: HeldSource) -> bool:
        """Whether the stored source ``held`` is this one."""
        if self.token:  # an identifier: not the text of a reference kept as the ID
            named_by_reference = held.reference is not None and observer_reference(held.id) == held.reference
            return held.id == self.value and not named_by_reference and _same_system(self.system, held.system)
        if held.id == self.value:
            return True
        if self.reference is not None:
            return held.reference == self.reference or held.id == self.reference[1]
        return held.reference is not None and held.reference[1] == self.value


def _same_system(given: str | None, held: object) -> bool:
    """Whether a token's system (FHIR R4 search, token; None any, "" none) admits an identifier
    stored under ``held``: one stored without a system admits any; one with a system only that
    system, or any."""
    if not held or given is None:
        return True
    return bool(given) and system_uri(given) == system_uri(str(held))


def source_token(text: str, *, identifier: bool = False) -> SourceToken:
    """A ``source`` value as `SourceToken` compares it; with ``identifier`` (``source:identifier``,
    FHIR R4 search's modifier of a reference that names it by its identifier) a token, ``value``
    alone in any system. A QueryError for more than one ``|`` or an empty value (left in, it would
    name every source stored without an ID)."""
    parts = [_unescape(p) for p in _split(text, "|")]
    if len(parts) > 2:
        raise QueryError(f"expected system|value, value or Device/ID, got {text[:64]!r}")
    if not parts[-1]:
        raise QueryError(f"an empty value ({text[:64]!r}): name the audit source, or leave it out")
    if len(parts) == 2:
        return SourceToken(parts[1], parts[0], token=True)
    if identifier:
        return SourceToken(parts[0], token=True)
    return SourceToken(parts[0], reference=observer_reference(parts[0]))


#: What FHIR escapes with a backslash in a search value (FHIR R4 search, "Escaping Search Parameters").
_ESCAPED = ",|$\\"


def _split(text: str, separator: str) -> list[str]:
    r"""``text`` at each ``separator`` (``,`` between values, ``|`` in a token) that is not escaped
    (``\,``, ``\|``); the parts keep their escapes, for the next split (`_unescape` undoes them)."""
    parts, start, i = [], 0, 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in _ESCAPED:
            i += 2
            continue
        if text[i] == separator:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def _unescape(text: str) -> str:
    r"""``text`` with FHIR's escapes undone (``\,`` ``\|`` ``\$`` ``\\``); a backslash before
    anything else is kept, as HL7 v2 escapes in a CX (``\T\`` for ``&``) use it."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in _ESCAPED:
            i += 1
        out.append(text[i])
        i += 1
    return "".join(out)


def _span(value: str) -> tuple[datetime, datetime]:
    """The instants ``date=value`` allows, from the first to before the last: the FHIR date(Time)'s
    period, with its prefix (eq, the default, ge, gt, le, lt; sa and eb, which for an instant such
    as an event's time are gt and lt: FHIR R4 search, "Prefixes"). ne and ap are a QueryError
    naming the prefix (the value is a date; read as none, it would be called "not a date")."""
    prefix, text = (value[:2], value[2:]) if value[:2] in _PREFIXES else ("eq", value)
    if prefix in ("ne", "ap"):
        raise QueryError(f"date: the prefix {prefix!r} of {value[:64]!r} is not supported: use eq, ge, gt, le, lt, "
                         "sa or eb (two date parameters for a range)")
    start, end = _period(text)
    lower = {"ge": start, "gt": end, "sa": end, "eq": start}.get(prefix, _EARLIEST)
    upper = {"le": end, "lt": start, "eb": start, "eq": end}.get(prefix, _LATEST)
    return lower, upper


def _period(text: str) -> tuple[datetime, datetime]:
    """The time span a FHIR date(Time) denotes: the implicit range of its precision (FHIR R4 search
    3.1.1.4.5: a year, a month, a day, a minute, a second, or the last digit of a fraction of one).
    Any other form (``20261203``, an hour alone) is a QueryError naming the forms taken: read as
    something else, it would answer too little without saying so."""
    parts = _DATE.fullmatch(text)
    if parts is None:
        # A "+" in a query is a space (HTML form encoding, which parse_qs follows): a zone +01:00 sent
        # unencoded arrives as " 01:00", and the client should be told why its value is not taken.
        plus = "; a + in a URL query is a space: write the zone's + as %2B" if " " in text else ""
        raise QueryError(f"date: {text[:64]!r} is not a FHIR date or dateTime: expected {_DATE_FORMS}{plus}")
    try:
        return _bounds(parts)
    except (ValueError, OverflowError) as exc:  # month 13, 31 February, hour 24, zone +25:00
        raise QueryError(f"date: {text[:64]!r} is no time there is ({exc}): expected {_DATE_FORMS}") from None


def _bounds(parts: re.Match[str]) -> tuple[datetime, datetime]:
    """The first instant of a `_DATE` match and the one after its last."""
    year, month, day = (int(parts[name] or 1) for name in ("year", "month", "day"))
    if parts["month"] is None:
        start = datetime(year, 1, 1, tzinfo=timezone.utc)
        return start, _until(lambda: start.replace(year=year + 1))
    if parts["day"] is None:
        start = datetime(year, month, 1, tzinfo=timezone.utc)
        return start, _until(lambda: (start + timedelta(days=32)).replace(day=1))
    if parts["hour"] is None:
        start = datetime(year, month, day, tzinfo=timezone.utc)
        return start, _until(lambda: start + timedelta(days=1))
    tz = _zone(parts["zone"])
    fraction = parts["fraction"] or ""
    # FHIR allows second 60 (a leap second): taken as the last second of its minute.
    second = min(int(parts["second"] or 0), 59)
    start = datetime(year, month, day, int(parts["hour"]), int(parts["minute"]), second,
                     int(fraction[:6].ljust(6, "0")), tzinfo=tz)
    if parts["second"] is None:
        step = timedelta(minutes=1)
    else:  # a second, or the last digit of its fraction (a microsecond at the finest)
        step = timedelta(microseconds=10 ** (6 - min(len(fraction), 6)))
    return start, _until(lambda: start + step)


def _zone(given: str | None) -> timezone:
    """A dateTime's zone: Z or none is UTC, else +hh:mm or -hh:mm (hours up to 23, minutes to 59)."""
    if given in (None, "Z"):
        return timezone.utc
    assert given is not None
    hours, minutes = int(given[1:3]), int(given[4:6])
    if hours > 23 or minutes > 59:
        raise ValueError(f"the zone {given} is no offset there is")
    return timezone((-1 if given[0] == "-" else 1) * timedelta(hours=hours, minutes=minutes))


def _until(end: Callable[[], datetime]) -> datetime:
    """The end of a span; the last instant there is for one that would end after the year 9999."""
    try:
        return end()
    except (ValueError, OverflowError):
        return datetime.max.replace(tzinfo=timezone.utc)
