"""A PDF's cross-reference sections read for what they say of object streams (ISO 32000-1
7.5.4, 7.5.8): a cross-reference stream's type-2 entry names, for an object stored compressed,
the object number of the object stream that holds it (7.5.8.3, Table 18). A viewer reads an
object stream because such an entry sends it there, whatever the stream's dictionary says; so
the scanner learns the object streams the same way. A classic table (7.5.4) has only type-1 and
free entries ("n" and "f"): it cannot name an object stream, but its trailer can point to a
cross-reference stream (/XRefStm, 7.5.8.4, a hybrid file).

This module only parses: where the sections are (``startxref``, /Prev, /XRefStm, and every
stream whose dictionary says /Type /XRef, as a viewer repairing a file finds them), their
dictionaries read token by token (strings, hex strings, comments and nested dictionaries
skipped as a viewer's parser skips them), and the entries of decoded data. Every loop is
bounded by a ``Budget`` or walks the document once; nothing here raises for its content."""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

#: The offset of the last cross-reference section (7.5.5).
STARTXREF = re.compile(rb"startxref[\x00\t\n\x0c\r ]+([0-9]{1,15})")
#: A cross-reference stream's type (7.5.8.2, Table 17), found anywhere: a repairing viewer's way.
XREF_TYPE = re.compile(rb"/Type[\x00\t\n\x0c\r ]*/XRef\b")
OBJECT_AT = re.compile(rb"[\x00\t\n\x0c\r ]*([0-9]{1,10})[\x00\t\n\x0c\r ]+([0-9]{1,5})[\x00\t\n\x0c\r ]+obj"
                       rb"(?:[\x00\t\n\x0c\r ]|%[^\r\n]*[\r\n])*")
HEAD = re.compile(rb"([0-9]{1,10})[\x00\t\n\x0c\r ]+([0-9]{1,5})[\x00\t\n\x0c\r ]+obj")
#: What a dictionary's parser must not read as structure: a dictionary's ends, a string's or a
#: hex string's start, a comment's start (7.3.4, 7.3.7, 7.2.3).
TOKEN = re.compile(rb"<<|>>|[(<%]")
PAREN = re.compile(rb"[()\\]")
NEWLINE = re.compile(rb"[\r\n]")
#: The keyword after a stream's dictionary (7.3.8.1), white space and comments before it.
KEYWORD = re.compile(rb"(?:[\x00\t\n\x0c\r ]|%[^\r\n]*[\r\n])*stream")
#: The keyword of a classic table, and its trailer's dictionary (7.5.4, 7.5.5).
TABLE = re.compile(rb"[\x00\t\n\x0c\r ]*xref")
TRAILER = re.compile(rb"trailer(?:[\x00\t\n\x0c\r ]|%[^\r\n]*[\r\n])*<<")
NUMBER = {key: re.compile(rb"/" + key + rb"[\x00\t\n\x0c\r ]+([0-9]{1,15})\b")
          for key in (b"Prev", b"XRefStm", b"Size")}
ARRAY = {key: re.compile(rb"/" + key + rb"[\x00\t\n\x0c\r ]*\[([0-9\x00\t\n\x0c\r ]{0,4096})\]")
         for key in (b"W", b"Index")}
#: How far back a /Type /XRef's object is looked for.
MAX_BACK = 4096
#: How far one dictionary is read (7.3.7). A viewer reads a dictionary to its end at any length,
#: so a writer pads one (white space, a long string, array or comment, dummy keys) to hide its
#: /Filter or /Type from a bounded reader: a dictionary longer is said (Budget.said), never passed
#: over in silence. No stream dictionary a writer makes comes near it.
MAX_DICTIONARY = 4 * 1024 * 1024
#: Bytes of a dictionary read free of Budget.reach (as far as every dictionary was read before);
#: past them, all the document's dictionaries together spend the reach (a scan at some 100 MB a
#: second: at most a sixth of a second per pass).
FREE_DICTIONARY = 1024 * 1024
#: Budget.reach: four dictionaries as long as MAX_DICTIONARY in each pass over a document.
MAX_REACH = 16 * 1024 * 1024
#: A trailer is looked for this far after ``xref`` (7.5.4: 20 bytes an entry; the rest is not
#: needed: a table names no object stream).
MAX_TABLE = 64 * 1024 * 1024
#: Budget.table_bytes: bytes searched for the trailers of all the document's classic tables
#: together in a pass, four tables as long as MAX_TABLE. A trailer follows its table closely; ten
#: thousand ``xref`` keywords each searched to the end of a document padded long cost that many
#: times its length.
MAX_TABLE_READ = 4 * MAX_TABLE
#: White space (7.2.2, Table 1), a run of it stepped over before a section's object or table.
WHITE_RUN = re.compile(rb"[\x00\t\n\x0c\r ]*")
#: Per-entry field widths a viewer accepts (7.5.8.2: /W gives bytes; more than 8 is no offset).
MAX_WIDTH = 8


