"""Outside round 8, wave 3: a UTF-8 byte order mark (RFC 3629 section 6) before the first frame,
split across two TCP reads. The mark whole in one read was already named and dropped; split as
``\\xef`` | ``\\xbb\\xbf<frame>`` (or after its second octet) the first octets were taken for junk and
the frame after them lost. The splitter now waits for the rest of the mark, and never longer: a
stream that stops inside the mark, or goes on with other octets, is reported once and ends."""

from __future__ import annotations

import socket
import time

import pytest
from receiver import running
from test_senders_real import one_line

from pacsguard.atna.syslog.framing import FrameProblem, Splitter

HOST = "127.0.96.10"  # this suite's own loopback address
BOM = b"\xef\xbb\xbf"
GOOD = [b'<85>1 - h a - IHE+RFC-3881 - <AuditMessage n="%d"/>' % i for i in range(3)]


def octet(msg: bytes) -> bytes:
    return b"%d %s" % (len(msg), msg)


def read_in(pieces: list[bytes]) -> tuple[list[bytes], list[FrameProblem]]:
    """What a splitter makes of ``pieces``, one read each, to the stream's end."""
    splitter, frames, problems = Splitter(), [], []
    for piece in pieces:
        got, found = splitter.feed(piece)
        frames += got
        problems += found
    frames += splitter.flush(final=True)
    problems += splitter.finish()
    return frames, problems


@pytest.mark.parametrize("framed", ["octet-counted", "lf"])
def test_a_mark_split_anywhere_loses_no_frame(framed: str) -> None:
    """Every cut of the stream, and every cut into three reads around the mark: the mark named
    once, every frame read."""
    body = b"".join(octet(m) for m in GOOD) if framed == "octet-counted" else b"".join(m + b"\n" for m in GOOD)
    stream = BOM + body
    cuts = [[stream[:i], stream[i:]] for i in range(1, len(stream))]
    cuts += [[stream[:1], stream[1:2], stream[2:]], [b"\xef", b"\xbb", b"\xbf", body], [b"", b"\xef", b"", stream[1:]]]
    for pieces in cuts:
        frames, problems = read_in(pieces)
        assert frames == GOOD, pieces[:2]
        assert [(p.problem, p.data) for p in problems] == [("malformed-frame", BOM)], (pieces[:2], problems)
        assert "byte order mark" in problems[0].detail


@pytest.mark.parametrize("start", [b"\xef", b"\xef\xbb"])
def test_a_stream_that_ends_inside_the_mark_is_reported_once(start: bytes) -> None:
    """Waiting for the rest of the mark must end: the stream's end reports the octets held."""
    splitter = Splitter()
    assert splitter.feed(start) == ([], [])
    assert splitter.pending == len(start)  # held, not taken for junk yet
    problems = splitter.finish()
    assert [(p.problem, p.data) for p in problems] == [("truncated", start)], problems
    assert splitter.pending == 0


@pytest.mark.parametrize("then", [b"<85>", b"\xbb<85>", b"\xef<85>", b"85 ", b"\n"])
def test_the_start_of_a_mark_followed_by_other_octets_is_junk_reported_once(then: bytes) -> None:
    """``\\xef`` then anything but the rest of the mark: no mark, the octets are junk, named once,
    and the frame on the next line read; one read or two, the same."""
    frame = GOOD[0] + b"\n"
    for pieces in ([b"\xef" + then + b"\n" + frame], [b"\xef", then + b"\n" + frame], [b"\xef", then, b"\n" + frame]):
        frames, problems = read_in(pieces)
        assert frames == [GOOD[0]], (pieces, frames)
        assert len(problems) == 1 and problems[0].problem == "malformed-frame", (pieces, problems)
        assert "byte order mark" not in problems[0].detail


def test_a_mark_split_across_two_sends_through_atna_listen() -> None:
    """Over a real TCP connection to the running listener, the mark's first octet sent alone and
    the rest with both messages after a pause (two reads): both stored, the mark named once."""
    good = [b"<85>1 - h a - IHE+RFC-3881 - " + one_line(code).encode() for code in ("110110", "110112")]
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    with running({"tcp": {"host": HOST, "port": port}}) as rx:
        with socket.create_connection((HOST, port), timeout=5, source_address=(HOST, 0)) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(BOM[:1])
            time.sleep(0.3)  # the listener reads the lone octet before the rest arrives
            s.sendall(BOM[1:] + octet(good[0]) + octet(good[1]))
        got = rx.wait(lambda evs: len(rx.audits()) == 2 and any(e.kind == "atna.frame.rejected" for e in evs),
                      "two audits and the mark named")
    assert sorted(e.details["event_id"]["code"] for e in rx.audits()) == ["110110", "110112"]
    rejected = [e.details["error"] for e in got if e.kind == "atna.frame.rejected"]
    assert len(rejected) == 1 and "byte order mark" in rejected[0], rejected
