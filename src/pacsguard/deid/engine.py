"""The de-identification engine: PS3.15 Annex E (E.1 Basic Application Level Confidentiality
Profile, E.3 options) applied to a pydicom data set, recursively through every sequence item
(nested and empty items too), with the file meta information kept consistent (PS3.10 7.1:
Media Storage SOP Instance UID equals the new SOP Instance UID) and the attributes of E.1.1
and E.3 that record what was done: Patient Identity Removed (0012,0062), De-identification
Method (0012,0063), De-identification Method Code Sequence (0012,0064) with CID 7050 codes,
Longitudinal Temporal Information Modified (0028,0303)."""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pydicom import config
from pydicom._uid_dict import UID_dictionary
from pydicom.datadict import dictionary_description
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

from pacsguard.deid import charset
from pacsguard.deid.actions import Effect
from pacsguard.deid.dictionary import NEWER_VRS, known_vr
from pacsguard.deid.encode import stored_elements
from pacsguard.deid.profile import BASIC_PROFILE_CODE, EXCLUSIVE, Option, Table, table
from pacsguard.deid.pseudonym import Pseudonyms, patient_key, shift_da, shift_dt
from pacsguard.deid.rules import Decision, decide
from pacsguard.deid.values import clean_text, dummy, dummy_document, empty, identifiers_of, is_text
from pacsguard.dicom.uids import PACSGUARD_IMPLEMENTATION_CLASS_UID, PACSGUARD_IMPLEMENTATION_VERSION_NAME

PATIENT_ID = 0x00100020
PATIENT_NAME = 0x00100010
SOP_INSTANCE_UID = 0x00080018
SOP_CLASS_UID = 0x00080016
#: What the route's Event links, original to new (keyword, tag).
_IDENTITIES = (("StudyInstanceUID", 0x0020000D), ("SeriesInstanceUID", 0x0020000E),
               ("SOPInstanceUID", SOP_INSTANCE_UID), ("PatientID", PATIENT_ID))
OVERLAY_DATA = 0x3000
#: File meta attributes (PS3.10 7.1) an output keeps from its input: File Meta Information
#: Version (0002,0001) and Transfer Syntax UID (0002,0010), which describe the encoding. The meta
#: is otherwise written by pacsguard itself: Media Storage SOP Class and Instance UIDs (0002,0002,
#: 0002,0003) from the de-identified data set, Implementation Class UID and Version Name (0002,0012,
#: 0002,0013) its own. Everything else goes, whatever its tag: AE titles and presentation
#: addresses (0002,0016-0028), the RTV elements (0002,0031-0035: a Communication SOP Instance UID
#: that is the original instance UID, a Source Identifier that names the device), private
#: information (0002,0100, 0002,0102), and any element a later edition adds.
_META_KEPT = frozenset({0x00020001, 0x00020010})
#: The Item tag (FFFE,E000) as implicit VR little endian bytes: how a sequence encoded as UN
#: begins (PS3.5 6.2.2: its value is the sequence in Implicit VR Little Endian).
_ITEM_LE = b"\xfe\xff\x00\xe0"
#: Groups that have no place in a stored data set, with what explain says of an element of one.
_NOT_IN_A_DATA_SET = {
    0x0000: "group 0000 (a DIMSE command) inside a data set (PS3.7 6.3)",
    0x0002: "group 0002 outside the file meta (PS3.10 7.1)",
}
ENCAPSULATED_DOCUMENT = 0x00420011
ENCAPSULATED_DOCUMENT_LENGTH = 0x00420015
ENCAPSULATED_DOCUMENT_MIME_TYPE = 0x00420012


_FRESH = (Effect.EMPTY, Effect.DUMMY)
#: Effects that give a UID attribute its keyed replacement (see Engine._apply).
_NEW_UIDS = (Effect.UID, Effect.DUMMY, Effect.CLEAN, Effect.ITEMS)


class Withheld(Exception):
    """The object cannot be de-identified safely; nothing of it may be written or forwarded."""


@dataclass(frozen=True, slots=True)
class SafePrivate:
    """One private attribute the Retain Safe Private Option (PS3.15 E.3.10) keeps: its private
    creator, group and element byte (the xx of (gggg,00xx)-reserved blocks, PS3.5 7.8.1)."""

    creator: str
    group: int
    element: int


