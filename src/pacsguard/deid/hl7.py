"""HL7 v2 de-identification with the same keys as DICOM: the same patient gets the same
pseudonymous ID and name in both, and the same date shift (PS3.15 E.3.6 applied to HL7's TS/DT
values).

Cautious by construction: every segment this module knows (HL7 v2.5.1 chapters 2, 3, 4, 6 and 7,
and PRT of v2.7) has a table of the fields it keeps, shifts, keys or cleans; every other field of
it is emptied. A segment it does not know (a site's Z-segment, a segment of another chapter or a
later version) keeps only its segment ID. Escape sequences (v2.5.1 2.7), repetitions, components
and subcomponents are decoded before names and IDs are looked for, so none of them hides one.

A small pure module: text in, text out, no HL7 library. Segments end with CR (HL7 v2.5.1 2.5.1);
MSH-1 and MSH-2 give the separators."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta

from pacsguard.deid.pseudonym import Pseudonyms, patient_key, shift_da
from pacsguard.deid.values import clean_text, identifiers_of

# What happens to a field (HL7 v2.5.1 field numbers, 1-based). A field a segment's table does not
# list is emptied; a field listed as "n", "c" or "i" is emptied too, and the names or IDs it held
# are also scrubbed from free text elsewhere in the message.
KEEP = "K"  # kept as it is: codes, set IDs, flags
DATE = "D"  # TS/DT/DTM: shifted by the patient's keyed offset, or emptied
TEXT = "T"  # free text (and the text of coded values): names, IDs and long numbers scrubbed
PATIENT_ID = "P"  # CX: each repetition's ID keyed like PID-3 (and DICOM's Patient ID)
PATIENT_NAME = "N"  # PID-5: the keyed name DICOM's Patient's Name gets
PRIOR_NAME = "M"  # MRG-7: the keyed name of the prior patient (MRG-1's first ID)
ACCOUNT = "A"  # PID-18, MRG-3: keyed under one label
VISIT = "V"  # PV1-5, -19, -50, MRG-5, -6: keyed under one label, the whole field
ORDER = "O"  # EI of orders, accessions, procedure steps: each repetition's ID keyed
STUDY_UID = "U"  # IPC-3: the keyed UID DICOM's Study Instance UID gets
NAME = "n"  # XPN of another person: emptied, its name parts scrubbed from text
CLINICIAN = "c"  # XCN: emptied, its ID and name parts scrubbed from text
IDENT = "i"  # CX/EI of another kind: emptied, the ID scrubbed from text
_EMPTY = ""

_TEXT_TYPES = frozenset({"TX", "FT", "ST"})
_CODED_TYPES = frozenset({"CE", "CWE", "CNE", "CF"})
_NUMERIC_TYPES = frozenset({"NM", "SN", "NR", "TM", "CQ", "MO", "ID", "IS"})
_DATE_TYPES = frozenset({"DT", "DTM", "TS"})
#: Components of CE/CWE/CNE that are text (2 text, 5 alternate text, 9 original text); the others
#: are codes, coding systems and versions (HL7 v2.5.1 2.A.7, 2.A.13, 2.A.8).
_CODED_TEXT = frozenset({1, 4, 8})
#: A placeholder for a formatting escape (\.br\, \H\ ...) while text is cleaned: str.isspace()
#: holds for it, so it separates words, and clean_text never rewrites whitespace.
_HOLD = "\x1f"


def _spec(**actions: str) -> dict[int, str]:
    """A segment's table from action=fields pairs: KEEP="1 8 15-17" lists fields 1, 8, 15, 16, 17."""
    out: dict[int, str] = {}
    for action, fields in actions.items():
        for part in fields.split():
            first, _, last = part.partition("-")
            for number in range(int(first), int(last or first) + 1):
                out[number] = globals()[action]
    return out