@dataclass(slots=True)
class Budget:
    """What reading one document's cross-reference sections may cost: sections parsed, tokens
    stepped over in their dictionaries, and entries read. ``spent`` says which ran out."""

    sections: int = 10_000
    tokens: int = 1_000_000
    entries: int = 2_000_000
    #: Bytes read past the first FREE_DICTIONARY of each dictionary, the document's all together.
    reach: int = MAX_REACH
    #: Bytes searched for classic tables' trailers (MAX_TABLE_READ), the document's all together.
    table_bytes: int = MAX_TABLE_READ
    spent: list[str] = field(default_factory=list)
    #: Where the ``<<`` of dictionaries that do not end before the document does are: one inside
    #: another that is read later ends it there (it cannot end either), rather than reading the
    #: rest of the document again for each of them.
    unended: set[int] = field(default_factory=set)

    def take(self, what: str, count: int = 1) -> bool:
        """Spend ``count`` of ``what``; False (and said once) when there is not that much left."""
        left = getattr(self, what)
        if left < count:
            if what not in self.spent:
                self.spent.append(what)
            setattr(self, what, 0)
            return False
        setattr(self, what, left - count)
        return True

    def note(self, what: str) -> None:
        """Say that ``what`` ran out, with nothing to spend."""
        if what not in self.spent:
            self.spent.append(what)

    def said(self) -> str:
        """What ran out, in words for a finding's explanation."""
        counted = [what.replace("_", " ") for what in self.spent if what != "long"]
        parts = [f"past the {', '.join(counted)} allowed"] if counted else []
        if "long" in self.spent:
            parts.append(f"past {MAX_DICTIONARY:,} bytes in one dictionary or {MAX_REACH:,} bytes past the "
                         f"first {FREE_DICTIONARY:,} of each in all (a viewer reads a dictionary at any length)")
        return " and ".join(parts)


class Section(NamedTuple):
    """One cross-reference stream found: its object (``N G obj`` bytes), its dictionary with the
    contents of strings and comments blanked, and where its ``stream`` keyword ends."""

    head: bytes
    dictionary: bytes
    after: int


class Dictionary(NamedTuple):
    """A dictionary read from its ``<<``: where it ends, and its bytes with strings and comments
    emptied (``(...)`` becomes ``()``), so that nothing inside them is read as a key."""

    end: int
    clean: bytes


def read_dictionary(doc: bytes, at: int, budget: Budget) -> Dictionary | None:
    """The dictionary whose ``<<`` is at ``at`` (7.3.7), nested dictionaries, strings (7.3.4.2:
    balanced parentheses, backslash escapes), hex strings and comments stepped over as a parser
    does; None when it does not end in the document or within the budget: its tokens, and past
    FREE_DICTIONARY bytes its reach, MAX_DICTIONARY at most. One that goes on past those is
    noted in the budget ("long"): a bound run out, which the caller says."""
    free = min(len(doc), at + FREE_DICTIONARY)
    stop = min(len(doc), at + MAX_DICTIONARY, free + budget.reach)
    read = _read_dictionary(doc, at, stop, budget)
    past = (read.end if read is not None else stop) - free
    if past > 0:
        budget.take("reach", past)
    if read is None and stop < len(doc) and "tokens" not in budget.spent:
        budget.note("long")  # it goes on past what may be read: a viewer reads on
    return read


def _read_dictionary(doc: bytes, at: int, stop: int, budget: Budget) -> Dictionary | None:
    """read_dictionary, to ``stop`` at most."""
    opened: list[int] = []  # where each "<<" not yet closed is
    pos = at
    pieces: list[bytes] = []
    kept = at  # the clean bytes are taken up to here
    while budget.take("tokens"):
        match = TOKEN.search(doc, pos, stop)
        if match is None:
            return _unended(doc, stop, opened, budget)
        token, pos = match.group(), match.end()
        if token == b"<<":
            if match.start() in budget.unended:  # it never ends: nor do those it is inside
                budget.unended.update(opened)
                return None
            opened.append(match.start())
            continue
        if token == b">>":
            opened.pop()
            if not opened:
                pieces.append(doc[kept:pos])
                return Dictionary(pos, b"".join(pieces))
            continue
        if token == b"<":  # a hex string: to its ">"
            close = doc.find(b">", pos, stop)
            if close < 0:
                return _unended(doc, stop, opened, budget)
            pos = close + 1
            continue
        end = _string_end(doc, pos, stop, budget) if token == b"(" else _comment_end(doc, pos, stop)
        if end < 0:
            return _unended(doc, stop, opened, budget)
        pieces.append(doc[kept:match.start()] + (b"()" if token == b"(" else b" "))
        pos = kept = end
    return None


