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
    try:
        _text(value, terms, vr)
    except _Bad as bad:
        return str(bad)
    return ""


def _text(value: bytes, terms: list[str], vr: str) -> str:
    """``value`` decoded strictly in ``terms``; raises _Bad, saying why, when it does not decode."""
    first = terms[0] if terms else ""
    extended = len(terms) > 1 or first in _EXTENDED
    if b"\x1b" in value and not extended:
        at = value.index(b"\x1b")
        raise _Bad(f"holds an ISO 2022 escape sequence (byte {at}: {_escape_at(value, at)}), which only a "
                   "Specific Character Set with code extensions allows (PS3.5 6.1.2.5.3)")
    base = _base_codec(terms)
    if not extended:
        return _decode(value, base, 0)
    codecs = {_EXTENDED[t] for t in terms if t in _EXTENDED}
    delims = TEXT_VR_DELIMS | {0x5C} if vr != "PN" else TEXT_VR_DELIMS | _PN_DELIMS
    parts, at = [], 0  # where the fragment starts in the value, for the message
    for fragment in _FRAGMENTS.findall(value):
        start, at = at, at + len(fragment)
        if not fragment.startswith(b"\x1b"):
            parts.append(_decode(fragment, base, start))
            continue
        size = 4 if fragment.startswith((b"\x1b$(", b"\x1b$)")) else 3
        term = _ESCAPES.get(fragment[:size])
        if term is None or (term != "ISO 2022 IR 6" and _EXTENDED[term] not in codecs):
            raise _Bad(f"holds an escape sequence to {term or 'a set DICOM does not define'} "
                       f"({_escape_at(value, value.index(fragment))}), a set not declared (PS3.5 6.1.2.5.3)")
        codec = _EXTENDED[term]
        if codec in _SELF_ESCAPING:
            parts.append(_decode(fragment, codec, start))
            continue
        body = fragment[size:]
        # A delimiter ends what an escape sequence designated (PS3.5 6.1.2.5.3): the first set again.
        cut = next((i for i, b in enumerate(body) if b in delims), len(body))
        parts.append(_decode(body[:cut], codec, start + size))
        parts.append(_decode(body[cut:], base, start + size + cut))
    return "".join(parts)


def _base_codec(terms: list[str]) -> str:
    """The codec of value 1 of (0008,0005): the set in use at the start of every value."""
    first = terms[0] if terms else ""
    return "ascii" if not first else (_EXTENDED.get(first) or _PLAIN.get(first) or _STAND_ALONE[first])


def _decode(data: bytes, codec: str, start: int) -> str:
    """Decode strictly; ``start`` is where ``data`` begins in its value."""
    try:
        return data.decode(codec)
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


# -- sets pydicom does not know ---------------------------------------------------------------
# ISO_IR 203 (ISO 8859-15, Latin-9: the euro sign, Š, Ž, Œ, Ÿ), a defined term of PS3.3 Table
# C.12-2 since 2021, is not in pydicom's tables: pydicom reads it as Latin-1 (¤ for €, ¦ for Š)
# and writes what it cannot encode in Latin-1 with replacement characters. A name compared
# misread ("¦imon" is no "Simon") stays in free text. The data sets that declare such a set have
# their text decoded here, with the codecs above, and encoded back here before they are written;
# pydicom's own tables are left as they are.

#: The escape sequence of each single-byte set of code extensions, by term (Tables C.12-3, C.12-4).
_DESIGNATE = {term: esc for esc, term in _ESCAPES.items() if len(esc) == 3}
#: The VRs of one value only (PS3.5 6.2: a backslash in them is text).
_SINGLE_VALUED = frozenset({"ST", "LT", "UT"})


def _own(terms: list[str] | None) -> bool:
    """True when pydicom does not know one of ``terms`` (this module reads and writes the text)."""
    from pydicom.charset import python_encoding

    return bool(terms) and any(t and t not in python_encoding for t in terms or ())


def decode_own_sets(ds: Dataset, inherited: list[str] | None = None) -> None:
    """Decode, with this module's codecs, every undecoded text value of each data set (items
    included) whose Specific Character Set pydicom does not know; check() has found them valid."""
    declared = _declared(ds)
    terms = inherited if declared is None else declared
    own = _own(terms)
    for tag in list(ds.keys()):
        elem = ds.get_item(tag)
        vr = _vr(elem)
        if vr == "SQ" and not isinstance(elem, RawDataElement):
            for item in elem.value or ():
                decode_own_sets(item, terms)
        elif own and vr in TEXT_VRS and isinstance(elem, RawDataElement) and elem.value:
            text = _text(bytes(elem.value), terms or [], vr)
            ds[tag] = DataElement(tag, vr, _values(text, vr))