#: The tables. Field numbers are HL7 v2.5.1's (chapter and section in each comment).
SEGMENTS: dict[str, dict[int, str]] = {
    # 2.14.9 MSH is handled by _msh: its numbering starts with the field separator itself.
    # 3.4.1 event type: the trigger and reason codes; operator and facility go.
    "EVN": _spec(KEEP="1 4", DATE="2 3 6", CLINICIAN="5"),
    # 2.14.8 acknowledgment: MSA-2 is keyed like MSH-10, so the ACK still answers its message.
    "MSA": _spec(KEEP="1 4-6", TEXT="3"),
    # 2.14.5 error: codes kept, texts cleaned; parameters and help desk contact emptied.
    "ERR": _spec(KEEP="1-5 9-11", TEXT="7 8"),
    # 2.14.11 software: the vendor's product, not the site.
    "SFT": _spec(KEEP="1-5", DATE="6"),
    # 2.14.10 notes and comments.
    "NTE": _spec(KEEP="1 2 4", TEXT="3"),
    # 3.4.2 patient identification.
    "PID": _spec(KEEP="1 8 10 15-17 22 24 25 28 30-32 35-38", DATE="7 29 33", PATIENT_ID="2 3",
                 PATIENT_NAME="5", ACCOUNT="18", IDENT="4 19 20 21", NAME="6 9"),
    # 3.4.10 additional demographics: a duplicate patient record is the same patient's ID.
    "PD1": _spec(KEEP="1 2 5-9 11 12 15 16", DATE="13 17 18", PATIENT_ID="10", CLINICIAN="4"),
    # 3.4.5 next of kin: only the relationship (and set ID) stays.
    "NK1": _spec(KEEP="1 3", NAME="2 30", IDENT="12 33 37"),
    # 3.4.3 patient visit: locations, doctors and financial fields go.
    "PV1": _spec(KEEP="1 2 4 10 12-16 18 21 36 38 40 41 51", DATE="44 45", VISIT="5 19 50",
                 CLINICIAN="7 8 9 17 52"),
    # 3.4.4 patient visit, additional: reasons and description cleaned, dates shifted.
    "PV2": _spec(KEEP="2 7 10 11 15 16 18-22 24 25 27 30-32 34-45 49", TEXT="3 4 12",
                 DATE="8 9 14 17 26 28 29 33 46-48", CLINICIAN="13"),
    # 3.4.9 merge patient information: the prior patient's IDs keyed like PID-3 (ADT^A34-A47).
    "MRG": _spec(PATIENT_ID="1 4", ACCOUNT="3", VISIT="5 6", PRIOR_NAME="7", IDENT="2"),
    # 3.4.6 allergy.
    "AL1": _spec(KEEP="1-4", TEXT="5", DATE="6"),
    # 6.5.2 diagnosis: codes kept, the description cleaned; the clinician goes.
    "DG1": _spec(KEEP="1-3 6-12 14 15 17 18 21", TEXT="4", DATE="5 19", CLINICIAN="16", IDENT="20"),
    # 6.5.4 procedures.
    "PR1": _spec(KEEP="1-3 6 7 9 10 13-18 20", TEXT="4", DATE="5", CLINICIAN="8 11 12", IDENT="19"),
    # 6.5.5 guarantor: the guarantor's identity, address, employer go.
    "GT1": _spec(KEEP="1 9-11 15 20", DATE="13 14", IDENT="2 12 19", NAME="3 4 16"),
    # 6.5.6 insurance: the insured's name, address, birth date, IDs and employer go.
    "IN1": _spec(KEEP="1 2 15 17 20-23 25 27 31-35 39 42 43 45-48 50 53", DATE="12 13 24 26 29 51",
                 NAME="6 16", IDENT="3 8 36 49", CLINICIAN="30"),
    # 6.5.7 insurance, additional (SSNs, Medicare/Medicaid numbers, employer): all emptied.
    "IN2": _spec(IDENT="1 2 6 8", NAME="7"),
    # 6.5.8 insurance certification: all but the set ID emptied.
    "IN3": _spec(KEEP="1", IDENT="2", CLINICIAN="3"),
    # 6.5.9 accident: codes kept, the description cleaned; place and people go.
    "ACC": _spec(KEEP="2 5 6 10", DATE="1", TEXT="8", CLINICIAN="7"),
    # 15.4.7 role (ADT and orders use it): the role and its codes stay, the person goes.
    "ROL": _spec(KEEP="2 3 7-10", DATE="5 6", CLINICIAN="4", IDENT="1"),
    # v2.7 7.4.4 participation: as ROL.
    "PRT": _spec(KEEP="2-4 6 7 13", DATE="11 12", CLINICIAN="5", IDENT="1"),
    # 4.5.1 common order: order numbers keyed (ORC-2 and OBR-2 stay equal), people and phones go.
    "ORC": _spec(KEEP="1 5 6 20 25 26 28-31", ORDER="2-4", DATE="9 15 27", TEXT="16",
                 CLINICIAN="10-12 19"),
    # 4.5.3 / 7.4.1 observation request: placer and filler fields (often the accession) keyed.
    "OBR": _spec(KEEP="1 4 5 9 11 12 15 24 25 30 37 38 40-42 44-50", ORDER="2 3 18-21",
                 DATE="6-8 14 22 36", TEXT="13 31 39 43", CLINICIAN="10 16 28 32-35"),
    # 4.5.4 timing/quantity.
    "TQ1": _spec(KEEP="1-6 9 12-14", DATE="7 8", TEXT="10 11"),
    # 4.5.6 imaging procedure control: accession and step IDs keyed, the study UID as in DICOM.
    "IPC": _spec(ORDER="1 2 4", STUDY_UID="3", KEEP="5 6"),
    # 7.4.2 observation: OBX-5 by its value type (OBX-2), see _obx_value.
    "OBX": _spec(KEEP="1-4 6-11 17", DATE="12 14 19", CLINICIAN="16", IDENT="15 18"),
    # 7.4.3 specimen.
    "SPM": _spec(KEEP="1 4-13 15 16 20-29", TEXT="14", DATE="17-19", IDENT="2 3"),
}

