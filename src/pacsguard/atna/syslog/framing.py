"""Splitting a syslog byte stream into messages: octet counting (RFC 6587 3.4.1, the only framing
RFC 5425 4.3 allows over TLS) and non-transparent framing (RFC 6587 3.4.2, LF- or NUL-terminated),
told apart per connection by the first byte, as RFC 6587 3.4 suggests: a digit starts an octet
count, a '<' starts a message.

The splitter is a push parser: feed() takes whatever the socket gave and returns the complete
frames and the problems found, so a bad frame never loses the good ones around it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

#: RFC 5425 4.3.1 asks receivers for at least 2048 octets and recommends 8192; IHE audit messages
#: with SOP instance lists run far larger, and the issue asks for at least 64 KiB.
DEFAULT_MAX_MESSAGE = 1024 * 1024

#: Digits of an octet count (MSG-LEN is at most 9 digits here: a count beyond the maximum is refused
#: before the length is known).
_MAX_DIGITS = 9


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

    def feed(self, data: bytes) -> tuple[list[bytes], list[FrameProblem]]:
        self._buffer += data
        frames: list[bytes] = []
        problems: list[FrameProblem] = []
        while True:
            if self._skip:
                dropped = min(self._skip, len(self._buffer))
                del self._buffer[:dropped]
                self._skip -= dropped
                if self._skip:
                    break
            if not self._buffer:
                break
            if self.framing is None:
                self.framing = self._detect(problems)
                if self.framing is None:
                    continue
            got = self._octet_counted(problems) if self.framing is Framing.OCTET_COUNTING \
                else self._line(problems)
            if got is None:
                break
            if got:
                frames.append(got)
        return frames, problems

    def finish(self) -> list[FrameProblem]:
        """The end of the stream: what is left in the buffer is a truncated frame."""
        problems: list[FrameProblem] = []
        if self._skip:
            problems.append(FrameProblem("truncated", f"stream ended {self._skip} octets into an oversize frame"))
        elif self._buffer.strip():
            problems.append(FrameProblem("truncated", f"stream ended inside a frame ({len(self._buffer)} octets "
                                                      "without their end)", bytes(self._buffer[:256])))
        self._buffer.clear()
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
        first = self._buffer[0]
        if 0x31 <= first <= 0x39:  # NONZERO-DIGIT (RFC 6587 3.4.1 MSG-LEN)
            return Framing.OCTET_COUNTING
        if first == 0x3C:  # '<' opening PRI
            return Framing.NON_TRANSPARENT
        # Neither: resynchronise at the next line or '<'.
        cut = _next_start(self._buffer)
        junk = bytes(self._buffer[:cut])
        del self._buffer[:cut]
        problems.append(FrameProblem("malformed-frame", "frame starts with neither an octet count nor '<'",
                                     junk[:256]))
        return None

    def _octet_counted(self, problems: list[FrameProblem]) -> bytes | None:
        space = self._buffer.find(b" ", 0, _MAX_DIGITS + 1)
        if space < 0:
            if len(self._buffer) > _MAX_DIGITS or not self._buffer.isdigit():
                return self._resync(problems, "octet count not followed by a space")
            return None  # the count is still arriving
        digits = bytes(self._buffer[:space])
        if not digits.isdigit() or digits.startswith(b"0"):
            return self._resync(problems, f"bad octet count {digits[:16]!r}")
        length = int(digits)
        if length > self.max_message:
            del self._buffer[:space + 1]
            self._skip = length
            problems.append(FrameProblem("oversize", f"frame of {length} octets exceeds {self.max_message}"))
            self.framing = None
            return b""
        end = space + 1 + length
        if len(self._buffer) < end:
            return None
        frame = bytes(self._buffer[space + 1:end])
        del self._buffer[:end]
        return frame

    def _line(self, problems: list[FrameProblem]) -> bytes | None:
        end = _trailer(self._buffer)
        if end < 0:
            if len(self._buffer) > self.max_message:
                problems.append(FrameProblem("oversize", f"line longer than {self.max_message} octets",
                                             bytes(self._buffer[:256])))
                self._buffer.clear()
                self.framing = None
                return b""
            return None
        frame = bytes(self._buffer[:end]).rstrip(b"\r")
        del self._buffer[:end + 1]
        if frame[:1].isdigit():
            # An octet-counted frame after non-transparent ones: the sender switched, follow it.
            self._buffer[:0] = frame + b"\n"
            self.framing = None
            return b""
        return frame

    def _resync(self, problems: list[FrameProblem], detail: str) -> bytes:
        cut = _next_start(self._buffer)
        problems.append(FrameProblem("malformed-frame", detail, bytes(self._buffer[:min(cut, 256)])))
        del self._buffer[:cut]
        self.framing = None
        return b""


def _trailer(buffer: bytearray) -> int:
    """Where the first non-transparent frame in ``buffer`` ends: its TRAILER, LF or NUL (RFC 6587
    3.4.2 names both; Python's SysLogHandler over TCP ends each message with NUL alone), or -1."""
    nl = buffer.find(b"\n")
    nul = buffer.find(b"\0", 0, nl if nl >= 0 else len(buffer))  # only up to the LF: linear in the stream
    return nul if nul >= 0 else nl


def _next_start(buffer: bytearray) -> int:
    """Where the next frame may start after garbage: after the next LF or NUL, else the whole buffer."""
    end = _trailer(buffer)
    return end + 1 if end >= 0 else len(buffer)