def _unended(doc: bytes, stop: int, opened: list[int], budget: Budget) -> Dictionary | None:
    """None, for a dictionary read to ``stop`` without its end: when that is the document's end
    (not a bound, nor the budget's tokens), the dictionaries still open there are kept as unended."""
    if stop == len(doc) and "tokens" not in budget.spent:
        budget.unended.update(opened)
    return None


def _string_end(doc: bytes, at: int, stop: int, budget: Budget) -> int:
    """Where the literal string whose "(" ends at ``at`` ends (7.3.4.2), -1 when not by ``stop``."""
    depth, pos = 1, at
    while budget.take("tokens"):
        match = PAREN.search(doc, pos, stop)
        if match is None:
            return -1
        char, pos = match.group(), match.end()
        if char == b"\\":
            pos += 1  # the escaped byte, a parenthesis included
        elif char == b"(":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return pos
    return -1


def _comment_end(doc: bytes, at: int, stop: int) -> int:
    """Where the comment whose "%" ends at ``at`` ends: at its end-of-line (7.2.3)."""
    match = NEWLINE.search(doc, at, stop)
    return match.end() if match is not None else -1


def number(dictionary: bytes, key: bytes) -> int | None:
    """An integer entry (/Prev, /XRefStm, /Size) of a clean dictionary."""
    match = NUMBER[key].search(dictionary)
    return int(match.group(1)) if match is not None else None


def integers(dictionary: bytes, key: bytes) -> list[int] | None:
    """An array of integers (/W, /Index) of a clean dictionary."""
    match = ARRAY[key].search(dictionary)
    return [int(word) for word in match.group(1).split()] if match is not None else None


def object_at(doc: bytes, at: int) -> re.Match[bytes] | None:
    """``N G obj`` at ``at`` (white space before it, white space and comments after it)."""
    return OBJECT_AT.match(doc, at) if 0 <= at < len(doc) else None


def stream_at(doc: bytes, at: int, budget: Budget) -> tuple[bytes, Dictionary, int] | None:
    """The object at ``at`` if it is a stream: its ``N G obj`` bytes, its dictionary, and where
    its ``stream`` keyword ends."""
    head = object_at(doc, at)
    if head is None or not doc.startswith(b"<<", head.end()):
        return None
    dictionary = read_dictionary(doc, head.end(), budget)
    if dictionary is None:
        return None
    keyword = KEYWORD.match(doc, dictionary.end)
    if keyword is None:
        return None
    return doc[head.start(1):head.end()], dictionary, keyword.end()


def sections(doc: bytes, budget: Budget) -> Iterator[Section]:
    """The cross-reference streams of ``doc``, each once: from every ``startxref``, along /Prev
    (7.5.6: an incremental update's) and /XRefStm (7.5.8.4: a hybrid file's) from streams and
    classic trailers alike, and every stream whose dictionary says /Type /XRef (what a viewer
    finds when it rebuilds a damaged file's table)."""
    seen: set[int] = set()
    pending = [int(m.group(1)) for m in STARTXREF.finditer(doc)]
    pending += [start for m in XREF_TYPE.finditer(doc) if (start := _object_before(doc, m.start())) >= 0]
    pending.reverse()  # the last startxref first, as a viewer reads it
    white = _White()
    while pending:
        at = pending.pop()
        if at in seen or at >= len(doc):
            continue
        # The white space before the object or table, each byte of it stepped over once: offsets
        # into one long run of it all lead to the same place, read once.
        at = white.skip(doc, at)
        if at in seen:
            continue
        if not budget.take("sections"):
            return
        seen.add(at)
        table = TABLE.match(doc, at)
        if table is not None:
            pending.extend(_trailer_links(doc, table.end(), budget))
            continue
        found = stream_at(doc, at, budget)
        if found is None:
            continue
        head, dictionary, after = found
        pending.extend(link for key in (b"Prev", b"XRefStm") if (link := number(dictionary.clean, key)) is not None)
        if XREF_TYPE.search(dictionary.clean) is not None:
            yield Section(head, dictionary.clean, after)