#: MSH by its own field numbers (MSH-1 is the field separator, MSH-2 the encoding characters).
#: Application names (3, 5) name software and keep their namespace ID; facilities (4, 6) name the
#: hospital and are keyed, like Institution Name; the control ID (10) is keyed so an ACK's MSA-2
#: still matches; the message's time (7) is shifted, or the dummy date, as MSH-7 is required.
_MSH_KEEP = frozenset({9, 11, 12, 13, 15, 16, 17, 18, 19, 20, 21})  # MSH-1 and MSH-2 always stay
_DUMMY_TS = "19000101"


@dataclass(frozen=True, slots=True)
class Separators:
    """MSH-1 and MSH-2 (HL7 v2.5.1 2.5.4): field, component, repetition, escape, subcomponent."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    #: The Python codec of MSH-18's first character set (HL7 v2.5.1 2.14.9.18), "" when it names
    #: none this module knows: what a \\Xhh\\ escape's bytes are characters of (see decode).
    encoding: str = ""

    def split(self, value: str) -> list[list[str]]:
        """Repetitions, each as its components."""
        return [rep.split(self.component) for rep in value.split(self.repetition)]


def _separators(message: str) -> Separators:
    """MSH-1 and MSH-2, each fault named: a message that does not start with MSH says what it
    starts with; one that ends, or whose segment ends, before its separators says that."""
    if not message.startswith("MSH"):
        raise ValueError(f"an HL7 v2 message starts with an MSH segment; this one starts with {message[:8]!r}")
    field = message[3:4]
    if not field or field in "\r\n" or field.isalnum():
        raise ValueError(f"MSH-1 (the field separator) is missing: the message starts {message[:8]!r}")
    # MSH-2 ends at the next field separator, or where the segment ends (CR, HL7 v2.5.1 2.5.1).
    chars = re.split(f"[{re.escape(field)}\r\n]", message[4:], maxsplit=1)[0]
    if len(chars) < 2:
        raise ValueError("MSH-2 (encoding characters) names fewer than the component and repetition separators")
    msh = message.split("\r", 1)[0].split("\n", 1)[0].split(field)
    charset = msh[17].split(chars[1])[0].strip().upper() if len(msh) > 17 else ""
    return Separators(field, chars[0], chars[1], chars[2] if len(chars) > 2 else "\\",
                      chars[3] if len(chars) > 3 else "&", _CHARSETS.get(charset, ""))


#: MSH-18 values (HL7 v2.5.1 table 0211) whose bytes a Python codec reads as such; the JIS sets
#: (ISO IR14, IR87, IR159) are code tables without ISO 2022 escapes, which no codec reads alone.
_CHARSETS = {
    "ASCII": "ascii", "UNICODE UTF-8": "utf-8", "UNICODE UTF-16": "utf-16", "UNICODE UTF-32": "utf-32",
    "GB 18030-2000": "gb18030", "KS X 1001": "euc_kr", "BIG-5": "big5",
    **{f"8859/{n}": f"iso8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 15)},
}


@dataclass(slots=True)
class _Context:
    """What every field's action needs: the keys, the patient, the options."""

    sep: Separators
    pseudonyms: Pseudonyms
    patient_id: str
    name: str
    prior_id: str
    keep_dates: bool
    shift: timedelta
    known: frozenset[str] = frozenset()
    #: MSH-10: what a patient without PID-3 and without a name and birth date is keyed by.
    control_id: str = ""
    #: What the name pseudonym and ``shift`` are keyed by (pseudonym.patient_key).
    key: str = ""


