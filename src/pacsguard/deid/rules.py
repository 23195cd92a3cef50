"""Which rule decides one attribute: its Table E.1-1 row under the chosen options (PS3.15 E.3),
the private-attribute row with the safe list (E.3.10), or the project's rules for attributes the
edition in use does not list (dates and instance UIDs, see ``decide``)."""

from __future__ import annotations

from dataclasses import dataclass

from pacsguard.deid.actions import Effect, effect
from pacsguard.deid.dictionary import known_vr
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
    0x00420010: "X/Z",  # Document Title: Type 2 in the Encapsulated Document Module (PS3.3 C.24.2)
    0x00287FE0: "D",  # Pixel Data Provider URL: Type 1C in the JPIP Referenced Pixel Macro (PS3.3 C.7.6.3)
}

#: X/Z sequences that a storage IOD makes Type 2 (PS3.3), so an empty one (Z) is valid; for every
#: other X/Z sequence the attribute is Type 3 and an empty one is an error (a Type 3 sequence, if
#: present, holds one or more items), so X is the form the IOD permits.
TYPE2_SEQUENCES = frozenset({
    0x00400555,  # Acquisition Context Sequence: Type 2 in the Acquisition Context Module (C.7.6.14)
})

#: Attributes whose UIDs name a class, a transfer syntax or a coding scheme by definition (PS3.3,
#: PS3.5 9.1), registered in PS3.6 Annex A or privately (a vendor's SOP class, a class newer than
#: pydicom's dictionary): they identify no patient, study or device and are kept, because
#: replacing one makes the object unreadable.
CLASS_UIDS = frozenset({
    0x00020002,  # Media Storage SOP Class UID
    0x00020010,  # Transfer Syntax UID
    0x00020012,  # Implementation Class UID
    0x00020032,  # RTV Communication SOP Class UID
    0x00041510,  # Referenced SOP Class UID in File
    0x00041512,  # Referenced Transfer Syntax UID in File
    0x0004151A,  # Referenced Related General SOP Class UID in File
    0x00080016,  # SOP Class UID
    0x0008001A,  # Related General SOP Class UID
    0x0008001B,  # Original Specialized SOP Class UID
    0x00080062,  # SOP Classes in Study
    0x0008010C,  # Coding Scheme UID
    0x00080118,  # Mapping Resource UID
    0x0008040E,  # Stored Instance Transfer Syntax UID
    0x00081150,  # Referenced SOP Class UID
    0x0008115A,  # SOP Classes Supported
    0x00083002,  # Available Transfer Syntax UID
    0x00340003,  # Flow Transfer Syntax UID
    0x04000010,  # MAC Calculation Transfer Syntax UID
    0x04000510,  # Encrypted Content Transfer Syntax UID
    0x3010001F,  # Segmentation Template UID
    0x30100052,  # Pertinent SOP Classes in Study
    0x30100053,  # Pertinent SOP Classes in Series
})

#: Dates whose VR is not DA or DT: the patient's birth and death dates in an alternative calendar
#: (PS3.3 C.7.1.1, LO). They carry what Patient's Birth Date and Patient's Death in Institution
#: carry, so they follow the date rules; a shift cannot be applied to a calendar pacsguard does not
#: compute, so under Retain Longitudinal Modified Dates they are removed.
DATES_AS_TEXT = frozenset({0x00100033, 0x00100034})

#: URIs (VR UR) that name a code system or a code, not a place: kept. Every other URI the edition
#: does not list is removed: Retrieve URL/URI, File Access URI, Storage URL and the like embed the
#: original Study/Series/SOP Instance UIDs, host names and file paths (often the patient's name).
PUBLIC_URIS = frozenset({
    0x0008010E,  # Coding Scheme URL
    0x00080120,  # URN Code Value
})


#: Code values (PS3.3 Table 8.8-1, the Code Sequence Macro): Long Code Value (0008,0119) holds a code
#: of more than 16 characters in place of Code Value (0008,0100), which is kept. Its VR is UC, so the
#: free-text rule below would remove it (leaving a code item with no value at all, invalid) or,
#: under Clean Descriptors, scrub its digits (another code). A code names a concept, not a person.
CODE_VALUES = frozenset({
    0x00080119,  # Long Code Value
})

