"""Explanation-based auditing (Fabbri and LeFevre, "Explanation-Based Auditing", PVLDB 5(1), 2011):
an access to a patient's data is *explained* when the store shows a reason for it. Each reason is a
small named template, a query over the patient's events in the store (docs/audit.md, "Explained
and unexplained accesses"):

| template              | the access is explained when the store holds                        |
|-----------------------|---------------------------------------------------------------------|
| `order-names-user`    | an order for the patient (PS3.15 A.5.3, event ID 110109 Order       |
|                       | Record, created or updated) naming the user among its participants  |
| `department-study`    | an order, a procedure record (110111) or created/updated instances  |
|                       | (110103) for the patient by the user or a colleague of the user's   |
|                       | department (staff directory), or naming that department (an         |
|                       | organization participant object, ParticipantObjectTypeCode 3)       |
| `move-to-workstation` | a C-MOVE (PS3.4 C.4.2) of the patient's objects, recorded by the    |
|                       | gateway, whose Move Destination is an AE title of the user's        |
|                       | workstation                                                         |
| `repeat-access`       | an earlier, explained access by the same user to the same patient   |
|                       | within the repeat window (the paper's repeat template)              |

The first three look for evidence within the evidence window on either side of the access (a report
written after the images were read is a reason to read them). HL7 v2 orders (ORM/OMI) count once they
are in the store as Order Record audit messages: pacsguard has no HL7 decoder yet.

An access is one event and one patient it names: a received audit message that reads or queries
(action R or E, or none; an EventActionCode outside PS3.15 A.5.1's C, R, U, D, E is judged too, so
that a sender's wrong code hides no access), or a gateway C-FIND, C-MOVE, C-GET or C-STORE; its
user is the requesting user's identity (UserID, PS3.15 A.5.2.1: never the display name UserName),
else the calling AE title.

Any sender can write an order naming itself: `atna.privacy.explain.evidence_from` names the senders
(addresses or networks: the RIS, the EMR, the PACS) whose audit messages count as evidence; a record
from any other counts for nothing. pacsguard's own records of C-MOVEs always count.

Evidence is for the same patient: an event naming the ID under another assigning authority (HL7 v2.5
2.A.33 HD: another namespace or universal ID) is another patient's; an ID given without an authority
(the gateway's) is taken as the same patient. An order, procedure or instances record whose
EventOutcomeIndicator is 8 or 12 (serious or major failure, PS3.15 A.5.1) did not happen and is no
evidence.
"""

from __future__ import annotations

import heapq
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import TYPE_CHECKING, Any

from pacsguard.atna.message import mapping
from pacsguard.atna.message.patient import PatientId
from pacsguard.atna.timespan import shifted
from pacsguard.events.model import Event

if TYPE_CHECKING:
    from pathlib import Path

    from pacsguard.atna.config import Privacy
    from pacsguard.ids.audit.adapter import PrivacyLists
    from pacsguard.store import EventStore, StoredEvent

ORDER = "atna.audit.order-record"
PROCEDURE = "atna.audit.procedure-record"
INSTANCES = "atna.audit.instances-accessed"
GATEWAY_ACCESSES = frozenset({"dicom.dimse.c-find", "dicom.dimse.c-move", "dicom.dimse.c-get", "dicom.dimse.c-store"})
#: Audit events that name patients but record no access to them.
_NOT_ACCESSES = frozenset({"110100", "110108", "110113", "110114"})
_CHANGES = frozenset({"C", "U"})
#: EventActionCodes that change or delete data (PS3.15 A.5.1): an event with any other code, or
#: none, reads or executes, and is judged as an access.
_NOT_READS = frozenset({"C", "U", "D"})
#: EventOutcomeIndicator 8 and 12 (serious, major failure, PS3.15 A.5.1): the action did not happen.
_FAILED = frozenset({"8", "12"})
#: The seq given to an event not stored yet (the access being received).
UNSTORED = -1