def deidentify_message(message: str, pseudonyms: Pseudonyms, *, keep_dates_shifted: bool = False) -> str:
    """The message de-identified segment by segment (SEGMENTS), free text cleaned of every name
    and ID the message holds. Dates are shifted by the patient's keyed offset when
    ``keep_dates_shifted`` (Retain Longitudinal Modified Dates), emptied otherwise."""
    # A byte order mark is no part of HL7 (v2.5.1 2.5.1: the message starts with MSH); an editor
    # saving a message as UTF-8 writes one, and the message was refused as not starting with MSH.
    message = message.removeprefix("\ufeff")
    sep = _separators(message)
    segments = [s.split(sep.field) for s in message.replace("\n", "\r").split("\r") if s]
    first_pid = next((fields for fields in segments if fields[0] == "PID"), ["PID"])
    msh = next((fields for fields in segments if fields[0] == "MSH"), [])
    control_id = decode(msh[9], sep) if len(msh) > 9 else ""  # MSH-10 (fields[i] is MSH-(i+1))
    ctx = _Context(sep, pseudonyms, "", "", "", keep_dates_shifted, timedelta(0), _identifiers(segments, sep),
                   control_id)
    _enter_patient(first_pid, ctx)
    out = []
    for fields in segments:
        # A message may carry several patients (ADT^A40's repeated PID-MRG groups, HL7 v2.5.1
        # 3.3.40): the segments after a PID are that patient's, those after an MRG its prior's.
        if fields[0] == "PID":
            _enter_patient(fields, ctx)
        elif fields[0] == "MRG":
            ctx.prior_id = _record_number(fields[1] if len(fields) > 1 else "", sep)
        out.append(_msh(fields, ctx) if fields[0] == "MSH" else _segment(fields, ctx))
    return "\r".join(sep.field.join(fields) for fields in out) + "\r"


def _enter_patient(pid: list[str], ctx: _Context) -> None:
    """PID-3's record number and PID-5's legal name, escapes decoded (what DICOM's Patient ID and
    Patient's Name hold for the same patient), and that patient's date offset."""
    ctx.patient_id = _record_number(pid[3] if len(pid) > 3 else "", ctx.sep)
    ctx.name = _dicom_name(pid[5] if len(pid) > 5 else "", ctx.sep)
    birth = pid[7].split(ctx.sep.component)[0] if len(pid) > 7 else ""
    ctx.key = patient_key(ctx.patient_id, ctx.name, birth, ctx.control_id)
    ctx.shift = ctx.pseudonyms.day_shift(ctx.key)


#: Identifier types (CX-5, HL7 table 0203) of a person's number outside the hospital record:
#: social security (and the common SSN), national, jurisdictional health, health card, Medicaid,
#: Medicare, member, subscriber, pension, military, tax, passport and driving licence numbers,
#: accounts, bank cards, visits, registries. A modality's Patient ID is the hospital's record.
_NOT_RECORD = frozenset({"SS", "SSN", "NI", "NH", "JHN", "HC", "MA", "MC", "MB", "SN", "PEN", "MI", "TAX", "PPN",
                         "DL", "AN", "BA", "BC", "VN", "WC", "WCN", "RR", "BR", "LR", "RRI", "SR", "CZ", "SB"})