def _values(text: str, vr: str) -> str | list[str]:
    """Decoded text as pydicom holds it: values split at backslashes (not ST, LT, UT), trailing
    spaces and NULs (padding, PS3.5 6.2) gone."""
    if vr in _SINGLE_VALUED:
        return text.rstrip("\0 ")
    values = [v.rstrip("\0 ") for v in text.split("\\")]
    return values if len(values) > 1 else values[0]


def encode_own_sets(ds: Dataset, inherited: list[str] | None = None) -> None:
    """Encode, with this module's codecs, every decoded text value of each data set (items
    included) whose Specific Character Set pydicom does not know, so pydicom writes the bytes
    as they are. Raises ValueError naming the element when a value has a character the declared
    sets do not hold."""
    declared = _declared(ds)
    terms = inherited if declared is None else declared
    own = _own(terms)
    for tag in list(ds.keys()):
        elem = ds.get_item(tag)
        if isinstance(elem, RawDataElement):
            continue
        if elem.VR == "SQ":
            for item in elem.value or ():
                encode_own_sets(item, terms)
        elif own and elem.VR in TEXT_VRS and not elem.is_empty:
            data = _encoded(elem, terms or [])
            ds._dict[tag] = RawDataElement(tag, elem.VR, len(data), data, 0, False, True)


def _encoded(elem: DataElement, terms: list[str]) -> bytes:
    """One element's value in ``terms``: in value 1's set where it can be, else, with code
    extensions, each run between delimiters in the first declared single-byte set that holds it,
    after the escape sequence designating it (PS3.5 6.1.2.5.3); padded to even length."""
    value = elem.value
    values = [str(v) for v in value] if elem.VM > 1 else [str(value)]
    text = "\\".join(values)
    base = _base_codec(terms)
    try:
        data = text.encode(base)
    except UnicodeEncodeError:
        data = _with_escapes(text, terms, elem)
    return data + b" " * (len(data) & 1)


def _with_escapes(text: str, terms: list[str], elem: DataElement) -> bytes:
    delims = "\\^=" if elem.VR == "PN" else "\\\r\n\t\f"
    base = _base_codec(terms)
    out, run = [], ""
    for char in text + "\0":  # a NUL ends the last run
        if char not in delims and char != "\0":
            run += char
            continue
        out.append(_run(run, base, terms, elem))
        run = ""
        if char != "\0":
            out.append(char.encode("ascii"))
    return b"".join(out)


def _run(run: str, base: str, terms: list[str], elem: DataElement) -> bytes:
    """One run of text between delimiters, in value 1's set or after an escape to another."""
    try:
        return run.encode(base)
    except UnicodeEncodeError:
        pass
    for term in terms[1:]:
        escape = _DESIGNATE.get(term)
        if escape is None:
            continue
        try:
            return escape + run.encode(_EXTENDED[term])
        except UnicodeEncodeError:
            continue
    raise ValueError(f"{_name(elem.tag)} holds text that cannot be written in Specific Character Set "
                     f"(0008,0005) {_shown(terms)} (PS3.5 6.1.2.5)")


# -- sequences read late ----------------------------------------------------------------------
# A sequence encoded as UN (a private one, or one newer than pydicom's dictionary: PS3.5 6.2.2)
# is parsed by the engine only when it is kept, long after check() and decode_own_sets() ran
# over the data set. pydicom decodes its text with the encodings it knows: Latin-1 for ISO_IR
# 203 (Š as ¦, so a name inside was compared misread and the object then failed to be written)
# and replacement characters for bytes invalid in the declared set. Its items are checked and
# decoded here too, under the Specific Character Set in force where the sequence is.


def terms_in(ds: Dataset, inherited: list[str] | None) -> list[str] | None:
    """The Specific Character Set in force in ``ds``: its own (0008,0005), else the enclosing
    data set's (``inherited``; PS3.5 6.1.2.5.1, an item without one uses its parent's)."""
    declared = _declared(ds)
    return inherited if declared is None else declared


def read_late_items(items: list[Dataset], inherited: list[str] | None, where: str) -> str:
    """Check and decode, as check() and decode_own_sets() do for the rest of the object, the
    items of a sequence parsed after the object was read (one encoded as UN), in the Specific
    Character Set ``inherited`` from where it stands. '' when every text value is valid, else
    what is wrong, the sequence named by ``where``."""
    for n, item in enumerate(items, 1):
        wrong = _check(item, inherited, f"{where}, item {n}: ")
        if wrong:
            return wrong
        decode_own_sets(item, inherited)
    return ""