@dataclass(frozen=True, slots=True)
class ExplainSettings:
    """The windows (seconds) and the staff directory's departments (user, lower case -> department)."""

    evidence_window: float = 90 * 86400.0
    repeat_window: float = 7 * 86400.0
    departments: Mapping[str, str] = field(default_factory=dict)
    #: The senders whose audit messages count as evidence (empty: every sender's).
    evidence_from: tuple[IPv4Network | IPv6Network, ...] = ()

    def department(self, user: str) -> str:
        return self.departments.get(user, "")

    def trusts(self, event: Event) -> bool:
        """Whether ``event`` came from a sender whose records count as evidence."""
        if not self.evidence_from:
            return True
        sender = event.details.get("sender")
        host = sender.get("host") if isinstance(sender, dict) else None
        try:
            address = ip_address(str(host))
        except ValueError:
            return False
        return any(address in network for network in self.evidence_from)


def settings_of(privacy: Privacy | None, resolve: Callable[[Path], Path] = lambda p: p,
                lists: PrivacyLists | None = None) -> ExplainSettings:
    """The settings of the `atna.privacy` section (its windows, its staff directory's departments:
    from ``lists`` when the caller read them already, else read here)."""
    from pacsguard.ids.rules import parse_duration

    if privacy is None:
        return ExplainSettings()
    windows = privacy.explain
    staff = lists if lists is not None else privacy.lists(resolve, watch=False)
    return ExplainSettings(parse_duration(windows.evidence_window), parse_duration(windows.repeat_window),
                           staff.departments(), tuple(windows.evidence_from))


@dataclass(frozen=True, slots=True)
class Item:
    """One of a patient's events as the templates read it."""

    seq: int
    event: Event
    time: float  # seconds since the epoch
    user: str  # the requesting user, else the calling AE title, lower case ("" for none)
    ae_titles: frozenset[str]
    access: bool

    @classmethod
    def of(cls, seq: int, event: Event) -> Item:
        return cls(seq, event, event.time.timestamp(), user_of(event), workstation_of(event), is_access(event))


@dataclass(frozen=True, slots=True)
class Explanation:
    """The verdict on one access: the template that explains it and the evidence event's seq."""

    seq: int
    patient: str
    item: Item
    template: str | None = None
    evidence: int | None = None

    @property
    def explained(self) -> bool:
        return self.template is not None

    def to_dict(self) -> dict[str, Any]:
        ev = self.item.event
        return {"seq": self.seq, "patient": self.patient, "time": ev.to_dict()["time"], "kind": ev.kind,
                "user": self.item.user or None, "template": self.template, "evidence": self.evidence}


def touches_patient(event: Event) -> bool:
    """Whether ``event`` records something done to patient data, whatever the action: a gateway
    request that was not refused, or a received audit message naming a patient that is not
    Application Activity, Network Entry, Security Alert or User Authentication (those name patients
    but do nothing to their data)."""
    if not event.patient_ids:
        return False
    if event.kind in GATEWAY_ACCESSES:
        return event.details.get("decision") is None  # a refused request disclosed nothing
    if not event.kind.startswith("atna.audit."):
        return False  # pacsguard's own events (an IDS alert is timed when it was raised)
    return (event.details.get("event_id") or {}).get("code") not in _NOT_ACCESSES


def is_access(event: Event) -> bool:
    """Whether ``event`` is an access to patient data that needs a reason (the module's docstring)."""
    if not touches_patient(event):
        return False
    return event.kind in GATEWAY_ACCESSES or event.details.get("action") not in _NOT_READS


def user_of(event: Event) -> str:
    """The access's user as the templates compare users: the requesting user's identity (UserID,
    PS3.15 A.5.2.1; mapping.user_of), else the calling AE title; lower case. Never the display name
    (UserName): two users may share one, and the staff directory and other messages name logins."""
    return (mapping.user_of(event) or event.actor.ae_title or "").strip().lower()


def workstation_of(event: Event) -> frozenset[str]:
    """The AE titles of the user's workstation: the actor's, and those of participants on the same
    network access point as the requesting user (PS3.15 A.5.2.2 AETITLES=)."""
    found = {event.actor.ae_title} if event.actor.ae_title else set()
    host = event.actor.host
    for p in event.details.get("participants", ()) if host else ():
        alt = str(p.get("alternative_user_id") or "")
        if p.get("access_point") == host and alt.upper().startswith("AETITLES="):
            found.update(a for a in alt[9:].split(";") if a)
    return frozenset(a.strip() for a in found)