@dataclass(frozen=True, slots=True)
class Settings:
    options: frozenset[Option] = frozenset()
    safe_private: frozenset[SafePrivate] = frozenset()

    def __post_init__(self) -> None:
        if Option.CLEAN_RECOGNIZABLE_VISUAL_FEATURES in self.options:
            # Its code in (0012,0064) would tell the recipient that faces are gone: pacsguard finds none.
            raise ValueError("clean-recognizable-visual-features is not offered: pacsguard does not detect faces")
        for exclusive in EXCLUSIVE:
            if len(exclusive & self.options) > 1:
                names = " and ".join(sorted(o.value for o in exclusive))
                raise ValueError(f"options {names} cannot be chosen together (PS3.15 E.3.6)")


@dataclass(frozen=True, slots=True)
class Change:
    """What happened to one attribute: ``path`` names it inside sequences, e.g.
    ``(0008,1140)[0].(0008,1155)``."""

    path: str
    name: str
    vr: str
    code: str
    effect: Effect
    source: str


@dataclass(slots=True)
class Report:
    """What was done to one object. ``changes`` (one per attribute) only when ``detailed``, as
    ``explain`` needs; ``tally`` counts attributes per effect always (the manifest's columns)."""

    detailed: bool = False
    changes: list[Change] = field(default_factory=list)
    tally: dict[Effect, int] = field(default_factory=dict)
    pixels: str = "none"  # none | not checked | clean | masked N
    identities: dict[str, tuple[str, str]] = field(default_factory=dict)  # attribute -> (original, new)

    def counts(self) -> dict[str, int]:
        return {e.value: n for e, n in self.tally.items()}


