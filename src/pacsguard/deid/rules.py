"""Which rule decides one attribute: its Table E.1-1 row under the chosen options (PS3.15 E.3),
the private-attribute row with the safe list (E.3.10), or the project's rules for attributes the
edition in use does not list (dates and instance UIDs, see ``decide``)."""

from __future__ import annotations

from dataclasses import dataclass

from pacsguard.deid.actions import Effect, effect
from pacsguard.deid.profile import Option, Row, Table

#: When two chosen options both name an action for a row, the more protective one wins.
_PROTECTIVE = ("X", "Z", "D", "X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*", "C", "U", "K")

_DATES = frozenset({"DA", "DT", "TM"})
_FREE_TEXT = frozenset({"LT", "ST", "UT", "UC"})

#: Attributes an IOD requires that an X (of the table, or of the rules for unlisted attributes) would
#: remove, making the object invalid: emptied or given a dummy instead, as Table E.1-1 since 2024
#: says for the listed ones; Text Value is still unlisted in 2026c.
IOD_REQUIRED = {
    0x300A00B2: "X/Z",  # Treatment Machine Name: Type 2 in the RT Beams Module (PS3.3 C.8.8.14)
    0x0040A030: "D",  # Verification DateTime: Type 1C in the SR Document General Module (PS3.3 C.17.2)
    0x0040A120: "D",  # DateTime, Date, Time: Type 1C in the Document Content Macro (PS3.3 C.17.3)
    0x0040A121: "D",
    0x0040A122: "D",
    0x0040A160: "D",  # Text Value: Type 1C in the Document Content Macro (PS3.3 C.17.3)
    0x00700006: "D",  # Unformatted Text Value: Type 1C in the Waveform Annotation Module (PS3.3 C.10.10)
}


@dataclass(frozen=True, slots=True)
class Decision:
    code: str  # the action code that applies (Table E.1-1 legend), or "K" for attributes kept unlisted
    effect: Effect
    source: str  # what decided: "E.1-1 basic", "E.1-1 retain-uids", "private: safe list", "not listed", ...
    row: Row | None = None


def row_action(row: Row, options: frozenset[Option]) -> tuple[str, str]:
    """The action code a row gives under ``options`` and the column it came from."""
    chosen = [(a, o.value) for o in options if o.column and (a := row.action(o.column)) is not None]
    if not chosen:
        return row.basic, "basic"
    chosen.sort(key=lambda c: (_PROTECTIVE.index(c[0]) if c[0] in _PROTECTIVE else 0, c[1]))
    return chosen[0]


def decide(table: Table, tag: int, vr: str, options: frozenset[Option], *,
           safe_private: bool = False, registered_uid: bool = False) -> Decision:
    """The decision for one attribute; an attribute an IOD requires is never removed (IOD_REQUIRED)."""
    decision = _decide(table, tag, vr, options, safe_private=safe_private, registered_uid=registered_uid)
    if decision.effect is Effect.REMOVE and tag in IOD_REQUIRED:
        code = IOD_REQUIRED[tag]
        return Decision(code, effect(code), f"{decision.source}; required by its IOD", decision.row)
    return decision


def _decide(table: Table, tag: int, vr: str, options: frozenset[Option], *,
            safe_private: bool, registered_uid: bool) -> Decision:
    """The decision for one attribute before IOD requirements. ``safe_private``: a private attribute
    on the configured safe list; ``registered_uid``: a UI value that PS3.6 Annex A registers (a class,
    not an instance)."""
    row = table.find(tag)
    if row is not None and row.private:
        if safe_private and Option.RETAIN_SAFE_PRIVATE in options:
            return Decision("C", Effect.KEEP, "E.1-1 retain-safe-private: on the safe list", row)
        return Decision(row.basic, effect(row.basic), "E.1-1 private attributes", row)
    if row is not None:
        code, column = row_action(row, options)
        return Decision(code, effect(code), f"E.1-1 {row.tag} {column}", row)
    # Attributes the edition does not list (PS3.15 E.1.1 asks for every attribute that can identify
    # to be handled; each edition lists more of them). Dates and times carry the same information as the
    # listed ones (E.3.6 treats all of them alike), so they follow the date options and are otherwise
    # removed, or given a dummy where an IOD requires them (IOD_REQUIRED); instance UIDs link back
    # like the listed ones, so they are replaced (U) unless Retain UIDs is chosen.
    if vr in _DATES:
        if Option.RETAIN_LONGITUDINAL_FULL_DATES in options:
            return Decision("K", Effect.KEEP, "not listed: date/time, retain-longitudinal-full-dates")
        if Option.RETAIN_LONGITUDINAL_MODIFIED_DATES in options:
            return Decision("C", Effect.CLEAN, "not listed: date/time, retain-longitudinal-modified-dates")
        return Decision("X", Effect.REMOVE, "not listed: date/time")
    # AE titles name devices and sites and person names name people: treated as the edition treats
    # the listed ones (AE titles removed, or keyed under Retain Device Identity; names a dummy).
    if vr == "AE":
        if Option.RETAIN_DEVICE_IDENTITY in options:
            return Decision("C", Effect.CLEAN, "not listed: AE title, retain-device-identity")
        return Decision("X", Effect.REMOVE, "not listed: AE title")
    if vr == "PN":
        return Decision("D", Effect.DUMMY, "not listed: person name")
    # Free text (E.3.5): removed, or cleaned under Clean Descriptors, as the listed comments are.
    if vr in _FREE_TEXT:
        if Option.CLEAN_DESCRIPTORS in options:
            return Decision("C", Effect.CLEAN, "not listed: free text, clean-descriptors")
        return Decision("X", Effect.REMOVE, "not listed: free text")
    if vr == "UI" and not registered_uid:
        if Option.RETAIN_UIDS in options:
            return Decision("K", Effect.KEEP, "not listed: instance UID, retain-uids")
        return Decision("U", Effect.UID, "not listed: instance UID")
    return Decision("K", Effect.KEEP, "not listed")