def _users_named(event: Event) -> set[str]:
    """The users an event names: its user and the identity of each participant (not their display
    names, which would let one John Smith's order explain another's access)."""
    names = {user_of(event)}
    names.update(str(mapping.identity_of(p) or "").strip().lower() for p in event.details.get("participants", ()))
    names.discard("")
    return names


def compared(text: str | None) -> str:
    """A name, address or department as compared, here and by the privacy rules' staff directory
    (ids/audit/adapter.py): Unicode NFC (a decomposed u + U+0308 from one system equals the
    precomposed ü of another, Unicode UAX #15), upper case, single spaces."""
    return " ".join(unicodedata.normalize("NFC", text or "").upper().split())


def _organizations(event: Event) -> set[str]:
    """Departments an audit message names: participant objects of type 3 (organization), compared
    as the staff directory's departments are (`compared`: a "Radiologie Süd" sent decomposed is the
    directory's)."""
    return {compared(str(o.get(k) or "")) for o in event.details.get("objects", ())
            if o.get("type_code") == "3" for k in ("id", "name")} - {""}


def _care(item: Item, settings: ExplainSettings) -> bool:
    """An order, a procedure record or new instances, from a sender whose records count: evidence
    that someone cared for the patient."""
    action = item.event.details.get("action")
    if item.event.details.get("outcome_indicator") in _FAILED:
        return False  # a refused or failed order created nothing (PS3.15 A.5.1 EventOutcomeIndicator)
    if not settings.trusts(item.event):
        return False
    if item.event.kind in (ORDER, PROCEDURE):
        return action is None or action in _CHANGES
    return item.event.kind == INSTANCES and action in _CHANGES


# ------------------------------------------------------------------------------ the templates

Finder = Callable[[Item, Sequence[Item], ExplainSettings], Item | None]


def _order_names_user(access: Item, near: Sequence[Item], settings: ExplainSettings) -> Item | None:
    return next((c for c in near
                 if c.event.kind == ORDER and _care(c, settings) and access.user in _users_named(c.event)), None)


def _department_study(access: Item, near: Sequence[Item], settings: ExplainSettings) -> Item | None:
    mine = settings.department(access.user)
    for c in near:
        if not _care(c, settings):
            continue
        named = _users_named(c.event)
        if access.user in named:
            return c
        if mine and (mine in _organizations(c.event) or any(settings.department(u) == mine for u in named)):
            return c
    return None


def _move_to_workstation(access: Item, near: Sequence[Item], settings: ExplainSettings) -> Item | None:
    if not access.ae_titles:
        return None
    return next((c for c in near if _moved(c)
                 and str(c.event.details.get("move_destination", "")).strip() in access.ae_titles), None)


@dataclass(frozen=True, slots=True)
class Template:
    name: str
    doc: str
    find: Finder


TEMPLATES: tuple[Template, ...] = (
    Template("order-names-user", "an order for the patient names the user", _order_names_user),
    Template("department-study", "the user or their department ordered, performed or reported a study for "
             "the patient", _department_study),
    Template("move-to-workstation", "the patient's objects were sent to the user's workstation by a C-MOVE",
             _move_to_workstation),
)
REPEAT = Template("repeat-access", "the same user accessed the patient earlier, for an explained reason",
                  lambda access, near, settings: None)  # needs the earlier verdicts: `explain_items` applies it


def template_docs() -> dict[str, str]:
    return {t.name: t.doc for t in (*TEMPLATES, REPEAT)}


# ------------------------------------------------------------------------------ running them