#: Checks and cleans the pixels of one data set under Clean Pixel Data (pixels.py); returns
#: what the report says about them, or raises Withheld.
PixelCleaner = Callable[[Dataset], str]


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class Engine:
    """De-identifies data sets under one Settings and one key (Pseudonyms)."""

    def __init__(self, settings: Settings, pseudonyms: Pseudonyms, profile: Table | None = None,
                 pixel_cleaner: PixelCleaner | None = None) -> None:
        self.settings = settings
        self.pseudonyms = pseudonyms
        self.table = profile or table()
        self.pixel_cleaner = pixel_cleaner
        self._decisions: dict[tuple[int, str, bool, bool], Decision] = {}
        # A listed attribute (its own Table E.1-1 row) decides by its tag alone, whatever its VR or
        # value: decided once per engine, before any object, so most attributes cost one lookup.
        self._listed: dict[int, Decision] = {
            tag: decide(self.table, tag, "", settings.options) for tag in self.table.exact}
        self._safe_private_chosen = Option.RETAIN_SAFE_PRIVATE in settings.options
        # Whether any text is cleaned (C on a text attribute, PS3.15 E.3.5) rather than removed: only
        # then are the names of everyone the object holds gathered for clean_text (a pass of its own).
        self._cleans_text = Option.CLEAN_DESCRIPTORS in settings.options or any(
            d.effect is Effect.CLEAN and known_vr(tag) in _CLEANED_TEXT for tag, d in self._listed.items())

    # -- the whole object ---------------------------------------------------------------------

    def deidentify(self, ds: Dataset, report: Report | None = None) -> Report:
        """De-identify ``ds`` in place (and its ``file_meta``); raise Withheld when it cannot be
        done safely. The caller writes ds only when this returns."""
        from pacsguard.deid.pixels import pixel_verdict

        report = report or Report()
        options = self.settings.options
        verdict = pixel_verdict(ds, Option.CLEAN_PIXEL_DATA in options)
        if verdict.withhold:
            raise Withheld(verdict.reason)
        if verdict.check:
            if self.pixel_cleaner is None:
                raise Withheld("the pixels must be checked for burned-in text and no checker is configured")
            report.pixels = self.pixel_cleaner(ds)
        else:
            report.pixels = verdict.reason
        for keyword, tag in _IDENTITIES:
            if tag in ds:
                report.identities[keyword] = (_identity(ds, tag), "")
        self.apply_attributes(ds, report)
        self._record_method(ds, verdict.clean_known or report.pixels.startswith(("clean", "masked")))
        for keyword, tag in _IDENTITIES:
            if keyword in report.identities:
                report.identities[keyword] = (report.identities[keyword][0], _identity(ds, tag))
        self._file_meta(ds)
        return report

    def apply_attributes(self, ds: Dataset, report: Report) -> None:
        """Table E.1-1 over every attribute of ``ds`` and its sequences (no pixels, no method
        attributes): what ``pacsguard deid explain`` shows, on a copy."""
        original_id = str(ds.get("PatientID", "") or "")
        original_name = str(ds.get("PatientName", "") or "")
        people: set[str] = set()
        if self._cleans_text:
            _people_named(ds, people)
        # Without a Patient ID the offset and name key come from a substitute (patient_key).
        key = patient_key(original_id, original_name, str(ds.get("PatientBirthDate", "") or ""),
                          str(ds.get("StudyInstanceUID", "") or ds.get("SOPInstanceUID", "") or ""))
        self._walk(ds, self._patient_context(original_id, original_name, frozenset(people), key), "", report)
        _document_length(ds)

    def _patient_context(self, patient_id: str, name: str, known: frozenset[str], key: str = "") -> _Context:
        """The pseudonym key and date offset of one patient, keyed by the original Patient ID (the
        offset of E.3.6 kept per patient) or ``key`` when given, and the identifiers free text is
        cleaned of: this patient's and those ``known`` from the enclosing patient."""
        key = key or patient_id
        return _Context(shift=self.pseudonyms.day_shift(key), patient_id=patient_id, key=key,
                        identifiers=known | identifiers_of(patient_id, name))

    def _item_context(self, item: Dataset, ctx: _Context) -> _Context:
        """The patient a sequence item speaks of. An item with a Patient ID of its own names that
        patient, who may be another one than the object's: an item of Group of Patients
        Identification Sequence (0010,0027) or Source Patient Group Identification Sequence
        (0010,0026) of the Patient Module (PS3.3 C.7.1.1). Its Patient ID, Patient's Name and dates
        then get that patient's own pseudonyms and offset, the ones that patient's own objects get,
        so that distinct patients stay distinct and each stays linkable across files. An item
        without one (or with the enclosing patient's) belongs to the enclosing patient."""
        if PATIENT_ID not in item:
            return ctx
        own_id = str(item[PATIENT_ID].value or "")
        if not own_id or own_id == ctx.patient_id:
            return ctx
        own_name = str(item[PATIENT_NAME].value or "") if PATIENT_NAME in item else ""
        # Text in the item may name either patient: it is cleaned of both.
        return self._patient_context(own_id, own_name, ctx.identifiers)

    def _file_meta(self, ds: Dataset) -> None:
        """Rebuild the File Meta Information (PS3.10 7.1) from an allow-list (_META_KEPT) and what
        pacsguard writes itself, so that no meta element of the input passes unchecked."""
        if getattr(ds, "preamble", None) is not None:
            # The 128-byte File Preamble heads the meta (PS3.10 7.1) and is free for an application's
            # use: a DICOM-TIFF file keeps a TIFF header there, a device may keep the patient's name.
            # pacsguard uses none of it, so it writes what PS3.10 asks then: 128 bytes of 00H.
            ds.preamble = bytes(128)
        meta: FileMetaDataset | None = getattr(ds, "file_meta", None)
        if meta is None:
            return
        for dropped in [t for t in meta.keys() if int(t) not in _META_KEPT]:
            del meta[dropped]
        # PS3.10 7.1: the meta names the instance the file holds, under its new UIDs.
        for meta_tag, tag in ((0x00020003, SOP_INSTANCE_UID), (0x00020002, SOP_CLASS_UID)):
            if tag in ds:
                meta[meta_tag] = DataElement(meta_tag, "UI", _text_of(ds, tag), validation_mode=config.IGNORE)
        # The writer of the file is pacsguard, not the source device (whose name would stay).
        meta[0x00020012] = DataElement(0x00020012, "UI", PACSGUARD_IMPLEMENTATION_CLASS_UID)
        meta[0x00020013] = DataElement(0x00020013, "SH", PACSGUARD_IMPLEMENTATION_VERSION_NAME)

    def _record_method(self, ds: Dataset, pixels_clean: bool) -> None:
        options = self.settings.options
        # E.1.1: YES only when nothing identifying is left, burned-in text included.
        _put(ds, 0x00120062, "CS", "YES" if pixels_clean else "NO")  # Patient Identity Removed
        codes = [BASIC_PROFILE_CODE, *sorted(o.code for o in options)]
        _put(ds, 0x00120063, "LO", [f"PS3.15 {self.table.edition} Table E.1-1", *(m for _, m in codes)])
        items = []
        for value, meaning in codes:
            item = Dataset()
            _put(item, 0x00080100, "SH", value)  # Code Value
            _put(item, 0x00080102, "SH", "DCM")  # Coding Scheme Designator
            _put(item, 0x00080104, "LO", meaning)  # Code Meaning
            items.append(item)
        _put(ds, 0x00120064, "SQ", Sequence(items))  # De-identification Method Code Sequence
        if Option.RETAIN_LONGITUDINAL_FULL_DATES in options:
            temporal = "UNMODIFIED"
        elif Option.RETAIN_LONGITUDINAL_MODIFIED_DATES in options:
            temporal = "MODIFIED"
        else:
            temporal = "REMOVED"
        _put(ds, 0x00280303, "CS", temporal)  # Longitudinal Temporal Information Modified

    # -- attribute by attribute ---------------------------------------------------------------

    def decision(self, ds: Dataset, tag: BaseTag, vr: str, value: Any) -> Decision:
        """The decision for the attribute ``tag`` of ``ds``, read from its value as it is (still
        bytes, or decoded) where one is needed (a UID's registration, a private creator)."""
        listed = self._listed.get(int(tag))
        if listed is not None:
            return listed
        safe = False
        if self._safe_private_chosen and tag.is_private and not tag.is_private_creator:
            safe = self._is_safe_private(ds, tag)
        registered = vr == "UI" and _all_registered(_strings(value))
        key = (int(tag), vr, safe, registered)
        found = self._decisions.get(key)
        if found is None:
            # The same attribute decides the same way every time under one Settings: decided once.
            found = decide(self.table, int(tag), vr, self.settings.options, safe_private=safe,
                           registered_uid=registered)
            self._decisions[key] = found
        return found

    def _is_safe_private(self, ds: Dataset, tag: BaseTag) -> bool:
        creator_elem = ds.get_item(Tag(tag.group, tag.element >> 8))
        if creator_elem is None:
            return False
        creator = next(iter(_strings(creator_elem.value)), "").strip()
        return SafePrivate(creator, tag.group, tag.element & 0xFF) in self.settings.safe_private

    def _walk(self, ds: Dataset, ctx: _Context, prefix: str, report: Report,
              inherited: list[str] | None = None) -> None:
        # The Specific Character Set in force here, for a sequence encoded as UN parsed below.
        terms = charset.terms_in(ds, inherited)
        kept_private_blocks: set[tuple[int, int]] = set()
        creators: list[BaseTag] = []
        removed_overlays: set[int] = set()
        listed = self._listed
        # Each element as stored (still undecoded where pydicom has not been asked for its value),
        # so looking at one does not decode it.
        for raw in stored_elements(ds):
            tag = raw.tag
            number = int(tag)  # plain int for lookups: pydicom's tag type compares in Python
            group, element = number >> 16, number & 0xFFFF
            if group in _NOT_IN_A_DATA_SET:
                # Group 0002 belongs in the file meta only (PS3.10 7.1), which _file_meta handles;
                # group 0000 is a DIMSE Command Set (PS3.7 6.3, E.1), part of a message, never of
                # a stored object (pydicom refuses to write one into a file). One inside the data set
                # or an item is malformed and may hold anything (an original SOP Instance UID, an AE
                # title, an Error Comment naming the patient): removed, never passed on unchecked.
                self._misplaced_meta(ds, tag, prefix, report)
                continue
            if group & 1 and 0x0010 <= element <= 0x00FF:
                creators.append(tag)  # a private creator (PS3.5 7.8.1): kept with a block it reserves
                continue
            path = f"{prefix}{_tag_text(number)}" if report.detailed else ""
            vr = _vr(tag, raw)
            if raw.VR is None and number in NEWER_VRS and isinstance(raw, RawDataElement):
                # Implicit VR: pydicom would read it as UN bytes; read with its own VR instead, so that
                # it is cleaned or walked like any other.
                raw = raw._replace(VR=vr)
                ds[tag] = raw
            decision = listed.get(number) or self.decision(ds, tag, vr, raw.value)
            if raw.VR == "UN" and number in NEWER_VRS and decision.effect is not Effect.REMOVE \
                    and isinstance(raw, RawDataElement):
                # Explicit VR, written as UN by a writer whose dictionary lacks it (pydicom 3.0.2's
                # does, for every NEWER_VRS attribute): pydicom keeps such a value as bytes, so an
                # option that keeps the attribute would pass its items or text unchecked.
                converted = _newer_as_own_vr(ds, tag, raw, vr, terms)
                if converted is None:
                    decision = Decision("X", Effect.REMOVE, "VR UN that does not parse as the sequence its "
                                        "dictionary VR says (PS3.5 6.2.2)", decision.row)
                else:
                    raw = converted
            report.tally[decision.effect] = report.tally.get(decision.effect, 0) + 1
            if report.detailed:
                report.changes.append(Change(path, decision.row.name if decision.row else _name(tag), vr,
                                             decision.code, decision.effect, decision.source))
            if decision.effect is Effect.KEEP and vr == "UN" and group & 1:
                # A safe private attribute read without its VR (implicit VR, or UN): when it is a
                # sequence its items must be de-identified like any other sequence's.
                vr = self._private_as_sequence(ds, tag, raw.value, terms)
                if vr == "":
                    del ds[tag]
                    continue
            # Kept and removed values are never decoded: pydicom writes an undecoded value back as it was read.
            if decision.effect is Effect.KEEP and vr != "SQ":
                kept = True
            elif decision.effect is Effect.REMOVE:
                del ds[tag]
                kept = False
            elif decision.effect in _FRESH and vr not in ("SQ", "UI") and number not in (PATIENT_ID, PATIENT_NAME):
                # Z and D need nothing of the old value: a new element, the old one never decoded;
                # the project's own dummies are valid for their VR, so pydicom need not check them.
                ds[tag] = DataElement(tag, vr, empty(vr) if decision.effect is Effect.EMPTY else dummy(vr),
                                      validation_mode=config.IGNORE)
                kept = True
            elif vr == "UI" and isinstance(raw, RawDataElement) and decision.effect in _NEW_UIDS:
                # A UID is ASCII whatever the character set (PS3.5 9.1): mapped from the bytes as read,
                # never decoded into pydicom's UID objects.
                ds[tag] = DataElement(tag, vr, _map_raw_uids(raw.value, self.pseudonyms.uid),
                                      validation_mode=config.IGNORE)
                kept = True
            else:
                kept = self._apply(ds, ds[tag], decision, ctx, path, report, terms)
            if kept and group & 1:
                kept_private_blocks.add((group, element >> 8))
            if not kept and group >> 8 == 0x60 and not group & 1 and element == OVERLAY_DATA:
                removed_overlays.add(group)
        for tag in creators:
            if (tag.group, tag.element) not in kept_private_blocks:
                del ds[tag]
        # An overlay plane without its data is not an overlay (PS3.3 C.9.2): the group goes with it.
        for group in removed_overlays:
            for tag in [t for t in ds.keys() if t.group == group]:
                del ds[tag]

    @staticmethod
    def _misplaced_meta(ds: Dataset, tag: BaseTag, prefix: str, report: Report) -> None:
        del ds[tag]
        report.tally[Effect.REMOVE] = report.tally.get(Effect.REMOVE, 0) + 1
        if report.detailed:
            report.changes.append(Change(f"{prefix}{_tag_text(int(tag))}", _name(tag), "", "X", Effect.REMOVE,
                                         _NOT_IN_A_DATA_SET[tag.group]))

    @staticmethod
    def _private_as_sequence(ds: Dataset, tag: BaseTag, value: Any, terms: list[str] | None) -> str:
        """The VR to treat a kept private UN attribute with: "SQ" when its value is a sequence
        (then ``ds[tag]`` is replaced by the parsed sequence), "UN" when it is not one, "" when it
        looks like one but cannot be parsed (it must then go: its content cannot be checked)."""
        if not isinstance(value, bytes) or not value.startswith(_ITEM_LE):
            return "UN"
        items = _parse_un_sequence(value, getattr(ds, "_character_set", None) or ["iso8859"], terms, tag)
        if items is None:
            return ""
        ds[tag] = DataElement(tag, "SQ", items)
        return "SQ"

    def _apply(self, ds: Dataset, elem: DataElement, decision: Decision, ctx: _Context, path: str,
               report: Report, terms: list[str] | None = None) -> bool:
        """Carry out one decision; return whether the attribute is still there."""
        effect, vr, tag = decision.effect, elem.VR, int(elem.tag)
        if effect is Effect.REMOVE:
            del ds[elem.tag]
            return False
        if vr == "SQ":
            if effect is Effect.EMPTY:
                elem.value = Sequence()
                return True
            # D, K, C, U and X/Z/U* on a sequence: keep it, de-identify every item by the same rules.
            for i, item in enumerate(elem.value or ()):
                self._walk(item, self._item_context(item, ctx), f"{path}[{i}].", report, terms)
            return True
        if effect is Effect.KEEP:
            return True
        if effect is Effect.EMPTY and tag not in (PATIENT_ID, PATIENT_NAME):
            elem.value = empty(vr)
            return True
        if effect is Effect.UID or (vr == "UI" and effect in (Effect.DUMMY, Effect.CLEAN, Effect.ITEMS)):
            elem.value = _map_values(elem.value, self.pseudonyms.uid)
            return True
        if tag == PATIENT_ID:
            # Keyed by its own value wherever it is (a sequence item may name another patient): the
            # same original ID gets the same pseudonym in every object. At the top level this is
            # the ID the context was made from, so the patient's pseudonym is what it always was.
            own_id = str(elem.value or "")
            elem.value = self.pseudonyms.patient_id(own_id) if own_id else dummy(vr)
            return True
        if tag == PATIENT_NAME:
            # Keyed under the patient whose item holds it (see _item_context).
            elem.value = self.pseudonyms.patient_name(ctx.key, str(elem.value or ""))
            return True
        if effect is Effect.CLEAN:
            elem.value = self._clean(elem, ctx)
            return True
        elem.value = dummy(vr)  # D (and Z/D, X/D, X/Z/D)
        return True

    def _clean(self, elem: DataElement, ctx: _Context) -> Any:
        vr = elem.VR
        if vr == "DA":
            return _map_values(elem.value, lambda v: shift_da(v, ctx.shift) or dummy("DA"))
        if vr == "DT":
            return _map_values(elem.value, lambda v: shift_dt(v, ctx.shift) or dummy("DT"))
        if vr == "TM":
            return elem.value  # the shift is whole days: the time of day carries no date
        if vr == "AE":
            return self.pseudonyms.text("ae", str(elem.value or ""))
        if vr == "PN":
            return _map_values(elem.value, lambda v: "ANON^" + self.pseudonyms.text("pn", v, 12))
        if is_text(vr):
            return _map_values(elem.value, lambda v: clean_text(v, ctx.identifiers))
        return dummy(vr)