class _White:
    """The runs of white space stepped over in one document, each as [start, end): an offset into
    a run known goes to its end without reading it again, one before it reads up to it only."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def skip(self, doc: bytes, at: int) -> int:
        """Where the white space from ``at`` ends (``at`` if there is none)."""
        index = bisect.bisect_right(self.starts, at) - 1
        if index >= 0 and at < self.ends[index]:
            return self.ends[index]
        known = index + 1 < len(self.starts)
        following = self.starts[index + 1] if known else len(doc)
        run = WHITE_RUN.match(doc, at, following)
        end = run.end() if run is not None else at  # it matches "" at least
        if known and end == following:  # it runs into a known run: the two are one
            self.starts[index + 1] = at
            return self.ends[index + 1]
        if end > at:
            self.starts.insert(index + 1, at)
            self.ends.insert(index + 1, end)
        return end


def _object_before(doc: bytes, at: int) -> int:
    """Where the ``N G obj`` whose dictionary holds the byte at ``at`` starts, -1 if none is
    within MAX_BACK bytes before it."""
    low = max(0, at - MAX_BACK)
    opened = doc.rfind(b"obj", low, at)
    if opened < 0:
        return -1
    heads = list(HEAD.finditer(doc, max(low, opened - 24), opened + 3))
    return heads[-1].start() if heads else -1


def heads(doc: bytes) -> Iterator[tuple[int, int, int, int]]:
    """Every ``N G obj`` of ``doc`` (7.3.10): where it starts, N, G, and where it ends. The
    keyword is found first (a fast byte search, where a pattern of digits first would be tried
    at every digit of the binary data), then the numbers before it."""
    at = doc.find(b"obj")
    while at >= 0:
        match = HEAD.search(doc, max(0, at - 24), at + 3)
        if match is not None and match.end() == at + 3:
            yield match.start(), int(match.group(1)), int(match.group(2)), match.end()
        at = doc.find(b"obj", at + 3)


def _trailer_links(doc: bytes, at: int, budget: Budget) -> list[int]:
    """The /Prev and /XRefStm of the trailer after the classic table whose ``xref`` ends at ``at``,
    searched for within MAX_TABLE bytes and what is left of the budget's table_bytes (run out:
    noted, a bound the caller says)."""
    bound = min(len(doc), at + MAX_TABLE)
    stop = min(bound, at + budget.table_bytes)
    match = TRAILER.search(doc, at, stop)
    budget.take("table_bytes", (match.end() if match is not None else stop) - at)
    if match is None:
        if stop < bound:
            budget.note("table_bytes")
        return []
    dictionary = read_dictionary(doc, match.end() - 2, budget)
    if dictionary is None:
        return []
    return [link for key in (b"Prev", b"XRefStm") if (link := number(dictionary.clean, key)) is not None]


def entries(data: bytes | bytearray, dictionary: bytes, budget: Budget, wanted: set[int] | None = None,
            ) -> Iterator[tuple[int, int]]:
    """The entries of a decoded cross-reference stream (7.5.8.2-3) that matter here: without
    ``wanted``, (object stream number, 2) for each type-2 entry; with it, (offset, object number)
    for each type-1 entry of an object in ``wanted``. /W gives three big-endian widths (a type
    of width 0 means 1); /Index pairs of first object number and count (default [0 /Size]).
    Entries past the data's end, or widths no viewer accepts, end the reading."""
    widths = integers(dictionary, b"W")
    if widths is None or len(widths) < 3 or max(widths[:3]) > MAX_WIDTH or sum(widths[:3]) == 0:
        return
    first, second, third = widths[:3]
    row = first + second + third
    index = integers(dictionary, b"Index")
    size = number(dictionary, b"Size")
    ranges = list(zip(index[0::2], index[1::2], strict=False)) if index else [(0, size or len(data) // row)]
    at = 0
    for start, count in ranges:
        count = min(count, (len(data) - at) // row)
        if count <= 0 or not budget.take("entries", count):
            return
        for obj in range(start, start + count):
            kind = int.from_bytes(data[at:at + first], "big") if first else 1
            if wanted is None and kind == 2:
                yield int.from_bytes(data[at + first:at + first + second], "big"), 2
            elif wanted is not None and kind == 1 and obj in wanted:
                yield int.from_bytes(data[at + first:at + first + second], "big"), obj
            at += row