#: Unlisted attributes that name a person in a VR other than PN: given a dummy, as an unlisted PN is.
PERSON_NAMES = frozenset({
    0x0074100C,  # Contact Display Name: the person to contact about a procedure step (PS3.3 C.30.1)
})

#: Unlisted attributes that identify a patient or a person by a number: removed, as Other Patient IDs
#: and the listed identifiers are. Breed Registration Number (PS3.3 C.7.1.1) is a non-human
#: patient's registration in a studbook or kennel club, as unique as a Patient ID; Owner ID
#: (2100,0160) names the user who owns a print job.
IDENTIFIERS = frozenset({
    0x00102295,  # Breed Registration Number
    0x21000160,  # Owner ID
})

#: Unlisted identifiers of one instance written as text, not UI: HL7 Instance Identifier (0040,E001, ST)
#: is a CDA document's root OID (the issuing site's) and extension, Type 1C in the Encapsulated
#: Document Module (PS3.3 C.24.2) and also in the items of HL7 Structured Document Reference
#: Sequence (0040,A390). Removed as free text, it left an encapsulated CDA invalid: replaced by its
#: keyed UID (a UID alone is the form without an extension), the same wherever it is referenced.
INSTANCE_IDENTIFIERS = frozenset({
    0x0040E001,  # HL7 Instance Identifier
})

#: Encrypted Attributes Sequence (0400,0500, PS3.3 C.12.1.1.4.1): the original values of attributes
#: an earlier de-identifier replaced (its Modified Attributes Sequence), in a CMS envelope for
#: recipients chosen then (PS3.15 E.1.1). Passed on, it gives whoever holds one of those keys the
#: identity this de-identification removes, and pacsguard cannot tell that its content is
#: encrypted at all (a writer can put plain text there): removed, as the plain Original Attributes
#: Sequence (0400,0561) is by the table. pacsguard keeps its own link, sealed under its key.
ENCRYPTED_ORIGINALS = 0x04000500

#: Breed Registration Sequence (0010,2294): each item pairs a registration number with its registry;
#: the number is Type 1 in the item, the sequence Type 2C in the Patient Module (PS3.3 C.7.1.1),
#: so the sequence is emptied (Z) rather than left with items missing their number.
BREED_REGISTRATION_SEQUENCE = 0x00102294

#: Unlisted free text written as LO (comments a user types): treated as free text (removed, or
#: cleaned under Clean Descriptors), as the listed comments and the unlisted LT, ST, UT, UC are.
TEXT_AS_LO = frozenset({
    0x00287007,  # System Status Comment
    0x0028702A,  # Test Result Comment
    0x30040006,  # Dose Comment
    0x300600C8,  # Frame of Reference Transformation Comment
})


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
    if decision.effect is Effect.EMPTY and decision.code == "X/Z" and tag not in TYPE2_SEQUENCES \
            and (vr or known_vr(tag)) == "SQ":
        # X/Z: "X unless Z is required to maintain IOD conformance (Type 2)" (PS3.15 E.1.1).
        return Decision(decision.code, Effect.REMOVE, f"{decision.source}; a Type 3 sequence", decision.row)
    if decision.effect is Effect.CLEAN and _graphics_group(tag):
        # Clean Graphics (PS3.15 E.3.3): pacsguard does not redraw curves and overlays; it removes
        # them (the 60xx group goes whole once its Overlay Data does), the form that leaves none
        # of their text or drawings.
        return Decision(decision.code, Effect.REMOVE, f"{decision.source}; removed, not cleaned", decision.row)
    if decision.effect is Effect.REMOVE and tag in IOD_REQUIRED:
        code = IOD_REQUIRED[tag]
        return Decision(code, effect(code), f"{decision.source}; required by its IOD", decision.row)
    return decision


