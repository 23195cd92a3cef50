"""The action codes of PS3.15 E.1.1 (Table E.1-1's legend) and the one effect each has here.

The combined codes leave the choice to IOD conformance ("X unless Z is required ..."). Without
the IOD's type for the attribute this module takes the choice that keeps the attribute present
(so no Type 1 or 2 attribute goes missing, which dciodvfy would report), with the least
information: X/Z -> Z, X/D and Z/D and X/Z/D -> D, X/Z/U* -> keep the sequence and treat the
UIDs inside it (U).
"""

from __future__ import annotations

from enum import Enum


class Effect(str, Enum):
    REMOVE = "remove"  # X
    EMPTY = "empty"  # Z: zero length
    DUMMY = "dummy"  # D: a non-zero length value consistent with the VR, no information
    KEEP = "keep"  # K: unchanged; a sequence's items are still de-identified
    CLEAN = "clean"  # C: a value of similar meaning without identifying information
    UID = "uid"  # U: a keyed replacement UID, consistent across instances
    ITEMS = "items"  # X/Z/U*: keep the sequence, de-identify the items it holds


_EFFECTS = {
    "X": Effect.REMOVE,
    "Z": Effect.EMPTY,
    "D": Effect.DUMMY,
    "K": Effect.KEEP,
    "C": Effect.CLEAN,
    "U": Effect.UID,
    "X/Z": Effect.EMPTY,
    "X/D": Effect.DUMMY,
    "Z/D": Effect.DUMMY,
    "X/Z/D": Effect.DUMMY,
    "X/Z/U*": Effect.ITEMS,
}

CODES = frozenset(_EFFECTS)


def effect(code: str) -> Effect:
    """What an action code does (PS3.15 E.1.1); a code the table does not define is an error."""
    try:
        return _EFFECTS[code]
    except KeyError:
        raise ValueError(f"unknown PS3.15 Table E.1-1 action code {code!r}") from None