def explain_items(items: Sequence[Item], patient: str, settings: ExplainSettings,
                  wanted: Callable[[Item], bool] = lambda item: True) -> list[Explanation]:
    """The verdict on every access among one patient's ``items`` that ``wanted`` selects, in time
    order; earlier accesses in ``items`` are judged too, so a repeat can rest on them. The evidence
    (orders, studies, C-MOVEs) is picked out once: a patient's thousands of C-STOREs cost one pass
    each over it, not over every event."""
    ordered = sorted(items, key=lambda i: (i.time, i.seq if i.seq != UNSTORED else float("inf")))
    evidence = [i for i in ordered if _care(i, settings) or _moved(i)]
    # user -> their explained accesses so far, oldest first: all of them, not the latest only, as
    # the latest may be to another authority's patient of the same ID, which no repeat rests on.
    explained: dict[str, list[Item]] = {}
    out: list[Explanation] = []
    for access in ordered:
        if not access.access:
            continue
        verdict = _judge(access, evidence, patient, settings, explained.get(access.user, ()))
        if verdict.explained and access.user:
            explained.setdefault(access.user, []).append(access)
        if wanted(access):
            out.append(verdict)
    return out


def _moved(item: Item) -> bool:
    return item.event.kind == "dicom.dimse.c-move" and item.event.details.get("decision") is None


def _judge(access: Item, evidence: Sequence[Item], patient: str, settings: ExplainSettings,
           before: Sequence[Item]) -> Explanation:
    """The first template that finds evidence for ``access``, else a repeat of the latest of the
    user's explained accesses ``before`` it (oldest first) that is to the same patient."""
    window = settings.evidence_window
    bare = PatientId.parse(patient).id
    mine = authorities_of(access.event, bare)
    near = [c for c in evidence if c is not access and abs(c.time - access.time) <= window
            and same_patient(mine, authorities_of(c.event, bare))]
    for template in TEMPLATES:
        found = template.find(access, near, settings)
        if found is not None:
            return Explanation(access.seq, patient, access, template.name, found.seq)
    for earlier in reversed(before):
        if access.time - earlier.time > settings.repeat_window:
            break  # the rest are older still
        if same_patient(mine, authorities_of(earlier.event, bare)):
            return Explanation(access.seq, patient, access, REPEAT.name, earlier.seq)
    return Explanation(access.seq, patient, access)


def authorities_of(event: Event, patient: str) -> frozenset[str]:
    """The assigning authorities under which ``event`` names the bare ID ``patient`` ("" for the ID
    given without one: the gateway's events, a FHIR identifier without a system)."""
    named = [p for p in event.details.get("patients") or () if p.get("id") == patient]
    if not named:
        return frozenset({""})
    return frozenset(str(p.get("authority") or "") for p in named)


def same_patient(one: frozenset[str], other: frozenset[str]) -> bool:
    """Whether two events naming one ID under these authorities may name the same patient: yes when
    either gives the ID without an authority, else when two of their authorities agree."""
    if "" in one or "" in other:
        return True
    return any(_same_authority(a, b) for a in one for b in other)


def _same_authority(one: str, other: str) -> bool:
    """Two HL7 v2.5 HD values (2.A.33: NAMESPACE&UNIVERSAL-ID&TYPE) name the same authority: their
    universal IDs agree when both give one, else their namespaces when both give one; an HD giving
    only a namespace and another only a universal ID cannot be told apart (taken as the same)."""
    ns1, _, rest1 = one.partition("&")
    ns2, _, rest2 = other.partition("&")
    uid1, uid2 = rest1.partition("&")[0].strip().lower(), rest2.partition("&")[0].strip().lower()
    if uid1 and uid2:
        return uid1 == uid2
    if ns1.strip() and ns2.strip():
        return ns1.strip().casefold() == ns2.strip().casefold()
    return True


def patients_of(event: Event) -> list[str]:
    """The patient IDs an event names, without their assigning authority, each once."""
    return list(dict.fromkeys(p.split("^", 1)[0] for p in event.patient_ids if p.split("^", 1)[0]))


def patient_items(store: EventStore, patient: str, since: datetime | None, until: datetime | None,
                  settings: ExplainSettings) -> list[Item]:
    """The query every template runs over: the patient's events from the evidence (or repeat) window
    before ``since`` to the evidence window after ``until``."""
    from pacsguard.store import EventQuery

    back = timedelta(seconds=max(settings.evidence_window, settings.repeat_window))
    ahead = timedelta(seconds=settings.evidence_window)
    found = store.search(EventQuery(patient=patient, since=shifted(since, -back) if since else None,
                                    until=shifted(until, ahead) if until else None, limit=None))
    return [Item.of(s.seq, s.event) for s in found]


