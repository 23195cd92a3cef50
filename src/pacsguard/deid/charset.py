"""Text in the character set its object declares, or the object is withheld (issue 20: wrong
character sets). Specific Character Set (0008,0005) says how the bytes of SH, LO, ST, LT, UT, PN
and UC values are to be read (PS3.5 6.1.2.5, PS3.3 C.12.1.1.2); pydicom reads bytes it cannot
decode with replacement characters and one it does not know in Latin-1, so the engine compared a
name with text it had misread (a name left in a description) and wrote the object out as valid.

What is checked, in the data set and in every item (an item's own (0008,0005) applies inside it):
- each value of (0008,0005) is a defined term of PS3.3 Tables C.12-2 to C.12-5, and a multi-valued
  one uses code extensions (ISO 2022 terms, value 1 may be empty) and none of ISO_IR 192, GB18030
  and GBK, which PS3.5 6.1.2.5.4 (d) does not allow with code extensions;
- every text value decodes, strictly, in the declared set: valid UTF-8 under ISO_IR 192 (Annex
  J), valid GB18030 and GBK, and escape sequences (PS3.5 6.1.2.5.3, Annexes H, I, K) only where
  code extensions are declared and only to a set (0008,0005) declares;
- without (0008,0005), or with it empty, text is in the default repertoire (PS3.5 6.1.2.1, ASCII):
  a byte above 0x7F means the sender wrote another set and did not say which. Such a value is
  read by guess (pydicom guesses Latin-1), so the file is withheld, naming the set it probably
  meant (ISO_IR 192 when the bytes are valid UTF-8, else ISO_IR 100), which the administrator can
  set with dcmodify."""

from __future__ import annotations

import re

from pydicom.datadict import dictionary_description, dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.valuerep import TEXT_VR_DELIMS

#: The VRs whose values are decoded with the Specific Character Set (PS3.5 6.1.2.3).
TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "PN", "UC"})

#: Defined terms without code extensions (PS3.3 Tables C.12-2 and C.12-5) and their Python codecs.
#: ISO_IR 6 is no defined term, but a common way of writing the default repertoire: read as ASCII.
_PLAIN = {
    "ISO_IR 6": "ascii",
    "ISO_IR 100": "latin_1", "ISO_IR 101": "iso8859_2", "ISO_IR 109": "iso8859_3",
    "ISO_IR 110": "iso8859_4", "ISO_IR 144": "iso8859_5", "ISO_IR 127": "iso8859_6",
    "ISO_IR 126": "iso8859_7", "ISO_IR 138": "iso8859_8", "ISO_IR 148": "iso8859_9",
    "ISO_IR 203": "iso8859_15", "ISO_IR 13": "shift_jis", "ISO_IR 166": "tis_620",
}
#: Multi-byte sets without code extensions (Table C.12-5): never with another value.
_STAND_ALONE = {"ISO_IR 192": "utf_8", "GB18030": "gb18030", "GBK": "gbk"}
#: Defined terms with code extensions (Tables C.12-3, C.12-4) and their codecs.
_EXTENDED = {
    "ISO 2022 IR 6": "ascii",
    **{f"ISO 2022 IR {t.removeprefix('ISO_IR ')}": c for t, c in _PLAIN.items() if t != "ISO_IR 6"},
    "ISO 2022 IR 87": "iso2022_jp", "ISO 2022 IR 159": "iso2022_jp_2",
    "ISO 2022 IR 149": "euc_kr", "ISO 2022 IR 58": "gb2312",
}
#: The escape sequence that designates each set (Tables C.12-3, C.12-4) and its term.
_ESCAPES = {
    b"\x1b(B": "ISO 2022 IR 6", b"\x1b(J": "ISO 2022 IR 13", b"\x1b)I": "ISO 2022 IR 13",
    b"\x1b-A": "ISO 2022 IR 100", b"\x1b-B": "ISO 2022 IR 101", b"\x1b-C": "ISO 2022 IR 109",
    b"\x1b-D": "ISO 2022 IR 110", b"\x1b-L": "ISO 2022 IR 144", b"\x1b-G": "ISO 2022 IR 127",
    b"\x1b-F": "ISO 2022 IR 126", b"\x1b-H": "ISO 2022 IR 138", b"\x1b-M": "ISO 2022 IR 148",
    b"\x1b-b": "ISO 2022 IR 203", b"\x1b-T": "ISO 2022 IR 166", b"\x1b$B": "ISO 2022 IR 87",
    b"\x1b$(D": "ISO 2022 IR 159", b"\x1b$)C": "ISO 2022 IR 149", b"\x1b$)A": "ISO 2022 IR 58",
}
#: Codecs that read their own escape sequences (the multi-byte sets of Annexes H and K).
_SELF_ESCAPING = frozenset({"iso2022_jp", "iso2022_jp_2"})
_FRAGMENTS = re.compile(b"(^[^\x1b]+|\x1b[^\x1b]*)")
_PN_DELIMS = frozenset(b"^=\\")