@dataclass(frozen=True, slots=True)
class _Context:
    """The patient the attributes being walked belong to: the object's, or the one a sequence
    item names (Engine._item_context); ``patient_id`` is the original, unmapped ID."""

    shift: timedelta
    patient_id: str
    identifiers: frozenset[str]
    #: What the name pseudonym and ``shift`` are keyed by: ``patient_id``, or a substitute for an
    #: object without one (pseudonym.patient_key).
    key: str = ""


#: VRs whose C is clean_text (E.3.5 descriptors and comments).
_CLEANED_TEXT = frozenset({"CS", "LO", "SH", "LT", "ST", "UT", "UC"})
#: Identifiers of a patient that are not person names: Patient ID and Other Patient IDs (PS3.3 C.7.1.1).
_PATIENT_IDS = frozenset({PATIENT_ID, 0x00101000})


def _people_named(ds: Dataset, found: set[str]) -> None:
    """Add to ``found`` the parts of every person name (VR PN) and patient ID the data set holds,
    in its sequences too: the referring and performing physicians, operators, other names and IDs
    of the patient, a member of a group. Clean Descriptors (PS3.15 E.3.5) is to leave descriptions
    that identify no one, and these are the names a description most often repeats ("CT for Dr
    Holmes"); the table replaces or removes each of them where it stands. Private attributes and
    those newer than pydicom (NEWER_VRS) are not decoded here: _walk reads them from their bytes."""
    for raw in stored_elements(ds):
        tag = raw.tag
        number = int(tag)
        if tag.is_private or number in NEWER_VRS or tag.group == 0x0002:
            continue
        vr = _vr(tag, raw)
        if vr == "PN" or number in _PATIENT_IDS:
            value = ds[tag].value
            # A PersonName iterates over its characters: only a multi-valued attribute is a list.
            values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
            found.update(identifiers_of(*(str(v) for v in values if v and not isinstance(v, bytes))))
        elif vr == "SQ":
            for item in ds[tag].value or ():
                _people_named(item, found)