def explain_patient(store: EventStore, patient: str, since: datetime | None, until: datetime | None,
                    settings: ExplainSettings) -> list[Explanation]:
    """The verdicts on the patient's accesses from ``since`` to ``until``."""
    lo = since.timestamp() if since else float("-inf")
    hi = until.timestamp() if until else float("inf")
    return explain_items(patient_items(store, patient, since, until, settings), patient, settings,
                         lambda item: lo <= item.time < hi)


class Accesses:
    """The accesses among events read once (a day's, for the daily report), remembered by patient as
    seqs only, then judged patient by patient with one query each."""

    def __init__(self) -> None:
        self.wanted: dict[str, set[int]] = {}

    def see(self, stored: StoredEvent) -> Event:
        if is_access(stored.event):
            for patient in patients_of(stored.event):
                self.wanted.setdefault(patient, set()).add(stored.seq)
        return stored.event

    def explain(self, store: EventStore, since: datetime | None, until: datetime | None,
                settings: ExplainSettings) -> Iterator[Explanation]:
        """The verdicts, patient by patient, as they are made: a day of 100,000 accesses is not
        held at once (`summary` with a limit keeps the listed ones only)."""
        for patient, seqs in self.wanted.items():
            items = patient_items(store, patient, since, until, settings)
            yield from explain_items(items, patient, settings, _among(seqs))


def _among(seqs: set[int]) -> Callable[[Item], bool]:
    return lambda item: item.seq in seqs


def explain_unstored(store: EventStore, event: Event, settings: ExplainSettings,
                     recent: Callable[[str], Sequence[Event]] = lambda patient: ()) -> Explanation | None:
    """The verdict on an access being received (not stored yet); None when it is no access. Judged
    for every patient it names against what the store holds at that moment and ``recent(patient)``:
    the events naming the patient received before it that may not have reached the store yet (an
    order sent just before the access on the same connection). The first unexplained patient's
    verdict, else the first patient's: the access is explained only when it is for each of them (as
    `audit patient` judges each)."""
    if not is_access(event):
        return None
    verdicts = [v for patient in patients_of(event)
                for v in _verdicts_on_arrival(store, event, patient, settings, recent)]
    return next((v for v in verdicts if not v.explained), verdicts[0] if verdicts else None)


def _verdicts_on_arrival(store: EventStore, event: Event, patient: str, settings: ExplainSettings,
                         recent: Callable[[str], Sequence[Event]]) -> list[Explanation]:
    stored = patient_items(store, patient, event.time, event.time, settings)
    seen = {i.event.id for i in stored} | {event.id}  # an event both stored and recent counts once
    waiting = [Item.of(UNSTORED, e) for e in recent(patient) if e.id not in seen]
    fresh = Item.of(UNSTORED, event)
    items = [i for i in stored if i.event.id != event.id]
    return explain_items([*items, *waiting, fresh], patient, settings, lambda item: item is fresh)


def summary(verdicts: Iterable[Explanation], limit: int | None = None) -> dict[str, Any]:
    """The figures and the list a report shows: unexplained accesses first, then the explained ones
    with their template, each group in time order; with ``limit``, the first ``limit`` of that list
    only, and only they are kept while ``verdicts`` are read (the figures count every one)."""
    by_template: dict[str, int] = {}
    count = 0

    def counted() -> Iterator[Explanation]:
        nonlocal count
        for v in verdicts:
            count += 1
            if v.template is not None:
                by_template[v.template] = by_template.get(v.template, 0) + 1
            yield v

    def order(v: Explanation) -> tuple[bool, float, int]:
        return v.explained, v.item.time, v.seq

    # nsmallest(n, ...) is sorted(...)[:n] holding n items at a time.
    ordered = sorted(counted(), key=order) if limit is None else heapq.nsmallest(limit, counted(), key=order)
    explained = sum(by_template.values())
    return {"accesses": count, "explained": explained,
            "share": round(explained / count, 4) if count else None,
            "by_template": by_template, "templates": template_docs(),
            "list": [v.to_dict() for v in ordered]}