class _Bad(Exception):
    """What is wrong with a value, in words for the administrator."""


def check(ds: Dataset) -> str:
    """'' when every text value of ``ds`` (items included) is in its declared character set, else
    what is wrong and where, naming (0008,0005) as declared."""
    return _check(ds, None, "")


def _check(ds: Dataset, inherited: list[str] | None, where: str) -> str:
    declared = _declared(ds)
    terms = inherited if declared is None else declared
    if declared is not None:
        wrong = _terms_wrong(declared)
        if wrong:
            return f"{where}Specific Character Set (0008,0005) is {_shown(declared)}: {wrong}"
    for tag in ds.keys():
        elem = ds.get_item(tag)
        vr = _vr(elem)
        if vr == "SQ":
            if isinstance(elem, RawDataElement):
                try:
                    elem = ds[tag]  # an item's text can only be checked once it is read
                except Exception:  # noqa: BLE001 - read_whole has read every sequence; the engine names this one
                    continue
            for n, item in enumerate(elem.value or (), 1):
                inner = _check(item, terms, f"{where}item {n} of {_name(tag)}: ")
                if inner:
                    return inner
            continue
        if vr not in TEXT_VRS or not isinstance(elem, RawDataElement) or not elem.value:
            continue  # a value already decoded (by the code that built the data set) is text
        problem = _undecodable(bytes(elem.value), terms or [], vr)
        if problem:
            return f"{where}{_name(tag)} {problem}, {_against(terms)}{_meant(bytes(elem.value), terms)}"
    return ""


def _declared(ds: Dataset) -> list[str] | None:
    """The values of this data set's own (0008,0005), read from its bytes; None without one."""
    elem = ds.get_item(0x00080005)
    if elem is None:
        return None
    value = elem.value
    if isinstance(value, bytes | bytearray):
        text = bytes(value).decode("latin-1")
        return [v.strip(" \0") for v in text.split("\\")] if text.strip(" \0") else []
    if isinstance(elem, DataElement) and elem.VM > 1:
        return [str(v).strip() for v in value]
    return [str(value).strip()] if value and str(value).strip() else []


def _terms_wrong(terms: list[str]) -> str:
    """Why these values are not a Specific Character Set PS3.3 C.12.1.1.2 defines, or ''."""
    for term in terms:
        if term and term not in _PLAIN and term not in _STAND_ALONE and term not in _EXTENDED:
            return (f"{term!r} is no defined term of PS3.3 C.12.1.1.2 (Tables C.12-2 to C.12-5)"
                    f"{_perhaps(term)}: its text cannot be read")
    if len(terms) > 1:
        for term in terms:
            if term in _STAND_ALONE:
                return (f"{term!r} is combined with other values, which PS3.5 6.1.2.5.4 (d) does not allow: "
                        f"{term} is used without code extensions, as the only value")
        for n, term in enumerate(terms):
            if term and term not in _EXTENDED:
                return (f"value {n + 1}, {term!r}, is a term without code extensions in a multi-valued "
                        "Specific Character Set, whose values must all be ISO 2022 terms (PS3.3 C.12.1.1.2, "
                        "PS3.5 6.1.2.5.3)")
    return ""


def _perhaps(term: str) -> str:
    """The defined term a misspelt one probably means ('ISO-IR 100', 'iso_ir100', 'UTF-8')."""
    plain = re.sub(r"[^A-Z0-9]", "", term.upper())
    if plain in ("UTF8", "UTF", "UNICODE"):
        return " (ISO_IR 192 is UTF-8)"
    for known in (*_PLAIN, *_STAND_ALONE, *_EXTENDED):
        if re.sub(r"[^A-Z0-9]", "", known) == plain:
            return f" (perhaps {known!r} was meant)"
    return ""