def _parse_un_sequence(value: bytes, encodings: list[str], terms: list[str] | None,
                       where: BaseTag) -> Sequence | None:
    """A sequence's value encoded as UN, which PS3.5 6.2.2 says is Implicit VR Little Endian
    whatever the transfer syntax; None when it does not parse as one exactly. Its text is checked
    and read in ``terms``, the Specific Character Set in force where it stands (charset.py), as
    the rest of the object was when read: raises Withheld when a value is not valid in it."""
    from pydicom.filereader import read_sequence

    if not _well_formed_items(value):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            items = read_sequence(io.BytesIO(value), True, True, len(value), encodings)
            for item in items:
                for tag in list(item.keys()):
                    raw = item.get_item(tag)
                    if isinstance(raw, RawDataElement) and raw.VR is None and int(tag) in NEWER_VRS:
                        # Implicit VR inside: decoded with its PS3.6 VR, not as UN bytes (as _walk does)
                        item[tag] = raw._replace(VR=NEWER_VRS[int(tag)])
    except Exception:  # pydicom raises many types for malformed bytes; each means "not a sequence"
        return None
    # Before pydicom decodes the text with the encodings it knows (Latin-1 for ISO_IR 203)
    named = " ".join(dict.fromkeys((_tag_text(int(where)), _name(where))))  # an unknown tag is named once
    try:
        wrong = charset.read_late_items(list(items), terms, f"{named} (encoded as UN)")
    except Exception:  # noqa: BLE001 - an item pydicom cannot read further is no sequence either
        return None
    if wrong:
        raise Withheld(wrong)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for item in items:
                for tag in list(item.keys()):
                    item[tag]  # decode now: a malformed item must fail here, not when written
    except Exception:  # pydicom raises many types for malformed bytes; each means "not a sequence"
        return None
    return items


