"""Replacement values consistent with each VR (PS3.5 6.2): the dummies of action D, the cleaning
of action C for text (PS3.15 E.1.1), and the empty values of action Z."""

from __future__ import annotations

import re
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


def empty(vr: str) -> Any:
    if vr == "SQ":
        return []
    if vr in _BINARY:
        return b""
    return "" if vr in _TEXT else None


def is_text(vr: str) -> bool:
    return vr in _TEXT


_WORD = re.compile(r"[^\s^,;:/\\()\[\]]+")


def clean_text(value: str, identifiers: frozenset[str]) -> str:
    """C for free text: words that are, or hold, a known identifier (a name part, an ID) and words
    with four or more digits (dates, numbers) become 'X'; the rest keeps its meaning."""
    def scrub(match: re.Match[str]) -> str:
        word = match.group(0)
        low = word.lower()
        if sum(ch.isdigit() for ch in word) >= 4 or any(i in low for i in identifiers):
            return "X"
        return word

    return _WORD.sub(scrub, value)


def identifiers_of(*values: str) -> frozenset[str]:
    """The lower-case parts (three characters or more) of names and IDs, for clean_text."""
    parts: set[str] = set()
    for value in values:
        for part in re.split(r"[\s^=,.\-]+", value.lower()):
            if len(part) >= 3:
                parts.add(part)
    return frozenset(parts)
