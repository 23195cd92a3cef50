"""Observations: the protocol-neutral records the detection rules match on.

A sensor (the inline gateway or the passive capture reader) feeds protocol events to the
:class:`~pacsguard.ids.engine.Engine`; the engine turns each one into at most one
:class:`Observation` of a named *kind* (``association-request``, ``dimse-request``, ...), whose
fields are plain values (str, int, float, bool, list of str).  Rules name a kind in ``on:`` and
fields in ``match:`` / ``threshold:``; both are checked against :data:`KINDS` when the rule is
loaded, so a typo is an error and never a rule that silently matches nothing.

Fields of the TCP connection (``client_host`` ... ``flow_id``) exist in every kind; they are read
from the :class:`Flow` itself rather than copied into each observation.

A protocol joins by registering its kinds with :func:`register_kinds` from its adapter package
(DICOM's in :mod:`pacsguard.ids.dicom.kinds`); :mod:`pacsguard.ids.protocols` lists the adapters
whose kinds are loaded.  docs/ids.md documents every field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal

FieldType = Literal["str", "int", "float", "bool", "ip", "str-list"]


@dataclass(slots=True)
class Flow:
    """One TCP connection as the sensor sees it (client = the side that connected)."""

    client_host: str
    client_port: int
    server_host: str
    server_port: int
    tls: bool = False
    route: str | None = None
    sensor: str = "passive"  # or "inline"
    id: str = ""  # the sensor's connection id
    #: the DICOM acceptor's host when it is not ``server_host`` (inline: the route's upstream, behind
    #: the gateway): a C-MOVE's sub-associations come from there (PS3.4 C.4.2.2)
    acceptor_host: str | None = None
    #: the outer and inner VLAN ids of the connection's frames when they are part of its identity
    #: (passive, IEEE 802.1Q 9.6 / 802.1ad; the sensor leaves it empty with ``ids.vlan_tracking:
    #: false``), () untagged and inline: the same addresses on two VLANs are two hosts
    vlan: tuple[int, ...] = ()

    def key(self) -> object:
        """Identity of the connection for per-flow state: the sensor's id, else the 4-tuple (and
        the VLAN ids, when tagged)."""
        return self.id or (self.client_host, self.client_port, self.server_host, self.server_port, *self.vlan)


#: Fields every observation has, read from its Flow: field name -> (Flow attribute, type).
FLOW_FIELDS: Final[Mapping[str, tuple[str, FieldType]]] = MappingProxyType(
    {
        "client_host": ("client_host", "ip"),
        "client_port": ("client_port", "int"),
        "server_host": ("server_host", "ip"),
        "server_port": ("server_port", "int"),
        "tls": ("tls", "bool"),
        "route": ("route", "str"),
        "sensor": ("sensor", "str"),
        "flow_id": ("id", "str"),
    }
)


@dataclass(slots=True)
class Observation:
    """One thing a sensor saw, as rules see it.  ``fields`` holds the kind's own fields only."""

    protocol: str
    kind: str
    fields: dict[str, Any]
    flow: Flow

    def get(self, name: str) -> Any:
        attr = FLOW_FIELDS.get(name)
        if attr is not None:
            return getattr(self.flow, attr[0])
        return self.fields.get(name)

    def as_dict(self) -> dict[str, Any]:
        """Every field with a value (flow fields included), for alert details and `rules test`."""
        out: dict[str, Any] = {name: getattr(self.flow, attr) for name, (attr, _t) in FLOW_FIELDS.items()}
        out.update(self.fields)
        return {k: v for k, v in out.items() if v is not None and v != ""}


@dataclass(frozen=True, slots=True)
class KindSpec:
    """The fields of one observation kind (flow fields not included) and what produces it."""

    protocol: str
    kind: str
    fields: Mapping[str, FieldType]
    doc: str = ""
    field_docs: Mapping[str, str] = field(default_factory=dict)
    roles: Roles = field(default_factory=lambda: Roles())

    def field_type(self, name: str) -> FieldType | None:
        if name in FLOW_FIELDS:
            return FLOW_FIELDS[name][1]
        return self.fields.get(name)

    def all_fields(self) -> list[str]:
        return [*FLOW_FIELDS, *self.fields]


@dataclass(frozen=True, slots=True)
class Roles:
    """Which of a kind's fields name the parties and the patient data, for the alert's Event:
    ``actor`` and ``target`` the client's and server's application names (DICOM AE titles),
    ``patient`` and ``study`` the patient ID and study UID.  None: the kind has no such field."""

    actor: str | None = None
    target: str | None = None
    patient: str | None = None
    study: str | None = None


#: protocol -> kind -> spec.  Filled by :func:`register_kinds`.
KINDS: dict[str, dict[str, KindSpec]] = {}


def register_kinds(protocol: str, kinds: Mapping[str, tuple[str, Mapping[str, tuple[FieldType, str]]]],
                   roles: Roles | None = None) -> None:
    """Register a protocol's observation kinds: ``{kind: (doc, {field: (type, doc)})}``.

    ``roles`` names the fields that identify the parties and the patient (:class:`Roles`); each
    kind keeps the roles whose field it has.
    """
    table = KINDS.setdefault(protocol, {})
    wanted = roles if roles is not None else Roles()
    for kind, (doc, fields) in kinds.items():
        table[kind] = KindSpec(
            protocol,
            kind,
            MappingProxyType({name: t for name, (t, _d) in fields.items()}),
            doc,
            MappingProxyType({name: d for name, (_t, d) in fields.items()}),
            Roles(*(name if name in fields else None
                    for name in (wanted.actor, wanted.target, wanted.patient, wanted.study))),
        )