_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF


def _well_formed_items(value: bytes) -> bool:
    """True when ``value`` is exactly a sequence's items in Implicit VR Little Endian (PS3.5 7.5):
    each an Item (FFFE,E000) of defined length, or of undefined length closed by its Item
    Delimitation Item, every element inside within its item. pydicom's read_sequence takes any
    bytes for an item ("Quixote Zebulon" reads as one item of a tag (7551,7869)), so its answer
    alone would let text that is no sequence through as one."""
    try:
        return _scan_items(value, 0, len(value), delimited=False) == len(value)
    except ValueError:
        return False


def _header(value: bytes, pos: int, end: int) -> tuple[int, int]:
    if pos + 8 > end:
        raise ValueError("a header runs past the end")
    group, element, length = struct.unpack_from("<HHI", value, pos)
    return group << 16 | element, length


def _scan_items(value: bytes, pos: int, end: int, *, delimited: bool) -> int:
    """Where the items from ``pos`` end: at ``end``, or after the Sequence Delimitation Item when
    the sequence is of undefined length (``delimited``); ValueError when they are not items."""
    while pos < end:
        tag, length = _header(value, pos, end)
        if tag == _SEQUENCE_END and delimited:
            return pos + 8
        if tag != _ITEM:
            raise ValueError("not an item")
        if length == _UNDEFINED:
            pos = _scan_elements(value, pos + 8, end, delimited=True)
        else:
            if pos + 8 + length > end:
                raise ValueError("an item runs past the end")
            _scan_elements(value, pos + 8, pos + 8 + length, delimited=False)
            pos += 8 + length
    if delimited:
        raise ValueError("no Sequence Delimitation Item")
    return pos


