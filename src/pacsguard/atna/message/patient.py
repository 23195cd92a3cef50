"""Patient identifiers in HL7 v2 CX form (HL7 v2.5 2.A.14): ``ID^CHECK^SCHEME^AUTHORITY&OID&ISO``,
as IHE ITI-20 writes them in ParticipantObjectID. Stored as the bare ID with its assigning
authority, so a search finds the patient with or without the authority."""

from __future__ import annotations

from dataclasses import dataclass

#: FHIR Identifier.system prefixes that name an HL7 v2 universal ID and its type (HL7 v2.5 table
#: 0301); any other system is itself a universal ID of type URI.
_UNIVERSAL_TYPES = (("urn:oid:", "ISO"), ("urn:uuid:", "UUID"))


@dataclass(frozen=True, slots=True)
class PatientId:
    id: str
    authority: str | None = None
    cx: str | None = None

    @classmethod
    def parse(cls, text: str) -> PatientId:
        value = text.strip()
        if "^" not in value:
            return cls(value)
        parts = value.split("^")
        authority = parts[3] if len(parts) > 3 and parts[3] else None
        return cls(parts[0], authority, value)

    @classmethod
    def of_system(cls, system: str, value: str) -> PatientId:
        """The patient a FHIR Identifier (``system``, ``value``) names: ID ``value`` assigned by the
        authority whose universal ID the system is (HL7 v2.5 2.A.33 HD: ``&UNIVERSAL-ID&TYPE``):
        ``urn:oid:1.2.3`` is ``&1.2.3&ISO``, the same patient as CX ``value^^^NS&1.2.3&ISO``."""
        universal, kind = next(((system[len(p):], t) for p, t in _UNIVERSAL_TYPES if system.startswith(p)),
                               (system, "URI"))
        return cls(value, f"&{universal}&{kind}")

    def key(self) -> str:
        """The most specific of `search_keys`: what finds this patient and no other."""
        if self.cx is not None:
            return self.cx
        return f"{self.id}^^^{self.authority}" if self.authority is not None else self.id

    def search_keys(self) -> tuple[str, ...]:
        """What the store indexes: the bare ID first (the event is placed by it), then the CX form
        and ID^^^AUTHORITY, then the authority by each of its HD parts (HL7 v2.5 2.A.33: namespace
        ID, universal ID and its type), ID^^^NAMESPACE and ID^^^&OID&ISO, the spellings other
        systems (PIX, XDS) use for the same patient; so any of them finds the event."""
        keys = [self.id]
        if self.authority is not None:
            keys.append(f"{self.id}^^^{self.authority}")
        if self.cx is not None:
            keys.append(self.cx)
        if self.authority is not None and "&" in self.authority:
            namespace, _, universal = self.authority.partition("&")
            if namespace:
                keys.append(f"{self.id}^^^{namespace}")
            if universal.strip("&"):
                keys.append(f"{self.id}^^^&{universal}")
        return tuple(dict.fromkeys(k for k in keys if k))

    def to_dict(self) -> dict[str, str]:
        out = {"id": self.id}
        if self.authority is not None:
            out["authority"] = self.authority
        if self.cx is not None:
            out["cx"] = self.cx
        return out