def _record_number(value: str, sep: Separators) -> str:
    """The PID-3 repetition DICOM's Patient ID holds: the one typed MR (medical record number,
    table 0203), else the first with an ID and no type of _NOT_RECORD (national numbers begin
    NN), else the first with an ID. PID-3 may list an SSN first, or begin with an empty repetition:
    keyed by that, the name pseudonym and the offset no longer matched the DICOM objects."""
    reps = [(decode(r[0], sep), r[4].strip().upper() if len(r) > 4 else "") for r in sep.split(value) if r[0]]
    for wanted in (lambda t: t == "MR", lambda t: t not in _NOT_RECORD and not t.startswith("NN")):
        found = next((ident for ident, kind in reps if ident and wanted(kind)), None)
        if found is not None:
            return found
    return next((ident for ident, _ in reps if ident), "")


def _dicom_name(value: str, sep: Separators) -> str:
    """The XPN PID-5 names the patient by as DICOM's PN: family^given^middle^suffix^prefix, the
    same order. The legal name (XPN-7 L), which HL7 v2.5.1 3.4.2.5 puts first, else the first
    repetition with a name: an empty first repetition says there is no legal name, and the name
    that follows is the one the patient's DICOM objects carry."""
    if not value:
        return ""
    reps = [rep for rep in sep.split(value) if "".join(rep[:5]).strip()]
    legal = [rep for rep in reps if len(rep) > 6 and rep[6].strip().upper() == "L"]
    chosen = (legal or reps or [[""]])[0]
    return "^".join(decode(c, sep) for c in chosen[:5])


def _segment(fields: list[str], ctx: _Context) -> list[str]:
    table = SEGMENTS.get(fields[0])
    if table is None:
        return fields[:1]  # a Z-segment or one not in the tables: nothing of it is known to be safe
    out = [fields[0]]
    for number, value in enumerate(fields[1:], start=1):
        if fields[0] == "OBX" and number == 5:
            out.append(_obx_value(value, fields[2] if len(fields) > 2 else "", ctx))
        elif fields[0] == "MSA" and number == 2:
            out.append(_keyed(value, "hl7-control", ctx, 20))
        else:
            out.append(_apply(table.get(number, _EMPTY), value, ctx))
    return out


def _msh(fields: list[str], ctx: _Context) -> list[str]:
    """MSH: fields[i] is MSH-(i+1), as MSH-1 is the separator between fields[0] and fields[1]."""
    out = fields[:2]
    for number, value in enumerate(fields[2:], start=3):
        if number in _MSH_KEEP:
            out.append(value)
        elif number in (3, 5):
            out.append(_namespace(value, ctx.sep))
        elif number in (4, 6):
            out.append(_keyed(value, "hl7-facility", ctx))
        elif number == 7:
            out.append(_date(value, ctx) or (_DUMMY_TS if value else ""))
        elif number == 10:
            out.append(_keyed(value, "hl7-control", ctx, 20))
        else:
            out.append("")
    return out


def _namespace(value: str, sep: Separators) -> str:
    """An HD's namespace ID alone: its universal ID (an OID or DNS name) can name the site."""
    return value.split(sep.repetition)[0].split(sep.component)[0]


def _apply(action: str, value: str, ctx: _Context) -> str:
    if not value or action == KEEP:
        return value
    handler = _HANDLERS.get(action)
    return handler(value, ctx) if handler else ""


def _patient_ids(value: str, ctx: _Context) -> str:
    """CX: only the ID (component 1) of each repetition, keyed as in DICOM; the assigning
    authority and the rest go."""
    ids = (decode(rep[0], ctx.sep) for rep in ctx.sep.split(value))
    return ctx.sep.repetition.join(ctx.pseudonyms.patient_id(i) if i else "" for i in ids)


def _patient_name(value: str, ctx: _Context) -> str:
    """XPN family^given^middle^suffix^prefix is DICOM's PN order: the same pseudonym as in DICOM.
    Every other repetition (an alias, a maiden or legal name) goes."""
    return ctx.pseudonyms.patient_name(ctx.key, ctx.name).replace("^", ctx.sep.component)