def _undecodable(value: bytes, terms: list[str], vr: str) -> str:
    """Why ``value`` does not decode in ``terms`` (the values of (0008,0005)), or ''."""
    first = terms[0] if terms else ""
    extended = len(terms) > 1 or first in _EXTENDED
    if b"\x1b" in value and not extended:
        at = value.index(b"\x1b")
        return (f"holds an ISO 2022 escape sequence (byte {at}: {_escape_at(value, at)}), which only a "
                "Specific Character Set with code extensions allows (PS3.5 6.1.2.5.3)")
    base = "ascii" if not first else (_EXTENDED.get(first) or _PLAIN.get(first) or _STAND_ALONE[first])
    codecs = {_EXTENDED[t] for t in terms if t in _EXTENDED}
    delims = TEXT_VR_DELIMS | {0x5C} if vr != "PN" else TEXT_VR_DELIMS | _PN_DELIMS
    try:
        at = 0  # where the fragment starts in the value, for the message
        for fragment in _FRAGMENTS.findall(value) if extended else [value]:
            start, at = at, at + len(fragment)
            if not fragment.startswith(b"\x1b"):
                _decode(fragment, base, start)
                continue
            size = 4 if fragment.startswith((b"\x1b$(", b"\x1b$)")) else 3
            term = _ESCAPES.get(fragment[:size])
            if term is None or (term != "ISO 2022 IR 6" and _EXTENDED[term] not in codecs):
                return (f"holds an escape sequence to {term or 'a set DICOM does not define'} "
                        f"({_escape_at(value, value.index(fragment))}), a set not declared "
                        "(PS3.5 6.1.2.5.3)")
            codec = _EXTENDED[term]
            if codec in _SELF_ESCAPING:
                _decode(fragment, codec, start)
                continue
            body = fragment[size:]
            # A delimiter ends what an escape sequence designated (PS3.5 6.1.2.5.3): the first set again.
            cut = next((i for i, b in enumerate(body) if b in delims), len(body))
            _decode(body[:cut], codec, start + size)
            _decode(body[cut:], base, start + size + cut)
    except _Bad as bad:
        return str(bad)
    return ""


def _decode(data: bytes, codec: str, start: int) -> None:
    """Decode strictly; ``start`` is where ``data`` begins in its value."""
    try:
        data.decode(codec)
    except UnicodeDecodeError as exc:
        byte = data[exc.start]
        if codec == "ascii":
            raise _Bad(f"has a byte above 0x7F (0x{byte:02X} at byte {start + exc.start} of the value) outside "
                       "the default repertoire") from None
        # The byte and where, never the text around it: the reason goes to the manifest and the audit
        # store, and the text is most likely a name.
        raise _Bad(f"has bytes that are not valid {_CODEC_NAMES.get(codec, codec)} (0x{byte:02X} at byte "
                   f"{start + exc.start} of the value)") from None


_CODEC_NAMES = {"utf_8": "UTF-8", "gb18030": "GB18030", "gbk": "GBK", "gb2312": "GB2312", "euc_kr": "KS X 1001",
                "iso2022_jp": "JIS X 0208", "iso2022_jp_2": "JIS X 0212", "shift_jis": "JIS X 0201"}


def _escape_at(value: bytes, at: int) -> str:
    """The escape sequence at ``at`` as written in PS3.3 Tables C.12-3/4 (ESC $ B is JIS X 0208)."""
    size = 3 if value[at + 1:at + 3] in (b"$(", b"$)") else 2
    return "ESC " + value[at + 1:at + 1 + size].decode("latin-1")


def _against(terms: list[str] | None) -> str:
    """The declared set, for the message; without one, which set the sender probably meant."""
    if terms:
        return f"in Specific Character Set (0008,0005) {_shown(terms)} (PS3.5 6.1.2.5)"
    declared = "empty" if terms is not None else "absent"
    return (f"while Specific Character Set (0008,0005) is {declared}, so text is ASCII (PS3.5 6.1.2.1)")


def _meant(value: bytes, terms: list[str] | None) -> str:
    """Without a declared set, the one the sender probably wrote: UTF-8 rarely decodes by chance,
    and Latin-1 (ISO_IR 100) is what older Western European modalities wrote without saying so."""
    if terms:
        return ""
    try:
        value.decode("utf_8")
        meant = "ISO_IR 192"
    except UnicodeDecodeError:
        meant = "ISO_IR 100"
    return (f"; the sender probably meant {meant} (set it with dcmodify -i "
            f"\"(0008,0005)={meant}\" after checking the text reads right)")


def _shown(terms: list[str]) -> str:
    return "'" + "\\".join(terms) + "'"  # as written, backslashes between values (PS3.5 6.4)


def _vr(elem: DataElement | RawDataElement) -> str:
    """The element's VR; an implicit VR one's, or a public UN one's, from the dictionary."""
    vr = elem.VR
    if vr is None or vr == "UN":
        try:
            return str(dictionary_VR(elem.tag))
        except KeyError:
            return "UN"
    return str(vr)


def _name(tag: BaseTag) -> str:
    try:
        label = f" {dictionary_description(tag)}"
    except KeyError:
        label = ""
    return f"({tag.group:04X},{tag.element:04X}){label}"