def _scan_elements(value: bytes, pos: int, end: int, *, delimited: bool) -> int:
    """Where the elements of an item from ``pos`` end (after its Item Delimitation Item when the
    item is of undefined length); an element of undefined length is a sequence (PS3.5 7.5.2)."""
    while pos < end:
        tag, length = _header(value, pos, end)
        if tag == _ITEM_END and delimited:
            return pos + 8
        if tag >> 16 == 0xFFFE:
            raise ValueError("a delimiter out of place")
        if length == _UNDEFINED:
            pos = _scan_items(value, pos + 8, end, delimited=True)
        elif pos + 8 + length > end:
            raise ValueError("an element runs past its item")
        else:
            pos += 8 + length
    if delimited:
        raise ValueError("no Item Delimitation Item")
    return pos


def _newer_as_own_vr(ds: Dataset, tag: BaseTag, raw: RawDataElement, vr: str,
                     terms: list[str] | None) -> Any | None:
    """An attribute newer than pydicom's dictionary that an Explicit VR file encodes as UN, made an
    element of its PS3.6 VR (``vr``), so that it is cleaned or walked like any other; None when it is
    a sequence whose value does not parse. A sequence's UN value is an Implicit VR Little Endian
    sequence whatever the transfer syntax (PS3.5 6.2.2); a text value is the same bytes either way."""
    if vr != "SQ":
        converted = raw._replace(VR=vr)
        ds[tag] = converted
        return converted
    items = _parse_un_sequence(raw.value or b"", getattr(ds, "_character_set", None) or ["iso8859"], terms, tag)
    if items is None:
        return None
    element = DataElement(tag, "SQ", items)
    ds[tag] = element
    return element


