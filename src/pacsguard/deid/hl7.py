"""HL7 v2 de-identification of PID, NK1 and PV1 (HL7 v2.5.1 chapter 3) and of free text (OBX-5 of
text types, NTE-3) with the same keys as DICOM: the same patient gets the same pseudonymous ID and
name in both, and the same date shift (PS3.15 E.3.6 applied to HL7's TS/DT values).

A small pure module for the HL7 part: text in, text out, no HL7 library. Segments end with CR
(HL7 v2.5.1 2.5.1); MSH-1 and MSH-2 give the separators."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from pacsguard.deid.pseudonym import Pseudonyms, shift_da
from pacsguard.deid.values import clean_text, identifiers_of

#: PID fields (1-based) emptied: alternate ID, mother's maiden name, alias, address, county,
#: phones, SSN, driver's licence, mother's identifier, birth place, citizenship, veterans status.
_PID_EMPTY = frozenset({4, 6, 9, 11, 12, 13, 14, 19, 20, 21, 23, 26, 27})
_PID_DATES = frozenset({7, 29})  # date/time of birth, of death
_PV1_EMPTY = frozenset({3, 6, 7, 8, 9, 11, 17, 37, 42, 43, 52})  # locations and doctors
#: PV1 visit identifiers (CX) keyed like PID-3: Preadmit Number, Visit Number, Alternate Visit ID.
#: Under one label, so one visit identifier gets one pseudonym in whichever field it appears.
_PV1_KEYED = frozenset({5, 19, 50})
_PV1_DATES = frozenset({44, 45})  # admit, discharge
_TEXT_TYPES = frozenset({"TX", "FT", "ST"})


@dataclass(frozen=True, slots=True)
class Separators:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"


def _separators(message: str) -> Separators:
    if not message.startswith("MSH") or len(message) < 8:
        raise ValueError("an HL7 v2 message starts with an MSH segment")
    return Separators(message[3], message[4], message[5])


def deidentify_message(message: str, pseudonyms: Pseudonyms, *, keep_dates_shifted: bool = False) -> str:
    """The message with PID, NK1 and PV1 de-identified and free text cleaned. Dates of birth,
    death, admission and discharge are shifted by the patient's keyed offset when
    ``keep_dates_shifted`` (Retain Longitudinal Modified Dates), emptied otherwise."""
    sep = _separators(message)
    segments = [s for s in message.replace("\n", "\r").split("\r") if s]
    patient_id, name = _patient(segments, sep)
    shift = pseudonyms.day_shift(patient_id)
    known = identifiers_of(patient_id, name.replace(sep.component, " "))
    out = []
    for segment in segments:
        fields = segment.split(sep.field)
        kind = fields[0]
        if kind == "PID":
            _pid(fields, sep, pseudonyms, patient_id, name, keep_dates_shifted, shift)
        elif kind == "NK1":
            fields[2:] = ["" if i != 3 else f for i, f in enumerate(fields[2:], start=2)]
        elif kind == "PV1":
            for i in range(1, len(fields)):
                if i in _PV1_EMPTY:
                    fields[i] = ""
                elif i in _PV1_KEYED and fields[i]:
                    fields[i] = pseudonyms.text("hl7-visit", fields[i], 16)
                elif i in _PV1_DATES:
                    fields[i] = _date(fields[i], keep_dates_shifted, shift)
        elif kind == "OBX" and len(fields) > 5 and fields[2] in _TEXT_TYPES:
            fields[5] = clean_text(fields[5], known)
        elif kind == "NTE" and len(fields) > 3:
            fields[3] = clean_text(fields[3], known)
        out.append(sep.field.join(fields))
    return "\r".join(out) + "\r"


def _patient(segments: list[str], sep: Separators) -> tuple[str, str]:
    for segment in segments:
        fields = segment.split(sep.field)
        if fields[0] == "PID":
            ident = fields[3].split(sep.repetition)[0].split(sep.component)[0] if len(fields) > 3 else ""
            name = fields[5].split(sep.repetition)[0] if len(fields) > 5 else ""
            return ident, name
    return "", ""


def _pid(fields: list[str], sep: Separators, pseudonyms: Pseudonyms, patient_id: str, name: str,
         keep_dates: bool, shift: timedelta) -> None:
    for i in range(1, len(fields)):
        if i in (2, 3) and fields[i]:
            # CX: only the ID (component 1) is kept, pseudonymous; the same as in DICOM.
            fields[i] = sep.repetition.join(pseudonyms.patient_id(r.split(sep.component)[0])
                                            for r in fields[i].split(sep.repetition))
        elif i == 5 and fields[i]:
            # XPN family^given^middle^suffix^prefix is DICOM's PN order: the same pseudonym as in DICOM.
            dicom_name = sep.component.join(name.split(sep.component)[:5]).replace(sep.component, "^")
            fields[i] = pseudonyms.patient_name(patient_id, dicom_name)
        elif i == 18 and fields[i]:
            fields[i] = pseudonyms.text("hl7-account", fields[i].split(sep.component)[0], 16)
        elif i in _PID_EMPTY:
            fields[i] = ""
        elif i in _PID_DATES:
            fields[i] = _date(fields[i], keep_dates, shift)


def _date(value: str, keep: bool, shift: timedelta) -> str:
    """A TS/DT value (YYYYMMDD[HHMM[SS]]...) moved back, or emptied."""
    if not value or not keep:
        return ""
    moved = shift_da(value[:8], shift)
    return "" if moved is None else moved + value[8:]
