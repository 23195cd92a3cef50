"""Replacement values consistent with each VR (PS3.5 6.2): the dummies of action D, the cleaning
of action C for text (PS3.15 E.1.1), and the empty values of action Z."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

#: D: "a non-zero length value that may be a dummy value and consistent with the VR".
_DUMMY: dict[str, Any] = {
    "AE": "ANONYMOUS", "AS": "000D", "CS": "ANONYMOUS", "DA": "19000101", "DS": "0",
    "DT": "19000101000000", "IS": "0", "LO": "ANONYMOUS", "LT": "ANONYMOUS", "PN": "ANONYMOUS",
    "SH": "ANONYMOUS", "ST": "ANONYMOUS", "TM": "000000", "UC": "ANONYMOUS", "UT": "ANONYMOUS",
    "UR": "http://example.invalid/", "FL": 0.0, "FD": 0.0, "SL": 0, "SS": 0, "SV": 0, "UL": 0,
    "US": 0, "UV": 0, "AT": 0,
}
_BINARY = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_TEXT = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI",
                   "UR", "UT"})


def dummy(vr: str) -> Any:
    if vr in _BINARY:
        return b"\0\0"
    return _DUMMY.get(vr, "ANONYMOUS")


def _blank_pdf() -> bytes:
    """One empty page (PDF 1.4, ISO 32000-1 7.5): header, three objects, a cross-reference table
    whose offsets are computed here, trailer."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>"]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % at for at in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out) + b"\n" * (len(out) % 2)  # OB values have even length (PS3.5 7.1.1)


#: D for Encapsulated Document (0042,0011): a document of its MIME Type (0042,0012), as PS3.3
#: C.24.2.1 requires ("encoded according to the MIME Type"). Two NUL bytes under application/pdf are
#: no PDF: readers fail on it and a scanner (pacsguard's own) calls it a disguised payload.
_DUMMY_DOCUMENTS: dict[str, bytes] = {
    "application/pdf": _blank_pdf(),
    "text/xml": b'<?xml version="1.0" encoding="UTF-8"?>\n<ClinicalDocument xmlns="urn:hl7-org:v3"/>\n',
    "model/stl": b"solid ANONYMOUS\nendsolid ANONYMOUS\n",
}


def dummy_document(mime_type: str) -> bytes:
    """The D dummy of Encapsulated Document for ``mime_type`` (two NULs for a type not listed)."""
    document = _DUMMY_DOCUMENTS.get(mime_type.strip().lower())
    return document if document is not None else bytes(dummy("OB"))


def empty(vr: str) -> Any:
    if vr == "SQ":
        return []
    if vr in _BINARY:
        return b""
    return "" if vr in _TEXT else None


def is_text(vr: str) -> bool:
    return vr in _TEXT


_WORD = re.compile(r"[^\s^,;:/\\()\[\]]+")
#: What joins parts inside a word: an apostrophe (straight or typographic: "Li's", "O'Neil") or a
#: hyphen ("Wu-Li"). A short name part is a whole word between them as much as between spaces.
_JOINERS = re.compile(r"['\u2019\u02bc\-\u2010\u2011]+")


def clean_text(value: str, identifiers: frozenset[str]) -> str:
    """C for free text (PS3.15 E.3.5): words that are, or hold, a known identifier (a name part, an
    ID) and words with four or more digits (dates, numbers) become 'X'; the rest keeps its meaning.

    An identifier of three characters or more is looked for inside words; a shorter one ("Li",
    "Wu") only as a whole word, or a whole part of a word joined by an apostrophe or a hyphen
    ("Li's", "Wu-Li"), so that it does not take ordinary words with it. A part written in a
    script without spaces inside a name (kanji, hanzi, kana, Hangul: "山田", "王", "홍", "길동") is
    looked for inside words whatever its length, and only that part becomes 'X' ("山田太郎胸部CT"
    -> "XX胸部CT", "홍길동님" -> "XXX님")."""
    long = tuple(_fold(i) for i in identifiers if len(i) >= 3 and not _unspaced(i))
    short = frozenset(_fold(i) for i in identifiers if len(i) < 3 and not _unspaced(i))
    unspaced = sorted((i for i in identifiers if _unspaced(i)), key=len, reverse=True)

    def scrub(match: re.Match[str]) -> str:
        word = match.group(0)
        low = _fold(word)
        if sum(ch.isdigit() for ch in word) >= 4 or _holds_short(low, short) or any(i in low for i in long):
            return "X"
        for part in unspaced:
            word = word.replace(part, "X" * len(part))
        return word

    return _WORD.sub(scrub, value)


def _fold(text: str) -> str:
    """``text`` as it is compared with name parts: its accents dropped (Unicode NFKD, combining
    marks removed) and case folded, so that a name part matches however a description spells it:
    "Zébulon" is "Zebulon" and "ZEBULON", in composed or decomposed form (NFC or NFD, a Mac's
    text), "Strauß" is "STRAUSS". Staff typing a note often leave accents out; the name in PN
    keeps them, and before, "CT for Zebulon" kept the first name of patient Quixote^Zébulon."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def _holds_short(word: str, short: frozenset[str]) -> bool:
    """True if the word, or one of its parts between apostrophes and hyphens, is a short
    identifier."""
    return word in short or any(part in short for part in _JOINERS.split(word))


def _unspaced(part: str) -> bool:
    """True for text in a script whose names are written without spaces between their parts
    (PS3.5 6.1.2.5.3 names in ideographic and phonetic groups; PS3.5 Annex I, Korean): CJK
    ideographs, kana, Hangul (syllables, jamo, compatibility jamo) and their full- and half-width
    forms. Korean spaces words, yet writes a full name as one ("홍길동", "홍길동님")."""
    return any(unicodedata.name(ch, "").startswith(_UNSPACED_SCRIPTS) for ch in part)


_UNSPACED_SCRIPTS = ("CJK", "HIRAGANA", "KATAKANA", "HALFWIDTH KATAKANA", "IDEOGRAPHIC", "HANGUL",
                     "HALFWIDTH HANGUL")


def identifiers_of(*values: str) -> frozenset[str]:
    """The lower-case parts of names and IDs, for clean_text (every part, however short: a
    Chinese or Japanese name part is often one or two characters)."""
    parts: set[str] = set()
    for value in values:
        for part in re.split(r"[\s^=,.\-]+", value.lower()):
            if part:
                parts.add(part)
    return frozenset(parts)