def _graphics_group(tag: int) -> bool:
    """A curve (50xx) or overlay (60xx) group, even groups only. PS3.5 7.6 numbers the repeating
    groups 5000-501E and 6000-601E; a group past them (6020) is treated as its family is, so an
    element put there is not kept for want of a rule."""
    group = tag >> 16
    return group >> 8 in (0x50, 0x60) and not group & 1


def _overlay_group(tag: int) -> bool:
    """An element of an even 60xx group (see _graphics_group)."""
    group = tag >> 16
    return group >> 8 == 0x60 and not group & 1


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
    if _overlay_group(tag):
        # Any element of an overlay group (60xx) goes with the group: its Overlay Data is X (C under
        # Clean Graphics, which pacsguard does by removing), and a group without it is no overlay.
        return Decision("X", Effect.REMOVE, "not listed: overlay group, goes with its Overlay Data")
    if tag in DATES_AS_TEXT:
        if Option.RETAIN_LONGITUDINAL_FULL_DATES in options:
            return Decision("K", Effect.KEEP, "not listed: date in an alternative calendar, "
                            "retain-longitudinal-full-dates")
        return Decision("X", Effect.REMOVE, "not listed: date in an alternative calendar")
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
    if vr == "PN" or tag in PERSON_NAMES:
        return Decision("D", Effect.DUMMY, "not listed: person name")
    if tag in IDENTIFIERS:
        return Decision("X", Effect.REMOVE, "not listed: identifier of a patient or person")
    if tag == ENCRYPTED_ORIGINALS:
        return Decision("X", Effect.REMOVE, "not listed: original attributes, encrypted for other recipients")
    if tag == BREED_REGISTRATION_SEQUENCE:
        return Decision("Z", Effect.EMPTY, "not listed: registration numbers of the patient (Type 2C)")
    if tag in CODE_VALUES:
        return Decision("K", Effect.KEEP, "not listed: code value")
    if tag in INSTANCE_IDENTIFIERS:
        if Option.RETAIN_UIDS in options:
            return Decision("K", Effect.KEEP, "not listed: instance identifier, retain-uids")
        return Decision("U", Effect.UID, "not listed: instance identifier (required by its IOD)")
    # A URI goes by its VR in the file or in the dictionary: Retrieve URI (0040,E010) was UT before
    # the UR VR existed (PS3.5 2014), and an older Explicit VR file still encodes it so; as free text
    # Clean Descriptors would keep its host name and path.
    if (vr == "UR" or known_vr(tag) == "UR") and tag not in PUBLIC_URIS:
        return Decision("X", Effect.REMOVE, "not listed: URI (may hold original UIDs, hosts, paths)")
    # Free text (E.3.5): removed, or cleaned under Clean Descriptors, as the listed comments are.
    if vr in _FREE_TEXT or tag in TEXT_AS_LO:
        if Option.CLEAN_DESCRIPTORS in options:
            return Decision("C", Effect.CLEAN, "not listed: free text, clean-descriptors")
        return Decision("X", Effect.REMOVE, "not listed: free text")
    if vr == "UI" and tag in CLASS_UIDS:
        return Decision("K", Effect.KEEP, "not listed: class UID")
    if vr == "UI" and not registered_uid:
        if Option.RETAIN_UIDS in options:
            return Decision("K", Effect.KEEP, "not listed: instance UID, retain-uids")
        return Decision("U", Effect.UID, "not listed: instance UID")
    if tag & 0xFFFF == 0:
        # Group Length (gggg,0000): retired in a data set (PS3.5 7.2) and wrong once attributes go.
        return Decision("X", Effect.REMOVE, "not listed: group length (retired, PS3.5 7.2)")
    if known_vr(tag) is None:
        # PS3.15 E.3.1: attributes not listed are removed unless known to identify nobody. What the
        # data dictionary (PS3.6) defines and Table E.1-1 does not list is judged safe by the table
        # itself; an attribute no dictionary knows (a tag of a later edition, a device's own public
        # tag) holds anything: removed.
        return Decision("X", Effect.REMOVE, "not listed, unknown to the data dictionary (E.3.1)")
    return Decision("K", Effect.KEEP, "not listed, in the data dictionary (E.3.1)")
