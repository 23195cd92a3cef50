"""Keyed pseudonyms (HMAC-SHA256, RFC 2104 with FIPS 180-4 SHA-256) for the U action of PS3.15
E.1.1, for Patient ID and Patient's Name, and for the per-patient date shift of the Retain
Longitudinal Temporal Information with Modified Dates Option (PS3.15 E.3.6).

The same input under the same key gives the same output in every file, run and gateway; under
another key, an unrelated one. Each kind of value is hashed under its own label, so a UID and a
patient ID that happen to be equal do not get related pseudonyms."""

from __future__ import annotations

import hashlib
import hmac
from datetime import date, datetime, timedelta

#: Dates move back by 1 to 10 years (whole days), the same for every date of one patient.
MIN_SHIFT_DAYS = 365
SHIFT_RANGE_DAYS = 3288


class Pseudonyms:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, label: bytes, value: str) -> bytes:
        return hmac.new(self._secret, label + b"\0" + value.encode("utf-8", "surrogateescape"),
                        hashlib.sha256).digest()

    def uid(self, value: str) -> str:
        """A UID under the 2.25 root (PS3.5 B.2): the decimal of a 128-bit UUID whose bits come from
        the HMAC, version 8 and the RFC 9562 variant set so it is a well-formed UUID. At most 44 characters."""
        n = int.from_bytes(self._mac(b"uid", value.strip("\0 "))[:16], "big")
        n = (n & ~(0xF << 76)) | (0x8 << 76)  # version 8 (custom)
        n = (n & ~(0x3 << 62)) | (0x2 << 62)  # variant 10
        return f"2.25.{n}"

    def patient_id(self, value: str) -> str:
        """A Patient ID (LO): 'PG' and 20 hex digits."""
        return "PG" + self._mac(b"patient-id", value.strip()).hex()[:20].upper()

    def patient_name(self, patient_id: str, name: str) -> str:
        """A Patient's Name (PN) for this patient: the same for every instance of the patient, in
        whichever of the equal forms PS3.5 allows each instance writes the name (_pn_form)."""
        return "ANON^" + self._mac(b"patient-name", patient_id.strip() + "\0" + _pn_form(name)).hex()[:12].upper()

    def text(self, label: str, value: str, length: int = 16) -> str:
        """A short keyed replacement for an identifier (an AE title, a station name): hex, upper case."""
        return self._mac(label.encode(), value.strip()).hex()[:length].upper()

    def day_shift(self, patient_id: str) -> timedelta:
        """How far this patient's dates move back, from the original Patient ID."""
        n = int.from_bytes(self._mac(b"date-shift", patient_id.strip())[:8], "big")
        return timedelta(days=MIN_SHIFT_DAYS + n % SHIFT_RANGE_DAYS)


def patient_key(patient_id: str, name: str, birth_date: str, fallback: str) -> str:
    """What a patient's name pseudonym and date offset (E.3.6) are keyed by: the original Patient
    ID; for an object or message without one, the patient's name with the birth date (both
    needed: either alone is shared by many patients), so that the patient's objects still share
    one offset; without those, ``fallback`` (the Study Instance UID in DICOM, the message control
    ID in HL7), which links nothing beyond it. Keying every ID-less object by the empty ID gave all
    of them one offset and one name key: one date known in one of them revealed the shift of all.
    The substitutes start with a NUL, which no Patient ID (LO, PS3.5 6.2) holds."""
    if patient_id.strip():
        return patient_id
    day = birth_date.strip()[:8]
    if _pn_form(name) and len(day) == 8 and day.isdigit():
        return f"\0name+birth\0{_pn_form(name)}\0{day}"
    return f"\0object\0{fallback.strip(chr(0) + ' ')}"


def _pn_form(name: str) -> str:
    """A PN value without what PS3.5 6.2 (Table 6.2-1, PN) lets a writer leave out: trailing null
    components and their delimiters, and likewise trailing empty component groups, so that
    Doe^John, Doe^John^^^ and Doe^John^^^^== are one name (devices write each; an HL7 XPN
    converted to PN ends in empty components). Interior null components stay: ^John is not John."""
    groups = []
    for group in name.strip().split("="):
        components = group.split("^")
        while components and not components[-1].strip():
            components.pop()
        groups.append("^".join(components))
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)


def shift_da(value: str, shift: timedelta) -> str | None:
    """A DA value (YYYYMMDD, PS3.5 6.2) moved back by ``shift``; None when it is not a full date."""
    text = value.strip()
    try:
        day = datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        return None
    moved = day - shift
    return moved.strftime("%Y%m%d") if moved >= date(1, 1, 1) else None


def shift_dt(value: str, shift: timedelta) -> str | None:
    """A DT value (YYYYMMDDHHMMSS.FFFFFF&ZZXX) with its date part moved back; the time of day,
    fraction and offset stay as they were."""
    text = value.strip()
    if len(text) < 8:
        return None
    moved = shift_da(text[:8], shift)
    return None if moved is None else moved + text[8:]