def _prior_name(value: str, ctx: _Context) -> str:
    return ctx.pseudonyms.patient_name(ctx.prior_id, _dicom_name(value, ctx.sep)).replace("^", ctx.sep.component)


def _keyed(value: str, label: str, ctx: _Context, length: int = 16) -> str:
    """The first repetition's first component, keyed under ``label``."""
    first = decode(ctx.sep.split(value)[0][0], ctx.sep) if value else ""
    return ctx.pseudonyms.text(label, first, length) if first else ""


def _orders(value: str, ctx: _Context) -> str:
    ids = (decode(rep[0], ctx.sep) for rep in ctx.sep.split(value))
    return ctx.sep.repetition.join(ctx.pseudonyms.text("hl7-order", i, 16) if i else "" for i in ids)


def _study_uid(value: str, ctx: _Context) -> str:
    first = decode(ctx.sep.split(value)[0][0], ctx.sep)
    return ctx.pseudonyms.uid(first) if first else ""


def _date(value: str, ctx: _Context) -> str:
    """A TS/DT/DTM value (YYYYMMDD[HHMM[SS]]...; a TS's degree of precision dropped) moved back,
    or emptied."""
    first = value.split(ctx.sep.repetition)[0].split(ctx.sep.component)[0]
    if not first or not ctx.keep_dates:
        return ""
    moved = shift_da(first[:8], ctx.shift)
    return "" if moved is None else moved + first[8:]


def _text(value: str, ctx: _Context) -> str:
    return _clean_parts(value, ctx)


_HANDLERS: dict[str, Callable[[str, _Context], str]] = {
    DATE: _date, TEXT: _text, PATIENT_ID: _patient_ids, PATIENT_NAME: _patient_name,
    PRIOR_NAME: _prior_name, ACCOUNT: lambda v, c: _keyed(v, "hl7-account", c),
    VISIT: lambda v, c: c.pseudonyms.text("hl7-visit", v, 16), ORDER: _orders, STUDY_UID: _study_uid,
}


def _obx_value(value: str, value_type: str, ctx: _Context) -> str:
    """OBX-5 by OBX-2 (HL7 v2.5.1 7.4.2.2): text cleaned, codes kept with their texts cleaned,
    numbers kept, dates shifted; names, addresses, phones, identifiers, encapsulated data (ED, RP:
    not looked into) and anything of an unknown type emptied."""
    kind = value_type.split(ctx.sep.component)[0].strip().upper()
    if not value or kind in _NUMERIC_TYPES:
        return value
    if kind in _TEXT_TYPES:
        return _clean_parts(value, ctx)
    if kind in _CODED_TYPES:
        return _clean_parts(value, ctx, only=_CODED_TEXT)
    if kind in _DATE_TYPES:
        return ctx.sep.repetition.join(_date(rep, ctx) for rep in value.split(ctx.sep.repetition))
    return ""


def _clean_parts(value: str, ctx: _Context, only: frozenset[int] | None = None) -> str:
    """Free text cleaned piece by piece: each repetition, component and subcomponent on its own,
    so that a separator between two name parts ("LI~WU", "LI&WU") does not hide them; ``only``
    limits cleaning to those components (0-based), the others are kept."""
    sep = ctx.sep
    reps = []
    for rep in value.split(sep.repetition):
        comps = []
        for i, comp in enumerate(rep.split(sep.component)):
            if only is not None and i not in only:
                comps.append(comp)
                continue
            comps.append(sep.subcomponent.join(_clean_escaped(sub, ctx) for sub in comp.split(sep.subcomponent)))
        reps.append(sep.component.join(comps))
    return sep.repetition.join(reps)


def _clean_escaped(text: str, ctx: _Context) -> str:
    """clean_text on the text the escapes stand for (HL7 v2.5.1 2.7: \\F\\ \\S\\ \\T\\ \\R\\ \\E\\,
    \\Xhh\\), formatting escapes (\\.br\\, \\H\\ ...) kept where they were; written back escaped."""
    if not text or _HOLD in text:
        return clean_text(text, ctx.known) if text else text
    held: list[str] = []
    plain = decode(text, ctx.sep, held)
    cleaned = clean_text(plain, ctx.known)
    return encode(cleaned, ctx.sep, iter(held))


