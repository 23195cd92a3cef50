"""The value representations of PS3.5 Table 6.2-1, as their two-letter codes, and those whose
explicit VR header has a reserved word and a 32-bit length (PS3.5 7.1.2, Table 7.1-1)."""

from __future__ import annotations

from typing import Final

LONG_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
VRS: Final = LONG_VRS | frozenset({"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "PN",
                                   "SH", "SL", "SS", "ST", "TM", "UI", "UL", "US"})
