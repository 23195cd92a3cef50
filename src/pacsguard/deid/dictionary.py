"""The VRs (PS3.6 2026c, Table 6-1) of the attributes the project's Table E.1-1 lists that pydicom's
data dictionary does not know yet (pydicom 3.0.2 lacks 25 of 2026c's). In an implicit VR file
(PS3.5 7.1.3) an attribute's VR comes only from the dictionary: without these, pydicom reads such
an attribute as UN bytes, and the engine could neither clean a text nor walk a sequence's items."""

from __future__ import annotations

from pydicom.datadict import dictionary_VR

NEWER_VRS: dict[int, str] = {
    0x00081301: "SQ",  # Principal Diagnosis Code Sequence
    0x00081302: "SQ",  # Primary Diagnosis Code Sequence
    0x00081303: "SQ",  # Secondary Diagnoses Code Sequence
    0x00081304: "SQ",  # Histological Diagnoses Code Sequence
    0x00100011: "SQ",  # Person Names to Use Sequence
    0x00100012: "LT",  # Name to Use
    0x00100013: "UT",  # Name to Use Comment
    0x00100014: "SQ",  # Third Person Pronouns Sequence
    0x00100015: "SQ",  # Pronoun Code Sequence
    0x00100016: "UT",  # Pronoun Comment
    0x00100041: "SQ",  # Gender Identity Sequence
    0x00100042: "UT",  # Sex Parameters for Clinical Use Category Comment
    0x00100043: "SQ",  # Sex Parameters for Clinical Use Category Sequence
    0x00100044: "SQ",  # Gender Identity Code Sequence
    0x00100045: "UT",  # Gender Identity Comment
    0x00100046: "SQ",  # Sex Parameters for Clinical Use Category Code Sequence
    0x00100047: "UR",  # Sex Parameters for Clinical Use Category Reference
    0x00102162: "UC",  # Ethnic Groups
    0x0040A034: "DT",  # Effective Start DateTime
    0x0040A035: "DT",  # Effective Stop DateTime
    0x0040B034: "DT",  # Annotation DateTime
    0x0040B036: "DT",  # Segment Definition DateTime
    0x0040B03B: "LT",  # Montage Name
    0x0040B03F: "LO",  # Montage Channel Label
    0x0040E012: "UR",  # Display URI
}


def known_vr(tag: int) -> str | None:
    """The VR of a public attribute from pydicom's dictionary or NEWER_VRS (the first of an
    ambiguous "US or SS"); None when neither knows it."""
    try:
        return str(dictionary_VR(tag)).split(" or ")[0]
    except KeyError:
        return NEWER_VRS.get(tag)