def _document_length(ds: Dataset) -> None:
    """Encapsulated Document Length (0042,0015) is the length of Encapsulated Document (PS3.3
    C.24.2): kept true when D replaced the document by a dummy. That dummy is a document of the
    object's MIME Type (0042,0012) (C.24.2.1), so that the object is still what its class says."""
    if ENCAPSULATED_DOCUMENT in ds and ds[ENCAPSULATED_DOCUMENT].value == dummy("OB"):
        ds[ENCAPSULATED_DOCUMENT].value = dummy_document(_text_of(ds, ENCAPSULATED_DOCUMENT_MIME_TYPE))
    if ENCAPSULATED_DOCUMENT in ds and ENCAPSULATED_DOCUMENT_LENGTH in ds:
        document = ds[ENCAPSULATED_DOCUMENT].value or b""
        _put(ds, ENCAPSULATED_DOCUMENT_LENGTH, "UL", len(document))


def _put(ds: Dataset, tag: int, vr: str, value: Any) -> None:
    """Set an attribute the engine itself composes (valid for its VR by construction: not re-checked)."""
    ds[tag] = DataElement(tag, vr, value, validation_mode=config.IGNORE)


def _text_of(ds: Dataset, tag: int) -> str:
    """A single-valued string attribute as text, from the bytes as read where it is still undecoded
    (UIDs are ASCII; PS3.5 6.2 pads them with NUL), so reading it costs no conversion."""
    elem = ds.get_item(tag)
    if elem is None or elem.value is None:
        return ""
    if isinstance(elem.value, bytes):
        return elem.value.decode("latin-1").strip("\0 ")
    return str(elem.value)


def _identity(ds: Dataset, tag: int) -> str:
    """A UID as text from its bytes; the Patient ID decoded in the data set's character set."""
    if tag == PATIENT_ID:
        return str(ds[tag].value or "") if tag in ds else ""
    return _text_of(ds, tag)


def _name(tag: BaseTag) -> str:
    try:
        return str(dictionary_description(tag))
    except KeyError:
        return "Private attribute" if tag.is_private else _tag_text(int(tag))


def _vr(tag: BaseTag, elem: Any) -> str:
    """The VR of an element, decoded or not; implicit VR files leave it to the dictionary (PS3.5 7.1.3),
    and so does UN for a public attribute (pydicom decodes it with the dictionary's VR)."""
    if elem.VR and (elem.VR != "UN" or tag.is_private):
        return str(elem.VR)
    return known_vr(tag) or "UN"


def _strings(value: Any) -> list[str]:
    """The values of a string attribute, decoded or still bytes (backslash-separated, PS3.5 6.4)."""
    if value is None:
        return []
    if isinstance(value, bytes):
        return [v.strip("\0 ") for v in value.decode("latin-1").split("\\")]
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _map_values(value: Any, fn: Callable[[str], str]) -> Any:
    """Apply ``fn`` to each value of a multi-valued string attribute; empty values stay empty."""
    if value is None or value == "":
        return value
    if isinstance(value, str | bytes):
        return fn(value.decode("ascii", "replace") if isinstance(value, bytes) else str(value))
    if isinstance(value, Iterable):
        return [fn(str(v)) if str(v) else str(v) for v in value]
    return fn(str(value))


def _map_raw_uids(value: bytes | None, fn: Callable[[str], str]) -> str | list[str]:
    """The keyed replacement of each UID of an undecoded UI value (backslash-separated, padded with
    NUL, PS3.5 6.2); empty values stay empty."""
    if not value:
        return ""
    mapped = [fn(v) if v else v for v in (u.strip("\0 ") for u in value.decode("ascii", "replace").split("\\"))]
    return mapped[0] if len(mapped) == 1 else mapped


def _all_registered(value: Any) -> bool:
    """True when every UID in ``value`` is registered in PS3.6 Annex A (a class or a scheme, not an instance)."""
    values = [value] if isinstance(value, str) or value is None else list(value)
    present = [str(v) for v in values if v]
    return bool(present) and all(v in UID_dictionary for v in present)
