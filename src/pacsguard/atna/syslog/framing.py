"""Splitting a syslog byte stream into messages: octet counting (RFC 6587 3.4.1, the only framing
RFC 5425 4.3 allows over TLS) and non-transparent framing (RFC 6587 3.4.2, LF- or NUL-terminated),
told apart per connection by the first byte, as RFC 6587 3.4 suggests: a digit starts an octet
count, a '<' starts a message.

The splitter is a push parser: feed() takes whatever the socket gave and returns the complete
frames and the problems found, so a bad frame never loses the good ones around it. After a bad
frame it hunts for the next place a frame starts (an octet count before '<PRI>', or '<PRI>' after
a trailer), not merely the next LF: an octet-counted message carries LFs of its own.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import Enum

#: RFC 5425 4.3.1 asks receivers for at least 2048 octets and recommends 8192; IHE audit messages
#: with SOP instance lists run far larger, and the issue asks for at least 64 KiB.
DEFAULT_MAX_MESSAGE = 1024 * 1024

#: Digits of an octet count (MSG-LEN is at most 9 digits here: a count beyond the maximum is refused
#: before the length is known).
_MAX_DIGITS = 9

#: Where a frame may start after a bad one: MSG-LEN SP "<" PRIVAL ">" (RFC 6587 3.4.1, RFC 5424 6.2.1;
#: also a count with a sign or leading zeros, which `Splitter._octet_counted` reads and reports),
#: or "<" PRIVAL ">" just after a TRAILER (RFC 6587 3.4.2).
_FRAME_START = re.compile(rb"(?<![0-9+])\+?0*[1-9][0-9]{0,8} <[0-9]{1,3}>|(?<=[\n\0])<[0-9]{1,3}>")

_BOM = b"\xef\xbb\xbf"

#: The next message of a sender that frames none (no TRAILER, no count: log4j2's SyslogAppender
#: over TCP without newLine, Python's SysLogHandler with append_nul off), right after the last:
#: the '>' ending an XML message or the '}' ending a JSON one, then '<' PRIVAL '>' and what starts
#: a header (VERSION 1, an RFC 3164 or RFC 3339 TIMESTAMP) or a payload. XML has no '<' before a
#: digit outside CDATA and comments (XML 1.0 2.4), so no audit message's markup matches.
#: Searched from '<' to '<' and the octet before checked apart: a pattern starting at each '>'
#: (every tag) was several times slower.
_JOINED = re.compile(rb"<(?:0|[1-9][0-9]{0,2})>(?=1 |[A-Z][a-z]{2} [ 0-9][0-9] |[0-9]{4}-[0-9]{2}-|<[?A-Za-z]|\{)")
#: What `_JOINED` may need to look back on when a read ended inside it ("}<191>2026-12-").
_JOINED_TAIL = 16
#: An XML audit message's end tag ending the data read so far: with no TRAILER after it, the
#: message of a sender that frames none, complete (`Splitter.held`).
_XML_END = re.compile(rb"</(?:[A-Za-z_][\w.-]*:)?AuditMessage\s*>\s*\Z")
#: How far back from the end of the data read `_XML_END` is looked for.
_XML_END_TAIL = 256

#: The longest frame start that may sit, incomplete, at the end of a read ("123456789 <191").
_START_TAIL = _MAX_DIGITS + 5


class Framing(str, Enum):
    OCTET_COUNTING = "octet-counting"
    NON_TRANSPARENT = "non-transparent"


@dataclass(frozen=True, slots=True)
class FrameProblem:
    """A framing error: ``problem`` is one of malformed-frame, oversize, truncated."""

    problem: str
    detail: str
    data: bytes = b""


@dataclass(slots=True)
class Splitter:
    """Splits one connection's stream. The framing is chosen by the first byte of the stream and
    re-detected after a malformed frame, so a sender that recovers is read again."""

    max_message: int = DEFAULT_MAX_MESSAGE
    framing: Framing | None = None
    _buffer: bytearray = field(default_factory=bytearray)
    _skip: int = 0  # bytes of an oversize octet-counted frame still to discard
    _hunting: bool = False  # after a bad frame: looking for the next frame start
    #: While hunting, the octet dropped just before the buffer: what precedes its first octet, for
    #: the look-behind of `_FRAME_START` (the rest of a 10-digit count is no frame start).
    _before: int = 0
    _line_from: int = 0  # how far the current non-transparent frame was searched for its end
    #: A non-transparent frame whose LF ended the data read so far: complete if nothing follows
    #: (`flush`), a line of a longer message if what follows cannot start a frame.
    held: bool = False
    #: Whether a non-transparent frame of this stream ended with its TRAILER: a sender that frames
    #: its messages, whose frame without one is not complete at an end tag (`_XML_END`).
    _trailed: bool = False
    #: The framing of each frame the last `feed` or `flush` returned, in order (RFC 6587 3.4: told
    #: per frame, so one read may hold both).
    kinds: list[Framing] = field(default_factory=list)

    def feed(self, data: bytes) -> tuple[list[bytes], list[FrameProblem]]:
        self._buffer += data
        frames: list[bytes] = []
        kinds: list[Framing] = []
        self.kinds = kinds
        problems: list[FrameProblem] = []
        while True:
            if self._skip:
                dropped = min(self._skip, len(self._buffer))
                del self._buffer[:dropped]
                self._skip -= dropped
                if self._skip:
                    break
            if self._hunting and not self._hunt():
                break
            if not self._buffer:
                break
            if self.framing is None:
                self.framing = self._detect(problems)
                if self.framing is None:
                    if self._mark_arriving():
                        break  # the rest of a split byte order mark is in the next read
                    continue
            framing = self.framing
            got = self._octet_counted(problems) if framing is Framing.OCTET_COUNTING else self._line(problems)
            if got is None:
                break
            if got:
                frames.append(got)
                kinds.append(framing)
        return frames, problems

    def finish(self) -> list[FrameProblem]:
        """The end of the stream: what is left in the buffer is a truncated frame."""
        problems: list[FrameProblem] = []
        if self._hunting:
            pass  # the junk was reported when the hunt began
        elif self._skip:
            problems.append(FrameProblem("truncated", f"stream ended {self._skip} octets into an oversize frame"))
        elif self._buffer.strip():
            problems.append(FrameProblem("truncated", f"stream ended inside a frame ({len(self._buffer)} octets "
                                                      "without their end)", bytes(self._buffer[:256])))
        self._buffer.clear()
        self._hunting = False
        return problems

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def _detect(self, problems: list[FrameProblem]) -> Framing | None:
        # Blank lines between messages (some senders end octet-counted frames with LF) are skipped.
        while self._buffer and self._buffer[0] in b"\r\n\0 ":
            del self._buffer[0]
        if not self._buffer:
            return None
        if self._mark_arriving():
            return None  # `\xef` or `\xef\xbb` so far: a mark, or junk, once the next octet is read
        if self._buffer.startswith(_BOM):
            # A sender writing through a text stream that starts with its encoding's mark (.NET's
            # StreamWriter with Encoding.UTF8): reported, dropped, and the frame after it read.
            problems.append(FrameProblem("malformed-frame", "a UTF-8 byte order mark before the frame, skipped "
                                         "(RFC 5424 6.4 allows it only where MSG begins)", _BOM))
            del self._buffer[:len(_BOM)]
            return None
        first = self._buffer[0]
        if 0x31 <= first <= 0x39:  # NONZERO-DIGIT (RFC 6587 3.4.1 MSG-LEN)
            return Framing.OCTET_COUNTING
        if first in b"0+":  # a count written "0023" or "+23": read and reported (`_octet_counted`)
            return Framing.OCTET_COUNTING
        if first == 0x3C:  # '<' opening PRI
            return Framing.NON_TRANSPARENT
        self._resync(problems, "frame starts with neither an octet count nor '<'")
        return None

    def _mark_arriving(self) -> bool:
        """Whether the buffer is a proper prefix of the UTF-8 byte order mark (RFC 3629 section 6):
        a mark split across two reads, told apart from junk only by the octets still to come. Never
        true of a whole mark or of anything longer, so `feed` always moves on; a stream that ends
        here leaves the octets to `finish`, which reports them."""
        return not self._hunting and 0 < len(self._buffer) < len(_BOM) and _BOM.startswith(self._buffer)

    def _octet_counted(self, problems: list[FrameProblem]) -> bytes | None:
        if not (0x30 <= self._buffer[0] <= 0x39 or self._buffer[0] == 0x2B):
            # RFC 6587 3.4: the framing is told per frame, not per connection. A '<' (or the blank
            # line some senders end a frame with) where a frame starts: detected again, as rsyslog's
            # imtcp does; the sender switched to non-transparent framing. Anything else, no count,
            # is reported as such by `_detect`.
            self.framing = None
            return b""
        space = self._buffer.find(b" ", 0, _MAX_DIGITS + 1)
        if space < 0:
            if self._buffer[:_MAX_DIGITS + 1].isdigit() and len(self._buffer) > _MAX_DIGITS:
                return self._resync(problems, f"octet count of more than {_MAX_DIGITS} digits "
                                              f"({bytes(self._buffer[:16])!r}...), beyond any frame accepted")
            arriving = self._buffer[1:] if self._buffer[0] == 0x2B else self._buffer
            if len(self._buffer) > _MAX_DIGITS or not (arriving.isdigit() or not arriving):
                return self._resync(problems, "octet count not followed by a space")
            return None  # the count is still arriving
        digits = bytes(self._buffer[:space])
        value = digits[1:] if digits.startswith(b"+") else digits
        if not value.isdigit() or not int(value):
            return self._resync(problems, f"bad octet count {digits[:16]!r}")
        length = int(value)
        if length > self.max_message:
            del self._buffer[:space + 1]
            self._skip = length
            problems.append(FrameProblem("oversize", f"frame of {length} octets exceeds {self.max_message}"))
            self.framing = None
            return b""
        end = space + 1 + length
        if len(self._buffer) < end:
            return None
        if digits.startswith((b"+", b"0")):
            # Not the MSG-LEN of RFC 6587 3.4.1 (NONZERO-DIGIT first), but its value is plain (and
            # rsyslog's imtcp reads leading zeros): reported (once, with its frame), and the frame read.
            problems.append(FrameProblem("malformed-frame", f"octet count {digits.decode()!r} with a sign or a "
                                         "leading zero (RFC 6587 3.4.1: MSG-LEN begins with a nonzero digit); "
                                         "the frame was read by its value", digits))
        frame = bytes(self._buffer[space + 1:end])
        del self._buffer[:end]
        return frame

    def _line(self, problems: list[FrameProblem]) -> bytes | None:
        if 0x31 <= self._buffer[0] <= 0x39:
            # An octet count where a frame starts: the sender switched to octet counting, follow it
            # (a non-transparent frame starts with '<').
            self.framing = None
            self._line_from = 0
            return b""
        end = self._line_end()
        if end < 0:
            if len(self._buffer) > self.max_message:
                problems.append(FrameProblem("oversize", f"line longer than {self.max_message} octets",
                                             bytes(self._buffer[:256])))
                self._resync(problems=None)
                return b""
            return None
        self._line_from = 0
        if end > self.max_message:
            problems.append(FrameProblem("oversize", f"line of {end} octets exceeds {self.max_message}",
                                         bytes(self._buffer[:256])))
            del self._buffer[:end + 1]
            return b""
        return self._take_line(end)

    def _take_line(self, end: int) -> bytes:
        """The frame up to ``end``, and its TRAILER (none where the next message of a sender that
        frames none begins, `_JOINED`)."""
        frame = bytes(self._buffer[:end]).rstrip(b"\r")
        trailer = end < len(self._buffer) and self._buffer[end] in b"\n\0"
        self._trailed = self._trailed or trailer
        del self._buffer[:end + trailer]
        self._line_from = 0
        self.held = False
        return frame

    def flush(self, *, final: bool = False) -> list[bytes]:
        """The frame ``held`` back: its LF ended the data read so far, so whether it ends the
        message (or a line of a pretty-printed one) was not known. Called when nothing more came
        for a moment, or when the stream ends: it is taken as the frame's end. At the end of the
        stream (``final``) a non-transparent frame without its TRAILER is a frame too, as rsyslog's
        imtcp submits it: the sender closed after its last message instead of an LF (RFC 6587
        3.4.2 leaves the last TRAILER to the sender). An octet-counted frame cut short is not."""
        frames: list[bytes] = []
        kinds: list[Framing] = []
        if self.held:
            end = self._buffer.find(b"\n", self._line_from)
            if end < 0 and _message_ends(self._buffer):
                end = len(self._buffer)  # an unframed sender's message, its end the last read
            frames = [self._take_line(end)] if end >= 0 else []
            kinds = [Framing.NON_TRANSPARENT] * len(frames)
            frames += self.feed(b"")[0]
            kinds += self.kinds
        if final and self._unterminated():
            frames.append(bytes(self._buffer).rstrip(b"\r"))
            kinds.append(Framing.NON_TRANSPARENT)
            self._buffer.clear()
            self._line_from = 0
        self.kinds = kinds
        return frames

    def _unterminated(self) -> bool:
        """Whether the buffer holds the start of a non-transparent frame and nothing else: a '<'
        where a frame starts, no octet count, no frame being skipped or hunted for."""
        if self._skip or self._hunting or not self._buffer.strip(b"\r\n\0 "):
            return False
        return self.framing is Framing.NON_TRANSPARENT and self._buffer[0] == 0x3C

    def _resync(self, problems: list[FrameProblem] | None, detail: str = "") -> bytes:
        """A bad frame at the start of the buffer: report it (unless already reported) and hunt
        for the next frame start from its second octet on."""
        if problems is not None:
            problems.append(FrameProblem("malformed-frame", detail, bytes(self._buffer[:256])))
        self._before = self._buffer[0]
        del self._buffer[:1]
        self.framing = None
        self._line_from = 0
        self.held = False
        self._hunting = True
        return b""

    def _hunt(self) -> bool:
        """Drop octets up to the next frame start; False when none is in the buffer yet (its tail,
        which may be the beginning of one, is kept for the next read)."""
        start = self._next_start()
        if start < 0:
            drop = max(0, len(self._buffer) - _START_TAIL)
            if drop:
                self._before = self._buffer[drop - 1]
            del self._buffer[:drop]
            return False
        del self._buffer[:start]
        self._hunting = False
        return True

    def _next_start(self) -> int:
        """Where the next frame start is in the buffer, or -1. The octet dropped before the buffer
        (`_before`) is what precedes its first octet: after a digit, the digits there are the rest
        of a count too long, no count of their own (a count of 2**31 is no frame of 147483648
        octets). A TRAILER before '<PRI>' is always in the buffer: the tail kept is longer."""
        found = _FRAME_START.search(self._buffer, 1 if 0x30 <= self._before <= 0x39 else 0)
        return -1 if found is None else found.start()

    def _line_end(self) -> int:
        """Where the non-transparent frame at the start of the buffer ends, or -1: at its TRAILER, a
        NUL or an LF (RFC 6587 3.4.2 names both; Python's SysLogHandler over TCP ends a message with
        NUL alone). An LF followed by something that cannot start a frame (an indented XML line,
        '<AuditMessage') is taken as part of the message: senders that frame with NUL, or that do
        not escape LF, send pretty-printed XML. Until the sender ends a message with a TRAILER, a
        message also ends where the next one begins right after it (`_JOINED`), and one whose XML
        end tag ends the read is `held`. The search resumes where the last read left it."""
        buffer = self._buffer
        at = self._line_from
        self.held = False
        joined, seen = -1, at  # the next unframed message found, and how far it was looked for
        while True:
            nl = buffer.find(b"\n", at)
            stop = nl if nl >= 0 else len(buffer)
            nul = buffer.find(b"\0", at, stop)
            if nul >= 0:
                stop = nul
            if not self._trailed and joined < 0 and stop > seen:
                # Only until the sender ends a message with a TRAILER: one that does frames its
                # messages, and the search costs more than the rest of the splitting. In windows
                # of 1 KiB or more: once per line of a pretty-printed message was slow, and to the
                # end of the read once per message quadratic.
                ahead = min(len(buffer), max(stop, at + 1024) + _JOINED_TAIL)
                joined, seen = _joined(buffer, seen, ahead), ahead - _JOINED_TAIL
            if 0 <= joined < stop:
                return joined  # no TRAILER: the next message starts here
            if nul >= 0:
                return nul
            if nl < 0:
                self._line_from = max(at, len(buffer) - _JOINED_TAIL)
                if not self._trailed and _may_end(buffer, at):
                    # A sender that ended no message with a TRAILER yet: its message is complete
                    # when nothing follows its end for a moment (`flush`), or it would wait for
                    # the next one, or for frame_timeout and be lost as too slow.
                    self.held = True
                return -1
            starts = _may_start_frame(buffer, nl + 1)
            if starts is None:  # the read ended at (or just after) this LF: wait for more, or flush()
                self._line_from = nl
                self.held = True
                return -1
            if starts:
                return nl
            at = self._line_from = nl + 1


def _joined(buffer: bytearray, at: int, end: int) -> int:
    """Where the first message between ``at`` and ``end`` that follows the one before it without a
    TRAILER begins (its '<'), or -1 (`_JOINED`)."""
    while True:
        found = _JOINED.search(buffer, at, end)
        if found is None:
            return -1
        at = found.start()
        if at > 0 and buffer[at - 1] in b">}":
            return at
        at += 1


def _may_end(buffer: bytearray, at: int) -> bool:
    """Whether the data read so far may end an audit message with no TRAILER after it: an XML
    message's end tag (`_XML_END`, looked for from ``at``), or a '}' that may close a FHIR JSON
    payload. Cheap, as it runs on every read: only the tail is looked at."""
    return bool(_XML_END.search(buffer, max(at, len(buffer) - _XML_END_TAIL))) or _brace_ends(buffer)


def _brace_ends(buffer: bytearray) -> bool:
    """Whether the data read so far ends with a '}' (and blanks): only its tail is looked at."""
    return buffer[-_XML_END_TAIL:].rstrip(b" \t\r").endswith(b"}")


def _message_ends(buffer: bytearray) -> bool:
    """Whether the data read so far, nothing having followed it for a moment, is one whole audit
    message: its XML end tag ends it, or the value from its first '{' reads as one JSON object
    (RFC 8259) ending there; a '}' closing only an inner object is not the end. Parsed only when
    the braces balance, and only from `Splitter.flush`, not on each read: a hostile sender ending
    every read of a 1 MiB message with '}' made each read parse all that came before."""
    if _XML_END.search(buffer, max(0, len(buffer) - _XML_END_TAIL)):
        return True
    if not _brace_ends(buffer) or buffer.count(b"{") != buffer.count(b"}"):
        return False
    start = buffer.find(b"{")
    text = bytes(buffer[start:]).decode("utf-8", "replace").rstrip(" \t\r")
    try:
        _, end = json.JSONDecoder().raw_decode(text)
    except ValueError:
        return False
    return end == len(text)


def _may_start_frame(buffer: bytearray, at: int) -> bool | None:
    """Whether a frame may start at ``at``: an octet count then SP, '<' PRIVAL '>', a blank line;
    None when the read ended before that could be told."""
    if at >= len(buffer):
        return None
    first = buffer[at]
    if first in b"\r\n\0":
        return True
    if first == 0x3C:  # '<'
        digits, end = _digits(buffer, at + 1, 3)
        return None if end >= len(buffer) else digits > 0 and buffer[end] == 0x3E
    if 0x31 <= first <= 0x39:
        _, end = _digits(buffer, at, _MAX_DIGITS)
        return None if end >= len(buffer) else buffer[end] == 0x20
    return False


def _digits(buffer: bytearray, at: int, most: int) -> tuple[int, int]:
    """How many ASCII digits (at most ``most``) start at ``at``, and where they end."""
    end = at
    while end < len(buffer) and end - at < most and 0x30 <= buffer[end] <= 0x39:
        end += 1
    return end - at, end