def _escapes(sep: Separators) -> re.Pattern[str]:
    e = re.escape(sep.escape)
    return re.compile(f"{e}([^{e}]*){e}")


def decode(value: str, sep: Separators, held: list[str] | None = None) -> str:
    """The characters an HL7 value stands for (v2.5.1 2.7.1-2.7.4). A formatting escape becomes
    _HOLD and is appended to ``held`` (if given; else it becomes a space); an escape char without
    its pair stays as it is."""
    singles = {"F": sep.field, "S": sep.component, "T": sep.subcomponent, "R": sep.repetition, "E": sep.escape}

    def one(match: re.Match[str]) -> str:
        body = match.group(1)
        if body in singles:
            return singles[body]
        if body[:1] == "X" and len(body) > 1 and len(body) % 2 == 1:
            # Hexadecimal data (v2.5.1 2.7.3) are bytes of the message's character set (MSH-18):
            # under 8859/1, \\XE9\\ is "é", invalid as UTF-8, and left undecoded it split
            # "Z\\XE9\\bulon" into words that match no name part. UTF-8, then Latin-1 (which
            # decodes any byte) when the set is unknown or the bytes are not of it.
            try:
                data = bytes.fromhex(body[1:])
            except ValueError:
                data = None
            for codec in (sep.encoding, "utf-8", "latin-1"):
                if data is not None and codec:
                    try:
                        return data.decode(codec)
                    except (UnicodeDecodeError, LookupError):
                        continue
        if held is None:
            return " "
        held.append(match.group(0))
        return _HOLD

    return _escapes(sep).sub(one, value)


def encode(value: str, sep: Separators, held: Iterable[str] = ()) -> str:
    """``value`` written as an HL7 value: separators and the escape character escaped, control
    characters as \\Xhh\\, each _HOLD given back its formatting escape."""
    specials = {sep.escape: "E", sep.field: "F", sep.component: "S", sep.subcomponent: "T", sep.repetition: "R"}
    pending = iter(held)
    out = []
    for ch in value:
        if ch == _HOLD:
            out.append(next(pending, " "))
        elif ch in specials:
            out.append(f"{sep.escape}{specials[ch]}{sep.escape}")
        elif ord(ch) < 0x20:
            out.append(f"{sep.escape}X{ord(ch):02X}{sep.escape}")
        else:
            out.append(ch)
    return "".join(out)


# -- the names and IDs free text is cleaned of ---------------------------------------------------


def _identifiers(segments: list[list[str]], sep: Separators) -> frozenset[str]:
    """Every name part and ID of the message, lower case: name parts of every person (patient,
    prior patient, kin, guarantor, insured, clinicians) and every identifier, from whichever
    repetition, component or subcomponent holds them, escapes decoded."""
    names: list[str] = []
    ids: list[str] = []
    for fields in segments:
        table = SEGMENTS.get(fields[0], {})
        for number, value in enumerate(fields[1:], start=1):
            action = table.get(number, _EMPTY)
            if not value or action in (KEEP, DATE, TEXT, _EMPTY):
                continue
            for rep in sep.split(value):
                parts = [decode(c, sep) for c in rep]
                if action in (PATIENT_NAME, PRIOR_NAME, NAME):
                    names.extend(parts[:3])  # XPN family^given^middle
                elif action == CLINICIAN:
                    if len(rep) == 1 and sep.subcomponent in rep[0]:  # NDL (OBR-32-35): an XCN in subcomponents
                        parts = [decode(c, sep) for c in rep[0].split(sep.subcomponent)]
                    ids.append(parts[0])  # XCN id^family^given^middle
                    names.extend(parts[1:4])
                else:
                    ids.append(parts[0])
    flat = [_spaced(n, sep) for n in names]
    return identifiers_of(*flat) | frozenset(i.strip().lower() for i in ids if i.strip())


def _spaced(value: str, sep: Separators) -> str:
    """Subcomponents and any separator an escape stood for made spaces: each is a name part."""
    for ch in (sep.subcomponent, sep.repetition, sep.field, sep.component):
        value = value.replace(ch, " ")
    return value
